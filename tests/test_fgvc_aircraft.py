"""Tests for jtln_hf.data.fgvc_aircraft on a miniature archive written in the official layout.

The archive holds eight tiny JPEGs whose bottom 20 rows are a red "copyright banner" and whose
content is noise around a colour of their own (so a row's image can be told apart and the banner
must be gone), three variants ("737-300", "737-400", "F/A-18") in two families of two
manufacturers, plus a listed variant without images ("Boeing 717"). Nothing touches the network:
``download=True`` is exercised with a stand-in for torchvision's ``FGVCAircraft``.
"""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from PIL import Image, JpegImagePlugin

from jtln_hf import data as jdata
from jtln_hf.data.fgvc_aircraft import BANNER_HEIGHT, crop_banner, load_fgvc_aircraft

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"

VARIANTS = ["737-300", "737-400", "Boeing 717", "F/A-18"]
FAMILIES = ["Boeing 717", "Boeing 737", "F/A-18"]
MANUFACTURERS = ["Boeing", "McDonnell Douglas"]
BANNER = (230, 20, 20)
# image id -> (variant, family, manufacturer, content colour, (width, height))
IMAGES = {
    "0034309": ("737-300", "Boeing 737", "Boeing", (20, 60, 200), (40, 52)),
    "0034958": ("F/A-18", "F/A-18", "McDonnell Douglas", (20, 200, 60), (40, 52)),
    "0037511": ("737-400", "Boeing 737", "Boeing", (200, 200, 40), (40, 52)),
    "0041135": ("737-300", "Boeing 737", "Boeing", (40, 200, 200), (40, 52)),
    "0046714": ("F/A-18", "F/A-18", "McDonnell Douglas", (120, 40, 200), (40, 52)),
    "0053320": ("737-400", "Boeing 737", "Boeing", (235, 235, 235), (40, 52)),
    "0056978": ("737-300", "Boeing 737", "Boeing", (30, 30, 30), (40, 52)),
    "1025794": ("F/A-18", "F/A-18", "McDonnell Douglas", (110, 120, 130), (48, 50)),  # banner edge off the 8x8 grid
}
SPLIT_IDS = {
    "train": ["0034309", "0034958", "0037511"],
    "val": ["0041135", "0046714"],
    "trainval": ["0034309", "0034958", "0037511", "0041135", "0046714"],
    "test": ["1025794", "0053320", "0056978"],
}

# data/variants.txt of fgvc-aircraft-2013b: the 100 variants, in file order.
FGVC_VARIANTS = (
    "707-320", "727-200", "737-200", "737-300", "737-400", "737-500", "737-600", "737-700", "737-800",
    "737-900", "747-100", "747-200", "747-300", "747-400", "757-200", "757-300", "767-200", "767-300",
    "767-400", "777-200", "777-300", "A300B4", "A310", "A318", "A319", "A320", "A321", "A330-200",
    "A330-300", "A340-200", "A340-300", "A340-500", "A340-600", "A380", "ATR-42", "ATR-72", "An-12",
    "BAE 146-200", "BAE 146-300", "BAE-125", "Beechcraft 1900", "Boeing 717", "C-130", "C-47", "CRJ-200",
    "CRJ-700", "CRJ-900", "Cessna 172", "Cessna 208", "Cessna 525", "Cessna 560", "Challenger 600",
    "DC-10", "DC-3", "DC-6", "DC-8", "DC-9-30", "DH-82", "DHC-1", "DHC-6", "DHC-8-100", "DHC-8-300",
    "DR-400", "Dornier 328", "E-170", "E-190", "E-195", "EMB-120", "ERJ 135", "ERJ 145",
    "Embraer Legacy 600", "Eurofighter Typhoon", "F-16A/B", "F/A-18", "Falcon 2000", "Falcon 900",
    "Fokker 100", "Fokker 50", "Fokker 70", "Global Express", "Gulfstream IV", "Gulfstream V", "Hawk T1",
    "Il-76", "L-1011", "MD-11", "MD-80", "MD-87", "MD-90", "Metroliner", "Model B200", "PA-28", "SR-20",
    "Saab 2000", "Saab 340", "Spitfire", "Tornado", "Tu-134", "Tu-154", "Yak-42",
)  # fmt: skip
BOEING_VARIANTS = (
    "707-320", "727-200", "737-200", "737-300", "737-400", "737-500", "737-600", "737-700", "737-800",
    "737-900", "747-100", "747-200", "747-300", "747-400", "757-200", "757-300", "767-200", "767-300",
    "767-400", "777-200", "777-300", "Boeing 717",
)  # fmt: skip
AIRBUS_VARIANTS = (
    "A300B4", "A310", "A318", "A319", "A320", "A321", "A330-200", "A330-300",
    "A340-200", "A340-300", "A340-500", "A340-600", "A380",
)  # fmt: skip


