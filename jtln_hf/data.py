"""Data for JTLN: loading, source/target splits, few-shot sampling, timm transforms, paired batches.

Every training batch holds a fixed number of source rows and of target rows (the configured
source fraction), also when shuffled and when Accelerate shards batches over processes: the
:class:`PairedBatchSampler` yields *per-device* batches, and Accelerate hands whole batches to
each process, so the ratio holds on every device by construction.

Why not ``datasets.interleave_datasets`` alone: it fixes the order of rows, not the content of a
batch. With a random sampler on top, a batch can be all source; with a sequential one, the
default distributed sampler strides rows over ranks and an alternating s,t,s,t order puts every
source row on rank 0. We concatenate the two domains (``datasets.concatenate_datasets``) and let
the batch sampler draw from each side.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import timm.data
import torch
from PIL import Image as PILImage
from torch.utils.data import Sampler

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DEFAULT_SOURCE_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Sneaker")
DEFAULT_TARGET_CLASSES = ("Shirt", "Coat", "Sandal", "Bag", "Ankle boot")
# timm data config for Fashion-MNIST at its native 28x28 (mean/std of the training images).
FASHION_MNIST_DATA_CONFIG = {
    "input_size": [1, 28, 28],
    "interpolation": "bilinear",
    "mean": [0.2860],
    "std": [0.3530],
    "crop_pct": 1.0,
    "crop_mode": "center",
}
SOURCE, TARGET = 0, 1


# --------------------------------------------------------------------------------------- loading
def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def _fashion_mnist_rows(images_path: str, labels_path: str) -> Iterator[dict[str, Any]]:
    images = _read_idx(Path(images_path), 16).reshape(-1, 28, 28)
    labels = _read_idx(Path(labels_path), 8)
    for image, label in zip(images, labels):
        yield {"image": image, "label": int(label)}


def load_fashion_mnist(split: str = "train", data_dir: str | Path = FASHION_MNIST_DIR) -> datasets.Dataset:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` as a ``datasets.Dataset``.

    Columns: ``image`` (``datasets.Image``, 28x28 grayscale) and ``label`` (``ClassLabel`` with the
    ten Fashion-MNIST names). Built once with ``Dataset.from_generator`` and then served from the
    ``datasets`` cache.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    prefix = "train" if split == "train" else "t10k"
    data_dir = Path(data_dir)
    images, labels = data_dir / f"{prefix}-images-idx3-ubyte.gz", data_dir / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (images, labels):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: install Fashion-MNIST with `apt-get install dataset-fashion-mnist` "
                "(or `make data`), or pass data_dir= the folder holding the idx .gz files."
            )
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(FASHION_MNIST_LABELS))}
    )
    return datasets.Dataset.from_generator(
        _fashion_mnist_rows,
        features=features,
        gen_kwargs={"images_path": str(images), "labels_path": str(labels)},
        split=datasets.Split.TRAIN if split == "train" else datasets.Split.TEST,
    )


def load_hub_dataset(
    name: str,
    split: str,
    *,
    image_column: str = "image",
    label_column: str = "label",
    **load_kwargs: Any,
) -> datasets.Dataset:
    """A Hub (or local) dataset through ``datasets.load_dataset``, renamed to ``image``/``label``.

    A label column that is not a ``ClassLabel`` is class-encoded (``class_encode_column``).
    Needs the network for Hub names (the online path).
    """
    ds = datasets.load_dataset(name, split=split, **load_kwargs)
    return standardize_columns(ds, image_column=image_column, label_column=label_column)


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
            raise ValueError(f"unknown class {c!r}: valid names are {list(label_names)}.")
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
    labels = np.asarray(ds["label"])
    rng = np.random.default_rng(seed)
    chosen = []
    for c, name in enumerate(ds.features["label"].names):
        rows = np.flatnonzero(labels == c)
        if len(rows) < shots:
            raise ValueError(f"class {name!r} has {len(rows)} images but {shots} shots were asked: lower --shots.")
        chosen.append(rng.choice(rows, size=shots, replace=False))
    return ds.select(np.sort(np.concatenate(chosen)))


# -------------------------------------------------------------------------------------- transforms
def build_transform(data_config: dict[str, Any], training: bool, **train_kwargs: Any) -> Callable:
    """timm's transform for ``data_config`` (``timm.data.create_transform``).

    ``train_kwargs`` go to timm for training (e.g. ``scale=(0.7, 1.0)``, ``hflip=0.5``).
    """
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}
    if training:
        return timm.data.create_transform(**cfg, is_training=True, **train_kwargs)
    return timm.data.create_transform(**cfg, is_training=False)


def make_batch_transform(transform: Callable, in_chans: int) -> Callable[[dict], dict]:
    """A ``Dataset.with_transform`` function: PIL images -> ``pixel_values``, ``label`` -> ``labels``.

    Images are converted to the backbone's channel count ("L" for 1, "RGB" for 3), so grayscale
    and colour inputs both work.
    """
    mode = "L" if in_chans == 1 else "RGB"

    def apply(batch: dict[str, list]) -> dict[str, list]:
        out = {"pixel_values": [transform(_to_mode(img, mode)) for img in batch["image"]]}
        if "label" in batch:
            out["labels"] = batch["label"]
        if "domain" in batch:
            out["domain"] = batch["domain"]
        return out

    return apply


def _to_mode(image: Any, mode: str) -> PILImage.Image:
    if not isinstance(image, PILImage.Image):
        image = PILImage.fromarray(np.asarray(image))
    return image if image.mode == mode else image.convert(mode)


def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack transformed rows into a batch of ``pixel_values``, ``labels`` and (if present) ``domain``."""
    batch = {"pixel_values": torch.stack([r["pixel_values"] for r in rows])}
    if "labels" in rows[0]:
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
    if "domain" in rows[0]:
        batch["domain"] = torch.tensor([r["domain"] for r in rows], dtype=torch.long)
    return batch


