"""Tests for JointImageClassifierImageProcessor: timm's eval transform on any image, save/load.

Two kinds of reference. Parity tests compare the processor with the training code's evaluation
path (``jtln_hf.data.build_transform`` + ``make_batch_transform``): training = inference. They
share ``to_mode`` and timm's transform with the processor by design (so their atol=0 comparisons are
exact by construction, on any CPU: the same functions on the same image, PIL's integer conversions and
resizes, then x / 255, - mean, / std, element-wise, each one correctly rounded IEEE operation with no
sum, which no choice of vectorised or scalar kernel changes), and cannot catch a conversion both
get wrong. The by-hand tests (a palette image; every mode x 1/3/4 channels,
``test_every_mode_against_pixels_by_hand``) check both paths against pixels computed with numpy
from the stored values and PIL's documented conversion rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import make_config
from PIL import Image
from transformers import AutoImageProcessor

import jtln_hf  # noqa: F401  (registers the Auto classes)
from jtln_hf import JointImageClassifierImageProcessor
from jtln_hf import data as jdata
from jtln_hf import image_processing_jtln

FMNIST = jdata.FASHION_MNIST_DATA_CONFIG
RGB32 = {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
         "crop_pct": 0.875, "crop_mode": "center"}  # fmt: skip


def _image(mode: str, size=(28, 28), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, size=(size[1], size[0], 4), dtype=np.uint8)
    image = Image.fromarray(rgba, "RGBA")
    if mode == "P":
        return image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return image if mode == "RGBA" else image.convert(mode)


def _reference(data_config, images, in_chans):
    """Pixel values of the training code's evaluation transform."""
    transform = jdata.make_batch_transform(jdata.build_transform(data_config, training=False), in_chans)
    return torch.stack(transform({"image": list(images)})["pixel_values"])


def test_matches_the_training_eval_transform():
    processor = JointImageClassifierImageProcessor(data_config=FMNIST)
    images = [_image("L", seed=s) for s in range(3)] + [_image("RGB", size=(40, 31), seed=7)]
    out = processor(images, return_tensors="pt")["pixel_values"]
    assert out.shape == (4, 1, 28, 28) and out.dtype == torch.float32
    torch.testing.assert_close(out, _reference(FMNIST, images, 1), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "I", "1"])
@pytest.mark.parametrize("size", [(28, 28), (100, 37), (13, 200)])
def test_any_mode_and_size_one_channel(mode, size):
    processor = JointImageClassifierImageProcessor(data_config=FMNIST)
    image = _image(mode, size)
    out = processor(image)["pixel_values"]
    assert out.shape == (1, 1, 28, 28) and torch.isfinite(out).all()
    # an independent reference for the conversion: ITU-R 601 luma of the image's RGB pixels
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) if mode not in ("I", "1", "L", "LA") else None
    if rgb is not None:
        luma = rgb @ np.array([0.299, 0.587, 0.114])
        converted = np.asarray(image_processing_jtln.to_mode(image, "L"), dtype=np.float64)
        assert np.abs(converted - luma).max() <= 1.0
    torch.testing.assert_close(out, _reference(FMNIST, [image], 1), rtol=0, atol=0)  # training = inference


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_any_mode_three_channels(mode):
    processor = JointImageClassifierImageProcessor(data_config=RGB32)
    out = processor(_image(mode, (50, 40)))["pixel_values"]
    assert out.shape == (1, 3, 32, 32)
    if mode == "L":  # a grayscale image becomes three equal channels, normalised per channel
        mean, std = torch.tensor(RGB32["mean"]), torch.tensor(RGB32["std"])
        raw = out[0] * std[:, None, None] + mean[:, None, None]
        torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(raw[1], raw[2], atol=1e-5, rtol=0)


