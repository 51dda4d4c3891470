"""A sweep's runs as Ray Tune trials: one (setting, seed) run per trial, on this machine or a Ray cluster.

``recipes/sweep.py`` builds the jobs (a setting's recipe flags for one method and seed) and reads the
records back; this module runs them. :func:`run_job` trains one job with the recipe's own parsing and
checks and writes its ``record.json``; a job whose record exists is read back, never trained again, so a
sweep invoked again (more seeds, more settings, or after a kill) trains only what is missing.
:func:`run_trials` hands the missing jobs to Ray Tune (``Tuner`` over a grid of jobs, one trial each, its
resources per trial, a failed trial retried once) and returns the records and the jobs that failed with
their errors. Tune keeps its state under ``<output_dir>/tune/``.

Why Ray Tune and not a process pool of our own: transformers' own hyperparameter search uses it
(``Trainer.hyperparameter_search(backend="ray")``), and it schedules trials on a cluster's machines and
GPUs, retries failures and records every trial, which a pool on one machine cannot.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import os
import re
import socket
import time
import traceback
from pathlib import Path
from typing import Any

#: Each run's record in its folder: read back by a later sweep with the same flags (no retraining).
RECORD = "record.json"
#: Beside it, one line per try of the run (Ray Tune retries a failed trial once; ``--local`` does not).
ATTEMPTS = "attempts.log"
#: A job: (setting name, method, seed, the recipe's argv for that run).
Job = tuple[str, str, int, list[str]]
#: Per process: the data pools, loaded once per data flags (a worker may run several trials).
_POOLS: dict[Any, Any] = {}


def _run_folder(job: Job) -> Path:
    """The run's ``--output_dir``."""
    from .cli import parse_args

    return Path(parse_args(job[3])[3].output_dir)


def read_record(job: Job) -> dict[str, Any] | None:
    """The record a finished run of ``job`` left (same recipe flags), or None."""
    setting, _, _, argv = job
    path = _run_folder(job) / RECORD
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get("argv") == argv:
            return {**record, "setting": setting}
    return None


def run_job(job: Job) -> dict[str, Any]:
    """Train one method for one seed with the recipe's own parsing and checks; return its record.

    The record (metrics, per-class accuracy, cost and mean transport plan: :func:`jtln_hf.methods.diagnose_model`)
    is written to ``record.json`` in the run's folder; a later sweep with the same flags for that run reads
    it back instead of training again.
    """
    from ..data import load_pools
    from ..methods import METHOD_REGISTRY, diagnose_model, run_method
    from ..utils.io import atomic_write_text
    from .checks import check_arguments
    from .cli import parse_args
    from .plan import plan_experiment

    done = read_record(job)
    if done is not None:
        return done
    setting, method, seed, argv = job
    data_args, model_args, jtln_args, args, given, _ = parse_args(argv)
    check_arguments(data_args, model_args, jtln_args, given)
    spec = data_args.spec()
    if spec not in _POOLS:
        _POOLS[spec] = load_pools(spec)
    plan = plan_experiment(data_args, model_args, jtln_args, args, pools=_POOLS[spec])
    start = time.perf_counter()
    exp = plan.data[seed]
    run = run_method(method, exp, plan.config, plan.settings, args, seed)
    seconds = time.perf_counter() - start
    uses_ot = METHOD_REGISTRY[method].uses_ot
    args_of_run = dataclasses.replace(args, seed=seed, ot_loss_weight=args.ot_loss_weight if uses_ot else 0.0)
    record = {"setting": setting, "method": method, "seed": seed, "seconds": seconds, "argv": argv,
              "metrics": run.metrics, "cost": run.cost_description, "max_steps": args.max_steps,
              "warmup_steps": run.warmup_steps,
              **diagnose_model(run.model, exp, plan.settings.data, args_of_run)}  # fmt: skip
    atomic_write_text(Path(args.output_dir) / RECORD, json.dumps(record, indent=1, default=float) + "\n")
    return record


@functools.lru_cache(maxsize=None)
def _freeze_imports() -> None:
    """Once per worker process, at its first trial: freeze what the imports made (``gc.freeze``), as
    recipes/train_jtln.py does, since Trainer runs a full garbage collection per stage (~0.5 s over them)."""
    gc.freeze()


def _log_attempt(folder: Path) -> None:
    """One line per try of a run in its folder's :data:`ATTEMPTS` (a retried trial shows two)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ATTEMPTS).open("a") as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}\n")


def _attempts(folder: Path) -> int:
    """The tries of a run logged in its folder, earlier sweeps' too."""
    attempts = folder / ATTEMPTS
    return len(attempts.read_text().splitlines()) if attempts.is_file() else 0


def _trial(config: dict[str, Any]) -> None:
    """One Tune trial: one job; reports its accuracies (the record itself is on disk)."""
    from ray import tune

    job = tuple(config["run"]["job"])
    _freeze_imports()
    _log_attempt(_run_folder(job))
    record = run_job(job)
    metrics = record["metrics"]
    tune.report({"accuracy": metrics.get("accuracy", float("nan")),
                 "validation_accuracy": metrics.get("validation_accuracy", float("nan"))})  # fmt: skip


def _trial_name(trial: Any) -> str:
    """``<setting>-seed<k>`` (folder-safe, short): Tune's default names the whole config, a run's flags included."""
    setting, _, seed, _ = trial.config["run"]["job"]
    return re.sub(r"[^\w.=-]+", "_", f"{setting}-seed{seed}")[:80] + f"-{trial.trial_id}"


