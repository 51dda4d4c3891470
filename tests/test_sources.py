"""Dataset sources: every kind of spec opens, splits and columns fail in one line, input read from images."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
from PIL import Image

from conftest import write_digits_folder
from jtln_hf.data.sources import (
    data_config_from_stats,
    hub_dataset_id,
    image_stats,
    open_dataset,
    pick_split,
)


def test_imagefolder_with_split_folders(digits_folder):
    splits = open_dataset(str(digits_folder))
    assert sorted(splits) == ["test", "train"]
    assert len(splits["train"]) + len(splits["test"]) == 1797
    assert splits["train"].features["label"].names == [str(d) for d in range(10)]
    assert isinstance(splits["train"].features["image"], datasets.Image)


def test_imagefolder_of_class_folders_only_is_one_train_split(tmp_path):
    root = write_digits_folder(tmp_path / "d", layout="classes")
    splits = open_dataset(str(root))
    assert list(splits) == ["train"] and len(splits["train"]) == 1797


def test_save_to_disk_folder_and_data_files(tmp_path):
    images = []
    for k in range(4):
        path = tmp_path / f"im{k}.png"
        Image.fromarray(np.full((6, 6), 60 * k, np.uint8)).save(path)
        images.append(str(path))
    labels = ["cat", "dog", "cat", "dog"]
    ds = datasets.Dataset.from_dict({"picture": images, "kind": labels}).cast_column("picture", datasets.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    saved = open_dataset(str(tmp_path / "saved"))
    assert list(saved) == ["train"] and saved["train"]["kind"] == labels
    csv = tmp_path / "rows.csv"
    csv.write_text("picture,kind\n" + "".join(f"{p},{k}\n" for p, k in zip(images, labels)))
    from_csv = open_dataset(str(csv))
    assert list(from_csv) == ["train"] and from_csv["train"]["picture"] == images


def test_bad_local_paths_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no such file or folder"):
        open_dataset(str(tmp_path / "missing"))
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="without class folders"):
        open_dataset(str(tmp_path / "flat"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"data files must all be one of"):
        open_dataset(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="needs --dataset_root"):
        open_dataset("fgvc-aircraft")


def test_pick_split_lists_the_splits(digits_folder):
    splits = open_dataset(str(digits_folder))
    assert len(pick_split(splits, "test", "--target_test_split", "digits")) == len(splits["test"])
    with pytest.raises(ValueError, match=r"--target_test_split 'validation': digits has no such split "
                                         r"\(splits: \['test', 'train'\]\)"):  # fmt: skip
        pick_split(splits, "validation", "--target_test_split", "digits")


def test_hub_ids_never_name_local_data(digits_folder):
    assert hub_dataset_id("fashion-mnist") == "zalando-datasets/fashion_mnist"
    assert hub_dataset_id("user/flowers") == "user/flowers"
    assert hub_dataset_id(str(digits_folder)) is None and hub_dataset_id("./anything") is None
    assert hub_dataset_id("fgvc-aircraft") is None


def _images(*arrays, mode=None) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": [Image.fromarray(a, mode) if mode else Image.fromarray(a)
                                                 for a in arrays]}).cast_column("image", datasets.Image())  # fmt: skip


def test_image_stats_by_hand():
    black, white = np.zeros((10, 10), np.uint8), np.full((10, 10), 255, np.uint8)
    stats = image_stats([_images(black), _images(white)])
    # one black and one white grayscale image: one channel, 10 px, mean 0.5 and std 0.5 of [0, 1]
    assert stats.in_chans == 1 and stats.image_size == 10
    assert stats.mean == pytest.approx((0.5,)) and stats.std == pytest.approx((0.5,))
    config = data_config_from_stats(stats)
    assert config["input_size"] == [1, 10, 10] and config["crop_pct"] == 1.0


def test_image_stats_colour_anywhere_means_three_channels_and_size_comes_from_the_target():
    gray = _images(np.zeros((40, 40), np.uint8))
    red = np.zeros((12, 16, 3), np.uint8)
    red[..., 0] = 255
    stats = image_stats([gray, _images(red, red)])  # source 40 px grayscale, target 16x12 RGB
    assert stats.in_chans == 3 and stats.image_size == 16
    # R is 255 on the two target images and 0 on the source one: mean 2/3; G and B are 0 everywhere
    assert stats.mean == pytest.approx((2 / 3, 0.0, 0.0), abs=1e-4)
    assert stats.std[1] == pytest.approx(1e-3)  # a constant channel is floored, never divides by 0
    palette = Image.fromarray(np.zeros((8, 8), np.uint8)).convert("P")
    assert image_stats([_images(np.zeros((8, 8), np.uint8)),
                        datasets.Dataset.from_dict({"image": [palette]})]).in_chans == 3  # fmt: skip


def test_image_stats_leave_out_unreadable_images():
    """A sample of a large source may hold a corrupt file: the statistics are those of the readable images."""
    png = io.BytesIO()
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(png, format="PNG")
    broken = {"bytes": png.getvalue()[:40], "path": None}  # a valid header, truncated pixels
    good = [{"bytes": png.getvalue(), "path": None}]
    ds = datasets.Dataset.from_dict({"image": [*good, broken]}).cast_column("image", datasets.Image())
    stats = image_stats([ds])
    assert (stats.in_chans, stats.image_size, stats.mean) == (1, 10, (1.0,))  # the white image alone
    unreadable = datasets.Dataset.from_dict({"image": [broken]}).cast_column("image", datasets.Image())
    with pytest.raises(ValueError, match="none of the sampled images could be decoded"):
        image_stats([unreadable])


def test_image_stats_given_channels_and_size_win():
    stats = image_stats([_images(np.zeros((9, 9), np.uint8))], in_chans=3, image_size=32)
    assert stats.in_chans == 3 and stats.image_size == 32 and len(stats.mean) == 3
