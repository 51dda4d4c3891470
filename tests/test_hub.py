"""Hub and inference: remote code without jtln_hf, pipeline, source predictions, pushing a folder.

The remote-code test runs in a fresh Python process in which ``import jtln_hf`` raises
ImportError (a meta-path blocker installed by ``sitecustomize``, checked inside the process), with
HF_HOME and HF_MODULES_CACHE in a temporary folder. Pushing is tested offline by replacing the
two Hub calls ``HfApi.create_repo`` and ``HfApi.upload_folder`` (the fake selects the files as
``upload_folder`` does, with huggingface_hub's ``filter_repo_objects`` and the patterns given).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx2
import numpy as np
import pytest
import requests
import torch
from conftest import make_model
from huggingface_hub import CommitInfo, HfApi, RepoUrl
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects
from PIL import Image
from safetensors.torch import load_file
from tolerances import gamma, jtln_logit_bounds, softmax_atol, softmax_shift, stable_argmax
from transformers import dynamic_module_utils, pipeline

import jtln_hf
from jtln_hf import ClassPrediction, JointImageClassifierImageProcessor
from jtln_hf.sharing.hub import HubPushError, check_can_push, push_model_folder, save_model_folder

PACKAGE = Path(jtln_hf.__file__).parent
CODE_FILES = ("configuration_jtln.py", "modeling_jtln.py", "image_processing_jtln.py")
HUB_FILES = sorted(["config.json", *CODE_FILES, "model.safetensors", "preprocessor_config.json"])
# safetensors is a hard dependency of transformers, so it is present wherever transformers is.
ALLOWED_IMPORTS = {"__future__", "contextvars", "copy", "dataclasses", "json", "os", "typing", "numpy", "PIL", "timm",
                   "torch", "transformers", "safetensors"}  # fmt: skip


def _images() -> list[Image.Image]:
    """PIL images of several modes and sizes (what the pipeline must accept)."""
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, size=(37, 53, 4), dtype=np.uint8), "RGBA")
    return [
        rgba.convert("L").resize((28, 28)),
        rgba.convert("RGB"),
        rgba,
        rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=8).resize((90, 64)),
        rgba.convert("L").resize((7, 120)),
    ]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny trained-looking model saved as a Hub-ready folder (weights, config, processor, code)."""
    folder = tmp_path_factory.mktemp("hub") / "model"
    model = make_model(num_target=4, num_source=3, seed=1).eval()
    with torch.no_grad():  # non-trivial heads
        model.target_head.weight.normal_(0, 0.5)
        model.source_head.weight.normal_(0, 0.5)
    save_model_folder(model, folder)
    return model, folder


# ----------------------------------------------------------------------------------- remote code
def test_folder_has_weights_config_processor_and_code(saved):
    model, folder = saved
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == HUB_FILES
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_jtln.JointImageClassifierConfig",
        "AutoModelForImageClassification": "modeling_jtln.JointImageClassifier",
    }
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_jtln.JointImageClassifierImageProcessor"}
    assert processor["data_config"] == config["data_config"]
    for name in CODE_FILES:  # verbatim copies of the package's files...
        assert (folder / name).read_text() == (PACKAGE / name).read_text()
        tree = ast.parse((folder / name).read_text())
        absolute = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        absolute |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        relative = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0}
        # ...that need only torch, timm, transformers (and what they ship with), and each other
        assert absolute <= ALLOWED_IMPORTS, (name, absolute - ALLOWED_IMPORTS)
        assert relative <= {Path(f).stem for f in CODE_FILES} - {Path(name).stem}, (name, relative)
    weights = load_file(folder / "model.safetensors")
    torch.testing.assert_close(weights["cost_matrix"], model.cost_matrix, rtol=0, atol=0)  # exact: saved and read back


#: The head of a script run where jtln_hf is hidden (:data:`_BLOCKER`): it stops if jtln_hf still imports.
WITHOUT_JTLN_HF_HEAD = '''
import json, sys
try:
    import jtln_hf
except ImportError as err:
    blocked = str(err)
else:
    raise SystemExit("jtln_hf is importable: the test would prove nothing")
'''

