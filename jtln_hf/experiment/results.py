"""Results of a comparison: the per-method summary, the Markdown table, ``results.json``.

:func:`summarize` reduces the runs of every seed to a mean and a sample standard deviation per
method; :func:`results_markdown` writes the table every README and card shows, with each
method's seed-paired difference to the registered baseline, joint fine-tuning
(:func:`jtln_hf.methods.baseline_method`, :mod:`jtln_hf.utils.stats`). The model folder is :func:`jtln_hf.sharing.folder.save_model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.bad_images import write_bad_images
from ..methods import METHOD_REGISTRY, RunResult, baseline_method
from ..utils.io import atomic_write_text
from ..utils.stats import paired_summary

if TYPE_CHECKING:
    pass


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
    (:func:`jtln_hf.utils.stats.paired_difference`): mean [95 % Student-t interval], seeds won / seeds
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


__all__ = ["results_markdown", "summarize", "write_results"]
