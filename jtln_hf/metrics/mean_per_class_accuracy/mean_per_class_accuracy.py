"""Mean per-class accuracy (balanced accuracy): the recall of every class, averaged over classes.

mean_per_class_accuracy = (1/K) Σ_k |{i : y_i = k, ŷ_i = k}| / |{i : y_i = k}|, over the K classes
present in the references (as ``sklearn.metrics.balanced_accuracy_score``, which computes it).
A local ``evaluate`` module, loadable offline by path.
"""

import datasets
import evaluate
from sklearn.metrics import balanced_accuracy_score


class MeanPerClassAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: predicted class ids (N,); references: true class ids (N,)",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"mean_per_class_accuracy": float(balanced_accuracy_score(references, predictions))}