# ---------------------------------------------------------------------------------------- pairing
def build_joint_dataset(source: datasets.Dataset | None, target: datasets.Dataset | None) -> datasets.Dataset:
    """Source rows first, then target rows, with a ``domain`` column (0 source, 1 target).

    Labels stay in their own domain's label space (source ids for source rows, target ids for
    target rows). Either side may be ``None`` (target-only or source-only training).
    """
    parts = []
    for ds, domain in ((source, SOURCE), (target, TARGET)):
        if ds is None or len(ds) == 0:
            continue
        ds = ds.select_columns(["image", "label"]).cast_column("label", datasets.Value("int64"))
        parts.append(ds.add_column("domain", [domain] * len(ds)))
    if not parts:
        raise ValueError("both the source and the target dataset are empty: nothing to train on.")
    return datasets.concatenate_datasets(parts)


class PairedBatchSampler(Sampler[list[int]]):
    """Per-device batches of exactly ``n_source`` source rows and ``n_target`` target rows.

    Each epoch visits the source rows once in a fresh random order; the target rows, usually far
    fewer, are re-sampled as a stream of fresh permutations, so every target image is seen equally
    often (to within one). The order depends only on ``seed`` and the epoch (``set_epoch``, which
    Trainer calls), so a resumed run replays the same batches.

    Several processes: rows are drawn as *global* batches of ``num_replicas x batch_size`` rows
    (``num_replicas x n_source`` source and ``num_replicas x n_target`` target rows), and each is
    yielded as ``num_replicas`` consecutive per-device batches, each with the exact ratio.
    Accelerate's ``BatchSamplerShard`` hands batch ``i`` to process ``i % num_replicas``, so every
    process gets its slice of every global batch, and 2 processes x batch ``b`` see exactly the rows
    of 1 process x batch ``2b``.

    Args:
        domains: the ``domain`` column of the training dataset (0 source, 1 target).
        batch_size: rows per per-device batch.
        source_fraction: share of source rows per batch; ``n_source = round(batch_size * fraction)``.
        seed: base seed.
        drop_last: drop the last, incomplete global source batch instead of topping it up.
        num_replicas: number of processes the batches are sharded over.
    """

    def __init__(
        self,
        domains: Sequence[int],
        batch_size: int,
        source_fraction: float = 0.5,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
    ) -> None:
        if not 0.0 <= source_fraction <= 1.0:
            raise ValueError(f"source_fraction must be in [0, 1], got {source_fraction}.")
        if batch_size < 1 or num_replicas < 1:
            raise ValueError(f"batch_size and num_replicas must be >= 1, got {batch_size} and {num_replicas}.")
        domains = np.asarray(domains)
        unknown = set(np.unique(domains).tolist()) - {SOURCE, TARGET}
        if unknown:
            raise ValueError(f"domain values must be 0 (source) or 1 (target), found {sorted(unknown)}.")
        self.source_rows = np.flatnonzero(domains == SOURCE)
        self.target_rows = np.flatnonzero(domains == TARGET)
        self.n_source = round(batch_size * source_fraction)
        self.n_target = batch_size - self.n_source
        if self.n_source and not len(self.source_rows):
            raise ValueError(
                f"source_fraction={source_fraction} asks for source rows but the training set has none: "
                "add source data or set source_fraction=0 (target-only training)."
            )
        if self.n_target and not len(self.target_rows):
            raise ValueError(
                f"source_fraction={source_fraction} asks for target rows but the training set has none: "
                "JTLN needs labelled target images (or set source_fraction=1 for source-only training)."
            )
        self.batch_size, self.seed, self.drop_last, self.epoch = batch_size, seed, drop_last, 0
        self.num_replicas = num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _num_global_batches(self) -> int:
        if self.n_source:
            rounding = math.floor if self.drop_last else math.ceil
            return max(1, rounding(len(self.source_rows) / (self.n_source * self.num_replicas)))
        return max(1, math.ceil(len(self.target_rows) / (self.n_target * self.num_replicas)))

    def __len__(self) -> int:
        return self._num_global_batches() * self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        source_order = rng.permutation(self.source_rows)
        target_stream = _permutation_stream(self.target_rows, rng)
        n_s, n_t = self.n_source * self.num_replicas, self.n_target * self.num_replicas
        for b in range(self._num_global_batches()):
            source = source_order[b * n_s : (b + 1) * n_s]
            if len(source) < n_s:  # last batch: top up from a fresh permutation
                source = np.concatenate([source, rng.permutation(self.source_rows)[: n_s - len(source)]])
            target = [next(target_stream) for _ in range(n_t)]
            for d in range(self.num_replicas):
                rows = source[d * self.n_source : (d + 1) * self.n_source].tolist()
                yield rows + target[d * self.n_target : (d + 1) * self.n_target]


def _permutation_stream(rows: np.ndarray, rng: np.random.Generator) -> Iterator[int]:
    while len(rows):
        yield from (int(i) for i in rng.permutation(rows))