def check_ray_address(address: str | None) -> None:
    """Raise a one-line ``ValueError`` when ``address`` (``--ray_address`` or ``RAY_ADDRESS``) names no running
    Ray cluster this machine can reach: ``auto`` needs a cluster started here (``ray start --head``), a
    ``host:port`` or ``ray://host:port`` a port that accepts a connection within 3 s. None: a local Ray."""
    if address is None:
        return
    if address == "auto":
        try:  # where `ray start` records the cluster it started on this machine (not a public API)
            from ray._private.utils import read_ray_address
        except ImportError:  # another Ray: ray.init reports a missing cluster itself
            return
        if not read_ray_address():
            raise ValueError("--ray_address auto: no Ray cluster runs on this machine: start one (ray start --head) "
                             "or drop --ray_address to run on a local Ray.")  # fmt: skip
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray_address {address!r}: expected host:port, ray://host:port or auto.")
    try:
        with socket.create_connection((host, int(port)), timeout=3.0):
            pass
    except OSError as err:
        raise ValueError(f"--ray_address {address}: cannot be reached ({err.strerror or err}): start the cluster "
                         "(ray start --head on its first machine) or fix the address.") from None


def default_trial_gpus() -> float:
    """One GPU per trial where the machine has GPUs, else none."""
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


def run_trials(jobs: list[Job], out: Path, *, trial_cpus: float = 1.0, trial_gpus: float | None = None,
               max_concurrent: int | None = None, ray_address: str | None = None,
               local: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """Run every job not yet finished, one Ray Tune trial each; return ``(records, failures)``.

    ``records``: every job's record (read back or trained now), in the jobs' order, the failed ones left
    out; ``failures``: ``{"setting", "method", "seed", "attempts", "error"}`` of each job whose trial failed
    twice (Tune retries a failed trial once; ``local`` does not; ``attempts`` counts every try of the run,
    earlier sweeps' too).
    ``trial_cpus`` / ``trial_gpus``: Ray resources per trial (GPUs: one per trial where there are GPUs);
    ``max_concurrent``: at most this many trials at once (default: what the resources allow); ``ray_address``:
    a running cluster (None: a local Ray with this machine's CPUs and GPUs). ``local``: the jobs one after
    another in this process, without Ray (debugging; the tests of everything but the Ray runner); a job that
    raises is tried once, its traceback printed, and listed in ``failures`` as a failed trial is.
    """
    records: dict[int, dict[str, Any]] = {}
    todo = []
    for k, job in enumerate(jobs):
        done = read_record(job)
        if done is not None:
            records[k] = done
        else:
            todo.append(k)
    failures: list[dict[str, Any]] = []
    if local:
        for k in todo:
            _log_attempt(_run_folder(jobs[k]))
            try:
                records[k] = run_job(jobs[k])
            except Exception as err:  # as a failed trial: named with its error, the sweep goes on (not retried)
                traceback.print_exc()
                setting, method, seed, _ = jobs[k]
                failures.append({"setting": setting, "method": method, "seed": seed,
                                 "attempts": _attempts(_run_folder(jobs[k])),
                                 "error": f"{type(err).__name__}: {err}".splitlines()[0]})  # fmt: skip
    elif todo:
        failed = _tune(jobs, todo, out, trial_cpus, default_trial_gpus() if trial_gpus is None else trial_gpus,
                       max_concurrent, ray_address)  # fmt: skip
        for k in todo:
            done = read_record(jobs[k])
            if done is not None:
                records[k] = done
            else:
                setting, method, seed, _ = jobs[k]
                failures.append({"setting": setting, "method": method, "seed": seed,
                                 "attempts": _attempts(_run_folder(jobs[k])),
                                 "error": failed.get(k, "the trial ended without a record")})  # fmt: skip
    return [records[k] for k in range(len(jobs)) if k in records], failures


def _tune(jobs: list[Job], todo: list[int], out: Path, cpus: float, gpus: float, max_concurrent: int | None,
          address: str | None) -> dict[int, str]:  # fmt: skip
    """The Tune run over ``jobs[todo]``; returns the last error line of each failed trial, by job index."""
    import ray
    from ray import tune

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}})  # fmt: skip
    trainable = tune.with_resources(_trial, {"cpu": cpus, "gpu": gpus})
    runs = [{"index": k, "job": list(jobs[k])} for k in todo]
    tuner = tune.Tuner(
        trainable,
        param_space={"run": tune.grid_search(runs)},
        # reuse_actors: a worker process runs trial after trial, importing torch and jtln_hf and loading the data
        # once (seconds per trial otherwise)
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(storage_path=str((out / "tune").resolve()), name=time.strftime("sweep-%Y%m%d-%H%M%S"),
                                  failure_config=tune.FailureConfig(max_failures=1), verbose=0),
    )  # fmt: skip
    failed = {}
    for result in tuner.fit():
        if result.error is not None:
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(result.error))
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            failed[int(result.config["run"]["index"])] = lines[-1] if lines else type(result.error).__name__
    return failed


__all__ = [
    "ATTEMPTS",
    "RECORD",
    "Job",
    "check_ray_address",
    "default_trial_gpus",
    "read_record",
    "run_job",
    "run_trials",
]
