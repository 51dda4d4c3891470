"""What runs a trained model outside training: its outputs over a dataset, the cost it defines
(:func:`resolve_cost`) and the target test metrics (:func:`evaluate_model`).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np

from ..cost import FASHION_MNIST_PRIOR_PATH
from ..cost_builders import Cost, CostInputs, FixedCost, Predict, build_cost
from ..data.pools import DataSpec, ExperimentData
from ..modeling_jtln import JointImageClassifier
from ..trainer import JTLNTrainer, JTLNTrainingArguments

from .stages import _eval_dataset, _with_transform, quiet_args


def predict_outputs(
    model, ds: datasets.Dataset, data: DataSpec, args: JTLNTrainingArguments, fields: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Model outputs ``fields`` (e.g. ``pooler_output``, ``logits``, ``source_logits``) and labels of ``ds``.

    Under the eval transform, through :meth:`jtln_hf.trainer.JTLNTrainer.predict_outputs`
    (``Trainer.predict``: batched, gathered over processes); every process must call it.
    """
    return _predictor(model, data, args)(ds, fields)


def _predictor(model, data: DataSpec, args: JTLNTrainingArguments) -> Predict:
    """``predict(dataset, fields)`` on ``model`` under the eval transform, one quiet trainer for every call."""
    trainer = JTLNTrainer(model=model, args=quiet_args(args))
    return lambda ds, fields: trainer.predict_outputs(_with_transform(ds, model.config, False, data), fields)


def resolve_cost(
    cost: Cost, data: DataSpec, exp: ExperimentData, model: JointImageClassifier | None = None,
    seed: int = 0, warmup_steps: int = 0, args: JTLNTrainingArguments | None = None,
) -> FixedCost:  # fmt: skip
    """The cost matrix C of ``cost.kind`` and a sentence saying how it was built.

    Looks the builder up in :data:`jtln_hf.cost_builders.COST_BUILDERS` (a file path otherwise);
    builders that read the model run it through :func:`predict_outputs` (needs ``model`` and ``args``).
    """
    predict = _predictor(model, data, args) if model is not None and args is not None else None
    inputs = CostInputs(
        exp.source, exp.target, list(exp.source_names), list(exp.target_names), predict=predict,
        prior=cost.prior or FASHION_MNIST_PRIOR_PATH, seed=seed, warmup_steps=warmup_steps,
        samples_per_class=cost.samples_per_class,
    )  # fmt: skip
    return FixedCost(*build_cost(cost.kind, inputs, cost.normalization))


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
