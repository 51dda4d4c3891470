"""The recipe's output folder: no silent overwrite, and a resume that resumes (issue 22, items 1 and 2).

A non-empty ``--output_dir`` holding another run is refused before anything is written or trained
(one line, exit status 2) unless ``--overwrite_output_dir`` replaces that run or
``--resume_from_checkpoint`` continues it with the same settings; resuming from a folder without a
complete checkpoint is the same kind of error, not a silent fresh start.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from jtln_hf.utils.io import RUN_SETTINGS

REPO = Path(__file__).resolve().parents[1]
TINY = ["--mode", "finetune", "--seeds", "0", "--shots", "1", "--max_steps", "1", "--max_eval_samples", "10",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "10"]  # fmt: skip
CHECKPOINTS = ["--save_strategy", "steps", "--save_steps", "1"]


def _load_recipe():
    spec = importlib.util.spec_from_file_location("train_jtln_output_dir", REPO / "recipes" / "train_jtln.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe()


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _run(out: Path, *argv: str) -> int:
    return recipe.main([*TINY, *argv, "--output_dir", str(out)])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run without checkpoints (the recipe's default --save_strategy no)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _run(out) == 0
    return out


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A finished tiny run that saved checkpoints."""
    out = tmp_path_factory.mktemp("checkpointed") / "run"
    assert _run(out, *CHECKPOINTS) == 0
    return out


@pytest.fixture
def no_training(monkeypatch):
    """Any training stage makes the test fail: the refusals below come before the first step."""
    from jtln_hf import methods

    monkeypatch.setattr(methods.stages, "_train", lambda *a, **k: pytest.fail("a training stage ran"))


def _refused(capsys, out: Path, *argv: str) -> str:
    """Exit status 2, one ``error:`` line, and the folder exactly as it was; returns the line."""
    before = _snapshot(out) if out.exists() else None
    status = _run(out, *argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert (_snapshot(out) if out.exists() else None) == before  # nothing written, nothing removed
    return lines[0]


def test_a_run_records_its_settings(finished):
    settings = json.loads((finished / RUN_SETTINGS).read_text())
    assert settings["shots"] == 1 and settings["max_steps"] == 1 and settings["mode"] == "finetune"
    assert "output_dir" not in settings and "resume_from_checkpoint" not in settings  # where, not what


def test_another_run_into_a_used_folder_is_refused(finished, capsys, no_training):
    line = _refused(capsys, finished, "--learning_rate", "0.01")
    assert line.startswith(f"error: --output_dir {finished} is not empty (") and "results.json" in line
    assert "--overwrite_output_dir" in line and "--resume_from_checkpoint true" in line
    assert "--overwrite_output_dir" in _refused(capsys, finished)  # the same flags again: not a resume either


def test_resume_without_a_checkpoint_is_refused(finished, tmp_path, capsys, no_training):
    """The recipe's default saves no checkpoint: resuming used to train again from step 0 without a word."""
    line = _refused(capsys, finished, "--resume_from_checkpoint", "true")
    assert "holds no complete checkpoint to resume from" in line and "--save_strategy steps --save_steps N" in line
    assert "no complete checkpoint" in _refused(capsys, tmp_path / "never-ran", "--resume_from_checkpoint", "true")
    assert "no such checkpoint folder" in _refused(capsys, finished, "--resume_from_checkpoint", str(tmp_path / "x"))


def test_resume_with_other_settings_is_refused(checkpointed, capsys, no_training):
    line = _refused(capsys, checkpointed, *CHECKPOINTS, "--shots", "2", "--resume_from_checkpoint", "true")
    assert "holds a run with other settings (--shots was 1, now 2)" in line


def test_overwrite_and_resume_exclude_each_other(checkpointed, capsys, no_training):
    line = _refused(capsys, checkpointed, *CHECKPOINTS, "--overwrite_output_dir", "--resume_from_checkpoint", "true")
    assert "pass one of them" in line


def test_resume_of_the_same_settings_continues(checkpointed):
    """Same flags plus --resume_from_checkpoint true: accepted. A finished stage reloads its last checkpoint
    and trains nothing (transformers' Trainer, resumed at max_steps, would train one step more)."""
    stage = checkpointed / "runs" / "finetune-seed0"
    weights = stage / "checkpoint-1" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    before = json.loads((checkpointed / "results.json").read_text())["runs"]
    assert _run(checkpointed, *CHECKPOINTS, "--resume_from_checkpoint", "true", "--report_to", "none") == 0
    assert weights.stat().st_mtime_ns == mtime  # resumed from it, not retrained and saved again
    assert sorted(p.name for p in stage.glob("checkpoint-*")) == ["checkpoint-1"]
    assert json.loads((stage / "trainer_state.json").read_text())["global_step"] == 1
    after = json.loads((checkpointed / "results.json").read_text())["runs"]
    keys = ("accuracy", "loss", "mean_per_class_accuracy")
    assert [{k: r[k] for k in keys} for r in after] == [{k: r[k] for k in keys} for r in before]


def test_overwrite_replaces_the_run_and_keeps_other_files(tmp_path):
    out = tmp_path / "run"
    assert _run(out) == 0
    (out / "notes.txt").write_text("mine")
    (out / "model" / "compare.png").write_bytes(b"from the first run")
    assert _run(out, "--mode", "joint", "--overwrite_output_dir") == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["summary"]) == ["joint"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["joint-seed0"]  # no stage of the first run left
    assert not (out / "model" / "compare.png").exists() and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / RUN_SETTINGS).read_text())["mode"] == "joint"


def test_a_run_recorded_before_a_setting_existed_resumes_with_the_value_it_ran_with(tmp_path):
    """A settings.json without --decode_at_crop_scale (recorded before it existed: JPEGs were decoded fully)
    gets past the settings check with --decode_at_crop_scale false (to the checkpoint check: this folder has
    none) and is refused with the default, naming the flag."""
    from jtln_hf.experiment.arguments import ADDED_SETTINGS
    from jtln_hf.utils.io import check_output_dir

    now = {"shots": 5, "decode_at_crop_scale": True}
    (tmp_path / RUN_SETTINGS).write_text(json.dumps({"shots": 5}))
    with pytest.raises(ValueError, match=r"other settings \(--decode_at_crop_scale was False, now True\)"):
        check_output_dir(tmp_path, now, resume=True, added=ADDED_SETTINGS)
    with pytest.raises(ValueError, match="holds no complete checkpoint to resume from"):
        check_output_dir(tmp_path, {**now, "decode_at_crop_scale": False}, resume=True, added=ADDED_SETTINGS)
