#!/usr/bin/env python
"""Ablations: JTLN settings x seeds against joint training, the setting chosen on validation.

Each setting is a set of recipe flags (``--vary ot_loss_weight=3``, ``--vary cost=prior
cost_normalization=none``); every setting trains JTLN once per seed, and joint training (the
baseline, no OT term) once per seed. Every run of a seed sees the same target shots and initial
weights (paired). A validation split carved from the target *training* pool
(``--target_validation_fraction``, default 0.1 here) chooses the setting; the test split only
reports. A setting with ``ot_loss_weight=0`` is a *control*, never chosen: a JTLN setting with a
source-only warm-up (a cost computed from the data) is also paired with the control after the same
warm-up, which tells the OT term's part from the warm-up's. ``--shuffled_controls`` adds to every
setting that trains the OT term under a cost with relations its *shuffled twin*: the same flags plus
``--cost_shuffle_seed`` = the run's seed (C's target columns permuted: same values, wrong relations),
also a control, never chosen; ``setting − its shuffled control``, paired by seed, says whether C's
relations are what the OT term uses. Without ``--vary`` the sweep is the one-factor-at-a-time grid
around the default on the embedded Fashion-MNIST split (:data:`DEFAULT_GRID`).

Each (setting, seed) run is a Ray Tune trial (:mod:`jtln_hf.experiment.trials`): on a local Ray with this
machine's CPUs and GPUs (one CPU, or one GPU where there are GPUs, per run: ``--trial_cpus``,
``--trial_gpus``), or on a running cluster with ``--ray_address`` (or ``RAY_ADDRESS``); a run that fails
twice is named in ``sweep.md`` and ``sweep.json`` and the exit status is 1. ``--local`` runs them in this
process, without Ray.

examples:
  python recipes/sweep.py --seeds 0 1 2 3 4 --workers 2 --output_dir outputs/sweep
  python recipes/sweep.py --ray_address auto --trial_gpus 1 --seeds 0 1 2 3 4   # on a cluster (ray start ...)
  python recipes/sweep.py --vary ot_loss_weight=0.3 --vary ot_loss_weight=3 --seeds 0 1 2 -- \\
      --source_dataset fashion-mnist --target_dataset my_images --target_test_fraction 0.3
  python recipes/sweep.py --vary default --shuffled_controls --seeds 0 1 2 3 4   # does my C carry relations?

Flags after ``--`` go to every run (any flag of recipes/train_jtln.py). Writes ``sweep.json``,
``sweep.md`` (the table), ``sweep.png`` (per-seed test differences to joint with 95% intervals, and
each setting's per-class difference to joint) and ``sweep-plans.png`` (each JTLN setting's cost and
mean transport plan) into ``--output_dir``, and one ``runs/<setting>/seed<k>`` folder per run, whose
``record.json`` a later sweep with the same flags reads back (add seeds or settings, or continue after a kill,
without retraining); Ray Tune's own state goes to ``<output_dir>/tune/``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

#: One factor at a time around the default (λ_ot 1, ε 0.05, the column-shifted prior).
DEFAULT_GRID: dict[str, dict[str, str]] = {
    "default": {},
    "λ_ot 0.3": {"ot_loss_weight": "0.3"},
    "λ_ot 3": {"ot_loss_weight": "3"},
    "ε 0.02": {"ot_epsilon": "0.02"},
    "ε 0.1": {"ot_epsilon": "0.1"},
    "objective paper": {"ot_objective": "paper"},
    "objective entropic": {"ot_objective": "entropic"},
    "objective kl": {"ot_objective": "kl"},
    "prior, raw": {"cost": "prior", "cost_normalization": "none"},
    "features-centroid": {"cost": "features-centroid"},
    "relationship": {"cost": "relationship"},
    "constant cost (control)": {"cost": "constant"},
    "Co-Tuning (baseline, not JTLN)": {"method": "cotuning"},
}
#: What ``--search`` samples, log-uniformly: the OT term's weight λ_ot and its entropic ε.
SEARCH_SPACE = {"ot_loss_weight": (0.1, 3.0), "ot_epsilon": (0.02, 0.2)}
#: A shuffled twin's ``cost_shuffle_seed`` in the grid: each of its runs is shuffled by that run's own seed.
RUN_SEED = "seed"
#: The name of a setting's shuffled twin (``--shuffled_controls``).
SHUFFLED = "{} (shuffled)"


def _parse_vary(text: str) -> tuple[str, dict[str, str]]:
    if text.strip() == "default":  # the recipe's defaults: a setting with no override
        return "default", {}
    pairs = [part.split("=", 1) for part in text.split()]
    if not pairs or any(len(p) != 2 or not p[0] for p in pairs):
        raise argparse.ArgumentTypeError(f"--vary {text!r}: expected 'flag=value [flag=value ...]'")
    return text, {flag.lstrip("-"): value for flag, value in pairs}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, prog="sweep.py",
        usage="%(prog)s [--vary 'flag=value ...'] [--seeds ...] [--trial_cpus N] [--ray_address ADDR] "
              "[--output_dir DIR] [-- RECIPE FLAGS]",
    )  # fmt: skip
    parser.add_argument("--vary", type=_parse_vary, action="append", default=None,
                        help="One setting (repeat for more): 'flag=value ...', or 'default' (the recipe's defaults); "
                             "default: the built-in one-factor grid.")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=None,
                        help="At most this many runs at once (default: as many as the trials' resources allow).")
    parser.add_argument("--trial_cpus", type=float, default=1.0, help="CPUs Ray gives each run (one thread each).")
    parser.add_argument("--trial_gpus", type=float, default=None,
                        help="GPUs Ray gives each run (default: 1 where the machine has GPUs, else 0).")
    parser.add_argument("--ray_address", default=os.environ.get("RAY_ADDRESS") or None,
                        help="A running Ray cluster (host:port, ray://host:port or auto; default: RAY_ADDRESS, "
                             "else a local Ray with this machine's CPUs and GPUs).")  # fmt: skip
    parser.add_argument("--search", type=int, default=None, metavar="N",
                        help="Instead of --vary: N settings of the OT term's weight and epsilon sampled by Optuna's "
                             "TPE sampler (each run a Ray Tune trial), chosen on validation; the test split is "
                             "reported for the chosen one only, paired with joint.")  # fmt: skip
    parser.add_argument("--search_seed", type=int, default=0, help="The sampler's seed (--search).")
    parser.add_argument("--local", action="store_true",
                        help="Run the runs one after another in this process, without Ray (debugging).")
    parser.add_argument("--output_dir", default="outputs/sweep")
    parser.add_argument("--validation_fraction", type=float, default=0.1,
                        help="--target_validation_fraction of every run (the setting is chosen on it).")  # fmt: skip
    parser.add_argument("--shuffled_controls", action="store_true",
                        help="Add each OT setting's shuffled twin (--cost_shuffle_seed = the run's seed: C's "
                             "target columns permuted), a control never chosen; sweep.md gets '− its shuffled "
                             "control'.")  # fmt: skip
    return parser


def default_grid() -> dict[str, dict[str, str]]:
    """:data:`DEFAULT_GRID` without the objective setting that is already the default."""
    from jtln_hf.training.arguments import JTLNTrainingArguments

    default = JTLNTrainingArguments.__dataclass_fields__["ot_objective"].default
    return {name: o for name, o in DEFAULT_GRID.items() if o != {"ot_objective": default}}


def _argv(base: list[str], overrides: dict[str, str], method: str, seed: int, out: Path, fraction: float) -> list[str]:
    """One run's recipe flags; the key ``method`` of ``overrides`` picks the method (default jtln)."""
    argv = list(base)
    if "--target_validation_fraction" not in base:
        argv += ["--target_validation_fraction", str(fraction)]
    if "--dataloader_num_workers" not in base:
        # runs go in parallel, one CPU thread each: loader workers would oversubscribe the cores (and a
        # pool's spawned process spawns, not forks, its loader workers: the batch transform is a closure)
        argv += ["--dataloader_num_workers", "0"]
    for flag, value in overrides.items():
        if flag != "method":
            argv += [f"--{flag}", str(seed) if (flag, value) == ("cost_shuffle_seed", RUN_SEED) else value]
    return argv + ["--mode", method, "--seeds", str(seed), "--output_dir", str(out)]


