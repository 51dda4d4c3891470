"""Figures of the model card, drawn with matplotlib's object API (no pyplot, no global backend).

* :func:`plot_cost_matrix` -- the source x target ground cost C as a labelled heatmap;
* :func:`plot_transport_plan` -- the mean entropic transport plan between the two heads'
  predictions on the target test set, as a heatmap;
* :func:`plot_compare` -- the comparison: each method's seed-paired difference to the baseline (joint
  fine-tuning; per-seed dots, mean and 95 % interval, zero line) and accuracy per method.

Each ``plot_*`` function writes one PNG (atomically, :func:`jtln_hf.utils.io.atomic_write`) and returns
its path; :func:`heatmap` and :func:`compare_figure` return the ``matplotlib.figure.Figure``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..cost import NORMALIZATIONS
from ..utils.io import atomic_write
from ..utils.stats import PairedDifference, paired_summary
from ..utils.styles import MethodStyle, method_style


def _method(name: str) -> MethodStyle:
    """The method's figure label and colour (:data:`jtln_hf.utils.styles.METHOD_STYLES`)."""
    return method_style(name)


_ANNOTATE_MAX = 15  # write the value in each cell up to this many rows/columns
_DPI = 150
#: Width of the comparison figure (inches): 960 px at 150 dpi, about the width a model card shows it at.
FIGURE_WIDTH_IN = 6.4


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """``fig.savefig`` as PNG onto ``path`` through :func:`jtln_hf.utils.io.atomic_write` (never half a figure).

    Every figure here is laid out by matplotlib's constrained layout, which already fits the labels inside the
    canvas; ``bbox_inches="tight"`` would draw the figure a second time to trim a margin that is not there
    (0.4 against 0.2 s per heatmap, three figures per saved model).
    """
    return atomic_write(path, lambda f: fig.savefig(f, dpi=_DPI, format="png"))


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
    cost: Any, source_labels: Sequence[str], target_labels: Sequence[str], path: str | os.PathLike,
    normalization: str | None = None,
) -> Path:  # fmt: skip
    """Heatmap of the ground cost C (rows source classes, columns target classes).

    Low cost (dark) is where the OT term moves a target image's probability mass cheaply. The
    title says what ``normalization`` did: under ``"column"`` a 0 is the cheapest source class of
    its column, not a close one (a column with no close source class has zeros all the same).
    """
    return _save(cost_figure(cost, source_labels, target_labels, normalization), path)


def cost_figure(
    cost: Any, source_labels: Sequence[str], target_labels: Sequence[str], normalization: str | None = None
) -> Figure:
    """The heatmap :func:`plot_cost_matrix` writes; its title's second line says what ``normalization`` did."""
    title = "Cost matrix C (low = cheap to move mass)"
    if normalization:
        title += f"\n{normalization} normalisation: {NORMALIZATIONS.get(normalization, normalization)}"
    return heatmap(
        np.asarray(cost, dtype=float), source_labels, target_labels,
        title=title, colorbar_label="cost C[source, target]", cmap="viridis", fmt=".2f",
    )  # fmt: skip


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


def plot_compare(summary: Mapping[str, Mapping[str, Any]], path: str | os.PathLike,
                 baseline: str | None = None) -> Path:  # fmt: skip
    """Write :func:`compare_figure` of ``summary`` (against ``baseline``) as a PNG."""
    return _save(compare_figure(summary, baseline), path)


def _spread(center: float, count: int, width: float = 0.16) -> np.ndarray:
    """``count`` x positions spread evenly over ``width`` around ``center`` (one seed's dot each)."""
    return center + (np.linspace(-width / 2, width / 2, count) if count > 1 else np.zeros(count))


def _per_seed(entry: Mapping[str, Any], key: str) -> np.ndarray:
    return 100 * np.asarray(entry[key].get("per_seed", [entry[key]["mean"]]), dtype=float)


def difference_label(method: str, difference: PairedDifference) -> str:
    """A difference panel's tick label: the method, ``mean [95 % interval]``, and ``won w/n`` on lines of their own."""
    stats, wins = difference.to_text().rsplit(", ", 1)
    return f"{_method(method).label}\n{stats}\nwon {wins}"


