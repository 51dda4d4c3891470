"""Dataset sources: open a user's labelled image dataset by name, and read its input shape.

One spec string names a dataset on either side of JTLN (``--dataset``, ``--source_dataset``,
``--target_dataset``):

* ``fashion-mnist`` -- the Debian package ``dataset-fashion-mnist`` (offline; splits train, test);
* ``fgvc-aircraft`` -- FGVC-Aircraft from its official archive layout under ``root``
  (:func:`jtln_hf.data.fgvc_aircraft.load_fgvc_aircraft`; splits train, val, trainval, test);
* a local folder -- an ImageFolder (``train/<class>/*.png``, ``test/<class>/...``, or class
  folders only, which give one ``train`` split), or a folder written by ``Dataset.save_to_disk``
  / ``DatasetDict.save_to_disk``;
* local data files -- a ``.csv``, ``.json``/``.jsonl``, ``.parquet`` or ``.arrow`` file (or a
  glob of them) whose rows name images (one ``train`` split);
* anything else -- a Hub dataset id for ``datasets.load_dataset`` (needs the network or the cache).

Everything goes through ``datasets.load_dataset`` / ``load_from_disk``; this module only maps a
spec to the right call and turns the usual mistakes (a missing split, a missing column) into
one-line errors that name the fix. The datasets known by name (:class:`KnownDataset`) live in
:mod:`jtln_hf.data.known` and register themselves beside their readers.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image as PILImage

from ..image_processing_jtln import CHANNEL_MODES
from .fashion_mnist import FASHION_MNIST
from .fgvc_aircraft import FGVC_AIRCRAFT
from .image_stats import ImageStats, data_config_from_stats
from .known import KNOWN_DATASETS, KnownDataset, known_dataset, register_known_dataset
from .transforms import IMAGE_ERRORS

#: File endings that ``datasets`` reads as data files, and the packaged builder for each.
DATA_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow"}


def file_builder(spec: str, files: Sequence[str], builders: Mapping[str, str] = DATA_FILE_BUILDERS,
                 kind: str = "data files") -> str:  # fmt: skip
    """The one ``datasets`` builder of ``files`` (by their endings in ``builders``), or a one-line error."""
    found = {builders.get(Path(f).suffix.lower()) for f in files}
    if None in found or len(found) != 1:
        raise ValueError(
            f"{spec}: {kind} must all be one of {sorted(builders)} (got {sorted({Path(f).suffix for f in files})}); "
            "for images, pass their folder (ImageFolder)."
        )
    return found.pop()


def is_local_spec(spec: str) -> bool:
    """Whether ``spec`` names something on this machine (so it must not be written as a Hub id)."""
    known = known_dataset(spec) is not None  # opened from this machine (a Debian package, a root folder)
    return known or os.path.exists(spec) or bool(glob.glob(spec)) or spec.startswith(("/", "."))


def hub_dataset_id(spec: str) -> str | None:
    """The Hub id to cite for ``spec`` in a model card's metadata, or ``None`` for local data."""
    known = known_dataset(spec)
    if known is not None:
        return known.hub_id
    return None if is_local_spec(spec) else spec


def display_name(spec: str) -> str:
    """How to name ``spec`` in tables and cards: a local path by its last part (no paths of this machine)."""
    if known_dataset(spec) is None and is_local_spec(spec):
        return Path(spec.rstrip("/")).name or spec
    return spec


def open_dataset(spec: str, *, config_name: str | None = None, root: str | None = None,
                 splits: Sequence[str] | None = None) -> datasets.DatasetDict:  # fmt: skip
    """Every split of the dataset named by ``spec``, as a ``datasets.DatasetDict``.

    Parameters
    ----------
    spec : str
        ``fashion-mnist``, ``fgvc-aircraft``, a local folder, a data file or glob, or a Hub id
        (see the module docstring).
    config_name : str, optional
        The dataset configuration, for Hub datasets that have several.
    root : str, optional
        Where ``fgvc-aircraft`` lives (the folder holding ``fgvc-aircraft-2013b``).
    splits : sequence of str, optional
        For ``fgvc-aircraft``: the splits to build (each is decoded, cropped and cached on first
        use, so only the ones a run needs); unknown names are left out.

    Raises
    ------
    ValueError
        When a local path holds nothing ``datasets`` can read, or ``fgvc-aircraft`` has no root.
    """
    known = known_dataset(spec)
    if known is not None:
        return known.open(root, splits)
    path = Path(spec)
    if path.is_dir():
        if any((path / name).is_file() for name in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(path))
            return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
        if not any(p.is_dir() for p in path.iterdir()):
            raise ValueError(
                f"{spec}: a folder without class folders: an ImageFolder holds <class>/<image> "
                "(or train/<class>/<image>, test/<class>/<image>)."
            )
        return datasets.load_dataset("imagefolder", data_dir=str(path))
    files = sorted(glob.glob(spec)) if not path.is_file() else [spec]
    if files:
        return datasets.load_dataset(file_builder(spec, files), data_files={"train": files})
    if spec.startswith(("/", ".")):
        raise ValueError(f"{spec}: no such file or folder: pass an existing folder, data file, or a Hub dataset id.")
    kwargs = {"name": config_name} if config_name else {}
    return datasets.load_dataset(spec, **kwargs)


