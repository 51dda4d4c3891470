"""The methods of a comparison, as a registry: name -> stage plan, table title, figure label.

Methods (Lu, Chen & Saidi 2017, Table 1, and one baseline):

* ``finetune``    -- target only (the target head alone learns; source data unused);
* ``consecutive`` -- source only for ``max_steps``, then target only for ``max_steps``;
* ``joint``       -- both heads on mixed batches, no OT (``ot_loss_weight = 0``);
* ``jtln``        -- joint + the OT term under the cost matrix C;
* ``cotuning``    -- joint + Co-Tuning's soft source labels (You et al. 2020).

A stage plan trains a fresh model through one or more stages (each a :class:`JTLNTrainer` run
in ``output_dir/runs/<method>-seed<seed>[-stage]``). Every method sees the same target images
per step (``per_device_train_batch_size x (1 - source_fraction)``). Adding a method is one
:func:`register_method` call (the built-ins' are in :mod:`jtln_hf.methods.builtins`): the CLI's
``--mode``/``--methods`` (and their ``--help``, built after registration), the table, the figure
and the card read the registry (:func:`method_names`, :func:`baseline_method`, the :class:`Method` facts).
"""

from __future__ import annotations

from . import builtins  # noqa: F401  (registers the built-in methods)
from .builtins import OT_FLAGS, CoTuningSettings
from .predict import diagnose_model, evaluate_model, model_predictor, per_class_accuracy, predict_outputs
from .registry import (
    METHOD_REGISTRY,
    Method,
    MethodRun,
    MethodSettings,
    Trained,
    baseline_method,
    method_names,
    register_method,
)
from .run import RunResult, run_method, stage_length
from .stages import (
    build_model,
    quiet_args,
    source_batch_size,
    target_batch_size,
    train_joint,
    train_source_only,
    train_target_only,
)

__all__ = [
    "OT_FLAGS",
    "METHOD_REGISTRY",
    "CoTuningSettings",
    "Method",
    "MethodRun",
    "MethodSettings",
    "RunResult",
    "Trained",
    "baseline_method",
    "build_model",
    "diagnose_model",
    "evaluate_model",
    "method_names",
    "model_predictor",
    "per_class_accuracy",
    "predict_outputs",
    "quiet_args",
    "register_method",
    "run_method",
    "source_batch_size",
    "stage_length",
    "target_batch_size",
    "train_joint",
    "train_source_only",
    "train_target_only",
]
