"""Accuracy: the share of predictions equal to the reference label.

A local ``evaluate`` module (``evaluate.load(path)``) so metrics load offline; the Hub's own
``accuracy`` module needs the network.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "accuracy = (1/N) Σ_i [prediction_i == reference_i]"


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description="predictions: predicted class ids (N,); references: true class ids (N,)",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        return {"accuracy": float((predictions == references).mean()) if len(references) else float("nan")}