def pick_split(splits: datasets.DatasetDict, split: str, flag: str, spec: str) -> datasets.Dataset:
    """``splits[split]``, or a one-line error listing the splits there are and the flag to change."""
    if split not in splits:
        raise ValueError(f"{flag} {split!r}: {spec} has no such split (splits: {sorted(splits)}); pass one of them.")
    return splits[split]


# --------------------------------------------------------------------------------- input shape
def image_stats(sets: Sequence[datasets.Dataset], *, size_from: int = -1, in_chans: int | None = None,
                image_size: int | None = None, samples: int = 256, seed: int = 0) -> ImageStats:  # fmt: skip
    """Channels, size and normalisation read from the images of ``sets`` (a sample of each).

    * channels: 1 when every sampled image of every set is single-band (``L``, ``1``, ``I``,
      ``F`` ...), else 3 (colour, palette and alpha images are trained as RGB);
    * size: the median of ``max(width, height)`` over the sampled images of ``sets[size_from]``
      (by default the last set: the target task, which the model is deployed on);
    * mean and std: per channel, over the sampled images of every set converted to that mode
      and resized to that size, as fractions of 255 (what ``timm``'s ``Normalize`` expects).

    ``in_chans`` / ``image_size`` fix the channels / size instead of reading them. A sampled image
    that cannot be decoded is left out (training replaces such rows, ``--max_bad_images``).
    """
    rng = np.random.default_rng(seed)
    drawn: list[list[PILImage.Image]] = []
    for ds in sets:
        rows = rng.choice(len(ds), size=min(samples, len(ds)), replace=False) if len(ds) else []
        column = ds.select_columns(["image"]).select(np.sort(rows))
        if isinstance(column.features["image"], datasets.Image):  # decode one by one, to skip the unreadable
            column = column.cast_column("image", datasets.Image(decode=False))
        drawn.append([im for im in map(_readable, column["image"]) if im is not None])
    if any(len(ds) for ds in sets) and not any(drawn):
        raise ValueError("none of the sampled images could be decoded: check the dataset's image column "
                         "(jtln_hf.data.check_images lists the unreadable rows).")
    if in_chans is None:
        in_chans = 1 if all(im.getbands() == (im.getbands()[0],) and im.mode != "P" for s in drawn for im in s) else 3
    if image_size is None:
        sides = [max(im.size) for im in drawn[size_from]] or [max(im.size) for s in drawn for im in s]
        image_size = int(np.median(sides))
    mode = CHANNEL_MODES[in_chans]
    pixels = [
        np.asarray(im.convert(mode).resize((image_size, image_size), PILImage.BILINEAR), dtype=np.float64)
        .reshape(-1, in_chans) / 255.0
        for s in drawn for im in s
    ]  # fmt: skip
    stacked = np.concatenate(pixels) if pixels else np.full((1, in_chans), 0.5)
    std = np.maximum(stacked.std(0), 1e-3)  # a constant channel must not divide by zero
    return ImageStats(in_chans, image_size, tuple(round(float(v), 4) for v in stacked.mean(0)),
                      tuple(round(float(v), 4) for v in std))


def _readable(value: Any) -> PILImage.Image | None:
    """``value`` as a PIL image, or None when it cannot be decoded."""
    try:
        return _as_pil(value)
    except IMAGE_ERRORS:
        return None


def _as_pil(value: Any) -> PILImage.Image:
    if isinstance(value, PILImage.Image):
        return value
    if isinstance(value, dict):
        return datasets.Image().decode_example(value)
    return PILImage.fromarray(np.asarray(value))


__all__ = [
    "FASHION_MNIST",
    "FGVC_AIRCRAFT",
    "ImageStats",
    "KNOWN_DATASETS",
    "KnownDataset",
    "data_config_from_stats",
    "display_name",
    "hub_dataset_id",
    "image_stats",
    "is_local_spec",
    "known_dataset",
    "open_dataset",
    "pick_split",
    "register_known_dataset",
]
