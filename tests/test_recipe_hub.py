"""The recipe's Hub and logging flags, run in this process on real Fashion-MNIST (a few steps).

``--push_to_hub --hub_model_id`` with ``HfApi.create_repo``/``HfApi.upload_folder`` replaced
(nothing reaches the network): the exact files pushed and the card's content; failures keep the
local output. ``--report_to tensorboard``: the event files, read back with TensorBoard's own
``EventAccumulator``, hold the loss parts and the evaluation metrics as separate scalars.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl, constants
from huggingface_hub.errors import LocalTokenNotFoundError
from huggingface_hub.utils import filter_repo_objects
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_modelcard import declared_urls, undeclared_links

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "tester/jtln-fmnist-tiny"
SPACE_ID = "tester/jtln-demo"
EXAMPLES = ["examples/0-shirt.png", "examples/1-coat.png", "examples/2-sandal.png", "examples/3-bag.png",
            "examples/4-ankle-boot.png"]  # fmt: skip
MODEL_FILES = sorted([
    "README.md", "config.json", "configuration_jtln.py", "cost_matrix.png", "image_processing_jtln.py",
    "model.safetensors", "modeling_jtln.py", "preprocessor_config.json", "transport_plan.png",
    "app.py", "demo.json", "requirements.txt", *EXAMPLES,
])  # fmt: skip
TIMM_FILES = sorted(["README.md", "config.json", "model.safetensors", *EXAMPLES])
TRAIN_TAGS = {"train/loss", "train/ce_target", "train/ce_source", "train/ot", "train/learning_rate"}
EVAL_TAGS = {"eval/accuracy", "eval/mean_per_class_accuracy", "eval/loss"}


def _load_recipe():
    spec = importlib.util.spec_from_file_location("train_jtln_recipe", REPO / "recipes" / "train_jtln.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _argv(out: Path, *extra: str) -> list[str]:
    return [
        "--mode", "jtln", "--seeds", "0", "--shots", "2", "--max_steps", "4", "--per_device_train_batch_size", "16",
        "--max_eval_samples", "60", "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "2",
        "--report_to", "tensorboard", "--output_dir", str(out), *extra,
    ]  # fmt: skip


def _fake_hub(monkeypatch, calls):
    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
        folder = Path(folder_path)  # the files upload_folder selects, with huggingface_hub's own filter
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        kept = filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
        calls.append(("upload_folder", repo_id, {name: (folder / name).read_bytes() for name in kept}, kwargs))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc", commit_message="m",
                          commit_description="", oid="abc")  # fmt: skip

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory):
    """One short JTLN run with --push_to_hub and --report_to tensorboard (the Hub calls replaced)."""
    monkeypatch = pytest.MonkeyPatch()
    calls: list = []
    _fake_hub(monkeypatch, calls)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the Hub calls are replaced: nothing goes out
    out = tmp_path_factory.mktemp("recipe") / "run"
    try:
        status = _load_recipe().main(_argv(out, "--push_to_hub", "--hub_model_id", REPO_ID, "--push_space", SPACE_ID))
    finally:
        monkeypatch.undo()
    return status, out, calls


def test_push_sends_the_model_folder_once(pushed_run, capsys):
    status, out, calls = pushed_run
    assert status == 0
    # one commit per repository: the model (no stage pushed), its timm export, the demo Space
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"] * 3
    assert [c[1] for c in calls] == [REPO_ID] * 2 + [f"{REPO_ID}-timm"] * 2 + [SPACE_ID] * 2
    assert calls[0][2]["exist_ok"] is True
    _, repo_id, files, _ = calls[1]
    assert repo_id == REPO_ID and sorted(files) == MODEL_FILES  # timm/ goes to its own repository
    for name, content in files.items():
        assert content == (out / "model" / name).read_bytes(), name
    card = ModelCard(files["README.md"].decode())
    assert {"jtln", "optimal-transport"} <= set(card.data.tags) and card.data.datasets == ["zalando-datasets/fashion_mnist"]
    results = json.loads((out / "results.json").read_text())
    accuracy = {r.metric_type: r.metric_value for r in card.data.eval_results}["accuracy"]
    assert accuracy == pytest.approx(results["runs"][0]["accuracy"], abs=1e-4)
    text = card.text
    assert f'pipeline("image-classification", model="{REPO_ID}", trust_remote_code=True)' in text
    assert "Shirt, Coat, Sandal, Bag, Ankle boot" in text and "T-shirt/top, Trouser, Pullover, Dress, Sneaker" in text
    assert "![Cost matrix" in text and "](transport_plan.png)" in text and "over 60 target test images" in text
    assert "| λ_ot (ot_loss_weight) | 1.0 |" in text and "| steps | 4 |" in text
    assert "normalisation: column" in text
    # only what this run did: its repository's name, no top-4 of 5 classes, no link the project did not declare
    assert card.data.model_name == "jtln-fmnist-tiny" and "Top-4 accuracy is not reported" in text
    assert "top_4_accuracy" in results["runs"][0]
    assert "top_4_accuracy" not in {r.metric_type for r in card.data.eval_results}
    # the run named the JTLN repository; the timm export goes to <repo>-timm, which the run declares too
    assert not undeclared_links(text, out / "model", declared_urls(REPO_ID, f"{REPO_ID}-timm", card.data.base_model))
    # the link to the timm export, and the second way to load
    assert f"[{REPO_ID}-timm](https://huggingface.co/{REPO_ID}-timm)" in text
    assert f'pipeline("image-classification", model="{REPO_ID}-timm")' in text


def test_push_sends_the_timm_export_with_a_widget_card(pushed_run):
    _, out, calls = pushed_run
    _, repo_id, files, kwargs = calls[3]
    assert kwargs.get("repo_type") is None  # a model repository
    assert repo_id == f"{REPO_ID}-timm" and sorted(files) == TIMM_FILES
    for name, content in files.items():
        assert content == (out / "model" / "timm" / name).read_bytes(), name
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
    assert [w["src"] for w in card.data.widget] == [
        f"https://huggingface.co/{REPO_ID}-timm/resolve/main/{name}" for name in EXAMPLES]  # fmt: skip
    assert [w["example_title"] for w in card.data.widget] == ["Shirt", "Coat", "Sandal", "Bag", "Ankle boot"]
    results = json.loads((out / "results.json").read_text())
    accuracy = {r.metric_type: r.metric_value for r in card.data.eval_results}["accuracy"]
    assert accuracy == pytest.approx(results["runs"][0]["accuracy"], abs=1e-4)
    assert json.loads(files["config.json"])["label_names"] == ["Shirt", "Coat", "Sandal", "Bag", "Ankle boot"]
    assert f"[{REPO_ID}](https://huggingface.co/{REPO_ID})" in card.text  # the link to the JTLN repository
    assert f"[{SPACE_ID}](https://huggingface.co/spaces/{SPACE_ID})" in card.text


def test_push_space_loads_the_model_at_the_pushed_revision(pushed_run):
    _, out, calls = pushed_run
    create, upload = calls[4], calls[5]
    assert create[2]["repo_type"] == "space" and create[2]["space_sdk"] == "gradio"
    _, repo_id, files, kwargs = upload
    assert kwargs["repo_type"] == "space"
    assert repo_id == SPACE_ID
    assert {"README.md", "app.py", "demo.json", "requirements.txt", "jtln_hf/__init__.py", "jtln_hf/sharing/figures.py",
            "jtln_hf/sinkhorn/api.py", *EXAMPLES} <= set(files)  # fmt: skip
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc")]
    assert files["app.py"] == (out / "model" / "app.py").read_bytes()
    settings = json.loads(files["demo.json"])
    assert settings["model_id"] == REPO_ID and settings["revision"] == "abc"  # the model commit's oid
    assert settings["ot"] == {"epsilon": 0.05, "iterations": 50, "method": "auto", "tol": None}
    card = ModelCard(files["README.md"].decode())
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.models == [REPO_ID]


def test_tensorboard_has_loss_parts_and_eval_metrics(pushed_run):
    status, out, _ = pushed_run
    assert status == 0
    # layout: OUTPUT_DIR/runs/<method>-seed<seed>/runs/<date>_<host>/events.out.tfevents.*
    (logdir,) = sorted((out / "runs" / "jtln-seed0" / "runs").iterdir())
    assert list(logdir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert TRAIN_TAGS | EVAL_TAGS <= tags
    for tag in ("train/ce_target", "train/ce_source", "train/ot"):
        steps = [e.step for e in events.Scalars(tag)]
        assert steps == [1, 2, 3, 4], (tag, steps)  # --logging_steps 1
        assert all(e.value >= 0 for e in events.Scalars(tag))
    accuracy = events.Scalars("eval/accuracy")
    assert [e.step for e in accuracy] == [2, 4, 4]  # during training (--eval_steps 2), then the final test
    results = json.loads((out / "results.json").read_text())
    assert accuracy[-1].value == pytest.approx(results["runs"][0]["accuracy"], abs=1e-6)
    assert not (Path.cwd() / "runs").exists() or not any((Path.cwd() / "runs").iterdir())


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_failed_push_reports_and_keeps_output(pushed_run, monkeypatch, capsys):
    _, out, _ = pushed_run
    before = _snapshot(out)
    recipe = _load_recipe()
    args = recipe.parse_args(_argv(out, "--push_to_hub", "--hub_model_id", REPO_ID))[3]

    def no_token(self, *a, **k):
        raise LocalTokenNotFoundError("Token is required (`token=True`), but no token found.")

    monkeypatch.setattr(HfApi, "create_repo", no_token)
    assert recipe.push(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot push to tester/jtln-fmnist-tiny: no Hugging Face token found")
    assert f"hf upload {REPO_ID} {out / 'model'} ." in err
    assert _snapshot(out) == before


def _stops_before_training(capsys, out: Path, *argv: str) -> str:
    """The recipe exits 2 with one line, before anything trains or is written; returns the line."""
    status = _load_recipe().main(_argv(out, *argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert not out.exists()  # nothing trained, nothing written
    return lines[0]


def test_no_token_stops_before_training(monkeypatch, tmp_path, capsys):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    line = _stops_before_training(capsys, tmp_path / "run", "--push_to_hub", "--hub_model_id", REPO_ID)
    assert "no Hugging Face token found" in line and "hf auth login" in line


def test_offline_push_stops_before_training(monkeypatch, tmp_path, capsys):
    """HF_HUB_OFFLINE=1 with a token: the push could never happen, so nothing trains (it used to fail after)."""
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    line = _stops_before_training(capsys, tmp_path / "run", "--push_to_hub", "--hub_model_id", REPO_ID)
    assert line.startswith(f"error: cannot push to {REPO_ID}: HF_HUB_OFFLINE=1 is set")
    assert "unset HF_HUB_OFFLINE" in line


def test_invalid_repo_id_stops_before_training(tmp_path, capsys):
    line = _stops_before_training(capsys, tmp_path / "run", "--push_to_hub", "--hub_model_id", "not/a/repo")
    assert "not a valid repository id" in line and "--hub_model_id user/name" in line


def test_push_help_says_what_the_recipe_does():
    text = " ".join(_load_recipe().build_parser().format_help().split())
    entry = text.split(" --push_to_hub [PUSH_TO_HUB]")[1].split("(default:")[0]  # its help entry
    assert "every time the model is saved" not in text and "once, after every method has trained" in entry


@pytest.mark.parametrize("extra,message", [
    (["--push_space", SPACE_ID], "--push_space loads the model from the Hub: add --push_to_hub"),
    (["--hub_timm_model_id", "tester/t", "--save_timm", "false"], "--hub_timm_model_id names where the timm export"),
    (["--push_to_hub", "--hub_model_id", REPO_ID, "--push_space", "tester/bad space"], "not a valid repository id"),
])  # fmt: skip
def test_sharing_flags_are_checked_before_training(monkeypatch, tmp_path, capsys, extra, message):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # else offline mode is refused first
    out = tmp_path / "run"
    line = _stops_before_training(capsys, out, *extra)
    assert message in line
