"""JTLNTrainingArguments: transformers' TrainingArguments plus the JTLN objective and batch composition.

Apart from :mod:`jtln_hf.training.trainer` (which re-exports it), so that what reads the settings of a run
(the recipe, a sweep, the card's hyperparameters) need not import the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from ..data.bad_images import check_max_bad_images
from ..sinkhorn import OBJECTIVES
from .loss import LossSettings


@dataclass
class JTLNObjectiveArguments:
    """The JTLN objective and batch composition: the fields :class:`JTLNTrainingArguments` adds.

    A base class of their own so that they come first in ``--help`` (HfArgumentParser lists a
    dataclass's fields in order, and a dataclass orders inherited fields base-last); keyword-only,
    so ``JTLNTrainingArguments("out")`` still sets ``output_dir``. How the defaults were chosen:
    docs/design.md, "Decisions and the measurements behind them".
    """

    source_loss_weight: float = field(
        kw_only=True, default=1.0, metadata={"help": "λ_s: weight of the source cross-entropy."}
    )
    ot_loss_weight: float = field(
        kw_only=True, default=1.0, metadata={"help": "λ_ot: weight of the OT term (0 = plain joint fine-tuning)."}
    )
    ot_epsilon: float = field(
        kw_only=True, default=0.05, metadata={"help": "ε: entropic regularisation of OT (the paper's 1/λ)."}
    )
    ot_iterations: int = field(
        kw_only=True, default=50, metadata={"help": "Sinkhorn iterations per step (the maximum when --ot_tol is set)."}
    )
    ot_tol: float | None = field(
        kw_only=True, default=None,
        metadata={"help": "Stop Sinkhorn once the plans' row sums are within this L1 error, tested every 10 "
                  "iterations (e.g. 1e-4; float32 cannot go below ~1e-6). Default: fixed iterations."},
    )
    ot_method: str = field(
        kw_only=True, default="auto",
        metadata={"help": "Sinkhorn solver: auto, kernel (fast) or log (stable for small ε)."},
    )
    ot_detach_target: bool = field(
        kw_only=True, default=False,
        metadata={"help": "Stop the OT gradient into the target head (OT then only shapes h_s)."},
    )
    ot_objective: str = field(
        kw_only=True, default="entropic",
        metadata={
            "help": "OT value and gradient: paper (logs <γ,C> but back-propagates the gradient of <γ,C> - εH(γ): "
            "the paper's, inconsistent), entropic (<γ,C> - εH(γ)) or kl (<γ,C> + ε KL(γ‖a⊗b), zero gradient "
            "under a constant cost); the last two log the value they differentiate.",
            "choices": list(OBJECTIVES),
        },
    )
    source_fraction: float = field(
        kw_only=True, default=0.5, metadata={"help": "Share of source rows in every per-device training batch."}
    )


@dataclass
class JTLNTrainingArguments(TrainingArguments, JTLNObjectiveArguments):
    """`TrainingArguments` plus the JTLN objective and batch composition (:class:`JTLNObjectiveArguments`)."""

    _argument_group_name = "training: the JTLN objective, then transformers.TrainingArguments"

    # Both heads and C take part in every step (an empty part is a graph-connected zero).
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Keep False: every parameter receives a gradient each step."}
    )
    # The image column must reach `with_transform`; Trainer would drop it otherwise.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep False: the transform needs the image column."}
    )

    max_bad_images: float = field(
        default=0.001,
        metadata={"help": "Training images that may fail to decode (each skipped, replaced by a row of its domain, "
                  "listed in bad_images.json) before a stage stops: a count (1, 2 ...) or a fraction (< 1) of the "
                  "rows the stage reads; 0: stop at the first, naming it."},
    )  # fmt: skip

    # Sharing (the recipe's model/ folder and --push_to_hub; jtln_hf.sharing).
    save_timm: bool = field(
        default=True,
        metadata={"help": "Also write OUTPUT_DIR/model/timm: the target network as a plain timm model (loads without "
                  "jtln_hf); --push_to_hub pushes it to its own repository."},
    )  # fmt: skip
    hub_timm_model_id: str | None = field(
        default=None, metadata={"help": "Repository of the timm export (default: <hub_model_id>-timm)."}
    )
    push_space: str | None = field(
        default=None,
        metadata={"help": "With --push_to_hub: also push the Gradio demo as this Space (user/name), loading the "
                  "model by repository id at the pushed revision."},
    )  # fmt: skip

    def __post_init__(self):
        super().__post_init__()
        if self.dataloader_pin_memory and not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # nothing to pin to; silences torch's warning
        if not 0.0 <= self.source_fraction <= 1.0:
            raise ValueError(f"source_fraction must be in [0, 1], got {self.source_fraction}.")
        check_max_bad_images(self.max_bad_images)
        loss_settings(self)  # the loss weights and OT settings, checked where the loss checks them


def loss_settings(args: JTLNObjectiveArguments) -> LossSettings:
    """The :class:`~jtln_hf.training.loss.LossSettings` that ``args`` describe (weights and OT settings), checked."""
    return LossSettings(
        source_loss_weight=args.source_loss_weight,
        ot_loss_weight=args.ot_loss_weight,
        ot_epsilon=args.ot_epsilon,
        ot_iterations=args.ot_iterations,
        ot_method=args.ot_method,
        ot_detach_target=args.ot_detach_target,
        ot_tol=args.ot_tol,
        ot_objective=args.ot_objective,
    )


__all__ = ["JTLNObjectiveArguments", "JTLNTrainingArguments", "loss_settings"]
