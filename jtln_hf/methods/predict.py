"""What runs a trained model outside training: its outputs over a dataset (the cost builders read them
through :func:`model_predictor`), the target test metrics (:func:`evaluate_model`) and the per-class view
that explains a comparison's row (:func:`diagnose_model`).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np

from ..cost.builders import Predict
from ..data.pools import DataSpec, ExperimentData
from ..modeling_jtln import JointImageClassifier
from ..training.arguments import JTLNTrainingArguments, loss_settings
from ..training.trainer import JTLNTrainer
from .stages import _eval_dataset, _with_transform, quiet_args


def predict_outputs(
    model, ds: datasets.Dataset, data: DataSpec, args: JTLNTrainingArguments, fields: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Model outputs ``fields`` (e.g. ``pooler_output``, ``logits``, ``source_logits``) and labels of ``ds``.

    Under the eval transform, through :meth:`jtln_hf.training.trainer.JTLNTrainer.predict_outputs`
    (``Trainer.predict``: batched, gathered over processes); every process must call it.
    """
    return model_predictor(model, data, args)(ds, fields)


def model_predictor(model, data: DataSpec, args: JTLNTrainingArguments) -> Predict:
    """``predict(dataset, fields)`` on ``model`` under the eval transform, one quiet trainer for every call."""
    trainer = JTLNTrainer(model=model, args=quiet_args(args))
    return lambda ds, fields: trainer.predict_outputs(_with_transform(ds, model.config, False, data), fields)


def evaluate_model(
    model, exp: ExperimentData, data: DataSpec, args: JTLNTrainingArguments,
    log_to: JTLNTrainer | None = None,
) -> dict[str, float]:  # fmt: skip
    """Target test metrics (accuracy, mean per-class accuracy, top-k, loss), keys without ``eval_``.

    ``log_to``, the method's last training stage, evaluates its own model (``Trainer.evaluate``):
    the metrics join that stage's log history and loggers at its last step (with ``--report_to
    tensorboard`` its curves end with the test metrics) and ``eval_results.json`` is written in its
    folder. The ``loss`` is the target cross-entropy for every method (``eval_loss`` of
    :meth:`JTLNTrainer.compute_loss` in evaluation), so it compares across methods. With a validation set
    (``--target_validation_fraction``) its accuracy and mean per-class accuracy are added as
    ``validation_*`` (what settings are chosen on), by a trainer of its own: not in the loggers.
    """
    stage_dir = log_to.args.output_dir if log_to is not None else str(Path(args.output_dir) / "runs" / "eval")
    quiet = None
    if log_to is None or exp.target_validation is not None:  # a trainer of its own only where one is needed
        quiet = JTLNTrainer(model=model, args=quiet_args(args, stage_dir))
    trainer = log_to if log_to is not None else quiet
    metrics = trainer.evaluate(_eval_dataset(exp.target_test, model.config, data))
    if exp.target_validation is not None:
        metrics.update(quiet.evaluate(_eval_dataset(exp.target_validation, model.config, data),
                                      metric_key_prefix="validation"))  # fmt: skip
    trainer.save_metrics("eval", metrics)
    keep = ("accuracy", "mean_per_class_accuracy", "loss")
    out = {}
    for key, value in metrics.items():
        prefix, _, name = key.partition("_")
        if prefix == "eval" and (name in keep or name.startswith("top_")):
            out[name] = float(value)
        elif prefix == "validation" and name in keep[:2]:
            out[key] = float(value)
    return out


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Accuracy of each class: :math:`|\\{i : y_i = k, \\hat y_i = k\\}| / |\\{i : y_i = k\\}|`, None for an absent class.

    The terms whose mean is the mean per-class accuracy (``sklearn.metrics.balanced_accuracy_score``).
    """
    predictions = np.asarray(logits).argmax(-1)
    labels = np.asarray(labels)
    out: list[float | None] = []
    for k in range(num_classes):
        mine = labels == k
        out.append(float((predictions[mine] == k).mean()) if mine.any() else None)
    return out


def diagnose_model(
    model: JointImageClassifier, exp: ExperimentData, data: DataSpec, args: JTLNTrainingArguments
) -> dict[str, object]:  # fmt: skip
    """What explains a trained model's row in a comparison: per-class accuracy, its cost and mean transport plan.

    ``per_class_accuracy``: ``{"test": [...], "validation": [...]}`` (one value per target class,
    :func:`per_class_accuracy`; validation only with a validation split); with a cost matrix and an
    OT term (``args.ot_loss_weight > 0``), ``cost_matrix`` (the model's final C, ``(L_s, L_t)``) and
    ``transport_plan``: the mean OT plan between the two heads over the target test images
    (:meth:`jtln_hf.training.LossSettings.mean_transport_plan`, under the training's settings), the plan the card
    draws. One forward pass over each split through :func:`predict_outputs`: every process must call it.
    """
    fields = ("logits", "source_logits")
    out: dict[str, object] = {"target_names": list(exp.target_names), "source_names": list(exp.source_names)}
    splits = {"test": exp.target_test, "validation": exp.target_validation}
    per_class, test_outputs = {}, None
    for name, ds in splits.items():
        if ds is None:
            continue
        outputs, labels = predict_outputs(model, ds, data, args, fields)
        per_class[name] = per_class_accuracy(outputs["logits"], labels, len(exp.target_names))
        test_outputs = outputs if name == "test" else test_outputs
    out["per_class_accuracy"] = per_class
    cost = model.cost_matrix.detach().cpu()
    if args.ot_loss_weight > 0 and bool((cost != 0).any()):
        out["cost_matrix"] = cost.double().numpy().tolist()
        out["transport_plan"] = loss_settings(args).mean_transport_plan(
            test_outputs["source_logits"], test_outputs["logits"], cost).tolist()
    return out
