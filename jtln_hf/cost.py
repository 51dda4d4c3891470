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

import csv
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import ot
from scipy.spatial.distance import pdist

from .configuration_jtln import check_cost_matrix

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

COST_NORMALIZATIONS = ("none", "minmax", "max", "column")
FEATURE_COST_METHODS = ("ot", "mmd", "centroid")
#: Gaussian-kernel bandwidths of the multi-kernel MMD, as multiples of the median
#: pairwise distance of the pooled features.
MMD_BANDWIDTH_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)
#: At most this many pooled points are used to estimate the median pairwise distance.
_MEDIAN_MAX_POINTS = 2000

#: Hand-written prior for the embedded Fashion-MNIST split (rows source, columns target), labelled CSV.
FASHION_MNIST_PRIOR_PATH = Path(__file__).resolve().parent / "resources" / "fashion_mnist_prior.csv"
FASHION_MNIST_PRIOR_SOURCE_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Sneaker")
FASHION_MNIST_PRIOR_TARGET_LABELS = ("Shirt", "Coat", "Sandal", "Bag", "Ankle boot")


# --------------------------------------------------------------------------- helpers


def _to_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """Convert a numpy array, torch tensor or nested sequence to a numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_method(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {tuple(allowed)}")


def _check_unique(labels: Sequence[str], domain: str) -> list[str]:
    labels = list(labels)
    seen: set[str] = set()
    dupes = sorted({lab for lab in labels if lab in seen or seen.add(lab)})
    if dupes:
        raise ValueError(f"duplicate {domain} label names: {dupes}")
    return labels


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _check_finite(cost: np.ndarray) -> None:
    bad = ~np.isfinite(cost)
    if bad.any():
        pos = _first_bad(bad)
        raise ValueError(
            f"cost matrix has a non-finite value ({cost[pos]}) at (row, col) = {pos} "
            f"({int(bad.sum())} non-finite entries in all): replace NaN/inf entries with finite "
            "costs (e.g. a large finite 'unrelated' cost) before using it"
        )


def _check_labels_shape(cost: np.ndarray, source_labels: Sequence[str] | None,
                        target_labels: Sequence[str] | None) -> None:
    expected = (
        cost.shape[0] if source_labels is None else len(source_labels),
        cost.shape[1] if target_labels is None else len(target_labels),
    )
    if cost.shape != expected:
        raise ValueError(
            f"cost matrix has shape {cost.shape} but the given labels need shape {expected} "
            "(rows = source classes, columns = target classes)"
        )


# --------------------------------------------------------------------------- normalise / validate


def normalize_cost(cost: Any, method: str = "minmax") -> np.ndarray:
    r"""Rescale a cost matrix.

    Parameters
    ----------
    cost : array-like, shape (L_s, L_t)
        Finite costs, rows = source classes, columns = target classes.
    method : {"none", "minmax", "max", "column"}
        * ``"none"``: returned unchanged (as float64).
        * ``"minmax"``: :math:`(C - \min C) / (\max C - \min C)`, values in ``[0, 1]``.
        * ``"max"``: :math:`C / \max C` (keeps 0 as "free"; needs :math:`\max C \ge 0`).
        * ``"column"``: ``"minmax"`` and then each column shifted to a minimum of 0,
          :math:`C_{ij} \leftarrow C_{ij} - \min_k C_{kj}`, so every target class has at
          least one free source class.

    Returns
    -------
    numpy.ndarray
        float64, same shape. A constant matrix carries no information about which source
        class suits which target class, so ``"minmax"``, ``"max"`` (when all zeros) and
        ``"column"`` return zeros for it.

    Notes
    -----
    Why ``"column"`` exists (docs/design.md, "Decisions"): in the OT term every prediction of
    target class ``j`` costs at least :math:`\min_i C_{ij}`. A target class with no cheap
    source class (``Bag`` in the Fashion-MNIST prior, whose column is all 0.8 or 1) is thus
    penalised as a whole and the target head is pushed away from it. Shifting each column to
    a minimum of 0 removes that bias while keeping the ranking of source classes within
    each column; on the Fashion-MNIST split it gave most of JTLN's gain (79.9 vs 78.8 %
    at 5 shots, 87.9 vs 87.5 % at 20 shots). It is the training default, chosen by the
    trainer/recipe; this function's own default stays ``"minmax"``.
    """
    _check_method(method, COST_NORMALIZATIONS, "cost normalization")
    c = _to_numpy(cost).copy()
    if c.ndim != 2:
        raise ValueError(f"cost matrix must be 2-D (L_s, L_t), got shape {c.shape}")
    _check_finite(c)
    if method == "none" or c.size == 0:
        return c
    if method == "max":
        top = c.max()
        if top < 0:
            raise ValueError(f"normalize='max' needs a non-negative maximum, got {top}; use 'minmax'")
        return np.zeros_like(c) if top == 0 else c / top
    lo, hi = c.min(), c.max()
    c = np.zeros_like(c) if hi == lo else (c - lo) / (hi - lo)
    if method == "column":
        c = c - c.min(axis=0, keepdims=True)
    return c


def validate_cost(cost: Any, num_source_labels: int, num_target_labels: int) -> np.ndarray:
    """Check a cost matrix against a model's label spaces and return it as float64.

    Parameters
    ----------
    cost : array-like or torch.Tensor
        Candidate cost, expected shape ``(num_source_labels, num_target_labels)``.
    num_source_labels, num_target_labels : int
        ``L_s`` and ``L_t`` of the model.

    Returns
    -------
    numpy.ndarray
        The cost as a float64 array of shape ``(L_s, L_t)``.

    Raises
    ------
    ValueError
        From :func:`jtln_hf.configuration_jtln.check_cost_matrix`, the one check every consumer
        runs: wrong shape, NaN/inf or a negative entry (the message names the first bad entry).
    """
    c = _to_numpy(cost)
    check_cost_matrix(c, int(num_source_labels), int(num_target_labels))
    return c


# --------------------------------------------------------------------------- relation / hierarchy


def cost_from_relation(
    relation: Mapping[str, Mapping[str, float]],
    source_labels: Sequence[str],
    target_labels: Sequence[str],
    *,
    default: float = 1.0,
    normalize: str = "minmax",
) -> np.ndarray:
    """Cost from hand-written source -> target costs.

    ``C[i, j] = relation[source_labels[i]][target_labels[j]]`` when listed, else ``default``;
    then :func:`normalize_cost` with ``normalize``.

    Parameters
    ----------
    relation : mapping of source name -> {target name: cost}
        Finite costs; lower means more related. Every name must be in the label lists
        (a typo would otherwise silently fall back to ``default``).
    source_labels, target_labels : sequence of str
        Class names, in the order of the model's source / target heads.
    default : float
        Cost of pairs not listed.
    normalize : str
        One of :data:`COST_NORMALIZATIONS`.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(len(source_labels), len(target_labels))``.

    Raises
    ------
    ValueError
        On an unknown name (the message lists the valid names) or a non-finite cost.
    """
    src = {name: i for i, name in enumerate(_check_unique(source_labels, "source"))}
    tgt = {name: j for j, name in enumerate(_check_unique(target_labels, "target"))}
    if not math.isfinite(default):
        raise ValueError(f"default cost must be finite, got {default}")
    cost = np.full((len(src), len(tgt)), float(default))
    for s_name, row in relation.items():
        if s_name not in src:
            raise ValueError(f"unknown source label {s_name!r} in relation; valid source labels: {list(src)}")
        for t_name, value in row.items():
            if t_name not in tgt:
                raise ValueError(f"unknown target label {t_name!r} in relation; valid target labels: {list(tgt)}")
            if not math.isfinite(float(value)):
                raise ValueError(f"relation[{s_name!r}][{t_name!r}] = {value} is not finite")
            cost[src[s_name], tgt[t_name]] = float(value)
    return normalize_cost(cost, normalize)


def _path_to_root(label: str, parents: Mapping[str, str | None]) -> list[str]:
    """``[label, parent, grandparent, ..., root]``; raises on a cycle."""
    path, seen = [label], {label}
    node = parents.get(label)
    while node is not None:
        if node in seen:
            cycle = path[path.index(node):] + [node]
            raise ValueError(f"label hierarchy has a cycle: {' -> '.join(map(repr, cycle))}")
        path.append(node)
        seen.add(node)
        node = parents.get(node)
    return path


def _tree_distance(path_a: list[str], path_b: list[str]) -> int:
    """Number of edges between two nodes given their root paths."""
    depth_in_b = {node: k for k, node in enumerate(path_b)}
    for k, node in enumerate(path_a):
        if node in depth_in_b:
            return k + depth_in_b[node]
    raise ValueError(
        f"labels {path_a[0]!r} and {path_b[0]!r} are in different trees "
        f"(roots {path_a[-1]!r} and {path_b[-1]!r}): give the hierarchy a common root"
    )


def cost_from_hierarchy(
    parents: Mapping[str, str | None],
    source_labels: Sequence[str],
    target_labels: Sequence[str],
    *,
    normalize: str = "minmax",
) -> np.ndarray:
    """Cost from a label tree: ``C[i, j]`` = number of edges on the tree path between
    source label ``i`` and target label ``j``.

    The tree distance is ``depth(i) + depth(j) - 2 depth(lca(i, j))``, as in WordNet path
    distances (prior-knowledge costs in the spirit of the paper's abstract; not one of its
    two experimental variants).

    Parameters
    ----------
    parents : mapping of child name -> parent name
        The root maps to ``None`` or is absent as a key. Nodes need not be labels
        (internal nodes such as ``"clothing"`` are fine).
    source_labels, target_labels : sequence of str
        Class names; each must occur in ``parents`` (as a key or as a parent).
    normalize : str
        One of :data:`COST_NORMALIZATIONS`.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(len(source_labels), len(target_labels))``.

    Raises
    ------
    ValueError
        On an unknown label, a cycle anywhere in ``parents``, or two labels without a
        common root.
    """
    source_labels = _check_unique(source_labels, "source")
    target_labels = _check_unique(target_labels, "target")
    for child in parents:  # reject malformed hierarchies up front
        _path_to_root(child, parents)
    known = set(parents) | {p for p in parents.values() if p is not None}
    for domain, labels in (("source", source_labels), ("target", target_labels)):
        missing = [lab for lab in labels if lab not in known]
        if missing:
            raise ValueError(f"{domain} labels not in the hierarchy: {missing}")
    src_paths = [_path_to_root(lab, parents) for lab in source_labels]
    tgt_paths = [_path_to_root(lab, parents) for lab in target_labels]
    cost = np.array([[_tree_distance(a, b) for b in tgt_paths] for a in src_paths], dtype=np.float64)
    return normalize_cost(cost.reshape(len(src_paths), len(tgt_paths)), normalize)


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
    value = ot.emd2(a, b, ot.dist(x, y, metric="sqeuclidean"), numItermax=1_000_000)
    return math.sqrt(max(float(value), 0.0))


def mmd_bandwidths(features: np.ndarray, *, seed: int = 0,
                   multipliers: Sequence[float] = MMD_BANDWIDTH_MULTIPLIERS) -> np.ndarray:
    """Gaussian bandwidths ``sigma_k = median pairwise distance x multiplier_k``.

    The median Euclidean distance is taken over the pooled ``features`` (a seeded random
    subset of at most 2000 rows when larger). Falls back to the mean distance, then to 1,
    when the median is 0 (mostly duplicate rows).
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

    def mean_kernel(u: np.ndarray, v: np.ndarray) -> float:
        d2 = ot.dist(u, v, metric="sqeuclidean")
        return float(sum(np.exp(-d2 / s).mean() for s in sig2))

    value = mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y)
    return max(value, 0.0)


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
    x = _to_numpy(features)
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
        groups.append(x[rows])
    return groups


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
    normalize: str = "minmax",
) -> np.ndarray:
    r"""Cost from features of a (pre-trained) network, e.g. its penultimate layer.

    With :math:`X_i` the features of source class ``i`` and :math:`Y_j` those of target
    class ``j``:

    * ``"ot"`` (the paper's **fc7-OT**): :math:`C_{ij} = W_2(X_i, Y_j)`, the exact OT
      distance with uniform weights and squared-Euclidean ground metric, square-rooted
      (:func:`wasserstein2`, via :func:`ot.emd2` / :func:`ot.dist`).
    * ``"mmd"`` (the paper's **fc7-MKMMD**): :math:`C_{ij} = \mathrm{MMD}^2(X_i, Y_j)`,
      biased V-statistic with a sum of Gaussian kernels
      :math:`\exp(-\|x-y\|^2 / (2\sigma_s^2))`, clipped at 0 (:func:`mmd2`). Unless
      ``bandwidths`` is given, :math:`\sigma_s` = median pairwise distance of the pooled
      (subsampled) source and target features × (0.25, 0.5, 1, 2, 4), computed once so that
      every class pair uses the same kernels (:func:`mmd_bandwidths`). References:
      Gretton et al. 2012 (JMLR, NIPS); Long et al. 2015 (DAN).
    * ``"centroid"``: :math:`C_{ij} = \|\bar X_i - \bar Y_j\|_2`, Euclidean distance
      between class means (all rows are used; ``max_per_class`` is ignored).

    Reference: Lu, Chen & Saidi 2017, "Optimal Transport for Deep Joint Transfer Learning".

    Parameters
    ----------
    source_features, target_features : array-like or torch.Tensor, shape (N, D)
    source_labels, target_labels : array-like or torch.Tensor, shape (N,)
        Integer class ids in each domain's own label space ``[0, L)``.
    method : {"ot", "mmd", "centroid"}
    num_source_labels, num_target_labels : int, optional
        ``L_s`` / ``L_t``; default ``max(label) + 1``. Every class needs at least one row.
    max_per_class : int or None
        For ``"ot"``/``"mmd"``, a seeded random subset of at most this many rows per class
        (cost is quadratic/cubic in it). ``None`` uses all rows.
    seed : int
        Seed of the subsampling.
    bandwidths : sequence of float, optional
        Explicit Gaussian bandwidths :math:`\sigma_s` for ``"mmd"``.
    normalize : str
        One of :data:`COST_NORMALIZATIONS`.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(L_s, L_t)``.

    Raises
    ------
    ValueError
        On an unknown method, mismatched shapes, labels out of range, or a class with no
        rows (the message names the class and the domain).
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
        cost = ot.dist(np.stack([g.mean(0) for g in src]), np.stack([g.mean(0) for g in tgt]),
                       metric="euclidean")
    elif method == "ot":
        cost = compute_class_pairwise(src, tgt, wasserstein2)
    else:
        if bandwidths is None:
            bandwidths = mmd_bandwidths(np.concatenate(src + tgt), seed=seed)
        bw = np.asarray(bandwidths, dtype=np.float64)
        if bw.ndim != 1 or len(bw) == 0 or np.any(bw <= 0):
            raise ValueError(f"bandwidths must be a non-empty list of positive numbers, got {bandwidths}")
        cost = compute_class_pairwise(src, tgt, lambda a, b: mmd2(a, b, bw))
    return normalize_cost(np.asarray(cost, dtype=np.float64), normalize)


# --------------------------------------------------------------------------- relationship


def category_relationship(source_probs: Any, target_labels: Any, num_target_labels: int | None = None) -> np.ndarray:
    r"""The category relationship :math:`p(y_s \mid y_t)` of Co-Tuning (You et al. 2020).

    For each target class :math:`j`, the mean of the source head's predicted distribution over
    the labelled target images of that class:
    :math:`p(y_s = i \mid y_t = j) = \frac{1}{|T_j|} \sum_{x \in T_j} h_s(x)_i`
    (TLlib's ``Relationship`` without calibration). Call it on a source head that has learnt
    the source task (after the source stage or a warm-up).

    Parameters
    ----------
    source_probs : array-like, shape (N, L_s)
        Softmax of the source head on the labelled target images (rows sum to 1).
    target_labels : array-like, shape (N,)
        Their target class ids in ``[0, L_t)``.
    num_target_labels : int, optional
        ``L_t``; default ``max(label) + 1``. Every class needs at least one image.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(L_t, L_s)``, each row a distribution over the source classes.
    """
    probs = _to_numpy(source_probs)
    labels = np.asarray(_to_numpy(target_labels, np.int64), dtype=np.int64)
    if probs.ndim != 2 or labels.shape != (len(probs),):
        raise ValueError(f"source_probs must be (N, L_s) and target_labels (N,), got {probs.shape} and {labels.shape}")
    _check_finite(probs)
    if np.any(probs < 0) or not np.allclose(probs.sum(1), 1.0, atol=1e-4):
        raise ValueError("source_probs must be probabilities (rows >= 0 summing to 1): pass softmax(source_logits)")
    groups = _group_by_class(probs, labels, num_target_labels, "target", None, np.random.default_rng(0))
    return np.stack([g.mean(0) for g in groups])


def cost_from_relationship(relationship: Any, *, floor: float = 1e-6, normalize: str = "minmax") -> np.ndarray:
    r"""A JTLN cost from a category relationship: :math:`C_{ij} = -\log p(y_s = i \mid y_t = j)`.

    A source class the source head often predicts for target class ``j`` is a cheap teacher for
    ``j``: a data-driven cost that needs neither a prior nor a feature-set distance
    (:func:`category_relationship` gives the relationship). Probabilities are floored at
    ``floor`` so that a never-predicted pair costs :math:`-\log(\text{floor})`, not infinity.

    Parameters
    ----------
    relationship : array-like, shape (L_t, L_s)
        :math:`p(y_s \mid y_t)`, one distribution over source classes per target class.
    floor : float
        Smallest probability used in the logarithm.
    normalize : str
        One of :data:`COST_NORMALIZATIONS`, applied to the ``(L_s, L_t)`` result.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(L_s, L_t)`` (rows source, columns target, as every cost here).
    """
    _check_method(normalize, COST_NORMALIZATIONS, "cost normalization")
    rel = _to_numpy(relationship)
    if rel.ndim != 2:
        raise ValueError(f"relationship must be a 2-D (L_t, L_s) array, got shape {rel.shape}")
    _check_finite(rel)
    return normalize_cost(-np.log(np.maximum(rel, floor)).T, normalize)


# --------------------------------------------------------------------------- files


def _parse_float(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _read_csv(path: Path) -> tuple[np.ndarray, list[str] | None, list[str] | None]:
    """Read a plain or labelled CSV; returns ``(matrix, row_names, col_names)``."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [[cell.strip() for cell in row] for row in csv.reader(fh) if any(c.strip() for c in row)]
    if not rows:
        raise ValueError(f"{path}: empty CSV")
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"{path}: rows have different numbers of cells {sorted({len(r) for r in rows})}")
    if all(_parse_float(c) is not None for r in rows for c in r):
        return np.array([[float(c) for c in r] for r in rows]), None, None
    col_names, body = rows[0][1:], rows[1:]
    row_names = [r[0] for r in body]
    values = np.empty((len(body), len(col_names)))
    for i, r in enumerate(body):
        for j, cell in enumerate(r[1:]):
            v = _parse_float(cell)
            if v is None:
                raise ValueError(
                    f"{path}: non-numeric cost {cell!r} at row {row_names[i]!r}, column {col_names[j]!r} "
                    "(a labelled CSV has target names in its first row and source names in its first column)"
                )
            values[i, j] = v
    _check_unique(row_names, f"{path} row (source)")
    _check_unique(col_names, f"{path} column (target)")
    return values, row_names, col_names


