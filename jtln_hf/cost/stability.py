"""Costs from bootstrap resamples of the images: a conservative cost, and a bagged one.

Measured on the embedded Fashion-MNIST split, a wrong relation in C costs JTLN about three times
what a right one gains (the prior with two column pairs swapped: -4.9 points; the prior: +1.7). A
cost computed from 5 labelled images per class mixes right relations with ones that flip from one
draw of the images to the next, and nets about zero. :func:`stable_relation_cost` keeps a relation
only where it holds in most bootstrap resamples of the images (:func:`bootstrap_feature_costs`),
with the sharp related/unrelated values of a hand-written prior, and leaves the rest neutral.
:func:`bagged_cost` keeps the graded values instead and averages them over the same resamples
(bagging), so that a relation carried by one or two of the 5 images weighs less.

Neither POT nor the paper has this: the bootstrap is one resample per class and a call of
:func:`jtln_hf.cost.cost_from_features`; the rule is one comparison per entry.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .features import _group_by_class, _median_sample, cost_from_features, mmd_bandwidths
from .normalize import _to_numpy

#: Bootstrap resamples of the images behind a stable cost.
STABLE_RESAMPLES = 100
#: A relation is kept when it holds in at least this share of the resamples (its absence likewise).
STABLE_THRESHOLD = 0.9
#: The value of an entry whose relation is unsure, between related (0) and unrelated (1).
UNSURE = 0.5


def bootstrap_feature_costs(
    source_features: Any, source_labels: Any, target_features: Any, target_labels: Any, *,
    method: str = "mmd", resamples: int = STABLE_RESAMPLES, num_source_labels: int | None = None,
    num_target_labels: int | None = None, max_per_class: int | None = 200, seed: int = 0,
) -> np.ndarray:  # fmt: skip
    r"""Feature costs of ``resamples`` bootstrap resamples of the images, shape ``(B, L_s, L_t)``.

    Each resample :math:`b` draws, for every source class :math:`i` and target class :math:`j`,
    as many rows as the class has, with replacement (Efron 1979), and computes
    :math:`C^b = ` :func:`~jtln_hf.cost.cost_from_features` on them (``normalize="none"``). For
    ``"mmd"`` the kernel bandwidths are fixed once from all the rows (:func:`mmd_bandwidths`), so
    resamples differ only in their images.

    Parameters
    ----------
    source_features, target_features : array-like, shape (N, D)
    source_labels, target_labels : array-like, shape (N,)
        Class ids in ``[0, L)``.
    method : {"mmd", "centroid", "ot"}
        As in :func:`~jtln_hf.cost.cost_from_features`.
    resamples : int
        :math:`B \ge 1`.
    max_per_class : int or None
        Rows kept per class before resampling (a seeded subset, as :func:`cost_from_features` keeps).

    Returns
    -------
    numpy.ndarray
        float64, shape ``(B, L_s, L_t)``, the raw (not normalised) costs.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    per_class = None if method == "centroid" else max_per_class
    src = _group_by_class(source_features, source_labels, num_source_labels, "source", per_class, rng)
    tgt = _group_by_class(target_features, target_labels, num_target_labels, "target", per_class, rng)
    bandwidths = mmd_bandwidths(_median_sample(src + tgt, seed), seed=seed) if method == "mmd" else None
    costs = []
    for _ in range(resamples):
        xs = [g[rng.integers(0, len(g), len(g))] for g in src]
        xt = [g[rng.integers(0, len(g), len(g))] for g in tgt]
        ys = np.repeat(np.arange(len(xs)), [len(g) for g in xs])
        yt = np.repeat(np.arange(len(xt)), [len(g) for g in xt])
        costs.append(cost_from_features(np.concatenate(xs), ys, np.concatenate(xt), yt, method=method,
                                        num_source_labels=len(xs), num_target_labels=len(xt), max_per_class=None,
                                        bandwidths=bandwidths, normalize="none"))  # fmt: skip
    return np.stack(costs)


def _resampled_costs(costs: Any) -> np.ndarray:
    """``costs`` as float64, checked to be ``B >= 1`` resampled costs of shape ``(B, L_s, L_t)``."""
    c = _to_numpy(costs)
    if c.ndim != 3 or c.shape[0] == 0:
        raise ValueError(f"costs must have shape (B, L_s, L_t) with B >= 1, got {c.shape}")
    return c


