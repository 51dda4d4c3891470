"""A streamed source in training: the trainer's own loader, exact resume, and the recipe end to end.

Data the tests write: parquet shards (and webdataset ``.tar`` shards) of 28-px images with three
classes, a 2-class target set, and scikit-learn's digits as an ImageFolder target for the recipe.
Resume is checked bit for bit against an uninterrupted run (one intra-op thread: the same float
reduction order), as tests/test_resume.py does for the map-style path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from jtln_hf import JointImageClassifier
from jtln_hf.data import FASHION_MNIST_DATA_CONFIG, build_transform, make_batch_transform
from jtln_hf.data.stream import PairedStream
from jtln_hf.data.stream_loader import STREAM_STATE_FILE
from jtln_hf.data.stream_source import open_streaming_source
from jtln_hf.utils.io import latest_complete_checkpoint

from conftest import make_model, make_trainer
from test_recipe_cli import _fails
from test_resume import _step_logs, _StopAt, _wait_for_checkpoint
from test_stream import NAMES, _write_shards, target, write_tar_shards  # noqa: F401  (target: a fixture)
# the recipe's main() in this process: its command line is started as a command by the killed-run test below
from test_train_jtln import run_recipe_here

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "train_jtln.py"
pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # conftest: one torch thread
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def shards2(tmp_path_factory) -> str:
    return _write_shards(tmp_path_factory.mktemp("shards2"), 2)


def _paired(pattern: str, target, log: Path | None = None) -> PairedStream:
    """A stream of 4 source + 4 target rows; ``log`` gets a line per batch built (in any worker process)."""
    augment = make_batch_transform(build_transform(FASHION_MNIST_DATA_CONFIG, training=True), 1, seed=3)

    def transform(batch):
        if log is not None:
            with log.open("a") as f:
                f.write("batch\n")
        return augment(batch)

    return PairedStream(open_streaming_source(pattern), target, n_source=4, n_target=4, transform=transform,
                        seed=5, buffer_size=7)  # fmt: skip


class _Compositions(TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.seen = trainer, []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append(self.trainer._train_composition)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_streamed_run_resumed_from_its_checkpoint_ends_bit_identical(tmp_path, shards2, target, workers):
    """24 source rows, 4 per batch: 6 batches an epoch, checkpoint at 7 (one batch into epoch 1), 12 steps.

    The resumed trainer (other initial weights, a fresh stream) must load the stream's position
    from the checkpoint, not skip batches, and end with the uninterrupted run's weights and losses.
    """
    args = dict(per_device_train_batch_size=8, max_steps=12, save_strategy="steps", save_steps=7, logging_steps=1,
                ot_loss_weight=0.5, dataloader_num_workers=workers)  # fmt: skip
    full = make_trainer(make_model(head_dropout=0.2), _paired(shards2, target), tmp_path / "full", **args)
    compositions = _Compositions(full)
    full.add_callback(compositions)
    full.train()
    assert compositions.seen == [(8, 4)] * 12  # the trainer cuts rows at the stream's own count

    killed = make_trainer(make_model(head_dropout=0.2), _paired(shards2, target), tmp_path / "killed", **args)
    killed.add_callback(_StopAt(7))
    killed.train()
    checkpoint = latest_complete_checkpoint(tmp_path / "killed")
    assert checkpoint.endswith("checkpoint-7")
    state = json.loads((Path(checkpoint) / STREAM_STATE_FILE.format(rank=0)).read_text())
    assert state  # the loader's and every worker's stream position
    built = tmp_path / "resumed-batches.log"
    resumed = make_trainer(make_model(seed=7, head_dropout=0.2), _paired(shards2, target, built), tmp_path / "killed",
                           **args)  # fmt: skip
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == 12
    # the 5 batches left, and at most the loader's prefetch beyond them: the 7 trained were not re-read
    assert 5 <= len(built.read_text().splitlines()) <= 5 + 2 * workers
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert _step_logs(tmp_path / "full" / "checkpoint-12" / "trainer_state.json", 7) == _step_logs(
        tmp_path / "killed" / "checkpoint-12" / "trainer_state.json", 7)


def test_a_map_style_resume_still_skips_batches(tmp_path, target):
    """The stream's resume hook leaves a map-style loader to Trainer's own skip."""
    trainer = make_trainer(make_model(), None, tmp_path)
    assert not trainer.streams_source
    loader = torch.utils.data.DataLoader(list(range(5)))
    assert list(trainer.get_resumed_dataloader(loader, 2)) == [torch.tensor([2]), torch.tensor([3]), torch.tensor([4])]


# ----------------------------------------------------------------------------------------- recipe
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from conftest import write_digits_folder

    root = tmp_path_factory.mktemp("digits")
    write_digits_folder(root / "digits")
    return root / "digits"


QUICK = ("--seeds", "0", "--per_device_train_batch_size", "8", "--max_eval_samples", "40", "--shots", "2",
         "--source_shuffle_buffer", "10")  # fmt: skip


def test_the_recipe_trains_joint_and_jtln_on_a_streamed_source(tmp_path, shards2, digits):
    """features-mmd (the two-dataset default) reads 3 images per class of the stream; the model reloads."""
    out = tmp_path / "run"
    proc = run_recipe_here("--source_dataset", shards2, "--source_streaming", "--target_dataset", str(digits),
                   "--methods", "joint", "jtln", "--max_steps", "3", "--cost_warmup_steps", "1",
                   "--cost_samples_per_class", "3", "--output_dir", str(out), *QUICK, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]) == {"joint", "jtln"} and results["cost"] == "features-mmd"
    assert results["source_classes"] == NAMES
    assert json.loads((out / "settings.json").read_text())["source_streaming"] is True
    model = JointImageClassifier.from_pretrained(out / "model")
    assert list(model.config.source_id2label.values()) == NAMES and model.config.num_labels == 10


def test_the_recipe_streams_webdataset_shards_with_label_names(tmp_path, digits):
    """webdataset .tar shards (``<key>.jpg`` + ``<key>.cls``): integer labels named by --source_label_names."""
    shards = write_tar_shards(tmp_path, 2, 9, "JPEG")
    out = tmp_path / "run"
    proc = run_recipe_here("--source_dataset", shards, "--source_streaming", "--source_image_column",
                   "jpg", "--source_label_column", "cls", "--source_label_names", *NAMES, "--target_dataset",
                   str(digits), "--mode", "consecutive", "--max_steps", "2", "--output_dir", str(out), *QUICK,
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["source_classes"] == NAMES


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--source_streaming",), "--source_streaming needs --max_steps N: a stream has no length"),
        (("--source_streaming", "--num_train_epochs", "1"), "--source_streaming needs --max_steps N"),
        (("--source_shuffle_buffer", "5", "--max_steps", "2"), "--source_shuffle_buffer applies to a streamed source"),
        (("--source_streaming", "--source_shuffle_buffer", "0", "--max_steps", "2"), "--source_shuffle_buffer must be >= 1"),
    ],
)
def test_streaming_flags_fail_in_one_line(tmp_path, shards2, digits, flags, message, capsys):
    # the recipe's main() in this process, as tests/test_recipe_cli.py runs its fail-fast cases
    error = _fails(capsys, tmp_path, "--source_dataset", shards2, "--target_dataset", str(digits), *flags)
    assert message in error


def test_a_known_dataset_is_not_streamed(tmp_path, digits, capsys):
    error = _fails(capsys, tmp_path, "--source_dataset", "fashion-mnist", "--source_streaming", "--target_dataset",
                   str(digits), "--max_steps", "2")  # fmt: skip
    assert "drop --source_streaming" in error


SAVE_STEPS, MAX_STEPS = 6, 16


def test_a_killed_streamed_recipe_run_resumes_to_the_same_weights(tmp_path, shards2, digits):
    """As tests/test_resume.py for the map-style path: SIGKILL after checkpoint-6, resume, compare bit for bit."""
    command = [sys.executable, str(RECIPE), "--source_dataset", shards2, "--source_streaming", "--target_dataset",
               str(digits), "--mode", "jtln", "--cost", "constant", "--max_steps", str(MAX_STEPS), "--save_strategy",
               "steps", "--save_steps", str(SAVE_STEPS), "--logging_steps", "1", "--head_dropout", "0.2", *QUICK]  # fmt: skip

    def start(out: Path, *extra: str) -> subprocess.Popen:
        log = open(tmp_path / f"{out.name}.log", "w")
        return subprocess.Popen([*command, "--output_dir", str(out), *extra], cwd=tmp_path, env=ENV, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip

    def finish(proc: subprocess.Popen, out: Path) -> None:
        assert proc.wait(timeout=600) == 0, (tmp_path / f"{out.name}.log").read_text()[-4000:]

    run_a, run_b = tmp_path / "a", tmp_path / "b"
    proc_a, proc_b = start(run_a), start(run_b)
    stage_b = run_b / "runs" / "jtln-seed0"
    _wait_for_checkpoint(proc_b, stage_b, SAVE_STEPS)
    os.kill(proc_b.pid, signal.SIGKILL)
    assert proc_b.wait(timeout=60) == -signal.SIGKILL
    assert latest_complete_checkpoint(stage_b) == str(stage_b / f"checkpoint-{SAVE_STEPS}")
    assert (stage_b / f"checkpoint-{SAVE_STEPS}" / STREAM_STATE_FILE.format(rank=0)).is_file()
    finish(start(run_b, "--resume_from_checkpoint", "true"), run_b)
    finish(proc_a, run_a)
    final_a = load_file(run_a / "model" / "model.safetensors")
    final_b = load_file(run_b / "model" / "model.safetensors")
    assert final_a.keys() == final_b.keys() and len(final_a) > 10
    assert [name for name in final_a if not torch.equal(final_a[name], final_b[name])] == []
    final_state = f"runs/jtln-seed0/checkpoint-{MAX_STEPS}/trainer_state.json"
    steps_b = _step_logs(run_b / final_state, SAVE_STEPS)
    assert sorted(steps_b) == list(range(SAVE_STEPS + 1, MAX_STEPS + 1))
    assert _step_logs(run_a / final_state, SAVE_STEPS) == steps_b
