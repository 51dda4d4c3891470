"""The method registry: every consumer reads it, and a new method is one registration."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import make_args

from jtln_hf.experiment.arguments import DataArguments, JTLNArguments, ModelArguments
from jtln_hf.experiment.checks import check_arguments
from jtln_hf.experiment import plan_experiment
from jtln_hf.methods import (
    METHOD_REGISTRY,
    Trained,
    baseline_method,
    method_names,
    register_method,
    run_method,
    train_target_only,
)
from jtln_hf.experiment.results import results_markdown, summarize


def test_registry_holds_the_paper_methods_and_the_baseline_in_order():
    names = method_names()
    assert names == ("finetune", "consecutive", "joint", "jtln", "cotuning")
    assert [m for m in names if METHOD_REGISTRY[m].uses_ot] == ["jtln"]
    assert [m for m in names if METHOD_REGISTRY[m].joint_batches] == ["joint", "jtln", "cotuning"]
    assert [m for m in names if not METHOD_REGISTRY[m].trains_source] == ["finetune"]
    assert baseline_method() == "joint"
    assert len({METHOD_REGISTRY[m].colour for m in names}) == len(names)  # one colour each in the figure


def test_the_budget_text_is_a_fact_of_the_registration():
    assert METHOD_REGISTRY["consecutive"].steps_text("500", 0) == "500 source + 500 target"
    assert METHOD_REGISTRY["jtln"].steps_text("500", 200) == "200 warm-up + 500"
    assert METHOD_REGISTRY["joint"].steps_text("500", 0) == "500"


def test_method_names_are_read_at_call_time(request):
    from jtln_hf.utils.styles import METHOD_STYLES

    request.addfinalizer(lambda: (METHOD_REGISTRY.pop("late", None), METHOD_STYLES.pop("late", None)))
    register_method("late", "a late method", "late", "tab:olive")(lambda run: None)
    assert method_names()[-1] == "late"
    assert JTLNArguments(mode="late").run_methods == ["late"]
    assert "late" in JTLNArguments().methods  # the default comparison includes it


def test_method_flags_are_checked_from_the_registry():
    data, model = DataArguments(), ModelArguments()
    with pytest.raises(ValueError, match=r"--cotuning_weight has no effect: .* or run cotuning"):
        check_arguments(data, model, JTLNArguments(mode="jtln"), {"cotuning_weight"})
    with pytest.raises(ValueError, match=r"--ot_epsilon has no effect: .* or run jtln"):
        check_arguments(data, model, JTLNArguments(mode="compare", methods=["joint", "cotuning"]), {"ot_epsilon"})
    check_arguments(data, model, JTLNArguments(mode="cotuning"), {"cotuning_weight", "cost_warmup_steps"})


def test_a_registered_method_runs_and_reports_under_its_title(request, tmp_path):
    """A new method is one register_method call: --mode accepts it, run_method trains it, the table names it."""
    request.addfinalizer(lambda: METHOD_REGISTRY.pop("half", None))
    stages = []

    @register_method("half", "target only, half the steps", "half", "tab:olive")
    def _half(run):
        stages.append(run.name)
        args = dataclasses.replace(run.args, max_steps=max(1, run.args.max_steps // 2))
        return Trained(train_target_only(run.model, run.exp, args, run.settings.data, run.name), "half budget")

    data_args = DataArguments(shots=2, max_eval_samples=30)
    model_args = ModelArguments(backbone="test_resnet")
    jtln_args = JTLNArguments(mode="half", seeds=[0])
    check_arguments(data_args, model_args, jtln_args, {"mode"})
    args = make_args(tmp_path / "run", max_steps=2, per_device_train_batch_size=8)
    plan = plan_experiment(data_args, model_args, jtln_args, args)
    assert plan.methods == ("half",)
    run = run_method("half", plan.data[0], plan.config, plan.settings, args, 0)
    assert stages == ["half-seed0"] and run.cost_description == "half budget"
    assert (tmp_path / "run" / "runs" / "half-seed0" / "eval_results.json").is_file()
    assert "| target only, half the steps |" in results_markdown(summarize([run]))


def test_a_restarted_warm_up_only_gives_c_and_training_starts_again_from_the_initial_weights(tmp_path):
    """--cost_warmup_restart: the warm-up computes C and is then discarded. With the OT term off, JTLN after a
    restarted warm-up trains the very weights of joint training (same seed, same calls in one process: exact);
    without the restart the same warm-up leaves other weights (the check can fail)."""
    import torch

    data_args = DataArguments(shots=2, max_eval_samples=30)
    model_args = ModelArguments(backbone="test_resnet")

    def trained(method: str, restart: bool) -> dict:
        jtln_args = JTLNArguments(mode=method, seeds=[0], cost="features-centroid", cost_warmup_steps=2,
                                  cost_warmup_restart=restart)  # fmt: skip
        args = make_args(tmp_path / f"{method}-{restart}", max_steps=2, per_device_train_batch_size=8,
                         ot_loss_weight=0.0)  # fmt: skip
        plan = plan_experiment(data_args, model_args, jtln_args, args)
        run = run_method(method, plan.data[0], plan.config, plan.settings, args, 0)
        if method == "jtln":
            assert ("restarted from the initial weights" in run.cost_description) == restart
            assert run.model.cost_matrix.abs().sum() > 0  # C was computed by the warm-up, then kept
        return {k: v for k, v in run.model.state_dict().items() if k != "cost_matrix"}

    joint = trained("joint", False)
    restarted, continued = trained("jtln", True), trained("jtln", False)
    assert all(torch.equal(joint[k], restarted[k]) for k in joint)
    assert not all(torch.equal(joint[k], continued[k]) for k in joint)


def test_a_restart_without_a_warm_up_to_discard_is_refused():
    data, model = DataArguments(), ModelArguments(backbone="test_resnet")
    for jtln, given in ((JTLNArguments(cost="prior", cost_warmup_restart=True), {"cost", "cost_warmup_restart"}),
                        (JTLNArguments(cost="features-mmd", cost_warmup_steps=0, cost_warmup_restart=True),
                         {"cost", "cost_warmup_steps", "cost_warmup_restart"})):  # fmt: skip
        with pytest.raises(ValueError, match="--cost_warmup_restart discards the source-only warm-up"):
            check_arguments(data, model, jtln, given)
