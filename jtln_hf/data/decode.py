"""Decoding a JPEG at the scale its crop needs: the first step of timm's transform, fused with the decode.

A 224-px crop of a 1600x1200 photo needs far fewer pixels than a full decode makes. libjpeg can
decode at 1/2, 1/4 or 1/8 of the size nearly for free (it drops DCT coefficients instead of
computing pixels: "DCT scaling"). :func:`crop_scale_step` wraps the first step of a timm
transform so that it reads the image's size from the JPEG header, draws its box as timm does,
decodes at the smallest scale at which that box keeps at least the output's pixels, stops after the
last row the box's resize reads, and resizes the box from there:

* training, timm's ``RandomResizedCropAndInterpolation``: the box ``(i, j, h, w)`` is drawn by the
  step's own ``get_params`` from the header's size, then the interpolation (if random): the same
  generator calls, hence the same boxes, as timm's step on the decoded image;
* evaluation, ``Resize(shorter side)`` then ``CenterCrop``: the image is decoded at the largest scale
  whose shorter side is still at least the resize's target, then resized and cropped as before.

**Why PIL's** ``draft`` (Pillow's libjpeg-turbo, which every install has) and not another decoder,
measured in ``benchmarks/README.md`` ("Decoding at the crop's scale"): ``simplejpeg`` scales the same
way (``min_width``/``min_height``) from its own libjpeg-turbo and returns arrays, so the crop and
resize would leave PIL for a second library; PyTurboJPEG 2 needs libjpeg-turbo 3 (Debian 13 ships
2.1), and its region decode is a lossless transform that still reads every block's coefficients.
No decoder in these packages decodes a region for less than the entropy decoding of the whole scan,
but a sequential JPEG can stop after a row: libjpeg decodes it top to bottom, one row of 8 x 8 blocks
(an "iMCU row") after another, so :func:`rows_through` gives the decoder a copy of the file whose
header says the image ends a little below the box (the rows under it are never decoded: 11% of a
1600x1200 photo's rows for timm's random boxes, on average). A row's pixels do not depend on the rows
far below it; the chroma upsampling reads one iMCU row below, so the new end lies :func:`row_margin`
rows (two iMCU rows) below the last row the resize reads, and the rows above it come out bit for bit as
the full decode's (``tests/test_decode.py``). A progressive JPEG (each scan covers the whole image)
keeps its header.

Anything else takes the ordinary path (a full decode, then the whole transform): a non-JPEG, a
JPEG ``draft`` cannot scale or with an EXIF orientation, an image that comes decoded or from a remote
path, a transform whose first step is not one of the two above.
"""

from __future__ import annotations

import io
import math
import os
import random
import struct
from collections.abc import Callable
from typing import Any

import torchvision.transforms
import torchvision.transforms.functional as F
from PIL import ExifTags
from PIL import Image as PILImage
from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_pil_interp

from ..image_processing_jtln import to_mode

#: The DCT scales libjpeg decodes at (PIL's ``draft`` picks one of them), largest first.
DCT_SCALES = (8, 4, 2, 1)
#: The EXIF tag of a photo's orientation.
ORIENTATION = ExifTags.Base.Orientation


def dct_scale(box_size: tuple[float, float], out_size: tuple[int, int]) -> int:
    r"""The largest DCT scale :math:`s \in \{8, 4, 2, 1\}` at which a box keeps at least the output's pixels.

    .. math:: s = \max\{s \in \{8, 4, 2, 1\} : w_{box} / s \ge w_{out},\ h_{box} / s \ge h_{out}\}

    Args:
        box_size: ``(width, height)`` of the box in the full image, in pixels.
        out_size: ``(width, height)`` the box is resized to.
    """
    for scale in DCT_SCALES:
        if box_size[0] / scale >= out_size[0] and box_size[1] / scale >= out_size[1]:
            return scale
    return 1  # a box smaller than the output: upsampled from the full decode, as timm does


#: A JPEG's first bytes (start of image, then a marker) and its usual file name endings.
JPEG_MAGIC, JPEG_SUFFIXES = b"\xff\xd8\xff", (".jpg", ".jpeg", ".jpe", ".jfif")


def looks_like_jpeg(image: Any) -> bool:
    """Whether a ``datasets.Image(decode=False)`` value holds a JPEG, by its first bytes (or its file name)."""
    if not isinstance(image, dict):
        return False
    if image.get("bytes") is not None:
        return bytes(image["bytes"][:3]) == JPEG_MAGIC
    return str(image.get("path") or "").lower().endswith(JPEG_SUFFIXES)


