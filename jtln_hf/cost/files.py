"""Costs saved as ``.npy`` or ``.csv`` (plain or labelled), and the shipped Fashion-MNIST prior."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .normalize import COST_NORMALIZATIONS, _check_labels_shape, _check_method, _check_unique, normalize_cost

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
    """Load a cost matrix C (rows source classes, columns target classes) from ``.npy`` or ``.csv``.

    A ``.csv`` is plain (numbers only) or labelled: target names in its first row, source names in
    its first column (a file whose every cell is a number is plain). Given ``source_labels`` /
    ``target_labels``, a labelled file's rows / columns are picked and ordered by name, and C must
    have their lengths. ``normalize`` (one of :data:`NORMALIZATIONS`) defaults to ``"none"``: a
    file is read as written, and its callers (``--cost``) normalise it after. Returns float64.
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
