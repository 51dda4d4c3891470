"""The ``--cost`` registry: builders against hand-computed costs, defaults, and one-place extension."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from jtln_hf import data as jdata
from jtln_hf.experiment.arguments import DataArguments, JTLNArguments, ModelArguments, resolved_cost
from jtln_hf.experiment.checks import check_arguments
from jtln_hf.data.fashion_mnist import FASHION_MNIST_PRIOR_PATH
from jtln_hf.cost.builders import (
    COST_BUILDERS,
    DEFAULT_FEATURE_COST,
    CostInputs,
    build_cost,
    register_cost,
)
from jtln_hf.cost.flags import cost_kind
from jtln_hf.experiment import plan_experiment
from jtln_hf.data import KNOWN_DATASETS, known_dataset

SOURCE = ["T-shirt/top", "Trouser", "Pullover"]
TARGET = ["Shirt", "Coat"]


def _inputs(fashion_mnist, predict=None, **kw) -> CostInputs:
    train, _ = fashion_mnist
    source, target = jdata.split_by_classes(train, SOURCE, TARGET)
    return CostInputs(jdata.sample_shots(source, 4, seed=0), jdata.sample_shots(target, 3, seed=0), SOURCE, TARGET,
                      predict=predict, **kw)  # fmt: skip


def test_relationship_is_minus_log_of_the_mean_source_softmax_per_target_class(fashion_mnist):
    """Source logits chosen per row; the cost is -log of each target class's mean softmax, computed by hand."""
    inputs = _inputs(fashion_mnist)
    labels = np.asarray(inputs.target["label"])
    logits = np.stack([[2.0, 0.0, -1.0] if y == 0 else [0.0, 1.0, 3.0] for y in labels])  # (6 rows, L_s = 3)
    seen = []

    def predict(ds, fields):
        seen.append((len(ds), fields))
        return {"source_logits": logits.astype(np.float32)}, labels

    inputs.predict = predict
    cost, how = build_cost("relationship", inputs, "none")
    assert seen == [(6, ("source_logits",))]  # the labelled target images, source head only
    softmax = lambda z: np.exp(z) / np.exp(z).sum()  # noqa: E731
    expected = -np.log(np.stack([softmax(np.array([2.0, 0.0, -1.0])), softmax(np.array([0.0, 1.0, 3.0]))]).T)
    np.testing.assert_allclose(cost, expected, rtol=1e-6)
    assert cost.shape == (3, 2) and "p(y_s | y_t)" in how and "normalisation: none" in how


def test_feature_cost_reads_pooled_features_of_sampled_source_and_all_target_images(fashion_mnist):
    """Centroid distance on features placed by hand: class c of either side sits at (c, 0)."""
    inputs = _inputs(fashion_mnist, samples_per_class=2)
    calls = []

    def predict(ds, fields):
        calls.append((len(ds), fields))
        y = np.asarray(ds["label"])
        return {"pooler_output": np.stack([y, np.zeros_like(y)], 1).astype(np.float32)}, y

    inputs.predict = predict
    cost, how = build_cost("features-centroid", inputs, "none")
    assert calls == [(3 * 2, ("pooler_output",)), (2 * 3, ("pooler_output",))]  # 2 per source class, every shot
    np.testing.assert_allclose(cost, [[0, 1], [1, 0], [2, 1]], atol=1e-6)  # |s - t|
    assert "centroid" in how and "(6 images)" in how


def test_the_target_pool_diagnostic_reads_that_many_images_of_each_target_class_from_the_pool(fashion_mnist):
    """--cost_from_target_pool: the builder sees samples_per_class pool images per target class, not the shots."""
    from types import SimpleNamespace

    from jtln_hf.cost.builders import Cost
    from jtln_hf.cost.resolve import resolve_cost

    train, _ = fashion_mnist
    source, pool = jdata.split_by_classes(train, SOURCE, TARGET)
    shots = jdata.sample_shots(pool, 3, seed=0)
    seen = []

    def predict(ds, fields):
        y = np.asarray(ds["label"])
        seen.append(np.bincount(y).tolist())
        return {"pooler_output": np.stack([y, np.zeros_like(y)], 1).astype(np.float32)}, y

    exp = SimpleNamespace(source=source, target=shots, target_pool=pool, source_names=SOURCE, target_names=TARGET)
    fixed = resolve_cost(Cost("features-centroid", "none", 0, 7, from_target_pool=True), exp, seed=1, predict=predict)
    assert seen == [[7, 7, 7], [7, 7]]  # 7 source and 7 target images per class, though the run has 3 shots
    assert "diagnostic (--cost_from_target_pool)" in fixed.description
    seen.clear()
    resolve_cost(Cost("features-centroid", "none", 0, 7), exp, seed=1, predict=predict)
    assert seen == [[7, 7, 7], [3, 3]]  # without it: the shots
    with pytest.raises(ValueError, match="--cost_from_target_pool is only used by"):
        check_arguments(DataArguments(), ModelArguments(), JTLNArguments(cost="prior", cost_from_target_pool=True),
                        {"cost", "cost_from_target_pool"})  # fmt: skip


