"""The recipe's argument dataclasses: defaults that depend on the set-up, and cross-checks."""

from __future__ import annotations

import pytest

from jtln_hf.experiment.arguments import DataArguments, JTLNArguments, ModelArguments, method_settings, resolved_cost
from jtln_hf.experiment.checks import check_arguments
from jtln_hf.cost.builders import DEFAULT_COST_WARMUP_STEPS


def test_default_cost_is_the_prior_on_fashion_mnist_and_features_mmd_elsewhere():
    def kind(data: DataArguments, jtln: JTLNArguments) -> str:
        return resolved_cost(data, ModelArguments(), jtln).kind

    assert kind(DataArguments(), JTLNArguments()) == "prior"
    assert kind(DataArguments(source_dataset="a", target_dataset="b"), JTLNArguments()) == "features-mmd"
    assert kind(DataArguments(dataset="org/flowers"), JTLNArguments()) == "features-mmd"
    assert kind(DataArguments(), JTLNArguments(cost="relationship")) == "relationship"


@pytest.mark.parametrize(
    "cost,pretrained,expected",
    [
        ("features-mmd", False, DEFAULT_COST_WARMUP_STEPS),
        ("features-mmd", True, 0),  # pretrained features need no source warm-up
        ("relationship", True, DEFAULT_COST_WARMUP_STEPS),  # the source head is new even on pretrained features
        ("prior", False, 0),  # no model, no warm-up
        ("constant", True, 0),
    ],
)
def test_warmup_steps_follow_the_cost_and_the_weights(cost, pretrained, expected):
    model = ModelArguments(pretrained_backbone=pretrained)
    assert resolved_cost(DataArguments(), model, JTLNArguments(cost=cost)).warmup_steps == expected
    given = resolved_cost(DataArguments(), model, JTLNArguments(cost=cost, cost_warmup_steps=7)).warmup_steps
    # the flag wins: a model cost reads the model after these steps, a fixed cost's joint steps follow them
    assert given == 7
    refresh = resolved_cost(DataArguments(), model, JTLNArguments(cost=cost, cost_refresh_steps=50)).refresh_steps
    assert refresh == (50 if cost in ("features-mmd", "relationship") else 0)  # a fixed cost is never refreshed
    assert ModelArguments(backbone_checkpoint="w.safetensors").pretrained  # a checkpoint implies pretrained


@pytest.mark.parametrize("pretrained", [False, True])
def test_cotuning_always_warms_the_source_head_up(pretrained):
    def warmup(jtln: JTLNArguments) -> int:
        return method_settings(DataArguments(), ModelArguments(pretrained_backbone=pretrained), jtln).of("cotuning").cost_warmup_steps

    assert warmup(JTLNArguments()) == DEFAULT_COST_WARMUP_STEPS
    assert warmup(JTLNArguments(cost_warmup_steps=3)) == 3


def test_the_cli_defaults_are_the_library_defaults():
    """One default per setting: the flag's default is the library's constant, not a copy of it."""
    from jtln_hf.cost.normalize import DEFAULT_NORMALIZATION
    from jtln_hf.training.cotuning import DEFAULT_COTUNING_WEIGHT

    jtln = JTLNArguments()
    assert jtln.cost_normalization == DEFAULT_NORMALIZATION == "column"
    assert jtln.cotuning_weight == DEFAULT_COTUNING_WEIGHT
    assert method_settings(DataArguments(), ModelArguments(), jtln).of("cotuning").cotuning_weight == DEFAULT_COTUNING_WEIGHT


def _check(given, data=None, model=None, jtln=None):
    check_arguments(data or DataArguments(), model or ModelArguments(), jtln or JTLNArguments(), set(given))


def test_flags_of_the_other_data_shape_are_rejected():
    two = DataArguments(source_dataset="a", target_dataset="b")
    with pytest.raises(ValueError, match="--image_column applies to --dataset; with --source_dataset/--target_dataset "
                                         "use --source_image_column / --target_image_column"):  # fmt: skip
        _check({"image_column"}, data=two)
    with pytest.raises(ValueError, match="--target_test_fraction applies to --source_dataset/--target_dataset runs"):
        _check({"target_test_fraction"})
    with pytest.raises(ValueError, match="exclude each other"):
        _check({"dataset"}, data=two)
    with pytest.raises(ValueError, match="--dataset_root is only read for 'fgvc-aircraft'"):
        _check(set(), data=DataArguments(dataset_root="x"))


def test_flags_no_method_uses_are_rejected_and_used_ones_pass():
    with pytest.raises(ValueError, match="--ot_objective has no effect"):
        _check({"ot_objective"}, jtln=JTLNArguments(mode="joint"))
    with pytest.raises(ValueError, match="--cotuning_weight has no effect"):
        _check({"cotuning_weight"}, jtln=JTLNArguments(mode="jtln"))
    _check({"cost_warmup_steps"}, jtln=JTLNArguments(mode="cotuning"))  # Co-Tuning's warm-up
    _check({"ot_epsilon", "cost", "cost_warmup_steps"}, jtln=JTLNArguments(mode="jtln", cost="relationship"))
    with pytest.raises(ValueError, match="--cost_normalization has no effect on --cost constant"):
        _check({"cost_normalization"}, jtln=JTLNArguments(mode="jtln", cost="constant"))


def test_values_are_checked_with_a_suggestion():
    with pytest.raises(ValueError, match=r"--cost 'relationshp' is neither .*\(did you mean 'relationship'\?\)"):
        JTLNArguments(cost="relationshp")
    with pytest.raises(ValueError, match=r"--target_validation_fraction must be in \(0, 1\)"):
        DataArguments(target_validation_fraction=1.5)
    with pytest.raises(ValueError, match="--shots must be >= 1"):
        DataArguments(shots=-1)
