"""The input path's speed-ups change no batch: workers, the one-tensor batch, collate without a copy.

``default_num_workers`` is checked for given CPU counts and process counts (no timing here: the
speed is measured by ``benchmarks/bench_input.py``). The batch tensor written by
``make_batch_transform`` is compared bit for bit with the images transformed one by one by the
whole timm transform (a plain function, which takes the per-image path), and a DataLoader with two
workers must yield the same batches, bit for bit, as one loading in the training process.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from jtln_hf.data import (
    FASHION_MNIST_DATA_CONFIG,
    PairedBatchSampler,
    build_joint_dataset,
    build_transform,
    collate,
    make_batch_transform,
)
from jtln_hf.data import loader as jloader


# ------------------------------------------------------------------------------------------ workers
@pytest.mark.parametrize("cpus,world,expected", [(1, 1, 0), (2, 1, 1), (16, 1, 15), (16, 8, 1), (16, 16, 0),
                                                 (8, 3, 1), (3, 4, 0)])  # fmt: skip
def test_default_workers_leave_each_process_one_core(cpus, world, expected):
    assert jloader.default_num_workers(cpus, world) == expected


def test_default_workers_read_the_affinity_and_the_local_world_size(monkeypatch):
    monkeypatch.setattr(jloader.os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert jloader.available_cpus() == 12 and jloader.default_num_workers() == 11
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert jloader.default_num_workers() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "0")
    with pytest.raises(ValueError, match="LOCAL_WORLD_SIZE"):
        jloader.default_num_workers()


def test_loader_settings_prefetch_only_with_workers():
    assert jloader.loader_settings(0) == {"dataloader_num_workers": 0}
    assert jloader.loader_settings(3) == {"dataloader_num_workers": 3, "dataloader_prefetch_factor": 2}


# ------------------------------------------------------------------------------------- batch tensor
def _photos(n: int, mode: str, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (30 + 3 * k, 41 - k, 4), dtype=np.uint8), "RGBA").convert(mode)
            for k in range(n)]  # fmt: skip


CONFIGS = {
    "L": FASHION_MNIST_DATA_CONFIG,
    "RGB": {"input_size": (3, 24, 20), "interpolation": "bilinear", "mean": (0.48, 0.46, 0.41),
            "std": (0.23, 0.22, 0.23), "crop_pct": 0.875},
    "RGBA": {"input_size": (4, 16, 16), "interpolation": "bicubic", "mean": (0.5, 0.4, 0.3, 0.2),
             "std": (0.2, 0.25, 0.3, 0.35), "crop_pct": 1.0},
}  # fmt: skip


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mode", sorted(CONFIGS))
def test_batch_tensor_is_bitwise_the_per_image_transform(mode, training):
    """ToTensor + Normalize written into one tensor give the bits of timm's transform applied image by image."""
    config = CONFIGS[mode]
    transform = build_transform(config, training=training)
    in_chans = config["input_size"][0]
    batch = {"image": _photos(6, mode), "label": [0] * 6, "domain": [0, 0, 0, 1, 1, 1], "row": [4, 1, 7, 0, 2, 5]}
    fast = make_batch_transform(transform, in_chans, seed=3)(batch)["pixel_values"]
    # a plain function is not a Compose: every image goes through the whole transform, then torch.stack
    reference = make_batch_transform(lambda image: transform(image), in_chans, seed=3)(batch)["pixel_values"]
    assert len(fast) == 6 and fast[0].shape == (in_chans, *config["input_size"][1:])
    assert torch.equal(torch.stack(fast).view(torch.int32), torch.stack(reference).view(torch.int32))
    collated = collate([{"pixel_values": p} for p in fast])["pixel_values"]
    assert collated.data_ptr() == fast[0].data_ptr()  # the batch tensor itself: no copy
    assert torch.equal(collated, torch.stack(reference))


def test_the_batch_transform_pickles_as_its_call(small_split):
    """Pickled, the batch transform is ``make_batch_transform`` and its arguments: rebuilt, it gives the same bits,
    and datasets' fingerprint names the call (equal calls, one fingerprint; another seed, another), without dill
    reading the closure's bytecode.

    Exact on every CPU: both sides are the same PIL and torch calls (crop, flip, jitter, ToTensor, Normalize with
    the pickled copy's equal mean and std) on the same rows, shapes and seeds, one after the other in this
    process; nothing differs that could change a kernel's choice or a reduction's order."""
    transform = build_transform(FASHION_MNIST_DATA_CONFIG, training=True)
    joint = build_joint_dataset(small_split["source"], small_split["target"])
    batch = joint[[0, 5, 185, 3]]  # source and target rows
    made = make_batch_transform(transform, 1, seed=3)
    rebuilt = pickle.loads(pickle.dumps(made))
    again, first = torch.stack(rebuilt(batch)["pixel_values"]), torch.stack(made(batch)["pixel_values"])
    assert rebuilt is not made and torch.equal(again.view(torch.int32), first.view(torch.int32))
    same = joint.with_transform(make_batch_transform(transform, 1, seed=3))._fingerprint
    assert joint.with_transform(made)._fingerprint == same != joint._fingerprint
    assert joint.with_transform(make_batch_transform(transform, 1, seed=4))._fingerprint != same


def test_collate_stacks_rows_that_are_not_one_tensor_in_order():
    rows = list(torch.arange(24.0).view(4, 2, 3))
    for order in ([1, 0, 2, 3], [0, 1, 2]):  # reordered, or not every row of the tensor
        picked = [{"pixel_values": rows[i], "labels": i} for i in order]
        batch = collate(picked)
        assert torch.equal(batch["pixel_values"], torch.stack([rows[i] for i in order]))  # exact: copies
        assert batch["pixel_values"].data_ptr() != rows[0].data_ptr() and batch["labels"].tolist() == order


# ------------------------------------------------------------------------------------------ workers
def test_two_workers_give_the_batches_of_zero_workers(small_split):
    """Augmentation is seeded by the batch alone: which process loads a batch changes none of its bits."""
    transform = make_batch_transform(build_transform(FASHION_MNIST_DATA_CONFIG, training=True), 1, seed=5)
    joint = build_joint_dataset(small_split["source"], small_split["target"]).with_transform(transform)

    def batches(workers: int) -> list[dict]:  # two epochs (persistent workers serve the second)
        sampler = PairedBatchSampler(joint["domain"], batch_size=16, seed=1)
        extra = {"persistent_workers": True, "prefetch_factor": 2} if workers else {}
        loader = DataLoader(joint, batch_sampler=sampler, collate_fn=collate, num_workers=workers, **extra)
        epochs = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            epochs += list(loader)
        return epochs

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 2 * 23  # 180 source rows, 8 per batch
    # exact: a worker is a fork of this process running the same element-wise transform on the same rows
    for a, b in zip(serial, parallel):
        assert a.keys() == b.keys()
        assert torch.equal(a["pixel_values"].view(torch.int32), b["pixel_values"].view(torch.int32))
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["domain"], b["domain"])
