"""--cost_unlabelled_target: unlabelled target images labelled by their nearest shot centroid."""

from __future__ import annotations

import numpy as np
import pytest

from jtln_hf import data as jdata
from jtln_hf.cost.builders import Cost
from jtln_hf.cost.pseudo_labels import nearest_centroid_labels, pseudo_labelled_target
from jtln_hf.cost.resolve import resolve_cost
from jtln_hf.experiment.arguments import DataArguments, JTLNArguments, ModelArguments
from jtln_hf.experiment.checks import check_arguments

SOURCE, TARGET = ["T-shirt/top", "Trouser", "Pullover"], ["Sandal", "Bag"]


def test_nearest_centroid_by_cosine_by_hand():
    shots = np.array([[2.0, 0.0], [1.0, 0.1], [0.0, 3.0]])  # class 0 points along x, class 1 along y
    labels = np.array([0, 0, 1])
    points = np.array([[5.0, 1.0], [0.2, 4.0], [1.0, 1.2], [-1.0, 0.0]])
    # unit shots: (1, 0), (0.995, 0.0995) -> mu_0 ~ (0.9975, 0.0498); mu_1 = (0, 1); (1, 1.2) is nearer y
    assigned, margin = nearest_centroid_labels(shots, labels, points, 2)
    assert assigned.tolist() == [0, 1, 1, 1]
    # margins: cosine to the nearest centroid less cosine to the other; (5, 1): 0.9995... - 0.196...
    mu0 = (np.array([1.0, 0.0]) + np.array([1.0, 0.1]) / np.hypot(1.0, 0.1)) / 2
    mu0 /= np.linalg.norm(mu0)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    expected = np.abs(unit @ mu0 - unit[:, 1])
    np.testing.assert_allclose(margin, expected, rtol=1e-12)
    # a class without shots is never assigned, even where it would be nearest
    assert nearest_centroid_labels(shots[:2], labels[:2], points, 2)[0].tolist() == [0, 0, 0, 0]


def test_the_builder_reads_the_shots_and_the_pseudo_labelled_pool_images_never_their_labels(fashion_mnist):
    train, _ = fashion_mnist
    source, pool = jdata.split_by_classes(train, SOURCE, TARGET)
    shots = jdata.sample_shots(pool, 3, seed=0)
    calls = []

    def predict(ds, fields):  # features that separate the classes: every pseudo label is right
        y = np.asarray(ds["label"])
        calls.append(len(y))
        return {"pooler_output": np.stack([y == 0, y == 1], 1).astype(np.float32) + 0.1}, y

    joined, agreement = pseudo_labelled_target(shots, pool, 40, predict, seed=2)
    # exact: agreement is a count of equal integer labels over 40 (the features separate the classes by 1)
    assert len(joined) == 6 + 40 and agreement == 1.0 and calls == [6, 40]
    assert joined.features["label"] == shots.features["label"]

    def wrong(ds, fields):  # features that invert the classes: every pseudo label is wrong, and so is used
        y = np.asarray(ds["label"])
        shown = y if len(y) == 6 else 1 - y
        return {"pooler_output": np.stack([shown == 0, shown == 1], 1).astype(np.float32)}, y

    joined, agreement = pseudo_labelled_target(shots, pool, 40, wrong, seed=2)
    assert agreement == 0.0  # exact: 0 right labels of 40 is 0 / 40, no rounding on any CPU
    pool_rows = joined.select(range(6, 46))
    assert np.bincount(pool_rows["label"], minlength=2).tolist() == np.bincount(1 - np.asarray(
        pool.select(np.sort(np.random.default_rng([2, 7]).choice(len(pool), 40, replace=False)))["label"]),
        minlength=2).tolist()  # fmt: skip

    def graded(ds, fields):  # right labels, the first half of each class's pool rows nearer its centroid
        y = np.asarray(ds["label"])
        near = np.where(np.arange(len(y)) % 2 == 0, 1.0, 0.2) if len(y) != 6 else np.ones(len(y))
        return {"pooler_output": np.stack([(y == 0) * near + 0.1, (y == 1) * near + 0.1], 1).astype(np.float32)}, y

    joined, agreement = pseudo_labelled_target(shots, pool, 40, graded, seed=2, keep=0.5)
    assert agreement == 1.0 and len(joined) == 6 + 20  # half of each class's 20 pool images kept

    from types import SimpleNamespace

    exp = SimpleNamespace(source=source, target=shots, target_pool=pool, source_names=SOURCE, target_names=TARGET)
    fixed = resolve_cost(Cost("features-centroid", "none", 0, 5, unlabelled_target=40), exp, seed=2, predict=predict)
    assert "40 unlabelled target images" in fixed.description and "100% of those labels right" in fixed.description
    with pytest.raises(ValueError, match="--cost_unlabelled_keep chooses among the images"):
        check_arguments(DataArguments(), ModelArguments(), JTLNArguments(cost="features-mmd", cost_unlabelled_keep=0.5),
                        {"cost", "cost_unlabelled_keep"})  # fmt: skip
    with pytest.raises(ValueError, match="--cost_unlabelled_target is only used by"):
        check_arguments(DataArguments(), ModelArguments(), JTLNArguments(cost="prior", cost_unlabelled_target=10),
                        {"cost", "cost_unlabelled_target"})  # fmt: skip
