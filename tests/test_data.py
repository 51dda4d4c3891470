"""Tests for jtln_hf.data on the real Fashion-MNIST files and on small hand-made datasets.

The batch-composition tests check the property the whole design relies on: every per-device
batch holds exactly the configured numbers of source and target rows, in every epoch, and also
after ``accelerate`` shards the batches over two processes.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter

import datasets
import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from PIL import Image

from jtln_hf import data as jdata
from jtln_hf.data import (
    FASHION_MNIST_DATA_CONFIG,
    FASHION_MNIST_LABELS,
    PairedBatchSampler,
    build_joint_dataset,
    build_transform,
    collate,
    make_batch_transform,
    sample_shots,
    split_by_classes,
    standardize_columns,
)

MEAN, STD = FASHION_MNIST_DATA_CONFIG["mean"][0], FASHION_MNIST_DATA_CONFIG["std"][0]


# --------------------------------------------------------------------------------- loading
def test_fashion_mnist_features(fashion_mnist):
    train, test = fashion_mnist
    assert len(train) == 60000 and len(test) == 10000
    for ds in (train, test):
        assert isinstance(ds.features["image"], datasets.Image)
        assert isinstance(ds.features["label"], datasets.ClassLabel)
        assert ds.features["label"].names == [
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ]  # fmt: skip
    image = train[0]["image"]
    assert isinstance(image, Image.Image) and image.size == (28, 28) and image.mode == "L"
    # Fashion-MNIST is balanced: 6000 train / 1000 test images per class
    assert np.bincount(train["label"], minlength=10).tolist() == [6000] * 10
    assert np.bincount(test["label"], minlength=10).tolist() == [1000] * 10


def test_load_fashion_mnist_errors(tmp_path):
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        jdata.load_fashion_mnist("validation")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        jdata.load_fashion_mnist("train", data_dir=tmp_path)


def test_fashion_mnist_dir_from_environment(tmp_path):
    """JTLN_FASHION_MNIST_DIR moves the default folder (for machines where apt-get cannot run)."""
    import subprocess
    import sys

    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).symlink_to(jdata.FASHION_MNIST_DIR / name)
    # one fresh interpreter: the variable is read when the module is imported, then again on a reload with
    # the variable pointing at an empty folder (the same cache: the error must come before it is read)
    code = f"""
import importlib, os
import jtln_hf.data as d
from jtln_hf.data import fashion_mnist as f
t = d.load_fashion_mnist('test')
print(d.FASHION_MNIST_DIR, len(t), sum(t['label']))
os.environ["JTLN_FASHION_MNIST_DIR"] = {str(tmp_path / "empty")!r}
importlib.reload(f)
try:
    f.load_fashion_mnist('test')
    print("LOADED")
except Exception as err:
    print("ERROR", str(err).replace(chr(10), " "))