def summarize_sweep(records: list[dict[str, Any]], settings: list[str]) -> list[dict[str, Any]]:
    """Per setting: validation and test accuracy per seed, and the test difference to joint, paired by seed."""
    from jtln_hf.methods import baseline_method
    from jtln_hf.utils.stats import paired_difference

    def by_seed(setting: str, key: str) -> dict[int, float]:
        return {r["seed"]: r["metrics"][key] for r in records if r["setting"] == setting}

    baseline = baseline_method()
    joint_test = by_seed(baseline, "accuracy")
    rows = []
    for setting in settings:
        test, validation = by_seed(setting, "accuracy"), by_seed(setting, "validation_accuracy")
        diff = paired_difference(test, joint_test)
        val_diff = paired_difference(validation, by_seed(baseline, "validation_accuracy"))
        mine = [r for r in records if r["setting"] == setting]
        rows.append({
            "setting": setting, "seeds": sorted(test), "test_accuracy": test, "validation_accuracy": validation,
            "validation_mean": sum(validation.values()) / len(validation),
            "test_mean": sum(test.values()) / len(test), "test_minus_joint": diff.to_dict(),
            "validation_minus_joint": val_diff.to_dict(), "text": diff.to_text(), "validation_text": val_diff.to_text(),
            "steps": mine[0]["max_steps"] + mine[0]["warmup_steps"], "warmup_steps": mine[0]["warmup_steps"],
            "cost": mine[0]["cost"], **_class_view(mine, [r for r in records if r["setting"] == baseline]),
        })  # fmt: skip
    return rows


