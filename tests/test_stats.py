"""Seed-paired differences to joint: the statistic, results.json/results.md, the card and compare.png.

References: ``scipy.stats.t.interval`` and ``scipy.stats.ttest_rel(...).confidence_interval()``
for the interval, and the hand-computed case d = -0.2, +1.2, +1.0, +0.9, +0.8 points:
mean 0.74, sd = sqrt(1.192 / 4) = 0.54589, t_{0.975,4} = 2.776445, so 0.74 ± 0.6778 = [0.062, 1.418].
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
from conftest import make_model
from matplotlib.collections import PathCollection
from matplotlib.container import ErrorbarContainer
from PIL import Image

from jtln_hf.sharing import figures
from jtln_hf.methods import METHOD_REGISTRY, RunResult
from jtln_hf.experiment.results import summarize, write_results
from jtln_hf.sharing.modelcard import COMPARE_FIGURE, write_model_card
from jtln_hf.utils.stats import paired_difference, paired_summary

JOINT = [0.861, 0.874, 0.880, 0.869, 0.877]
DIFF_POINTS = [-0.2, 1.2, 1.0, 0.9, 0.8]  # JTLN - joint, percentage points
JTLN = [j + d / 100 for j, d in zip(JOINT, DIFF_POINTS)]
HEADER = "− joint (points, 95% CI, wins)"


def test_interval_matches_scipy_and_the_hand_computed_case():
    d = paired_difference(dict(enumerate(JTLN)), dict(enumerate(JOINT)))
    diffs = np.array(JTLN) - np.array(JOINT)
    assert d.seeds == (0, 1, 2, 3, 4) and d.n == 5
    np.testing.assert_allclose(d.per_seed, np.array(DIFF_POINTS) / 100, atol=1e-12)
    assert d.mean == pytest.approx(0.0074, abs=1e-12)
    reference = scipy.stats.t.interval(0.95, df=4, loc=diffs.mean(), scale=scipy.stats.sem(diffs))
    np.testing.assert_allclose(d.ci95, reference, rtol=1e-10)
    ttest = scipy.stats.ttest_rel(JTLN, JOINT).confidence_interval(0.95)
    np.testing.assert_allclose(d.ci95, (ttest.low, ttest.high), rtol=1e-10)
    half = 2.776445 * np.sqrt(1.192 / 4) / np.sqrt(5) / 100  # by hand, t from a table
    np.testing.assert_allclose(d.ci95, (0.0074 - half, 0.0074 + half), atol=1e-7)
    assert 100 * d.ci95[0] == pytest.approx(0.062, abs=1e-3) and 100 * d.ci95[1] == pytest.approx(1.418, abs=1e-3)
    assert d.wins == 4
    assert d.to_text() == "+0.7 [+0.1, +1.4], 4/5"
    assert d.to_dict() == {"per_seed": list(d.per_seed), "mean": d.mean, "ci95": list(d.ci95), "wins": 4,
                           "seeds": [0, 1, 2, 3, 4]}  # fmt: skip


def test_one_seed_has_no_interval():
    d = paired_difference({7: 0.9}, {7: 0.875})
    assert d.per_seed == (pytest.approx(0.025),) and d.mean == pytest.approx(0.025)
    assert d.ci95 is None and d.wins == 1 and d.n == 1
    assert d.to_dict()["ci95"] is None and json.loads(json.dumps(d.to_dict()))["ci95"] is None
    assert d.to_text() == "+2.5, 1/1"


def test_a_tie_is_not_a_win():
    values, baseline = {0: 0.5, 1: 0.75, 2: 0.25, 3: 0.5}, {0: 0.5, 1: 0.5, 2: 0.25, 3: 0.75}  # d = 0, +.25, 0, -.25
    d = paired_difference(values, baseline)
    assert d.per_seed == (0.0, 0.25, 0.0, -0.25) and d.mean == 0.0 and d.wins == 1  # exact: dyadic values
    ttest = scipy.stats.ttest_rel(list(values.values()), list(baseline.values())).confidence_interval()
    np.testing.assert_allclose(d.ci95, (ttest.low, ttest.high), rtol=1e-10)
    half = 3.182446 * np.sqrt(0.125 / 3) / 2  # t_{0.975,3} sd / sqrt(4) = 0.3248, by hand
    np.testing.assert_allclose(d.ci95, (-half, half), atol=1e-6)
    assert d.to_text(digits=0) == "+0 [-32, +32], 1/4"


def test_only_seeds_both_methods_ran_are_paired():
    values = {3: 0.80, 0: 0.70, 1: 0.72, 9: 0.99}  # seed 9: the baseline did not run it
    baseline = {0: 0.69, 1: 0.70, 2: 0.50, 3: 0.78}  # seed 2: the method did not run it
    d = paired_difference(values, baseline)
    assert d.seeds == (3, 0, 1)  # the method's order
    np.testing.assert_allclose(d.per_seed, [0.02, 0.01, 0.02], atol=1e-12)
    ttest = scipy.stats.ttest_rel([0.80, 0.70, 0.72], [0.78, 0.69, 0.70]).confidence_interval()
    np.testing.assert_allclose(d.ci95, (ttest.low, ttest.high), rtol=1e-10)
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({5: 0.1}, {6: 0.2})


def fake_runs(seeds, methods=("finetune", "consecutive", "joint", "jtln"), skip=(), balanced=True):
    """RunResults of a made-up comparison (no model): JTLN - joint = DIFF_POINTS on seeds 0..4."""
    offsets = {"finetune": -0.05, "consecutive": -0.01}
    runs = []
    for seed in seeds:
        for method in methods:
            if (method, seed) in skip:
                continue
            acc = JTLN[seed] if method == "jtln" else JOINT[seed]
            if method in offsets:
                acc += offsets[method] + 0.002 * seed
            mpc = acc if balanced else acc - 0.004
            runs.append(RunResult(method, seed, {"accuracy": acc, "mean_per_class_accuracy": mpc}, 12.0, None))
    return runs


def test_results_json_and_md_have_the_paired_differences(tmp_path):
    runs = fake_runs(range(5), skip={("finetune", 4)})  # fine-tuning missed seed 4
    summary = summarize(runs)
    table = write_results(tmp_path, summary, runs, {"seeds": list(range(5))}, "Caption.")
    results = json.loads((tmp_path / "results.json").read_text())
    paired = results["paired"]
    assert list(paired) == ["finetune-joint", "consecutive-joint", "jtln-joint"]
    jtln = paired["jtln-joint"]
    assert jtln["seeds"] == [0, 1, 2, 3, 4] and jtln["wins"] == 4
    np.testing.assert_allclose(jtln["per_seed"], np.array(DIFF_POINTS) / 100, atol=1e-12)
    ttest = scipy.stats.ttest_rel(JTLN, JOINT).confidence_interval()
    assert jtln["mean"] == pytest.approx(0.0074) and jtln["ci95"] == pytest.approx([ttest.low, ttest.high])
    finetune = paired["finetune-joint"]
    assert finetune["seeds"] == [0, 1, 2, 3] and finetune["wins"] == 0
    np.testing.assert_allclose(finetune["per_seed"], [-0.05 + 0.002 * s for s in range(4)], atol=1e-12)
    assert results["summary"]["joint"]["accuracy"]["per_seed"] == JOINT  # the summary is unchanged

    md = (tmp_path / "results.md").read_text()
    assert md == table and md.startswith("Caption.\n\n")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in md.splitlines() if line.startswith("| ")}
    assert rows["method"][2] == HEADER
    assert rows["JTLN (joint + OT)"][2] == "+0.7 [+0.1, +1.4], 4/5"
    assert rows["joint fine-tuning, two heads, no OT"][2] == "—"
    assert rows["fine-tuning on target only"][2].endswith(", 0/4")
    assert "95% Student-t interval" in md


def test_without_joint_there_is_no_paired_column(tmp_path):
    runs = fake_runs(range(3), methods=("finetune", "jtln"))
    write_results(tmp_path, summarize(runs), runs, {}, "")
    assert json.loads((tmp_path / "results.json").read_text())["paired"] == {}
    md = (tmp_path / "results.md").read_text()
    assert "− joint" not in md and "—" not in md and md.splitlines()[1] == "|---|---|---|---|---|---|"


def test_the_card_shows_the_paired_column(tmp_path):
    runs = fake_runs(range(5))
    summary = summarize(runs)
    table = write_results(tmp_path / "results", summary, runs, {}, "Caption.")
    write_model_card(tmp_path / "card", make_model(), summary=summary, results_table=table, repo_id="tester/paired",
                     cost_description="", hyperparameters={}, baseline="joint")  # fmt: skip
    text = (tmp_path / "card" / "README.md").read_text()
    assert f"| {HEADER} |" in text and "| +0.7 [+0.1, +1.4], 4/5 |" in text
    assert f"]({COMPARE_FIGURE})" in text
    with Image.open(tmp_path / "card" / COMPARE_FIGURE) as image:
        assert image.format == "PNG"


def _dots(ax) -> list[float]:
    return sorted(float(y) for c in ax.collections if isinstance(c, PathCollection) for _, y in c.get_offsets())


def _bars(ax) -> list[tuple[float, float | None]]:
    """(mean, half-width or None) of each error bar of ``ax``, left to right."""
    out = []
    for container in (c for c in ax.containers if isinstance(c, ErrorbarContainer)):
        mean = float(container.lines[0].get_ydata()[0])
        segments = container.lines[2][0].get_segments() if container.has_yerr else []
        out.append((mean, [float(s[:, 1].min()) for s in segments] + [float(s[:, 1].max()) for s in segments]))
    return out


@pytest.mark.parametrize("n_seeds", [1, 3, 5])
@pytest.mark.parametrize("with_joint", [True, False])
def test_compare_png(tmp_path, n_seeds, with_joint):
    methods = ("finetune", "consecutive", "joint", "jtln") if with_joint else ("finetune", "jtln")
    summary = summarize(fake_runs(range(n_seeds), methods=methods))
    path = figures.plot_compare(summary, tmp_path / "compare.png", "joint")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
    fig = figures.compare_figure(summary, "joint")
    assert len(fig.axes) == (2 if with_joint else 1)
    accuracy = fig.axes[-1]
    assert [t.get_text() for t in accuracy.get_xticklabels()] == [METHOD_REGISTRY[m].label for m in methods]
    assert accuracy.get_ylim()[0] > 50  # the axis is fitted to the values, not started at 0 %
    expected = sorted(100 * a for m in methods for a in summary[m]["accuracy"]["per_seed"])
    np.testing.assert_allclose(_dots(accuracy), expected)
    assert len(_bars(accuracy)) == len(methods)  # balanced: no repeated mean per-class accuracy
    if not with_joint:
        return
    diff = fig.axes[0]
    paired = paired_summary(summary, "joint")
    assert [t.get_text() for t in diff.get_xticklabels()] == [
        f"{METHOD_REGISTRY[m].label}\n{paired[m].to_text().rsplit(', ', 1)[0]}\nwon {paired[m].wins}/{paired[m].n}"
        for m in ("finetune", "consecutive", "jtln")]
    assert "joint" in diff.get_ylabel() and "points" in diff.get_ylabel()
    np.testing.assert_allclose(_dots(diff), sorted(100 * v for d in paired.values() for v in d.per_seed), atol=1e-9)
    for (mean, ends), d in zip(_bars(diff), paired.values()):
        assert mean == pytest.approx(100 * d.mean)
        if n_seeds == 1:
            assert ends == [] and d.ci95 is None
        else:
            np.testing.assert_allclose(ends, 100 * np.array(d.ci95))
    zero_lines = [ln for ln in diff.get_lines() if list(ln.get_ydata()) == [0, 0]]
    assert zero_lines and diff.get_ylim()[0] < 0 < diff.get_ylim()[1]


def test_compare_figure_draws_mean_per_class_accuracy_only_when_it_differs():
    summary = summarize(fake_runs(range(3), balanced=False))
    accuracy = figures.compare_figure(summary, "joint").axes[-1]
    bars = _bars(accuracy)
    assert len(bars) == 8
    per_class = sorted(m for m, _ in bars[1::2])
    assert per_class == pytest.approx(sorted(100 * e["mean_per_class_accuracy"]["mean"] for e in summary.values()))
