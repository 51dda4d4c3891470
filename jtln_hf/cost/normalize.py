"""Checks shared by the cost builders, :func:`normalize_cost` and :func:`validate_cost`."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..configuration_jtln import check_cost_matrix


COST_NORMALIZATIONS = ("none", "minmax", "max", "column")
#: The normalisation of a run's cost (``--cost_normalization``): every target class gets a free source class.
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
