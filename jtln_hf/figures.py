"""Figures of the model card, drawn with matplotlib's object API (no pyplot, no global backend).

* :func:`plot_cost_matrix` -- the source x target ground cost C as a labelled heatmap;
* :func:`plot_transport_plan` -- the mean entropic transport plan between the two heads'
  predictions on the target test set, as a heatmap;
* :func:`plot_compare` -- the comparison table (mean +- std over seeds) as a bar chart.

Each ``plot_*`` function writes one PNG (through a temporary file renamed into place) and returns
its path; :func:`heatmap` and :func:`compare_figure` return the ``matplotlib.figure.Figure``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

#: Short method names for the bar chart (the table in results.md has the long ones).
METHOD_LABELS = {
    "finetune": "target only",
    "consecutive": "consecutive",
    "joint": "joint (no OT)",
    "jtln": "JTLN",
}
_ANNOTATE_MAX = 15  # write the value in each cell up to this many rows/columns
_DPI = 150


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """``fig.savefig`` to a temporary sibling, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=_DPI, bbox_inches="tight", format="png")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a figure is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str,
    colorbar_label: str,
    cmap: str = "viridis",
    fmt: str = ".2f",
) -> Figure:
    """A heatmap with one named row per source class, one named column per target class, a labelled colour bar.

    Up to 15 rows and columns, each cell also shows its value (``fmt``).
    """
    matrix = np.asarray(matrix, dtype=float)
    n_rows, n_cols = matrix.shape
    if (n_rows, n_cols) != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"matrix has shape {matrix.shape} but {len(row_labels)} row and {len(col_labels)} column labels were given."
        )
    fontsize = 10 if max(n_rows, n_cols) <= _ANNOTATE_MAX else max(4, 10 - max(n_rows, n_cols) // 10)
    fig = Figure(figsize=(2.5 + 0.9 * n_cols, 1.8 + 0.55 * n_rows), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap=cmap, aspect="auto")
    ax.set_xticks(range(n_cols), labels=list(col_labels), rotation=35, ha="right", rotation_mode="anchor",
                  fontsize=fontsize)  # fmt: skip
    ax.set_yticks(range(n_rows), labels=list(row_labels), fontsize=fontsize)
    ax.set_xlabel("target class (target head)")
    ax.set_ylabel("source class (source head)")
    ax.set_title(title)
    if max(n_rows, n_cols) <= _ANNOTATE_MAX:
        lo, hi = float(np.nanmin(matrix)), float(np.nanmax(matrix))
        middle = (lo + hi) / 2
        for i in range(n_rows):
            for j in range(n_cols):
                value = matrix[i, j]
                colour = "white" if value < middle else "black"  # viridis/magma: low values are dark
                ax.text(j, i, format(value, fmt), ha="center", va="center", color=colour, fontsize=fontsize - 1)
    colorbar = fig.colorbar(image, ax=ax)
    colorbar.set_label(colorbar_label)
    return fig


def plot_cost_matrix(
    cost: Any, source_labels: Sequence[str], target_labels: Sequence[str], path: str | os.PathLike
) -> Path:
    """Heatmap of the ground cost C (rows source classes, columns target classes).

    Low cost (dark) marks a source class the OT term lets a target class borrow from.
    """
    fig = heatmap(
        np.asarray(cost, dtype=float), source_labels, target_labels,
        title="Cost matrix C (low = source class teaches target class)",
        colorbar_label="cost C[source, target]", cmap="viridis", fmt=".2f",
    )  # fmt: skip
    return _save(fig, path)


def plot_transport_plan(
    plan: Any, source_labels: Sequence[str], target_labels: Sequence[str], path: str | os.PathLike,
    num_images: int | None = None,
) -> Path:  # fmt: skip
    r"""Heatmap of the mean transport plan :math:`\bar\gamma = \frac1N\sum_n \gamma^*_n` (sums to 1).

    Row ``s`` sums to the mean source-head probability of class ``s`` on target images, column
    ``t`` to the mean target-head probability of class ``t``.
    """
    where = f" over {num_images} target test images" if num_images else " over the target test set"
    fig = heatmap(
        np.asarray(plan, dtype=float), source_labels, target_labels,
        title=f"Mean transport plan{where}",
        colorbar_label="mean transported mass γ[source, target]", cmap="magma", fmt=".3f",
    )  # fmt: skip
    return _save(fig, path)


def plot_compare(summary: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write :func:`compare_figure` of ``summary`` as a PNG."""
    return _save(compare_figure(summary), path)


def compare_figure(summary: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Bar chart of the comparison: accuracy and mean per-class accuracy (%), mean +- std over seeds.

    ``summary`` is :func:`jtln_hf.experiment.summarize`'s output: per method,
    ``{"accuracy": {"mean", "std"}, "mean_per_class_accuracy": {"mean", "std"}, "seeds": [...]}``.
    """
    methods = list(summary)
    metrics = (("accuracy", "accuracy"), ("mean_per_class_accuracy", "mean per-class accuracy"))
    x = np.arange(len(methods))
    width = 0.38
    fig = Figure(figsize=(2.0 + 1.5 * len(methods), 4.2), layout="constrained")
    ax = fig.add_subplot()
    for k, (key, name) in enumerate(metrics):
        means = np.array([100 * summary[m][key]["mean"] for m in methods])
        stds = np.array([100 * summary[m][key]["std"] for m in methods])
        bars = ax.bar(x + (k - 0.5) * width, means, width, yerr=stds, capsize=4, label=name,
                      color=("tab:blue", "tab:orange")[k], error_kw={"elinewidth": 1.2})  # fmt: skip
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in means], label_type="center", color="white", fontsize=9)
    ax.set_xticks(x, labels=[METHOD_LABELS.get(m, m) for m in methods])
    seeds = sorted({len(summary[m].get("seeds", [])) for m in methods})
    ax.set_ylabel("target test accuracy (%)")
    plural = "s" if seeds != [1] else ""
    ax.set_title(f"Target test accuracy, mean ± std over {'/'.join(map(str, seeds))} seed{plural}")
    top = max(100 * (summary[m][key]["mean"] + summary[m][key]["std"]) for m in methods for key, _ in metrics)
    ax.set_ylim(0, top * 1.25 + 1)  # headroom for the value labels and the legend
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", ncols=2)
    return fig


__all__ = ["METHOD_LABELS", "compare_figure", "heatmap", "plot_compare", "plot_cost_matrix", "plot_transport_plan"]
