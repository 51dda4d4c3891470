"""Images that cannot be decoded in training: skipped, replaced by a row of their domain, counted, limited, listed.

Small data the tests write: 28-px PNGs, some truncated after a valid header (they pass the header
check and fail only when decoded, as in a source too large to decode before training). The
expected counts are derived from the sampler's batches, not tuned.
"""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from jtln_hf import data as jdata
from jtln_hf.training.bad_images import STATE_KEY
from jtln_hf.data import SOURCE, TARGET
from jtln_hf.data import checks as jchecks
from jtln_hf.data.bad_images import BAD_IMAGES_FILE, BadImagesError, StandIns
from jtln_hf.data.sampler import PairedBatchSampler
from jtln_hf.data.stream import PairedStream
from jtln_hf.data.stream_source import open_streaming_source, row_identity
from jtln_hf.training.trainer import JTLNTrainer

from conftest import make_model, make_trainer
from test_resume import _StopAt

BAD_SOURCE, BAD_TARGET = (5, 17), (3,)
BATCH, STEPS = 8, 6  # 4 source + 4 target rows per batch; 24 source rows: one epoch in 6 steps


def _png(seed: int, truncated: bool = False) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "L").save(out, format="PNG")
    data = out.getvalue()
    return data[: len(data) // 2] if truncated else data  # the header parses, the pixels do not


def _images(n: int, bad: tuple[int, ...], offset: int) -> datasets.Dataset:
    images = [{"bytes": _png(offset + i, i in bad), "path": f"img{offset + i}.png"} for i in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)]}, features=features)


@pytest.fixture(autouse=True)
def header_check_only(monkeypatch):
    """These sets are small: check headers only, as for a source over FULL_DECODE_MAX_ROWS rows."""
    monkeypatch.setattr(jchecks, "FULL_DECODE_MAX_ROWS", 4)


@pytest.fixture
def joint() -> datasets.Dataset:
    return jdata.build_joint_dataset(_images(24, BAD_SOURCE, 0), _images(12, BAD_TARGET, 100))


def _train_set(joint: datasets.Dataset, seed: int = 0) -> datasets.Dataset:
    transform = jdata.build_transform(jdata.FASHION_MNIST_DATA_CONFIG, training=True)
    return joint.with_transform(jdata.make_batch_transform(transform, 1, seed=seed, replace=StandIns(joint, seed)))


class _Recording(JTLNTrainer):
    """Keeps every training batch as the model gets it (after the skipped rows' records are taken off)."""

    def training_step(self, model, inputs, *args, **kwargs):
        self.seen = getattr(self, "seen", []) + [{k: v.clone() for k, v in inputs.items() if k != "bad_images"}]
        self.records = getattr(self, "records", []) + [list(inputs.get("bad_images", []))]
        return super().training_step(model, inputs, *args, **kwargs)


def _expected_skips(joint: datasets.Dataset) -> list[list[tuple[str, int]]]:
    """The bad rows each of the sampler's first STEPS batches holds."""
    sampler = PairedBatchSampler(joint["domain"], BATCH, 0.5, seed=0)
    rows, domains = joint["row"], joint["domain"]
    out = []
    for batch in list(sampler)[:STEPS]:
        out.append([])
        for i in batch:
            bad = BAD_SOURCE if domains[i] == SOURCE else BAD_TARGET
            if rows[i] in bad:
                out[-1].append(("source" if domains[i] == SOURCE else "target", rows[i]))
    return out


def _train(joint, tmp_path, workers: int = 0, **overrides) -> _Recording:
    trainer = make_trainer(make_model(), _train_set(joint), tmp_path, trainer_cls=_Recording, max_steps=STEPS,
                           per_device_train_batch_size=BATCH, dataloader_num_workers=workers,
                           **{"max_bad_images": 10, **overrides})  # fmt: skip
    trainer.train()
    return trainer


