"""Ground cost ``C`` between source and target classes for the JTLN optimal-transport loss.

JTLN (Lu, Chen & Saidi 2017, "Optimal Transport for Deep Joint Transfer Learning") adds an
OT term between the source head's and the target head's predictions; the ground cost
``C[i, j]`` of moving mass from source class ``i`` to target class ``j`` is where prior
knowledge enters: a small ``C[i, j]`` says "source class ``i`` is a good teacher for target
class ``j``".

Every builder here returns a ``float64`` :class:`numpy.ndarray` of shape ``(L_s, L_t)``:
**rows are source classes, columns are target classes**.

Builders
--------
* :func:`cost_from_relation` -- hand-written source -> target costs.
* :func:`cost_from_hierarchy` -- tree distance in a label hierarchy (e.g. WordNet).
* :func:`cost_from_features` -- from features of a pre-trained network: the paper's
  "fc7-OT" (``method="ot"``) and "fc7-MKMMD" (``method="mmd"``), or class-centroid
  distances (``method="centroid"``).
* :func:`load_cost` -- a matrix saved as ``.npy`` or ``.csv`` (plain or labelled).

:func:`normalize_cost` rescales a cost (see its docstring for why ``"column"`` matters) and
:func:`validate_cost` returns a cost as float64 after the one check every consumer of a cost
runs (:func:`jtln_hf.configuration_jtln.check_cost_matrix`).
"""

from __future__ import annotations

from .features import (
    FEATURE_COST_METHODS,
    MMD_BANDWIDTH_MULTIPLIERS,
    compute_class_pairwise,
    cost_from_features,
    mmd2,
    mmd_bandwidths,
    wasserstein2,
)
from .files import (
    FASHION_MNIST_PRIOR_PATH,
    FASHION_MNIST_PRIOR_SOURCE_LABELS,
    FASHION_MNIST_PRIOR_TARGET_LABELS,
    load_cost,
)
from .normalize import COST_NORMALIZATIONS, normalize_cost, validate_cost
from .priors import cost_from_hierarchy, cost_from_relation
from .relationship import category_relationship, cost_from_relationship

__all__ = [
    "COST_NORMALIZATIONS",
    "FEATURE_COST_METHODS",
    "MMD_BANDWIDTH_MULTIPLIERS",
    "FASHION_MNIST_PRIOR_PATH",
    "FASHION_MNIST_PRIOR_SOURCE_LABELS",
    "FASHION_MNIST_PRIOR_TARGET_LABELS",
    "category_relationship",
    "compute_class_pairwise",
    "cost_from_features",
    "cost_from_hierarchy",
    "cost_from_relation",
    "cost_from_relationship",
    "load_cost",
    "mmd2",
    "mmd_bandwidths",
    "normalize_cost",
    "validate_cost",
    "wasserstein2",
]