def open_jpeg(image: Any) -> PILImage.Image | None:
    """A ``datasets.Image(decode=False)`` value (``{"bytes", "path"}``) opened without decoding, if it is a
    JPEG that ``draft`` can scale; None otherwise, for the full decode to take it: a decoded image, a path
    that is not a local file (``datasets`` opens remote ones), another format, several tiles, or an EXIF
    orientation (``datasets`` rotates the decoded image by it, and the box is drawn on the rotated size)."""
    if not isinstance(image, dict):
        return None
    raw, path = image.get("bytes"), image.get("path")
    if raw is None and not (path and os.path.isfile(path)):
        return None
    opened = PILImage.open(io.BytesIO(raw)) if raw is not None else PILImage.open(path)
    if opened.format != "JPEG" or len(opened.tile) != 1 or opened.getexif().get(ORIENTATION) not in (None, 1):
        opened.close()
        return None
    return opened


#: Start-of-frame markers of sequential JPEGs (baseline, extended): their image can end at any row.
SEQUENTIAL_FRAMES = (0xC0, 0xC1)
#: Markers without a length field (start and end of image, restart markers, TEM).
_BARE_MARKERS = frozenset((0x01, 0xD8, 0xD9, *range(0xD0, 0xD8)))


def frame_height_offset(data: bytes) -> int | None:
    """Where a sequential JPEG's frame header (SOF0 or SOF1) stores the image's height (two big-endian bytes),
    read from the marker segments before the first scan; None for a progressive or lossless JPEG, or bytes
    that do not parse (the full decode then sees them as they are). ITU-T T.81, B.2.2: a segment is
    ``FF m`` and a 16-bit length; a frame header is the length, the sample precision, then the height."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte
            at += 1
            continue
        if marker in _BARE_MARKERS:
            at += 2
            continue
        if marker in SEQUENTIAL_FRAMES:
            return at + 5 if at + 7 <= len(data) else None
        if marker == 0xDA or 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # a scan before any frame header, or a progressive, lossless or arithmetic frame
        at += 2 + struct.unpack_from(">H", data, at + 2)[0]
    return None


def row_margin(image: PILImage.Image) -> int:
    """Rows of the full image kept below the last row needed: two iMCU rows (``16 x`` the largest vertical
    sampling factor), since libjpeg's chroma upsampling reads the row of blocks below a row (and replicates
    the last row at the image's end)."""
    factors = [component[2] for component in getattr(image, "layer", ())] or [2]
    return 16 * max(factors)


#: The end-of-image marker: a file that does not end with it was cut (a download that stopped).
END_OF_IMAGE = b"\xff\xd9"


def rows_through(data: bytes, rows: int) -> bytearray | None:
    """A copy of a sequential JPEG whose frame header says it ends after ``rows`` rows, or None when the
    image has no more rows than that, is not sequential (:func:`frame_height_offset`) or does not end with
    its end-of-image marker. libjpeg then decodes rows ``0 .. rows - 1`` only and never reads the bytes
    after them; so a cut file takes the full decode, which names it (as a bad image) whatever its box."""
    at = frame_height_offset(data)
    if at is None or not data.endswith(END_OF_IMAGE) or rows >= struct.unpack_from(">H", data, at)[0]:
        return None
    shorter = bytearray(data)  # the one copy; PIL reads it as it is
    struct.pack_into(">H", shorter, at, max(1, rows))
    return shorter


