"""Two CPU processes (torchrun, gloo) against one: per-process batch ratio, same loss curve, gathered eval.

And a failed check on one process (NaN logits) raises on both, rather than leaving the other
blocked in an all-reduce until the timeout.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run on two processes and one on one process, each refreshing C at steps 2 and 4 of its 6 (every check of
    this module reads these two runs: one start-up of torch per process, not one per check)."""
    root = tmp_path_factory.mktemp("ddp")
    torchrun = Path(sys.executable).with_name("torchrun")
    _run([str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
          str(WORKER), "--out", str(root / "two"), "--batch", "8", "--refresh_every", "2"])  # fmt: skip
    _run([sys.executable, str(WORKER), "--out", str(root / "one"), "--batch", "16", "--refresh_every", "2"])
    return root / "two", root / "one"


def test_every_process_batch_holds_the_ratio(runs):
    two, one = runs
    for rank in (0, 1):
        info = json.loads((two / f"rank{rank}.json").read_text())
        assert info["world_size"] == 2
        assert len(info["compositions"]) == 6
        assert all(c == [4, 4] for c in info["compositions"]), info["compositions"]
    single = json.loads((one / "rank0.json").read_text())
    assert single["world_size"] == 1 and all(c == [8, 8] for c in single["compositions"])


def test_two_processes_match_one_process_with_twice_the_batch(runs):
    two, one = runs
    a = json.loads((two / "history.json").read_text())["losses"]
    b = json.loads((one / "history.json").read_text())["losses"]
    assert len(a) == len(b) == 6
    # Same rows per step (PairedBatchSampler draws global batches), no batch statistics in the
    # backbone, gradients all-reduced, C refreshed at the same steps from the same rows' outputs: only
    # float summation order differs. Over 6 Adam steps that stays far below 1e-4 relative (measured
    # ~1e-7); a wrong ratio, wrong rows or a doubled loss would differ by percents.
    assert json.loads((one / "rank0.json").read_text())["refreshes"] == [[2, 1], [4, 2]]
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=1e-4)
    assert a[0] != pytest.approx(a[-1], rel=1e-3)  # it trained


def test_evaluation_gathers_every_row_once(runs):
    two, one = runs
    a = json.loads((two / "history.json").read_text())
    b = json.loads((one / "history.json").read_text())
    assert a["num_predictions"] == b["num_predictions"] == 101  # odd count: no padding duplicates kept
    # each run's metric is the accuracy of the 101 predictions it gathered: exact, a count over the same rows and one
    # correctly rounded division on both sides of one process (the two runs' models differ by rounding: compared
    # with each other, their accuracies need not be equal)
    for run in (a, b):
        assert run["accuracy"] == run["correct"] / 101


# Float32 reductions on the path from pixels to outputs in test_vit (patch 4 on 28 px: 49 patches +
# 1 class token = 50 tokens, width 64, 2 heads of 32, MLP 192, depth 6, class-token pooling): the
# length of each sum a value goes through.
PATCH_EMBED = 1 * 4 * 4
# per block: LayerNorm (mean, variance), qkv, q.k, softmax sum, attn.v, proj, LayerNorm, fc1, fc2
BLOCK = 2 * 64 + 64 + 32 + 50 + 50 + 64 + 2 * 64 + 64 + 192
POOLER_REDUCTIONS = PATCH_EMBED + 6 * BLOCK + 2 * 64  # + the final LayerNorm; the class token is taken, not summed
LOGIT_REDUCTIONS = POOLER_REDUCTIONS + 64  # + the head's dot product over the 64 pooled features
U = 2.0**-24  # float32 unit roundoff