_WITHOUT_JTLN_HF = WITHOUT_JTLN_HF_HEAD + r'''
import numpy as np, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

folder, out = sys.argv[1], sys.argv[2]
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
x = torch.from_numpy(np.load(f"{out}/input.npy"))
with torch.no_grad():
    result = model(x)
np.save(f"{out}/logits.npy", result.logits.numpy())
np.save(f"{out}/source_logits.npy", result.source_logits.numpy())
images = [Image.open(f"{out}/image{i}.png") for i in range(5)]
np.save(f"{out}/pixels.npy", processor(images, return_tensors="pt")["pixel_values"].numpy())
classifier = pipeline("image-classification", model=folder, trust_remote_code=True)
source = model.predict_source(processor(images)["pixel_values"])
print(json.dumps({
    "blocked": blocked, "jtln_hf_loaded": any(m.split(".")[0] == "jtln_hf" for m in sys.modules),
    "model": [type(model).__name__, type(model).__module__],
    "processor": [type(processor).__name__, type(processor).__module__],
    "pipeline": [classifier(image, top_k=10) for image in images],
    "source_labels": source.labels, "source_probabilities": source.probabilities.tolist(),
}))
'''

_BLOCKER = '''
import importlib.abc, sys
class _BlockJtlnHf(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "jtln_hf" or name.startswith("jtln_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None
sys.meta_path.insert(0, _BlockJtlnHf())
'''


def hidden_jtln_hf(tmp_path):
    """A folder whose ``sitecustomize.py`` hides jtln_hf (put it first on PYTHONPATH), and an output folder."""
    hidden, out = tmp_path / "hide", tmp_path / "out"
    hidden.mkdir()
    out.mkdir()
    (hidden / "sitecustomize.py").write_text(_BLOCKER)
    return hidden, out


def test_loads_with_trust_remote_code_where_jtln_hf_is_not_importable(saved, tmp_path):
    model, folder = saved
    hidden, out = hidden_jtln_hf(tmp_path)
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    np.save(out / "input.npy", x.numpy())
    images = _images()
    for i, image in enumerate(images):
        image.save(out / f"image{i}.png")
    env = {**os.environ, "PYTHONPATH": str(hidden), "HF_HOME": str(tmp_path / "hf_home"),
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_JTLN_HF, str(folder), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])

    assert "hidden by the test" in info["blocked"] and not info["jtln_hf_loaded"]
    # the classes came from the copied files, through transformers' dynamic modules
    assert info["model"][0] == "JointImageClassifier" and info["model"][1].startswith("transformers_modules.")
    assert info["processor"][0] == "JointImageClassifierImageProcessor"
    assert info["processor"][1].startswith("transformers_modules.")
    assert list((tmp_path / "modules").rglob("modeling_jtln.py"))  # HF_MODULES_CACHE was used

    # Another process, the same weights and inputs: each side's float32 logits are within the forward-error bound
    # of the exact ones on any CPU and summation order (tests/tolerances.py), so within twice it of each other.
    with torch.no_grad():
        ref = model(x)
    bounds = jtln_logit_bounds(model, x)
    for name in ("logits", "source_logits"):
        gap = (torch.from_numpy(np.load(out / f"{name}.npy")) - getattr(ref, name)).abs()
        assert (gap <= 2 * bounds[name][1]).all(), name
    processor = JointImageClassifierImageProcessor.from_model_config(model.config)
    reloaded = [Image.open(out / f"image{i}.png") for i in range(5)]
    pixels = processor(reloaded)["pixel_values"]
    # exact on any CPU: the same code on the same files (PIL's integer conversions and resize, then x / 255,
    # - mean, / std: element-wise, each one correctly rounded IEEE operation, no sum)
    np.testing.assert_array_equal(np.load(out / "pixels.npy"), pixels.numpy())

    # the pipeline's and predict_source's probabilities there: a float32 softmax of logits within 2 * bound of
    # these (load_image's RGB conversion keeps these pixels: PIL's luma of (g, g, g) is g), so within
    # softmax_shift of the row's largest gap plus both softmaxes' rounding; argmax where no such gap can move it
    with torch.no_grad():
        out_pixels = model(pixels)
    bounds = jtln_logit_bounds(model, pixels)
    targets = [model.config.id2label[i] for i in range(model.config.num_labels)]
    for name, got_rows, names in (("logits", [{a["label"]: a["score"] for a in answer} for answer in info["pipeline"]],
                                   targets),
                                  ("source_logits", [dict(enumerate(row)) for row in info["source_probabilities"]],
                                   range(model.config.num_source_labels))):  # fmt: skip
        logits, gap = getattr(out_pixels, name), 2 * bounds[name][1].float()
        z = float(logits.abs().max() + gap.max())
        for got, p, row_gap in zip(got_rows, logits.softmax(-1), gap, strict=True):
            assert sorted(got) == sorted(names)  # the head's classes, all of them
            atol = softmax_shift(float(row_gap.max())) + 2 * softmax_atol(torch.float32, len(names), z)
            np.testing.assert_allclose([got[k] for k in names], p.numpy(), rtol=0, atol=atol, err_msg=name)
    stable = stable_argmax(out_pixels.source_logits, 2 * bounds["source_logits"][1])
    assert stable.any()  # else the labels below would check nothing
    expected = [model.config.source_id2label[int(i)] for i in out_pixels.source_logits.argmax(-1)]
    assert [got for got, sure in zip(info["source_labels"], stable) if sure] == [
        want for want, sure in zip(expected, stable) if sure]  # fmt: skip


