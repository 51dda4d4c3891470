"""Decoding JPEGs at their crop's scale: timm's boxes, the pixels' quality, and the paths that must not change.

The photos are scikit-learn's two sample photos (real JPEG photographs, 427 x 640), encoded again as
JPEGs at their size (a 500 x 375 crop) and as 1600 x 1200 mosaics of their crops at their own
resolution (as ``benchmarks/bench_input.py`` writes its large photos).
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin
from sklearn.datasets import load_sample_images
from timm.data.transforms import RandomResizedCropAndInterpolation
import torchvision.transforms
from torchvision.transforms import ColorJitter

from jtln_hf.data import build_transform, make_batch_transform
from jtln_hf.data import decode
from jtln_hf.data.decode import (crop_scale_step, dct_scale, frame_height_offset, row_margin,
                                 rows_through)  # fmt: skip
from jtln_hf.data.transforms import BAD_IMAGES_KEY

DATA_CONFIG = {"input_size": (3, 224, 224), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
               "std": (0.229, 0.224, 0.225), "crop_pct": 0.875}  # fmt: skip
#: The lowest PSNR measured over 400 crops of 1600 x 1200 photos (benchmarks/README.md, "Decoding at the crop's
#: scale": 34.1 dB for RandomResizedCrop boxes, 35.3 dB for Resize + CenterCrop; at 500 x 375 49.5 dB and equal),
#: less 3 dB (twice the squared error): a crop decoded at its scale is at least that close to the full decode's.
MIN_PSNR_DB = {"training": 34.1 - 3, "evaluation": 35.3 - 3}
#: What timm's colour jitter (brightness, contrast, saturation factors <= 1.4) can do to a difference of two
#: images: brightness scales it by <= 1.4; contrast and saturation blend with a mean or a grey image
#: (x' = f x + (1 - f) m), <= 1.4 + 0.4 each. So the PSNR after it may be lower by 20 log10(1.4 * 1.8 * 1.8).
JITTER_LOSS_DB = 20 * np.log10(1.4 * 1.8 * 1.8)


def _photos() -> list[np.ndarray]:
    return [np.asarray(p) for p in load_sample_images().images]


def _jpeg(pixels: np.ndarray) -> dict:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return {"bytes": out.getvalue(), "path": None}


def _mosaic(photos: list[np.ndarray], k: int, height: int = 1200, width: int = 1600) -> np.ndarray:
    rng, out = np.random.default_rng(k), np.empty((height, width, 3), np.uint8)
    for top in range(0, height, 300):
        for left in range(0, width, 400):
            photo = photos[(k + top + left) % 2]
            i, j = rng.integers(0, photo.shape[0] - 300), rng.integers(0, photo.shape[1] - 400)
            out[top : top + 300, left : left + 400] = photo[i : i + 300, j : j + 400]
    return out


@pytest.fixture(scope="module")
def jpegs() -> dict[str, list[dict]]:
    photos = _photos()
    return {"500x375": [_jpeg(photos[k % 2][k * 10 : k * 10 + 375, k * 20 : k * 20 + 500]) for k in range(4)],
            "1600x1200": [_jpeg(_mosaic(photos, k)) for k in range(4)]}  # fmt: skip


def _batch(images: list) -> dict[str, list]:
    return {"image": list(images), "label": [0] * len(images), "domain": [0] * len(images),
            "row": list(range(len(images)))}  # fmt: skip


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """``10 log10(255^2 / mean((a - b)^2))`` of two 8-bit images (infinite when they are equal)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_the_scale_is_the_largest_that_keeps_the_box_s_pixels():
    assert dct_scale((1600, 1200), (224, 224)) == 4  # 200 px at 1/8 is too few; 400 x 300 at 1/4 is enough
    assert dct_scale((1792, 1800), (224, 224)) == 8
    assert dct_scale((448, 448), (224, 224)) == 2
    assert dct_scale((447, 900), (224, 224)) == 1  # one side decides
    assert dct_scale((100, 100), (224, 224)) == 1  # a box smaller than the output: full scale


