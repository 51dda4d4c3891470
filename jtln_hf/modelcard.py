"""The model card of a trained JTLN model: ``README.md`` and its figures, ready for the Hub.

``huggingface_hub.ModelCard.from_template`` fills the Jinja template ``model_card_template.md``
and writes the YAML metadata block (library, tags, datasets, metrics with their values as
``model-index``, base model, license); :mod:`jtln_hf.figures` draws the PNGs the card shows
(cost matrix, mean transport plan, comparison). This module gathers what the card says.

Used by :func:`jtln_hf.results.save_model` (the recipe's ``model/`` folder) and by
:meth:`jtln_hf.trainer.JTLNTrainer.create_model_card` (what ``Trainer.push_to_hub`` publishes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from . import figures as _figures
from .data import source_rows_per_batch
from .io import atomic_write_text

TEMPLATE_PATH = Path(__file__).parent / "resources" / "model_card_template.md"
COST_FIGURE = "cost_matrix.png"
PLAN_FIGURE = "transport_plan.png"
COMPARE_FIGURE = "compare.png"
PAPER_URL = "https://arxiv.org/abs/1709.02995"
TAGS = ["jtln", "optimal-transport", "transfer-learning", "timm", "image-classification"]
METRIC_NAMES = {"accuracy": "Accuracy", "mean_per_class_accuracy": "Mean per-class accuracy"}


def cost_markdown(cost: Any, source_labels: Sequence[str], target_labels: Sequence[str], digits: int = 2) -> str:
    """The cost matrix as a Markdown table (rows source classes, columns target classes)."""
    header = "| source \\ target | " + " | ".join(target_labels) + " |"
    rule = "|---" * (len(target_labels) + 1) + "|"
    rows = [
        f"| {name} | " + " | ".join(f"{float(v):.{digits}f}" for v in row) + " |"
        for name, row in zip(source_labels, np.asarray(cost))
    ]
    return "\n".join([header, rule, *rows])


def label_names(model) -> tuple[list[str], list[str]]:
    """(source class names, target class names) of a `JointImageClassifier`, in id order."""
    config = model.config
    source = [config.source_id2label[i] for i in range(config.num_source_labels)]
    target = [config.id2label[i] for i in range(config.num_labels)]
    return source, target


def has_cost(model) -> bool:
    """Whether the model carries a cost matrix (a model trained without OT keeps zeros)."""
    return bool(torch.any(model.cost_matrix != 0))


def mean_transport_plan(
    source_logits: Any,
    logits: Any,
    cost: Any,
    *,
    epsilon: float,
    iterations: int,
    method: str = "auto",
    tol: float | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    r"""Mean entropic OT plan between the two heads' predictions, over a set of images.

    .. math::
        \bar\gamma = \frac1N \sum_{n=1}^N \gamma^*\big(\mathrm{softmax}(h_s(x_n)),\,
        \mathrm{softmax}(h_t(x_n));\, C, \varepsilon\big)

    with :math:`\gamma^*` from :func:`jtln_hf.ot.transport_plan` (the plan whose cost the
    training loss adds). :math:`\bar\gamma` sums to 1; its row ``s`` sums to the mean source
    probability of class ``s`` and its column ``t`` to the mean target probability of ``t``.

    Parameters
    ----------
    source_logits : array-like, shape (N, L_s)
        Source-head scores ``outputs.source_logits``.
    logits : array-like, shape (N, L_t)
        Target-head scores ``outputs.logits``.
    cost : array-like, shape (L_s, L_t)
        The ground cost C.
    epsilon, iterations, method, tol
        As in training (``ot_epsilon``, ``ot_iterations``, ``ot_method``, ``ot_tol``).
    batch_size : int
        Images per call to the solver.

    Returns
    -------
    numpy.ndarray, shape (L_s, L_t)
    """
    from .ot import transport_plan

    source_logits = torch.as_tensor(np.asarray(source_logits), dtype=torch.float32)
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float32)
    cost = torch.as_tensor(np.asarray(cost), dtype=torch.float32)
    if len(source_logits) != len(logits) or len(logits) == 0:
        raise ValueError(
            f"need as many source as target predictions, and at least one: got {len(source_logits)} and {len(logits)}."
        )
    total = torch.zeros(cost.shape, dtype=torch.float64)
    for start in range(0, len(logits), batch_size):
        a = source_logits[start : start + batch_size].softmax(-1)
        b = logits[start : start + batch_size].softmax(-1)
        plans = transport_plan(a, b, cost, epsilon=epsilon, iterations=iterations, method=method, tol=tol)
        total += plans.double().sum(0)
    return (total / len(logits)).numpy()


def training_hyperparameters(args, *, steps: int | None = None, ot_used: bool = True) -> dict[str, Any]:
    """The card's hyper-parameter rows: λ_s, λ_ot, the OT settings (ε, iterations, tol, solver, objective), batch."""
    batch = args.per_device_train_batch_size
    n_source = source_rows_per_batch(batch, args.source_fraction)
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return {
        "steps": steps if steps is not None else args.max_steps,
        "batch (per device)": f"{batch} = {n_source} source + {batch - n_source} target images",
        "source fraction (ratio)": args.source_fraction,
        "λ_s (source_loss_weight)": args.source_loss_weight,
        "λ_ot (ot_loss_weight)": args.ot_loss_weight if ot_used else 0.0,
        "ε (ot_epsilon)": args.ot_epsilon,
        "Sinkhorn iterations (ot_iterations)": args.ot_iterations,
        "Sinkhorn stopping tolerance (ot_tol)": "none (fixed iterations)" if args.ot_tol is None else args.ot_tol,
        "Sinkhorn solver (ot_method)": args.ot_method,
        "OT value and gradient (ot_objective)": args.ot_objective,
        "optimiser": (
            f"{getattr(args.optim, 'value', args.optim)}, lr {args.learning_rate:g}, weight decay "
            f"{args.weight_decay:g}, {getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)} schedule"
        ),
        "precision": precision,
    }


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
            metric_name=METRIC_NAMES.get(name, name.replace("_", " ").capitalize()),
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
) -> dict[str, str]:
    """Draw the card's PNGs into ``folder``; return ``{"cost"|"plan"|"compare": file name}`` of those drawn.

    The cost heatmap needs a non-zero cost matrix, the plan heatmap a ``plan`` (see
    :func:`mean_transport_plan`), the comparison (:func:`jtln_hf.figures.compare_figure`: paired
    differences to joint, accuracy per method) a ``summary`` of several methods.
    """
    folder = Path(folder)
    source, target = label_names(model)
    drawn: dict[str, str] = {}
    if has_cost(model):
        _figures.plot_cost_matrix(model.cost_matrix.detach().cpu().numpy(), source, target, folder / COST_FIGURE)
        drawn["cost"] = COST_FIGURE
    if plan is not None:
        _figures.plot_transport_plan(plan, source, target, folder / PLAN_FIGURE, num_images=plan_images)
        drawn["plan"] = PLAN_FIGURE
    if summary is not None and len(summary) > 1:
        _figures.plot_compare(summary, folder / COMPARE_FIGURE)
        drawn["compare"] = COMPARE_FIGURE
    return drawn