# ------------------------------------------------------------------------------ pipeline in process
def test_pipeline_returns_target_labels_for_any_image(saved, monkeypatch, tmp_path):
    model, folder = saved
    # the pipeline's video-processor probe may copy code into HF_MODULES_CACHE: keep it in tmp_path
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    classifier = pipeline("image-classification", model=str(folder), trust_remote_code=True)
    assert type(classifier.model).__module__ == "jtln_hf.modeling_jtln"  # installed code wins when imported
    assert type(classifier.image_processor) is JointImageClassifierImageProcessor
    processor = JointImageClassifierImageProcessor.from_model_config(model.config)
    for image in _images():
        answer = classifier(image)
        assert len(answer) == 4 and all(set(a) == {"label", "score"} for a in answer)
        # load_image() in the pipeline converts to RGB; the processor then goes back to grayscale. The same
        # weights (read back), pixels and calls on one image in this process: the same logits; the pipeline's
        # softmax (numpy's) and torch's are each within softmax_atol of the exact one, so its top label is this
        # argmax unless the two top probabilities are within twice that
        with torch.no_grad():
            logits = model(processor(image.convert("RGB"))["pixel_values"]).logits
        probs = logits.softmax(-1)[0]
        atol = softmax_atol(torch.float32, 4, float(logits.abs().max()))
        best = int(probs.argmax())
        if stable_argmax(probs[None], torch.full_like(probs[None], atol))[0]:
            assert answer[0]["label"] == model.config.id2label[best]
        got = {a["label"]: a["score"] for a in answer}
        assert got[model.config.id2label[best]] == pytest.approx(float(probs[best]), rel=0, abs=2 * atol)
        assert sum(got.values()) == pytest.approx(1.0, rel=0, abs=4 * atol + gamma(4, torch.float64))


def test_predict_source_and_target(saved):
    model, _ = saved
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    model.train()  # predict() must not apply dropout nor leave the model in eval mode
    source = model.predict_source(x)
    target = model.predict(x)
    assert model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(source, ClassPrediction)
    torch.testing.assert_close(source.probabilities, out.source_logits.softmax(-1))
    torch.testing.assert_close(target.probabilities, out.logits.softmax(-1))
    assert source.labels == [model.config.source_id2label[int(i)] for i in out.source_logits.argmax(-1)]
    assert target.labels == [model.config.id2label[int(i)] for i in out.logits.argmax(-1)]
    torch.testing.assert_close(source.scores, source.probabilities.max(-1).values)
    with pytest.raises(ValueError, match="head must be 'target' or 'source'"):
        model.predict(x, head="both")


