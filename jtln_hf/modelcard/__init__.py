"""The model card of a trained JTLN model: ``README.md`` and its figures, ready for the Hub.

``huggingface_hub.ModelCard.from_template`` fills the Jinja template ``model_card_template.md``
and writes the YAML metadata block (library, tags, datasets, metrics with their values as
``model-index``, base model, license); :mod:`jtln_hf.figures` draws the PNGs the card shows
(cost matrix, mean transport plan, comparison). This module gathers what the card says.

Used by :func:`jtln_hf.results.save_model` (the recipe's ``model/`` folder) and by
:meth:`jtln_hf.trainer.JTLNTrainer.create_model_card` (what ``Trainer.push_to_hub`` publishes).
"""

from __future__ import annotations

from .facts import (
    HUB_URL,
    PAPER_URL,
    PROJECT_URL_LABELS,
    TAGS,
    TEACHER_MIN_RATIO,
    TOP_K_MAX_CHANCE,
    comparison_facts,
    cost_ties,
    default_model_name,
    has_cost,
    hub_url,
    label_names,
    package_reference,
    project_urls,
    reported_metrics,
    strongest_teachers,
    top_k_of,
    training_hyperparameters,
)
from .render import (
    COMPARE_FIGURE,
    COST_FIGURE,
    METRIC_NAMES,
    NORMALIZATION_TEXT,
    PLAN_FIGURE,
    TEMPLATE_PATH,
    cost_markdown,
    eval_results,
    render_model_card,
    save_model_card,
    write_figures,
    write_model_card,
)

__all__ = [
    "COMPARE_FIGURE",
    "COST_FIGURE",
    "HUB_URL",
    "METRIC_NAMES",
    "NORMALIZATION_TEXT",
    "PAPER_URL",
    "PLAN_FIGURE",
    "PROJECT_URL_LABELS",
    "TAGS",
    "TEACHER_MIN_RATIO",
    "TEMPLATE_PATH",
    "TOP_K_MAX_CHANCE",
    "comparison_facts",
    "cost_markdown",
    "cost_ties",
    "default_model_name",
    "eval_results",
    "has_cost",
    "hub_url",
    "label_names",
    "package_reference",
    "project_urls",
    "render_model_card",
    "reported_metrics",
    "save_model_card",
    "strongest_teachers",
    "top_k_of",
    "training_hyperparameters",
    "write_figures",
    "write_model_card",
]
