"""``pixels-mmd``: a cost from the images' thumbnail pixels, built per seed before any training.

Thumbnails against torch's bilinear resampling (an independent implementation), unreadable images left
out and counted, the builder as ``features-mmd`` on the thumbnails of the images it was given, its
relations on real Fashion-MNIST, and the recipe building it from each seed's shots with no warm-up.
"""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from jtln_hf import data as jdata
from jtln_hf.cost import cost_from_features
from jtln_hf.cost.builders import COST_BUILDERS, CostInputs, build_cost
from jtln_hf.cost.flags import plan_cost
from jtln_hf.cost.pixels import PIXEL_SIDE, pixel_features, thumbnail_pixels
from jtln_hf.experiment.arguments import DataArguments, JTLNArguments, ModelArguments
from jtln_hf.experiment.checks import check_arguments

from test_recipe_cli import recipe  # recipes/train_jtln.py as a module, loaded once

SOURCE = ["T-shirt/top", "Trouser", "Pullover"]
TARGET = ["Shirt", "Coat"]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_thumbnail_is_the_bilinear_resampling_of_the_image_in_rgb(fashion_mnist):
    """28 -> 32 px against torch's bilinear interpolation (half-pixel centres, as Pillow's), on real images.

    Pillow resamples an 8-bit image in two passes, rows then columns, and rounds to uint8 after each:
    0.5 of a level from the first pass (carried by the second's weights, which sum to 1) and 0.5 from
    the second, with coefficients held to 2**-22 (at most 2 passes x 2 taps x 255 x 2**-22 = 0.0003 of
    a level more); torch computes in float32 in one pass (a 4-tap sum of values <= 1: ~1e-7). So the
    two agree within (1 + 0.001) / 255 + 1e-6 on any CPU.
    """
    train, _ = fashion_mnist
    for image in train.select(range(5))["image"]:
        thumb = thumbnail_pixels(image).reshape(PIXEL_SIDE, PIXEL_SIDE, 3)
        # exact on any CPU: "L" -> "RGB" copies the byte into three channels, Pillow resamples each channel with the
        # same integer fixed-point taps, and the one float step (/ 255) is the same correctly rounded division
        np.testing.assert_array_equal(thumb[..., 0], thumb[..., 1])  # greyscale: three equal channels
        np.testing.assert_array_equal(thumb[..., 0], thumb[..., 2])
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None, None]
        ref = torch.nn.functional.interpolate(x, size=(PIXEL_SIDE, PIXEL_SIDE), mode="bilinear", align_corners=False,
                                              antialias=True)[0, 0].numpy()  # fmt: skip
        np.testing.assert_allclose(thumb[..., 0], ref, rtol=0, atol=1.001 / 255 + 1e-6)
    # a constant image stays constant, exactly on any CPU: Pillow's 8-bit resampling is integer arithmetic whose
    # taps sum to 2**22 within a few units (a level is 2**22 / 255 ~ 16,000 units), so its rounding gives each byte
    # back; both sides then divide the same float32 byte by 255, an IEEE division rounded correctly everywhere
    colour = thumbnail_pixels(PILImage.new("RGB", (50, 20), (255, 0, 51)))
    assert colour.shape == (3 * PIXEL_SIDE * PIXEL_SIDE,) and colour.dtype == np.float32
    np.testing.assert_array_equal(colour.reshape(-1, 3), np.tile(np.float32([255, 0, 51]) / 255, (PIXEL_SIDE**2, 1)))


def test_unreadable_images_are_left_out_and_counted():
    rng = np.random.default_rng(0)
    rows = {"image": [{"bytes": _png(rng.integers(0, 256, (8, 6), dtype=np.uint8)), "path": None},
                      {"bytes": b"not an image", "path": None},
                      {"bytes": _png(rng.integers(0, 256, (5, 9, 3), dtype=np.uint8)), "path": None}],
            "label": [0, 1, 2]}  # fmt: skip
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features({"image": datasets.Image(),
                                                                      "label": datasets.Value("int64")}))  # fmt: skip
    features, labels, skipped = pixel_features(ds)
    assert features.shape == (2, 3 * PIXEL_SIDE**2) and labels.tolist() == [0, 2] and skipped == 1
    with pytest.raises(ValueError, match=r"has no \['label'\]: rename its columns"):
        pixel_features(ds.remove_columns("label"))
    with pytest.raises(ValueError, match="none of the dataset's 1 rows could be decoded"):
        pixel_features(ds.select([1]))