def _draft(image: PILImage.Image, scale: int, mode: str) -> float:
    """Decode ``image`` at DCT scale ``scale`` (in ``L`` directly when ``mode`` is L); the scale PIL applied."""
    want = (max(1, image.size[0] // scale), max(1, image.size[1] // scale))
    width = image.size[0]
    result = image.draft("L" if mode == "L" else None, want)
    image.load()
    return width / result[1][2] if result else 1.0


def crop_scale_step(transform: Callable, mode: str) -> tuple[Callable, Callable] | None:
    """``(first, rest)``: ``transform``'s first step fused with the decode of a JPEG at its crop's scale, and
    the steps after it; None when the first step is neither timm's ``RandomResizedCropAndInterpolation`` nor a
    ``Resize`` to a shorter side followed by a ``CenterCrop``.

    ``first(image)`` takes a ``datasets.Image(decode=False)`` value and returns the cropped, resized PIL
    image in the backbone's PIL ``mode`` (``L``, ``RGB``, ``RGBA``), or None for an image it does not
    take (see :func:`open_jpeg`), before any generator call, so that the ordinary path then draws exactly
    what it always drew. Decoding errors propagate (``OSError`` and the like), as a full decode's do.
    """
    steps = list(getattr(transform, "transforms", ()))
    if type(transform) is not torchvision.transforms.Compose or not steps:
        return None
    head = steps[0]
    if type(head) is RandomResizedCropAndInterpolation:
        return _random_resized_crop(head, mode), torchvision.transforms.Compose(steps[1:])
    if (len(steps) >= 2 and type(head) is torchvision.transforms.Resize and type(steps[1]) is
            torchvision.transforms.CenterCrop and isinstance(head.size, int) and head.max_size is None):  # fmt: skip
        return _resize_centre_crop(head, steps[1], mode), torchvision.transforms.Compose(steps[2:])
    return None


def _random_resized_crop(step: RandomResizedCropAndInterpolation, mode: str) -> Callable:
    out_h, out_w = step.size

    def first(raw: Any) -> PILImage.Image | None:
        image = open_jpeg(raw)
        if image is None:
            return None
        i, j, h, w = step.get_params(image, step.scale, step.ratio)  # reads image.size only: the header's
        interpolation = random.choice(step.interpolation) if isinstance(step.interpolation, (tuple, list)) \
            else step.interpolation  # fmt: skip
        wanted = dct_scale((w, h), (out_w, out_h))
        image = _through_box(image, raw, i + h + _filter_reach(interpolation, h / wanted, out_h) * wanted)
        scale = _draft(image, wanted, mode)
        box = (j / scale, i / scale, (j + w) / scale, (i + h) / scale)
        return to_mode(image, mode).resize((out_w, out_h), _pil(interpolation), box=box)

    return first


def _filter_reach(interpolation: Any, box_height: float, out_height: int) -> int:
    """Rows past a box's edge that PIL's resize of it reads: the filter's support (1 bilinear, 2 bicubic, 3
    Lanczos; 0.5 box, nearest), widened by the downscaling factor (``Resample.c``: ``support x max(1, scale)``),
    plus one for rounding."""
    support = {PILImage.Resampling.NEAREST: 0.5, PILImage.Resampling.BOX: 0.5, PILImage.Resampling.BILINEAR: 1.0,
               PILImage.Resampling.HAMMING: 1.0, PILImage.Resampling.BICUBIC: 2.0}.get(_pil(interpolation), 3.0)
    return math.ceil(support * max(1.0, box_height / out_height)) + 1


def _through_box(image: PILImage.Image, raw: dict, last_row: float) -> PILImage.Image:
    """``image`` (opened, not decoded) again from a copy of its bytes that ends :func:`row_margin` rows below
    ``last_row`` (in the full image), when that saves rows (:func:`rows_through`); else ``image`` itself."""
    size = image.size
    rows = math.ceil(last_row) + row_margin(image)
    if rows >= size[1]:
        return image
    data = raw["bytes"]
    if data is None:
        with open(raw["path"], "rb") as file:
            data = file.read()
    shorter = rows_through(bytes(data), rows)
    if shorter is None:
        return image
    image.close()
    return PILImage.open(io.BytesIO(shorter))


def _resize_centre_crop(resize: torchvision.transforms.Resize, crop: torchvision.transforms.CenterCrop,
                        mode: str) -> Callable:  # fmt: skip
    def first(raw: Any) -> PILImage.Image | None:
        image = open_jpeg(raw)
        if image is None:
            return None
        shorter = min(image.size)
        _draft(image, dct_scale((shorter, shorter), (resize.size, resize.size)), mode)
        return crop(resize(to_mode(image, mode)))

    return first


def _pil(interpolation: Any) -> int:
    """A torchvision ``InterpolationMode`` (or a name) as PIL's resampling filter."""
    if isinstance(interpolation, str):
        return str_to_pil_interp(interpolation)
    return F.pil_modes_mapping[interpolation]


__all__ = ["DCT_SCALES", "END_OF_IMAGE", "crop_scale_step", "dct_scale", "frame_height_offset", "looks_like_jpeg",
           "open_jpeg", "row_margin", "rows_through"]
