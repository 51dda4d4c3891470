r"""A shuffled-cost control: C's target columns permuted, so that each target class gets another's costs.

Same values, wrong relations. A permutation :math:`p` of the :math:`L_t` target columns gives
:math:`C'_{:, j} = C_{:, p_j}`: target class :math:`j` is now cheap from the source classes that were
cheap for target class :math:`p_j`. If JTLN under :math:`C'` does as well as under :math:`C`, the OT
term did not use what :math:`C` says about which source class teaches which target class
(``--cost_shuffle_seed``; ``recipes/sweep.py --shuffled_controls`` pairs every OT setting with it).

:math:`p` is *admissible* when every non-constant column :math:`j` (entries not all equal) receives
other values, :math:`C_{:, p_j} \ne C_{:, j}` (compared exactly, entry by entry): a non-constant
column never stays in place, and columns that are exactly equal are never swapped with each other
(that would change nothing). A constant column relates no source class to its target class more
than another, so it may stay, or take a non-constant column's place.

**When one exists.** Group the columns into classes of exactly equal columns. The :math:`n` columns
of a non-constant class need :math:`n` columns from outside it to take their places, so an
admissible :math:`p` needs :math:`n \le L_t - n` for every such class; this is also enough (the
construction of :func:`column_permutation` meets it). A C without a non-constant column has no
relation to shuffle. In both cases :func:`column_permutation` raises a one-line ``ValueError``, and
only then.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .normalize import _to_numpy

#: Uniform draws of a permutation :func:`column_permutation` tries before it constructs one (seeded too).
SHUFFLE_TRIES = 1000
#: What the shuffled cost is, in the words of the card, ``results.md`` and the sweep.
SHUFFLE_CONTROL = "a control: same values, wrong relations"
#: A description lists the permutation only up to this many target columns.
SHUFFLE_LISTED_COLUMNS = 20


def _column_classes(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, constant)``: a class id per column (exactly equal columns share one; ``-0.0 == 0.0``)
    and whether each column is constant (one value, or no rows)."""
    ids: dict[tuple[float, ...], int] = {}
    columns = [tuple(col) for col in cost.T.tolist()]
    classes = np.array([ids.setdefault(col, len(ids)) for col in columns], dtype=np.int64)
    constant = np.array([len(set(col)) <= 1 for col in columns], dtype=bool)
    return classes, constant


def _admissible(perm: np.ndarray, classes: np.ndarray, constant: np.ndarray) -> bool:
    """Whether every non-constant column ``j`` receives another class's column: ``classes[perm[j]] != classes[j]``."""
    return not bool(np.any(~constant & (classes[perm] == classes)))


def _check_shufflable(classes: np.ndarray, constant: np.ndarray) -> None:
    """Raise the one-line ``ValueError`` when no admissible permutation exists (module docstring)."""
    width = len(classes)
    if constant.all():
        raise ValueError(
            f"C has no non-constant target column (each of its {width} columns holds one value): it relates no "
            "source class to a target class, so shuffling its columns tests nothing; shuffle a cost with relations"
        )
    if width == 1:
        raise ValueError("C has one target column: no other column can take its place; a shuffled control needs "
                         "at least two target classes")  # fmt: skip
    ids, sizes = np.unique(classes[~constant], return_counts=True)
    largest = int(np.argmax(sizes))
    n = int(sizes[largest])
    if n > width - n:
        same = np.flatnonzero(classes == ids[largest]).tolist()
        raise ValueError(
            f"no permutation of C's {width} target columns gives every non-constant column other values: columns "
            f"{same} are equal and need {n} other columns to take their places, and C has {width - n}; a shuffled "
            "control needs a cost in which no more than half the columns are equal"
        )