@pytest.mark.parametrize("size", ["500x375", "1600x1200"])
def test_training_draws_timm_s_boxes_and_keeps_its_flips(jpegs, size, monkeypatch):
    """The same boxes as timm's RandomResizedCropAndInterpolation for the same seeds (get_params called by both
    paths, recorded), then the same colour jitter (drawn after the flip, from the generators the box left):
    the two batches are close pixel for pixel."""
    boxes, jitters = [], []
    box_params, jitter_params = RandomResizedCropAndInterpolation.get_params, ColorJitter.get_params

    def box(img, scale, ratio):
        boxes.append(box_params(img, scale, ratio))
        return boxes[-1]

    def jitter(*args):
        jitters.append(jitter_params(*args))
        return jitters[-1]

    monkeypatch.setattr(RandomResizedCropAndInterpolation, "get_params", staticmethod(box))
    monkeypatch.setattr(ColorJitter, "get_params", staticmethod(jitter))
    transform = build_transform(DATA_CONFIG, training=True, scale=(0.08, 1.0), hflip=0.5)
    out = {}
    for crop_scale in (False, True):
        boxes.clear(), jitters.clear()
        pixels = [torch.stack(make_batch_transform(transform, 3, seed=seed, crop_scale=crop_scale)(
            _batch(jpegs[size]))["pixel_values"]) for seed in range(3)]  # fmt: skip
        out[crop_scale] = (list(boxes), repr(jitters), torch.cat(pixels))
    assert out[True][0] == out[False][0] and len(set(out[True][0])) == 12
    assert out[True][1] == out[False][1]
    again = make_batch_transform(transform, 3, seed=2, crop_scale=True)(_batch(jpegs[size]))["pixel_values"]
    assert torch.equal(torch.stack(again), out[True][2][8:])  # a function of the batch alone: what resume replays
    std, mean = torch.tensor(DATA_CONFIG["std"]).view(3, 1, 1), torch.tensor(DATA_CONFIG["mean"]).view(3, 1, 1)
    for ours, full in zip(*(out[c][2] for c in (True, False))):
        as_u8 = [((x * std + mean) * 255).numpy() for x in (ours, full)]
        assert _psnr(*as_u8) >= MIN_PSNR_DB["training"] - JITTER_LOSS_DB


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("training", [True, False])
def test_the_crop_is_close_to_the_full_decode_s(jpegs, training, mode):
    """The first step alone (crop + resize, no jitter) against timm's on the full decode, same generator state.
    A grayscale backbone's JPEGs are decoded to luma directly (``draft("L")``), the full path converts RGB to L:
    over 200 crops each that measured no lower (34.4 and 35.6 dB at 1600 x 1200), so the same bounds hold."""
    transform = build_transform(DATA_CONFIG, training=training)
    first, _ = crop_scale_step(transform, mode)
    steps = transform.transforms
    for k, raw in enumerate(jpegs["1600x1200"] + jpegs["500x375"]):
        random.seed(k)
        ours = np.asarray(first(raw))
        random.seed(k)
        decoded = Image.open(io.BytesIO(raw["bytes"])).convert(mode)
        theirs = np.asarray(steps[0](decoded) if training else steps[1](steps[0](decoded)))
        assert ours.shape == theirs.shape == ((224, 224, 3) if mode == "RGB" else (224, 224))
        assert _psnr(ours, theirs) >= MIN_PSNR_DB["training" if training else "evaluation"]


def _saved(pixels: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90, **options)
    return out.getvalue()


def test_the_frame_header_s_height_is_found_in_sequential_jpegs_only(jpegs):
    """The offset read back gives the header's height; a progressive JPEG, bytes that are not a JPEG and a
    file cut inside its first segment have none (the full decode then takes them as they are)."""
    for raw in jpegs["1600x1200"][:1] + jpegs["500x375"][:1]:
        at = frame_height_offset(raw["bytes"])
        assert int.from_bytes(raw["bytes"][at : at + 2], "big") == Image.open(io.BytesIO(raw["bytes"])).size[1]
    photo = _photos()[0]
    assert frame_height_offset(_saved(photo, progressive=True)) is None
    assert frame_height_offset(b"\x89PNG\r\n\x1a\n" + bytes(40)) is None
    assert frame_height_offset(jpegs["500x375"][0]["bytes"][:30]) is None
    assert rows_through(_saved(photo, progressive=True), 10) is None
    assert rows_through(jpegs["500x375"][0]["bytes"], 375) is None  # no row to save


