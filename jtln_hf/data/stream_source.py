"""A streamed source: a dataset spec read as a ``datasets.IterableDataset``, columns and classes as the map-style path.

The source of JTLN may be far larger than memory (a Hub dataset, parquet / arrow / webdataset
shards, a large ImageFolder). :func:`open_streaming_source` reads it with
``datasets.load_dataset(..., streaming=True)`` and gives it the columns of the map-style path
(``image`` undecoded, ``label`` a ``ClassLabel``), with ``classes`` kept and renumbered
0..k-1 in the given order exactly as :func:`~jtln_hf.data.splits.select_classes` does.
:func:`take_per_class` reads a bounded number of images per class (what feature and
relationship costs need) into memory.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

from .sources import DATA_FILE_BUILDERS, file_builder
from .splits import resolve_classes

#: File endings a streamed source may be read from, and the packaged builder for each.
STREAM_FILE_BUILDERS = {**DATA_FILE_BUILDERS, ".tar": "webdataset"}


def open_streaming_source(
    spec: str,
    *,
    split: str = "train",
    config_name: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    classes: Sequence[str | int] | None = None,
    label_names: Sequence[str] | None = None,
) -> datasets.IterableDataset:
    """The dataset named by ``spec`` as a stream of ``image`` (undecoded) and ``label`` rows.

    Parameters
    ----------
    spec : str
        A local ImageFolder (``<split>/<class>/<image>`` or class folders only), local data files
        or a glob of them (``.parquet``, ``.arrow``, webdataset ``.tar`` shards, ``.csv`` /
        ``.json`` naming image paths), or a Hub dataset id.
    split : str
        The split to stream (a folder or data files without splits have ``train`` only).
    config_name : str, optional
        The Hub dataset's configuration.
    image_column, label_column : str
        Columns renamed to ``image`` and ``label`` (webdataset shards: e.g. ``png`` and ``cls``).
    classes : sequence of str or int, optional
        Class names or ids to keep, renumbered 0..k-1 in this order (default: every class).
    label_names : sequence of str, optional
        Class names when the label column is not a ``ClassLabel`` (a stream cannot be scanned
        for them): string labels are looked up in it, integer labels are its indices.

    Raises
    ------
    ValueError
        A path that holds nothing streamable, a missing split or column, labels without names.
    """
    ds = _load(spec, split, config_name)
    return standardize_stream(ds, image_column=image_column, label_column=label_column, classes=classes,
                              label_names=label_names)  # fmt: skip


def _load(spec: str, split: str, config_name: str | None) -> datasets.IterableDataset:
    path = Path(spec)
    if path.is_dir():
        if any((path / name).is_file() for name in ("dataset_dict.json", "state.json")):
            raise ValueError(
                f"{spec}: a save_to_disk folder is read into memory, not streamed: drop --source_streaming, "
                "or write it as parquet shards (ds.to_parquet) and stream those."
            )
        return _split(datasets.load_dataset("imagefolder", data_dir=str(path), streaming=True), split, spec)
    files = [spec] if path.is_file() else sorted(glob.glob(spec))
    if files:
        builder = file_builder(spec, files, STREAM_FILE_BUILDERS, "streamed data files")
        return datasets.load_dataset(builder, data_files={split: files}, streaming=True, split=split)
    if spec.startswith(("/", ".")):
        raise ValueError(f"{spec}: no such file or folder: pass an existing folder, data files, or a Hub dataset id.")
    kwargs = {"name": config_name} if config_name else {}
    return _split(datasets.load_dataset(spec, streaming=True, **kwargs), split, spec)


def _split(splits: datasets.IterableDatasetDict, split: str, spec: str) -> datasets.IterableDataset:
    if split not in splits:
        raise ValueError(f"--source_split {split!r}: {spec} has no such split (splits: {sorted(splits)}); pass one of them.")
    return splits[split]


def standardize_stream(
    ds: datasets.IterableDataset,
    *,
    image_column: str = "image",
    label_column: str = "label",
    classes: Sequence[str | int] | None = None,
    label_names: Sequence[str] | None = None,
) -> datasets.IterableDataset:
    """``image`` (``datasets.Image(decode=False)``) and ``label`` (``ClassLabel``) columns, ``classes`` kept.

    The streaming counterpart of :func:`~jtln_hf.data.splits.standardize_columns` followed by
    :func:`~jtln_hf.data.splits.select_classes`; see :func:`open_streaming_source`.
    """
    columns = ds.column_names
    if columns is None:
        raise ValueError(
            "the streamed source declares no features (columns unknown until read): give it features, e.g. "
            "ds.cast(datasets.Features(...)), before streaming it."
        )
    missing = [c for c in (image_column, label_column) if c not in columns]
    if missing:
        raise ValueError(
            f"the streamed source has no column {missing[0]!r} (columns: {columns}): pass the right name "
            "with --source_image_column / --source_label_column."
        )
    # undecoded first: a later map would otherwise decode and re-encode every image (a JPEG changes)
    ds = ds.select_columns([image_column, label_column]).cast_column(image_column, datasets.Image(decode=False))
    renames = {k: v for k, v in ((image_column, "image"), (label_column, "label")) if k != v}
    ds = ds.rename_columns(renames) if renames else ds
    label = ds.features["label"]
    if isinstance(label, datasets.ClassLabel):
        names = list(label.names)
    elif label_names:
        names = list(label_names)
        lookup = {name: i for i, name in enumerate(names)}
        features = ds.features.copy()
        features["label"] = datasets.ClassLabel(names=names)
        ds = ds.map(lambda v: {"label": _label_id(v, lookup, names)}, input_columns="label", features=features)
    else:
        raise ValueError(
            f"the streamed source's label column is {label} without class names, and a stream cannot be scanned "
            "for them: pass label_names (the class names, in label-id order)."
        )
    if classes is None:
        return ds
    ids = resolve_classes(classes, names)
    remap = {old: new for new, old in enumerate(ids)}
    features = ds.features.copy()
    features["label"] = datasets.ClassLabel(names=[names[i] for i in ids])
    kept = ds.filter(lambda labels: [v in remap for v in labels], input_columns="label", batched=True)
    return kept.map(lambda labels: {"label": [remap[v] for v in labels]}, input_columns="label", batched=True,
                    features=features)  # fmt: skip


def _label_id(value: Any, lookup: dict[str, int], names: Sequence[str]) -> int:
    if isinstance(value, str):
        if value not in lookup:
            raise ValueError(f"label {value!r} of the streamed source is not in label_names {list(names)}: add it.")
        return lookup[value]
    if not 0 <= int(value) < len(names):
        raise ValueError(f"label {value} of the streamed source is out of range for {len(names)} label_names.")
    return int(value)


def row_identity(image: dict[str, Any]) -> int:
    """A stable 63-bit identity of a streamed row: a hash of its encoded bytes, else of its path.

    The batch transform seeds augmentation from ``(domain, row)``; a streamed row has no index,
    so this identity stands in for it and augmentation stays a function of the batch alone.
    """
    raw = image.get("bytes") or str(image.get("path")).encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little") & (2**63 - 1)


def take_per_class(stream: datasets.IterableDataset, per_class: int, *, max_rows: int) -> datasets.Dataset:
    """The first ``per_class`` rows of every class of ``stream``, read from at most ``max_rows`` rows.

    What a feature or relationship cost reads of a streamed source: a bounded sample held in
    memory (``image`` undecoded, ``label`` with the stream's ``ClassLabel``).

    Raises
    ------
    ValueError
        Naming the classes with fewer than ``per_class`` rows among the first ``max_rows``.
    """
    names = stream.features["label"].names
    counts = [0] * len(names)
    rows: list[dict[str, Any]] = []
    for read, example in enumerate(stream):
        if read >= max_rows or min(counts) >= per_class:
            break
        if counts[example["label"]] < per_class:
            counts[example["label"]] += 1
            rows.append(example)
    short = [f"{names[c]} ({n})" for c, n in enumerate(counts) if n < per_class]
    if short:
        raise ValueError(
            f"within the first {max_rows} streamed source rows, classes {', '.join(short)} have fewer than "
            f"{per_class} images: lower the images per class (--cost_samples_per_class), or drop those classes "
            "with --source_classes."
        )
    return _in_memory(rows, stream)


def take_rows(stream: datasets.IterableDataset, rows: int) -> datasets.Dataset:
    """The first ``rows`` rows of ``stream`` in memory (e.g. the sample the input statistics are read from)."""
    return _in_memory(list(stream.take(rows)), stream)


def _in_memory(rows: list[dict[str, Any]], stream: datasets.IterableDataset) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(decode=False), "label": stream.features["label"]})
    return datasets.Dataset.from_list(rows, features=features)
