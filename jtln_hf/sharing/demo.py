"""The Gradio demo of a trained model: beside the model folder, and as a Hugging Face Space.

* :func:`write_demo` -- ``model/app.py`` (a copy of :mod:`jtln_hf.sharing.demo_app`), ``requirements.txt``,
  ``demo.json`` (the OT settings of training) and ``examples/``: ``python model/app.py`` serves the
  demo from the folder, offline.
* :func:`write_space_folder` / :func:`push_space` -- the same app as a Hugging Face Space that loads
  the model by repository id at a pinned revision (``demo.json``), with a copy of the jtln_hf
  package beside it (the Space runs ``app.py`` from its root, so ``import jtln_hf`` finds it);
  ``python recipes/write_space.py`` writes it from the command line. The Space is pushed with
  :func:`jtln_hf.sharing.hub.push_model_folder` and ``repo_type="space"``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write_text
from .examples import EXAMPLES_FOLDER, write_examples

DEMO_APP_PATH = Path(__file__).resolve().parent / "demo_app.py"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
#: What the Space needs beside what Gradio's Space image brings (gradio itself, from the card's sdk).
SPACE_REQUIREMENTS = ("torch", "timm>=1.0.15", "transformers>=5.0", "matplotlib", "numpy", "safetensors", "pillow")
#: What ``pip install -r model/requirements.txt`` needs to run ``python model/app.py`` (jtln_hf with its extra).
LOCAL_REQUIREMENTS = ("jtln_hf[demo]",)


def write_demo(
    folder: str | os.PathLike, model, examples: Sequence[tuple[Any, str]], *, ot_settings: Mapping[str, Any]
) -> Path:
    """Write the Gradio demo beside the model: ``app.py``, ``requirements.txt``, ``demo.json``, ``examples/``.

    ``ot_settings`` are training's ``epsilon``, ``iterations``, ``method`` and ``tol`` (the per-image
    plan is the one the loss uses). ``python FOLDER/app.py`` then serves the demo from the folder.
    """
    folder = Path(folder)
    written = write_examples(folder, examples)
    shutil.copyfile(DEMO_APP_PATH, folder / "app.py")
    atomic_write_text(folder / "requirements.txt", "\n".join(LOCAL_REQUIREMENTS) + "\n")
    settings = {"ot": dict(ot_settings), "examples": [f"{EXAMPLES_FOLDER}/{name}" for name, _ in written]}
    atomic_write_text(folder / "demo.json", json.dumps(settings, indent=2) + "\n")
    return folder


def write_space_folder(
    model_folder: str | os.PathLike, out: str | os.PathLike, *, model_id: str, revision: str | None,
    title: str | None = None,
) -> Path:  # fmt: skip
    """The Space for the demo in ``model_folder``: ``app.py``, ``demo.json`` naming ``model_id`` at
    ``revision``, ``examples/``, ``requirements.txt``, a copy of the jtln_hf package and a ``README.md``
    whose metadata makes it a Gradio Space running ``app.py``."""
    import gradio  # the Space's sdk_version: the Gradio this demo was written for

    model_folder, out = Path(model_folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_folder / "app.py", out / "app.py")
    settings = json.loads((model_folder / "demo.json").read_text())
    settings.update(model_id=model_id, revision=revision)
    atomic_write_text(out / "demo.json", json.dumps(settings, indent=2) + "\n")
    if (model_folder / EXAMPLES_FOLDER).is_dir():
        shutil.copytree(model_folder / EXAMPLES_FOLDER, out / EXAMPLES_FOLDER, dirs_exist_ok=True)
    shutil.copytree(PACKAGE_ROOT, out / "jtln_hf", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
    atomic_write_text(out / "requirements.txt", "\n".join(SPACE_REQUIREMENTS) + "\n")
    pinned = f"{model_id}@{revision}" if revision else model_id
    atomic_write_text(out / "README.md", (
        "---\n"
        f"title: {title or model_id.split('/')[-1]}\n"
        "sdk: gradio\n"
        f"sdk_version: {gradio.__version__}\n"
        "app_file: app.py\n"
        f"models:\n- {model_id}\n"
        "tags:\n- jtln\n- optimal-transport\n"
        "---\n\n"
        f"Demo of the JTLN model [{pinned}](https://huggingface.co/{model_id}): upload an image to see the target "
        "classes with their probabilities, the source classes the source head sees in it, and the image's "
        "transport plan between the two.\n"
    ))  # fmt: skip
    return out


def push_space(
    model_folder: str | os.PathLike, space_id: str, *, model_id: str, revision: str | None,
    token: str | None = None, private: bool | None = None,
):  # fmt: skip
    """Create the Gradio Space ``space_id`` if needed and upload :func:`write_space_folder` in one commit."""
    from .hub import push_model_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_space_folder(model_folder, Path(tmp) / "space", model_id=model_id, revision=revision)
        return push_model_folder(
            folder, space_id, token=token, private=private, repo_type="space", space_sdk="gradio",
            commit_message=f"JTLN demo of {model_id}" + (f"@{revision}" if revision else ""),
        )  # fmt: skip


__all__ = ["DEMO_APP_PATH", "LOCAL_REQUIREMENTS", "SPACE_REQUIREMENTS", "push_space", "write_demo", "write_space_folder"]
