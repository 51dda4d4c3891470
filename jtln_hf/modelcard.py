"""The model card of a trained JTLN model, rendered from ``model_card_template.md``.

``huggingface_hub.ModelCard.from_template`` fills the Jinja template and writes the YAML
metadata block; this module only gathers what the card says about the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .io import atomic_write_text

TEMPLATE_PATH = Path(__file__).parent / "resources" / "model_card_template.md"


def cost_markdown(cost, source_labels, target_labels, digits: int = 2) -> str:
    """The cost matrix as a Markdown table (rows source classes, columns target classes)."""
    header = "| source \\ target | " + " | ".join(target_labels) + " |"
    rule = "|---" * (len(target_labels) + 1) + "|"
    rows = [
        f"| {name} | " + " | ".join(f"{float(v):.{digits}f}" for v in row) + " |"
        for name, row in zip(source_labels, cost)
    ]
    return "\n".join([header, rule, *rows])


def render_model_card(
    model,
    *,
    repo_id: str = "your-name/your-jtln-model",
    cost_description: str = "",
    hyperparameters: dict[str, Any] | None = None,
    results_table: str | None = None,
    metrics: dict[str, float] | None = None,
    datasets: list[str] | None = None,
) -> ModelCard:
    """Render the card of ``model`` (a `JointImageClassifier`)."""
    config = model.config
    source_labels = [config.source_id2label[i] for i in range(config.num_source_labels)]
    target_labels = [config.id2label[i] for i in range(config.num_labels)]
    card_data = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        pipeline_tag="image-classification",
        tags=["jtln", "optimal-transport", "transfer-learning", "timm", "image-classification"],
        datasets=datasets,
        metrics=sorted(metrics) if metrics else None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        backbone=config.backbone,
        source_labels=source_labels,
        target_labels=target_labels,
        cost_description=cost_description,
        cost_table=cost_markdown(model.cost_matrix.cpu().numpy(), source_labels, target_labels),
        hyperparameters=hyperparameters or {},
        results_table=results_table,
    )


def save_model_card(card: ModelCard, folder: str | os.PathLike) -> Path:
    """Write the card as ``README.md`` in ``folder`` (atomically)."""
    return atomic_write_text(Path(folder) / "README.md", str(card))