def test_the_builder_is_features_mmd_on_the_thumbnails_of_the_sampled_source_and_every_shot(fashion_mnist):
    train, _ = fashion_mnist
    source, target = jdata.split_by_classes(train, SOURCE, TARGET)
    shots = jdata.sample_shots(target, 5, seed=3)
    inputs = CostInputs(source, shots, SOURCE, TARGET, seed=3, samples_per_class=20)  # no predict: no model read
    cost, how = build_cost("pixels-mmd", inputs, "none")
    sample = jdata.sample_shots(source, 20, seed=3)  # what a features-* cost reads of the source
    xs, ys, _ = pixel_features(sample)
    xt, yt, _ = pixel_features(shots)
    # exact: the same calls on the same arrays in this process (the builder samples the source with the same
    # sample_shots call, reads the thumbnails with pixel_features and calls cost_from_features with these arguments)
    np.testing.assert_array_equal(cost, cost_from_features(xs, ys, xt, yt, method="mmd", num_source_labels=3,
                                                           num_target_labels=2, seed=3, normalize="none"))  # fmt: skip
    assert "thumbnail pixels of each source class (60 images) and each target class (10 labelled images)" in how


def test_on_fashion_mnist_it_relates_coat_to_pullover_from_five_shots(fashion_mnist):
    """Real data, the embedded default's 5 shots: Coat's cheapest source class is Pullover on every seed tried,
    by a margin far above rounding (the smallest margin is asserted, so a near-tie cannot pass by chance)."""
    train, _ = fashion_mnist
    source, target = jdata.split_by_classes(train, SOURCE, TARGET)
    for seed in range(3):
        inputs = CostInputs(source, jdata.sample_shots(target, 5, seed=seed), SOURCE, TARGET, seed=seed)
        cost, _ = build_cost("pixels-mmd", inputs, "column")
        coat = cost[:, TARGET.index("Coat")]
        assert coat.argmin() == SOURCE.index("Pullover")
        assert np.sort(coat)[1] - coat.min() > 0.05  # column-normalised: 5% of the cost's range
        assert cost[SOURCE.index("Trouser")].min() > 0.3  # far from both (>= 0.51 on these seeds)


def test_it_is_built_per_seed_with_no_warm_up_and_no_refresh():
    spec = DataArguments().spec()
    cost = plan_cost("pixels-mmd", spec, normalization="column", warmup_steps=None, samples_per_class=200,
                     pretrained=False)  # fmt: skip
    assert cost.warmup_steps == 0 and cost.per_seed and not cost.from_model and cost.fixed is None
    assert COST_BUILDERS["pixels-mmd"].samples
    with pytest.raises(ValueError, match="--cost_refresh_steps is only used by"):
        check_arguments(DataArguments(), ModelArguments(), JTLNArguments(mode="jtln", cost="pixels-mmd"),
                        {"cost", "cost_refresh_steps"})  # fmt: skip
    with pytest.raises(ValueError, match="--cost_warmup_restart discards the source-only warm-up"):
        plan_cost("pixels-mmd", spec, normalization="column", warmup_steps=5, samples_per_class=200,
                  pretrained=False, warmup_restart=True)  # fmt: skip


def test_the_recipe_builds_it_from_each_seeds_shots_after_a_warm_up_it_does_not_read(tmp_path, monkeypatch):
    import jtln_hf.cost.resolve as resolve

    built = []

    def recording(kind, inputs, normalization):
        built.append((kind, inputs.seed, inputs.predict, sorted(inputs.target["label"])))
        return build(kind, inputs, normalization)

    build = resolve.build_cost
    monkeypatch.setattr(resolve, "build_cost", recording)
    out = tmp_path / "run"
    argv = ["--mode", "jtln", "--seeds", "0", "1", "--shots", "2", "--max_eval_samples", "40", "--max_steps", "1",
            "--per_device_train_batch_size", "8", "--save_timm", "false", "--dataloader_num_workers", "0",
            "--cost", "pixels-mmd", "--cost_samples_per_class", "10", "--cost_warmup_steps", "1",
            "--output_dir", str(out)]  # fmt: skip
    assert recipe.main(argv) == 0
    assert [(kind, seed, predict) for kind, seed, predict, _ in built] == [("pixels-mmd", 0, None),
                                                                          ("pixels-mmd", 1, None)]  # fmt: skip
    assert all(labels == [0] * 2 + [1] * 2 + [2] * 2 + [3] * 2 + [4] * 2 for *_, labels in built)  # 2 shots a class
    card = (out / "model" / "README.md").read_text()  # a warm-up, when one is asked for, is said: C did not read it
    assert "thumbnail pixels" in card and "no network; normalisation: column; joint steps after 1 source-only" in card