def test_arrays_tensors_and_batches():
    processor = JointImageClassifierImageProcessor(data_config=FMNIST)
    image = _image("L", (30, 30))
    expected = processor(image)["pixel_values"]
    gray = np.array(image)  # (H, W) uint8, writable
    for variant in (gray, gray[:, :, None], gray[None], torch.from_numpy(gray)[None], gray.astype(np.float32) / 255):
        torch.testing.assert_close(processor(variant)["pixel_values"], expected, rtol=0, atol=1e-6)
    batch = np.stack([gray[None]] * 3)  # (3, 1, H, W)
    assert processor(batch)["pixel_values"].shape == (3, 1, 28, 28)
    assert processor([image, [image, gray]])["pixel_values"].shape == (3, 1, 28, 28)
    assert isinstance(processor(image, return_tensors="np")["pixel_values"], np.ndarray)


def test_save_and_auto_load_round_trip(tmp_path):
    processor = JointImageClassifierImageProcessor.from_model_config(make_config())
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["data_config"] == FMNIST
    assert saved["image_processor_type"] == "JointImageClassifierImageProcessor"
    assert saved["auto_map"] == {"AutoImageProcessor": "image_processing_jtln.JointImageClassifierImageProcessor"}
    assert (tmp_path / "image_processing_jtln.py").read_text() == Path(image_processing_jtln.__file__).read_text()
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is JointImageClassifierImageProcessor
    assert loaded.data_config == processor.data_config
    image = _image("RGB", (33, 45))
    torch.testing.assert_close(loaded(image)["pixel_values"], processor(image)["pixel_values"], rtol=0, atol=0)
    loaded.save_pretrained(tmp_path / "again")  # a fixed point
    assert json.loads((tmp_path / "again" / "preprocessor_config.json").read_text()) == saved


def test_clear_errors():
    with pytest.raises(ValueError, match="needs a timm data_config"):
        JointImageClassifierImageProcessor()
    with pytest.raises(ValueError, match=r"only 1 \(grayscale\), 3 \(RGB\) and 4 \(RGBA\) are supported"):
        JointImageClassifierImageProcessor(data_config={**FMNIST, "input_size": [2, 28, 28]})
    processor = JointImageClassifierImageProcessor(data_config=FMNIST)
    with pytest.raises(TypeError, match="unsupported image type"):
        processor([object()])
    with pytest.raises(ValueError, match="cannot read an image of shape"):
        processor(np.zeros((5, 6, 7), dtype=np.uint8))


def _transparent_palette(seed: int = 3) -> Image.Image:
    image = _image("P", (30, 24), seed=seed)
    image.info["transparency"] = 0  # palette entry 0 is transparent
    return image


@pytest.mark.parametrize("in_chans", [1, 3, 4])
def test_training_and_inference_see_the_same_pixels_for_every_mode(in_chans):
    """Pixel for pixel: the processor against the training code's evaluation transform (same data config)."""
    config = {**RGB32, "input_size": [in_chans, 32, 32], "mean": [0.5] * in_chans, "std": [0.25] * in_chans}
    images = [_image(m, (41, 29), seed=k) for k, m in enumerate(["L", "RGB", "RGBA", "P", "LA", "I", "1", "CMYK"])]
    images.append(_transparent_palette())
    processor = JointImageClassifierImageProcessor(data_config=config)
    out = processor(images)["pixel_values"]
    assert out.shape == (len(images), in_chans, 32, 32)
    torch.testing.assert_close(out, _reference(config, images, in_chans), rtol=0, atol=0)
    if in_chans == 4:  # the palette's transparency reaches a 4-channel model as alpha
        alpha = np.asarray(image_processing_jtln.to_mode(images[-1], "RGBA"))[..., 3]
        assert set(np.unique(alpha)) == {0, 255}


# ------------------------------------------------------------- a palette image, expected by hand
# Four palette entries, one per 16x16 quadrant of a 32x32 image; entry 3 may be transparent.
PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 100, 50)]
# PIL's ITU-R 601-2 luma, L = (299 R + 587 G + 114 B) / 1000 rounded: 76.245, 149.685, 29.07, 124.2
LUMA = [76, 150, 29, 124]
IDENTITY32 = {"input_size": [1, 32, 32], "interpolation": "bilinear", "mean": [0.5], "std": [0.25],
              "crop_pct": 1.0, "crop_mode": "center"}  # fmt: skip


