"""Ground cost ``C`` between source and target classes for the JTLN optimal-transport loss.

JTLN (Lu, Chen & Saidi 2017, "Optimal Transport for Deep Joint Transfer Learning") adds an
OT term between the source head's and the target head's predictions; the ground cost
``C[i, j]`` of moving mass from source class ``i`` to target class ``j`` is where prior
knowledge enters: a small ``C[i, j]`` says "source class ``i`` is a good teacher for target
class ``j``".

Every builder here returns a ``float64`` :class:`numpy.ndarray` of shape ``(L_s, L_t)``:
**rows are source classes, columns are target classes**.

Builders (each ends with :func:`normalize_cost`, by default :data:`DEFAULT_NORMALIZATION`):
:func:`cost_from_relation` (hand-written costs), :func:`cost_from_hierarchy` (tree distance in a
label hierarchy), :func:`cost_from_features` (the paper's fc7-OT and fc7-MKMMD, or class
centroids) and :func:`cost_from_relationship` (Co-Tuning's relationship). :func:`load_cost` reads
a ``.npy`` or ``.csv`` matrix as written; :func:`validate_cost` checks C against a model's classes;
:func:`shuffle_cost_columns` permutes C's target columns into the shuffled-cost control (same values,
wrong relations).

A run's cost lives in this package too, in modules not re-exported here because they read the data and the
model (a higher layer): :mod:`~jtln_hf.cost.builders` (the ``--cost`` registry), :mod:`~jtln_hf.cost.resolve`
(a run's C built, normalised and shuffled) and :mod:`~jtln_hf.cost.refresh` (recomputed during training).
:mod:`~jtln_hf.cost.stability` holds the conservative ``features-mmd-stable`` (relations kept where bootstrap
resamples agree).
"""

from __future__ import annotations

from .agreement import cheapest_source_agreement
from .features import (
    FEATURE_COST_METHODS,
    MMD_BANDWIDTH_MULTIPLIERS,
    compute_class_pairwise,
    cost_from_features,
    mmd2,
    mmd_bandwidths,
    wasserstein2,
)
from .files import load_cost
from .normalize import COST_NORMALIZATIONS, DEFAULT_NORMALIZATION, NORMALIZATIONS, normalize_cost, validate_cost
from .priors import cost_from_hierarchy, cost_from_relation
from .relationship import category_relationship, cost_from_relationship
from .shuffle import SHUFFLE_CONTROL, column_permutation, describe_shuffle, permute_columns, shuffle_cost_columns

__all__ = [
    "COST_NORMALIZATIONS",
    "DEFAULT_NORMALIZATION",
    "NORMALIZATIONS",
    "SHUFFLE_CONTROL",
    "FEATURE_COST_METHODS",
    "MMD_BANDWIDTH_MULTIPLIERS",
    "category_relationship",
    "cheapest_source_agreement",
    "column_permutation",
    "compute_class_pairwise",
    "cost_from_features",
    "cost_from_hierarchy",
    "cost_from_relation",
    "cost_from_relationship",
    "describe_shuffle",
    "load_cost",
    "mmd2",
    "mmd_bandwidths",
    "normalize_cost",
    "permute_columns",
    "shuffle_cost_columns",
    "validate_cost",
    "wasserstein2",
]