def relation_frequency(costs: Any) -> np.ndarray:
    r"""Share of the resamples in which source class :math:`i` is related to target class :math:`j`.

    .. math:: f_{ij} = \frac{1}{B} \sum_b \big[C^b_{ij} < \bar C^b_{\cdot j}\big],
        \qquad \bar C^b_{\cdot j} = \frac{1}{L_s} \sum_k C^b_{kj},

    "related" as ``--cost_normalization column-below-mean`` reads one cost: cheaper than its
    column's average. A constant column of a resample relates nothing.

    Parameters
    ----------
    costs : array-like, shape (B, L_s, L_t)

    Returns
    -------
    numpy.ndarray
        float64 in ``[0, 1]``, shape ``(L_s, L_t)``.
    """
    c = _resampled_costs(costs)
    flat = np.ptp(c, axis=1, keepdims=True) == 0
    related = (c < c.mean(axis=1, keepdims=True)) & ~flat
    return related.mean(axis=0)


def stable_relation_cost(costs: Any, threshold: float = STABLE_THRESHOLD) -> np.ndarray:
    r"""A cost with a relation only where the resamples agree on it, and neutral elsewhere.

    With :math:`f` the :func:`relation_frequency` of the resampled costs and :math:`\tau` the threshold,

    .. math:: C_{ij} = \begin{cases} 0 & f_{ij} \ge \tau \quad\text{(related in nearly every resample)}\\
        1 & 1 - f_{ij} \ge \tau \quad\text{(unrelated in nearly every resample)}\\
        \tfrac12 & \text{otherwise (unsure)} \end{cases}

    and a target column with no related entry is constant (every entry :math:`\tfrac12`): no
    source class is a sure teacher for it, so the OT term gets no say on where its mass comes from
    (``column`` normalisation makes it zeros, as the Fashion-MNIST prior's nearly flat Bag column).
    The values are a hand-written prior's (0 related, 1 not), since the prior's gain comes with its
    sharp columns; the threshold leaves out the relations that flip between resamples, since a
    wrong relation costs more than a right one gains.

    Parameters
    ----------
    costs : array-like, shape (B, L_s, L_t)
        Costs of bootstrap resamples (:func:`bootstrap_feature_costs`).
    threshold : float
        :math:`\tau \in (0.5, 1]`.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(L_s, L_t)``, entries in ``{0, 0.5, 1}``.
    """
    if not 0.5 < threshold <= 1:
        raise ValueError(f"threshold must lie in (0.5, 1], got {threshold}")
    f = relation_frequency(costs)
    # "unrelated in at least tau of the resamples", as 1 - f >= tau: f <= 1 - tau would lose the edge to rounding
    cost = np.where(f >= threshold, 0.0, np.where(1 - f >= threshold, 1.0, UNSURE))
    cost[:, ~(cost == 0).any(axis=0)] = UNSURE
    return cost


def bagged_cost(costs: Any) -> np.ndarray:
    r"""The bootstrap mean of resampled costs: bagging (Breiman 1996, "Bagging predictors") applied to C.

    .. math:: C_{ij} = \frac{1}{B} \sum_{b=1}^{B} C^b_{ij}

    with :math:`C^b` the raw costs of :func:`bootstrap_feature_costs` (for ``"mmd"`` every
    resample uses the same kernel bandwidths, so the values share one scale). A cost read from 5
    images per class moves with the draw of those images; its bootstrap mean smooths the part of
    it that one or two images carry, while keeping the graded values that
    :func:`stable_relation_cost` replaces by 0, ½ and 1. The mean is of the raw costs:
    ``build_cost`` normalises it afterwards, as it does ``features-mmd``.

    Parameters
    ----------
    costs : array-like, shape (B, L_s, L_t)

    Returns
    -------
    numpy.ndarray
        float64, shape ``(L_s, L_t)``.
    """
    return _resampled_costs(costs).mean(axis=0)


def describe_stability(cost: np.ndarray, source_names: Sequence[str], target_names: Sequence[str]) -> str:
    """The stable relations in words, e.g. ``"Shirt <- T-shirt/top, Pullover; Bag: none (neutral)"``."""
    parts = []
    for j, name in enumerate(target_names):
        related = [source_names[i] for i in np.flatnonzero(cost[:, j] == 0)]
        parts.append(f"{name} <- {', '.join(related)}" if related else f"{name}: none (neutral)")
    return "; ".join(parts)


__all__ = [
    "STABLE_RESAMPLES",
    "STABLE_THRESHOLD",
    "UNSURE",
    "bagged_cost",
    "bootstrap_feature_costs",
    "describe_stability",
    "relation_frequency",
    "stable_relation_cost",
]