def _is_control(overrides: dict[str, str]) -> bool:
    """``ot_loss_weight=0`` (the value parses: every setting's flags are checked before this runs)."""
    return "ot_loss_weight" in overrides and float(overrides["ot_loss_weight"]) == 0.0


def _is_shuffled(overrides: dict[str, str]) -> bool:
    """A shuffled-cost control (``cost_shuffle_seed`` set: a shuffled twin, or a setting written so)."""
    return "cost_shuffle_seed" in overrides


def choose_setting(rows: list[dict[str, Any]], grid: dict[str, dict[str, str]]) -> str:
    """The setting with the best mean validation accuracy; a control (:func:`attach_controls`, a shuffled
    cost: :func:`attach_shuffled`) is a reference for what the OT term adds, not a candidate, unless the
    grid holds nothing else."""
    candidates = [row for row in rows if not (_is_control(grid[row["setting"]]) or _is_shuffled(grid[row["setting"]]))]
    candidates = candidates or rows
    return max(candidates, key=lambda row: row["validation_mean"])["setting"]


def _pair(row: dict[str, Any], theirs: dict[str, Any], kind: str) -> None:
    """``row − theirs`` by seed on test and validation, written into ``row`` as ``kind`` (their name),
    ``test_minus_<kind>``, ``validation_minus_<kind>`` and ``<kind>_text``."""
    from jtln_hf.utils.stats import paired_difference

    test = paired_difference(row["test_accuracy"], theirs["test_accuracy"])
    validation = paired_difference(row["validation_accuracy"], theirs["validation_accuracy"])
    row.update({kind: theirs["setting"], f"test_minus_{kind}": test.to_dict(),
                f"validation_minus_{kind}": validation.to_dict(), f"{kind}_text": test.to_text()})  # fmt: skip


def attach_controls(rows: list[dict[str, Any]], grid: dict[str, dict[str, str]], records: list[dict[str, Any]]) -> None:
    """Pair each JTLN setting with its *control* in the grid, if there is one, by seed (in place).

    A cost computed from the data first trains the source head alone (``warmup_steps``), and that
    warm-up alone can beat joint training. The control of a setting is the grid's setting with
    ``ot_loss_weight=0`` after the same number of warm-up steps and the same other flags (the
    ``cost*`` and ``ot_*`` flags aside: without the OT term they change nothing but the warm-up).
    ``setting − control`` is then what the OT term adds; the row gets ``control``,
    ``test_minus_control``, ``validation_minus_control`` and ``control_text``, a control's row
    ``is_control``. A setting with ``cost_warmup_restart`` restarts from the initial weights after its
    warm-up has given C: its control is joint training (its ``− joint`` is the OT term's part).
    """

    def key(name: str) -> tuple[Any, ...]:
        warmup = next(r["warmup_steps"] for r in records if r["setting"] == name)
        if str(grid[name].get("cost_warmup_restart", "false")).lower() in ("true", "1", "yes"):
            warmup = 0  # the warm-up was a probe that only computed C: joint training is the control
        rest = {k: v for k, v in grid[name].items() if not k.startswith(("cost", "ot_"))}
        return warmup, tuple(sorted(rest.items()))

    controls = {key(name): name for name in grid if _is_control(grid[name])}
    by_name = {row["setting"]: row for row in rows}
    for name in controls.values():
        by_name[name]["is_control"] = True
    for name, overrides in grid.items():
        control = controls.get(key(name))
        if control is None or _is_control(overrides) or key(name)[0] == 0:  # no warm-up: joint is the control
            continue
        _pair(by_name[name], by_name[control], "control")


