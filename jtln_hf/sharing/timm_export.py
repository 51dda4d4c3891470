"""The timm export of a trained model's target network, for users without jtln_hf.

:func:`write_timm_folder` writes ``model/timm/``: :meth:`JointImageClassifier.save_timm` (weights and
timm's ``config.json``), a few target test images in ``examples/`` and a card
(``resources/timm_model_card_template.md``) whose metadata makes the Hub widget work
(``library_name: timm``, ``pipeline_tag: image-classification``, ``widget`` with the examples) and
links to the JTLN repository, which keeps the source head, the cost matrix and the plan. Pushing it
uses :func:`jtln_hf.sharing.hub.push_model_folder` (one commit).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..utils.io import atomic_write_text
from .examples import EXAMPLES_FOLDER, write_examples

TIMM_TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "resources" / "timm_model_card_template.md"
TIMM_FOLDER = "timm"


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


__all__ = ["TIMM_FOLDER", "render_timm_card", "write_timm_folder"]