def test_prior_file_and_constant(fashion_mnist, tmp_path):
    inputs = _inputs(fashion_mnist, prior=FASHION_MNIST_PRIOR_PATH)
    prior, how = build_cost("prior", inputs, "none")
    assert prior.shape == (3, 2) and "fashion_mnist_prior.csv" in how
    np.save(tmp_path / "c.npy", np.arange(6.0).reshape(3, 2))
    loaded, how = build_cost(str(tmp_path / "c.npy"), inputs, "minmax")
    np.testing.assert_allclose(loaded, np.arange(6.0).reshape(3, 2) / 5)
    assert how == "Loaded from c.npy; normalisation: minmax."
    constant, how = build_cost("constant", inputs, "column")
    assert np.all(constant == 1.0) and "normalisation" not in how  # a control: never normalised (exact: filled)
    with pytest.raises(ValueError, match=r"--cost prior \(fashion_mnist_prior.csv\) does not fit these classes"):
        build_cost("prior", CostInputs(inputs.source, inputs.target, ["a", "b", "c"], TARGET), "none")
    with pytest.raises(ValueError, match="computed from a model"):
        build_cost("features-mmd", inputs, "none")


def _recipe():
    spec = importlib.util.spec_from_file_location("train_jtln_cli", Path(__file__).resolve().parents[1] / "recipes" /
                                                  "train_jtln.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plan(tmp_path, *argv: str):
    """What ``recipes/train_jtln.py ARGV`` decides before training: its parsed flags, checked, and its plan."""
    flags = [*argv, "--output_dir", str(tmp_path), "--seeds", "0", "--backbone", "test_resnet", "--use_cpu", "true"]
    data, model, jtln, training, given, _ = _recipe().parse_args(flags)
    check_arguments(data, model, jtln, given)
    return data, jtln, plan_experiment(data, model, jtln, training)


def _prior_by_hand(path, source_names, target_names) -> np.ndarray:
    """A labelled prior CSV read with the csv module, rows/columns picked by name, then the default
    ``--cost_normalization column`` by hand: min-max to [0, 1], then each column shifted to a minimum of 0."""
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    table = {row[0]: dict(zip(header[1:], map(float, row[1:]))) for row in rows}
    cost = np.array([[table[s][t] for t in target_names] for s in source_names])
    cost = (cost - cost.min()) / (cost.max() - cost.min())
    return cost - cost.min(axis=0)


def test_defaults_come_from_the_known_dataset(tmp_path, monkeypatch):
    """The recipe's default cost is the registered prior of a known dataset split by class, read from
    whatever file the registry names; data without one (a second dataset, an unknown folder) gets
    the feature cost, computed from the model (nothing fixed before training).

    The hand-normalised prior is compared with a float64 tolerance: a few float64 operations on
    values in [0, 1] (min-max, column shift) round to within a few 2**-53, far below 1e-12, while a
    wrong row, column or file differs by >= 0.05 (the prior's entries are multiples of 0.1).
    """
    data, jtln, plan = _plan(tmp_path, "--mode", "jtln")  # Fashion-MNIST, split by class: the default data
    exp = plan.data[0]
    assert plan.cost.kind == resolved_cost(data, ModelArguments(), jtln).kind == "prior"
    registered = known_dataset("fashion-mnist").prior_cost
    assert registered.is_file()
    expected = _prior_by_hand(registered, exp.source_names, exp.target_names)
    np.testing.assert_allclose(plan.cost.fixed.matrix, expected, rtol=0, atol=1e-12)
    assert registered.name in plan.cost.fixed.description

    # the default follows the registry, not a path written into the code: register another prior file
    other = tmp_path / "other_prior.csv"
    names = list(exp.target_names)
    lines = ["source \\ target," + ",".join(names)]
    lines += [f"{s}," + ",".join(str((3 * i + 7 * j) % 10 / 10) for j in range(len(names)))
              for i, s in enumerate(exp.source_names)]  # fmt: skip
    other.write_text("\n".join(lines) + "\n")
    monkeypatch.setitem(KNOWN_DATASETS, "fashion-mnist",
                        dataclasses.replace(known_dataset("fashion-mnist"), prior_cost=other))  # fmt: skip
    data, jtln, plan = _plan(tmp_path, "--mode", "jtln")
    other_expected = _prior_by_hand(other, exp.source_names, exp.target_names)
    assert np.abs(other_expected - expected).max() >= 0.05  # a different cost indeed
    np.testing.assert_allclose(plan.cost.fixed.matrix, other_expected, rtol=0, atol=1e-12)


def test_data_without_a_prior_defaults_to_the_feature_cost(tmp_path, digits_folder):
    data, jtln, plan = _plan(tmp_path, "--mode", "jtln", "--source_dataset", "fashion-mnist", "--target_dataset",
                             str(digits_folder), "--shots", "2")  # fmt: skip
    assert plan.cost.kind == DEFAULT_FEATURE_COST == "features-mmd"
    assert plan.cost.fixed is None  # a model cost: computed from each seed's model, after its warm-up
    # a known dataset registered without a prior: the feature cost too
    assert known_dataset("fgvc-aircraft").prior_cost is None
    assert cost_kind(None, DataArguments(dataset="fgvc-aircraft").spec()) == DEFAULT_FEATURE_COST


def test_a_registered_cost_is_a_choice_of_the_cli_and_its_flags_follow(request, fashion_mnist):
    """Adding a cost is one register_cost call: --cost accepts it, its flags and build_cost follow the registry."""
    with pytest.raises(ValueError, match="--cost 'identity' is neither one of"):
        JTLNArguments(cost="identity")
    request.addfinalizer(lambda: COST_BUILDERS.pop("identity", None))

    @register_cost("identity", "0 on the diagonal, 1 elsewhere", normalized=False)
    def _identity(inputs):
        return 1.0 - np.eye(len(inputs.source_names), len(inputs.target_names)), "Identity"

    jtln = JTLNArguments(mode="jtln", cost="identity")
    cost, how = build_cost("identity", _inputs(fashion_mnist), "column")
    np.testing.assert_array_equal(cost, [[0, 1], [1, 0], [1, 1]])  # exact: 1 - eye, not normalised
    assert how == "Identity."
    with pytest.raises(ValueError, match="--cost_normalization has no effect on --cost identity"):
        check_arguments(DataArguments(), ModelArguments(), jtln, {"cost", "cost_normalization"})
    with pytest.raises(ValueError, match="--cost_refresh_steps is only used by"):
        check_arguments(DataArguments(), ModelArguments(), jtln, {"cost", "cost_refresh_steps"})


def test_the_prior_is_the_default_only_where_it_names_the_chosen_classes():
    """The embedded split and any classes the prior names default to it; other classes to the data-driven default
    (before, the alternative split stopped with "--cost prior ... does not fit these classes", a flag never given)."""
    assert cost_kind(None, DataArguments().spec()) == "prior"
    named = DataArguments(source_classes=["Sneaker", "T-shirt/top"], target_classes=["Bag", "Shirt"]).spec()
    assert cost_kind(None, named) == "prior"
    alternative = DataArguments(source_classes=["Shirt", "Coat", "Sandal", "Bag", "Ankle boot"],
                                target_classes=["T-shirt/top", "Trouser", "Pullover", "Dress", "Sneaker"]).spec()
    assert cost_kind(None, alternative) == DEFAULT_FEATURE_COST
    assert cost_kind("prior", alternative) == "prior"  # asked for: its own clear error later, not a silent switch


def test_the_default_cost_reads_the_classes_as_the_data_will_select_them():
    """Ids name the same classes as names; without --source_classes the source is every other class (8 here)."""
    ids = DataArguments(source_classes=["0", "1", "2", "3", "7"], target_classes=["6", "4", "5", "8", "9"]).spec()
    assert cost_kind(None, ids) == "prior"  # the embedded split, by id
    two_targets = DataArguments(target_classes=["Shirt", "Coat"]).spec()  # sources: the 8 other classes
    assert cost_kind(None, two_targets) == DEFAULT_FEATURE_COST  # Coat, Sandal ... as sources: not in the prior's rows
    with_sources = DataArguments(source_classes=["T-shirt/top", "Pullover"], target_classes=["Shirt", "Coat"]).spec()
    assert cost_kind(None, with_sources) == "prior"
