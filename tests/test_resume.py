"""Exact resume: a run SIGKILLed after a checkpoint and resumed ends bit-identical to an uninterrupted one.

The end-to-end test runs the recipe (``--mode jtln``, real Fashion-MNIST, random-crop + flip +
colour-jitter augmentation, head dropout so that the training steps draw random numbers too)
three times:

* A, uninterrupted;
* B, the same command, killed with a real ``SIGKILL`` as soon as its ``checkpoint-8`` is
  complete (Trainer writes ``trainer_state.json`` last), then
* B', the same command plus ``--resume_from_checkpoint true``.

B' must end with A's weights (every tensor of ``model/model.safetensors``, bit for bit), A's
metrics in ``results.json`` and A's per-step training losses after step 8. That needs the data
order (:class:`~jtln_hf.data.PairedBatchSampler`: a function of seed and epoch, batches skipped by
Trainer), the re-sampled target rows, the augmentation (a function of the batch alone, see
:func:`~jtln_hf.data.make_batch_transform`) and the dropout RNG (restored by Trainer from
``rng_state.pth``) to line up.

A second, in-process test resumes in the middle of a *later epoch* (set_epoch + skipped batches),
from a process whose global RNG state is unrelated to the first run's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from jtln_hf import data as jdata
from jtln_hf.utils.io import latest_complete_checkpoint

from conftest import make_model, make_trainer

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "train_jtln.py"
# The runs compared bit for bit must reduce floats in the same order: one intra-op thread, set here
# for the subprocesses (not inherited: the caller may have exported OMP_NUM_THREADS=4, which
# conftest only setdefaults) and by the fixture below in this process.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SAVE_STEPS, MAX_STEPS = 8, 20  # checkpoints 8, 16, 20: 8 steps (~1 s) to kill the run before it saves again
COMMAND = [
    sys.executable, str(RECIPE), "--mode", "jtln", "--seeds", "0", "--shots", "3", "--max_eval_samples", "200",
    "--per_device_train_batch_size", "32", "--max_steps", str(MAX_STEPS), "--save_strategy", "steps",
    "--save_steps", str(SAVE_STEPS), "--logging_steps", "1", "--head_dropout", "0.2",
]
STEP_KEYS = ("loss", "ce_target", "ce_source", "ot", "grad_norm", "learning_rate")


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # conftest: one torch thread


def _start(output_dir: Path, *extra: str) -> subprocess.Popen:
    log = open(output_dir.parent / f"{output_dir.name}.log", "w")
    return subprocess.Popen([*COMMAND, "--output_dir", str(output_dir), *extra], cwd=output_dir.parent, env=ENV,
                            stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, output_dir: Path) -> None:
    assert proc.wait(timeout=600) == 0, (output_dir.parent / f"{output_dir.name}.log").read_text()[-4000:]


def _wait_for_checkpoint(proc: subprocess.Popen, stage: Path, step: int, timeout: float = 300) -> None:
    """Poll until ``stage/checkpoint-<step>/trainer_state.json`` (written last) parses."""
    state = stage / f"checkpoint-{step}" / "trainer_state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before its checkpoint could be awaited"
        try:
            if json.loads(state.read_text())["global_step"] == step:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"no complete checkpoint-{step} after {timeout} s")


def _step_logs(trainer_state: Path, after: int) -> dict[int, dict[str, float]]:
    history = json.loads(trainer_state.read_text())["log_history"]
    return {e["step"]: {k: e[k] for k in STEP_KEYS} for e in history if "loss" in e and e["step"] > after}


def test_sigkill_and_resume_reproduce_the_uninterrupted_run(tmp_path):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    proc_a = _start(run_a)  # the reference runs alongside (2 cores); it shares nothing with B
    proc_b = _start(run_b)
    stage_b = run_b / "runs" / "jtln-seed0"
    _wait_for_checkpoint(proc_b, stage_b, SAVE_STEPS)
    os.kill(proc_b.pid, signal.SIGKILL)
    assert proc_b.wait(timeout=60) == -signal.SIGKILL
    # killed mid-run: no later checkpoint, no results, no model
    assert latest_complete_checkpoint(stage_b) == str(stage_b / f"checkpoint-{SAVE_STEPS}")
    assert sorted(p.name for p in stage_b.iterdir() if p.name.startswith("checkpoint-")) == [f"checkpoint-{SAVE_STEPS}"]
    assert not (run_b / "results.json").exists() and not (run_b / "model").exists()
    checkpoint = stage_b / f"checkpoint-{SAVE_STEPS}"
    assert (checkpoint / "model.safetensors").is_file()  # weights in safetensors only
    assert not list(checkpoint.glob("pytorch_model*.bin"))
    weights_mtime = (checkpoint / "model.safetensors").stat().st_mtime_ns

    _finish(_start(run_b, "--resume_from_checkpoint", "true"), run_b)
    _finish(proc_a, run_a)

    # it resumed (a fresh start would have rewritten checkpoint-8) ...
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == weights_mtime
    # ... and ended exactly where the uninterrupted run did
    final_a = load_file(run_a / "model" / "model.safetensors")
    final_b = load_file(run_b / "model" / "model.safetensors")
    assert final_a.keys() == final_b.keys() and len(final_a) > 10
    different = [name for name in final_a if not torch.equal(final_a[name], final_b[name])]
    assert different == []
    results_a, results_b = (json.loads((run / "results.json").read_text()) for run in (run_a, run_b))
    metrics = ("accuracy", "loss", "mean_per_class_accuracy")
    assert [{k: r[k] for k in metrics} for r in results_a["runs"]] == [{k: r[k] for k in metrics} for r in results_b["runs"]]
    for key in ("accuracy", "mean_per_class_accuracy"):
        assert results_a["summary"]["jtln"][key] == results_b["summary"]["jtln"][key]
    # every logged step after the checkpoint: the same loss parts, gradient norm and learning rate
    final_state = f"runs/jtln-seed0/checkpoint-{MAX_STEPS}/trainer_state.json"
    steps_a, steps_b = _step_logs(run_a / final_state, SAVE_STEPS), _step_logs(run_b / final_state, SAVE_STEPS)
    assert sorted(steps_b) == list(range(SAVE_STEPS + 1, MAX_STEPS + 1))
    assert steps_a == steps_b


class _StopAt(TrainerCallback):
    """Ends training right after step ``step`` (and its checkpoint): an in-process stand-in for a kill."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_resume_in_a_later_epoch_in_process(tmp_path, fashion_mnist):
    """3 steps per epoch, checkpoint at step 4 (epoch 1, one batch in), 8 steps: the resumed run must
    re-seed the sampler for epoch 1, skip its first batch, re-sample the same target rows and draw
    the same augmentation and dropout, although this process's global RNGs have moved on since."""
    train, _ = fashion_mnist
    source, target = jdata.split_by_classes(train, ("T-shirt/top", "Trouser", "Pullover"), ("Sandal", "Bag"))
    joint = jdata.build_joint_dataset(jdata.sample_shots(source, 4, seed=1), jdata.sample_shots(target, 5, seed=1))
    transform = jdata.build_transform(jdata.FASHION_MNIST_DATA_CONFIG, training=True, scale=(0.5, 1.0), hflip=0.5)
    train_ds = joint.with_transform(jdata.make_batch_transform(transform, in_chans=1))
    args = dict(per_device_train_batch_size=8, max_steps=8, save_strategy="steps", save_steps=4, logging_steps=1,
                ot_loss_weight=0.5)

    full = make_trainer(make_model(head_dropout=0.2), train_ds, tmp_path / "full", **args)
    assert len(full.get_train_dataloader()) == 3  # so step 4 is one batch into epoch 1
    full.train()
    torch.rand(1000), random.random(), np.random.rand()  # move the global RNGs on

    killed = make_trainer(make_model(head_dropout=0.2), train_ds, tmp_path / "killed", **args)
    killed.add_callback(_StopAt(4))
    killed.train()
    assert killed.state.global_step == 4 and latest_complete_checkpoint(tmp_path / "killed").endswith("checkpoint-4")
    resumed = make_trainer(make_model(seed=7, head_dropout=0.2), train_ds, tmp_path / "killed", **args)
    resumed.train(resume_from_checkpoint=latest_complete_checkpoint(tmp_path / "killed"))
    assert resumed.state.global_step == 8
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert _step_logs(tmp_path / "full" / "checkpoint-8" / "trainer_state.json", 4) == _step_logs(
        tmp_path / "killed" / "checkpoint-8" / "trainer_state.json", 4)