# ------------------------------------------------------------------------------ the mini archive
def original_pixels(image_id: str) -> np.ndarray:
    """The full image of ``image_id`` (content, then the banner), as uint8 HxWx3."""
    *_, colour, (width, height) = IMAGES[image_id]
    rng = np.random.default_rng(int(image_id))
    content = np.asarray(colour, float) + rng.uniform(-15, 15, size=(height - BANNER_HEIGHT, width, 3))
    banner = np.broadcast_to(np.asarray(BANNER, float), (BANNER_HEIGHT, width, 3))
    return np.clip(np.concatenate([content, banner]), 0, 255).astype(np.uint8)


def write_archive(parent: Path) -> Path:
    """Write the miniature ``fgvc-aircraft-2013b`` into ``parent``; return the archive folder."""
    data = parent / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    for image_id in IMAGES:
        Image.fromarray(original_pixels(image_id)).save(data / "images" / f"{image_id}.jpg", quality=90)
    for name, classes in (("variants", VARIANTS), ("families", FAMILIES), ("manufacturers", MANUFACTURERS)):
        (data / f"{name}.txt").write_text("".join(f"{c}\n" for c in classes))
    for split, ids in SPLIT_IDS.items():
        for k, level in enumerate(("variant", "family", "manufacturer")):
            # the family file lists the images in another order: rows follow the variant file
            ordered = list(reversed(ids)) if level == "family" else ids
            text = "".join(f"{i} {IMAGES[i][k]}\n" for i in ordered)
            (data / f"images_{level}_{split}.txt").write_text(text)
    return data.parent


@pytest.fixture
def archive(tmp_path) -> Path:
    return write_archive(tmp_path / "fgvc-aircraft")


def load(root, split="trainval", tmp=None, **kwargs) -> datasets.Dataset:
    """``load_fgvc_aircraft`` with the Arrow cache under the test's folder, not ~/.cache."""
    cache = Path(tmp if tmp is not None else root).parent / "hf-cache"
    return load_fgvc_aircraft(root, split, cache_dir=cache, **kwargs)


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# ------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("form", ["archive folder", "parent folder"])
def test_columns_and_class_labels(archive, form):
    root = archive if form == "archive folder" else archive.parent
    ds = load(root, "trainval", tmp=archive)
    assert ds.column_names == ["image", "variant", "family", "manufacturer"]
    assert isinstance(ds.features["image"], datasets.Image)
    for column, names in (("variant", VARIANTS), ("family", FAMILIES), ("manufacturer", MANUFACTURERS)):
        assert isinstance(ds.features[column], datasets.ClassLabel)
        assert ds.features[column].names == names  # the full list, "Boeing 717" without images included
    assert ds.split == "trainval"


def test_rows_labels_and_ids_across_splits(archive):
    loaded = {split: load(archive, split) for split in SPLIT_IDS}
    assert {split: len(ds) for split, ds in loaded.items()} == {"train": 3, "val": 2, "trainval": 5, "test": 3}
    for split, ds in loaded.items():
        assert ds.features == loaded["train"].features  # same ClassLabels: an id means one class everywhere
        for row, image_id in zip(ds, SPLIT_IDS[split]):  # rows in the variant file's order
            variant, family, manufacturer, colour, _ = IMAGES[image_id]
            assert ds.features["variant"].int2str(row["variant"]) == variant
            assert ds.features["family"].int2str(row["family"]) == family
            assert ds.features["manufacturer"].int2str(row["manufacturer"]) == manufacturer
            assert np.abs(as_array(row["image"]).mean((0, 1)) - colour).max() < 6  # this row's own picture
    assert loaded["train"][0]["variant"] == loaded["test"][2]["variant"] == VARIANTS.index("737-300")
    assert loaded["trainval"]["variant"][:3] == loaded["train"]["variant"]