def shuffled_twins(grid: dict[str, dict[str, str]], base: list[str]) -> dict[str, dict[str, str]]:
    """The grid with each setting's shuffled twin after it (``--shuffled_controls``), for every setting that
    trains the OT term under a cost with relations; a control, a method without OT, a cost without relations
    (``constant``) and a setting already shuffled get none.

    A twin, :data:`SHUFFLED` of the setting's name, has the setting's flags and ``cost_shuffle_seed`` =
    :data:`RUN_SEED` (each run's own seed). Each setting's flags must have passed the checks. Raises a
    one-line ``ValueError`` when no setting gets a twin.
    """
    from jtln_hf.experiment.arguments import resolved_cost
    from jtln_hf.experiment.cli import parse_args
    from jtln_hf.methods import METHOD_REGISTRY

    out: dict[str, dict[str, str]] = {}
    for name, overrides in grid.items():
        out[name] = overrides
        method = overrides.get("method", "jtln")
        if _is_control(overrides) or _is_shuffled(overrides) or not METHOD_REGISTRY[method].uses_ot:
            continue
        data, model, jtln, *_ = parse_args(_argv(base, overrides, method, 0, Path("unused"), 0.1))
        if resolved_cost(data, model, jtln).relations:
            out[SHUFFLED.format(name)] = {**overrides, "cost_shuffle_seed": RUN_SEED}
    if len(out) == len(grid):
        raise ValueError("--shuffled_controls: no setting trains the OT term under a cost with relations (controls, "
                         "other methods and --cost constant get no shuffled twin): drop it, or vary such a setting.")
    return out


def attach_shuffled(rows: list[dict[str, Any]], grid: dict[str, dict[str, str]]) -> None:
    """Pair each setting with its shuffled twin (:func:`shuffled_twins`) by seed, in place.

    The twin trains on C with its target columns permuted (same values, wrong relations), so
    ``setting − its shuffled control`` is what C's relations give the OT term: the row gets ``shuffled``
    (the twin's name), ``test_minus_shuffled``, ``validation_minus_shuffled`` and ``shuffled_text``; a
    shuffled setting's row ``is_control``.
    """
    by_name = {row["setting"]: row for row in rows}
    for name, overrides in grid.items():
        if _is_shuffled(overrides):
            by_name[name]["is_control"] = True
        twin = SHUFFLED.format(name)
        if twin not in grid or not _is_shuffled(grid[twin]) or _is_shuffled(overrides):
            continue
        _pair(by_name[name], by_name[twin], "shuffled")


def attach_prior_agreement(rows: list[dict[str, Any]], records: list[dict[str, Any]], prior: Path | None) -> None:
    """Per setting with a cost, per seed: how far its final C is from the data's hand-written prior (in place).

    ``prior_agreement`` maps each seed to :func:`jtln_hf.cost.cheapest_source_agreement` of the run's
    final cost against the prior (the share of target classes whose cheapest source class is the
    prior's), beside the seed's gain in the same row: does a C closer to the prior gain more? Left out
    when the data has no prior or the prior does not name the run's classes.
    """
    from jtln_hf.cost import cheapest_source_agreement, load_cost

    if prior is None:
        return
    for row in rows:
        runs = [r for r in records if r["setting"] == row["setting"] and r.get("cost_matrix") is not None]
        try:
            per_seed = {r["seed"]: cheapest_source_agreement(r["cost_matrix"], load_cost(prior, r["source_names"],
                                                                                         r["target_names"]))
                        for r in runs}  # fmt: skip
        except ValueError:  # the prior does not name these classes
            return
        if per_seed:
            row["prior_agreement"] = per_seed
            values = [v for v in per_seed.values() if v is not None]
            row["prior_agreement_mean"] = sum(values) / len(values) if values else None


def _class_view(mine: list[dict[str, Any]], joint: list[dict[str, Any]]) -> dict[str, Any]:
    """A setting's per-class test accuracy (mean over seeds), its seed-paired difference to joint per class,
    and its mean cost matrix and transport plan over seeds (JTLN settings)."""
    import numpy as np

    def per_class(runs: list[dict[str, Any]]) -> dict[int, np.ndarray]:
        return {r["seed"]: np.array(r["per_class_accuracy"]["test"], dtype=float) for r in runs
                if r.get("per_class_accuracy", {}).get("test") is not None}  # fmt: skip

    ours, theirs = per_class(mine), per_class(joint)
    paired = [ours[s] - theirs[s] for s in sorted(ours) if s in theirs]
    view: dict[str, Any] = {
        "per_class_test": np.mean(list(ours.values()), 0).tolist() if ours else None,
        "per_class_minus_joint": np.mean(paired, 0).tolist() if paired else None,
    }
    for key in ("cost_matrix", "transport_plan"):
        mats = [np.array(r[key]) for r in mine if r.get(key) is not None]
        view[key] = np.mean(mats, 0).tolist() if mats else None
    return view


