"""The conservative cost (``--cost features-mmd-stable``): resampling, the relation rule and the builder, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from jtln_hf import data as jdata
from jtln_hf.cost import cost_from_features, mmd_bandwidths
from jtln_hf.cost.stability import (
    UNSURE,
    bagged_cost,
    bootstrap_feature_costs,
    describe_stability,
    relation_frequency,
    stable_relation_cost,
)
from jtln_hf.cost.builders import CostInputs, build_cost

# two resamples of a 3 x 2 cost; column 1 of the first is constant (relates nothing)
COSTS = np.array([[[0.0, 5.0], [1.0, 5.0], [2.0, 5.0]],    # column means 1 and 5
                  [[0.0, 1.0], [0.5, 2.0], [4.0, 3.0]]])   # column means 1.5 and 2  # fmt: skip


# Exact comparisons below: every value is a small dyadic number or a share k/B of booleans, and the column means
# (1, 5, 1.5, 2) are exact in float64 on any CPU; the outputs are picked from {0, 0.5, 1} by those comparisons.


def test_relation_frequency_by_hand():
    # below the column mean: b0 col0 (T, F, F), col1 none; b1 col0 (T, T, F), col1 (T, F, F)
    np.testing.assert_array_equal(relation_frequency(COSTS), [[1.0, 0.5], [0.5, 0.0], [0.0, 0.0]])


def test_stable_cost_keeps_sure_relations_and_neutralises_a_column_without_one():
    # col0: f = (1, .5, 0) -> related, unsure, unrelated; col1: f = (.5, 0, 0) has no related entry -> all unsure
    np.testing.assert_array_equal(stable_relation_cost(COSTS, 0.9), [[0, UNSURE], [UNSURE, UNSURE], [1, UNSURE]])
    # at threshold 0.5 < tau the 0.5 frequencies stay unsure too; tau = 1 needs every resample
    np.testing.assert_array_equal(stable_relation_cost(COSTS, 1.0), stable_relation_cost(COSTS, 0.9))
    # one resample: the rule is column-below-mean's, with a column of no relation neutral
    np.testing.assert_array_equal(stable_relation_cost(COSTS[1:], 0.9), [[0, 0], [0, 1], [1, 1]])


@pytest.mark.parametrize("bad", [0.5, 0.3, 1.01])
def test_threshold_must_be_a_majority(bad):
    with pytest.raises(ValueError, match=r"threshold must lie in \(0.5, 1\]"):
        stable_relation_cost(COSTS, bad)


def test_bad_shapes_and_resample_counts_are_refused():
    with pytest.raises(ValueError, match=r"shape \(B, L_s, L_t\)"):
        relation_frequency(COSTS[0])
    with pytest.raises(ValueError, match="resamples must be >= 1"):
        bootstrap_feature_costs(np.zeros((2, 1)), [0, 1], np.zeros((2, 1)), [0, 1], resamples=0)


def test_a_resample_of_identical_rows_is_the_cost_of_the_rows():
    """Every row of a class equal: each resample draws the same rows, so it is cost_from_features itself (same calls)."""
    xs = np.repeat([[0.0, 0.0], [3.0, 1.0], [5.0, 5.0]], 4, axis=0)
    ys = np.repeat([0, 1, 2], 4)
    xt = np.repeat([[0.5, 0.0], [5.0, 4.0]], 3, axis=0)
    yt = np.repeat([0, 1], 3)
    costs = bootstrap_feature_costs(xs, ys, xt, yt, method="mmd", resamples=3, seed=0)
    bandwidths = mmd_bandwidths(np.concatenate([xs, xt]), seed=0)
    expected = cost_from_features(xs, ys, xt, yt, method="mmd", bandwidths=bandwidths, normalize="none")
    assert costs.shape == (3, 3, 2)
    for cost in costs:  # exact: the same cost_from_features call on equal arrays of the same shapes, in this process
        np.testing.assert_array_equal(cost, expected)


def test_resamples_differ_and_a_seed_repeats_them():
    rng = np.random.default_rng(0)
    xs, xt = rng.normal(size=(30, 4)), rng.normal(size=(10, 4))
    ys, yt = np.repeat([0, 1, 2], 10), np.repeat([0, 1], 5)
    a = bootstrap_feature_costs(xs, ys, xt, yt, method="centroid", resamples=5, seed=1)
    b = bootstrap_feature_costs(xs, ys, xt, yt, method="centroid", resamples=5, seed=1)
    np.testing.assert_array_equal(a, b)  # one seed, one sequence of calls
    assert len({cost.tobytes() for cost in a}) == 5  # every resample draws other images


def test_the_builder_relates_each_target_class_to_its_nearby_source_class(fashion_mnist):
    """Features placed by hand: source classes at x = 0, 5, 10; Shirt's images at 0 and Coat's at 10.

    Each class's rows are identical, so every resample agrees: Shirt <- T-shirt/top and Coat <- Pullover,
    0 there and 1 elsewhere (Trouser, 5 away from both, is above either column's mean: its MMD is more
    than half the 10-away one under every bandwidth of the median heuristic).
    """
    train, _ = fashion_mnist
    names_s, names_t = ["T-shirt/top", "Trouser", "Pullover"], ["Shirt", "Coat"]
    source, target = jdata.split_by_classes(train, names_s, names_t)
    place = {"source": np.array([0.0, 5.0, 10.0]), "target": np.array([0.0, 10.0])}

    def predict(ds, fields):
        y = np.asarray(ds["label"])
        side = "target" if len(ds) == 2 * 3 else "source"
        return {"pooler_output": np.stack([place[side][y], np.zeros(len(y))], 1).astype(np.float32)}, y

    inputs = CostInputs(jdata.sample_shots(source, 4, seed=0), jdata.sample_shots(target, 3, seed=0), names_s,
                        names_t, predict=predict, samples_per_class=4, warmup_steps=500)  # fmt: skip
    cost, how = build_cost("features-mmd-stable", inputs, "none")
    # exact: 0/1 picked by comparisons with a wide margin (the docstring's), not a computed float
    np.testing.assert_array_equal(cost, [[0, 1], [1, 1], [1, 0]])
    assert "Shirt <- T-shirt/top; Coat <- Pullover" in how and "after 500 source-only warm-up steps" in how
    assert "100 bootstrap resamples" in how


def test_describe_names_the_kept_relations():
    cost = np.array([[0, UNSURE], [0, UNSURE], [1, UNSURE]])
    assert describe_stability(cost, ["a", "b", "c"], ["x", "y"]) == "x <- a, b; y: none (neutral)"


def test_the_ten_percent_edge_is_exact():
    """B = 10, source class 0 related in exactly 1 resample (f = 0.1): unrelated in 90%, so 1, not unsure."""
    costs = np.array([[[0.0], [1.0], [2.0]]] + [[[2.0], [0.0], [2.5]]] * 9)  # one target column, 3 sources
    f = relation_frequency(costs)
    assert f[0, 0] == pytest.approx(0.1) and f[1, 0] == pytest.approx(0.9)
    # exact: the rule returns the literals 0, ½ or 1, chosen by comparing counts of resamples (k/B shares)
    np.testing.assert_array_equal(stable_relation_cost(costs, 0.9), [[1.0], [0.0], [1.0]])


def test_a_cost_with_no_sure_relation_stops_with_one_line(fashion_mnist):
    """Every image of every class at one point: no class is nearer any other, so no relation; the builder says so."""
    train, _ = fashion_mnist
    names_s, names_t = ["T-shirt/top", "Trouser", "Pullover"], ["Shirt", "Coat"]
    source, target = jdata.split_by_classes(train, names_s, names_t)

    def predict(ds, fields):
        y = np.asarray(ds["label"])
        return {"pooler_output": np.zeros((len(y), 2), np.float32)}, y

    inputs = CostInputs(jdata.sample_shots(source, 4, seed=0), jdata.sample_shots(target, 3, seed=0), names_s,
                        names_t, predict=predict, samples_per_class=4)  # fmt: skip
    with pytest.raises(ValueError, match=r"^--cost features-mmd-stable: no relation .* pass features-mmd"):
        build_cost("features-mmd-stable", inputs, "column")


def test_the_bagged_cost_is_the_mean_of_the_resamples():
    # by hand: the mean of the two resamples of COSTS, entry by entry. Exact on any CPU: each entry is a sum of two
    # small dyadic numbers halved (0, 3, 0.75, 3.5, 3, 4), which float64 represents without rounding
    np.testing.assert_array_equal(bagged_cost(COSTS), [[0.0, 3.0], [0.75, 3.5], [3.0, 4.0]])
    with pytest.raises(ValueError, match=r"shape \(B, L_s, L_t\)"):
        bagged_cost(COSTS[0])


def test_the_bagged_builder_averages_the_resampled_mmd(fashion_mnist):
    """The builder's cost is the mean of the 100 resamples that bootstrap_feature_costs draws for the run's seed.

    Features from the images' pixels (so resamples differ), the source classes moved apart along one axis; the
    test records what the builder's predict returned and resamples those arrays. Both sides make the same calls on
    the same arrays in one process; the mean of 100 float64 values is compared within 100 ulps of the largest
    entry, a margin for a change of numpy's summation order only.
    """
    train, _ = fashion_mnist
    names_s, names_t = ["T-shirt/top", "Trouser", "Pullover"], ["Shirt", "Coat"]
    source, target = jdata.split_by_classes(train, names_s, names_t)
    source, target = jdata.sample_shots(source, 4, seed=0), jdata.sample_shots(target, 3, seed=0)
    seen = []

    def predict(ds, fields):
        pixels = np.stack([np.asarray(image, np.float64).ravel() / 255 for image in ds["image"]])
        y = np.asarray(ds["label"])
        x = np.stack([pixels.mean(1), pixels.std(1), (pixels > 0.5).mean(1)], 1)
        if len(ds) == len(source):
            x[:, 0] += 2.0 * y  # source classes apart along the first axis
        seen.append((x, y))
        return {"pooler_output": x}, y

    inputs = CostInputs(source, target, names_s, names_t, predict=predict, samples_per_class=4, seed=3)
    cost, how = build_cost("features-mmd-bagged", inputs, "none")
    (xs, ys), (xt, yt) = seen
    resampled = bootstrap_feature_costs(xs, ys, xt, yt, method="mmd", num_source_labels=3, num_target_labels=2,
                                        seed=3)  # fmt: skip
    np.testing.assert_allclose(cost, resampled.mean(axis=0), rtol=0, atol=100 * np.finfo(float).eps * cost.max())
    # the resamples differ (their spread is far above rounding), so the mean is not any one of them
    assert np.ptp(resampled, axis=0).max() > 1e-3
    assert "averaged over 100 bootstrap resamples" in how and "from the initial weights" in how
