"""Sharing a trained model beyond jtln_hf: the timm export of the target network, and the Gradio demo.

* :func:`write_timm_folder` -- ``model/timm/``: :meth:`JointImageClassifier.save_timm` (weights and
  timm's ``config.json``), a few target test images in ``examples/`` and a card
  (``resources/timm_model_card_template.md``) whose metadata makes the Hub widget work
  (``library_name: timm``, ``pipeline_tag: image-classification``, ``widget`` with the examples) and
  links to the JTLN repository, which keeps the source head, the cost matrix and the plan.
* :func:`write_demo` -- ``model/app.py`` (a copy of ``resources/demo_app.py``), ``requirements.txt``,
  ``demo.json`` (the OT settings of training) and ``examples/``: ``python model/app.py`` serves the
  demo from the folder, offline.
* :func:`write_space_folder` / :func:`push_space` -- the same app as a Hugging Face Space that loads
  the model by repository id at a pinned revision (``demo.json``), with a copy of the jtln_hf
  package beside it (the Space runs ``app.py`` from its root, so ``import jtln_hf`` finds it).

Pushing the export uses :func:`jtln_hf.hub.push_model_folder` (one commit); the Space goes the same
way with ``repo_type="space"``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .io import atomic_write_text

RESOURCES = Path(__file__).parent / "resources"
TIMM_TEMPLATE_PATH = RESOURCES / "timm_model_card_template.md"
DEMO_APP_PATH = RESOURCES / "demo_app.py"
TIMM_FOLDER = "timm"
EXAMPLES_FOLDER = "examples"
#: What the Space needs beside what Gradio's Space image brings (gradio itself, from the card's sdk).
SPACE_REQUIREMENTS = ("torch", "timm>=1.0.15", "transformers>=5.0", "matplotlib", "numpy", "safetensors", "pillow")
#: What ``pip install -r model/requirements.txt`` needs to run ``python model/app.py`` (jtln_hf with its extra).
LOCAL_REQUIREMENTS = ("jtln_hf[demo]",)


def example_images(dataset, target_names: Sequence[str], per_class: int = 1) -> list[tuple[Any, str]]:
    """The first ``per_class`` images of each target class of ``dataset`` (``image``/``label`` rows), in class order."""
    labels = list(dataset["label"])
    chosen: list[tuple[Any, str]] = []
    for class_id, name in enumerate(target_names):
        rows = [i for i, label in enumerate(labels) if label == class_id][:per_class]
        chosen.extend((dataset[i]["image"], name) for i in rows)
    return chosen


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "image"


def write_examples(folder: str | os.PathLike, examples: Sequence[tuple[Any, str]]) -> list[tuple[str, str]]:
    """Save ``(PIL image, label)`` pairs as ``folder/examples/<k>-<label>.png``; return ``(file name, label)``."""
    target = Path(folder) / EXAMPLES_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for k, (image, label) in enumerate(examples):
        name = f"{k}-{_slug(label)}.png"
        image.save(target / name)
        written.append((name, label))
    return written


def render_timm_card(
    model, *, repo_id: str, jtln_repo_id: str, examples: Sequence[tuple[str, str]] = (),
    metrics: Mapping[str, float] | None = None, datasets: list[str] | None = None, dataset_name: str | None = None,
    eval_dataset: str | None = None, space_id: str | None = None, license: str = "apache-2.0",
) -> ModelCard:  # fmt: skip
    """The card of the timm export of ``model`` (a `JointImageClassifier`), published as ``repo_id``.

    The metadata (``library_name: timm``, ``pipeline_tag: image-classification``, ``widget``: the
    example images by their URL in ``repo_id``, ``model-index``: ``metrics``) is what the Hub's widget
    and evaluation table read; the text links to ``jtln_repo_id``.
    """
    from .modelcard import METRIC_NAMES, eval_results

    config = model.config
    names = [config.id2label[i] for i in range(config.num_labels)]
    metrics = dict(metrics or {})
    dataset_name = dataset_name or (datasets[0] if datasets else "target test set")
    widget = [{"src": f"https://huggingface.co/{repo_id}/resolve/main/{EXAMPLES_FOLDER}/{file}", "example_title": label}
              for file, label in examples]  # fmt: skip
    card_data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        license=license,
        tags=["image-classification", "timm", "jtln", "transfer-learning"],
        datasets=datasets,
        metrics=sorted(metrics) or None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(
            metrics, dataset_type=eval_dataset or (datasets or ["custom"])[0], dataset_name=dataset_name
        ) or None,
        widget=widget or None,
    )  # fmt: skip
    data = config.data_config
    channels, height, width = data["input_size"]
    cfg = dict(getattr(model.backbone, "pretrained_cfg", None) or {})
    mean, std = (list(data[k]) * (3 // len(data[k])) for k in ("mean", "std"))
    return ModelCard.from_template(
        card_data,
        template_path=str(TIMM_TEMPLATE_PATH),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        jtln_repo_id=jtln_repo_id,
        jtln_url=f"https://huggingface.co/{jtln_repo_id}",
        space_id=space_id,
        architecture=cfg.get("architecture") or config.backbone,
        classifier=cfg.get("classifier", "classifier"),
        first_conv=cfg.get("first_conv", "first convolution"),
        label_names=names,
        grayscale=int(channels) == 1,
        input_description="RGB images" + (" (the JTLN model's grayscale input mapped to RGB)" if channels == 1 else ""),
        interpolation=data.get("interpolation", "bilinear"),
        crop_pct=data.get("crop_pct", 1.0),
        crop_mode=data.get("crop_mode", "center"),
        height=height,
        width=width,
        mean=[round(float(v), 4) for v in mean],
        std=[round(float(v), 4) for v in std],
        metrics={METRIC_NAMES.get(k, k.replace("_", " ")): f"{100 * v:.2f} %" for k, v in metrics.items()},
        dataset_name=dataset_name,
        examples=list(examples),
    )


def write_timm_folder(
    model, folder: str | os.PathLike, *, repo_id: str, jtln_repo_id: str,
    examples: Sequence[tuple[Any, str]] = (), **card_kwargs: Any,
) -> Path:  # fmt: skip
    """Write the timm export of ``model`` into ``folder``: weights, ``config.json``, examples and ``README.md``.

    ``examples`` are ``(PIL image, label)`` pairs (:func:`example_images`); ``card_kwargs`` go to
    :func:`render_timm_card`. Raises :class:`jtln_hf.modeling_jtln.TimmExportError` (one line) for a
    backbone whose classifier the export cannot map.
    """
    folder = Path(folder)
    model.save_timm(folder)
    written = write_examples(folder, examples) if examples else []
    card = render_timm_card(model, repo_id=repo_id, jtln_repo_id=jtln_repo_id, examples=written, **card_kwargs)
    atomic_write_text(folder / "README.md", str(card))
    return folder


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
    shutil.copytree(Path(__file__).parent, out / "jtln_hf", dirs_exist_ok=True,
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


__all__ = [
    "example_images",
    "push_space",
    "render_timm_card",
    "write_demo",
    "write_examples",
    "write_space_folder",
    "write_timm_folder",
]


def main(argv: list[str] | None = None) -> None:
    """``python -m jtln_hf.share MODEL_FOLDER OUT --model_id ID [--revision SHA]``: write the Space folder."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m jtln_hf.share", description="Write the demo Space's folder "
                                     "(then: hf upload SPACE_ID OUT . --repo-type space).")  # fmt: skip
    parser.add_argument("model_folder", help="OUTPUT_DIR/model (with app.py and demo.json)")
    parser.add_argument("out", help="folder to write the Space into")
    parser.add_argument("--model_id", required=True, help="the model's repository on the Hub")
    parser.add_argument("--revision", default=None, help="the model commit the Space loads (default: main)")
    args = parser.parse_args(argv)
    print(write_space_folder(args.model_folder, args.out, model_id=args.model_id, revision=args.revision))


if __name__ == "__main__":
    main()
