"""Costs from prior knowledge: hand-written relations and the tree distance in a label hierarchy."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .normalize import DEFAULT_NORMALIZATION, _check_unique, normalize_cost

# --------------------------------------------------------------------------- relation / hierarchy


def cost_from_relation(
    relation: Mapping[str, Mapping[str, float]],
    source_labels: Sequence[str],
    target_labels: Sequence[str],
    *,
    default: float = 1.0,
    normalize: str = DEFAULT_NORMALIZATION,
) -> np.ndarray:
    """Cost from hand-written source -> target costs, then :func:`normalize_cost`.

    ``C[i, j] = relation[source_labels[i]][target_labels[j]]`` when listed, else ``default``; lower
    means more related. Every name in ``relation`` must be in the label lists, so that a typo
    cannot fall back to ``default``. Returns float64 of shape ``(len(source_labels), len(target_labels))``.
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
    normalize: str = DEFAULT_NORMALIZATION,
) -> np.ndarray:
    """Cost from a label tree, then :func:`normalize_cost`: ``C[i, j]`` = edges between labels ``i`` and ``j``.

    The tree distance ``depth(i) + depth(j) - 2 depth(lca(i, j))`` (as WordNet path distances).
    ``parents`` maps child -> parent (the root to ``None`` or absent); inner nodes need not be
    labels. Raises ``ValueError`` on an unknown label, a cycle or two labels without a common root.
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
