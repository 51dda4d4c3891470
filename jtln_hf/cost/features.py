"""Costs from features of a pre-trained network: fc7-OT, fc7-MKMMD (the paper's) and class centroids."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from scipy.spatial.distance import pdist

from .normalize import COST_NORMALIZATIONS, DEFAULT_NORMALIZATION, _check_method, _to_numpy, normalize_cost

FEATURE_COST_METHODS = ("ot", "mmd", "centroid")
#: Gaussian-kernel bandwidths of the multi-kernel MMD, as multiples of the median
#: pairwise distance of the pooled features.
MMD_BANDWIDTH_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)
#: At most this many pooled points are used to estimate the median pairwise distance.
_MEDIAN_MAX_POINTS = 2000


# --------------------------------------------------------------------------- features


def wasserstein2(x: np.ndarray, y: np.ndarray) -> float:
    r"""Exact 2-Wasserstein distance between two empirical distributions with uniform weights.

    :math:`W_2(x, y) = \big(\min_{P \in U(a, b)} \sum_{kl} P_{kl} \|x_k - y_l\|^2\big)^{1/2}`,
    solved exactly with :func:`ot.emd2` on the squared-Euclidean ground metric
    :func:`ot.dist`. This is the per-class-pair cost of the paper's "fc7-OT" (Lu, Chen &
    Saidi 2017).
    """
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    import ot  # here, not at the top: POT imports scikit-learn (~1.6 s), which only features-* costs need

    value = ot.emd2(a, b, ot.dist(x, y, metric="sqeuclidean"), numItermax=1_000_000)
    return math.sqrt(max(float(value), 0.0))


def mmd_bandwidths(features: np.ndarray, *, seed: int = 0,
                   multipliers: Sequence[float] = MMD_BANDWIDTH_MULTIPLIERS) -> np.ndarray:
    """Gaussian bandwidths ``sigma_k = median pairwise distance x multiplier_k`` (the median heuristic).

    Over at most 2000 seeded random rows of ``features``; the mean distance, then 1, when the median is 0.
    """
    features = _to_numpy(features)
    if len(features) > _MEDIAN_MAX_POINTS:
        idx = np.random.default_rng(seed).choice(len(features), _MEDIAN_MAX_POINTS, replace=False)
        features = features[idx]
    dists = pdist(features) if len(features) > 1 else np.zeros(1)
    scale = float(np.median(dists))
    if scale <= 0:
        scale = float(dists.mean()) if dists.mean() > 0 else 1.0
    return scale * np.asarray(multipliers, dtype=np.float64)


def mmd2(x: np.ndarray, y: np.ndarray, bandwidths: Sequence[float]) -> float:
    r"""Biased multi-kernel MMD² (V-statistic) with a sum of Gaussian kernels.

    .. math::
        \mathrm{MMD}^2(x, y) = \frac{1}{n^2}\sum_{kk'} k(x_k, x_{k'})
        + \frac{1}{m^2}\sum_{ll'} k(y_l, y_{l'}) - \frac{2}{nm}\sum_{kl} k(x_k, y_l),
        \qquad k(u, v) = \sum_s \exp\!\big(-\|u - v\|^2 / (2\sigma_s^2)\big),

    clipped at 0 (round-off). References: Gretton et al. 2012, "A kernel two-sample test"
    (JMLR) for MMD; Gretton et al. 2012, "Optimal kernel choice for large-scale two-sample
    tests" (NIPS) and Long et al. 2015 (DAN) for the multi-kernel form; the per-class-pair
    cost of the paper's "fc7-MKMMD" (Lu, Chen & Saidi 2017).
    """
    sig2 = 2.0 * np.asarray(bandwidths, dtype=np.float64) ** 2
    value = _mean_kernel(x, x, sig2) + _mean_kernel(y, y, sig2) - 2.0 * _mean_kernel(x, y, sig2)
    return max(value, 0.0)


def _mean_kernel(u: np.ndarray, v: np.ndarray, sig2: np.ndarray) -> float:
    """``mean_kl sum_s exp(-||u_k - v_l||^2 / sig2_s)``: one term of :func:`mmd2`."""
    import ot

    d2 = ot.dist(u, v, metric="sqeuclidean")
    return float(sum(np.exp(-d2 / s).mean() for s in sig2))


def _mmd2_cost(source_groups: Sequence[np.ndarray], target_groups: Sequence[np.ndarray],
               bandwidths: np.ndarray) -> np.ndarray:
    """``compute_class_pairwise(source_groups, target_groups, mmd2)``, vectorised for large label spaces.

    The within-class terms are computed once per class, exactly as :func:`mmd2` computes them; the
    cross terms of one source class against every target class come from one distance matrix to
    all target rows, whose kernel sums are split by target class (``np.add.reduceat``). Only the
    order of the roundings differs from :func:`mmd2` (``tests/test_large_label_space.py`` bounds
    the difference); the loop is over source classes instead of class pairs (at 1,000 x 200
    classes, 1,000 steps instead of 200,000, each with a cross-term matrix of one source class's
    rows x all target rows).
    """
    import ot

    sig2 = 2.0 * np.asarray(bandwidths, dtype=np.float64) ** 2
    within_target = np.array([_mean_kernel(y, y, sig2) for y in target_groups])
    all_target = np.concatenate(target_groups)
    sizes = np.array([len(y) for y in target_groups])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cost = np.empty((len(source_groups), len(target_groups)), dtype=np.float64)
    for i, x in enumerate(source_groups):
        d2 = ot.dist(x, all_target, metric="sqeuclidean")
        cross = sum(np.add.reduceat(np.exp(-d2 / s).sum(0), starts) / (len(x) * sizes) for s in sig2)
        cost[i] = np.maximum(_mean_kernel(x, x, sig2) + within_target - 2.0 * cross, 0.0)
    return cost


def compute_class_pairwise(
    source_groups: Sequence[np.ndarray],
    target_groups: Sequence[np.ndarray],
    fn: Callable[[np.ndarray, np.ndarray], float],
) -> np.ndarray:
    """``C[i, j] = fn(source_groups[i], target_groups[j])`` as a float64 array."""
    cost = np.empty((len(source_groups), len(target_groups)), dtype=np.float64)
    for i, xs in enumerate(source_groups):
        for j, ys in enumerate(target_groups):
            cost[i, j] = fn(xs, ys)
    return cost


def _group_by_class(features: Any, labels: Any, num_labels: int | None, domain: str,
                    max_per_class: int | None, rng: np.random.Generator) -> list[np.ndarray]:
    """Split ``features`` (N, D) by integer ``labels`` (N,), subsampling each class."""
    x = _to_numpy(features, dtype=None)  # float64 per class below: one copy of the kept rows, not two
    y = _to_numpy(labels, dtype=None).reshape(-1)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(
            f"{domain} features must be (N, D) with N = len(labels); got {x.shape} and {len(y)} labels"
        )
    if len(y) and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"{domain} labels must be integer class ids")
    y = y.astype(np.int64)
    if num_labels is None:
        num_labels = int(y.max()) + 1 if len(y) else 0
    if len(y) and (y.min() < 0 or y.max() >= num_labels):
        raise ValueError(f"{domain} labels must lie in [0, {num_labels}); got range [{y.min()}, {y.max()}]")
    groups = []
    for c in range(num_labels):
        rows = np.flatnonzero(y == c)
        if len(rows) == 0:
            raise ValueError(f"{domain} class {c} has no feature rows; every class needs at least one")
        if max_per_class is not None and len(rows) > max_per_class:
            rows = np.sort(rng.choice(rows, max_per_class, replace=False))
        groups.append(x[rows].astype(np.float64))
    return groups


def _median_sample(groups: Sequence[np.ndarray], seed: int) -> np.ndarray:
    """``np.concatenate(groups)`` as :func:`mmd_bandwidths` subsamples it (the same rows, in the same
    order), without concatenating every row first (at 1,000 classes x 200 rows x 2048 dims, 3.3 GB)."""
    offsets = np.cumsum([0] + [len(g) for g in groups])
    if offsets[-1] <= _MEDIAN_MAX_POINTS:
        return np.concatenate(groups)
    idx = np.random.default_rng(seed).choice(offsets[-1], _MEDIAN_MAX_POINTS, replace=False)
    which = np.searchsorted(offsets, idx, side="right") - 1
    return np.stack([groups[g][i - offsets[g]] for g, i in zip(which, idx)])


def cost_from_features(
    source_features: Any,
    source_labels: Any,
    target_features: Any,
    target_labels: Any,
    *,
    method: str = "centroid",
    num_source_labels: int | None = None,
    num_target_labels: int | None = None,
    max_per_class: int | None = 200,
    seed: int = 0,
    bandwidths: Sequence[float] | None = None,
    normalize: str = DEFAULT_NORMALIZATION,
) -> np.ndarray:
    r"""Cost from the features of a network (e.g. its pooled features), then :func:`normalize_cost`.

    With :math:`X_i` the features of source class ``i`` and :math:`Y_j` those of target class ``j``
    (Lu, Chen & Saidi 2017): ``"ot"`` (fc7-OT) :math:`C_{ij} = W_2(X_i, Y_j)` (:func:`wasserstein2`);
    ``"mmd"`` (fc7-MKMMD) :math:`C_{ij} = \mathrm{MMD}^2(X_i, Y_j)` (:func:`mmd2`, one set of
    :func:`mmd_bandwidths` over the pooled features unless ``bandwidths`` is given); ``"centroid"``
    :math:`C_{ij} = \|\bar X_i - \bar Y_j\|_2` (every row, ``max_per_class`` ignored).

    Parameters
    ----------
    source_features, target_features : array-like or torch.Tensor, shape (N, D)
    source_labels, target_labels : array-like or torch.Tensor, shape (N,)
        Class ids in ``[0, L)``; ``num_source_labels`` / ``num_target_labels`` default to ``max + 1``.
    max_per_class : int or None
        For ``"ot"`` and ``"mmd"``: a random subset of at most this many rows per class, drawn with ``seed``.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(L_s, L_t)``; a class without rows raises ``ValueError``.
    """
    _check_method(method, FEATURE_COST_METHODS, "feature cost method")
    _check_method(normalize, COST_NORMALIZATIONS, "cost normalization")
    per_class = None if method == "centroid" else max_per_class
    rng = np.random.default_rng(seed)
    src = _group_by_class(source_features, source_labels, num_source_labels, "source", per_class, rng)
    tgt = _group_by_class(target_features, target_labels, num_target_labels, "target", per_class, rng)
    if src and tgt and src[0].shape[1] != tgt[0].shape[1]:
        raise ValueError(f"source features have D={src[0].shape[1]} but target features D={tgt[0].shape[1]}")
    if method == "centroid":
        import ot

        cost = ot.dist(np.stack([g.mean(0) for g in src]), np.stack([g.mean(0) for g in tgt]),
                       metric="euclidean")
    elif method == "ot":
        cost = compute_class_pairwise(src, tgt, wasserstein2)
    else:
        if bandwidths is None:
            bandwidths = mmd_bandwidths(_median_sample(src + tgt, seed), seed=seed)
        bw = np.asarray(bandwidths, dtype=np.float64)
        if bw.ndim != 1 or len(bw) == 0 or np.any(bw <= 0):
            raise ValueError(f"bandwidths must be a non-empty list of positive numbers, got {bandwidths}")
        cost = _mmd2_cost(src, tgt, bw)
    return normalize_cost(np.asarray(cost, dtype=np.float64), normalize)