def test_banner_is_cropped(archive):
    ds = load(archive, "test")
    raw = ds.cast_column("image", datasets.Image(decode=False))
    for row, stored, image_id in zip(ds, raw["image"], SPLIT_IDS["test"]):
        width, height = IMAGES[image_id][4]
        image = row["image"]
        assert image.size == (width, height - BANNER_HEIGHT) and image.format == "JPEG"
        assert stored["path"] == f"{image_id}.jpg" and stored["bytes"]
        pixels = as_array(image)
        # no banner red anywhere, not even in the last rows (which share JPEG blocks with the banner
        # in 1025794, whose banner edge is not on the 8x8 grid)
        assert np.abs(pixels - BANNER).max(axis=2).min() > 60
        # the kept rows are the original's, up to the rounding of one re-encoding with its own tables;
        # the last 2 rows differ more: the original's decoder blends their chroma with the banner's
        with Image.open(archive / "data" / "images" / f"{image_id}.jpg") as original:
            diff = np.abs(pixels[:-2] - as_array(original)[: height - BANNER_HEIGHT - 2])
        assert diff.mean() < 1.5 and diff.max() <= 12


def test_crop_banner_keeps_the_jpeg_settings(tmp_path):
    """Re-encoding reuses the image's quantization tables and chroma subsampling (no quality-95 bloat)."""
    pixels = original_pixels("0034309")
    for subsampling, quality in ((0, 90), (2, 75)):  # 4:4:4 and 4:2:0
        path = tmp_path / f"photo-{subsampling}.jpg"
        Image.fromarray(pixels).save(path, quality=quality, subsampling=subsampling)
        cropped_bytes = crop_banner(path)
        with Image.open(path) as original, Image.open(io.BytesIO(cropped_bytes)) as cropped:
            assert cropped.size == (original.width, original.height - BANNER_HEIGHT)
            assert JpegImagePlugin.get_sampling(cropped) == subsampling
            assert cropped.quantization == original.quantization
    gray = tmp_path / "gray.png"  # not a JPEG: encoded at the fallback quality
    Image.fromarray(pixels[..., 0]).save(gray)
    with Image.open(io.BytesIO(crop_banner(gray, banner_height=2))) as cropped:
        assert cropped.format == "JPEG" and cropped.mode == "L" and cropped.size == (40, 50)
    with pytest.raises(ValueError, match="is 40x52 pixels: not taller than the 52-row banner"):
        crop_banner(gray, banner_height=52)


def test_works_with_the_jtln_data_pipeline(archive):
    """``variant`` as the label: class split, joint dataset, batch transform (images decode, no banner)."""
    train = jdata.standardize_columns(load(archive, "trainval"), label_column="variant")
    source, target = jdata.split_by_classes(train, ["F/A-18"], ["737-300", "737-400"])
    assert (len(source), len(target)) == (2, 3)
    joint = jdata.build_joint_dataset(source, target)
    to_tensor = lambda image: torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)  # noqa: E731
    batch = jdata.make_batch_transform(to_tensor, in_chans=3)(joint[:5])
    assert [tuple(p.shape) for p in batch["pixel_values"]] == [(3, 32, 40)] * 5
    assert batch["labels"] == [0, 0, 0, 1, 0] and batch["domain"] == [0, 0, 1, 1, 1]


def test_num_proc_keeps_the_order(archive):
    ds = load(archive, "trainval", num_proc=2)
    assert ds["variant"] == [VARIANTS.index(IMAGES[i][0]) for i in SPLIT_IDS["trainval"]]


# ------------------------------------------------------------------------------------- download
def test_download_fetches_only_when_missing(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeFGVCAircraft:  # stands in for torchvision's: "downloads" by writing the mini archive
        def __init__(self, root, split="trainval", download=False, **kwargs):
            calls.append((Path(root), split, download))
            write_archive(Path(root))
            (Path(root) / "fgvc-aircraft-2013b.tar.gz").write_bytes(b"downloaded")  # torchvision keeps it

    monkeypatch.setattr(torchvision.datasets, "FGVCAircraft", FakeFGVCAircraft)
    root = tmp_path / "data" / "fgvc-aircraft"
    assert len(load(root, "test", download=True)) == 3
    assert calls == [(root, "test", True)]
    assert (root / "fgvc-aircraft-2013b" / "data" / "variants.txt").is_file()
    assert not (root / "fgvc-aircraft-2013b.tar.gz").exists()  # extracted, so deleted
    assert len(load(root, "train", download=True)) == 3  # already there: no second download
    assert len(load(root / "fgvc-aircraft-2013b", "val", download=True)) == 2
    assert len(calls) == 1


# --------------------------------------------------------------------------------------- errors
def test_missing_archive(tmp_path):
    message = r"no FGVC-Aircraft archive at .*download=True.*the folder that holds fgvc-aircraft-2013b"
    with pytest.raises(FileNotFoundError, match=message):
        load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'val', 'trainval', 'test'\]"):
        load(tmp_path, "validation")


