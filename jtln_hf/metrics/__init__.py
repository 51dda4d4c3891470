"""Classification metrics as a local ``evaluate`` module (``metrics/classification``), loaded by path so they
work offline (the Hub's own ``accuracy`` needs the network).

``compute_classification_metrics`` is the ``compute_metrics`` function given to the Trainer:
accuracy, mean per-class accuracy and top-k accuracy of the target head.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import evaluate
import numpy as np

METRICS_DIR = Path(__file__).parent
METRIC_NAMES = ("accuracy", "mean_per_class_accuracy", "top_k_accuracy")
_MODULE = METRICS_DIR / "classification" / "classification.py"


@lru_cache(maxsize=None)
def load_metric(name: str) -> evaluate.EvaluationModule:
    """``evaluate.load`` of the metric ``name`` from the module shipped in this folder (no network)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}: choose from {METRIC_NAMES}.")
    return evaluate.load(str(_MODULE), config_name=name)


def compute_classification_metrics(eval_pred, top_k: int = 5) -> dict[str, float]:
    """Accuracy, mean per-class accuracy and top-k accuracy from a Trainer ``EvalPrediction``.

    ``top_k`` is lowered to ``num_classes - 1`` when the task has few classes (top-k with
    k >= num_classes is always 1); it is skipped for two classes.
    """
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    logits, labels = np.asarray(logits), np.asarray(labels)
    predictions = logits.argmax(-1)
    out = load_metric("accuracy").compute(predictions=predictions, references=labels)
    out |= load_metric("mean_per_class_accuracy").compute(predictions=predictions, references=labels)
    k = min(top_k, logits.shape[-1] - 1)
    if k >= 2:
        out |= load_metric("top_k_accuracy").compute(predictions=logits, references=labels, k=k)
    return out