def _difference_panel(ax, paired: Mapping[str, PairedDifference], baseline: str) -> None:
    """Per-seed differences to the baseline (dots), their mean and 95 % interval (error bar), a zero line."""
    methods = list(paired)
    for i, method in enumerate(methods):
        d = paired[method]
        colour = _method(method).colour
        ax.scatter(_spread(i - 0.12, d.n), 100 * np.asarray(d.per_seed), s=22, color=colour, alpha=0.75,
                   zorder=3, label="one seed" if i == 0 else None)  # fmt: skip
        yerr = None
        if d.ci95 is not None:
            yerr = [[100 * (d.mean - d.ci95[0])], [100 * (d.ci95[1] - d.mean)]]
        label = ("mean, 95% CI" if yerr is not None else "mean") if i == 0 else None
        ax.errorbar([i + 0.14], [100 * d.mean], yerr=yerr, fmt="D", color="black", markersize=6, capsize=5,
                    elinewidth=1.4, zorder=4, label=label)  # fmt: skip
    ax.axhline(0.0, color="0.3", linewidth=1.0, zorder=2)
    ax.set_xticks(range(len(methods)), labels=[difference_label(m, paired[m]) for m in methods], fontsize=8.5)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    values = [0.0] + [100 * v for d in paired.values() for v in (*d.per_seed, *(d.ci95 or ()))]
    lo, hi = min(values), max(values)
    pad = 0.12 * (hi - lo) or 0.5
    ax.set_ylim(lo - pad, hi + pad)  # zero always in view
    ax.set_ylabel(f"accuracy − {baseline} (percentage points)")
    seeds = sorted({d.n for d in paired.values()})
    ax.set_title(f"Difference to {_method(baseline).label}, paired by seed "
                 f"({'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''})", fontsize=10)  # fmt: skip
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="best", fontsize=8)


def _accuracy_panel(ax, summary: Mapping[str, Mapping[str, Any]]) -> None:
    """Accuracy per method: per-seed dots, mean ± std; mean per-class accuracy only where it differs."""
    methods = list(summary)
    accuracies = {m: _per_seed(summary[m], "accuracy") for m in methods}
    per_class = {m: _per_seed(summary[m], "mean_per_class_accuracy") for m in methods
                 if "mean_per_class_accuracy" in summary[m]}  # fmt: skip
    # a balanced test set makes them equal: then one is enough
    show_per_class = any(per_class[m].shape != accuracies[m].shape or not np.allclose(per_class[m], accuracies[m],
                         atol=1e-6) for m in per_class)  # fmt: skip
    for i, method in enumerate(methods):
        acc = summary[method]["accuracy"]
        colour = _method(method).colour
        ax.scatter(_spread(i - 0.12, len(accuracies[method])), accuracies[method], s=22, color=colour,
                   alpha=0.75, zorder=3, label="accuracy, one seed" if i == 0 else None)  # fmt: skip
        ax.errorbar([i + 0.14], [100 * acc["mean"]], yerr=[100 * acc["std"]], fmt="D", color="black", markersize=6,
                    capsize=5, elinewidth=1.4, zorder=4, label="accuracy, mean ± std" if i == 0 else None)  # fmt: skip
        if show_per_class and method in per_class:
            mpc = summary[method]["mean_per_class_accuracy"]
            ax.errorbar([i + 0.3], [100 * mpc["mean"]], yerr=[100 * mpc["std"]], fmt="s", mfc="white", color="0.35",
                        markersize=6, capsize=4, zorder=4,
                        label="mean per-class accuracy, mean ± std" if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(methods)), labels=[_method(m).label for m in methods], fontsize=8.5)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylabel("target test accuracy (%)")
    ax.set_title("Target test accuracy (axis not from 0)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="best", fontsize=8)


def compare_figure(summary: Mapping[str, Mapping[str, Any]], baseline: str | None = None) -> Figure:
    """The comparison: seed-paired differences to the ``baseline`` method, and accuracy per method.

    Top (when ``baseline``, e.g. joint fine-tuning, ran with other methods): each method's accuracy
    minus the baseline's on the same
    seed, in percentage points -- one dot per seed, the mean with its 95 % Student-t interval
    (:func:`jtln_hf.utils.stats.paired_difference`) and a zero line; the tick label repeats them
    (:func:`difference_label`). Below (alone without a baseline): accuracy per method, one dot per
    seed and mean ± std, on an axis fitted to the values; mean per-class accuracy is added only
    where it differs from accuracy.

    ``summary`` is :func:`jtln_hf.experiment.results.summarize`'s output: per method ``"seeds"`` and
    ``{"accuracy"|"mean_per_class_accuracy": {"mean", "std", "per_seed"}}``.
    """
    paired = paired_summary(summary, baseline) if baseline is not None else {}
    rows = 2 if paired else 1
    # one column of panels, 6.4 in wide: 960 px at 150 dpi, so a card shown ~800 px wide keeps 9-10 pt text readable
    fig = Figure(figsize=(FIGURE_WIDTH_IN, 0.6 + 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    if paired:
        _difference_panel(axes[0], paired, baseline)
    _accuracy_panel(axes[-1], summary)
    return fig


__all__ = [
    "compare_figure",
    "cost_figure",
    "difference_label",
    "heatmap",
    "plot_compare",
    "plot_cost_matrix",
    "plot_transport_plan",
]