def _reorder(names_in_file: list[str], wanted: Sequence[str] | None, axis: str, path: Path) -> list[int] | slice:
    if wanted is None:
        return slice(None)
    index = {name: k for k, name in enumerate(names_in_file)}
    missing = [name for name in wanted if name not in index]
    if missing:
        raise ValueError(f"{path}: {axis} labels {missing} not found; the file has {names_in_file}")
    return [index[name] for name in wanted]


def load_cost(
    path: str | os.PathLike,
    source_labels: Sequence[str] | None = None,
    target_labels: Sequence[str] | None = None,
    *,
    normalize: str = "none",
) -> np.ndarray:
    """Load a cost matrix from ``.npy`` or ``.csv``.

    * ``.npy``: a 2-D array, rows = source classes, columns = target classes.
    * ``.csv`` plain: numbers only, same layout.
    * ``.csv`` labelled: first row = target names, first column = source names, top-left
      cell anything (leave it empty or non-numeric: a file whose every cell parses as a
      number is read as plain). When ``source_labels``/``target_labels`` are given the rows/
      columns are selected and reordered to them; a name missing from the file is an error.

    Parameters
    ----------
    path : str or os.PathLike
    source_labels, target_labels : sequence of str, optional
        When given, the result must have ``len(source_labels)`` rows / ``len(target_labels)``
        columns.
    normalize : str
        One of :data:`COST_NORMALIZATIONS` (default ``"none"``: the file is used as is).

    Returns
    -------
    numpy.ndarray
        float64, shape ``(L_s, L_t)``.

    Raises
    ------
    ValueError
        On an unknown extension, a malformed file, NaN/inf, a missing label name, or a shape
        that does not match the given label lists (both shapes are named).
    """
    path = Path(path)
    _check_method(normalize, COST_NORMALIZATIONS, "cost normalization")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        cost = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
        if cost.ndim != 2:
            raise ValueError(f"{path}: expected a 2-D (L_s, L_t) array, got shape {cost.shape}")
    elif suffix == ".csv":
        cost, row_names, col_names = _read_csv(path)
        if row_names is not None:
            cost = cost[_reorder(row_names, source_labels, "source", path), :]
            cost = cost[:, _reorder(col_names, target_labels, "target", path)]
    else:
        raise ValueError(f"{path}: unknown cost file extension {path.suffix!r}; use .npy or .csv")
    _check_labels_shape(cost, source_labels, target_labels)
    return normalize_cost(cost, normalize)
