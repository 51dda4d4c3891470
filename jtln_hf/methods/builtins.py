"""The built-in methods' stage plans, each one :func:`~jtln_hf.methods.registry.register_method` call
with its facts (the baseline, whether it trains the source head, its budget text, its own settings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cost.builders import FixedCost
from ..cost.flags import default_warmup_steps
from ..cost.relationship import relationship_of
from ..cost.refresh import CostRefresh
from ..cost.resolve import resolve_cost
from ..training.cotuning import CoTuningTrainer
from ..utils.styles import style_of
from .predict import model_predictor
from .registry import MethodRun, Trained, register_method
from .stages import train_joint, train_source_only, train_target_only


# ----------------------------------------------------------------------------------------- plans
@register_method("finetune", **style_of("finetune"), trains_source=False)
def _finetune(run: MethodRun) -> Trained:
    return Trained(train_target_only(run.model, run.exp, run.args, run.settings.data, run.name))


def _source_then_target(length: str, warmup: int) -> str:
    return f"{length} source + {length} target"


@register_method("consecutive", **style_of("consecutive"), steps_text=_source_then_target)
def _consecutive(run: MethodRun) -> Trained:
    train_source_only(run.model, run.exp, run.args, run.settings.data, f"{run.name}-source", run.args.max_steps)
    return Trained(train_target_only(run.model, run.exp, run.args, run.settings.data, f"{run.name}-target"))


@register_method("joint", **style_of("joint"), joint_batches=True, baseline=True)
def _joint(run: MethodRun) -> Trained:
    return Trained(train_joint(run.model, run.exp, run.args, run.settings.data, run.name, ot_loss_weight=0.0))


#: The flags of the OT term and its cost: read by JTLN only.
OT_FLAGS = (
    "cost", "cost_normalization", "cost_warmup_steps", "cost_samples_per_class", "cost_refresh_steps",
    "cost_shuffle_seed", "cost_from_target_pool", "cost_warmup_restart", "cost_unlabelled_target",
    "cost_unlabelled_keep", "ot_loss_weight", "ot_epsilon", "ot_iterations", "ot_tol", "ot_method", "ot_detach_target",
    "ot_objective",
)  # fmt: skip


@register_method("jtln", **style_of("jtln"), flags=OT_FLAGS, joint_batches=True)
def _jtln(run: MethodRun) -> Trained:
    """A fixed cost (prior, file) as resolved before training; a cost from this seed's images (``pixels-mmd``);
    a model cost from this seed's (warmed-up) model, recomputed every ``--cost_refresh_steps`` joint steps when
    asked (:class:`~jtln_hf.cost.refresh.CostRefresh`).
    A shuffled cost (``--cost_shuffle_seed``) keeps its first build's permutation at every refresh (a control
    throughout). With ``--cost_warmup_restart`` the weights before the warm-up are put back once C is computed."""
    cost, data = run.settings.cost, run.settings.data
    warmup, fixed, callbacks = cost.warmup_steps, cost.fixed, []
    initial = {k: v.detach().clone() for k, v in run.model.state_dict().items()} if cost.warmup_restart else None
    if warmup:  # a model cost reads the warmed-up model; a fixed cost is used after the same source-only steps
        train_source_only(run.model, run.exp, run.args, data, f"{run.name}-warmup", warmup)
    if fixed is None:
        needs_model = cost.from_model or cost.unlabelled_target  # pseudo-labels read the model
        predict = model_predictor(run.model, data, run.args) if needs_model else None  # one, reused by every refresh

        def resolve(permutation: np.ndarray | None = None) -> FixedCost:
            return resolve_cost(cost, run.exp, seed=run.args.seed, warmup_steps=warmup, predict=predict,
                                permutation=permutation)

        fixed = resolve()
        if cost.refresh_steps:
            first = fixed.permutation  # None unless shuffled: every refresh is shuffled as the first build was
            callbacks.append(CostRefresh(lambda: resolve(first).matrix, cost.refresh_steps))
    if warmup and not cost.from_model:  # a model cost's sentence says its warm-up; a cost fixed by the data's does not
        fixed = FixedCost(fixed.matrix, f"{fixed.description.removesuffix('.')}; joint steps after {warmup} "
                                        "source-only warm-up steps.", fixed.permutation)  # fmt: skip
    if initial is not None:  # the warm-up was a probe: C is its only output
        run.model.load_state_dict(initial)
        fixed = FixedCost(fixed.matrix, f"{fixed.description.removesuffix('.')}; then training restarted from the "
                                        "initial weights (--cost_warmup_restart).", fixed.permutation)  # fmt: skip
    run.model.set_cost_matrix(fixed.matrix)
    last = train_joint(run.model, run.exp, run.args, data, run.name, ot_loss_weight=run.args.ot_loss_weight,
                       callbacks=callbacks or None)  # fmt: skip
    return Trained(last, fixed.description, warmup)


@dataclass(frozen=True)
class CoTuningSettings:
    """Co-Tuning's own settings, resolved once: λ_ct (``--cotuning_weight``) and the source-only steps
    before its relationship is read (``--cost_warmup_steps``, default
    :func:`~jtln_hf.cost.flags.default_warmup_steps`)."""

    cotuning_weight: float
    cost_warmup_steps: int


def _cotuning_settings(flags: Mapping[str, Any]) -> CoTuningSettings:
    return CoTuningSettings(float(flags["cotuning_weight"]), default_warmup_steps(flags["cost_warmup_steps"]))


@register_method("cotuning", **style_of("cotuning"), flags=("cotuning_weight", "cost_warmup_steps"), joint_batches=True,
                 settings=_cotuning_settings)  # fmt: skip
def _cotuning(run: MethodRun) -> Trained:
    options: CoTuningSettings = run.options
    warmup = options.cost_warmup_steps
    if warmup:
        train_source_only(run.model, run.exp, run.args, run.settings.data, f"{run.name}-warmup", warmup)
    relationship = relationship_of(model_predictor(run.model, run.settings.data, run.args), run.exp.target,
                                   len(run.exp.target_names))  # fmt: skip
    last = train_joint(run.model, run.exp, run.args, run.settings.data, run.name, ot_loss_weight=0.0,
                       trainer_cls=CoTuningTrainer, relationship=relationship,
                       cotuning_weight=options.cotuning_weight)  # fmt: skip
    return Trained(last, f"Co-Tuning: p(y_s | y_t) read after {warmup} source-only warm-up steps, soft source term "
                         f"weight {options.cotuning_weight:g}.", warmup)  # fmt: skip
