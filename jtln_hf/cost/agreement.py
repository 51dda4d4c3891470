"""How far a cost's relations are from a reference cost's (e.g. a cost computed from the data against the prior).

JTLN's OT term pulls the source head's prediction on a target image towards the source classes
that are cheap for the target head's prediction: what a cost *says* is, for each target class,
which source classes are its cheapest. :func:`cheapest_source_agreement` counts the target classes
for which a cost picks the same cheapest source class as the reference does; the sweep records it
for every run whose data has a hand-written prior, beside the run's accuracy, so that "does a
data-driven C that agrees more with the prior gain more?" can be read per seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .normalize import _to_numpy


def cheapest_source_agreement(cost: Any, reference: Any) -> float | None:
    r"""Share of the reference's informative target columns whose cheapest source class the cost picks too.

    For a target column :math:`j` whose reference entries are not all equal, the reference's
    cheapest sources are :math:`S_j = \{i : R_{ij} = \min_k R_{kj}\}` (several on a tie); the cost
    agrees on :math:`j` when :math:`\arg\min_i C_{ij} \in S_j` (its first minimum, numpy's
    ``argmin``). The agreement is :math:`|\{j : \arg\min_i C_{ij} \in S_j\}| / |J|` over those
    columns :math:`J`; a constant reference column says nothing and is left out.

    Parameters
    ----------
    cost, reference : array-like, shape (L_s, L_t)
        Rows source classes, columns target classes, in the same order.

    Returns
    -------
    float or None
        In [0, 1]; None when the reference has no informative column.

    Raises
    ------
    ValueError
        The two shapes differ.
    """
    c, r = _to_numpy(cost), _to_numpy(reference)
    if c.shape != r.shape or c.ndim != 2:
        raise ValueError(f"the cost has shape {c.shape} and the reference {r.shape}: compare costs over the same "
                         "source and target classes")  # fmt: skip
    informative = r.max(0) > r.min(0)
    if not informative.any():
        return None
    cheapest = r == r.min(0, keepdims=True)
    picked = c.argmin(0)
    agree = cheapest[picked, np.arange(c.shape[1])]
    return float(agree[informative].mean())


__all__ = ["cheapest_source_agreement"]