def sweep_markdown(rows: list[dict[str, Any]], joint: dict[str, Any], chosen: str, caption: str) -> str:
    lines = [
        caption, "",
        "| setting | validation acc. (%) | validation − joint | test acc. (%) | test − joint (points, 95% CI, wins) "
        "| steps (warm-up + joint) |",
        "|---|---|---|---|---|---|",
        f"| joint (no OT, baseline) | {100 * joint['validation_mean']:.1f} | — | {100 * joint['test_mean']:.1f} | — "
        f"| {joint['steps']} |",
    ]  # fmt: skip
    controlled = any("control" in row for row in rows)
    if controlled:  # what the OT term adds over the same warm-up (attach_controls)
        lines[2] += " test − its warm-up control |"
        lines[3] += "---|"
        lines[4] += " — |"
    shuffled = any("shuffled" in row for row in rows)
    if shuffled:  # what C's relations add over the same values in the wrong places (attach_shuffled)
        lines[2] += " test − its shuffled control |"
        lines[3] += "---|"
        lines[4] += " — |"
    for row in rows:
        name = f"**{row['setting']}** (chosen on validation)" if row["setting"] == chosen else row["setting"]
        steps = f"{row['warmup_steps']} + {row['steps'] - row['warmup_steps']}" if row["warmup_steps"] else row["steps"]
        lines.append(f"| {name} | {100 * row['validation_mean']:.1f} | {row['validation_text']} "
                     f"| {100 * row['test_mean']:.1f} | {row['text']} | {steps} |")  # fmt: skip
        if controlled:
            lines[-1] += f" {row['control_text']} |" if "control" in row else " — |"
        if shuffled:
            lines[-1] += f" {row['shuffled_text']} |" if "shuffled" in row else " — |"
    return "\n".join(lines) + "\n"


def failures_markdown(failures: list[dict[str, Any]]) -> str:
    """The runs that failed (twice with Ray Tune, which retries once; once with ``--local``), with their errors:
    never silently left out of an interval."""
    if not failures:
        return ""
    lines = ["", f"**{len(failures)} run(s) failed** (Ray Tune tries a run twice, --local once; left out of the "
             "seeds above, which pair the runs that finished; run the sweep again to retry them):", ""]  # fmt: skip
    lines += [f"- {f['setting']}, seed {f['seed']} ({f['method']}, tried {f['attempts']} "
              f"time{'' if f['attempts'] == 1 else 's'}): {f['error']}" for f in failures]  # fmt: skip
    return "\n".join(lines) + "\n"


def sweep_figure(rows: list[dict[str, Any]], chosen: str, path: Path, class_names: list[str] | None = None) -> None:
    """Left: per-seed test differences to joint (dots), their mean and 95% interval, per setting (controls grey).
    Right (with ``class_names``): each setting's per-class test accuracy − joint's, mean over seeds (points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panel = class_names is not None and all(row.get("per_class_minus_joint") for row in rows)
    height = 0.45 * len(rows) + 1.6
    labels = 0.075 * max(len(row["setting"]) for row in rows)  # inches of y tick labels at 10 pt, roughly
    if panel:
        fig, (ax, cax) = plt.subplots(1, 2, figsize=(6 + labels + 0.8 * len(class_names), height),
                                      gridspec_kw={"width_ratios": [6, 0.8 * len(class_names)]})  # fmt: skip
    else:
        fig, ax = plt.subplots(figsize=(6 + labels, height))
    for k, row in enumerate(rows):
        d = row["test_minus_joint"]
        y = len(rows) - 1 - k
        colour = "tab:red" if row["setting"] == chosen else "tab:gray" if row.get("is_control") else "tab:blue"
        ax.scatter([100 * v for v in d["per_seed"]], [y] * len(d["per_seed"]), s=14, color=colour, alpha=0.5)
        if d["ci95"] is not None:
            ax.plot([100 * d["ci95"][0], 100 * d["ci95"][1]], [y, y], color=colour, lw=2)
        ax.scatter([100 * d["mean"]], [y], marker="D", color=colour, zorder=3)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(rows)), [row["setting"] for row in reversed(rows)])
    ax.set_xlabel("test accuracy − joint (points; dots: seeds, line: 95% CI)", fontsize=9)
    ax.set_title("− joint, paired by seed (red: chosen on validation, grey: controls)", fontsize=10)
    if panel:
        diff = 100 * np.array([row["per_class_minus_joint"] for row in reversed(rows)])
        top = max(float(np.abs(diff).max()), 1e-9)
        cax.imshow(diff, cmap="RdBu", vmin=-top, vmax=top, aspect="auto", origin="lower")
        for (i, j), v in np.ndenumerate(diff):
            cax.text(j, i, f"{v:+.1f}", ha="center", va="center", fontsize=7)
        cax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
        cax.set_yticks([])
        cax.set_title("per class − joint", fontsize=10)
    fig.tight_layout()
    from jtln_hf.utils.io import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)


def plans_figure(rows: list[dict[str, Any]], path: Path, source_names: list[str], target_names: list[str]) -> bool:
    """Each JTLN setting's cost (mean over seeds) and mean transport plan over the test images, side by side.

    The plan's entry (s, t) is the share of test images' probability mass the OT term moved from source
    class s to target class t; the cost shows what the setting asked for. Returns False (no file) when
    no setting has a plan.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shown = [row for row in rows if row.get("transport_plan") is not None]
    if not shown:
        return False
    size = 0.32 * max(len(source_names), len(target_names)) + 1.6
    fig, axes = plt.subplots(len(shown), 2, figsize=(2 * size + 1.5, size * len(shown)), squeeze=False)
    for (cost_ax, plan_ax), row in zip(axes, shown):
        for ax, key, cmap, title in ((cost_ax, "cost_matrix", "viridis", "cost C"),
                                     (plan_ax, "transport_plan", "Blues", "mean plan (test)")):  # fmt: skip
            matrix = np.array(row[key])
            ax.imshow(matrix, cmap=cmap, aspect="auto")
            ax.set_xticks(range(len(target_names)), target_names, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(source_names)), source_names, fontsize=7)
            ax.set_title(f"{row['setting']}: {title}", fontsize=8)
    fig.tight_layout()
    from jtln_hf.utils.io import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)
    return True


