"""The normalisations of C (:data:`NORMALIZATIONS`, :data:`DEFAULT_NORMALIZATION`), :func:`normalize_cost`,
:func:`validate_cost` and the input checks every cost builder shares."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..configuration_jtln import check_cost_matrix

#: Each normalisation of C and what it does, in a few words (CLI help, the cost figure's title, the model card).
NORMALIZATIONS = {
    "none": "not rescaled",
    "minmax": "rescaled to [0, 1]",
    "max": "divided by its maximum",
    "column": "rescaled to [0, 1], each column shifted to min 0",
    "column-minmax": "each column rescaled to [0, 1] on its own",
    "column-top1": "made 0/1: 0 for each column's cheapest source class, 1 for the others",
    "column-below-mean": "made 0/1: 0 where below its column's mean, 1 elsewhere",
}
COST_NORMALIZATIONS = tuple(NORMALIZATIONS)
#: The normalisation of :func:`normalize_cost`, of every builder here and of ``--cost_normalization``.
DEFAULT_NORMALIZATION = "column"


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


def normalize_cost(cost: Any, method: str = DEFAULT_NORMALIZATION) -> np.ndarray:
    r"""Rescale a cost matrix C (rows source classes, columns target classes).

    * ``"none"``: C unchanged (as float64).
    * ``"minmax"``: :math:`(C - \min C) / (\max C - \min C)`, in ``[0, 1]``.
    * ``"max"``: :math:`C / \max C` (needs :math:`\max C \ge 0`).
    * ``"column"`` (default): ``"minmax"``, then :math:`C_{ij} - \min_k C_{kj}`, so that every
      target class has a source class of cost 0 (docs/design.md, "Decisions").
    * ``"column-minmax"``: :math:`(C_{ij} - \min_k C_{kj}) / (\max_k C_{kj} - \min_k C_{kj})`, each
      column on its own: every target class has a free source class *and* a cost-1 one, so no
      column is cheap from every source class (a constant column becomes zeros).
    * ``"column-top1"``: :math:`C'_{ij} = [C_{ij} > \min_k C_{kj}]`, 0 for the cheapest source
      class of each target class (every tie of it included), 1 for the others.
    * ``"column-below-mean"``: :math:`C'_{ij} = [C_{ij} \ge \bar C_{\cdot j}]` with
      :math:`\bar C_{\cdot j} = \frac{1}{L_s} \sum_k C_{kj}`: 0 for the source classes cheaper than
      the column's average, 1 for the others (a constant column becomes zeros).

    The two 0/1 forms give a data-driven C the shape of a hand-written relation ("related" or
    "not"): the Fashion-MNIST prior's gain comes from its sharp columns, which graded costs computed
    from 5 target images per class do not have. They are not in POT or in the paper (which uses
    the raw feature distances); each is one comparison per entry.

    A constant C carries no class structure: every method but ``"none"`` returns zeros for it
    (``"max"`` only for zeros, since it needs :math:`\max C \ge 0`).

    Parameters
    ----------
    cost : array-like, shape (L_s, L_t)
        Finite costs.
    method : str
        One of :data:`NORMALIZATIONS`.

    Returns
    -------
    numpy.ndarray
        float64, the shape of ``cost``.
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
    if method in ("column-top1", "column-below-mean"):
        # a constant column is zeros: its float mean may differ from its value in the last bit
        edge = c.min(axis=0, keepdims=True) if method == "column-top1" else c.mean(axis=0, keepdims=True)
        flat = np.ptp(c, axis=0, keepdims=True) == 0
        return np.where(flat, 0.0, (c > edge) if method == "column-top1" else (c >= edge)).astype(np.float64)
    if method == "column-minmax":
        lo, span = c.min(axis=0, keepdims=True), np.ptp(c, axis=0, keepdims=True)
        return np.divide(c - lo, span, out=np.zeros_like(c), where=span > 0)
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
