"""Nothing half-written: jtln_hf.utils.io's atomic writers under injected failures, checkpoint choice, no pickle.

Each failure is injected *inside* the write (after part of the new content is on disk) and the
test asserts what a reader would see afterwards: the previous version, byte for byte, and no
temporary file or folder left behind.
"""

from __future__ import annotations

import ast
import errno
import json
import os
from pathlib import Path

import pytest
import torch
import transformers.modeling_utils

import jtln_hf
from jtln_hf import JointImageClassifier
from jtln_hf.utils import io as jio
from jtln_hf.sharing.modelcard import render_model_card, save_model_card

from conftest import make_model

PACKAGE = Path(jtln_hf.__file__).resolve().parent


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary siblings the writers create (``.<name>.<random>.tmp``, ``.<name>.old``)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


class _HalfWriter:
    """A text file whose ``write`` puts half of the text on disk, then fails like a full disk."""

    def __init__(self, f):
        self._f = f

    def write(self, text):
        self._f.write(text[: len(text) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


# ---------------------------------------------------------------------------------- atomic_write
def test_write_callback_puts_the_bytes_on_disk(tmp_path):
    import stat

    target = tmp_path / "plot.png"
    old = os.umask(0o022)
    try:
        assert jio.atomic_write(target, lambda f: f.write(b"\x89PNG v1")) == target
    finally:
        os.umask(old)
    assert target.read_bytes() == b"\x89PNG v1" and leftovers(tmp_path) == []
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_write_callback_failure_leaves_nothing_half_written(tmp_path):
    def half(f):
        f.write(b"v2, first half")
        f.flush()  # on disk in the temporary file
        raise RuntimeError("killed while drawing (injected)")

    target = tmp_path / "plot.png"
    jio.atomic_write(target, lambda f: f.write(b"v1"))
    with pytest.raises(RuntimeError, match="injected"):
        jio.atomic_write(target, half)
    assert target.read_bytes() == b"v1" and leftovers(tmp_path) == []
    with pytest.raises(RuntimeError, match="injected"):  # a new file is not created at all
        jio.atomic_write(tmp_path / "new.png", half)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_figures_are_saved_through_atomic_write(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from jtln_hf.sharing import figures

    target = tmp_path / "cost_matrix.png"
    figures.plot_cost_matrix([[0.0, 1.0], [1.0, 0.0]], ["a", "b"], ["c", "d"], target)
    before = target.read_bytes()
    assert before.startswith(b"\x89PNG") and leftovers(tmp_path) == []

    def half_savefig(self, f, **kwargs):
        f.write(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(Figure, "savefig", half_savefig)
    with pytest.raises(OSError, match="injected"):
        figures.plot_cost_matrix([[1.0, 0.0], [0.0, 1.0]], ["a", "b"], ["c", "d"], target)
    assert target.read_bytes() == before and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- atomic_write_text
def test_text_write_replaces_content(tmp_path):
    target = tmp_path / "results.json"
    jio.atomic_write_text(target, "old\n")
    jio.atomic_write_text(target, "new ü\n")
    assert target.read_text(encoding="utf-8") == "new ü\n" and leftovers(tmp_path) == []


def test_text_failure_mid_write_keeps_previous_version(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    jio.atomic_write_text(target, json.dumps({"accuracy": 0.8}))
    real_fdopen = os.fdopen
    monkeypatch.setattr(jio.os, "fdopen", lambda *a, **k: _HalfWriter(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="injected"):
        jio.atomic_write_text(target, json.dumps({"accuracy": 0.9, "runs": list(range(1000))}))
    assert json.loads(target.read_text()) == {"accuracy": 0.8}
    assert leftovers(tmp_path) == []


def test_text_failure_at_rename_keeps_previous_version(tmp_path, monkeypatch):
    target = tmp_path / "results.md"
    jio.atomic_write_text(target, "| table v1 |\n")

    def failing_replace(src, dst):
        raise OSError(errno.EIO, "I/O error (injected)")

    monkeypatch.setattr(jio.os, "replace", failing_replace)
    with pytest.raises(OSError, match="injected"):
        jio.atomic_write_text(target, "| table v2 |\n")
    assert target.read_text() == "| table v1 |\n" and leftovers(tmp_path) == []


def test_model_card_failure_keeps_previous_card(tmp_path, monkeypatch):
    model = make_model()
    save_model_card(render_model_card(model, cost_description="v1 cost"), tmp_path)
    before = (tmp_path / "README.md").read_bytes()
    monkeypatch.setattr(jio.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "injected")))
    with pytest.raises(OSError, match="injected"):
        save_model_card(render_model_card(model, cost_description="v2 cost"), tmp_path)
    assert (tmp_path / "README.md").read_bytes() == before and b"v1 cost" in before
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------ atomic_write_dir
def _write_files(**files):
    def write(folder: Path) -> None:
        for name, text in files.items():
            (folder / name).write_text(text)
    return write


def test_dir_write_swaps_in_new_version(tmp_path, monkeypatch):
    calls = []
    real_exchange = jio._exchange
    monkeypatch.setattr(jio, "_exchange", lambda a, b: calls.append((a, b)) or real_exchange(a, b))
    jio.atomic_write_dir(tmp_path / "model", _write_files(a="1", b="1"))
    assert calls == []  # nothing to swap with: a plain rename
    jio.atomic_write_dir(tmp_path / "model", _write_files(a="2"))
    assert sorted(os.listdir(tmp_path / "model")) == ["a"] and (tmp_path / "model" / "a").read_text() == "2"
    assert len(calls) == 1 and leftovers(tmp_path) == []  # one atomic exchange, old copy removed


def test_dir_failure_mid_write_keeps_previous_version(tmp_path):
    jio.atomic_write_dir(tmp_path / "model", _write_files(config="v1", weights="v1"))

    def half(folder: Path) -> None:
        (folder / "config").write_text("v2")
        raise RuntimeError("killed while writing the weights (injected)")

    with pytest.raises(RuntimeError, match="injected"):
        jio.atomic_write_dir(tmp_path / "model", half)
    assert {p.name: p.read_text() for p in (tmp_path / "model").iterdir()} == {"config": "v1", "weights": "v1"}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EINVAL])
def test_dir_two_rename_fallback_and_its_rollback(tmp_path, monkeypatch, code):
    """Without renameat2: two renames; a failure of the second puts the previous version back."""
    monkeypatch.setattr(jio, "_exchange", lambda a, b: (_ for _ in ()).throw(OSError(code, "unsupported")))
    model = tmp_path / "model"
    jio.atomic_write_dir(model, _write_files(w="v1"))
    jio.atomic_write_dir(model, _write_files(w="v2"))
    assert (model / "w").read_text() == "v2" and leftovers(tmp_path) == []

    real_replace = os.replace

    def second_rename_fails(src, dst):
        if Path(dst) == model and Path(src).name.endswith(".tmp"):
            raise OSError(errno.EIO, "injected")
        return real_replace(src, dst)

    monkeypatch.setattr(jio.os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="injected"):
        jio.atomic_write_dir(model, _write_files(w="v3"))
    assert (model / "w").read_text() == "v2" and leftovers(tmp_path) == []


def test_dir_crash_between_the_two_renames_is_recovered(tmp_path):
    """A process killed after 'model -> .model.old' but before the new folder arrived: the next
    write (here one that fails itself) first puts the old version back."""
    model = tmp_path / "model"
    jio.atomic_write_dir(model, _write_files(w="v1"))
    os.replace(model, tmp_path / ".model.old")  # the state such a crash leaves
    with pytest.raises(RuntimeError):
        jio.atomic_write_dir(model, lambda folder: (_ for _ in ()).throw(RuntimeError("fails")))
    assert (model / "w").read_text() == "v1" and leftovers(tmp_path) == []


def test_saved_model_survives_a_failed_resave(tmp_path, monkeypatch):
    """save_pretrained into atomic_write_dir (what the recipe does): the weights file fails
    half-way (after config.json is written); the previous model still loads, unchanged."""
    folder = tmp_path / "model"
    v1 = make_model(seed=0)
    jio.atomic_write_dir(folder, v1.save_pretrained)
    v2 = make_model(seed=1)
    def dies_half_way(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)  # a truncated weights file
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    with monkeypatch.context() as patch:
        patch.setattr(transformers.modeling_utils, "safe_save_file", dies_half_way)
        with pytest.raises(OSError, match="injected"):
            jio.atomic_write_dir(folder, v2.save_pretrained)
    assert leftovers(tmp_path) == []
    reloaded = JointImageClassifier.from_pretrained(folder)
    for name, tensor in v1.state_dict().items():  # exact: saved and read back
        assert torch.equal(reloaded.state_dict()[name], tensor), name


# ---------------------------------------------------------------------- latest complete checkpoint
def _checkpoint(root: Path, step: int, *, state: str | None = "ok", weights: bool = True) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if weights:
        (folder / "model.safetensors").write_bytes(b"x")
    if state == "ok":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    elif state == "truncated":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step})[:7])
    elif state == "wrong_step":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step - 1}))
    return folder


