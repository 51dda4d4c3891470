"""Classification metrics as one local ``evaluate`` module, loaded by path (offline); the config names the metric.

* ``accuracy`` = (1/N) Σ_i [ŷ_i = y_i];
* ``mean_per_class_accuracy`` = (1/K) Σ_k |{i : y_i = k, ŷ_i = k}| / |{i : y_i = k}| over the K classes in
  the references (balanced accuracy, ``sklearn.metrics.balanced_accuracy_score``);
* ``top_k_accuracy`` = (1/N) Σ_i [y_i ∈ argtop_k(s_i)] from class scores s (``sklearn.metrics.top_k_accuracy_score``).
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

_CLASS_IDS = datasets.Value("int64")


def _accuracy(predictions, references):
    predictions, references = np.asarray(predictions), np.asarray(references)
    return {"accuracy": float((predictions == references).mean()) if len(references) else float("nan")}


def _mean_per_class_accuracy(predictions, references):
    return {"mean_per_class_accuracy": float(balanced_accuracy_score(references, predictions))}


def _top_k_accuracy(predictions, references, k=5):
    scores = np.asarray(predictions)
    labels = np.arange(scores.shape[1])  # a class absent from the references is still a column
    return {f"top_{k}_accuracy": float(top_k_accuracy_score(references, scores, k=k, labels=labels))}


#: config name -> (what ``predictions`` holds, its feature, the function)
_METRICS = {
    "accuracy": ("predicted class ids (N,)", _CLASS_IDS, _accuracy),
    "mean_per_class_accuracy": ("predicted class ids (N,)", _CLASS_IDS, _mean_per_class_accuracy),
    "top_k_accuracy": ("class scores (N, K); k: int", datasets.Sequence(datasets.Value("float32")), _top_k_accuracy),
}


class ClassificationMetric(evaluate.Metric):
    def _info(self):
        if self.config_name not in _METRICS:
            raise ValueError(f"unknown metric {self.config_name!r}: pass config_name, one of {list(_METRICS)}.")
        what, feature, _ = _METRICS[self.config_name]
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description=f"predictions: {what}; references: true class ids (N,)",
            features=datasets.Features({"predictions": feature, "references": _CLASS_IDS}),
        )

    def _compute(self, predictions, references, **kwargs):
        return _METRICS[self.config_name][2](predictions, references, **kwargs)
