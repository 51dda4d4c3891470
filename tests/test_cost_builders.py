"""The ``--cost`` registry: builders against hand-computed costs, defaults, and one-place extension."""

from __future__ import annotations

import numpy as np
import pytest

from jtln_hf import data as jdata
from jtln_hf.arguments import DataArguments, JTLNArguments, ModelArguments, check_arguments
from jtln_hf.cost import FASHION_MNIST_PRIOR_PATH
from jtln_hf.cost_builders import (
    COST_BUILDERS,
    CostInputs,
    build_cost,
    cost_kind,
    data_prior,
    register_cost,
)
from jtln_hf.sources import known_dataset

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


def test_prior_file_and_constant(fashion_mnist, tmp_path):
    inputs = _inputs(fashion_mnist, prior=FASHION_MNIST_PRIOR_PATH)
    prior, how = build_cost("prior", inputs, "none")
    assert prior.shape == (3, 2) and "fashion_mnist_prior.csv" in how
    np.save(tmp_path / "c.npy", np.arange(6.0).reshape(3, 2))
    loaded, how = build_cost(str(tmp_path / "c.npy"), inputs, "minmax")
    np.testing.assert_allclose(loaded, np.arange(6.0).reshape(3, 2) / 5)
    assert how == "Loaded from c.npy; normalisation: minmax."
    constant, how = build_cost("constant", inputs, "column")
    assert np.all(constant == 1.0) and "normalisation" not in how  # a control: never normalised
    with pytest.raises(ValueError, match=r"--cost prior \(fashion_mnist_prior.csv\) does not fit these classes"):
        build_cost("prior", CostInputs(inputs.source, inputs.target, ["a", "b", "c"], TARGET), "none")
    with pytest.raises(ValueError, match="computed from a model"):
        build_cost("features-mmd", inputs, "none")


def test_defaults_come_from_the_known_dataset():
    assert known_dataset("fashion-mnist").prior_cost == FASHION_MNIST_PRIOR_PATH
    assert data_prior(DataArguments()) == FASHION_MNIST_PRIOR_PATH
    assert data_prior(DataArguments(dataset="fgvc-aircraft")) is None
    assert data_prior(DataArguments(source_dataset="fashion-mnist", target_dataset="x")) == FASHION_MNIST_PRIOR_PATH
    assert cost_kind(DataArguments(), JTLNArguments()) == "prior"
    assert cost_kind(DataArguments(source_dataset="fashion-mnist", target_dataset="x"), JTLNArguments()) == "features-mmd"


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
    np.testing.assert_array_equal(cost, [[0, 1], [1, 0], [1, 1]])
    assert how == "Identity."
    with pytest.raises(ValueError, match="--cost_normalization has no effect on --cost identity"):
        check_arguments(DataArguments(), ModelArguments(), jtln, {"cost", "cost_normalization"})
    with pytest.raises(ValueError, match="--cost_warmup_steps is only used by"):
        check_arguments(DataArguments(), ModelArguments(), jtln, {"cost", "cost_warmup_steps"})