def _constructed(classes: np.ndarray, constant: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An admissible permutation built from ``rng``: the columns in blocks of their classes (the blocks and
    each block's columns in a random order), every place taken by the column ``k`` places further, cyclically,
    ``k`` the largest block. A block of ``n <= k`` places never holds two places ``k`` or ``L_t - k >= k``
    apart, so no column lands on its own class. A constant column is a block of its own here."""
    width = len(classes)
    labels = np.where(constant, classes.max() + 1 + np.arange(width), classes)  # each constant column alone
    blocks = [rng.permutation(np.flatnonzero(labels == label)) for label in np.unique(labels)]
    order = np.concatenate([blocks[b] for b in rng.permutation(len(blocks))])
    k = max(len(block) for block in blocks)
    perm = np.empty(width, dtype=np.int64)
    perm[order] = order[(np.arange(width) + k) % width]
    return perm


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"the shuffle seed must be an integer >= 0 (a numpy seed), got {seed!r}")
    return int(seed)


def column_permutation(cost: Any, seed: int) -> np.ndarray:
    r"""A seeded admissible permutation of C's target columns (module docstring): :math:`C'_{:, j} = C_{:, p_j}`.

    Draws :math:`p` = ``rng.permutation(L_t)`` with ``rng = numpy.random.default_rng(seed)`` until one is
    admissible (uniform over the admissible permutations), at most :data:`SHUFFLE_TRIES` times (a random
    permutation of distinct columns is admissible with probability about :math:`1/e`); if none was, the
    same ``rng`` builds one (:func:`_constructed`), which always succeeds when one exists. The same C (the
    same classes of equal and constant columns) and seed give the same :math:`p`.

    Parameters
    ----------
    cost : array-like, shape (L_s, L_t)
        The cost, rows source classes, columns target classes.
    seed : int
        ``>= 0``.

    Returns
    -------
    numpy.ndarray
        int64, shape ``(L_t,)``: column ``j`` of the shuffled cost is column ``p[j]`` of ``cost``.

    Raises
    ------
    ValueError
        One line, when no admissible permutation exists (a class of equal non-constant columns larger
        than the other columns together, one column, no non-constant column) or the seed is not an
        integer ``>= 0``.
    """
    seed = _check_seed(seed)
    c = _to_numpy(cost)
    if c.ndim != 2:
        raise ValueError(f"cost matrix must be 2-D (L_s, L_t), got shape {c.shape}")
    classes, constant = _column_classes(c)
    _check_shufflable(classes, constant)
    rng = np.random.default_rng(seed)
    for _ in range(SHUFFLE_TRIES):
        perm = rng.permutation(len(classes))
        if _admissible(perm, classes, constant):
            return perm
    perm = _constructed(classes, constant, rng)
    assert _admissible(perm, classes, constant), "the construction broke its own guarantee"
    return perm


def permute_columns(cost: Any, permutation: Any) -> np.ndarray:
    r"""C with its target columns permuted: :math:`C'_{:, j} = C_{:, p_j}` (float64; the values are not rounded).

    ``permutation`` must be a permutation of ``0 .. L_t - 1`` (e.g. from :func:`column_permutation` on an
    earlier C of the same shape: a refreshed cost keeps the first one's).
    """
    c = _to_numpy(cost)
    p = np.asarray(permutation)
    if c.ndim != 2 or p.shape != (c.shape[1],) or not np.array_equal(np.sort(p), np.arange(c.shape[1])):
        raise ValueError(f"permutation {p.tolist()} is not a permutation of the {c.shape[-1]} target columns of a "
                         f"cost of shape {c.shape}: pass one drawn for a cost of this shape")  # fmt: skip
    return c[:, p.astype(np.int64)]


def shuffle_cost_columns(cost: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The shuffled-cost control: ``(C', p)`` with :math:`C'_{:, j} = C_{:, p_j}`, ``p = column_permutation(C, seed)``.

    Every non-constant column of C' holds other values than the same column of C; each column of C' is a
    column of C, bit for bit, and each row of C' holds the values of C's row in another order.
    """
    perm = column_permutation(cost, seed)
    return permute_columns(cost, perm), perm


def describe_shuffle(seed: int, permutation: Any, *, refreshed: bool = False) -> str:
    """The card's sentence on a shuffled cost: the seed, the permutation (up to :data:`SHUFFLE_LISTED_COLUMNS`
    columns) and what it is, :data:`SHUFFLE_CONTROL`; ``refreshed``: the same permutation after every refresh."""
    p = [int(v) for v in np.asarray(permutation)]
    listed = f" (column j takes C's column p[j], p = {p})" if len(p) <= SHUFFLE_LISTED_COLUMNS else ""
    again = ", the same permutation at every refresh" if refreshed else ""
    return f"Target columns then shuffled by seed {seed}{listed}{again}, {SHUFFLE_CONTROL}."


__all__ = [
    "SHUFFLE_CONTROL",
    "SHUFFLE_LISTED_COLUMNS",
    "SHUFFLE_TRIES",
    "column_permutation",
    "describe_shuffle",
    "permute_columns",
    "shuffle_cost_columns",
]