# ------------------------------------------------------------------------------------ the transform
def test_an_unreadable_row_is_replaced_by_the_next_readable_row_of_its_domain(joint, caplog):
    transform = jdata.make_batch_transform(jdata.build_transform(jdata.FASHION_MNIST_DATA_CONFIG, False), 1,
                                           replace=StandIns(joint, 0))  # fmt: skip
    batch = joint[[5, 0, 24 + 3]]  # source row 5 (bad), source row 0, target row 3 (bad)
    with caplog.at_level("WARNING"):
        out = transform(batch)
    twice = transform(joint[[5, 0, 24 + 3]])
    assert [d for d in out["domain"]] == [SOURCE, SOURCE, TARGET]
    assert out["row"][0] not in BAD_SOURCE and out["row"][2] not in BAD_TARGET  # readable stand-ins
    # exact: the same function on the same rows in one process (PIL's integer resampling, then element-wise
    # ToTensor/Normalize, no reduction), with the augmentation generators seeded by the batch
    assert out["row"] == twice["row"] and all(torch.equal(a, b) for a, b in zip(out["pixel_values"], twice["pixel_values"]))
    assert [[r["row"] for r in rs] for rs in out["bad_images"]] == [[5], [], [3]]
    record = out["bad_images"][0][0]
    assert record["domain"] == "source" and record["path"] == "img5.png" and "Error" in record["error"]
    assert "skipped source row 5 (path 'img5.png')" in caplog.text and "skipped target row 3" in caplog.text
    # the stand-in is the next readable row of a seeded permutation of the domain: another seed, another order
    order = StandIns(joint, 0)(SOURCE, 5)
    assert out["row"][0] == next(r["row"] for r in order if r["row"] not in BAD_SOURCE)
    assert [r["row"] for r in StandIns(joint, 0)(SOURCE, 5)] != [r["row"] for r in StandIns(joint, 1)(SOURCE, 5)]


def test_without_stand_ins_an_unreadable_row_raises_naming_it(joint):
    transform = jdata.make_batch_transform(jdata.build_transform(jdata.FASHION_MNIST_DATA_CONFIG, False), 1)
    with pytest.raises(ValueError, match=r"cannot decode the image of source row 5 \(path 'img5.png'\)"):
        transform(joint[[5]])


# -------------------------------------------------------------------------------------- training
def test_training_skips_replaces_counts_and_lists_the_bad_rows(joint, tmp_path):
    trainer = _train(joint, tmp_path / "a")
    expected = [skip for batch in _expected_skips(joint) for skip in batch]
    assert len(expected) >= 3 and {r for _, r in expected} >= {5, 17, 3}
    for batch in trainer.seen:  # every batch keeps its ratio
        assert batch["domain"].tolist() == [SOURCE] * 4 + [TARGET] * 4
    skipped = [(r["domain"], r["row"]) for r in trainer.bad_images]
    assert sorted(skipped) == sorted(expected)
    state = trainer.state.stateful_callbacks[STATE_KEY]
    assert state["count"] == len(expected)
    listing = json.loads((tmp_path / "a" / BAD_IMAGES_FILE).read_text())
    assert [(r["domain"], r["row"]) for r in listing] == skipped and all(r["path"] and r["error"] for r in listing)


def test_two_workers_give_the_batches_of_none(joint, tmp_path):
    none, two = _train(joint, tmp_path / "w0"), _train(joint, tmp_path / "w2", workers=2)
    assert len(none.seen) == len(two.seen) == STEPS
    # exact: a worker is a fork of this process running the same code on the same rows (PIL's integer
    # resampling, element-wise ToTensor/Normalize: each element is one correctly rounded IEEE operation, no sum)
    for a, b in zip(none.seen, two.seen):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert none.bad_images == two.bad_images


