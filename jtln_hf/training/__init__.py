"""Training: :class:`JTLNTrainer` (transformers' Trainer with the JTLN objective) and everything only it uses.

* :mod:`~jtln_hf.training.trainer` -- the trainer: paired source/target batches, ``compute_loss``, logging;
* :mod:`~jtln_hf.training.arguments` -- :class:`JTLNTrainingArguments` (TrainingArguments plus the objective);
* :mod:`~jtln_hf.training.loss` -- the JTLN objective as a pure function (:func:`jtln_loss`) and its settings;
* :mod:`~jtln_hf.training.state` -- what the trainer keeps from step to step beside Trainer's state;
* :mod:`~jtln_hf.training.streaming` and :mod:`~jtln_hf.training.bad_images` -- what the trainer does with a
  streamed source and with images that cannot be decoded (mixins of :class:`JTLNTrainer`);
* :mod:`~jtln_hf.training.cotuning` -- Co-Tuning's trainer, the baseline beside JTLN.
"""

from __future__ import annotations

from .arguments import JTLNObjectiveArguments, JTLNTrainingArguments, loss_settings
from .cotuning import CoTuningTrainer
from .loss import JTLNLoss, LossSettings, jtln_loss
from .trainer import JTLNTrainer

__all__ = [
    "CoTuningTrainer",
    "JTLNLoss",
    "JTLNObjectiveArguments",
    "JTLNTrainer",
    "JTLNTrainingArguments",
    "LossSettings",
    "jtln_loss",
    "loss_settings",
]
