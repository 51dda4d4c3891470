"""Thumbnail pixels as features for a cost: a C computed from the images before any training.

A ``features-*`` cost reads the backbone's pooled features. With an ImageNet-pretrained backbone
those are the paper's fc7 features, meaningful at step 0. A backbone trained from scratch (the
embedded default, and every run on these offline machines) has random features at step 0, so
the cost waits for a source-only warm-up, and measured on the embedded Fashion-MNIST split that
warm-up halves what even the hand-written prior adds (+1.7 points over joint training from the
initial weights, +0.8 after 500 warm-up steps). :func:`pixel_features` gives a feature space that
needs no network: each image as a small thumbnail, its pixels a vector. For small, centred images
(Fashion-MNIST, digits) pixel distances are a classic similarity (nearest neighbours on MNIST);
for photos they say little, and a pretrained backbone's features are the choice. Measured on that
split, the ``pixels-mmd`` cost built on them does not beat joint training (10 seeds, docs/results.md):
its cheapest source classes are mostly the prior's, its values are not.

No library has this as a function: it is Pillow's ``convert`` and ``resize`` per image, then numpy.
"""

from __future__ import annotations

import datasets
import numpy as np
from PIL import Image as PILImage

from ..data.transforms import IMAGE_ERRORS

#: The thumbnail's side in pixels (CIFAR's): every image is resized to ``PIXEL_SIDE x PIXEL_SIDE``.
PIXEL_SIDE = 32


def thumbnail_pixels(image: PILImage.Image, side: int = PIXEL_SIDE) -> np.ndarray:
    r"""One image as a ``3 * side * side`` vector of RGB values in [0, 1].

    The image is converted to RGB (a greyscale image's three channels are equal, so distances
    between greyscale images are :math:`\sqrt 3` times theirs in one channel: the median-distance
    bandwidths of :func:`jtln_hf.cost.mmd_bandwidths` scale with them and the MMD is unchanged),
    then resized to ``side x side`` with Pillow's bilinear filter (its support widens when it
    shrinks, so a large photo is averaged, not sampled); the aspect ratio is not kept.
    """
    thumb = image.convert("RGB").resize((side, side), PILImage.BILINEAR)
    return np.asarray(thumb, dtype=np.float32).reshape(-1) / 255.0


def pixel_features(
    ds: datasets.Dataset | datasets.IterableDataset, *, side: int = PIXEL_SIDE, image_column: str = "image",
    label_column: str = "label",
) -> tuple[np.ndarray, np.ndarray, int]:  # fmt: skip
    """The thumbnail pixels (:func:`thumbnail_pixels`) and labels of a dataset's readable images.

    An image that cannot be decoded (the errors the training transform skips) is left out and
    counted, as training leaves it out (``--max_bad_images``).

    Parameters
    ----------
    ds : datasets.Dataset or datasets.IterableDataset
        Rows with an image column (``datasets.Image``, or PIL images) and an integer label column.

    Returns
    -------
    features : numpy.ndarray, float32, shape (N, 3 * side * side)
    labels : numpy.ndarray, int64, shape (N,)
    skipped : int
        Rows whose image could not be decoded.

    Raises
    ------
    ValueError
        A missing column, or no readable image.
    """
    missing = [c for c in (image_column, label_column) if c not in (ds.column_names or ())]
    if missing:
        raise ValueError(f"a pixels-* cost reads the columns {image_column!r} and {label_column!r}, and the dataset "
                         f"has no {missing}: rename its columns (ds.rename_column).")  # fmt: skip
    if isinstance((ds.features or {}).get(image_column), datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))  # decoded here, so a bad one is skipped
    features, labels, skipped = [], [], 0
    for row in ds:
        value = row[image_column]
        try:
            image = value if isinstance(value, PILImage.Image) else datasets.Image().decode_example(value)
            features.append(thumbnail_pixels(image, side))
        except IMAGE_ERRORS:
            skipped += 1
            continue
        labels.append(int(row[label_column]))
    if not features:
        raise ValueError(f"a pixels-* cost needs images, and none of the dataset's {skipped} rows could be decoded: "
                         "check the dataset's files.")  # fmt: skip
    return np.stack(features), np.asarray(labels, dtype=np.int64), skipped


__all__ = ["PIXEL_SIDE", "pixel_features", "thumbnail_pixels"]
