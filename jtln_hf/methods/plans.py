"""The built-in methods' stage plans, each one :func:`~jtln_hf.methods.registry.register_method` call.
"""

from __future__ import annotations


from ..cotuning import CoTuningTrainer
from ..cost_builders import DEFAULT_COST_WARMUP_STEPS, CostSettings, cost_warmup_steps, relationship_of
from ..method_styles import style_of

from .registry import METHOD_REGISTRY, MethodRun, Trained, register_method
from .predict import _predictor, resolve_cost
from .stages import train_joint, train_source_only, train_target_only


# ----------------------------------------------------------------------------------------- plans
def cotuning_warmup_steps(cost: CostSettings) -> int:
    """Source-only steps before Co-Tuning reads its relationship: the source head must know its task first."""
    return cost.warmup_steps if cost.warmup_steps is not None else DEFAULT_COST_WARMUP_STEPS


@register_method("finetune", **style_of("finetune"))
def _finetune(run: MethodRun) -> Trained:
    return Trained(train_target_only(run.model, run.exp, run.args, run.settings.data, run.name))


@register_method("consecutive", **style_of("consecutive"))
def _consecutive(run: MethodRun) -> Trained:
    train_source_only(run.model, run.exp, run.args, run.settings.data, f"{run.name}-source", run.args.max_steps)
    return Trained(train_target_only(run.model, run.exp, run.args, run.settings.data, f"{run.name}-target"))


@register_method("joint", **style_of("joint"), joint_batches=True)
def _joint(run: MethodRun) -> Trained:
    return Trained(train_joint(run.model, run.exp, run.args, run.settings.data, run.name, ot_loss_weight=0.0))


#: The flags of the OT term and its cost: read by JTLN only.
OT_FLAGS = (
    "cost", "cost_normalization", "cost_warmup_steps", "cost_samples_per_class", "ot_loss_weight", "ot_epsilon",
    "ot_iterations", "ot_tol", "ot_method", "ot_detach_target", "ot_objective",
)  # fmt: skip


@register_method("jtln", **style_of("jtln"), flags=OT_FLAGS, joint_batches=True)
def _jtln(run: MethodRun) -> Trained:
    """A fixed cost (prior, file) as resolved before training; a model cost from this seed's (warmed-up) model."""
    warmup = 0
    if run.fixed_cost is not None:
        cost, description = run.fixed_cost
    else:
        warmup = cost_warmup_steps(run.settings.cost, run.settings.data)
        if warmup:
            train_source_only(run.model, run.exp, run.args, run.settings.data, f"{run.name}-warmup", warmup)
        cost, description = resolve_cost(run.settings.cost, run.settings.data, run.exp, run.model, run.args.seed, warmup,
                                         run.args)  # fmt: skip
    run.model.set_cost_matrix(cost)
    last = train_joint(run.model, run.exp, run.args, run.settings.data, run.name, ot_loss_weight=run.args.ot_loss_weight)
    return Trained(last, description, warmup)


@register_method("cotuning", **style_of("cotuning"), flags=("cotuning_weight", "cost_warmup_steps"), joint_batches=True)
def _cotuning(run: MethodRun) -> Trained:
    warmup = cotuning_warmup_steps(run.settings.cost)
    if warmup:
        train_source_only(run.model, run.exp, run.args, run.settings.data, f"{run.name}-warmup", warmup)
    relationship = relationship_of(_predictor(run.model, run.settings.data, run.args), run.exp.target,
                                   len(run.exp.target_names))  # fmt: skip
    last = train_joint(run.model, run.exp, run.args, run.settings.data, run.name, ot_loss_weight=0.0,
                       trainer_cls=CoTuningTrainer, relationship=relationship,
                       cotuning_weight=run.settings.cotuning_weight)  # fmt: skip
    return Trained(last, f"Co-Tuning: p(y_s | y_t) read after {warmup} source-only warm-up steps, soft source term "
                         f"weight {run.settings.cotuning_weight:g}.", warmup)  # fmt: skip


#: The registered method names, in registration order (the order of a comparison).
METHODS = tuple(METHOD_REGISTRY)
