"""Image checks before training: decode (small sets) or parse headers (larger ones), naming the bad row.

A passed check is remembered for the process and, for a table ``datasets`` cached under its fingerprint whose
images are stored in it as bytes, on disk beside that cache file: parsing the headers of Fashion-MNIST's 30,000
source images takes ~1 s in a new process, and every recipe run and sweep worker paid it again. ``datasets``
itself reuses a cache file by fingerprint (its ``map``/``filter`` cache), so the same fingerprint names the same
bytes; images stored as paths are checked every time (a file can change under the same path).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import datasets
import PIL
from PIL import Image as PILImage

from ..utils.io import atomic_write_text
from .transforms import IMAGE_ERRORS


def check_images(ds: datasets.Dataset, name: str = "dataset", *, full_decode: bool | None = None) -> None:
    """Raise a ``ValueError`` naming the first rows whose image cannot be read.

    Every image's header is parsed (``PIL.Image.open``, cheap: it identifies the format and
    size without decoding pixels); with ``full_decode`` every image is also decoded, which also
    catches truncated data. ``full_decode=None`` decodes fully when the dataset has at most
    :data:`FULL_DECODE_MAX_ROWS` rows (a few-shot target set), parses headers only up to
    :data:`HEADER_CHECK_MAX_ROWS` rows, and checks nothing above; an image that passes (or
    skips) this check but fails later is still reported, with its row, by the batch transform. A
    dataset whose ``image`` column is not a ``datasets.Image`` feature (arrays, PIL objects kept in
    memory) is not checked. A passed check is cached per dataset fingerprint, in the process and
    on disk (:func:`passed_check_marker`).
    """
    if "image" not in ds.column_names or not isinstance(ds.features["image"], datasets.Image):
        return
    if full_decode is None and len(ds) > HEADER_CHECK_MAX_ROWS:
        return  # reading every image's bytes would cost minutes: the batch transform names bad rows
    full = len(ds) <= FULL_DECODE_MAX_ROWS if full_decode is None else full_decode
    cache_key = (getattr(ds, "_fingerprint", None), full)
    if cache_key[0] is not None and cache_key in _CHECKED:
        return
    marker = passed_check_marker(ds, full)
    if marker is not None and marker.is_file() and marker.read_text() == _MARKER_TEXT:
        _CHECKED.add(cache_key)
        return
    raw = ds.with_format(None).select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    bad: list[str] = []
    all_bytes = True
    for start in range(0, len(raw), 1024):
        for k, value in enumerate(raw[start : start + 1024]["image"]):
            problem = _image_problem(value, full)
            if problem:
                bad.append(f"row {start + k}: {problem}")
            all_bytes = all_bytes and value is not None and value.get("bytes") is not None
    if bad:
        shown = "; ".join(bad[:5]) + (f"; ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise ValueError(
            f"{name} has {len(bad)} image(s) that cannot be read ({shown}): remove or replace them "
            "(e.g. select the other rows with Dataset.select) before training."
        )
    if cache_key[0] is not None:
        _CHECKED.add(cache_key)
    if marker is not None and all_bytes:
        try:
            atomic_write_text(marker, _MARKER_TEXT)
        except OSError:  # a read-only cache: the check runs again next time
            pass


def passed_check_marker(ds: datasets.Dataset, full: bool) -> Path | None:
    """The file that records a passed :func:`check_images` of ``ds`` across processes, or None where none can.

    ``<cache dir>/jtln-images-ok-<fingerprint>-<decoded|headers>``, beside the Arrow file ``datasets`` wrote for
    this fingerprint (``cache-<fingerprint>.arrow``). None for a dataset held in memory, or whose fingerprint names
    none of its cache files (a selection of a cached table, a random fingerprint): nothing on disk then says that
    a later process with that fingerprint reads the same table. The file holds Pillow's version, whose decoders
    made the check; another version checks again.
    """
    fingerprint = getattr(ds, "_fingerprint", None)
    files = [Path(f["filename"]) for f in ds.cache_files]
    if fingerprint is None or not any(f.name == f"cache-{fingerprint}.arrow" for f in files):
        return None
    return files[0].parent / f"jtln-images-ok-{fingerprint}-{'decoded' if full else 'headers'}"


#: :func:`check_images` decodes every image of datasets up to this size (few-shot target sets).
FULL_DECODE_MAX_ROWS = 2000
#: ... and parses every image header of datasets up to this size (Fashion-MNIST's 30,000 source
#: images); larger ones are left to the batch transform, which names an unreadable row.
HEADER_CHECK_MAX_ROWS = 50_000
_CHECKED: set[tuple[str, bool]] = set()
_MARKER_TEXT = f"Pillow {PIL.__version__}\n"


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