def test_predict_outputs_gives_every_process_every_row(runs):
    """JTLNTrainer.predict_outputs (cost features, the card's plan) is gathered: each process holds all
    101 rows, in order, each the model's own forward pass on that row alone (model.eval(), no grad).

    The tolerance is derived, not tuned: batched and one-row passes run the same operations on the
    same float32 values; only the blocking of each reduction (its summation order) may differ. A
    float32 sum of n terms is within n*u of its exact value, relative to the sum of the terms'
    magnitudes (u = 2**-24, Higham's gamma_n), and to first order the errors of successive
    reductions add. So each pass is within K*u*M of the exact output, and they are within
    2*K*u*M of each other, K the summed reduction lengths (POOLER_REDUCTIONS = 4,776,
    LOGIT_REDUCTIONS = 4,840) and M the magnitude: the largest |output| of the row, at least 1
    (LayerNorm keeps the features O(1)). That is ~6e-4 * M; a row out of place or from the wrong
    field differs by O(M).
    """
    two, _ = runs
    for rank in (0, 1):
        record = json.loads((two / f"rank{rank}.json").read_text())
        assert record["predicted_rows"] == 101 and record["pooler_shape"][0] == 101
        assert record["labels_in_order"]
        arrays = np.load(two / f"rank{rank}_outputs.npz")
        for field, reductions in (("logits", LOGIT_REDUCTIONS), ("pooler_output", POOLER_REDUCTIONS)):
            got, forward = arrays[field].astype(np.float64), arrays[f"forward_{field}"].astype(np.float64)
            assert got.shape == forward.shape and got.shape[0] == 101, field
            magnitude = np.maximum(1.0, np.abs(forward).max(axis=1, keepdims=True))  # per row
            bound = 2 * reductions * U * magnitude
            assert np.all(np.abs(got - forward) <= bound), (field, float((np.abs(got - forward) / bound).max()))


def test_a_cost_refresh_runs_on_every_process_and_gives_each_the_same_cost(runs):
    """CostRefresh's forward pass is gathered: both ranks read every labelled target row and set the same C.

    Equal bit for bit, not approximately: both hold the same gathered float32 outputs, in row order,
    and turn them into C with the same numpy operations.
    """
    two, _ = runs
    ranks = [json.loads((two / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["refreshes"] == ranks[1]["refreshes"] == [[2, 1], [4, 2]]  # steps 2 and 4 of 6
    assert ranks[0]["cost_matrix"] == ranks[1]["cost_matrix"]
    initial = [[0.0, 1.0], [0.4, 1.0], [1.0, 0.0]]
    assert ranks[0]["cost_matrix"] != initial  # the refresh replaced the worker's hand-written C


PG_TIMEOUT = 60  # process group timeout (s), far below the 30 min default: a hang ends in a gloo timeout


def test_a_failed_check_on_one_rank_raises_on_every_rank(tmp_path):
    """Rank 1's images turn NaN at step 2 (logging every 3 steps): both ranks raise the same error.

    Rank 1 used to raise alone in its loss, leaving rank 0 in the gradient all-reduce (NCCL: until
    the timeout; gloo: until rank 1 exits, then "Connection closed by peer"). Now both raise at the
    log of step 3, naming rank 1 (rank 0's own check fails at step 3, once the NaN gradients reached
    it: the first failure is the one reported). The processes are started without torchrun, whose
    agent would kill rank 0 when rank 1 exits and so hide a hang; each writes to its own file.
    """
    port = str(_free_port())
    cmd = [sys.executable, str(WORKER), "--out", str(tmp_path), "--batch", "8", "--steps", "6", "--logging_steps", "3",
           "--nan_rank", "1", "--nan_step", "2", "--ddp_timeout", str(PG_TIMEOUT)]  # fmt: skip
    procs, logs = [], [tmp_path / f"rank{rank}.log" for rank in (0, 1)]
    for rank, log in enumerate(logs):
        env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "RANK": str(rank), "LOCAL_RANK": str(rank)}  # fmt: skip
        with log.open("w") as out:
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
    try:
        codes = [proc.wait(timeout=PG_TIMEOUT + 90) for proc in procs]  # start-up, then at most one timeout
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    expected = r"ValueError: rank 1 of 2 failed its check: source_probs contains NaN.*max_grad_norm.*Every rank stops"
    for rank, (code, log) in enumerate(zip(codes, logs)):
        text = log.read_text()
        assert code != 0 and re.search(expected, text), f"rank {rank} (exit {code}):\n{text[-4000:]}"
