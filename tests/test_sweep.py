"""recipes/sweep.py: settings x seeds against joint, paired by seed, chosen on validation only."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _load_sweep():
    sys.path.insert(0, str(REPO / "recipes"))
    spec = importlib.util.spec_from_file_location("sweep_recipe", REPO / "recipes" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _load_sweep()
TINY = ["--max_steps", "2", "--shots", "2", "--max_eval_samples", "40", "--per_device_train_batch_size", "8"]
#: 0.002 of the 30,000-image target pool: 60 validation images (12 per class), enough to choose on; the
#: sweep's default 0.1 would evaluate 3,000 images in each run of these tests.
SMALL_VALIDATION = ["--validation_fraction", "0.002"]
#: The sweep the tests below share: the prior at λ_ot 0.3 (its shuffled twin too) and the constant control.
TINY_SWEEP = ["--vary", "ot_loss_weight=0.3", "--vary", "cost=constant", "--shuffled_controls", "--seeds", "0", "1",
              *SMALL_VALIDATION, "--local"]  # fmt: skip
SHUFFLED = "ot_loss_weight=0.3 (shuffled)"


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    status = sweep.main([*TINY_SWEEP, "--output_dir", str(out), "--", *TINY])
    assert status == 0
    return out, json.loads((out / "sweep.json").read_text())


def test_every_setting_is_paired_with_joint_by_seed(tiny_sweep):
    out, result = tiny_sweep
    runs = result["runs"]
    assert sorted((r["setting"], r["seed"]) for r in runs) == sorted(
        (s, k) for s in ("joint", "ot_loss_weight=0.3", SHUFFLED, "cost=constant") for k in (0, 1))  # fmt: skip
    joint = {r["seed"]: r["metrics"]["accuracy"] for r in runs if r["setting"] == "joint"}
    for row in result["settings"]:
        mine = {r["seed"]: r["metrics"]["accuracy"] for r in runs if r["setting"] == row["setting"]}
        expected = [mine[k] - joint[k] for k in (0, 1)]
        assert row["test_minus_joint"]["per_seed"] == pytest.approx(expected)
        assert row["test_minus_joint"]["mean"] == pytest.approx(sum(expected) / 2)
        assert all("validation_accuracy" in r["metrics"] for r in runs)  # every run reports validation


def test_the_choice_is_made_on_validation_not_test(tiny_sweep):
    out, result = tiny_sweep
    best = max((row for row in result["settings"] if row["setting"] != SHUFFLED), key=lambda row: row["validation_mean"])
    assert result["chosen"] == best["setting"]
    table = (out / "sweep.md").read_text()
    assert f"**{best['setting']}** (chosen on validation)" in table and "| joint (no OT, baseline) |" in table
    Image.open(out / "sweep.png").verify()
    Image.open(out / "sweep-plans.png").verify()
    assert (out / "runs" / "cost=constant" / "seed1" / "runs" / "jtln-seed1" / "trainer_state.json").is_file()


def test_a_bad_setting_fails_before_anything_trains(tmp_path, capsys):
    status = sweep.main(["--vary", "ot_loss_wieght=3", "--seeds", "0", "--output_dir", str(tmp_path / "o"), "--", *TINY])
    assert status == 2 and "did you mean --ot_loss_weight" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_each_run_records_per_class_accuracy_cost_and_mean_plan(tiny_sweep):
    out, result = tiny_sweep
    names = result["target_names"]
    for run in result["runs"]:
        per_class = run["per_class_accuracy"]
        assert set(per_class) == {"test", "validation"} and len(per_class["test"]) == len(names)
        present = [v for v in per_class["test"] if v is not None]
        # the same per-class ratios sklearn's balanced accuracy averages: equal up to float64 rounding of a
        # mean of <= 5 terms in [0, 1] (a few ulps), so 1e-12 is a bound, not a tuned value
        assert abs(sum(present) / len(present) - run["metrics"]["mean_per_class_accuracy"]) <= 1e-12
        assert ("transport_plan" in run) == (run["method"] == "jtln")  # joint trains no OT term: no plan
    constant = next(r for r in result["runs"] if r["setting"] == "cost=constant")
    plan = constant["transport_plan"]
    assert len(plan) == len(result["runs"][0]["source_names"]) and len(plan[0]) == len(names)
    assert constant["cost_matrix"] == [[1.0] * len(names)] * len(plan)
    # column sums are the (floored at 1e-8) target probabilities, in float32: the total is 1 up to
    # 25 entries x 2^-24 rounding + 5 x 1e-8 floor, < 1e-5
    assert min(min(row) for row in plan) >= 0 and abs(sum(map(sum, plan)) - 1) < 1e-5
    row = next(r for r in result["settings"] if r["setting"] == "cost=constant")
    assert len(row["per_class_minus_joint"]) == len(names) and row["transport_plan"] is not None


def test_a_finished_run_is_read_back_not_trained_again(tiny_sweep, monkeypatch):
    out, result = tiny_sweep
    import jtln_hf.methods

    def refuse(*args, **kwargs):
        raise AssertionError("a run with a record.json was trained again")

    monkeypatch.setattr(jtln_hf.methods, "run_method", refuse)
    status = sweep.main([*TINY_SWEEP, "--output_dir", str(out), "--", *TINY])
    assert status == 0
    rerun = json.loads((out / "sweep.json").read_text())
    assert [r["metrics"] for r in rerun["runs"]] == [r["metrics"] for r in result["runs"]]


def test_a_warm_up_setting_is_paired_with_its_control_which_is_never_chosen(tmp_path):
    """``cost=relationship`` trains the source head alone first; its control has the same warm-up and no OT term."""
    warm = ["cost_warmup_steps=2"]
    jtln, control = " ".join(["cost=relationship", *warm]), " ".join(["cost=relationship", *warm, "ot_loss_weight=0"])
    other = "cost=relationship cost_warmup_steps=1"  # another warm-up: no control in the grid
    status = sweep.main(["--vary", jtln, "--vary", control, "--vary", other, "--seeds", "0", "1", *SMALL_VALIDATION,
                         "--local", "--output_dir", str(tmp_path), "--", *TINY])  # fmt: skip
    assert status == 0
    result = json.loads((tmp_path / "sweep.json").read_text())
    rows = {row["setting"]: row for row in result["settings"]}
    assert rows[jtln]["control"] == control and "control" not in rows[other] and "control" not in rows[control]
    assert rows[control].get("is_control") and not rows[jtln].get("is_control")
    acc = {(r["setting"], r["seed"]): r["metrics"]["accuracy"] for r in result["runs"]}
    assert rows[jtln]["test_minus_control"]["per_seed"] == pytest.approx([acc[jtln, k] - acc[control, k] for k in (0, 1)])
    assert result["chosen"] != control
    table = (tmp_path / "sweep.md").read_text()
    assert "test − its warm-up control |" in table and f"| {rows[jtln]['control_text']} |" in table


def test_a_restarted_warm_up_is_paired_with_joint_not_with_the_warm_up_control():
    """--cost_warmup_restart discards the warm-up once C is read: the control after the same warm-up would
    compare it with a network it never trained on; its control is joint training (its − joint column)."""
    grid = {"probe": {"cost": "features-mmd", "cost_warmup_steps": "2", "cost_warmup_restart": "true"},
            "warm": {"cost": "features-mmd", "cost_warmup_steps": "2"},
            "control": {"cost": "features-mmd", "cost_warmup_steps": "2", "ot_loss_weight": "0"}}  # fmt: skip
    records = [{"setting": name, "warmup_steps": 2} for name in grid]
    rows = [{"setting": name, "test_accuracy": {0: 0.5 + k / 10, 1: 0.6}, "validation_accuracy": {0: 0.5, 1: 0.6}}
            for k, name in enumerate(grid)]  # fmt: skip
    sweep.attach_controls(rows, grid, records)
    by_name = {row["setting"]: row for row in rows}
    assert "control" not in by_name["probe"] and by_name["warm"]["control"] == "control"
    assert by_name["warm"]["test_minus_control"]["per_seed"] == pytest.approx([-0.1, 0.0])


def test_a_control_is_not_chosen_even_when_it_is_best_on_validation():
    grid = {"cost=relationship": {"cost": "relationship"},
            "control": {"cost": "relationship", "ot_loss_weight": "0"}, "half": {"ot_loss_weight": "0.5"}}  # fmt: skip
    rows = [{"setting": "cost=relationship", "validation_mean": 0.80}, {"setting": "control", "validation_mean": 0.90},
            {"setting": "half", "validation_mean": 0.70}]  # fmt: skip
    assert sweep.choose_setting(rows, grid) == "cost=relationship"
    # a grid of controls only still names one (the best)
    assert sweep.choose_setting(rows[1:2], {"control": grid["control"]}) == "control"


# ------------------------------------------------------------------------------- shuffled controls


def test_each_ot_setting_gets_a_shuffled_twin_and_nothing_else_does():
    grid = {"default": {}, "ot_loss_weight=0.3": {"ot_loss_weight": "0.3"},
            "control": {"cost": "relationship", "ot_loss_weight": "0"}, "cost=constant": {"cost": "constant"},
            "Co-Tuning": {"method": "cotuning"}, "mine": {"cost_shuffle_seed": "7"}}  # fmt: skip
    twins = sweep.shuffled_twins(grid, TINY)
    assert list(twins) == ["default", "default (shuffled)", "ot_loss_weight=0.3", "ot_loss_weight=0.3 (shuffled)",
                           "control", "cost=constant", "Co-Tuning", "mine"]  # fmt: skip
    assert twins["ot_loss_weight=0.3 (shuffled)"] == {"ot_loss_weight": "0.3", "cost_shuffle_seed": sweep.RUN_SEED}
    # each run of a twin is shuffled by its own seed
    argv = sweep._argv(TINY, twins["default (shuffled)"], "jtln", 4, Path("o"), 0.1)
    assert argv[argv.index("--cost_shuffle_seed") + 1] == "4"
    with pytest.raises(ValueError, match="--shuffled_controls: no setting trains the OT term under a cost with rel"):
        sweep.shuffled_twins({k: grid[k] for k in ("control", "cost=constant", "Co-Tuning")}, TINY)


def test_a_setting_is_paired_with_its_shuffled_twin_by_seed_which_is_never_chosen():
    grid = {"default": {}, "default (shuffled)": {"cost_shuffle_seed": sweep.RUN_SEED}}
    rows = [{"setting": "default", "test_accuracy": {0: 0.80, 1: 0.70, 2: 0.75},
             "validation_accuracy": {0: 0.60, 1: 0.65, 2: 0.70}, "validation_mean": 0.65},
            {"setting": "default (shuffled)", "test_accuracy": {0: 0.75, 1: 0.72, 2: 0.70},
             "validation_accuracy": {0: 0.70, 1: 0.70, 2: 0.70}, "validation_mean": 0.70}]  # fmt: skip
    sweep.attach_shuffled(rows, grid)
    mine, twin = rows
    # by hand: 0.80 - 0.75, 0.70 - 0.72, 0.75 - 0.70 on test; 0.60 - 0.70, 0.65 - 0.70, 0.70 - 0.70 on validation
    assert mine["shuffled"] == "default (shuffled)" and twin.get("is_control") and "shuffled" not in twin
    assert mine["test_minus_shuffled"]["per_seed"] == pytest.approx([0.05, -0.02, 0.05])
    assert mine["test_minus_shuffled"]["mean"] == pytest.approx(0.08 / 3) and mine["test_minus_shuffled"]["wins"] == 2
    assert mine["validation_minus_shuffled"]["per_seed"] == pytest.approx([-0.10, -0.05, 0.0])
    assert sweep.choose_setting(rows, grid) == "default"  # the twin is best on validation, and never chosen


def test_a_shuffled_sweep_end_to_end(tiny_sweep):
    out, result = tiny_sweep
    assert list(result["grid"]) == ["ot_loss_weight=0.3", SHUFFLED, "cost=constant"]  # no twin for the constant C
    assert result["chosen"] != SHUFFLED
    runs = {(r["setting"], r["seed"]): r for r in result["runs"]}
    from jtln_hf.data.fashion_mnist import FASHION_MNIST_PRIOR_PATH
    from jtln_hf.cost import column_permutation, load_cost, normalize_cost

    prior = normalize_cost(load_cost(FASHION_MNIST_PRIOR_PATH, result["runs"][0]["source_names"],
                                     result["target_names"]), "column")  # fmt: skip
    for seed in (0, 1):
        twin = runs[SHUFFLED, seed]
        assert twin["argv"][twin["argv"].index("--cost_shuffle_seed") + 1] == str(seed)
        # the record keeps the final C: the float32 buffer read back as float64, exactly the shuffled prior rounded so
        # (the run parses and normalises the CSV element-wise, no sum, as here: the same doubles on any CPU)
        expected = prior[:, column_permutation(prior, seed)].astype(np.float32).astype(np.float64)
        assert np.array_equal(twin["cost_matrix"], expected) and "shuffled by seed" in twin["cost"]
        assert np.array_equal(runs["ot_loss_weight=0.3", seed]["cost_matrix"], prior.astype(np.float32).astype(np.float64))
    rows = {row["setting"]: row for row in result["settings"]}
    acc = {key: r["metrics"]["accuracy"] for key, r in runs.items()}
    assert rows["ot_loss_weight=0.3"]["test_minus_shuffled"]["per_seed"] == pytest.approx(
        [acc["ot_loss_weight=0.3", k] - acc[SHUFFLED, k] for k in (0, 1)])  # fmt: skip
    assert "validation_minus_shuffled" in rows["ot_loss_weight=0.3"] and rows[SHUFFLED]["is_control"]
    assert "test_minus_shuffled" not in rows["cost=constant"]
    # how far each run's C is from the prior (tests/test_cost_agreement.py): the prior itself agrees on every target
    # class; the constant C's first cheapest source, T-shirt/top, is the prior's for Shirt and Bag only
    assert rows["ot_loss_weight=0.3"]["prior_agreement"] == {"0": 1.0, "1": 1.0}
    assert rows["cost=constant"]["prior_agreement"] == {"0": 2 / 5, "1": 2 / 5}
    table = (out / "sweep.md").read_text()
    assert "test − its shuffled control |" in table and f"| {rows['ot_loss_weight=0.3']['shuffled_text']} |" in table
    assert (out / "runs" / "ot_loss_weight=0.3-cost_shuffle_seed=seed" / "seed1" / "record.json").is_file()


def test_shuffled_controls_without_an_ot_setting_fail_before_anything_trains(tmp_path, capsys):
    status = sweep.main(["--vary", "cost=constant", "--shuffled_controls", "--seeds", "0", "--output_dir",
                         str(tmp_path / "o"), "--", *TINY])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and err.count("error: ") == 1 and "--shuffled_controls: no setting" in err
    assert not (tmp_path / "o").exists()


def test_a_search_samples_settings_chooses_on_validation_and_reports_test_for_the_chosen_only(tmp_path, capsys):
    """--search 2 (without Ray: --local): Optuna's seeded sampler, each setting on both seeds; invoked again with
    the same seed it samples the same settings and reads their runs back."""
    argv = ["--search", "2", "--seeds", "0", "1", *SMALL_VALIDATION, "--local", "--output_dir", str(tmp_path), "--",
            *TINY]  # fmt: skip
    assert sweep.main(argv) == 0
    result = json.loads((tmp_path / "sweep.json").read_text())
    sampled = result["search"]["sampled"]
    assert len(sampled) == 2 and len({s["setting"] for s in sampled}) == 2
    for s in sampled:  # inside the space, as the runs were given them (3 significant digits)
        for flag, (lo, hi) in sweep.SEARCH_SPACE.items():
            assert lo <= float(s["flags"][flag]) <= hi and s["setting"].count(f"{flag}=") == 1
    runs = {(r["setting"], r["seed"]): r["metrics"] for r in result["runs"]}
    mean_val = {s["setting"]: np.mean([runs[s["setting"], k]["validation_accuracy"] for k in (0, 1)]) for s in sampled}
    assert [s["validation_mean"] for s in sampled] == pytest.approx([mean_val[s["setting"]] for s in sampled])
    chosen = result["search"]["chosen"]
    assert chosen == max(mean_val, key=mean_val.get)
    test_diff = [runs[chosen, k]["accuracy"] - runs["joint", k]["accuracy"] for k in (0, 1)]
    assert result["search"]["test_minus_joint"]["per_seed"] == pytest.approx(test_diff)
    table = (tmp_path / "sweep.md").read_text()
    assert f"**{chosen}** (chosen)" in table and table.count("Test accuracy") == 1 and "test − joint" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "ot_loss_weight=" in line]
    assert len(rows) == 2 and all(line.count("|") == 4 for line in rows)  # setting, validation, validation − joint
    assert "| sampled setting, in order | validation acc. (%) | validation − joint |" in table
    import jtln_hf.methods

    with pytest.MonkeyPatch.context() as mp:  # the same sampler seed: the same settings, every run read back
        mp.setattr(jtln_hf.methods, "run_method", lambda *a, **k: pytest.fail("a finished run was trained again"))
        assert sweep.main(argv) == 0
    assert json.loads((tmp_path / "sweep.json").read_text())["search"]["sampled"] == sampled
    capsys.readouterr()
    assert sweep.main(["--search", "2", "--vary", "ot_loss_weight=3", "--output_dir", str(tmp_path / "x")]) == 2
    assert "--search samples its own settings: drop --vary" in capsys.readouterr().err


def test_a_setting_with_a_file_path_runs_in_one_folder():
    """A cost file's path in --vary stays one folder under runs/ (a / would nest it), and the run reads that path."""
    jobs = sweep._jobs({"mine": {"cost": "costs/mine.csv"}}, TINY, [3], Path("out"), 0.1)
    (setting, method, seed, argv), = [job for job in jobs if job[0] == "mine"]
    out = Path(argv[argv.index("--output_dir") + 1])
    assert out == Path("out") / "runs" / "cost=costs%2Fmine.csv" / "seed3"
    assert argv[argv.index("--cost") + 1] == "costs/mine.csv" and (method, seed) == ("jtln", 3)
    assert sweep.run_folder({}) == "default"