def test_past_max_bad_images_training_stops_with_one_line_and_the_listing(joint, tmp_path):
    with pytest.raises(BadImagesError) as info:
        _train(joint, tmp_path / "a", max_bad_images=1)
    message = str(info.value)
    assert "\n" not in message and "more than --max_bad_images 1 allows" in message and BAD_IMAGES_FILE in message
    listing = json.loads((tmp_path / "a" / BAD_IMAGES_FILE).read_text())
    counts = np.cumsum([len(batch) for batch in _expected_skips(joint)])
    assert len(listing) == counts[np.argmax(counts > 1)]  # stopped at the batch that went past one
    # the default, a fraction (0.001 of 6 x 8 rows: none allowed), stops at the first
    with pytest.raises(BadImagesError, match=r"\(0 of the 48 rows this stage reads\)"):
        _train(joint, tmp_path / "b", max_bad_images=0.001)


def test_a_clean_run_writes_no_listing_and_counts_zero(tmp_path):
    clean = jdata.build_joint_dataset(_images(24, (), 0), _images(12, (), 100))
    trainer = _train(clean, tmp_path / "a")
    assert trainer.bad_images == [] and all(r == [] for r in trainer.records)
    assert not (tmp_path / "a" / BAD_IMAGES_FILE).exists()


def test_a_resumed_run_continues_the_count(joint, tmp_path):
    full = _train(joint, tmp_path / "full")
    args = dict(save_strategy="steps", save_steps=3)
    stopped = make_trainer(make_model(), _train_set(joint), tmp_path / "r", trainer_cls=_Recording, max_steps=STEPS,
                           per_device_train_batch_size=BATCH, max_bad_images=10, **args)  # fmt: skip
    stopped.add_callback(_StopAt(3))
    stopped.train()
    saved = json.loads((tmp_path / "r" / "checkpoint-3" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"][STATE_KEY]["count"] == len(stopped.bad_images) > 0
    resumed = make_trainer(make_model(), _train_set(joint), tmp_path / "r", trainer_cls=_Recording, max_steps=STEPS,
                           per_device_train_batch_size=BATCH, max_bad_images=10, **args)  # fmt: skip
    resumed.train(resume_from_checkpoint=str(tmp_path / "r" / "checkpoint-3"))
    assert resumed.bad_images == full.bad_images


# ---------------------------------------------------------------------------------------- stream
def test_a_streamed_source_skips_a_bad_row_for_the_next_one(tmp_path):
    rows = 16
    images = [{"bytes": _png(200 + i, i == 6), "path": None} for i in range(rows)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(rows)]}, features=features)
    ds.to_parquet(str(tmp_path / "part-0.parquet"))
    bad = row_identity(images[6])
    transform = jdata.make_batch_transform(jdata.build_transform(jdata.FASHION_MNIST_DATA_CONFIG, True), 1, seed=3)

    def stream():
        return PairedStream(open_streaming_source(str(tmp_path / "*.parquet")), _images(12, (), 100), n_source=4,
                            n_target=2, transform=transform, seed=7, buffer_size=5, return_rows=True,
                            skip_bad_images=True)  # fmt: skip

    one = stream()
    batches = [b for _, b in zip(range(6), iter(one))]
    for b in batches:
        assert b["domain"].tolist() == [SOURCE] * 4 + [TARGET] * 2
    source_rows = [int(r) for b in batches[:3] for r, d in zip(b["row"], b["domain"]) if d == SOURCE]
    assert bad not in source_rows and len(set(source_rows)) == 12  # the first epoch's 15 readable rows, less 3 unread
    records = [r for b in batches for r in b["bad_images"]]
    assert records and all(r["domain"] == "source" and r["row"] == bad for r in records)
    # the stream state stays exact: resumed after batch 2, it yields batches 3.. of the uninterrupted stream
    two = stream()
    it = iter(two)
    for _ in range(2):
        next(it)
    state = two.state_dict()
    resumed = stream()
    resumed.load_state_dict(state)
    for a, b in zip(batches[2:], iter(resumed)):  # exact: the same rows through the same element-wise transform
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["row"], b["row"])
        assert a["bad_images"] == b["bad_images"]
