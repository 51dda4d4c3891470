"""Tests for the local evaluate modules and compute_classification_metrics (all offline).

References: a small case counted by hand, and scikit-learn (accuracy_score,
balanced_accuracy_score, top_k_accuracy_score) on random data.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, top_k_accuracy_score
from transformers import EvalPrediction

from jtln_hf.metrics import METRIC_NAMES, compute_classification_metrics, load_metric

# 8 rows, 3 classes (class 0: 4 rows, class 1: 3 rows, class 2: 1 row)
REFS = [0, 0, 0, 0, 1, 1, 1, 2]
PREDS = [0, 0, 0, 1, 1, 2, 2, 2]
# correct: 3 of class 0, 1 of class 1, 1 of class 2 -> accuracy 5/8,
# mean per-class accuracy (3/4 + 1/3 + 1/1) / 3 = 25/36
SCORES = np.array([
    [0.9, 0.05, 0.05],   # y=0: rank 1
    [0.6, 0.3, 0.1],     # y=0: rank 1
    [0.5, 0.1, 0.4],     # y=0: rank 1
    [0.3, 0.6, 0.1],     # y=0: rank 2
    [0.1, 0.8, 0.1],     # y=1: rank 1
    [0.2, 0.3, 0.5],     # y=1: rank 2
    [0.5, 0.1, 0.4],     # y=1: rank 3
    [0.4, 0.3, 0.3001],  # y=2: rank 2
])  # fmt: skip
# top-1: 4/8 (rows 0,1,2,4), top-2: 7/8 (all but row 6)


def test_all_modules_load_offline():
    for name in METRIC_NAMES:
        assert load_metric(name).name  # loaded by path; HF_HUB_OFFLINE=1 in conftest
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        load_metric("f1")


def test_accuracy_by_hand_and_sklearn():
    metric = load_metric("accuracy")
    assert metric.compute(predictions=PREDS, references=REFS) == {"accuracy": pytest.approx(5 / 8)}
    rng = np.random.default_rng(0)
    refs, preds = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    preds[:200] = refs[:200]
    assert metric.compute(predictions=preds, references=refs)["accuracy"] == pytest.approx(accuracy_score(refs, preds))


def test_mean_per_class_accuracy_by_hand_and_sklearn():
    metric = load_metric("mean_per_class_accuracy")
    assert metric.compute(predictions=PREDS, references=REFS) == {"mean_per_class_accuracy": pytest.approx(25 / 36)}
    rng = np.random.default_rng(1)
    refs = rng.choice(5, size=400, p=[0.5, 0.2, 0.15, 0.1, 0.05])  # imbalanced: differs from accuracy
    preds = np.where(rng.random(400) < 0.6, refs, rng.integers(0, 5, 400))
    value = metric.compute(predictions=preds, references=refs)["mean_per_class_accuracy"]
    assert value == pytest.approx(balanced_accuracy_score(refs, preds))
    recalls = [np.mean(preds[refs == k] == k) for k in range(5)]
    assert value == pytest.approx(np.mean(recalls))


def test_top_k_accuracy_by_hand_and_sklearn():
    metric = load_metric("top_k_accuracy")
    assert metric.compute(predictions=SCORES, references=REFS, k=1) == {"top_1_accuracy": pytest.approx(4 / 8)}
    assert metric.compute(predictions=SCORES, references=REFS, k=2) == {"top_2_accuracy": pytest.approx(7 / 8)}
    rng = np.random.default_rng(2)
    scores, refs = rng.normal(size=(300, 6)).astype(np.float32), rng.integers(0, 6, 300)
    for k in (2, 4):
        value = metric.compute(predictions=scores, references=refs, k=k)[f"top_{k}_accuracy"]
        assert value == pytest.approx(top_k_accuracy_score(refs, scores, k=k, labels=np.arange(6)))
    # a class absent from the references still counts as a column of the scores
    refs_missing = np.where(refs == 5, 0, refs)
    value = metric.compute(predictions=scores, references=refs_missing, k=2)["top_2_accuracy"]
    top2 = np.argsort(-scores, axis=1)[:, :2]
    assert value == pytest.approx(np.mean([r in row for r, row in zip(refs_missing, top2)]))


def test_compute_classification_metrics_eval_prediction():
    logits = np.log(SCORES)  # argmax per row: [0, 0, 0, 1, 1, 2, 0, 0] -> 4 of 8 correct
    out = compute_classification_metrics(EvalPrediction(predictions=logits, label_ids=np.array(REFS)))
    preds = logits.argmax(1)
    assert set(out) == {"accuracy", "mean_per_class_accuracy", "top_2_accuracy"}  # 3 classes: k lowered 5 -> 2
    assert out["accuracy"] == pytest.approx(accuracy_score(REFS, preds)) == pytest.approx(4 / 8)
    assert out["mean_per_class_accuracy"] == pytest.approx(balanced_accuracy_score(REFS, preds))
    assert out["top_2_accuracy"] == pytest.approx(7 / 8)


def test_compute_classification_metrics_topk_lowering_and_tuples():
    rng = np.random.default_rng(3)
    refs = rng.integers(0, 10, 200)
    logits10 = rng.normal(size=(200, 10))
    out = compute_classification_metrics(EvalPrediction(predictions=logits10, label_ids=refs))
    assert out["top_5_accuracy"] == pytest.approx(top_k_accuracy_score(refs, logits10, k=5, labels=np.arange(10)))
    out = compute_classification_metrics(EvalPrediction(predictions=logits10, label_ids=refs), top_k=3)
    assert "top_3_accuracy" in out and "top_5_accuracy" not in out
    # 4 classes: k = min(5, 4 - 1) = 3
    logits4, refs4 = rng.normal(size=(50, 4)), rng.integers(0, 4, 50)
    out = compute_classification_metrics(EvalPrediction(predictions=logits4, label_ids=refs4))
    assert set(out) == {"accuracy", "mean_per_class_accuracy", "top_3_accuracy"}
    assert out["top_3_accuracy"] == pytest.approx(top_k_accuracy_score(refs4, logits4, k=3, labels=np.arange(4)))
    # 2 classes: top-k would be trivial (k = 1 is plain accuracy), so it is left out
    logits2, refs2 = rng.normal(size=(30, 2)), rng.integers(0, 2, 30)
    out = compute_classification_metrics(EvalPrediction(predictions=logits2, label_ids=refs2))
    assert set(out) == {"accuracy", "mean_per_class_accuracy"}
    assert out["accuracy"] == pytest.approx(accuracy_score(refs2, logits2.argmax(1)))
    # predictions as a tuple (logits first, as Trainer gives when a model returns several outputs)
    extra = rng.normal(size=(30, 7))
    out_tuple = compute_classification_metrics(EvalPrediction(predictions=(logits2, extra), label_ids=refs2))
    assert out_tuple == out