def test_a_local_run_that_raises_is_named_and_the_sweep_goes_on(tiny_sweep, tmp_path, capsys):
    """--local, as the Ray runner: a cost file of the wrong shape passes the flag checks and raises when its run
    plans; the run is listed with its error (tried once: --local does not retry), the other runs are read back.
    Last in this file: it rewrites the shared sweep's sweep.md and sweep.json."""
    out, _ = tiny_sweep
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((2, 2)))
    setting = f"cost={bad}"
    status = sweep.main(["--vary", "ot_loss_weight=0.3", "--vary", setting, "--seeds", "0", *SMALL_VALIDATION,
                         "--local", "--output_dir", str(out), "--", *TINY])  # fmt: skip
    assert status == 1
    err = capsys.readouterr().err
    assert "1 run(s) failed once" in err and "Traceback" in err  # the run's traceback, then the sweep's line
    result = json.loads((out / "sweep.json").read_text())
    assert [(f["setting"], f["seed"], f["attempts"]) for f in result["failed"]] == [(setting, 0, 1)]
    assert all(f["error"].startswith("ValueError: ") and "(5, 5)" in f["error"] for f in result["failed"])
    assert {(r["setting"], r["seed"]) for r in result["runs"]} == {("joint", 0), ("ot_loss_weight=0.3", 0)}
    table = (out / "sweep.md").read_text()
    assert f"- {setting}, seed 0 (jtln, tried 1 time): ValueError: " in table and "**1 run(s) failed**" in table
