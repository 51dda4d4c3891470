"""Tests for JointImageClassifierImageProcessor: timm's eval transform on any image, save/load.

The reference for the pixels is the training code's own evaluation path
(``jtln_hf.data.build_transform`` + ``make_batch_transform``), independent of the processor.
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
        assert torch.all(from_paths[FILE_MODES.index("RGB")][3] == (1.0 - 0.5) / 0.25)  # opaque: alpha 255
