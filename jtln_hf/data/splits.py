"""Columns, classes, source/target splits by class and k-shot sampling."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np

from ..errors import did_you_mean
from .labels import read_column


def standardize_columns(
    ds: datasets.Dataset, *, image_column: str = "image", label_column: str = "label"
) -> datasets.Dataset:
    """Rename ``image_column``/``label_column`` to ``image``/``label`` and make the label a ClassLabel."""
    missing = [c for c in (image_column, label_column) if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"dataset has no column {missing[0]!r} (columns: {ds.column_names}): pass the right name "
            "with --image_column / --label_column."
        )
    ds = ds.select_columns([image_column, label_column])
    if image_column != "image":
        ds = ds.rename_column(image_column, "image")
    if label_column != "label":
        ds = ds.rename_column(label_column, "label")
    if not isinstance(ds.features["label"], datasets.ClassLabel):
        ds = ds.class_encode_column("label")
    if not isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image())
    return ds


# ----------------------------------------------------------------------------- splits and shots
def resolve_classes(classes: Sequence[str | int], label_names: Sequence[str]) -> list[int]:
    """Class names or indices -> indices into ``label_names``; unknown names raise with the valid ones."""
    ids = []
    for c in classes:
        if isinstance(c, (int, np.integer)) or (isinstance(c, str) and c.isdigit() and c not in label_names):
            idx = int(c)
            if not 0 <= idx < len(label_names):
                raise ValueError(f"class index {idx} is out of range: the dataset has {len(label_names)} classes.")
        elif c in label_names:
            idx = list(label_names).index(c)
        else:
            raise ValueError(f"unknown class {c!r}{did_you_mean(str(c), label_names)}: valid names are {list(label_names)}.")
        ids.append(idx)
    if len(set(ids)) != len(ids):
        raise ValueError(f"class list {list(classes)} names a class twice.")
    return ids


def select_classes(ds: datasets.Dataset, classes: Sequence[str | int]) -> datasets.Dataset:
    """Keep the rows of ``classes`` and renumber their labels 0..k-1 in the given order."""
    names = ds.features["label"].names
    ids = resolve_classes(classes, names)
    remap = {old: new for new, old in enumerate(ids)}
    kept = ds.filter(lambda labels: [label in remap for label in labels], input_columns="label", batched=True)
    new_feature = datasets.ClassLabel(names=[names[i] for i in ids])
    features = kept.features.copy()
    features["label"] = new_feature
    return kept.map(
        lambda labels: {"label": [remap[label] for label in labels]},
        input_columns="label",
        batched=True,
        features=features,
    )


def split_by_classes(
    ds: datasets.Dataset, source_classes: Sequence[str | int], target_classes: Sequence[str | int]
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split one labelled dataset into a source and a target task by disjoint class lists."""
    if not source_classes or not target_classes:
        raise ValueError("source and target class lists must both be non-empty.")
    names = ds.features["label"].names
    overlap = set(resolve_classes(source_classes, names)) & set(resolve_classes(target_classes, names))
    if overlap:
        raise ValueError(
            f"classes {[names[i] for i in sorted(overlap)]} are in both the source and the target list: "
            "JTLN's source and target label sets are disjoint."
        )
    return select_classes(ds, source_classes), select_classes(ds, target_classes)


def sample_shots(ds: datasets.Dataset, shots: int, seed: int = 0) -> datasets.Dataset:
    """Draw ``shots`` rows of every class, reproducibly (``numpy.random.default_rng(seed)``)."""
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise ValueError(f"shots must be an integer >= 1, got {shots!r}: pass the number of images per class.")
    labels = np.asarray(read_column(ds, "label"))
    rng = np.random.default_rng(seed)
    chosen = []
    for c, name in enumerate(ds.features["label"].names):
        rows = np.flatnonzero(labels == c)
        if len(rows) < shots:
            raise ValueError(f"class {name!r} has {len(rows)} images but {shots} shots were asked: lower --shots.")
        chosen.append(rng.choice(rows, size=shots, replace=False))
    return ds.select(np.sort(np.concatenate(chosen)))
