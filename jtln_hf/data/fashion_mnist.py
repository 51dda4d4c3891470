"""Fashion-MNIST from Debian's idx files, its embedded class split, its timm data config, its prior cost
and its registration as the known dataset ``fashion-mnist`` (:mod:`jtln_hf.data.known`)."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .image_stats import ImageStats, data_config_from_stats
from .known import KnownDataset, register_known_dataset

#: Hand-written prior for the embedded split (rows source, columns target), a labelled CSV beside this module.
FASHION_MNIST_PRIOR_PATH = Path(__file__).resolve().parent / "fashion_mnist_prior.csv"
#: The dataset spec (``--dataset fashion-mnist``), and the default data of the recipe.
FASHION_MNIST = "fashion-mnist"


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
FASHION_MNIST_DATA_CONFIG = data_config_from_stats(ImageStats(in_chans=1, image_size=28, mean=(0.2860,), std=(0.3530,)))
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


def _open_fashion_mnist(root: str | None, splits: Sequence[str] | None) -> datasets.DatasetDict:
    return datasets.DatasetDict({"train": load_fashion_mnist("train"), "test": load_fashion_mnist("test")})


register_known_dataset(KnownDataset(FASHION_MNIST, _open_fashion_mnist, "zalando-datasets/fashion_mnist",
                                    DEFAULT_TARGET_CLASSES, FASHION_MNIST_DATA_CONFIG, FASHION_MNIST_PRIOR_PATH,
                                    FASHION_MNIST_LABELS))