def render_model_card(
    model,
    *,
    repo_id: str = "your-name/your-jtln-model",
    cost_description: str = "",
    hyperparameters: Mapping[str, Any] | None = None,
    results_table: str | None = None,
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
) -> ModelCard:
    """Render the card of ``model`` (a `JointImageClassifier`) from ``model_card_template.md``.

    Parameters
    ----------
    model : JointImageClassifier
        The trained model (labels, backbone, cost matrix and data config are read from it).
    repo_id : str
        Hub id used in the loading examples.
    cost_description : str
        How C was built (one sentence).
    hyperparameters : mapping
        Rows of the training table (see :func:`training_hyperparameters`).
    results_table : str, optional
        The comparison table (Markdown) when several methods were run.
    metrics : mapping, optional
        Target test metrics (fractions), written to the card and to the ``model-index`` metadata.
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
        The mean transport plan, to name the strongest source class of each target class.
    plan_images : int, optional
        Number of target test images the plan was averaged over.
    license : str
        SPDX-style license id of the weights.
    tags : sequence of str, optional
        Tags added to the default ones (``jtln``, ``optimal-transport``, ...).
    base_model : str, optional
        Hub id of the model this one was fine-tuned from; default: the timm weights' Hub id when
        the backbone started pretrained.
    """
    config = model.config
    source_labels, target_labels = label_names(model)
    name = repo_id.split("/")[-1]
    metrics = dict(metrics or {})
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
        metrics=sorted(metrics) or None,
        base_model=base_model,
        model_name=name,
        eval_results=eval_results(
            metrics, dataset_type=eval_dataset or (datasets or ["custom"])[0], dataset_name=dataset_name
        ) or None,
        backbone=config.backbone,
    )
    in_chans, height, width = config.data_config["input_size"]
    teachers = None
    if plan is not None:
        plan = np.asarray(plan)
        teachers = [(target_labels[j], source_labels[int(plan[:, j].argmax())]) for j in range(len(target_labels))]
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=name,
        repo_id=repo_id,
        paper_url=PAPER_URL,
        backbone=config.backbone,
        pretrained_backbone=bool(config.pretrained_backbone),
        input_description=f"{'grayscale' if in_chans == 1 else 'RGB'} {height}×{width}",
        source_labels=source_labels,
        target_labels=target_labels,
        has_cost=has_cost(model),
        cost_description=cost_description,
        cost_table=cost_markdown(model.cost_matrix.detach().cpu().numpy(), source_labels, target_labels),
        hyperparameters=dict(hyperparameters or {}),
        results_table=results_table,
        metrics={METRIC_NAMES.get(k, k.replace("_", " ")): f"{100 * v:.2f} %" for k, v in metrics.items()},
        dataset_name=dataset_name,
        figures=dict(figures or {}),
        teachers=teachers,
        plan_images=plan_images,
    )


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
    drawn = write_figures(folder, model, plan=plan, plan_images=plan_images, summary=summary)
    card = render_model_card(model, figures=drawn, plan=plan, plan_images=plan_images, **render_kwargs)
    save_model_card(card, folder)
    return card


__all__ = [
    "COMPARE_FIGURE",
    "COST_FIGURE",
    "PLAN_FIGURE",
    "cost_markdown",
    "eval_results",
    "mean_transport_plan",
    "render_model_card",
    "save_model_card",
    "training_hyperparameters",
    "write_figures",
    "write_model_card",
]
