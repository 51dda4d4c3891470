"""Two "nodes" on one machine: ``torchrun --nnodes 2 --nproc_per_node 1`` twice (node_rank 0 and 1, gloo, CPU).

The realistic shape, made small: timm ``resnet18`` at 224 px from a local ``--backbone_checkpoint``
(random weights, ``pretrained=False``, saved by the test), a streamed source of 2 parquet shards of
JPEG images (one shard per process), an ImageFolder target, ``--methods joint jtln`` for 2 steps
each. The ranks must read disjoint source rows, every batch must hold exactly 2 source + 2 target
rows, and the saved model must load and predict on a PIL image through the pipeline.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
from PIL import Image
from safetensors.torch import save_file

from jtln_hf import JointImageClassifier
from jtln_hf.data.stream_source import row_identity

WORKER = Path(__file__).with_name("stream_node_worker.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SOURCE_NAMES = ["ant", "bee", "cat"]
TARGET_NAMES = ["left", "right"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="JPEG")
    return out.getvalue()


def _write_data(root: Path) -> tuple[str, Path, Path, set[int]]:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=SOURCE_NAMES)})
    identities = set()
    for shard in range(2):
        rows = range(shard * 9, shard * 9 + 9)
        images = [{"bytes": _jpeg(i), "path": None} for i in rows]
        identities |= {row_identity(image) for image in images}
        datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in rows]}, features=features).to_parquet(
            str(root / f"source-{shard}.parquet"))  # fmt: skip
    for split, count in (("train", 3), ("test", 3)):
        for c, name in enumerate(TARGET_NAMES):
            folder = root / "target" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i}.jpg").write_bytes(_jpeg(1000 + 100 * c + 10 * i + (split == "test")))
    checkpoint = root / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(checkpoint))
    return str(root / "source-*.parquet"), root / "target", checkpoint, identities


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodes")
    source, target, checkpoint, identities = _write_data(root)
    out, logs = root / "run", root / "logs"
    logs.mkdir()
    torchrun, port = Path(sys.executable).with_name("torchrun"), str(_free_port())
    flags = ["--source_dataset", source, "--source_streaming", "--target_dataset", str(target), "--backbone", "resnet18",
             "--backbone_checkpoint", str(checkpoint), "--methods", "joint", "jtln", "--max_steps", "2", "--seeds", "0",
             "--shots", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
             "--cost_samples_per_class", "2", "--source_shuffle_buffer", "4", "--use_cpu", "true",
             "--ddp_backend", "gloo", "--output_dir", str(out)]  # fmt: skip
    procs = [
        subprocess.Popen([str(torchrun), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
                          "--master_addr", "127.0.0.1", "--master_port", port, str(WORKER), str(logs), *flags],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for node in (0, 1)
    ]
    try:
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for node, (proc, text) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"node {node}:\n{text[-4000:]}"
    batches = {rank: [json.loads(line) for line in (logs / f"rank{rank}.jsonl").read_text().splitlines()]
               for rank in (0, 1)}  # fmt: skip
    return out, batches, identities


def test_the_two_nodes_read_disjoint_source_rows(two_nodes):
    _, batches, identities = two_nodes
    rows = {rank: {r for batch in batches[rank] for r in batch["source"]} for rank in (0, 1)}
    assert rows[0] and rows[1] and not rows[0] & rows[1]
    assert rows[0] | rows[1] <= identities


def test_every_batch_of_every_node_holds_the_exact_ratio(two_nodes):
    _, batches, _ = two_nodes
    for rank in (0, 1):
        assert len(batches[rank]) >= 4  # 2 steps of joint and 2 of jtln (plus the loader's prefetch)
        for batch in batches[rank]:
            assert (batch["rank"], batch["world_size"]) == (rank, 2)
            assert (len(batch["source"]), batch["target"]) == (2, 2)


def test_the_saved_224px_model_loads_and_predicts(two_nodes):
    from transformers import pipeline

    out, _, _ = two_nodes
    model = JointImageClassifier.from_pretrained(out / "model")
    assert model.config.data_config["input_size"] == [3, 224, 224]
    assert list(model.config.source_id2label.values()) == SOURCE_NAMES
    assert json.loads((out / "results.json").read_text())["summary"].keys() == {"joint", "jtln"}
    predictions = pipeline("image-classification", model=str(out / "model"), trust_remote_code=True)(
        Image.new("RGB", (64, 48), "white"))  # fmt: skip
    assert {p["label"] for p in predictions} == set(TARGET_NAMES)
