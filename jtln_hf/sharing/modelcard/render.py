"""The card itself: its figures, the template filled with the facts (:mod:`jtln_hf.sharing.modelcard.facts`), the
files written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ...cost import NORMALIZATIONS
from ...utils.io import atomic_write_text
from ...utils.styles import METHOD_STYLES, default_method
from .. import figures as _figures
from .facts import (
    PAPER_URL,
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
    reported_metrics,
    strongest_teachers,
    top_k_of,
)

__all__ = [
    "COMPARE_FIGURE",
    "COST_FIGURE",
    "METRIC_NAMES",
    "NORMALIZATION_TEXT",
    "PLAN_FIGURE",
    "TEMPLATE_PATH",
    "cost_markdown",
    "eval_results",
    "render_model_card",
    "save_model_card",
    "write_figures",
    "write_model_card",
]

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "resources" / "model_card_template.md"
COST_FIGURE = "cost_matrix.png"
PLAN_FIGURE = "transport_plan.png"
COMPARE_FIGURE = "compare.png"
METRIC_NAMES = {"accuracy": "Accuracy", "mean_per_class_accuracy": "Mean per-class accuracy"}
#: The card's sentence on what ``--cost_normalization`` did to C (:data:`jtln_hf.cost.NORMALIZATIONS`).
NORMALIZATION_TEXT = {name: f"C was {what}." for name, what in NORMALIZATIONS.items()}
NORMALIZATION_TEXT["column"] += (
    " A 0 therefore marks the cheapest source class *of that target class*, not a close one: a target class "
    "with no close source class gets cost-0 source classes all the same."
)


def cost_markdown(cost: Any, source_labels: Sequence[str], target_labels: Sequence[str], digits: int = 2) -> str:
    """The cost matrix as a Markdown table (rows source classes, columns target classes)."""
    header = "| source \\ target | " + " | ".join(target_labels) + " |"
    rule = "|---" * (len(target_labels) + 1) + "|"
    rows = [
        f"| {name} | " + " | ".join(f"{float(v):.{digits}f}" for v in row) + " |"
        for name, row in zip(source_labels, np.asarray(cost))
    ]
    return "\n".join([header, rule, *rows])


def eval_results(
    metrics: Mapping[str, float], *, dataset_type: str, dataset_name: str, split: str = "test"
) -> list[EvalResult]:
    """``model-index`` entries (image classification on the target test set) for each metric."""
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=name,
            metric_name=_metric_name(name),
            metric_value=round(float(value), 4),
        )
        for name, value in metrics.items()
    ]


def write_figures(
    folder: str | os.PathLike,
    model,
    *,
    plan: np.ndarray | None = None,
    plan_images: int | None = None,
    summary: Mapping[str, Any] | None = None,
    cost_normalization: str | None = None,
    baseline: str | None = None,
) -> dict[str, str]:
    """Draw the card's PNGs into ``folder``; return ``{"cost"|"plan"|"compare": file name}`` of those drawn.

    The cost heatmap needs a non-zero cost matrix, the plan heatmap a ``plan`` (see
    :func:`jtln_hf.sinkhorn.mean_transport_plan`), the comparison (:func:`jtln_hf.sharing.figures.compare_figure`: paired
    differences to ``baseline``, accuracy per method) a ``summary`` of several methods. The cost heatmap's
    title names ``cost_normalization`` and what it did.
    """
    folder = Path(folder)
    source, target = label_names(model)
    drawn: dict[str, str] = {}
    if has_cost(model):
        _figures.plot_cost_matrix(model.cost_matrix.detach().cpu().numpy(), source, target, folder / COST_FIGURE,
                                  normalization=cost_normalization)  # fmt: skip
        drawn["cost"] = COST_FIGURE
    if plan is not None:
        _figures.plot_transport_plan(plan, source, target, folder / PLAN_FIGURE, num_images=plan_images)
        drawn["plan"] = PLAN_FIGURE
    if summary is not None and len(summary) > 1:
        _figures.plot_compare(summary, folder / COMPARE_FIGURE, baseline)
        drawn["compare"] = COMPARE_FIGURE
    return drawn


def render_model_card(
    model,
    *,
    repo_id: str | None = None,
    model_name: str | None = None,
    method: str | None = None,
    seed: int | None = None,
    cost_description: str = "",
    cost_normalization: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    results_table: str | None = None,
    summary: Mapping[str, Mapping[str, Any]] | None = None,
    metrics: Mapping[str, float] | None = None,
    datasets: list[str] | None = None,
    dataset_name: str | None = None,
    eval_dataset: str | None = None,
    figures: Mapping[str, str] | None = None,
    plan: np.ndarray | None = None,
    plan_images: int | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] | None = None,
    base_model: str | None = None,
    timm_export: str | None = None,
    baseline: str | None = None,
    source_head_trained: bool = True,
) -> ModelCard:
    """Render the card of ``model`` (a `JointImageClassifier`) from ``model_card_template.md``.

    Every sentence that states a fact about the run is built from these arguments (or left out
    when they do not give it); the card links only to the paper, to the project's declared
    ``[project.urls]`` (:func:`project_urls`) and to Hub repositories named here.

    Parameters
    ----------
    model : JointImageClassifier
        The trained model (labels, backbone, cost matrix and data config are read from it).
    repo_id : str, optional
        The Hub repository the run was given (``--hub_model_id``): the card's name and the id in
        the loading examples. Without one (or with a bare name, which goes to the pusher's
        namespace) the examples use ``your-name/<model_name>`` and say it is a placeholder.
    model_name : str, optional
        The card's title and ``model-index`` name; default: ``repo_id``'s name, else
        :func:`default_model_name` of the method, backbone and evaluation dataset.
    method : str, optional
        The method that trained this checkpoint (a name in :data:`jtln_hf.utils.styles.METHOD_STYLES`).
    seed : int, optional
        The seed of this checkpoint's run (named in the comparison).
    cost_description : str
        How C was built (one sentence).
    cost_normalization : str, optional
        The ``--cost_normalization`` applied to C (what it did is said under the cost matrix).
    hyperparameters : mapping
        Rows of the training table (see :func:`training_hyperparameters`).
    results_table : str, optional
        The comparison table (Markdown) when several methods were run.
    summary : mapping, optional
        The comparison's :func:`jtln_hf.experiment.results.summarize`: the methods, seeds and step budgets
        the card states about it.
    metrics : mapping, optional
        Target test metrics (fractions), written to the card and to the ``model-index`` metadata;
        top-k only under :data:`TOP_K_MAX_CHANCE`, ``validation_*`` as the validation set's.
    datasets : list of str, optional
        Hub dataset ids for the metadata.
    dataset_name : str, optional
        Human-readable name of the evaluation set.
    eval_dataset : str, optional
        The ``model-index`` dataset type of the evaluation set: its Hub id, or a plain name for
        local data (default: the first of ``datasets``, else ``"custom"``).
    figures : mapping, optional
        File names of the PNGs next to the card (:func:`write_figures`).
    plan : numpy.ndarray, optional
        The mean transport plan, to name the strongest source class of each target class where
        one stands out (:func:`strongest_teachers`, :data:`TEACHER_MIN_RATIO`).
    plan_images : int, optional
        Number of target test images the plan was averaged over.
    license : str
        SPDX-style license id of the weights.
    tags : sequence of str, optional
        Tags added to the default ones (``jtln``, ``optimal-transport``, ...).
    base_model : str, optional
        Hub id of the model this one was fine-tuned from; default: the timm weights' Hub id when
        the backbone started pretrained.
    timm_export : str, optional
        Where a plain timm copy of the target network is, as ``timm.create_model`` takes it:
        ``"hf-hub:user/name"`` (a Hub repository) or ``"local-dir:<folder>"`` (a folder of this
        repository). None: there is none, and the card says the Hub widget does not run this model.
    baseline : str, optional
        The method the comparison pairs every other one with, seed by seed (the registry's
        :func:`jtln_hf.methods.baseline_method`); None: no paired comparison.
    source_head_trained : bool
        Whether the method trained the source head (its :class:`jtln_hf.methods.Method` fact).
    """
    config = model.config
    source_labels, target_labels = label_names(model)
    placeholder = not repo_id or "/" not in repo_id
    registered = METHOD_STYLES.get(method) if method else None
    intro = registered or METHOD_STYLES[default_method(uses_ot=has_cost(model))]  # what trained it, if not said
    name = model_name or (repo_id.split("/")[-1] if repo_id else None) or default_model_name(
        method, config.backbone, eval_dataset or (datasets[-1] if datasets else None))  # fmt: skip
    shown_repo = f"your-name/{name}" if placeholder else repo_id
    metrics = {k: v for k, v in (metrics or {}).items() if k != "loss"}
    validation = {k.removeprefix("validation_"): v for k, v in metrics.items() if k.startswith("validation_")}
    test_metrics, left_out = reported_metrics(
        {k: v for k, v in metrics.items() if not k.startswith("validation_")}, len(target_labels))  # fmt: skip
    dataset_name = dataset_name or (datasets[0] if datasets else "target test set")
    pretrained_cfg = getattr(model.backbone, "pretrained_cfg", None) or {}
    if base_model is None and config.pretrained_backbone and not pretrained_cfg.get("file"):
        base_model = pretrained_cfg.get("hf_hub_id") or None  # a local weights file has no Hub id
    card_data = ModelCardData(
        library_name="transformers",
        license=license,
        pipeline_tag="image-classification",
        tags=list(dict.fromkeys([*TAGS, *(tags or [])])),
        datasets=datasets,
        metrics=sorted(test_metrics) or None,
        base_model=base_model,
        model_name=name,
        eval_results=eval_results(
            test_metrics, dataset_type=eval_dataset or (datasets or ["custom"])[0], dataset_name=dataset_name
        ) or None,
        backbone=config.backbone,
    )
    in_chans, height, width = config.data_config["input_size"]
    teachers = None
    if plan is not None:
        teachers = [
            f"{t['target']} ← {t['ranked'][0][0]} ({_mass(t['ranked'][0][1])} vs {_mass(t['ranked'][1][1])})"
            if t["teacher"] and len(t["ranked"]) > 1 else f"{t['target']} ← {t['teacher']}" if t["teacher"] else
            f"{t['target']}: none stands out ({', '.join(f'{s} {_mass(m)}' for s, m in t['ranked'][:3])})"
            for t in strongest_teachers(plan, source_labels, target_labels)
        ]  # fmt: skip
    cost = model.cost_matrix.detach().cpu().numpy()
    comparison_text, compare_alt = "", "Comparison: target test accuracy per method"
    if results_table:
        comparison_text, compare_alt = _comparison_text(summary, registered, seed, baseline)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=name,
        repo_id=shown_repo,
        repo_placeholder=placeholder,
        package=package_reference(),
        method_title=intro.title,
        method_uses_ot=intro.uses_ot,
        source_head_trained=source_head_trained,
        paper_url=PAPER_URL,
        backbone=config.backbone,
        pretrained_backbone=bool(config.pretrained_backbone),
        base_model=base_model,
        base_model_url=hub_url(base_model) if base_model else None,
        timm_export=_timm_export(timm_export),
        input_description=f"{'grayscale' if in_chans == 1 else 'RGB'} {height}×{width}",
        source_labels=source_labels,
        target_labels=target_labels,
        has_cost=has_cost(model),
        cost_description=cost_description,
        cost_normalization=cost_normalization,
        normalization_text=NORMALIZATION_TEXT.get(cost_normalization or ""),
        cost_ties=cost_ties(cost, source_labels, target_labels) if has_cost(model) else {},
        cost_table=cost_markdown(cost, source_labels, target_labels),
        hyperparameters=dict(hyperparameters or {}),
        results_table=results_table,
        comparison_text=comparison_text,
        compare_alt=compare_alt,
        metrics={_metric_name(k): f"{100 * v:.2f} %" for k, v in test_metrics.items()},
        metrics_left_out=[_left_out_text(k, len(target_labels)) for k in left_out],
        validation_metrics={_metric_name(k): f"{100 * v:.2f} %" for k, v in validation.items()},
        dataset_name=dataset_name,
        figures=dict(figures or {}),
        teachers=teachers,
        teacher_ratio=f"{TEACHER_MIN_RATIO:g}",
        plan_images=plan_images,
    )


def _mass(value: float) -> str:
    return f"{value:.3g}"


def _metric_name(metric: str) -> str:
    k = top_k_of(metric)
    return f"Top-{k} accuracy" if k is not None else METRIC_NAMES.get(metric, metric.replace("_", " ").capitalize())


def _left_out_text(metric: str, num_labels: int) -> str:
    k = top_k_of(metric)
    return (
        f"{_metric_name(metric)} is not reported: guessing {k} of the {num_labels} target classes at random scores "
        f"{100 * k / num_labels:.0f} %. This card reports a top-k accuracy only when that chance level, k / "
        f"{num_labels}, is at most {100 * TOP_K_MAX_CHANCE:.0f} %."
    )


def _timm_export(spec: str | None) -> dict[str, str]:
    """Template facts of a ``timm_export``: ``repo`` and ``url`` (a Hub repository) or ``folder``, and ``name``."""
    if not spec:
        return {}
    if spec.startswith("hf-hub:"):
        repo = spec.removeprefix("hf-hub:")
        return {"repo": repo, "url": hub_url(repo), "name": spec}
    folder = spec.removeprefix("local-dir:").strip("/")
    return {"folder": folder, "name": f"local-dir:{folder}"}


def _comparison_text(summary, checkpoint, seed, baseline: str | None) -> tuple[str, str]:
    """The sentences above the comparison table, and the comparison figure's alt text, from ``summary``."""
    sentences, alt = [], "Comparison: target test accuracy per method"
    if summary:
        facts = comparison_facts(summary, baseline)
        n = len(facts["methods"])
        seeds = f" and seeds ({', '.join(map(str, facts['seeds']))})" if facts["seeds"] else ""
        sentences.append(f"Target test accuracy of the {n} methods this run compared ({'; '.join(facts['methods'])}), "
                         f"on the same data{seeds}.")  # fmt: skip
        if facts["steps"] is not None:
            sentences.append(f"Every method trained the same budget per seed ({facts['steps']} steps).")
        else:
            sentences.append('Their training budgets differ: the "steps per seed" column gives each method\'s.')
        if facts["paired"]:
            sentences.append(
                "For a seed every method sees the same target images and initial weights, so the "
                f'"− {baseline}" column compares each method with {baseline} fine-tuning seed by seed: mean '
                "difference in percentage points, its 95% Student-t interval and the number of seeds won."
            )
            alt = (f"Comparison: per-seed difference to {baseline} fine-tuning with mean and 95% interval; "
                   "target test accuracy per method")  # fmt: skip
    if checkpoint is not None:
        on_seed = "" if seed is None else f" on seed {seed}"
        sentences.append(f"This checkpoint is the run of {checkpoint.title}{on_seed}.")
    return " ".join(sentences), alt


def save_model_card(card: ModelCard, folder: str | os.PathLike) -> Path:
    """Write the card as ``README.md`` in ``folder`` (atomically)."""
    return atomic_write_text(Path(folder) / "README.md", str(card))


def write_model_card(
    folder: str | os.PathLike,
    model,
    *,
    plan: np.ndarray | None = None,
    plan_images: int | None = None,
    summary: Mapping[str, Any] | None = None,
    **render_kwargs: Any,
) -> ModelCard:
    """Draw the figures into ``folder``, render the card that shows them and save it as ``README.md``.

    ``render_kwargs`` go to :func:`render_model_card`. Returns the card.
    """
    drawn = write_figures(folder, model, plan=plan, plan_images=plan_images, summary=summary,
                          cost_normalization=render_kwargs.get("cost_normalization"),
                          baseline=render_kwargs.get("baseline"))  # fmt: skip
    card = render_model_card(model, figures=drawn, plan=plan, plan_images=plan_images, summary=summary, **render_kwargs)
    save_model_card(card, folder)
    return card