"""
    env = {**os.environ, "JTLN_FASHION_MNIST_DIR": str(tmp_path), "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    first, second = out.stdout.strip().splitlines()[-2:]
    assert first.split() == [str(tmp_path), "10000", str(sum(range(10)) * 1000)]
    assert second.startswith("ERROR") and "JTLN_FASHION_MNIST_DIR" in second and str(tmp_path / "empty") in second


# ----------------------------------------------------------------------------- splits / shots
def test_split_by_classes_names_labels_counts(fashion_mnist):
    train, _ = fashion_mnist
    source_names, target_names = ["Bag", "T-shirt/top", "Sneaker"], ["Coat", "Trouser"]
    source, target = split_by_classes(train, source_names, target_names)
    assert source.features["label"].names == source_names  # in the given order
    assert target.features["label"].names == target_names
    assert np.bincount(source["label"]).tolist() == [6000, 6000, 6000]
    assert np.bincount(target["label"]).tolist() == [6000, 6000]
    assert len(source) == 18000 and len(target) == 12000
    # the renumbering maps to the right class: first image of new class j == first original image of it
    original = np.asarray(train["label"])
    for ds, names in ((source, source_names), (target, target_names)):
        labels = np.asarray(ds["label"])
        for new_id, name in enumerate(names):
            first_new = int(np.flatnonzero(labels == new_id)[0])
            first_old = int(np.flatnonzero(original == FASHION_MNIST_LABELS.index(name))[0])
            # exact: the same uint8 image
            np.testing.assert_array_equal(np.asarray(ds[first_new]["image"]), np.asarray(train[first_old]["image"]))


def test_split_by_classes_accepts_indices(fashion_mnist):
    train, _ = fashion_mnist
    source, target = split_by_classes(train, [0, 1], ["9"])
    assert source.features["label"].names == ["T-shirt/top", "Trouser"]
    assert target.features["label"].names == ["Ankle boot"]
    assert len(target) == 6000


@pytest.mark.parametrize("source,target,match", [
    (["Bag", "Coat"], ["Coat", "Shirt"], r"\['Coat'\] are in both the source and the target list"),
    (["Bag", "Jacket"], ["Shirt"], r"unknown class 'Jacket': valid names are \['T-shirt/top'"),
    (["Bag"], ["Shirt", 12], r"class index 12 is out of range: the dataset has 10 classes"),
    ([], ["Shirt"], "must both be non-empty"),
    (["Bag"], [], "must both be non-empty"),
    (["Bag", "Bag"], ["Shirt"], "names a class twice"),
])  # fmt: skip
def test_split_by_classes_errors(fashion_mnist, source, target, match):
    with pytest.raises(ValueError, match=match):
        split_by_classes(fashion_mnist[0], source, target)


@pytest.fixture(scope="module")
def numbered_source(fashion_mnist):
    """Two Fashion-MNIST classes with a ``row`` column (position in the split) to identify rows."""
    source, _ = split_by_classes(fashion_mnist[1], ["Sandal", "Shirt"], ["Bag"])  # test split: 1000 each
    return source.add_column("row", list(range(len(source))))


def test_sample_shots_exact_and_reproducible(numbered_source):
    shots = sample_shots(numbered_source, 7, seed=3)
    labels = np.asarray(shots["label"])
    assert np.bincount(labels, minlength=2).tolist() == [7, 7]
    rows = shots["row"]
    assert len(set(rows)) == 14  # no row drawn twice
    # each drawn row keeps its own label
    all_labels = np.asarray(numbered_source["label"])
    assert all(all_labels[r] == lab for r, lab in zip(rows, labels))
    assert shots.features["label"].names == ["Sandal", "Shirt"]
    assert sample_shots(numbered_source, 7, seed=3)["row"] == rows
    assert sample_shots(numbered_source, 7, seed=4)["row"] != rows


def test_sample_shots_too_many(numbered_source):
    with pytest.raises(ValueError, match=r"class 'Sandal' has 1000 images but 1001 shots were asked"):
        sample_shots(numbered_source, 1001)
    assert len(sample_shots(numbered_source, 1000)) == 2000  # exactly the class size is fine


# ----------------------------------------------------------------------------- column names
def _png_paths(tmp_path, values, mode="L"):
    paths = []
    for i, v in enumerate(values):
        path = tmp_path / f"img{i}.png"
        Image.new(mode, (6, 5), v).save(path)
        paths.append(str(path))
    return paths


def test_standardize_columns_renames_and_encodes(tmp_path):
    ds = datasets.Dataset.from_dict({
        "picture": _png_paths(tmp_path, [10, 20, 30, 40]),
        "kind": ["dog", "cat", "dog", "bird"],
        "notes": ["a", "b", "c", "d"],
    })
    assert ds.features["picture"] == datasets.Value("string")
    out = standardize_columns(ds, image_column="picture", label_column="kind")
    assert out.column_names == ["image", "label"]
    assert isinstance(out.features["image"], datasets.Image)
    assert out.features["label"].names == ["bird", "cat", "dog"]  # class_encode_column sorts names
    assert list(out["label"]) == [2, 1, 2, 0]
    assert [np.asarray(out[i]["image"])[0, 0] for i in range(4)] == [10, 20, 30, 40]


def test_standardize_columns_keeps_classlabel_and_pil(tmp_path):
    ds = datasets.Dataset.from_dict(
        {"img": [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(3)], "y": [2, 0, 1]},
        features=datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["z", "a", "m"])}),
    )
    out = standardize_columns(ds, image_column="img", label_column="y")
    assert out.features["label"].names == ["z", "a", "m"]  # an existing ClassLabel is kept as is
    assert list(out["label"]) == [2, 0, 1]


def test_standardize_columns_missing_column():
    ds = datasets.Dataset.from_dict({"image": ["x.png"], "category": ["a"]})
    with pytest.raises(ValueError, match=r"dataset has no column 'label' \(columns: \['image', 'category'\]\)"):
        standardize_columns(ds)
    with pytest.raises(ValueError, match=r"no column 'img'"):
        standardize_columns(ds, image_column="img", label_column="category")


# ----------------------------------------------------------------------------- transforms
def test_eval_transform_values_and_shape():
    apply = make_batch_transform(build_transform(FASHION_MNIST_DATA_CONFIG, training=False), in_chans=1)
    batch = {"image": [Image.new("L", (28, 28), 0), Image.new("L", (28, 28), 255), Image.new("L", (28, 28), 51)],
             "label": [3, 1, 0], "domain": [0, 1, 1]}
    out = apply(batch)
    assert out["labels"] == [3, 1, 0] and out["domain"] == [0, 1, 1]
    for tensor, value in zip(out["pixel_values"], (0, 255, 51)):
        assert tensor.shape == (1, 28, 28) and tensor.dtype == torch.float32
        expected = (value / 255 - MEAN) / STD  # ToTensor then Normalize, by hand
        torch.testing.assert_close(tensor, torch.full((1, 28, 28), expected), rtol=0, atol=1e-5)


def test_rgb_and_array_inputs_become_one_channel(fashion_mnist):
    transform = build_transform(FASHION_MNIST_DATA_CONFIG, training=False)
    apply = make_batch_transform(transform, in_chans=1)
    gray = fashion_mnist[1][0]["image"]
    rgb = gray.convert("RGB")
    coloured = Image.new("RGB", (28, 28), (200, 100, 50))
    out = apply({"image": [rgb, np.asarray(gray), coloured]})
    assert "labels" not in out and "domain" not in out
    assert all(t.shape == (1, 28, 28) for t in out["pixel_values"])
    torch.testing.assert_close(out["pixel_values"][0], transform(gray))
    torch.testing.assert_close(out["pixel_values"][1], transform(gray))
    # PIL's ITU-R 601-2 luma: L = R*299/1000 + G*587/1000 + B*114/1000 (rounded)
    luma = round((200 * 299 + 100 * 587 + 50 * 114) / 1000)
    torch.testing.assert_close(out["pixel_values"][2], torch.full((1, 28, 28), (luma / 255 - MEAN) / STD),
                               rtol=0, atol=1e-5)


def test_training_transform_shape_and_three_channels():
    train_apply = make_batch_transform(build_transform(FASHION_MNIST_DATA_CONFIG, training=True), in_chans=1)
    out = train_apply({"image": [Image.new("L", (40, 30), 7)] * 2})
    assert all(t.shape == (1, 28, 28) for t in out["pixel_values"])
    rgb_config = {**FASHION_MNIST_DATA_CONFIG, "input_size": [3, 28, 28], "mean": [0.5] * 3, "std": [0.5] * 3}
    rgb_apply = make_batch_transform(build_transform(rgb_config, training=False), in_chans=3)
    assert rgb_apply({"image": [Image.new("L", (28, 28), 9)]})["pixel_values"][0].shape == (3, 28, 28)


def test_training_augmentation_is_a_function_of_the_batch_only():
    """Random augmentation is drawn from generators seeded by the batch's rows: the same batch gives the
    same pixels whatever the global RNG state (so a resumed run replays it), the global generators are
    left as they were, and the same image at another position or in another batch is augmented anew."""
    apply = make_batch_transform(build_transform(FASHION_MNIST_DATA_CONFIG, training=True, scale=(0.3, 1.0)), 1)
    image = Image.fromarray((np.arange(28 * 28).reshape(28, 28) * 3 % 256).astype(np.uint8))
    batch = {"image": [image] * 4, "label": [0, 1, 0, 1], "domain": [0, 0, 1, 1], "row": [5, 9, 0, 3]}
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    first = apply(batch)["pixel_values"]
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])  # global generators untouched
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    again = apply(batch)["pixel_values"]
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # exact: same calls, same seeds, one process
    assert len({tuple(t.flatten().tolist()) for t in first}) == 4  # one image, four augmentations
    other = apply({**batch, "row": [5, 9, 0, 4]})["pixel_values"]  # another batch composition
    assert not torch.equal(first[0], other[0])
    plain = apply({"image": [image] * 2})["pixel_values"]  # no row ids: keyed by the pixels and position
    assert torch.equal(plain[0], apply({"image": [image] * 2})["pixel_values"][0])  # exact: the same calls again
    assert not torch.equal(plain[0], plain[1])


def test_joint_dataset_and_collate(small_split):
    joint = small_split["joint"]
    rows = [joint[i] for i in (0, 1, len(joint) - 1)]
    batch = collate(rows)
    assert batch["pixel_values"].shape == (3, 1, 28, 28)
    assert batch["domain"].tolist() == [0, 0, 1]
    assert batch["labels"].dtype == torch.long and batch["domain"].dtype == torch.long
    raw = build_joint_dataset(small_split["source"], small_split["target"])
    assert raw.column_names == ["image", "label", "domain", "row"]
    assert raw["domain"] == [0] * 180 + [1] * 10
    assert raw["row"] == list(range(180)) + list(range(10))  # index in its own domain's dataset
    assert raw["label"] == list(small_split["source"]["label"]) + list(small_split["target"]["label"])
    assert build_joint_dataset(None, small_split["target"])["domain"] == [1] * 10
    with pytest.raises(ValueError, match="both the source and the target dataset are empty"):
        build_joint_dataset(None, small_split["target"].select([]))


# ----------------------------------------------------------------------------- paired batches
def _domains(n_source, n_target, interleave=False):
    domains = np.array([0] * n_source + [1] * n_target)
    if interleave:  # the sampler must not depend on the rows' order in the dataset
        domains = np.random.default_rng(0).permutation(domains)
    return domains


def _check_composition(batches, domains, n_source, n_target):
    for batch in batches:
        assert len(batch) == n_source + n_target
        d = domains[batch]
        assert int((d == 0).sum()) == n_source and int((d == 1).sum()) == n_target, batch


# (batch_size, source_fraction, expected source rows per batch): the expected numbers by hand
COMPOSITIONS = [
    (8, 0.5, 4), (7, 0.5, 4), (16, 0.25, 4), (7, 0.25, 2), (5, 0.25, 1), (8, 0.0, 0), (3, 0.0, 0),
    (8, 1.0, 8), (1, 1.0, 1), (1, 0.0, 0), (12, 0.75, 9), (10, 0.3, 3),
    (2, 0.25, 1), (5, 0.5, 3), (6, 0.25, 2),  # halves round up (Python's round gave 0, 2, 2)
]


@pytest.mark.parametrize("batch_size,fraction,n_source", COMPOSITIONS)
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_batch_has_the_ratio(batch_size, fraction, n_source, drop_last):
    domains = _domains(53, 11, interleave=True)
    sampler = PairedBatchSampler(domains, batch_size, source_fraction=fraction, seed=5, drop_last=drop_last)
    assert (sampler.n_source, sampler.n_target) == (n_source, batch_size - n_source)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        _check_composition(batches, domains, n_source, batch_size - n_source)


@pytest.mark.parametrize("batch_size,fraction,n_source", [c for c in COMPOSITIONS if 0 < c[2]])
def test_source_rows_once_per_epoch(batch_size, fraction, n_source):
    domains = _domains(53, 11, interleave=True)
    source_rows = set(np.flatnonzero(domains == 0).tolist())
    for drop_last in (False, True):
        sampler = PairedBatchSampler(domains, batch_size, source_fraction=fraction, seed=1, drop_last=drop_last)
        for epoch in range(2):
            sampler.set_epoch(epoch)
            picked = [i for batch in sampler for i in batch if domains[i] == 0]
            if drop_last:
                assert len(sampler) == 53 // n_source
                assert len(picked) == len(set(picked)) == (53 // n_source) * n_source  # each at most once
            else:
                assert len(sampler) == math.ceil(53 / n_source)
                # the first 53 picks are every source row exactly once; the rest tops up the last batch
                assert sorted(picked[:53]) == sorted(source_rows)
                top_up = picked[53:]
                assert len(top_up) == len(sampler) * n_source - 53 < n_source
                assert len(set(top_up)) == len(top_up)
                last = [i for i in batches_of(sampler)[-1] if domains[i] == 0]
                assert len(set(last)) == len(last) == n_source  # the top-up repeats no row of its batch


def batches_of(sampler) -> list[list[int]]:
    return list(sampler)


def test_tiny_source_set_repeats_rows_only_when_it_must():
    domains = _domains(3, 4)
    sampler = PairedBatchSampler(domains, 16, source_fraction=0.5, seed=0)  # 8 source rows per batch, 3 exist
    (batch,) = list(sampler)
    source = [i for i in batch if domains[i] == 0]
    assert len(source) == 8 and set(source) == {0, 1, 2}


@pytest.mark.parametrize("num_replicas", [1, 2])
def test_last_batch_top_up_as_documented(num_replicas):
    """PairedBatchSampler's docstring: each epoch visits the source rows once; the last batch is topped up
    with source rows it does not already hold (so no batch repeats a row: the source set is larger than a
    batch here); with several processes the global batch is topped up; every batch keeps its composition.

    By hand: 10 source rows (0..9), 4 target rows (10..13), 4 source + 4 target rows per global batch
    (batch 8 on one process, 4 on each of two) -> 3 global batches; the last holds the 2 source rows
    the first two did not visit plus 2 rows repeated from those two batches; drop_last drops it instead."""
    domains = _domains(10, 4)
    batch_size = 8 // num_replicas
    sampler = PairedBatchSampler(domains, batch_size, source_fraction=0.5, seed=3, num_replicas=num_replicas)
    all_source = set(range(10))
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 3 * num_replicas
        for batch in batches:  # the composition, the last batch included: n_source source rows, then targets
            assert domains[batch].tolist() == [0] * (batch_size // 2) + [1] * (batch_size // 2)
        # whole global batches: the num_replicas consecutive per-device batches of step k
        glob = [sum(batches[k * num_replicas:(k + 1) * num_replicas], []) for k in range(3)]
        source = [[i for i in b if domains[i] == 0] for b in glob]
        earlier = source[0] + source[1]
        assert len(set(earlier)) == 8  # the first two batches: 8 distinct rows
        unvisited = all_source - set(earlier)
        assert len(unvisited) == 2 and unvisited <= set(source[2])  # the last batch finishes the epoch ...
        top_up = set(source[2]) - unvisited
        assert len(top_up) == 2 and top_up <= set(earlier)  # ... topped up with rows of earlier batches
        assert len(set(source[2])) == 4  # no row twice in the last (global) batch
        counts = Counter(i for b in source for i in b)
        assert sorted(counts.values()) == [1] * 8 + [2] * 2  # so exactly the 2 top-up rows repeat in the epoch
        for b in glob:  # target rows: 4 per global batch, one fresh permutation of the 4 target rows each
            assert sorted(i for i in b if domains[i] == 1) == [10, 11, 12, 13]
    dropped = PairedBatchSampler(domains, batch_size, source_fraction=0.5, seed=3, num_replicas=num_replicas,
                                 drop_last=True)
    rows = [i for b in dropped for i in b if domains[i] == 0]
    assert len(dropped) == 2 * num_replicas and len(rows) == len(set(rows)) == 8  # no top-up, no repeat


@pytest.mark.parametrize("batch_size,fraction", [(8, 0.5), (7, 0.25), (8, 0.0), (4, 0.75), (16, 0.5)])
def test_target_rows_resampled_evenly(batch_size, fraction):
    domains = _domains(60, 7, interleave=True)
    target_rows = np.flatnonzero(domains == 1)
    sampler = PairedBatchSampler(domains, batch_size, source_fraction=fraction, seed=2)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        counts = Counter(i for batch in sampler for i in batch if domains[i] == 1)
        drawn = len(sampler) * sampler.n_target
        if drawn >= len(target_rows):  # every target row fits at least once: all seen
            assert set(counts) == set(target_rows.tolist())
        seen = [counts.get(int(r), 0) for r in target_rows]
        assert max(seen) - min(seen) <= 1, counts
        assert sum(seen) == drawn


def test_target_only_epoch_covers_target_once():
    domains = _domains(5, 12)
    sampler = PairedBatchSampler(domains, 4, source_fraction=0.0)
    batches = list(sampler)
    assert len(batches) == 3
    assert sorted(i for b in batches for i in b) == list(range(5, 17))


def test_sampler_determinism_and_epochs():
    domains = _domains(40, 9, interleave=True)
    a = PairedBatchSampler(domains, 6, source_fraction=0.5, seed=11)
    b = PairedBatchSampler(domains, 6, source_fraction=0.5, seed=11)
    epoch0 = list(a)
    assert list(a) == epoch0  # iterating again without set_epoch replays the epoch
    assert list(b) == epoch0  # another instance, same seed, same batches
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 != epoch0
    a.set_epoch(0)
    assert list(a) == epoch0
    b.set_epoch(1)
    assert list(b) == epoch1
    c = PairedBatchSampler(domains, 6, source_fraction=0.5, seed=12)
    assert list(c) != epoch0


def test_sampler_errors():
    with pytest.raises(ValueError, match=r"asks for source rows but the training set has none"):
        PairedBatchSampler(_domains(0, 10), 8, source_fraction=0.5)
    with pytest.raises(ValueError, match=r"asks for target rows but the training set has none"):
        PairedBatchSampler(_domains(10, 0), 8, source_fraction=0.5)
    with pytest.raises(ValueError, match=r"domain values must be 0 \(source\) or 1 \(target\), found \[2\]"):
        PairedBatchSampler([0, 1, 2, 1], 2)
    with pytest.raises(ValueError, match=r"found \[-1, 3\]"):
        PairedBatchSampler([0, -1, 3, 1], 2)
    with pytest.raises(ValueError, match="source_fraction must be in"):
        PairedBatchSampler([0, 1], 2, source_fraction=1.5)
    with pytest.raises(ValueError, match="batch_size and num_replicas must be >= 1, got 0 and 1"):
        PairedBatchSampler([0, 1], 0)
    with pytest.raises(ValueError, match="batch_size and num_replicas must be >= 1, got 2 and 0"):
        PairedBatchSampler([0, 1], 2, num_replicas=0)
    # a domain missing is fine when the fraction does not ask for it
    assert len(list(PairedBatchSampler(_domains(0, 10), 4, source_fraction=0.0))) == 3
    assert len(list(PairedBatchSampler(_domains(10, 0), 4, source_fraction=1.0))) == 3


def _shards(sampler, num_processes=2):
    """The per-process batch lists Accelerate makes of ``sampler`` (whole batches, round-robin)."""
    return [
        list(BatchSamplerShard(sampler, num_processes=num_processes, process_index=i, split_batches=False))
        for i in range(num_processes)
    ]


@pytest.mark.parametrize("batch_size,fraction,n_source", [(8, 0.5, 4), (6, 0.25, 2), (5, 0.0, 0), (4, 1.0, 4)])
@pytest.mark.parametrize("n_source_rows", [40, 37])
@pytest.mark.parametrize("num_replicas", [1, 2])
def test_ratio_holds_per_process_under_accelerate_sharding(batch_size, fraction, n_source, n_source_rows,
                                                           num_replicas):
    domains = _domains(n_source_rows, 9, interleave=True)
    sampler = PairedBatchSampler(domains, batch_size, source_fraction=fraction, seed=3, num_replicas=num_replicas)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        whole = list(sampler)
        assert len(whole) == len(sampler)
        if num_replicas == 2:
            assert len(whole) % 2 == 0  # whole global batches: no process waits or wraps around
        shards = _shards(sampler)
        assert len(shards[0]) == len(shards[1]) >= 1
        for shard in shards:
            _check_composition(shard, domains, n_source, batch_size - n_source)
        # the two processes share the sampler's batches round-robin (with an odd count Accelerate
        # repeats the first one to even out: still a whole, correctly composed batch)
        interleaved = [batch for pair in zip(*shards) for batch in pair]
        assert interleaved[: len(whole)] == whole
        # not the default distributed pitfall: both processes get their share of source rows
        for shard in shards:
            got = domains[[i for batch in shard for i in batch]]
            assert int((got == 0).sum()) == n_source * len(shard)


@pytest.mark.parametrize("batch_size,fraction,n_source", [(8, 0.5, 4), (6, 0.5, 3), (8, 0.25, 2), (4, 0.0, 0)])
@pytest.mark.parametrize("n_source_rows", [48, 41])
def test_two_processes_see_the_rows_of_one_process_with_twice_the_batch(batch_size, fraction, n_source,
                                                                        n_source_rows):
    """num_replicas=2: step k of process 0 and of process 1 together hold exactly the rows of step k
    of one process with batch 2b (so 2 x b trains like 1 x 2b), and one epoch over both processes
    visits every source row once and every target row evenly."""
    domains = _domains(n_source_rows, 13, interleave=True)
    two = PairedBatchSampler(domains, batch_size, source_fraction=fraction, seed=9, num_replicas=2)
    one = PairedBatchSampler(domains, 2 * batch_size, source_fraction=fraction, seed=9)
    assert one.n_source == 2 * n_source
    for epoch in range(2):
        two.set_epoch(epoch)
        one.set_epoch(epoch)
        shards, big = _shards(two), list(one)
        assert len(shards[0]) == len(shards[1]) == len(big)
        for k, batch in enumerate(big):
            assert sorted(shards[0][k] + shards[1][k]) == sorted(batch)
        rows = [i for shard in shards for batch in shard for i in batch]
        source = [i for i in rows if domains[i] == 0]
        if n_source:
            assert set(source) == set(np.flatnonzero(domains == 0).tolist())
            assert len(source) - len(set(source)) < 2 * n_source  # only the last global batch tops up
        counts = Counter(i for i in rows if domains[i] == 1)
        assert max(counts.values()) - min(counts.get(int(r), 0) for r in np.flatnonzero(domains == 1)) <= 1