def run_folder(overrides: dict[str, str]) -> str:
    """A setting's folder under ``runs/``: its flags as ``flag=value`` joined by ``-`` (``default`` without any),
    a ``/`` in a value (a file's path, e.g. ``cost=costs/mine.csv``) written ``%2F``, so that it stays one folder."""
    return "-".join(f"{k}={v}".replace("/", "%2F") for k, v in overrides.items()) or "default"


def _jobs(grid: dict[str, dict[str, str]], base: list[str], seeds: list[int], out: Path,
          fraction: float) -> list[tuple[str, str, int, list[str]]]:  # fmt: skip
    """``(setting, method, seed, recipe argv)`` of every run: the baseline's (joint) and each setting's, per seed.

    Seed-major: a sweep stopped early holds every setting for the seeds it finished (a later sweep with
    fewer ``--seeds`` summarises them from their records).
    """
    from jtln_hf.methods import baseline_method

    baseline = baseline_method()
    jobs = [(baseline, baseline, seed, _argv(base, {}, baseline, seed, out / "runs" / baseline / f"seed{seed}",
                                          fraction)) for seed in seeds]  # fmt: skip
    for name, overrides in grid.items():
        folder = run_folder(overrides)
        method = overrides.get("method", "jtln")
        jobs += [(name, method, seed, _argv(base, overrides, method, seed, out / "runs" / folder / f"seed{seed}",
                                            fraction)) for seed in seeds]  # fmt: skip
    return sorted(jobs, key=lambda job: job[2])


def check_jobs(jobs: list[tuple[str, str, int, list[str]]]) -> None:
    """Every run's flags through the recipe's parsing and checks; a one-line ``ValueError`` on the first bad one."""
    from jtln_hf.experiment.checks import check_arguments
    from jtln_hf.experiment.cli import parse_args

    for _, _, _, job_argv in jobs:
        parsed = parse_args(job_argv)
        check_arguments(*parsed[:3], parsed[4])


def _prior_of(jobs: list[tuple[str, str, int, list[str]]]) -> Path | None:
    """The hand-written prior of the sweep's data (every run reads the same data flags), or None."""
    from jtln_hf.cost.flags import data_prior
    from jtln_hf.experiment.cli import parse_args

    return data_prior(parse_args(jobs[0][3])[0].spec())


def _search_setting(values: dict[str, float]) -> tuple[str, dict[str, str]]:
    """A sampled point as a setting: its name and flags (3 significant digits, what the runs are given)."""
    flags = {flag: f"{value:.3g}" for flag, value in values.items()}
    return " ".join(f"{flag}={value}" for flag, value in flags.items()), flags


