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

Reliability: :func:`build_joint_dataset` checks columns and images before anything trains and
keeps each row's index (``row``), so an image that cannot be decoded is reported with its row;
:func:`make_batch_transform` draws its random augmentation from generators seeded by the batch
itself, so a run resumed from a checkpoint replays the same augmented batches (the sampler
replays the same rows: its order depends only on the seed and the epoch).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import timm.data
import torch
from PIL import Image as PILImage
from torch.utils.data import Sampler

from ..image_processing_jtln import CHANNEL_MODES as PROCESSOR_CHANNEL_MODES
from ..image_processing_jtln import to_mode

#: Where Debian's ``dataset-fashion-mnist`` puts the idx files; ``JTLN_FASHION_MNIST_DIR`` overrides it
#: (e.g. on a machine where the package cannot be installed and the files were copied instead).
FASHION_MNIST_DIR = Path(os.environ.get("JTLN_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
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
                "(or `make data`), or pass data_dir= (or set JTLN_FASHION_MNIST_DIR to) the folder holding "
                "the idx .gz files."
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


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """``" (did you mean 'X'?)"`` for the closest of ``choices`` to ``name`` (case-insensitive), else ``""``."""
    import difflib

    lowered = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


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
    labels = np.asarray(ds.select_columns(["label"]).with_format("numpy")[:]["label"])
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


#: PIL mode each backbone channel count is converted to (shared with the image processor).
CHANNEL_MODES = PROCESSOR_CHANNEL_MODES
#: Image errors the batch transform and :func:`check_images` turn into a message naming the row.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, PILImage.DecompressionBombError)


def make_batch_transform(transform: Callable, in_chans: int, *, seed: int = 0) -> Callable[[dict], dict]:
    """A ``Dataset.with_transform`` function: images -> ``pixel_values``, ``label`` -> ``labels``.

    * **Channels.** Images are converted to the backbone's channel count ("L" for 1, "RGB" for
      3, "RGBA" for 4), so grayscale, colour, palette and alpha inputs all work.
    * **Decoding.** Images may come decoded (PIL, arrays) or undecoded (``{"bytes", "path"}``
      dicts of ``datasets.Image(decode=False)``, as :func:`build_joint_dataset` stores them).
      An image that cannot be decoded raises a ``ValueError`` naming its row (``domain`` and
      ``row`` columns, added by :func:`build_joint_dataset`) and the decoder's message.
    * **Random augmentation without global state.** Each image is transformed with Python's,
      NumPy's and torch's CPU generators seeded from ``seed``, the identities of the batch's
      rows (``(domain, row)``, else a hash of the image) and its position in the batch; the
      global generator states are restored afterwards. The augmentation of a batch is thus a
      function of the batch alone: independent of what ran before, of data-loader workers, of
      prefetching, and identical when a resumed run replays the batch (transformers' Trainer
      restores the global RNG state *after* the first resumed batches are loaded, so augmentation
      drawn from the global generators would differ). A batch's rows are drawn at random by
      :class:`PairedBatchSampler`, so a row seen again (another epoch, or a re-sampled target
      row) almost surely sits in a different batch and gets a fresh augmentation.

    Args:
        transform: per-image transform (e.g. :func:`build_transform`).
        in_chans: the backbone's input channels (1, 3 or 4).
        seed: salt of the augmentation seeds.
    """
    if in_chans not in CHANNEL_MODES:
        raise ValueError(
            f"in_chans={in_chans} has no PIL image mode: use 1 (grayscale), 3 (RGB) or 4 (RGBA), "
            "or give Dataset.with_transform your own function."
        )
    mode = CHANNEL_MODES[in_chans]

    def apply(batch: dict[str, list]) -> dict[str, list]:
        images = [to_mode(_decode(img, batch, k), mode) for k, img in enumerate(batch["image"])]
        keys = _row_keys(batch, images)
        batch_key = hashlib.blake2b(repr((seed, keys)).encode(), digest_size=16).digest()
        pixel_values = []
        with _preserved_global_rng():
            for k, image in enumerate(images):
                _seed_generators(batch_key, k)
                pixel_values.append(transform(image))
        out = {"pixel_values": pixel_values}
        if "label" in batch:
            out["labels"] = batch["label"]
        if "domain" in batch:
            out["domain"] = batch["domain"]
        return out

    return apply


def _row_name(batch: dict[str, list], k: int) -> str:
    """How to name row ``k`` of the batch in an error message."""
    if "row" in batch and "domain" in batch:
        domain = batch["domain"][k]
        name = {SOURCE: "source", TARGET: "target"}.get(domain, f"domain {domain}")
        return f"{name} row {batch['row'][k]}"
    return f"batch position {k} (build the dataset with jtln_hf.data.build_joint_dataset to get row numbers)"


def _decode(image: Any, batch: dict[str, list], k: int) -> Any:
    """Decode a ``datasets.Image(decode=False)`` value; raise naming the row if it is unreadable."""
    if not isinstance(image, dict):
        return image
    try:
        return datasets.Image().decode_example(image)
    except IMAGE_ERRORS as err:
        path = f" (path {image.get('path')!r})" if image.get("path") else ""
        raise ValueError(
            f"cannot decode the image of {_row_name(batch, k)}{path}: {type(err).__name__}: {err}. "
            "Remove or replace that row (e.g. ds.select([...]) without it); "
            "jtln_hf.data.check_images(ds, full_decode=True) lists every unreadable row."
        ) from err


def _row_keys(batch: dict[str, list], images: list) -> list:
    """Stable identities of the batch's rows: ``(domain, row)``, else a hash of the pixels."""
    if "row" in batch and "domain" in batch:
        return [(int(d), int(r)) for d, r in zip(batch["domain"], batch["row"])]
    keys = []
    for image in images:
        if isinstance(image, PILImage.Image):
            raw = image.tobytes() + repr((image.mode, image.size)).encode()
        else:
            array = np.ascontiguousarray(np.asarray(image))
            raw = array.tobytes() + repr((array.dtype.str, array.shape)).encode()
        keys.append(hashlib.blake2b(raw, digest_size=16).hexdigest())
    return keys


@contextlib.contextmanager
def _preserved_global_rng() -> Iterator[None]:
    """Restore Python's, NumPy's (legacy) and torch's CPU generator states on exit."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def _seed_generators(batch_key: bytes, position: int) -> None:
    digest = hashlib.blake2b(batch_key + position.to_bytes(8, "little"), digest_size=8).digest()
    seed = int.from_bytes(digest, "little") & (2**63 - 1)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)  # CPU only: CUDA generators are left alone


def check_images(ds: datasets.Dataset, name: str = "dataset", *, full_decode: bool | None = None) -> None:
    """Raise a ``ValueError`` naming the first rows whose image cannot be read.

    Every image's header is parsed (``PIL.Image.open``, cheap: it identifies the format and
    size without decoding pixels); with ``full_decode`` every image is also decoded, which also
    catches truncated data. ``full_decode=None`` decodes fully when the dataset has at most
    :data:`FULL_DECODE_MAX_ROWS` rows (a few-shot target set), parses headers only up to
    :data:`HEADER_CHECK_MAX_ROWS` rows, and checks nothing above; an image that passes (or
    skips) this check but fails later is still reported, with its row, by the batch transform. A dataset whose ``image`` column is not a ``datasets.Image`` feature
    (arrays, PIL objects kept in memory) is not checked. Results are cached per dataset
    fingerprint.
    """
    if "image" not in ds.column_names or not isinstance(ds.features["image"], datasets.Image):
        return
    if full_decode is None and len(ds) > HEADER_CHECK_MAX_ROWS:
        return  # reading every image's bytes would cost minutes: the batch transform names bad rows
    full = len(ds) <= FULL_DECODE_MAX_ROWS if full_decode is None else full_decode
    cache_key = (getattr(ds, "_fingerprint", None), full)
    if cache_key[0] is not None and cache_key in _CHECKED:
        return
    raw = ds.with_format(None).select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    bad: list[str] = []
    for start in range(0, len(raw), 1024):
        for k, value in enumerate(raw[start : start + 1024]["image"]):
            problem = _image_problem(value, full)
            if problem:
                bad.append(f"row {start + k}: {problem}")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise ValueError(
            f"{name} has {len(bad)} image(s) that cannot be read: {shown}. Remove or replace them "
            f"(e.g. {name}.select([...]) without those rows) before training."
        )
    if cache_key[0] is not None:
        _CHECKED.add(cache_key)


#: :func:`check_images` decodes every image of datasets up to this size (few-shot target sets).
FULL_DECODE_MAX_ROWS = 2000
#: ... and parses every image header of datasets up to this size (Fashion-MNIST's 30,000 source
#: images: ~1 s); larger ones are left to the batch transform, which names an unreadable row.
HEADER_CHECK_MAX_ROWS = 50_000
_CHECKED: set[tuple[str, bool]] = set()


def _image_problem(value: Any, full: bool) -> str | None:
    """``None`` if the image opens (and decodes, when ``full``), else the decoder's message."""
    if value is None:
        return "no image (None)"
    try:
        if full:
            datasets.Image().decode_example(value)
            return None
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            with PILImage.open(io.BytesIO(data)):
                pass
        elif path and Path(path).exists():
            with PILImage.open(path):
                pass
        else:  # remote or relative paths: let datasets resolve them
            datasets.Image().decode_example(value)
    except IMAGE_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


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
    """Source rows first, then target rows, with ``domain`` (0 source, 1 target) and ``row`` columns.

    Labels stay in their own domain's label space (source ids for source rows, target ids for
    target rows); ``row`` is the row's index in its own input dataset, so an error can name it.
    Either side may be ``None`` (target-only or source-only training).

    Before anything trains, each input is checked: it needs ``image`` and ``label`` columns, and
    its images must open (:func:`check_images`: every image decoded for sets of up to
    :data:`FULL_DECODE_MAX_ROWS` rows, headers parsed up to :data:`HEADER_CHECK_MAX_ROWS`). The
    ``image`` column is then stored undecoded (``datasets.Image(decode=False)``):
    :func:`make_batch_transform` decodes it, naming the row of an image that fails.
    """
    parts = []
    for ds, domain in ((source, SOURCE), (target, TARGET)):
        if ds is None or len(ds) == 0:
            continue
        name = "source" if domain == SOURCE else "target"
        missing = [c for c in ("image", "label") if c not in ds.column_names]
        if missing:
            raise ValueError(
                f"the {name} dataset has no {missing[0]!r} column (columns: {ds.column_names}): rename its "
                "columns to 'image' and 'label', e.g. with jtln_hf.data.standardize_columns(ds, "
                "image_column=..., label_column=...)."
            )
        check_images(ds, f"the {name} dataset")
        ds = ds.select_columns(["image", "label"]).cast_column("label", datasets.Value("int64"))
        if isinstance(ds.features["image"], datasets.Image):
            ds = ds.cast_column("image", datasets.Image(decode=False))
        ds = ds.add_column("domain", [domain] * len(ds))
        parts.append(ds.add_column("row", list(range(len(ds)))))
    if not parts:
        raise ValueError("both the source and the target dataset are empty: nothing to train on.")
    return datasets.concatenate_datasets(parts)


def source_rows_per_batch(batch_size: int, source_fraction: float) -> int:
    """Source rows in a batch: ``batch_size x source_fraction`` rounded half up.

    Python's ``round`` rounds half to even, which gave batch 2 at fraction 0.25 no source row;
    every place that needs the count (sampler, trainer, recipe, card) calls this function.
    """
    return int(math.floor(batch_size * source_fraction + 0.5))


class PairedBatchSampler(Sampler[list[int]]):
    """Per-device batches of exactly ``n_source`` source rows and ``n_target`` target rows.

    Each epoch visits the source rows once in a fresh random order (the last batch is topped up
    with source rows it does not already hold, so no batch repeats a row unless the source set is
    smaller than a batch); the target rows, usually far
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
        source_fraction: share of source rows per batch; ``n_source`` = :func:`source_rows_per_batch`.
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
        self.n_source = source_rows_per_batch(batch_size, source_fraction)
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
            if len(source) < n_s:  # last batch: top up with rows it does not hold yet
                source = np.concatenate([source, rng.permutation(np.setdiff1d(self.source_rows, source))])[:n_s]
                if len(source) < n_s:  # fewer source rows than one global batch: rows must repeat
                    stream = _permutation_stream(self.source_rows, rng)
                    source = np.concatenate([source, [next(stream) for _ in range(n_s - len(source))]])
            target = [next(target_stream) for _ in range(n_t)]
            for d in range(self.num_replicas):
                rows = source[d * self.n_source : (d + 1) * self.n_source].tolist()
                yield rows + target[d * self.n_target : (d + 1) * self.n_target]


def _permutation_stream(rows: np.ndarray, rng: np.random.Generator) -> Iterator[int]:
    while len(rows):
        yield from (int(i) for i in rng.permutation(rows))


from .pools import DataPools, DataSpec, ExperimentData  # noqa: E402,F401  (the experiment's data values, frozen)
