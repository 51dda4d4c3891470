"""Tests for jtln_hf.cost: every builder against hand-computed matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from jtln_hf.data.fashion_mnist import FASHION_MNIST_PRIOR_PATH
from jtln_hf.cost import (
    MMD_BANDWIDTH_MULTIPLIERS,
    cost_from_features,
    cost_from_hierarchy,
    cost_from_relation,
    load_cost,
    mmd_bandwidths,
    normalize_cost,
    validate_cost,
)

# A prior-like input for normalize_cost: values in [0, 1], a free source class in every column but
# column 3, whose cheapest entry is 0.8 (the case "column" normalisation exists for).
PRIOR_LIKE = np.array(
    [
        [0.0, 0.5, 1.0, 0.8, 1.0],
        [1.0, 1.0, 1.0, 1.0, 1.0],
        [0.3, 0.0, 1.0, 0.8, 1.0],
        [1.0, 1.0, 1.0, 0.8, 1.0],
        [1.0, 1.0, 0.0, 0.8, 0.0],
    ]
)


# ----------------------------------------------------------------------------- relation


def test_relation_with_default():
    relation = {"a": {"x": 0.0, "y": 0.5}, "b": {"z": 0.25}}
    raw = cost_from_relation(relation, ["a", "b"], ["x", "y", "z"], default=2.0, normalize="none")
    np.testing.assert_array_equal(raw, [[0.0, 0.5, 2.0], [2.0, 2.0, 0.25]])  # exact: the given values, placed
    assert raw.dtype == np.float64
    scaled = cost_from_relation(relation, ["a", "b"], ["x", "y", "z"], default=2.0, normalize="minmax")
    np.testing.assert_allclose(scaled, [[0.0, 0.25, 1.0], [1.0, 1.0, 0.125]])


def test_relation_unknown_names():
    with pytest.raises(ValueError, match=r"unknown source label 'c'.*\['a', 'b'\]"):
        cost_from_relation({"c": {"x": 0.0}}, ["a", "b"], ["x"])
    with pytest.raises(ValueError, match=r"unknown target label 'w'.*\['x', 'y'\]"):
        cost_from_relation({"a": {"w": 0.0}}, ["a", "b"], ["x", "y"])


# ----------------------------------------------------------------------------- hierarchy

TREE = {
    "clothing": None,
    "top": "clothing",
    "shoes": "clothing",
    "shirt": "top",
    "t-shirt": "top",
    "sandal": "shoes",
    "sneaker": "shoes",
}


def test_hierarchy_tree_distances():
    cost = cost_from_hierarchy(TREE, ["shirt", "sneaker"], ["t-shirt", "sandal", "top"], normalize="none")
    expected = np.array([[2.0, 4.0, 1.0], [4.0, 2.0, 3.0]])
    np.testing.assert_array_equal(cost, expected)  # exact: edge counts
    scaled = cost_from_hierarchy(TREE, ["shirt", "sneaker"], ["t-shirt", "sandal", "top"], normalize="minmax")
    np.testing.assert_allclose(scaled, [[1 / 3, 1.0, 0.0], [1.0, 1 / 3, 2 / 3]])


def test_hierarchy_root_absent_as_key_and_self_distance():
    tree = {k: v for k, v in TREE.items() if v is not None}  # "clothing" only appears as a parent
    cost = cost_from_hierarchy(tree, ["clothing", "shirt"], ["shirt", "sandal"], normalize="none")
    np.testing.assert_array_equal(cost, [[2.0, 2.0], [0.0, 4.0]])  # exact: edge counts


def test_hierarchy_errors():
    with pytest.raises(ValueError, match="cycle"):
        cost_from_hierarchy({"a": "b", "b": "a", "c": None}, ["c"], ["c"])
    with pytest.raises(ValueError, match=r"source labels not in the hierarchy: \['boot'\]"):
        cost_from_hierarchy(TREE, ["boot"], ["shirt"])
    with pytest.raises(ValueError, match="different trees"):
        cost_from_hierarchy({"a": "r1", "b": "r2"}, ["a"], ["b"])


# ----------------------------------------------------------------------------- features


def test_features_centroid_345():
    # source means (0, 0) and (3, 0); target means (0, 4) and (3, 4).
    xs = np.array([[-1, 0], [1, 0], [3, 1], [3, -1]], dtype=float)
    ys = np.array([[0, 3], [0, 5], [2, 4], [4, 4]], dtype=float)
    cost = cost_from_features(xs, [0, 0, 1, 1], ys, [0, 0, 1, 1], method="centroid", normalize="none")
    np.testing.assert_allclose(cost, [[4.0, 5.0], [5.0, 4.0]])
    assert cost.dtype == np.float64


def test_features_ot_hand_cases():
    # class 0: translation by (3, 4) -> W2 = 5.  class 1 (1-D on the x axis): {0, 2} vs {1, 5}
    # -> sorted matching, W2^2 = (1 + 9) / 2 = 5.
    xs = np.array([[0, 0], [1, 0], [0, 0], [2, 0]], dtype=float)
    ys = np.array([[3, 4], [4, 4], [1, 0], [5, 0]], dtype=float)
    cost = cost_from_features(xs, [0, 0, 1, 1], ys, [0, 0, 1, 1], method="ot", normalize="none")
    assert cost[0, 0] == pytest.approx(5.0)
    assert cost[1, 1] == pytest.approx(math.sqrt(5.0))
    # unequal sizes: {0} vs {1, 3}: W2^2 = (1 + 9) / 2.
    one = cost_from_features([[0.0]], [0], [[1.0], [3.0]], [0, 0], method="ot", normalize="none")
    assert one.shape == (1, 1) and one[0, 0] == pytest.approx(math.sqrt(5.0))


def _w2_by_assignment(x: np.ndarray, y: np.ndarray) -> float:
    """W2 of two equal-size uniform point sets: an optimal plan is a permutation (Birkhoff), found
    by the Hungarian method on squared distances computed here with numpy (no POT)."""
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(d2)
    return math.sqrt(d2[rows, cols].mean())


def _w2_one_dimensional(x: np.ndarray, y: np.ndarray) -> float:
    """W2 of two uniform 1-D point sets of any sizes, from their quantile functions:
    W2^2 = integral over t in (0, 1) of (F^-1(t) - G^-1(t))^2, piecewise constant between the cuts k/n."""
    x, y = np.sort(x), np.sort(y)
    cuts = np.union1d(np.arange(len(x) + 1) / len(x), np.arange(len(y) + 1) / len(y))
    mids = (cuts[:-1] + cuts[1:]) / 2
    qx, qy = x[np.floor(mids * len(x)).astype(int)], y[np.floor(mids * len(y)).astype(int)]
    return math.sqrt(float(((qx - qy) ** 2 * np.diff(cuts)).sum()))


def test_one_dimensional_reference_by_hand():
    # {0} vs {1, 3}: half the mass moves by 1, half by 3 -> W2^2 = (1 + 9) / 2 (as in the hand case above)
    assert _w2_one_dimensional(np.array([0.0]), np.array([1.0, 3.0])) == pytest.approx(math.sqrt(5.0))
    # {0, 3} vs {1, 2, 6}: cuts 0, 1/3, 1/2, 2/3, 1; quantile pairs (0, 1), (0, 2), (3, 2), (3, 6)
    # -> squared gaps 1, 4, 1, 9 weighted 1/3, 1/6, 1/6, 1/3
    expected = 1 / 3 + 4 / 6 + 1 / 6 + 9 / 3
    assert _w2_one_dimensional(np.array([3.0, 0.0]), np.array([6.0, 1.0, 2.0])) == pytest.approx(math.sqrt(expected))


def test_features_ot_against_an_assignment_and_quantile_functions():
    """fc7-OT on random features, against references that do not use POT: the Hungarian method
    (equal class sizes, 4-D) and the 1-D quantile formula (unequal class sizes)."""
    rng = np.random.default_rng(1)
    xs, ys = rng.normal(size=(30, 4)), rng.normal(size=(20, 4)) + 0.5
    ls, lt = np.repeat([0, 1, 2], 10), np.repeat([0, 1], 10)
    cost = cost_from_features(xs, ls, ys, lt, method="ot", max_per_class=None, normalize="none")
    expected = [[_w2_by_assignment(xs[ls == i], ys[lt == j]) for j in range(2)] for i in range(3)]
    np.testing.assert_allclose(cost, expected, rtol=1e-9)

    xs, ys = rng.normal(size=(11, 1)), 2.0 * rng.normal(size=(8, 1)) + 1.0
    ls, lt = np.array([0] * 7 + [1] * 4), np.array([0] * 5 + [1] * 3)
    cost = cost_from_features(xs, ls, ys, lt, method="ot", max_per_class=None, normalize="none")
    expected = [[_w2_one_dimensional(xs[ls == i, 0], ys[lt == j, 0]) for j in range(2)] for i in range(2)]
    np.testing.assert_allclose(cost, expected, rtol=1e-9)


def test_features_subsampling_is_seeded():
    rng = np.random.default_rng(2)
    xs, ys = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    labels = np.repeat([0, 1], 20)
    kw = dict(method="ot", max_per_class=5, normalize="none")
    a = cost_from_features(xs, labels, ys, labels, seed=3, **kw)
    b = cost_from_features(xs, labels, ys, labels, seed=3, **kw)
    c = cost_from_features(xs, labels, ys, labels, seed=4, **kw)
    full = cost_from_features(xs, labels, ys, labels, method="ot", max_per_class=None, normalize="none")
    np.testing.assert_array_equal(a, b)  # exact: the same seeded calls on the same inputs in one process
    assert not np.allclose(a, c)
    assert not np.allclose(a, full)


def test_features_mmd_single_points_explicit_bandwidths():
    # one point vs one point, ||x - y||^2 = 25: MMD^2 = sum_k (2 - 2 exp(-25 / (2 s_k^2))).
    cost = cost_from_features([[0.0, 0.0]], [0], [[3.0, 4.0]], [0], method="mmd",
                              bandwidths=[5.0, 2.5], normalize="none")
    assert cost[0, 0] == pytest.approx((2 - 2 * math.exp(-0.5)) + (2 - 2 * math.exp(-2.0)))


def test_features_mmd_biased_statistic_two_points():
    # x = {0, 1}, y = {0}, sigma = 1, e = exp(-1/2):
    # mean Kxx = (2 + 2e) / 4, Kyy = 1, mean Kxy = (1 + e) / 2  ->  MMD^2 = (1 - e) / 2.
    cost = cost_from_features([[0.0], [1.0]], [0, 0], [[0.0]], [0], method="mmd",
                              bandwidths=[1.0], normalize="none")
    assert cost[0, 0] == pytest.approx(0.5 * (1 - math.exp(-0.5)))


def test_features_mmd_default_bandwidths_from_median():
    # pooled features {(0,0), (3,4)}: median pairwise distance 5 -> sigma_k = 5 m_k,
    # so each kernel contributes 2 - 2 exp(-25 / (2 * 25 m_k^2)) = 2 - 2 exp(-1 / (2 m_k^2)).
    assert MMD_BANDWIDTH_MULTIPLIERS == (0.25, 0.5, 1.0, 2.0, 4.0)
    cost = cost_from_features([[0.0, 0.0]], [0], [[3.0, 4.0]], [0], method="mmd", normalize="none")
    expected = sum(2 - 2 * math.exp(-1 / (2 * m**2)) for m in (0.25, 0.5, 1.0, 2.0, 4.0))
    assert cost[0, 0] == pytest.approx(expected)
    # distances 1, 3, 2 -> median 2
    np.testing.assert_allclose(mmd_bandwidths(np.array([[0.0], [1.0], [3.0]])), [0.5, 1, 2, 4, 8])


def test_features_mmd_identical_zero_and_separation():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 3))
    xs = base
    ys = np.concatenate([base, rng.normal(size=(20, 3)), rng.normal(size=(20, 3)) + 6.0])
    lt = np.repeat([0, 1, 2], 20)
    cost = cost_from_features(xs, np.zeros(20, int), ys, lt, method="mmd", normalize="none")
    assert cost[0, 0] == pytest.approx(0.0, abs=1e-12)  # identical sets
    assert 0 < cost[0, 1] < cost[0, 2]  # overlapping < separated
    assert np.all(cost >= 0)


def test_features_torch_input_and_errors():
    torch = pytest.importorskip("torch")
    xs = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    ys = torch.tensor([[0.0, 3.0], [0.0, 5.0]])
    cost = cost_from_features(xs, torch.tensor([0, 0]), ys, torch.tensor([0, 0]), normalize="none")
    np.testing.assert_allclose(cost, [[4.0]])
    with pytest.raises(ValueError, match="source class 1 has no feature rows"):
        cost_from_features(np.zeros((2, 2)), [0, 2], np.zeros((1, 2)), [0])
    with pytest.raises(ValueError, match="target class 1 has no feature rows"):
        cost_from_features(np.zeros((1, 2)), [0], np.zeros((1, 2)), [0], num_target_labels=2)
    with pytest.raises(ValueError, match="feature cost method"):
        cost_from_features(np.zeros((1, 2)), [0], np.zeros((1, 2)), [0], method="kl")


# ----------------------------------------------------------------------------- load_cost


def test_load_npy_and_plain_csv(tmp_path):
    m = np.array([[0.0, 1.5, 2.0], [3.0, 0.25, 1.0]])
    np.save(tmp_path / "c.npy", m)
    np.testing.assert_array_equal(load_cost(tmp_path / "c.npy"), m)  # exact: saved and read back
    (tmp_path / "c.csv").write_text("0,1.5,2\n3,0.25,1\n")
    np.testing.assert_array_equal(load_cost(tmp_path / "c.csv", ["a", "b"], ["x", "y", "z"]), m)  # exact: parsed
    np.testing.assert_allclose(load_cost(str(tmp_path / "c.csv"), normalize="max"), m / 3.0)


def test_load_labelled_csv_reordered(tmp_path):
    path = tmp_path / "lab.csv"
    path.write_text(",x,y,z\na,0,1,2\nb,3,4,5\n")
    cost = load_cost(path, ["b", "a"], ["z", "x"])
    np.testing.assert_array_equal(cost, [[5.0, 3.0], [2.0, 0.0]])  # exact: parsed integers, reordered
    np.testing.assert_array_equal(load_cost(path), [[0, 1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match=r"target labels \['w'\] not found"):
        load_cost(path, ["a"], ["w"])


def test_load_errors(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*shape \(3, 2\)"):
        load_cost(tmp_path / "c.npy", ["a", "b", "c"], ["x", "y"])
    (tmp_path / "c.txt").write_text("0,1\n")
    with pytest.raises(ValueError, match="extension"):
        load_cost(tmp_path / "c.txt")


def test_shipped_fashion_mnist_prior_says_what_the_design_says():
    """The shipped prior checked against what it is documented to encode (docs/design.md), not
    against a copy of its entries: rows are the embedded split's source classes and columns its
    target classes, in that order; the similar pairs are free; trousers teach nothing; no source
    class is a bag."""
    from jtln_hf import data as jdata

    source, target = list(jdata.DEFAULT_SOURCE_CLASSES), list(jdata.DEFAULT_TARGET_CLASSES)
    assert set(source + target) <= set(jdata.FASHION_MNIST_LABELS)
    cost = load_cost(FASHION_MNIST_PRIOR_PATH, source, target)  # by name: raises if a name is missing
    np.testing.assert_array_equal(load_cost(FASHION_MNIST_PRIOR_PATH), cost)  # the file's order is the split's
    validate_cost(cost, 5, 5)  # finite, >= 0
    assert cost.min() == 0.0 and cost.max() == 1.0  # a [0, 1] scale: 0 free, 1 unrelated (parsed: exact)
    S, T = {n: i for i, n in enumerate(source)}, {n: j for j, n in enumerate(target)}

    # a T-shirt is a shirt, a pullover a coat-like warm top, a sneaker a shoe: free, the column's cheapest
    for s, t in [("T-shirt/top", "Shirt"), ("Pullover", "Coat"), ("Sneaker", "Sandal"), ("Sneaker", "Ankle boot")]:
        assert cost[S[s], T[t]] == 0.0, (s, t)  # exact: parsed
        assert cost[S[s], T[t]] == cost[:, T[t]].min(), (s, t)
    # footwear is cheap only from the sneaker; the tops only from the tops
    for t in ("Sandal", "Ankle boot"):
        assert all(cost[S[s], T[t]] > cost[S["Sneaker"], T[t]] for s in source if s != "Sneaker")
    for t in ("Shirt", "Coat"):
        tops = min(cost[S["T-shirt/top"], T[t]], cost[S["Pullover"], T[t]])
        assert all(cost[S[s], T[t]] > tops for s in ("Trouser", "Dress", "Sneaker"))
    # trousers resemble no target class: the row is the most expensive in every column
    assert np.all(cost[S["Trouser"]] == cost.max(axis=0))
    # no source class is a bag: the Bag column has no free entry (why "column" normalisation is the
    # default), and column normalisation gives it one
    assert cost[:, T["Bag"]].min() > 0
    assert np.all(cost[:, [T[t] for t in target if t != "Bag"]].min(axis=0) == 0.0)  # exact: parsed
    np.testing.assert_array_equal(normalize_cost(cost, "column").min(axis=0), np.zeros(5))  # exact: x - min x = 0

    # rows are source classes and columns target classes, not a symmetric relation: names on the
    # wrong axis are refused; reordering by name moves rows and columns with their names
    with pytest.raises(ValueError, match=r"source labels \[.*\] not found"):
        load_cost(FASHION_MNIST_PRIOR_PATH, target, source)
    swapped = load_cost(FASHION_MNIST_PRIOR_PATH, source[::-1], ["Bag", "Shirt"])
    np.testing.assert_array_equal(swapped, cost[::-1][:, [T["Bag"], T["Shirt"]]])  # exact: the same parsed values


# ----------------------------------------------------------------------------- normalize


def test_normalize_modes():
    c = np.array([[1.0, 3.0], [5.0, 9.0]])
    np.testing.assert_array_equal(normalize_cost(c, "none"), c)  # exact: untouched
    np.testing.assert_allclose(normalize_cost(c, "minmax"), [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(normalize_cost(c, "max"), [[1 / 9, 1 / 3], [5 / 9, 1.0]])
    np.testing.assert_allclose(normalize_cost(c, "column"), [[0.0, 0.0], [0.5, 0.75]])
    # each column on its own: (1, 5) -> (0, 1) and (3, 9) -> (0, 1); (0.5 is 2/4 exactly, so are these)
    np.testing.assert_array_equal(normalize_cost(c, "column-minmax"), [[0.0, 0.0], [1.0, 1.0]])
    uneven = np.array([[2.0, 4.0, 7.0], [3.0, 4.0, 1.0], [6.0, 4.0, 3.0]])
    # column 0: (x - 2) / 4; column 1 is constant (no structure: zeros); column 2: (x - 1) / 6
    np.testing.assert_allclose(normalize_cost(uneven, "column-minmax"),
                               [[0.0, 0.0, 1.0], [0.25, 0.0, 0.0], [1.0, 0.0, 1 / 3]], rtol=0, atol=1e-15)
    # 0/1 forms, by hand (exact: x == min x, and means at least 2/3 from every entry). column-top1: 0 at each
    # column's minimum (2, 4 tied three times, 1);
    # column-below-mean: means 11/3, 4 (constant: zeros), 11/3; 0 below, 1 at or above
    np.testing.assert_array_equal(normalize_cost(uneven, "column-top1"), [[0, 0, 1], [1, 0, 0], [1, 0, 1]])
    np.testing.assert_array_equal(normalize_cost(uneven, "column-below-mean"), [[0, 0, 1], [0, 0, 0], [1, 0, 0]])
    # a constant column whose float mean is not its value (0.1 * 3 / 3) is still zeros
    np.testing.assert_array_equal(normalize_cost(np.full((3, 1), 0.1), "column-below-mean"), np.zeros((3, 1)))
    for mode in ("minmax", "max", "column", "column-minmax", "column-top1", "column-below-mean"):
        # exact: a constant matrix is all zeros by rule
        np.testing.assert_array_equal(normalize_cost(np.full((2, 3), 0.0 if mode == "max" else 7.0), mode),
                                      np.zeros((2, 3)))
    with pytest.raises(ValueError, match="cost normalization"):
        normalize_cost(c, "zscore")


def test_normalize_column_on_a_prior_like_matrix():
    np.testing.assert_array_equal(normalize_cost(PRIOR_LIKE, "minmax"), PRIOR_LIKE)  # min 0, max 1
    expected = PRIOR_LIKE.copy()
    expected[:, 3] = [0.0, 0.2, 0.0, 0.0, 0.0]  # column 3 (0.8 / 1.0) shifted by its min 0.8
    out = normalize_cost(PRIOR_LIKE, "column")
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_array_equal(out.min(axis=0), np.zeros(5))  # exact: x - min x = 0


def test_normalize_cost_and_every_builder_default_to_the_recipes_normalisation():
    """The library's default normalisation is ``--cost_normalization``'s: ``column``, the same bits."""
    from jtln_hf.experiment.arguments import JTLNArguments
    from jtln_hf.cost import DEFAULT_NORMALIZATION, NORMALIZATIONS, cost_from_relationship

    assert DEFAULT_NORMALIZATION == JTLNArguments().cost_normalization == "column" and "column" in NORMALIZATIONS
    np.testing.assert_array_equal(normalize_cost(PRIOR_LIKE), normalize_cost(PRIOR_LIKE, "column"))  # same calls
    relation, names = {"a": {"x": 0.0, "y": 0.5}, "b": {"z": 0.25}}, (["a", "b"], ["x", "y", "z"])
    points, ids = [[0.0, 0.0], [6.0, 8.0]], [0, 1]  # centroid costs [[0, 5], [10, 5]]
    for build in (
        lambda **kw: cost_from_relation(relation, *names, default=2.0, **kw),
        lambda **kw: cost_from_hierarchy(TREE, ["shirt", "sneaker"], ["t-shirt", "sandal", "top"], **kw),
        lambda **kw: cost_from_features(points, ids, [[0.0, 0.0], [3.0, 4.0]], ids, method="centroid", **kw),
        lambda **kw: cost_from_relationship([[0.5, 0.5, 0.0], [0.1, 0.1, 0.8]], **kw),
    ):
        # exact: the builder runs these very calls on the same inputs, in this process
        np.testing.assert_array_equal(build(), normalize_cost(build(normalize="none"), "column"))


# ----------------------------------------------------------------------------- validate


def test_validate_cost():
    out = validate_cost(np.array([[0, 1, 2], [3, 4, 5]]), 2, 3)
    assert out.dtype == np.float64 and out.shape == (2, 3)
    with pytest.raises(ValueError, match=r"shape \(3, 2\) but the model has L_s=2 source and L_t=3 target"):
        validate_cost(np.zeros((3, 2)), 2, 3)
    with pytest.raises(ValueError, match="rows = source classes"):
        validate_cost(np.zeros(6), 2, 3)
    bad = np.zeros((2, 3))
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite entry at \(source 1, target 0\) = nan"):
        validate_cost(bad, 2, 3)
    bad[1, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        validate_cost(bad, 2, 3)
    neg = np.zeros((2, 3))
    neg[0, 2] = -0.1
    with pytest.raises(ValueError, match=r"negative entry at \(source 0, target 2\) = -0.1.*>= 0"):
        validate_cost(neg, 2, 3)


# ------------------------------------------------------------------ relationship (Co-Tuning)
def test_category_relationship_is_the_mean_source_prediction_per_target_class():
    from jtln_hf.cost import category_relationship

    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]])
    labels = np.array([0, 0, 1, 2])
    expected = np.array([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]])  # by hand: row j = mean of class j
    np.testing.assert_allclose(category_relationship(probs, labels, 3), expected)
    with pytest.raises(ValueError, match="target class 3 has no feature rows"):
        category_relationship(probs, labels, 4)
    with pytest.raises(ValueError, match="pass softmax"):
        category_relationship(probs * 2, labels, 3)


def test_cost_from_relationship_is_minus_log_transposed():
    from jtln_hf.cost import cost_from_relationship

    rel = np.array([[0.5, 0.5, 0.0], [0.1, 0.1, 0.8]])  # (L_t=2, L_s=3)
    cost = cost_from_relationship(rel, floor=1e-6, normalize="none")
    assert cost.shape == (3, 2)
    np.testing.assert_allclose(cost[:, 0], [np.log(2), np.log(2), -np.log(1e-6)])
    np.testing.assert_allclose(cost[:, 1], -np.log([0.1, 0.1, 0.8]))
    column = cost_from_relationship(rel, normalize="column")
    assert np.allclose(column.min(0), 0.0) and column.max() <= 1.0