def search(opts: argparse.Namespace, base: list[str], out: Path) -> int:
    """``--search N``: N settings of :data:`SEARCH_SPACE` sampled one after another by Optuna's TPE sampler, each
    run on every seed (one Ray Tune trial per run), scored by its mean validation accuracy; the best is chosen on
    validation and only its test accuracy is reported, paired with joint training by seed."""
    try:
        if opts.vary or opts.shuffled_controls:
            raise ValueError("--search samples its own settings: drop --vary and --shuffled_controls.")
        if opts.search < 1:
            raise ValueError(f"--search must be >= 1 (settings to sample), got {opts.search}.")
        from jtln_hf.experiment.trials import check_ray_address

        if not opts.local:
            check_ray_address(opts.ray_address)
        corners = dict([_search_setting({f: lo for f, (lo, _) in SEARCH_SPACE.items()}),
                        _search_setting({f: hi for f, (_, hi) in SEARCH_SPACE.items()})])  # fmt: skip
        check_jobs(_jobs(corners, base, opts.seeds, out, opts.validation_fraction))  # the space's ends pass the checks
    except ValueError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    import optuna

    from jtln_hf.experiment.trials import default_trial_gpus, run_trials
    from jtln_hf.methods import baseline_method
    from jtln_hf.utils.io import atomic_write_text

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    gpus = opts.trial_gpus if opts.trial_gpus is not None else default_trial_gpus()
    kwargs = dict(trial_cpus=opts.trial_cpus, trial_gpus=gpus, max_concurrent=opts.workers,
                  ray_address=opts.ray_address, local=opts.local)  # fmt: skip
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=opts.search_seed))
    grid: dict[str, dict[str, str]] = {}
    records: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for _ in range(opts.search):
        trial = study.ask()
        name, flags = _search_setting({f: trial.suggest_float(f, lo, hi, log=True)
                                       for f, (lo, hi) in SEARCH_SPACE.items()})  # fmt: skip
        done, failed = run_trials(_jobs({name: flags}, base, opts.seeds, out, opts.validation_fraction), out, **kwargs)
        failures += failed
        mine = [r for r in done if r["setting"] == name]
        records += [r for r in done if r not in records]
        if len(mine) < len(opts.seeds):  # a seed failed: no score (never an average over fewer seeds)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        grid[name] = flags
        study.tell(trial, sum(r["metrics"]["validation_accuracy"] for r in mine) / len(mine))
    baseline = baseline_method()
    if not grid or not any(r["setting"] == baseline for r in records):
        print(f"error: no sampled setting finished on every seed ({len(failures)} run(s) failed).", file=sys.stderr)
        return 1
    rows = summarize_sweep(records, list(grid))
    joint = summarize_sweep(records, [baseline])[0]
    chosen = choose_setting(rows, grid)
    best = next(row for row in rows if row["setting"] == chosen)
    lines = [
        f"Search of {opts.search} settings (Optuna's TPE sampler, seed {opts.search_seed}; log-uniform "
        + ", ".join(f"{f} in [{lo:g}, {hi:g}]" for f, (lo, hi) in SEARCH_SPACE.items())
        + f"), each on seeds {' '.join(map(str, opts.seeds))}, chosen on validation; the test split is reported for "
        f"the chosen setting only. Recipe flags: {' '.join(base) or '(defaults)'}.", "",
        "| sampled setting, in order | validation acc. (%) | validation − joint |", "|---|---|---|",
    ]  # fmt: skip
    for row in rows:
        mark = f"**{row['setting']}** (chosen)" if row["setting"] == chosen else row["setting"]
        lines.append(f"| {mark} | {100 * row['validation_mean']:.1f} | {row['validation_text']} |")
    lines += ["", f"Chosen: {chosen}. Test accuracy {100 * best['test_mean']:.1f}% against joint training's "
              f"{100 * joint['test_mean']:.1f}%: **{best['text']}** (test − joint, paired by seed)."]  # fmt: skip
    table = "\n".join(lines) + "\n" + failures_markdown(failures)
    payload = {"seeds": opts.seeds, "search": {"space": SEARCH_SPACE, "sampler": "optuna TPESampler",
               "seed": opts.search_seed, "sampled": [{"setting": r["setting"], "flags": grid[r["setting"]],
               "validation_mean": r["validation_mean"]} for r in rows], "chosen": chosen,
               "test_minus_joint": best["test_minus_joint"]}, "base_flags": base, "runs": records,
               "failed": failures}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.json", json.dumps(payload, indent=2, default=float) + "\n")
    atomic_write_text(out / "sweep.md", table)
    print(table)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    base = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    opts = build_parser().parse_args(own)
    grid = dict(opts.vary) if opts.vary else default_grid()
    out = Path(opts.output_dir)
    if opts.search is not None:
        return search(opts, base, out)
    try:  # every setting's flags (and the cluster's address) are checked before anything trains
        from jtln_hf.experiment.trials import check_ray_address

        if not opts.local:
            check_ray_address(opts.ray_address)
        check_jobs(_jobs(grid, base, opts.seeds, out, opts.validation_fraction))
        if opts.shuffled_controls:  # built from flags that passed the checks; the twins' own are checked too
            twins = shuffled_twins(grid, base)
            check_jobs([job for job in _jobs(twins, base, opts.seeds, out, opts.validation_fraction)
                        if job[0] in set(twins) - set(grid)])  # fmt: skip
            grid = twins
    except ValueError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    from jtln_hf.experiment.trials import default_trial_gpus, run_trials
    from jtln_hf.methods import baseline_method

    baseline = baseline_method()
    jobs = _jobs(grid, base, opts.seeds, out, opts.validation_fraction)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if opts.local:
        # torch is imported by now (the checks above), so OMP_NUM_THREADS no longer applies here: set it.
        # Two processes of two threads each on two cores spin in OpenMP's barriers (measured 5-8x slower)
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    start = time.perf_counter()
    gpus = opts.trial_gpus if opts.trial_gpus is not None else default_trial_gpus()
    records, failures = run_trials(jobs, out, trial_cpus=opts.trial_cpus, trial_gpus=gpus, max_concurrent=opts.workers,
                                   ray_address=opts.ray_address, local=opts.local)  # fmt: skip
    if not any(r["setting"] == baseline for r in records):
        print(f"error: every {baseline} run failed ({failures[0]['error']}): nothing to pair the settings with.",
              file=sys.stderr)  # fmt: skip
        return 1
    wall = time.perf_counter() - start
    settings = [name for name in grid if any(r["setting"] == name for r in records)]  # a setting all failed: below
    if not settings:
        print(f"error: every run of every setting failed ({failures[0]['error']}).", file=sys.stderr)
        return 1
    grid = {name: grid[name] for name in settings}
    rows = summarize_sweep(records, settings)
    attach_controls(rows, grid, records)
    attach_shuffled(rows, grid)
    attach_prior_agreement(rows, records, _prior_of(jobs))
    joint_rows = summarize_sweep(records, [baseline])[0]
    chosen = choose_setting(rows, grid)
    caption = (
        f"JTLN settings against joint training, {len(opts.seeds)} seeds ({' '.join(map(str, opts.seeds))}), "
        f"paired by seed; the setting is chosen on the validation split ({opts.validation_fraction:g} of the "
        f"target training pool), the test split only reports. Recipe flags: {' '.join(base) or '(defaults)'}. "
        f"Wall time {wall / 60:.0f} min"
        + (" in this process." if opts.local else f" on Ray ({opts.trial_cpus:g} CPU, {gpus:g} GPU per run).")
    )
    if any("shuffled" in row for row in rows):
        caption += (" A setting's shuffled control (\"(shuffled)\", never chosen) has its flags and C's target columns "
                    "permuted by each run's seed (--cost_shuffle_seed): same values, wrong relations.")  # fmt: skip
    from jtln_hf.utils.io import atomic_write_text

    table = sweep_markdown(rows, joint_rows, chosen, caption) + failures_markdown(failures)
    class_names = next((r["target_names"] for r in records if r.get("target_names")), None)
    payload = {"seeds": opts.seeds, "grid": grid, "base_flags": base, "chosen": chosen, "wall_seconds": wall,
               "target_names": class_names, "joint": joint_rows, "settings": rows, "runs": records,
               "failed": failures}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.json", json.dumps(payload, indent=2, default=float) + "\n")
    atomic_write_text(out / "sweep.md", table)
    sweep_figure(rows, chosen, out / "sweep.png", class_names)
    source_names = next((r["source_names"] for r in records if r.get("source_names")), None)
    if class_names and source_names:
        plans_figure(rows, out / "sweep-plans.png", source_names, class_names)
    print(table)
    print(f"chosen on validation: {chosen}; files: {out / 'sweep.md'}, {out / 'sweep.json'}, {out / 'sweep.png'}")
    if failures:
        print(f"error: {len(failures)} run(s) failed {'once' if opts.local else 'twice'} and are left out of the "
              "table (listed in sweep.md); run the sweep again to retry them.", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    # as recipes/train_jtln.py: the imports' objects frozen, so that each --local run's Trainer stages do not walk
    # them in their full garbage collections
    gc.freeze()
    sys.exit(main())