def test_a_cut_jpeg_is_still_named_whatever_its_box(jpegs):
    """A file cut at 80% (a stopped download) has no end-of-image marker: it is never shortened (libjpeg would
    decode its top rows without reading the cut), so every box takes the full decode and the row is named."""
    data = jpegs["1600x1200"][0]["bytes"]
    assert rows_through(data, 100) is not None and rows_through(data[: len(data) * 4 // 5], 100) is None
    transform = build_transform(DATA_CONFIG, training=True, scale=(0.08, 0.1))  # small boxes: most end high up
    cut = {"bytes": data[: len(data) * 4 // 5], "path": None}
    for seed in range(4):
        with pytest.raises(ValueError, match="cannot decode the image of source row 0"):
            make_batch_transform(transform, 3, seed=seed)(_batch([cut]))


@pytest.mark.parametrize("options", [{}, {"restart_marker_rows": 1}, {"subsampling": 0}, {"subsampling": 1}])
@pytest.mark.parametrize("draft", [None, ("RGB", 2), ("RGB", 4), ("L", 1), ("L", 4)])
def test_a_jpeg_that_ends_early_decodes_its_rows_as_the_full_decode(options, draft):
    """A copy whose header ends ``rows + row_margin`` rows down gives the full decode's first ``rows`` rows bit for
    bit, at every DCT scale and in luma, with restart markers and each chroma subsampling (4:2:0, 4:4:4, 4:2:2).
    Exact on every CPU, not by rounding: libjpeg's default decode is integer arithmetic throughout (the islow
    IDCT and its scaled forms, the upsampling, the YCbCr tables), both decodes run in this process, and each
    output row is computed from its own row of blocks and the one below, the same bytes in both files."""
    data = _saved(_mosaic(_photos(), 1), **options)
    full = Image.open(io.BytesIO(data))
    margin = row_margin(full)
    assert margin == (16 if options.get("subsampling") in (0, 1) else 32)  # 4:4:4 and 4:2:2 sample rows 1:1
    mode, scale = draft or (None, 1)
    for rows in (1, 7, 8, 9, 100, 333, 1200 - margin - 1):
        short = Image.open(io.BytesIO(rows_through(data, rows + margin)))
        assert short.size == (1600, rows + margin)
        for image in (full, short):
            if draft:
                image.draft(mode, (1600 // scale, image.size[1] // scale))
        keep = -(-rows // scale)
        assert np.array_equal(np.asarray(short)[:keep], np.asarray(full)[:keep])
        full = Image.open(io.BytesIO(data))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "random"])
def test_training_stops_decoding_below_the_box_with_the_same_pixels(jpegs, interpolation, monkeypatch):
    """The training crop decoded through the box's last rows (plus the filter's reach) equals, bit for bit, the
    crop of the whole decode, and some boxes did stop early (the check can fail). Exact on every CPU: the decoded
    rows are equal (the test above: integer arithmetic), and PIL's 8-bit resize is fixed-point arithmetic whose
    weights come from the box and the output size alone, in this process, reading only rows both images have."""
    step = RandomResizedCropAndInterpolation(224, interpolation=interpolation)
    first, _ = crop_scale_step(torchvision.transforms.Compose([step]), "RGB")
    stops, shorten, through_box = [], decode.rows_through, decode._through_box

    def recorded(data, rows):
        stops.append(shorten(data, rows))
        return stops[-1]

    monkeypatch.setattr(decode, "rows_through", recorded)
    for k in range(24):
        raw = jpegs["1600x1200"][k % 4]
        crops = []
        for whole in (False, True):  # stopping early where it can, then decoding every row
            monkeypatch.setattr(decode, "_through_box", (lambda image, raw, last_row: image) if whole else through_box)
            random.seed(k)
            torch.manual_seed(k)
            crops.append(np.asarray(first(raw)))
        assert np.array_equal(*crops)
    assert 6 <= sum(stop is not None for stop in stops) < 24


def test_large_photos_are_decoded_at_a_smaller_scale_for_evaluation(jpegs, monkeypatch):
    """Resize(256) of a 1200-px shorter side: decoded at 1/4 (300 px >= 256), not at full size."""
    drafts, original = [], JpegImagePlugin.JpegImageFile.draft

    def recorded(self, mode, size):
        result = original(self, mode, size)
        drafts.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recorded)
    first, _ = crop_scale_step(build_transform(DATA_CONFIG, training=False), "RGB")
    assert first(jpegs["1600x1200"][0]).size == (224, 224)
    assert drafts == [(400, 300)]
    assert first(jpegs["500x375"][0]).size == (224, 224) and drafts[-1] == (500, 375)  # 375 < 512: full scale


def test_other_images_take_the_full_path_bit_for_bit(jpegs):
    """PNG rows and decoded images, in a batch without JPEGs and beside one: the same tensor with and without
    crop_scale (the same calls in one process), and the JPEG's row does differ (the check can fail)."""
    rng = np.random.default_rng(0)
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(png, format="PNG")
    images = [{"bytes": png.getvalue(), "path": None}, Image.fromarray(rng.integers(0, 256, (300, 400, 3), np.uint8))]
    for training in (True, False):
        transform = build_transform(DATA_CONFIG, training=training)
        for batch in (images, [*images, jpegs["1600x1200"][0]]):
            a, b = (make_batch_transform(transform, 3, seed=1, crop_scale=c)(_batch(batch)) for c in (True, False))
            # exact: both sides run the same PIL and torch calls on the same shapes in this process
            assert all(torch.equal(x, y) for x, y in zip(a["pixel_values"][:2], b["pixel_values"][:2]))
        assert not torch.equal(a["pixel_values"][2], b["pixel_values"][2])


def test_off_means_no_jpeg_is_drafted(jpegs, monkeypatch):
    def refuse(self, mode, size):
        raise AssertionError("draft called with crop_scale=False")

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", refuse)
    apply = make_batch_transform(build_transform(DATA_CONFIG, training=True), 3, crop_scale=False)
    assert len(apply(_batch(jpegs["1600x1200"][:2]))["pixel_values"]) == 2


def test_an_unreadable_jpeg_is_named_or_replaced_and_listed(jpegs):
    """A JPEG cut after its header fails only when decoded: without stand-ins its row is named; with them it is
    replaced by the stand-in (its label and row taken) and listed."""
    good, cut = jpegs["500x375"][0], {"bytes": jpegs["500x375"][1]["bytes"][:2000], "path": None}
    transform = build_transform(DATA_CONFIG, training=True)
    batch = {**_batch([good, cut]), "label": [3, 4]}
    with pytest.raises(ValueError, match="cannot decode the image of source row 1"):
        make_batch_transform(transform, 3)(batch)

    def stand_ins(domain, row):
        yield {"image": good, "label": 9, "row": 40}

    out = make_batch_transform(transform, 3, replace=stand_ins)(batch)
    assert out["labels"] == [3, 9] and out["row"] == [0, 40] and len(out["pixel_values"]) == 2
    assert out[BAD_IMAGES_KEY][0] == [] and [r["row"] for r in out[BAD_IMAGES_KEY][1]] == [1]
    assert out[BAD_IMAGES_KEY][1][0]["domain"] == "source" and "OSError" in out[BAD_IMAGES_KEY][1][0]["error"]


def test_a_rotated_photo_or_a_remote_path_takes_the_full_path_and_a_local_path_is_scaled(jpegs, tmp_path):
    """datasets turns a photo by its EXIF orientation when it decodes it: such a JPEG is decoded fully, bit for
    bit as without crop_scale (the same calls in one process); so is a path that is not a local file (datasets
    opens those); a JPEG given by a local path is decoded at its crop's scale like its bytes."""
    photo = Image.open(io.BytesIO(jpegs["1600x1200"][0]["bytes"]))
    exif = photo.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90°
    rotated = io.BytesIO()
    photo.save(rotated, format="JPEG", quality=90, exif=exif.tobytes())
    transform = build_transform(DATA_CONFIG, training=True)
    batch = _batch([{"bytes": rotated.getvalue(), "path": None}, jpegs["1600x1200"][1]])
    a, b = (make_batch_transform(transform, 3, seed=3, crop_scale=c)(batch)["pixel_values"] for c in (True, False))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    assert crop_scale_step(transform, "RGB")[0]({"bytes": None, "path": "hf://datasets/x/y.jpg"}) is None
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpegs["1600x1200"][1]["bytes"])
    local = {"bytes": None, "path": str(path)}
    by_path = make_batch_transform(transform, 3, seed=3)(_batch([batch["image"][0], local]))
    assert torch.equal(by_path["pixel_values"][1], a[1])  # exact: the same bytes through the same calls, here
