"""Results of a comparison: the per-method summary, the Markdown table, ``results.json`` and the model folder.

:func:`summarize` reduces the runs of every seed to a mean and a sample standard deviation per
method; :func:`results_markdown` writes the table every README and card shows, with each
method's seed-paired difference to the registered baseline, joint fine-tuning
(:func:`jtln_hf.methods.baseline_method`, :mod:`jtln_hf.stats`); :func:`save_model`
writes the Hub-ready ``model/`` folder (weights, code, card, figures).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .hub import save_model_folder
from .io import atomic_write_dir, atomic_write_text
from .methods import METHOD_REGISTRY, MethodSettings, RunResult, baseline_method, predict_outputs
from .data.bad_images import write_bad_images
from .data.pools import ExperimentData
from .data.sources import display_name, hub_dataset_id
from .modelcard import default_model_name, has_cost, training_hyperparameters, write_model_card
from .share import TIMM_FOLDER, example_images, write_demo, write_timm_folder
from .sinkhorn import mean_transport_plan
from .stats import paired_summary

if TYPE_CHECKING:
    from .training_args import JTLNTrainingArguments


def summarize(runs: list[RunResult]) -> dict[str, dict[str, Any]]:
    """Mean and sample standard deviation (ddof=1) of each metric per method."""
    summary: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        entry: dict[str, Any] = {"seeds": [r.seed for r in mine], "train_seconds": sum(r.train_seconds for r in mine),
                                 "steps": mine[0].steps}  # fmt: skip
        keys = ["accuracy", "mean_per_class_accuracy"]
        keys += [k for k in ("validation_accuracy", "validation_mean_per_class_accuracy") if k in mine[0].metrics]
        for key in keys:
            values = np.array([r.metrics[key] for r in mine])
            entry[key] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "per_seed": values.tolist(),
            }
        summary[method] = entry
    return summary


def results_markdown(summary: dict[str, dict[str, Any]], caption: str = "", baseline: str | None = None) -> str:
    """The comparison table: mean ± std (over seeds) of target test accuracy, in percent.

    When the ``baseline`` method (default: the registered one, joint fine-tuning) ran with other
    methods, a column gives each method's seed-paired difference to it in percentage points
    (:func:`jtln_hf.stats.paired_difference`): mean [95 % Student-t interval], seeds won / seeds
    paired; "—" on the baseline's own row.
    """
    baseline = baseline or baseline_method()
    paired = paired_summary(summary, baseline)
    diff_head = f" − {baseline} (points, 95% CI, wins) |" if paired else ""
    lines = [
        f"| method | accuracy (%) |{diff_head} mean per-class accuracy (%) | steps per seed | seeds | train time (s) |",
        "|---|---|" + ("---|" if paired else "") + "---|---|---|---|",
    ]
    best = max(summary, key=lambda m: summary[m]["accuracy"]["mean"])
    for method, entry in summary.items():
        acc, mpc = entry["accuracy"], entry["mean_per_class_accuracy"]
        acc_text = f"{100 * acc['mean']:.1f} ± {100 * acc['std']:.1f}"
        if method == best:
            acc_text = f"**{acc_text}**"
        diff_text = f" {paired[method].to_text() if method in paired else '—'} |" if paired else ""
        lines.append(
            f"| {METHOD_REGISTRY[method].title} | {acc_text} |{diff_text} {100 * mpc['mean']:.1f} ± {100 * mpc['std']:.1f} "
            f"| {entry.get('steps', '')} | {len(entry['seeds'])} | {entry['train_seconds']:.0f} |"
        )
    table = "\n".join(lines)
    if paired:
        table += (
            f"\n\n− {baseline}: accuracy minus {baseline} fine-tuning's on the same seed (same target images and "
            "initial weights), in percentage points: mean [95% Student-t interval, n − 1 degrees of freedom], "
            f"seeds where the method beats {baseline} / seeds paired."
        )
    return f"{caption}\n\n{table}\n" if caption else table + "\n"


def write_results(output_dir: str | Path, summary: dict, runs: list[RunResult], meta: dict[str, Any], caption: str) -> str:
    """Write ``results.json`` and ``results.md`` atomically; return the Markdown table.

    ``results.json`` holds ``meta``, the ``summary``, every run's metrics and skipped rows
    (``bad_images``: how many images its stages could not decode) and ``"paired"``:
    ``{"<method>-<baseline>": PairedDifference.to_dict()}`` of the accuracy (fractions), for every
    method but the baseline (the registered one, joint); empty when the baseline did not run.
    Rows skipped by any run are listed in ``bad_images.json`` (with method, seed and stage); no
    file when none was.
    """
    output_dir = Path(output_dir)
    baseline = baseline_method()
    table = results_markdown(summary, caption, baseline)
    payload = {
        **meta,
        "summary": summary,
        "paired": {f"{m}-{baseline}": d.to_dict() for m, d in paired_summary(summary, baseline).items()},
        "runs": [
            {"method": r.method, "seed": r.seed, "steps": r.steps, "train_seconds": r.train_seconds,
             "bad_images": len(r.bad_images), **r.metrics}  # fmt: skip
            for r in runs
        ],
    }
    write_bad_images(output_dir, [{"method": r.method, "seed": r.seed, **b} for r in runs for b in r.bad_images])
    atomic_write_text(output_dir / "results.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(output_dir / "results.md", table)
    return table


def save_model(
    run: RunResult, output_dir: str | Path, args: JTLNTrainingArguments, settings: MethodSettings,
    results_table: str | None = None, *, exp: ExperimentData | None = None,
    summary: dict[str, dict[str, Any]] | None = None,
) -> Path:  # fmt: skip
    """Write the Hub-ready ``output_dir/model`` folder, atomically (``settings``: the plan's data and cost values).

    It holds the weights (safetensors), ``config.json`` and ``preprocessor_config.json`` with their
    remote code (``configuration_jtln.py``, ``modeling_jtln.py``, ``image_processing_jtln.py``),
    the card ``README.md`` and its figures: the cost matrix, the mean transport plan over
    ``exp.target_test`` (when the model has a cost matrix and ``exp`` is given) and, for a
    comparison (``summary`` of several methods), the bar chart. ``--push_to_hub`` uploads it as is.
    Every process must call it (the plan is a gathered forward pass); the main process writes.
    """
    model, data, method = run.model, settings.data, METHOD_REGISTRY[run.method]
    hyper: dict[str, Any] = {
        "method": method.title,
        "seed": run.seed,
        "labelled images per target class": data.shots or "all",
        **training_hyperparameters(args, ot_used=method.uses_ot),
    }
    hyper["steps"] = run.steps or hyper["steps"]  # the method's budget, e.g. "4 source + 4 target"
    plan, plan_images = None, None
    if exp is not None and has_cost(model):
        outputs, _ = predict_outputs(model, exp.target_test, data, args, ("source_logits", "logits"))
        plan = mean_transport_plan(
            outputs["source_logits"], outputs["logits"], model.cost_matrix.detach().cpu(),
            epsilon=args.ot_epsilon, iterations=args.ot_iterations, method=args.ot_method, tol=args.ot_tol,
        )  # fmt: skip
        plan_images = len(outputs["logits"])
    specs = data.specs
    dataset_ids = [i for i in dict.fromkeys(hub_dataset_id(spec) for spec in specs) if i]  # local data: no id
    data_name = display_name(specs[-1])
    target_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    normalized = method.uses_ot and settings.cost.normalized
    card_kwargs = dict(
        repo_id=args.hub_model_id,  # None: the card names a placeholder built from method, backbone and data
        model_name=None if args.hub_model_id else default_model_name(run.method, model.config.backbone, data_name),
        method=run.method,
        seed=run.seed,
        cost_description=run.cost_description or "No cost matrix was used (no OT term).",
        cost_normalization=settings.cost.normalization if normalized else None,
        hyperparameters=hyper,
        results_table=results_table,
        metrics={k: v for k, v in run.metrics.items() if k != "loss"},
        datasets=dataset_ids,
        dataset_name=f"{data_name} {data.test_split_name} split, target classes ({', '.join(target_names)})",
        eval_dataset=hub_dataset_id(specs[-1]) or data_name,
        baseline=baseline_method(),
        source_head_trained=method.trains_source,
    )

    examples = example_images(exp.target_test, target_names) if exp is not None else []
    ot_settings = {"epsilon": args.ot_epsilon, "iterations": args.ot_iterations, "method": args.ot_method,
                   "tol": args.ot_tol}  # fmt: skip

    # The repository the JTLN folder goes to: --hub_model_id, or (pushed without one) the output folder's
    # name, as the recipe's push does; unpushed and unnamed, the cards' placeholder.
    jtln_repo = args.hub_model_id or (Path(args.output_dir).resolve().name if args.push_to_hub else None)
    jtln_repo = jtln_repo or f"your-name/{card_kwargs['model_name']}"
    timm_id = timm_repo_id(jtln_repo, args.hub_timm_model_id)
    if args.save_timm:  # the card says where the plain timm copy is: its own repository once pushed, else the folder
        card_kwargs["timm_export"] = f"hf-hub:{timm_id}" if args.push_to_hub else f"local-dir:{TIMM_FOLDER}"

    def write(folder: Path) -> None:
        save_model_folder(model, folder)
        write_model_card(folder, model, plan=plan, plan_images=plan_images, summary=summary, **card_kwargs)
        write_demo(folder, model, examples, ot_settings=ot_settings)
        if args.save_timm:
            write_timm_folder(
                model, folder / TIMM_FOLDER, repo_id=timm_id, jtln_repo_id=jtln_repo, examples=examples,
                metrics=card_kwargs["metrics"], datasets=dataset_ids, dataset_name=card_kwargs["dataset_name"],
                eval_dataset=card_kwargs["eval_dataset"], space_id=args.push_space,
            )  # fmt: skip

    if not args.should_save:  # under `accelerate launch`: the plan above needs every process, the files one
        return Path(output_dir) / "model"
    return atomic_write_dir(Path(output_dir) / "model", write)


def timm_repo_id(repo_id: str, timm_model_id: str | None = None) -> str:
    """The timm export's repository: ``--hub_timm_model_id``, else ``<repo_id>-timm``."""
    return timm_model_id or f"{repo_id}-timm"


__all__ = ["results_markdown", "save_model", "summarize", "timm_repo_id", "write_results"]