@pytest.mark.parametrize("name", ["images_family_test.txt", "manufacturers.txt"])
def test_missing_annotation_file(archive, name):
    (archive / "data" / name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{name} is missing.*download=True"):
        load(archive, "test")


def test_missing_image(archive):
    path = archive / "data" / "images" / "0053320.jpg"
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) listed in .*images_variant_test.txt are missing") as err:
        load(archive, "test")
    assert str(path) in str(err.value) and "download=True" in str(err.value)
    assert len(load(archive, "train")) == 3  # other splits do not need it


def test_unreadable_image(archive):
    (archive / "data" / "images" / "0053320.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot read the image .*0053320.jpg: UnidentifiedImageError.*damaged"):
        load(archive, "test")


def test_annotation_files_must_agree(archive):
    family = archive / "data" / "images_family_val.txt"
    family.write_text("0041135 Boeing 737\n0099999 F/A-18\n")
    with pytest.raises(ValueError, match=r"label different images: 1 id\(s\) only in the first \(e.g. \['0046714'\]\)"):
        load(archive, "val")


def test_unknown_class_and_bad_lines(archive):
    variant = archive / "data" / "images_variant_train.txt"
    variant.write_text("0034309 737-300\n0034958 737-999\n")
    message = r"images_variant_train.txt, line 2: class '737-999' is not listed in .*variants.txt"
    with pytest.raises(ValueError, match=message):
        load(archive, "train")
    variant.write_text("0034309\n")
    with pytest.raises(ValueError, match=r"line 1: expected '<image id> <class name>'"):
        load(archive, "train")
    variant.write_text("0034309 737-300\n0034309 737-300\n")
    with pytest.raises(ValueError, match=r"line 2: image '0034309' is listed twice"):
        load(archive, "train")


# -------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "name, variants", [("fgvc_aircraft_boeing.yaml", BOEING_VARIANTS), ("fgvc_aircraft_airbus.yaml", AIRBUS_VARIANTS)]
)
def test_configs_name_the_loader_and_the_manufacturers_variants(name, variants):
    config = yaml.safe_load((CONFIGS / name).read_text())
    assert config["dataset"] == "fgvc-aircraft" and config["dataset_root"] == "data/fgvc-aircraft"
    assert (config["label_column"], config["train_split"], config["test_split"]) == ("variant", "trainval", "test")
    assert config["target_classes"] == list(variants)
    assert len(set(config["target_classes"])) == len(variants)
    assert set(config["target_classes"]) <= set(FGVC_VARIANTS)
    assert config["source_classes"] == [] and config["shots"] == 0
    assert config["backbone"] == "resnet50" and config["pretrained_backbone"] is True


def test_boeing_and_airbus_targets_are_disjoint():
    boeing, airbus = (yaml.safe_load((CONFIGS / n).read_text())["target_classes"] for n in
                      ("fgvc_aircraft_boeing.yaml", "fgvc_aircraft_airbus.yaml"))  # fmt: skip
    assert (len(boeing), len(airbus)) == (22, 13) and not set(boeing) & set(airbus)
    assert len(FGVC_VARIANTS) == len(set(FGVC_VARIANTS)) == 100


def test_the_recipe_splits_the_archive_by_variant(archive):
    """``--dataset fgvc-aircraft --dataset_root DIR --label_column variant``: the paper's shape, banner-free."""
    from jtln_hf.experiment.arguments import DataArguments
    from jtln_hf.data import load_pools, prepare_data

    data_args = DataArguments(dataset="fgvc-aircraft", dataset_root=str(archive.parent), label_column="variant",
                              train_split="trainval", test_split="test", target_classes=["737-300", "737-400"],
                              shots=1)  # fmt: skip
    exp = prepare_data(data_args.spec(), seed=0, pools=load_pools(data_args.spec()))
    assert exp.target_names == ["737-300", "737-400"] and exp.source_names == ["Boeing 717", "F/A-18"]
    assert len(exp.source) == 2 and len(exp.target) == 2 and len(exp.target_test) == 2
    for image in exp.target_test["image"]:
        assert image.height == 52 - BANNER_HEIGHT
