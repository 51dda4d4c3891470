"""The shuffled-cost control (jtln_hf.cost.shuffle, --cost_shuffle_seed): hand-computed permutations, the cases
where none exists, and the recipe's saved C against the shuffled normalised prior."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import load_file

import jtln_hf.cost.shuffle as shuffle_module
from jtln_hf.data.fashion_mnist import FASHION_MNIST_PRIOR_PATH
from jtln_hf.cost import (
    SHUFFLE_CONTROL,
    column_permutation,
    describe_shuffle,
    load_cost,
    normalize_cost,
    permute_columns,
    shuffle_cost_columns,
)
from jtln_hf.experiment.arguments import DataArguments
from jtln_hf.cost.builders import Cost
from jtln_hf.cost.flags import plan_cost
from jtln_hf.cost.resolve import resolve_cost

from test_recipe_cli import recipe  # recipes/train_jtln.py as a module, loaded once

SEEDS = range(60)
SOURCE = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Sneaker"]
TARGET = ["Shirt", "Coat", "Sandal", "Bag", "Ankle boot"]


def _admissible(cost: np.ndarray, perm) -> bool:
    """The definition, written out: every column that is not constant receives a column with other values."""
    return all(np.ptp(cost[:, j]) == 0 or not np.array_equal(cost[:, p], cost[:, j]) for j, p in enumerate(perm))


def _draws(cost: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(column_permutation(cost, seed).tolist()) for seed in SEEDS}


# ------------------------------------------------------------------------------- hand-computed cases


def test_three_distinct_columns_get_a_derangement_and_keep_their_values():
    cost = np.array([[0.0, 0.5, 1.0], [1.0, 0.0, 0.25], [0.75, 1.0, 0.0]])
    # distinct non-constant columns: no column stays, so the two 3-cycles are the only admissible permutations
    assert _draws(cost) == {(1, 2, 0), (2, 0, 1)}
    for seed in SEEDS:
        shuffled, perm = shuffle_cost_columns(cost, seed)
        for j in range(3):  # column j is column perm[j], bit for bit (a permutation moves values, never rounds)
            assert shuffled[:, j].tobytes() == cost[:, perm[j]].tobytes()
        assert sorted(map(tuple, shuffled.T)) == sorted(map(tuple, cost.T))  # the same columns, moved
        assert all(sorted(a) == sorted(b) for a, b in zip(shuffled, cost))  # each row: its values reordered


def test_equal_columns_are_never_swapped_with_each_other():
    a, b, c = [0.0, 1.0], [1.0, 0.0], [0.5, 0.0]
    cost = np.array([a, a, b, c]).T  # columns 0 and 1 equal
    # positions 0 and 1 need columns 2 and 3 (in either order), which leaves 0 and 1 for positions 2 and 3
    assert _draws(cost) == {(2, 3, 0, 1), (2, 3, 1, 0), (3, 2, 0, 1), (3, 2, 1, 0)}


def test_constant_columns_may_stay_or_take_a_non_constant_place():
    cost = np.array([[0.0, 1.0, 0.5], [1.0, 1.0, 0.5]])  # column 0 varies, columns 1 and 2 are constant
    # every permutation that moves column 0: (1, 0, 2) leaves constant column 2 in place
    assert _draws(cost) == {(1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)}


def test_the_normalised_fashion_mnist_prior():
    cost = normalize_cost(load_cost(FASHION_MNIST_PRIOR_PATH, SOURCE, TARGET), "column")
    # the CSV's Sandal and Ankle boot columns are both (1, 1, 1, 1, 0); every column varies over the source classes
    assert np.array_equal(cost[:, 2], cost[:, 4]) and np.ptp(cost, axis=0).min() > 0
    for perm in _draws(cost):
        assert all(perm[j] != j for j in range(5)) and perm[2] != 4 and perm[4] != 2
        assert _admissible(cost, perm)


def test_the_same_seed_gives_the_same_permutation_and_seeds_differ():
    cost = np.random.default_rng(7).random((4, 6))
    assert all(np.array_equal(column_permutation(cost, s), column_permutation(cost, s)) for s in SEEDS)
    assert len(_draws(cost)) > 10  # 265 derangements of 6 columns; 60 seeds draw many of them
    # only the classes of equal and constant columns matter, not the values: another C of the same shape draws alike
    assert np.array_equal(column_permutation(cost, 3), column_permutation(cost + 1.0, 3))


def test_zero_and_minus_zero_are_the_same_value():
    cost = np.array([[0.0, -0.0, 1.0], [1.0, 1.0, 0.0]])  # columns 0 and 1 are equal: 2 of 3, no permutation
    with pytest.raises(ValueError, match=r"columns \[0, 1\] are equal and need 2 other columns .* C has 1"):
        column_permutation(cost, 0)


@pytest.mark.parametrize("cost, message", [
    (np.array([[0.0], [1.0]]), "C has one target column"),
    (np.array([[0.0, 0.0, 0.0, 1.0, 2.0], [1.0, 1.0, 1.0, 0.0, 0.0]]),
     r"columns \[0, 1, 2\] are equal and need 3 other columns to take their places, and C has 2"),
    (np.array([[0.0, 0.0, 5.0], [1.0, 1.0, 5.0]]), r"columns \[0, 1\] are equal"),  # a constant column is not enough
])  # fmt: skip
def test_no_admissible_permutation_is_a_one_line_error(cost, message):
    with pytest.raises(ValueError, match=message) as err:
        column_permutation(cost, 0)
    assert "\n" not in str(err.value)
    assert not any(_admissible(cost, p) for p in itertools.permutations(range(cost.shape[1])))


def test_a_cost_without_a_varying_column_has_nothing_to_shuffle():
    # every permutation qualifies (no column varies), but none changes a relation: refused all the same
    with pytest.raises(ValueError, match="no non-constant target column .* shuffle a cost with relations"):
        column_permutation(np.array([[1.0, 0.0, 0.5], [1.0, 0.0, 0.5]]), 0)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3"])
def test_the_seed_is_an_integer_from_zero(seed):
    with pytest.raises(ValueError, match="integer >= 0"):
        column_permutation(np.eye(3), seed)


PATTERNS = ([0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, 1.0])  # two varying, two constant


@pytest.mark.parametrize("tries", [shuffle_module.SHUFFLE_TRIES, 0])  # 0: the construction alone
def test_an_error_exactly_when_no_admissible_permutation_exists(tries, monkeypatch):
    """Every C of 1 to 5 columns from PATTERNS, against every permutation (brute force)."""
    monkeypatch.setattr(shuffle_module, "SHUFFLE_TRIES", tries)
    for width in range(1, 6):
        for columns in itertools.product(PATTERNS, repeat=width):
            cost = np.array(columns).T
            exists = any(_admissible(cost, p) for p in itertools.permutations(range(width)))
            has_relation = np.ptp(cost, axis=0).max() > 0
            if exists and has_relation:
                assert _admissible(cost, column_permutation(cost, width))
            else:
                with pytest.raises(ValueError):
                    column_permutation(cost, width)


def test_the_construction_when_random_draws_fail():
    """Ten equal columns and ten others: 10!^2/20! ~ 5e-6 of the permutations qualify, 1000 draws miss them."""
    cost = np.array([[0.0] * 10 + [1.0] * 10, [1.0] * 10 + [0.0] * 10])
    for seed in range(5):
        perm = column_permutation(cost, seed)
        assert sorted(perm[:10]) == list(range(10, 20)) and sorted(perm[10:]) == list(range(10))
    assert len({tuple(column_permutation(cost, s)) for s in range(5)}) > 1  # still drawn from the seed


def test_permute_columns_checks_its_permutation():
    cost = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(permute_columns(cost, [2, 0, 1]), [[2.0, 0.0, 1.0], [5.0, 3.0, 4.0]])
    for bad in ([0, 1], [0, 0, 1], [0, 1, 3]):
        with pytest.raises(ValueError, match="not a permutation of the 3 target columns"):
            permute_columns(cost, bad)


def test_describe_shuffle():
    assert describe_shuffle(3, np.array([2, 0, 1])) == (
        f"Target columns then shuffled by seed 3 (column j takes C's column p[j], p = [2, 0, 1]), {SHUFFLE_CONTROL}.")
    assert "p = " not in describe_shuffle(0, np.arange(21)[::-1])  # too many columns to list
    assert "the same permutation at every refresh" in describe_shuffle(0, [1, 0], refreshed=True)


# ------------------------------------------------------------------------------- the run's cost


def test_a_fixed_cost_is_shuffled_after_it_is_normalised():
    spec = DataArguments().spec()
    exp = SimpleNamespace(source=None, target=None, source_names=SOURCE, target_names=TARGET)
    prior = normalize_cost(load_cost(FASHION_MNIST_PRIOR_PATH, SOURCE, TARGET), "column")
    cost = plan_cost("prior", spec, normalization="column", warmup_steps=None, samples_per_class=1, pretrained=False,
                     shuffle_seed=4)  # fmt: skip
    fixed = resolve_cost(cost, exp)
    perm = column_permutation(prior, 4)
    assert np.array_equal(fixed.permutation, perm) and np.array_equal(fixed.matrix, prior[:, perm])
    assert fixed.description.endswith(describe_shuffle(4, perm))
    # a refresh passes the first permutation: it is applied as given
    again = resolve_cost(cost, exp, permutation=np.array([4, 3, 2, 1, 0]))
    assert np.array_equal(again.matrix, prior[:, ::-1])
    assert resolve_cost(plan_cost("prior", spec, normalization="column", warmup_steps=None, samples_per_class=1,
                                  pretrained=False), exp).permutation is None  # fmt: skip


def test_plan_cost_refuses_a_negative_seed_and_a_cost_without_relations():
    spec = DataArguments().spec()
    kwargs = dict(normalization="column", warmup_steps=None, samples_per_class=1, pretrained=False)
    with pytest.raises(ValueError, match="--cost_shuffle_seed must be >= 0"):
        plan_cost("prior", spec, shuffle_seed=-2, **kwargs)
    with pytest.raises(ValueError, match="--cost constant relates no class to another: drop --cost_shuffle_seed"):
        plan_cost("constant", spec, shuffle_seed=0, **kwargs)
    assert plan_cost("x.npy", spec, shuffle_seed=0, **kwargs).relations  # a file can carry relations
    assert not Cost("constant", "column", 0, 1).relations


# ------------------------------------------------------------------------------- the recipe

TINY = ["--mode", "jtln", "--seeds", "0", "--shots", "2", "--max_eval_samples", "40", "--per_device_train_batch_size",
        "8", "--save_timm", "false", "--dataloader_num_workers", "0"]  # fmt: skip


def test_the_recipe_trains_and_saves_the_shuffled_normalised_prior(tmp_path):
    out = tmp_path / "run"
    argv = [*TINY, "--max_steps", "2", "--cost_shuffle_seed", "3", "--output_dir", str(out)]
    assert recipe.main(argv) == 0  # the recipe's main() in this process
    prior = normalize_cost(load_cost(FASHION_MNIST_PRIOR_PATH, SOURCE, TARGET), "column")  # float64
    perm = column_permutation(prior, 3)
    saved = load_file(str(out / "model" / "model.safetensors"))["cost_matrix"]
    # exact: both sides are the float64 -> float32 rounding of the same float64 values (a permutation moves them;
    # the run parses the CSV and normalises it element-wise, no sum, as here: the same doubles on any CPU)
    assert saved.dtype == np.float32 and np.array_equal(saved, prior[:, perm].astype(np.float32))
    results = json.loads((out / "results.json").read_text())
    assert results["cost_shuffle_seed"] == 3 and "shuffled by seed 3" in (out / "results.md").read_text()
    card = (out / "model" / "README.md").read_text()
    assert describe_shuffle(3, perm) in card
    assert json.loads((out / "settings.json").read_text())["cost_shuffle_seed"] == 3


def test_a_refreshed_cost_keeps_the_first_permutation(tmp_path, monkeypatch, one_intra_op_thread):
    """A relationship cost recomputed at steps 1 and 2 of 3: every build is shuffled by the first build's permutation."""
    import jtln_hf.cost.resolve as resolve

    built = []

    def recording(*args, **kwargs):
        matrix, how = build(*args, **kwargs)
        built.append(matrix)
        return matrix, how

    build = resolve.build_cost
    monkeypatch.setattr(resolve, "build_cost", recording)
    out = tmp_path / "run"
    argv = [*TINY, "--max_steps", "3", "--cost", "relationship", "--cost_warmup_steps", "1", "--cost_refresh_steps",
            "1", "--cost_shuffle_seed", "5", "--output_dir", str(out)]  # fmt: skip
    assert recipe.main(argv) == 0
    assert len(built) == 3  # the first build, then refreshes at steps 1 and 2 (not at the last, 3)
    perm = column_permutation(built[0], 5)
    saved = load_file(str(out / "model" / "model.safetensors"))["cost_matrix"]
    assert np.array_equal(saved, built[-1][:, perm].astype(np.float32))  # the last refresh, the first permutation
    card = (out / "model" / "README.md").read_text()
    assert describe_shuffle(5, perm, refreshed=True) in card