def test_latest_complete_checkpoint_skips_half_written_ones(tmp_path):
    assert jio.latest_complete_checkpoint(tmp_path / "missing") is None
    assert jio.latest_complete_checkpoint(tmp_path) is None
    _checkpoint(tmp_path, 5)
    good = _checkpoint(tmp_path, 20)
    (tmp_path / "checkpoint-30").write_text("a file, not a folder")
    _checkpoint(tmp_path, 100, state="truncated")  # killed while writing trainer_state.json
    _checkpoint(tmp_path, 40, state=None)  # killed before it
    _checkpoint(tmp_path, 50, weights=False)  # weights missing
    _checkpoint(tmp_path, 60, state="wrong_step")  # a stale state file
    assert jio.latest_complete_checkpoint(tmp_path) == str(good)  # 20 < 100, but complete


# ------------------------------------------------------------------------------- no pickle loads
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_pickle_load_anywhere_in_the_package():
    """torch.load only with weights_only=True, np.load never with allow_pickle=True, no pickle/joblib/dill."""
    offenders = []
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) >= 10
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle") for n in names):
                    offenders.append(f"{path.name}:{node.lineno} imports a pickle module")
        for call, name in _calls(tree):
            kwargs = {k.arg: k.value for k in call.keywords}
            where = f"{path.relative_to(PACKAGE)}:{call.lineno} {ast.unparse(call)}"
            if name.endswith("torch.load") or name == "load" and "weights_only" in kwargs:
                value = kwargs.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    offenders.append(where)
            if name.endswith("np.load") or name.endswith("numpy.load"):
                value = kwargs.get("allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                    offenders.append(where)
            if name.endswith(("pickle.load", "pickle.loads", "Unpickler")):
                offenders.append(where)
    assert offenders == []


def test_written_files_and_folders_get_the_usual_permissions(tmp_path):
    import stat

    from jtln_hf.utils.io import atomic_write_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        text = atomic_write_text(tmp_path / "results.json", "{}")
        folder = atomic_write_dir(tmp_path / "model", lambda d: (d / "x.txt").write_text("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(text.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # not mkdtemp's 0700
