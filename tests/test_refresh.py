"""--cost_refresh_steps: a model cost recomputed from the current backbone every K steps (jtln_hf.cost.refresh)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from jtln_hf.cost.refresh import CostRefresh, relative_change

from conftest import default_cost, make_model, make_trainer

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "train_jtln.py"


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # conftest: one torch thread


def test_relative_change_is_the_frobenius_ratio():
    old = np.array([[3.0, 0.0], [0.0, 4.0]])  # ||old||_F = 5
    new = old + np.array([[0.0, 1.0], [0.0, 0.0]])
    # exact on any CPU: the squares and sums of these small integers (25, 1) are exact in float64, sqrt and
    # the division are correctly rounded (IEEE 754), so 1/5 is the same double; old - old is exactly 0
    assert relative_change(new, old) == 1 / 5
    assert relative_change(old, old) == 0.0
    assert relative_change(np.zeros((2, 2)), np.zeros((2, 2))) == 0.0
    assert relative_change(old, np.zeros((2, 2))) == float("inf")


def _run(small_split, tmp_path, callbacks, steps=7):
    model = make_model(num_target=2)
    trainer = make_trainer(model, small_split["joint"], tmp_path, max_steps=steps)
    for callback in callbacks:
        trainer.add_callback(callback)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return model, trainer, losses


def test_refreshes_at_every_kth_step_but_the_last_and_leaves_the_random_state_alone(small_split, tmp_path):
    calls, costs = [], []

    def rebuild():
        # draws from every generator training uses: the refresh must hide these draws from training
        torch.rand(3), np.random.rand(3), random.random()
        calls.append(len(calls))
        costs.append(default_cost(3, 2) + len(calls))  # a new cost each time, shifted by the refresh count
        return costs[-1].numpy()

    model, trainer, losses = _run(small_split, tmp_path / "a", [CostRefresh(rebuild, every=3)], steps=7)
    refreshes = [e for e in trainer.state.log_history if "cost_refresh" in e]
    assert [(e["step"], e["cost_refresh"]) for e in refreshes] == [(3, 1), (6, 2)]  # not at 7, the last step
    assert torch.equal(model.cost_matrix, costs[-1].float())
    # exact: both sides convert the same float32 values to float64 losslessly and run the same numpy ops
    first, second = ((default_cost(3, 2) + k).double().numpy() for k in (1, 2))
    assert refreshes[1]["cost_change"] == relative_change(second, first)

    # the same run with a refresh that returns the cost unchanged trains exactly as with no refresh:
    # same process, same thread, same batches, so the same float operations (bitwise, not approx)
    same = lambda: default_cost(3, 2).numpy()  # noqa: E731  (make_model's cost)
    _, _, with_noop = _run(small_split, tmp_path / "b", [CostRefresh(same, every=2)], steps=7)
    _, _, without = _run(small_split, tmp_path / "c", [], steps=7)
    assert with_noop == without


def test_refresh_needs_a_positive_interval():
    with pytest.raises(ValueError, match="--cost_refresh_steps must be >= 1"):
        CostRefresh(lambda: None, every=0)


# ------------------------------------------------------------------------------- the recipe
COMMAND = [
    sys.executable, str(RECIPE), "--mode", "jtln", "--seeds", "0", "--shots", "2", "--max_eval_samples", "40",
    "--per_device_train_batch_size", "8", "--max_steps", "6", "--cost", "relationship", "--cost_warmup_steps", "2",
    "--cost_refresh_steps", "2", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1",
    "--dataloader_num_workers", "0",
]  # fmt: skip
STAGE = Path("runs") / "jtln-seed0"


def _recipe(out: Path, *extra: str) -> None:
    """The recipe's ``main()`` in this process on one torch thread (the runs are compared bit for bit)."""
    from test_recipe_cli import recipe

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert recipe.main([*COMMAND[2:], "--output_dir", str(out), *extra]) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def refreshed_runs(tmp_path_factory):
    """A: uninterrupted; B: the same run, its joint stage cut back to checkpoint-2 and resumed (one process:
    two runs of one command in one environment, as a resume from the same folder is)."""
    root = tmp_path_factory.mktemp("refresh")
    run_a, run_b = root / "a", root / "b"
    _recipe(run_a)
    _recipe(run_b)
    for path in [run_b / STAGE / "checkpoint-4", run_b / STAGE / "checkpoint-6", run_b / "model",
                 run_b / "results.json", run_b / "results.md"]:
        subprocess.run(["rm", "-rf", str(path)], check=True)
    _recipe(run_b, "--resume_from_checkpoint", "true")
    return run_a, run_b


def _refreshes(run: Path, checkpoint: int) -> list[tuple[int, int]]:
    state = json.loads((run / STAGE / f"checkpoint-{checkpoint}" / "trainer_state.json").read_text())
    return [(e["step"], e["cost_refresh"]) for e in state["log_history"] if "cost_refresh" in e]


def test_the_recipe_refreshes_at_the_same_steps_after_a_resume(refreshed_runs):
    run_a, run_b = refreshed_runs
    assert _refreshes(run_a, 6) == [(2, 1), (4, 2)]  # not at 6, the last step
    assert _refreshes(run_a, 2) == [(2, 1)]  # refreshed before the step's checkpoint, saved with it
    assert _refreshes(run_b, 6) == [(2, 1), (4, 2)]  # step 2 from checkpoint-2's state, step 4 refreshed again
    final_a, final_b = (load_file(run / "model" / "model.safetensors") for run in (run_a, run_b))
    # bit for bit: one thread, the same batches and RNG states after the resume (as tests/test_resume.py)
    assert [k for k in final_a if not torch.equal(final_a[k], final_b[k])] == []
    assert json.loads((run_a / "results.json").read_text())["cost_refresh_steps"] == 2
    card = (run_a / "model" / "README.md").read_text()
    assert "recomputed from the current backbone every 2 joint steps" in card


def test_a_refresh_reads_the_weights_of_its_step(tmp_path, monkeypatch):
    """checkpoint-4 is saved right after the step-4 refresh: its cost is the one its own weights define.

    The run goes in this process, and the refresh's own ``rebuild`` (its predictor, arguments and data,
    as the run called it) is called again on checkpoint-4's weights read back from the file: the same
    calls on the same shapes in one process, so the same floats on any CPU. (A recomputation through
    another entry point, or in another process, may round differently: one ulp apart on an AVX2 CPU.)
    """
    from test_recipe_cli import recipe

    from jtln_hf.methods import builtins

    refreshes: list[CostRefresh] = []

    class Recorded(CostRefresh):  # the run's refresh, and the model it refreshes
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            refreshes.append(self)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.model = model
            return super().on_step_end(args, state, control, model=model, **kwargs)

    monkeypatch.setattr(builtins, "CostRefresh", Recorded)
    out = tmp_path / "run"
    assert recipe.main([*COMMAND[2:], "--output_dir", str(out)]) == 0
    (refresh,) = refreshes
    checkpoint = out / STAGE / "checkpoint-4"
    weights = load_file(checkpoint / "model.safetensors")
    refresh.model.load_state_dict(weights)  # the weights of step 4, bit for bit (a tensor saved and read back)
    recomputed = torch.as_tensor(refresh.rebuild(), dtype=torch.float64)
    assert torch.equal(recomputed.float(), weights["cost_matrix"])  # set_cost_matrix stores float32 of the float64 C
    earlier = load_file(out / STAGE / "checkpoint-2" / "model.safetensors")["cost_matrix"]
    assert not torch.equal(earlier, weights["cost_matrix"])  # the step-4 refresh moved C