def _quadrant_palette(transparent: bool) -> Image.Image:
    index = np.zeros((32, 32), dtype=np.uint8)
    index[:16, 16:], index[16:, :16], index[16:, 16:] = 1, 2, 3
    image = Image.fromarray(index, "P")
    image.putpalette([v for colour in PALETTE for v in colour])
    if transparent:
        image.info["transparency"] = 3
    return image


def _quadrants(values) -> np.ndarray:
    """A 32x32 array holding values[k] in quadrant k (top-left, top-right, bottom-left, bottom-right)."""
    out = np.empty((32, 32), dtype=np.float64)
    out[:16, :16], out[:16, 16:], out[16:, :16], out[16:, 16:] = values
    return out


@pytest.mark.parametrize("transparent", [False, True])
@pytest.mark.parametrize("in_chans", [1, 3, 4])
def test_palette_image_pixels_by_hand(in_chans, transparent):
    """Palette colours (and transparency) to normalised pixels, expected values typed by hand.

    1 channel: the luma of each palette colour (transparency ignored); 3 channels: the palette
    colours; 4 channels: the colours and alpha 0 on the transparent entry, 255 elsewhere.
    """
    config = {**IDENTITY32, "input_size": [in_chans, 32, 32], "mean": [0.5] * in_chans, "std": [0.25] * in_chans}
    if in_chans == 1:
        channels = [LUMA]
    else:
        channels = [[colour[c] for colour in PALETTE] for c in range(3)]
        if in_chans == 4:
            channels.append([255, 255, 255, 0 if transparent else 255])
    expected = torch.from_numpy(np.stack([(_quadrants(v) / 255 - 0.5) / 0.25 for v in channels])).float()
    image = _quadrant_palette(transparent)
    out = JointImageClassifierImageProcessor(data_config=config)(image)["pixel_values"][0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(_reference(config, [image], in_chans)[0], expected, rtol=0, atol=1e-5)  # training too


# --------------------------------------------------- files: what training decodes = what inference reads
FILE_MODES = ["L", "RGB", "RGBA", "LA", "P", "P+transparency", "I;16"]


def _file_image(mode: str, seed: int) -> Image.Image:
    if mode == "P+transparency":
        image = _image("P", (41, 29), seed=seed)
        image.info["transparency"] = 0
        return image
    if mode == "I;16":  # a 16-bit grayscale PNG, values spread over 0..65535
        values = np.random.default_rng(seed).integers(0, 65536, size=(29, 41)).astype(np.uint16)
        return Image.fromarray(values)
    return _image(mode, (41, 29), seed=seed)


@pytest.mark.parametrize("in_chans", [1, 3, 4])
def test_image_files_training_and_inference_agree_pixel_for_pixel(in_chans, tmp_path):
    """The same PNG files through training (build_joint_dataset -> undecoded bytes -> make_batch_transform)
    and through the processor (given the path, or the opened PIL image): the same tensors, for every mode.

    Given a path, the processor used transformers' load_image, which converts to RGB: RGBA and LA files
    lost their alpha channel for 4-channel models (training keeps it)."""
    config = {**RGB32, "input_size": [in_chans, 32, 32], "mean": [0.5] * in_chans, "std": [0.25] * in_chans}
    paths = []
    for k, mode in enumerate(FILE_MODES):
        paths.append(str(tmp_path / f"{k}.png"))
        _file_image(mode, seed=k).save(paths[-1])
    target = datasets.Dataset.from_dict({"image": paths, "label": [0] * len(paths)}).cast_column("image",
                                                                                                datasets.Image())
    transform = jdata.make_batch_transform(jdata.build_transform(config, training=False), in_chans)
    joint = jdata.build_joint_dataset(None, target).with_transform(transform)
    trained = torch.stack(joint[: len(paths)]["pixel_values"])
    processor = JointImageClassifierImageProcessor(data_config=config)
    from_paths = processor(paths)["pixel_values"]
    from_pil = processor([Image.open(p) for p in paths])["pixel_values"]
    assert trained.shape == (len(paths), in_chans, 32, 32)
    for k, mode in enumerate(FILE_MODES):
        torch.testing.assert_close(from_paths[k], trained[k], rtol=0, atol=0, msg=lambda m, mode=mode: f"{mode}: {m}")
        torch.testing.assert_close(from_pil[k], trained[k], rtol=0, atol=0, msg=lambda m, mode=mode: f"{mode}: {m}")
    if in_chans == 4:  # the files' alpha reaches the model: varying for RGBA/LA, two levels for the palette
        for k in (FILE_MODES.index("RGBA"), FILE_MODES.index("LA"), FILE_MODES.index("P+transparency")):
            assert len(torch.unique(from_paths[k][3])) > 1, FILE_MODES[k]
        assert torch.all(from_paths[FILE_MODES.index("RGB")][3] == (1.0 - 0.5) / 0.25)  # opaque: alpha 255, exact 2.0


# --------------------------------------- every mode against pixels computed by hand (numpy, no PIL convert)
HAND_MODES = ["L", "RGB", "RGBA", "LA", "P", "P+transparency", "1", "I", "I;16", "F"]
# mean/std exact in binary, so their float32 copies equal them (no rounding of the constants)
HAND_MEAN, HAND_STD = [0.5, 0.375, 0.25, 0.625], [0.25, 0.5, 0.125, 0.375]
HAND_SIZE = 24


def _hand_image(mode: str, seed: int) -> Image.Image:
    """A 24x24 image in ``mode``; the I, I;16 and F ones reach beyond 0..255 (and F has fractions)."""
    rng = np.random.default_rng(seed)
    shape = (HAND_SIZE, HAND_SIZE)
    if mode == "I":
        return Image.fromarray(rng.integers(-300, 600, size=shape).astype(np.int32), "I")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 1024, size=shape).astype(np.uint16))
    if mode == "F":
        return Image.fromarray(rng.uniform(-20, 300, size=shape).astype(np.float32), "F")
    if mode == "P+transparency":
        image = _image("P", shape, seed=seed)
        image.info["transparency"] = int(np.asarray(image)[0, 0])  # an index that occurs
        return image
    return _image(mode, shape, seed=seed)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """PIL's RGB -> L, ITU-R 601-2 luma L = R 299/1000 + G 587/1000 + B 114/1000, in the fixed point
    Pillow computes it (Convert.c, L24): (19595 R + 38470 G + 7471 B + 0x8000) >> 16, i.e. rounded."""
    r, g, b = (rgb[..., c].astype(np.int64) for c in range(3))
    return (19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16


def _by_hand(image: Image.Image, transparent: bool, in_chans: int) -> np.ndarray:
    """(in_chans, H, W) 0..255 integers: the image converted to L/RGB/RGBA by the rules PIL documents,
    written with numpy on the stored values (never calling ``convert``)."""
    stored = np.asarray(image)
    rgb = gray = None
    alpha = np.full(stored.shape[:2], 255, dtype=np.int64)  # opaque unless the image says otherwise
    if image.mode == "P":  # the palette's colours; the transparent entry gets alpha 0
        palette = np.asarray(image.getpalette(), dtype=np.int64).reshape(-1, 3)
        rgb = palette[stored]
        if transparent:
            alpha = np.where(stored == image.info["transparency"], 0, 255)
    elif image.mode in ("RGB", "RGBA"):
        rgb = stored[..., :3].astype(np.int64)
        if image.mode == "RGBA":
            alpha = stored[..., 3].astype(np.int64)
    elif image.mode == "LA":
        gray, alpha = stored[..., 0].astype(np.int64), stored[..., 1].astype(np.int64)
    elif image.mode == "1":
        gray = np.where(stored, 255, 0)
    elif image.mode == "F":  # clipped to 0..255, fractions truncated
        gray = np.clip(np.trunc(stored), 0, 255).astype(np.int64)
    else:  # L, and I / I;16 clipped to 0..255
        gray = np.clip(stored.astype(np.int64), 0, 255)
    if in_chans == 1:  # colour -> its luma (alpha dropped); gray as is
        return (_luma(rgb) if rgb is not None else gray)[None]
    colour = rgb.transpose(2, 0, 1) if rgb is not None else np.stack([gray] * 3)  # gray -> R = G = B
    return colour if in_chans == 3 else np.concatenate([colour, alpha[None]])


@pytest.mark.parametrize("in_chans", [1, 3, 4])
@pytest.mark.parametrize("mode", HAND_MODES)
def test_every_mode_against_pixels_by_hand(mode, in_chans):
    """Processor and training transform against pixels computed by hand, for every mode and channel count.

    The images are 24x24 and so is the model's input (crop_pct 1): timm's Resize leaves an image
    already at its size unchanged (PIL returns a copy) and the centre crop takes all of it. The
    reference is then (x/255 - mean)/std, in float64, of the hand-converted 0..255 integers x.
    Tolerance, derived: float32 computes x/255 (rounded: error <= u x/255), subtracts the mean (<= u
    |x/255 - mean|) and divides by the std (<= u |r|), u = 2**-24; so |r32 - r| <= u (x/255 + |x/255 -
    mean|)/std + u |r| <= u (1/std + 2 |r|) to first order, x/255 <= 1. We allow u (2/std + 3 |r|)
    (room for a multiplication by a rounded 1/255 instead of the division). One grey level off is
    1/(255 std) >= 0.01, orders of magnitude beyond that.
    """
    config = {"input_size": [in_chans, HAND_SIZE, HAND_SIZE], "interpolation": "bilinear", "mean": HAND_MEAN[:in_chans],
              "std": HAND_STD[:in_chans], "crop_pct": 1.0, "crop_mode": "center"}  # fmt: skip
    image = _hand_image(mode, seed=HAND_MODES.index(mode))
    assert image.mode == mode.split("+")[0]
    x = _by_hand(image, mode == "P+transparency", in_chans).astype(np.float64)
    mean = np.asarray(HAND_MEAN[:in_chans])[:, None, None]
    std = np.asarray(HAND_STD[:in_chans])[:, None, None]
    expected = (x / 255 - mean) / std
    bound = 2.0**-24 * (2 / std + 3 * np.abs(expected))
    processed = JointImageClassifierImageProcessor(data_config=config)(image)["pixel_values"][0]
    trained = _reference(config, [image], in_chans)[0]
    for name, got in (("processor", processed), ("training", trained)):
        assert got.shape == expected.shape and got.dtype == torch.float32, name
        error = np.abs(got.double().numpy() - expected)
        worst = float((error / bound).max())
        assert np.all(error <= bound), f"{name}: {mode} -> {in_chans} channels, worst {worst:.3g} x bound"


def test_luma_by_hand_is_the_documented_formula_rounded():
    """_luma, Pillow's fixed point, is the documented L = R 299/1000 + G 587/1000 + B 114/1000 rounded:
    within 1/2 of it, plus 255 x the fixed-point coefficients' distance from 0.299, 0.587, 0.114
    (~0.003), on 2 million random RGB triples and the corners of the cube."""
    rgb = np.random.default_rng(0).integers(0, 256, size=(2_000_000, 3))
    rgb = np.concatenate([rgb, np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)])])
    exact = rgb[:, 0] * 299 / 1000 + rgb[:, 1] * 587 / 1000 + rgb[:, 2] * 114 / 1000
    slack = 255 * sum(abs(k / 65536 - c) for k, c in ((19595, 0.299), (38470, 0.587), (7471, 0.114)))
    assert slack < 0.003
    assert np.abs(_luma(rgb) - exact).max() <= 0.5 + slack
