"""A sweep's runs as Ray Tune trials (jtln_hf.experiment.trials through recipes/sweep.py), on a local Ray.

The only tests that start Ray: the other sweep tests run with ``--local`` (the same jobs, one after another
in their process). Here a 2-setting x 2-seed sweep of 2-step runs (JTLN at λ_ot 0.3 and joint training, the
baseline every sweep runs) goes through Ray Tune; invoked again it
trains nothing; a setting whose runs raise is tried twice and named, with its error, in sweep.md and
sweep.json, and the exit status says so; a sweep on a running cluster (``--ray_address``), killed
(SIGKILL) after its first finished run, completes when it is started again. Trials reuse their worker processes (torch and jtln_hf imported once per worker).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray  # the sweep extra, ray[tune]: make test installs it

from jtln_hf.experiment import trials

from test_sweep import SMALL_VALIDATION, TINY, sweep

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["--vary", "ot_loss_weight=0.3"]  # with joint (the baseline every sweep runs): 2 settings
SEEDS = ["--seeds", "0", "1"]
#: One trial at a time: make test's other xdist worker has the second core (one worker process, reused, runs
#: every trial: torch and jtln_hf imported once)
ONE_AT_A_TIME = ["--workers", "1"]


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory):
    """The sweep on Ray Tune in this process (Ray started here, shut down after the module)."""
    out = tmp_path_factory.mktemp("ray") / "sweep"
    status = sweep.main([*SETTINGS, *SEEDS, *SMALL_VALIDATION, *ONE_AT_A_TIME, "--trial_cpus", "1", "--output_dir",
                         str(out), "--", *TINY])  # fmt: skip
    yield status, out
    ray.shutdown()


def test_every_setting_and_seed_is_one_trial_with_its_record(ray_sweep):
    status, out = ray_sweep
    assert status == 0
    result = json.loads((out / "sweep.json").read_text())
    runs = {(r["setting"], r["seed"]) for r in result["runs"]}
    assert runs == {(s, k) for s in ("joint", "ot_loss_weight=0.3") for k in (0, 1)}
    assert result["failed"] == []
    for folder in ("joint", "ot_loss_weight=0.3"):
        for seed in (0, 1):
            run = out / "runs" / folder / f"seed{seed}"
            assert (run / trials.RECORD).is_file()
            assert len((run / trials.ATTEMPTS).read_text().splitlines()) == 1  # one trial, no retry
    # Ray Tune's own state: one experiment folder, one trial folder per run (named by setting and seed)
    (experiment,) = (out / "tune").iterdir()
    names = sorted(p.name for p in experiment.iterdir() if p.is_dir())
    assert len(names) == 4 and sum(name.startswith("joint-seed") for name in names) == 2
    table = (out / "sweep.md").read_text()
    assert "on Ray (1 CPU, 0 GPU per run)" in table and "failed" not in table


def test_a_second_invocation_trains_nothing(ray_sweep, monkeypatch):
    _, out = ray_sweep
    before = json.loads((out / "sweep.json").read_text())

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run went to Ray Tune again")

    monkeypatch.setattr(trials, "_tune", refuse)
    status = sweep.main([*SETTINGS, *SEEDS, *SMALL_VALIDATION, "--output_dir", str(out), "--", *TINY])
    assert status == 0
    after = json.loads((out / "sweep.json").read_text())
    assert [r["metrics"] for r in after["runs"]] == [r["metrics"] for r in before["runs"]]


def test_a_failing_setting_is_tried_twice_then_named_with_its_error(ray_sweep, tmp_path, capsys):
    """A cost file of the wrong shape passes the flag checks (the file is read when the run plans) and raises in
    every trial of its setting: retried once, then listed; the other runs are read back (same folder)."""
    _, out = ray_sweep
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((2, 2)))
    setting = f"cost={bad}"
    status = sweep.main([*SETTINGS, "--vary", setting, "--seeds", "0", *SMALL_VALIDATION, *ONE_AT_A_TIME,
                         "--output_dir", str(out), "--", *TINY])  # fmt: skip
    assert status == 1
    assert "1 run(s) failed twice" in capsys.readouterr().err
    result = json.loads((out / "sweep.json").read_text())
    assert [(f["setting"], f["seed"], f["attempts"]) for f in result["failed"]] == [(setting, 0, 2)]
    assert all("shape" in f["error"] and "(5, 5)" in f["error"] for f in result["failed"])
    assert setting not in {row["setting"] for row in result["settings"]}  # no interval from no run
    table = (out / "sweep.md").read_text()
    assert f"- {setting}, seed 0 (jtln, tried 2 times): " in table and "**1 run(s) failed**" in table
    assert {(r["setting"], r["seed"]) for r in result["runs"]} == {("joint", 0), ("ot_loss_weight=0.3", 0)}


def test_an_unreachable_cluster_is_one_line_before_any_trial(tmp_path, capsys):
    status = sweep.main([*SETTINGS, "--seeds", "0", "--ray_address", "127.0.0.1:9", "--output_dir",
                         str(tmp_path / "o"), "--", *TINY])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: --ray_address 127.0.0.1:9: cannot be reached")
    assert not (tmp_path / "o").exists()


def test_a_killed_sweep_completes_when_started_again(ray_sweep, tmp_path):
    """The sweep in its own process, on the running Ray of this module as a cluster (``--ray_address`` its GCS
    address), SIGKILLed once a first run has its record; started again, it trains the rest (the finished run
    read back) and ends with every run. The second start runs ``sweep.main`` with the same arguments in this
    process, already a driver of that cluster (what it must show is what the killed one left on disk and in
    the cluster; a second start-up of torch and Ray in another process would add ~30 s of CPU and nothing
    to check)."""
    out = tmp_path / "sweep"
    address = ray.get_runtime_context().gcs_address  # the cluster the fixture's sweep started in this process
    cmd = [sys.executable, str(REPO / "recipes" / "sweep.py"), "--vary", "ot_loss_weight=0.3", "--seeds", "0",
           *SMALL_VALIDATION, "--workers", "1", "--ray_address", address, "--output_dir", str(out), "--", *TINY]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not list(out.glob(f"runs/*/seed*/{trials.RECORD}")):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no run finished in 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver (the cluster ends its trials)
        proc.wait()
    finished = list(out.glob(f"runs/*/seed*/{trials.RECORD}"))
    assert len(finished) == 1 and not (out / "sweep.json").exists()  # one of the two runs, one at a time
    assert sweep.main(cmd[2:]) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert {(r["setting"], r["seed"]) for r in result["runs"]} == {("joint", 0), ("ot_loss_weight=0.3", 0)}
    for record in finished:  # read back, not trained again: one attempt in all
        assert len((record.parent / trials.ATTEMPTS).read_text().splitlines()) == 1
