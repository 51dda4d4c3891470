"""Top-k accuracy: the share of rows whose true class is among the k highest scores.

top_k = (1/N) Σ_i [y_i ∈ argtop_k(s_i)], computed by ``sklearn.metrics.top_k_accuracy_score``.
A local ``evaluate`` module, loadable offline by path; takes scores, not class ids.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import top_k_accuracy_score


class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: class scores (N, K); references: true class ids (N,); k: int",
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=5):
        scores = np.asarray(predictions)
        labels = np.arange(scores.shape[1])
        return {f"top_{k}_accuracy": float(top_k_accuracy_score(references, scores, k=k, labels=labels))}
