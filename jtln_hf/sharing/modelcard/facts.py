"""What a model card says, as facts gathered from the model, its metrics and the comparison: names,
links, the reported metrics, the strongest teachers in the plan, the training hyperparameters.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ...data import source_rows_per_batch
from ...utils.styles import METHOD_STYLES
from ...version import __version__

__all__ = [
    "HUB_URL",
    "PAPER_URL",
    "PROJECT_URL_LABELS",
    "TAGS",
    "TEACHER_MIN_RATIO",
    "TOP_K_MAX_CHANCE",
    "comparison_facts",
    "cost_ties",
    "default_model_name",
    "has_cost",
    "hub_url",
    "label_names",
    "package_reference",
    "project_urls",
    "reported_metrics",
    "strongest_teachers",
    "top_k_of",
    "training_hyperparameters",
]


PAPER_URL = "https://arxiv.org/abs/1709.02995"
HUB_URL = "https://huggingface.co"
TAGS = ["jtln", "optimal-transport", "transfer-learning", "timm", "image-classification"]
#: Top-k accuracy is reported only when guessing k of the L target classes at random, which scores
#: k / L, would score at most this (top-4 of 5 classes scores 80 % by chance and says nothing).
TOP_K_MAX_CHANCE = 0.1
#: A target class's strongest source class ("teacher") in the mean transport plan is named only
#: when its mass is at least this many times the runner-up's; otherwise no source class stands out.
TEACHER_MIN_RATIO = 1.5
#: Labels of ``[project.urls]`` that name the project's own page, in order of preference.
PROJECT_URL_LABELS = ("homepage", "repository", "source", "source code", "code")


def label_names(model) -> tuple[list[str], list[str]]:
    """(source class names, target class names) of a `JointImageClassifier`, in id order."""
    config = model.config
    source = [config.source_id2label[i] for i in range(config.num_source_labels)]
    target = [config.id2label[i] for i in range(config.num_labels)]
    return source, target


def has_cost(model) -> bool:
    """Whether the model carries a cost matrix (a model trained without OT keeps zeros)."""
    return bool(torch.any(model.cost_matrix != 0))


def project_urls() -> dict[str, str]:
    """The addresses the installed jtln_hf declares (``[project.urls]`` of ``pyproject.toml``), by label.

    The card links only to these, to the paper, and to Hub repositories the run names (its
    ``--hub_model_id``, its base model); no address is made up.
    """
    try:
        metadata = importlib.metadata.metadata("jtln_hf")
    except importlib.metadata.PackageNotFoundError:
        return {}
    urls = {}
    for entry in metadata.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if url.strip():
            urls[label.strip()] = url.strip()
    if metadata.get("Home-page"):
        urls.setdefault("Homepage", metadata["Home-page"])
    return urls


def package_reference() -> str:
    """``jtln_hf <version>``, linked to the project's declared page when it has one (Markdown)."""
    by_label = {label.lower(): url for label, url in project_urls().items()}
    url = next((by_label[label] for label in PROJECT_URL_LABELS if label in by_label), None)
    return f"[jtln_hf]({url}) {__version__}" if url else f"jtln_hf {__version__}"


def hub_url(repo_id: str) -> str:
    """The Hub page of a model repository the run named."""
    return f"{HUB_URL}/{repo_id}"


def default_model_name(method: str | None, backbone: str, dataset: str | None = None) -> str:
    """A repository name from the method, the backbone and the target dataset: ``jtln-resnet18-fashion-mnist``.

    The name of a card whose run was given no ``--hub_model_id`` (a valid Hub repository name:
    letters, digits and single hyphens).
    """
    parts = [method or "jtln", backbone.removeprefix("hf-hub:").split("/")[-1]]
    if dataset:
        parts.append(dataset.rstrip("/").split("/")[-1])
    name = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    return name[:96].rstrip("-")


def top_k_of(metric: str) -> int | None:
    """``k`` of a ``top_<k>_accuracy`` metric name, else None."""
    match = re.fullmatch(r"top_(\d+)_accuracy", metric)
    return int(match.group(1)) if match else None


def reported_metrics(metrics: Mapping[str, float], num_labels: int) -> tuple[dict[str, float], dict[str, float]]:
    """Split target test ``metrics`` into (reported, left out) under :data:`TOP_K_MAX_CHANCE`.

    A ``top_<k>_accuracy`` is reported only when ``k / num_labels <= TOP_K_MAX_CHANCE`` (its
    chance level); ``validation_*`` metrics and the loss are not test metrics and are left to
    the caller.
    """
    reported, left_out = {}, {}
    for name, value in metrics.items():
        k = top_k_of(name)
        (left_out if k is not None and k / num_labels > TOP_K_MAX_CHANCE else reported)[name] = value
    return reported, left_out


def strongest_teachers(
    plan: Any, source_labels: Sequence[str], target_labels: Sequence[str], ratio: float = TEACHER_MIN_RATIO
) -> list[dict[str, Any]]:
    """Per target class: its source classes ranked by mean plan mass, and its teacher when one stands out.

    Returns one dict per target class: ``target``, ``ranked`` (``[(source, mass), ...]``, largest
    first) and ``teacher``: the first source class when its mass is at least ``ratio`` times the
    second's (any mass when it is the only source class), else None.
    """
    plan = np.asarray(plan, dtype=float)
    out = []
    for j, target in enumerate(target_labels):
        order = np.argsort(-plan[:, j], kind="stable")
        ranked = [(source_labels[i], float(plan[i, j])) for i in order]
        bar = ratio * ranked[1][1] if len(ranked) > 1 else 0.0
        stands_out = ranked[0][1] >= bar or bool(np.isclose(ranked[0][1], bar, rtol=1e-9, atol=0.0))  # 1.5 x 0.02
        out.append({"target": target, "ranked": ranked, "teacher": ranked[0][0] if stands_out else None})
    return out


def cost_ties(
    cost: Any, source_labels: Sequence[str], target_labels: Sequence[str], atol: float = 1e-6
) -> dict[str, list[str]]:
    """Target classes whose lowest cost is shared by several source classes: ``{target: [those sources]}``."""
    cost = np.asarray(cost, dtype=float)
    ties = {}
    for j, target in enumerate(target_labels):
        lowest = np.flatnonzero(cost[:, j] <= cost[:, j].min() + atol)
        if len(lowest) > 1:
            ties[target] = [source_labels[i] for i in lowest]
    return ties


def comparison_facts(summary: Mapping[str, Mapping[str, Any]], baseline: str | None = None) -> dict[str, Any]:
    """What the card says about a comparison, from :func:`jtln_hf.experiment.results.summarize`'s ``summary``.

    ``methods`` (row titles, in order), ``seeds`` (when every method ran the same ones, else None),
    ``steps`` (the one budget every method had, else None: the table's "steps per seed" column
    gives each) and ``paired`` (whether the table has the "− ``baseline``" column).
    """
    from ...utils.stats import paired_summary

    seeds = {tuple(entry.get("seeds", ())) for entry in summary.values()}
    steps = {str(entry.get("steps", "")) for entry in summary.values()}
    return {
        "methods": [METHOD_STYLES[m].title if m in METHOD_STYLES else m for m in summary],
        "seeds": list(next(iter(seeds))) if len(seeds) == 1 else None,
        "steps": next(iter(steps)) if len(steps) == 1 and "" not in steps else None,
        "paired": baseline is not None and bool(paired_summary(summary, baseline)),
    }


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