# ------------------------------------------------------------------------------------------- push
def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace the two Hub calls of a push; record what they were given and the files uploaded."""
    calls = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
        folder = Path(folder_path)
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        kept = filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
        files = {name: (folder / name).read_bytes() for name in kept}
        calls["upload_folder"].append({"repo_id": repo_id, "files": files, **kwargs})
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/123abc", commit_message="m",
                          commit_description="", oid="123abc")  # fmt: skip

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_every_file_in_one_commit(saved, fake_hub, tmp_path):
    _, folder = saved
    (folder / ".partial.tmp").write_text("hidden files are not pushed")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "modeling_jtln.cpython-312.pyc").write_bytes(b"nor is __pycache__")
    try:
        commit = push_model_folder(folder, "tester/jtln-tiny", private=True, revision="dev")
    finally:
        (folder / ".partial.tmp").unlink()
        shutil.rmtree(folder / "__pycache__")
    assert commit.oid == "123abc"
    assert fake_hub["create_repo"] == [{"repo_id": "tester/jtln-tiny", "private": True, "exist_ok": True}]
    (call,) = fake_hub["upload_folder"]
    assert call["repo_id"] == "tester/jtln-tiny" and call["revision"] == "dev"
    assert sorted(call["files"]) == HUB_FILES
    assert call["files"]["model.safetensors"] == (folder / "model.safetensors").read_bytes()


def _http_error(status: int) -> HfHubHTTPError:
    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError(f"{status} Client Error", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize("error,expected", [
    (LocalTokenNotFoundError("Token is required"), "no Hugging Face token found: log in with `hf auth login`"),
    (_http_error(401), "rejected the token (401 Unauthorized)"),
    (_http_error(403), "no write access to tester/jtln-tiny (403 Forbidden)"),
    (_http_error(500), "the Hub answered with an error (500)"),
    (httpx2.ConnectError("[Errno -3] Temporary failure in name resolution"), "cannot be reached (ConnectError"),
    (requests.exceptions.ConnectionError("Max retries exceeded"), "cannot be reached (ConnectionError"),
    (OfflineModeIsEnabled("offline"), "HF_HUB_OFFLINE=1 is set"),
    (HFValidationError("Repo id must be in the form 'repo_name' or 'namespace/repo_name'"),
     "not a valid repository id (Repo id must be in the form"),
])  # fmt: skip
@pytest.mark.parametrize("failing", ["create_repo", "upload_folder"])
def test_push_failures_name_the_problem_and_keep_the_folder(saved, fake_hub, monkeypatch, error, expected, failing):
    _, folder = saved
    before = _snapshot(folder)

    def fail(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(HfApi, failing, fail)
    with pytest.raises(HubPushError) as info:
        push_model_folder(folder, "tester/jtln-tiny")
    message = str(info.value)
    assert expected in message
    assert f"intact in {folder}" in message and f"hf upload tester/jtln-tiny {folder} . --exclude '.*'" in message
    assert info.value.__cause__ is error
    assert _snapshot(folder) == before
    # a push that leaves a sub-folder out (the recipe's timm/: it has its own repository) says so in its hint
    with pytest.raises(HubPushError) as info:
        push_model_folder(folder, "tester/jtln-tiny", exclude=["timm/*"])
    assert f"hf upload tester/jtln-tiny {folder} . --exclude '.*' --exclude 'timm/*'`" in str(info.value)


def test_missing_token_is_caught_before_training(monkeypatch, tmp_path):
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubPushError, match="no Hugging Face token found.*hf auth login"):
        check_can_push("tester/jtln-tiny")
    check_can_push("tester/jtln-tiny", token="hf_given")  # an explicit token is enough
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    check_can_push("tester/jtln-tiny")


def test_offline_mode_is_caught_before_training(monkeypatch):
    """HF_HUB_OFFLINE=1: HfApi would refuse the push after training, so it is refused before, token or not."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE=1 is set.*unset HF_HUB_OFFLINE"):
        check_can_push("tester/jtln-tiny", token="hf_given")


@pytest.mark.parametrize("repo_id", ["tester/jtln tiny", "a/b/c", "tester/-jtln", "x" * 97])
def test_invalid_repo_id_is_caught_before_training(repo_id):
    with pytest.raises(HubPushError, match=r"not a valid repository id .*--hub_model_id user/name") as info:
        check_can_push(repo_id, token="hf_given")
    assert isinstance(info.value.__cause__, HFValidationError)


def test_push_of_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(HubPushError, match="nothing to push"):
        push_model_folder(tmp_path, "tester/empty")
