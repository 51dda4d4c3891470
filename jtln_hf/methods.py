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
:func:`register_method` call here: the CLI's ``--mode``/``--methods``, the table and the
figure read the registry.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from safetensors.torch import load_file
from transformers import TrainerState, set_seed
from transformers.utils import logging

from . import data as jdata
from .configuration_jtln import JointImageClassifierConfig
from .cost import FASHION_MNIST_PRIOR_PATH
from .cost_builders import (
    DEFAULT_COST_WARMUP_STEPS,
    CostInputs,
    CostSettings,
    Predict,
    build_cost,
    cost_kind,
    cost_warmup_steps,
    data_prior,
    relationship_of,
)
from .data.pools import DataSpec, ExperimentData
from .io import latest_complete_checkpoint, resume_choice
from .method_styles import METHOD_STYLES, MethodStyle, style_of
from .modeling_jtln import JointImageClassifier
from .trainer import JTLNTrainer, JTLNTrainingArguments

logger = logging.get_logger(__name__)


# -------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class MethodSettings:
    """What the methods read of the command line, as a frozen value (built once from its arguments).

    ``data``: the data flags; ``cost``: the cost flags; ``image_size``: ``--image_size`` (a pretrained
    backbone is built at it); ``cotuning_weight``: ``--cotuning_weight``.
    """

    data: DataSpec
    cost: CostSettings
    image_size: int | None
    cotuning_weight: float


@dataclass
class MethodRun:
    """One method on one seed: what its stage plan reads (``args`` carry the seed)."""

    model: JointImageClassifier
    exp: ExperimentData
    settings: MethodSettings
    args: JTLNTrainingArguments
    name: str  # "<method>-seed<seed>": the stage folders' prefix
    fixed_cost: tuple[np.ndarray, str] | None = None


@dataclass
class Trained:
    """What a stage plan returns: its last stage's trainer, a sentence for the card, warm-up steps."""

    last: JTLNTrainer
    description: str = ""
    warmup: int = 0


@dataclass(frozen=True)
class Method:
    """A registered method: its stage plan, its row title in results tables, its figure label and colour.

    ``flags``: the flags only this kind of method reads (one given for a run without such a
    method is an error); ``uses_ot``: trains with the OT term; ``joint_batches``: trains mixed
    source/target batches (``--source_fraction`` applies).
    """

    name: str
    plan: Callable[[MethodRun], Trained]
    title: str
    label: str
    colour: str
    flags: tuple[str, ...] = ()
    uses_ot: bool = False
    joint_batches: bool = False


METHOD_REGISTRY: dict[str, Method] = {}


def register_method(name: str, title: str, label: str, colour: str, **options: Any) -> Callable:
    """Decorator: register ``plan(run) -> Trained`` as method ``name`` (``--mode name``, ``--methods name``).

    Its title, label and colour also go to :data:`jtln_hf.method_styles.METHOD_STYLES`, where tables,
    figures and cards read them."""

    def register(plan: Callable[[MethodRun], Trained]) -> Callable[[MethodRun], Trained]:
        METHOD_REGISTRY[name] = Method(name, plan, title, label, colour, **options)
        METHOD_STYLES[name] = MethodStyle(title, label, colour, uses_ot=options.get("uses_ot", False))
        return plan

    return register


# ----------------------------------------------------------------------------------------- model
def build_model(config: JointImageClassifierConfig, seed: int, image_size: int | None = None) -> JointImageClassifier:
    """A fresh model with seeded initial weights (identical across methods for one seed).

    A local weights file named in ``backbone_kwargs["pretrained_cfg_overlay"]`` is loaded by timm,
    then removed from the model's config: a checkpoint must not carry a path of this machine.
    """
    set_seed(seed)
    model = JointImageClassifier(copy.deepcopy(config))
    model.config.backbone_kwargs.pop("pretrained_cfg_overlay", None)
    if image_size is not None:
        chans = model.config.data_config["input_size"][0]
        model.config.data_config["input_size"] = [chans, image_size, image_size]
    return model


# ---------------------------------------------------------------------------------------- stages
def _with_transform(ds: datasets.Dataset, config: JointImageClassifierConfig, training: bool, data: DataSpec,
                    seed: int = 0) -> datasets.Dataset:  # fmt: skip
    """``ds`` under timm's train or eval transform; training augmentation is salted with the run's ``seed``.

    Without the salt, a row drawn in the same batch position by two seeds would get the same crop
    and flip: the seeds of a comparison would share their augmentation noise.
    """
    kwargs = {"scale": tuple(data.train_scale), "hflip": data.hflip} if training else {}
    transform = jdata.build_transform(config.data_config, training, **kwargs)
    return ds.with_transform(jdata.make_batch_transform(transform, config.data_config["input_size"][0], seed=seed))


def _stage_args(args: JTLNTrainingArguments, name: str, **overrides: Any) -> JTLNTrainingArguments:
    """Arguments of one training stage: its own ``output_dir/runs/<name>`` and never a push.

    Only the final ``model/`` folder is pushed, once, by the recipe; a stage trainer with
    ``push_to_hub=True`` would create the repository at init and push every checkpoint.
    """
    overrides.setdefault("push_to_hub", False)
    return dataclasses.replace(args, output_dir=str(Path(args.output_dir) / "runs" / name), **overrides)


def _train(model, args, train_ds, eval_ds=None, trainer_cls: type[JTLNTrainer] = JTLNTrainer,
           **trainer_kwargs: Any) -> JTLNTrainer:  # fmt: skip
    """Train one stage; write ``train_results.json``, ``all_results.json`` and ``trainer_state.json``.

    The same files transformers' example scripts write (``save_metrics`` / ``save_state``, main
    process only), so the stage's log history and throughput can be read without TensorBoard.
    """
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, **trainer_kwargs)
    checkpoint = _resume_value(args.resume_from_checkpoint, args.output_dir)
    finished = _finished_state(checkpoint)
    if finished is not None:
        # Trainer resumed at its last step trains one step more: a finished stage reloads what it trained
        model.load_state_dict(load_file(Path(checkpoint) / "model.safetensors"))
        trainer.state = finished
        return trainer
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return trainer


def _finished_state(checkpoint: str | None) -> TrainerState | None:
    """The state of ``checkpoint`` when it is a stage's last step (nothing left to train), else None."""
    if checkpoint is None:
        return None
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    return state if state.max_steps > 0 and state.global_step >= state.max_steps else None


def _resume_value(value: str | bool | None, stage_dir: str) -> str | None:
    """``--resume_from_checkpoint true`` (or ``last``): the stage's latest checkpoint, if it has one.

    A stage without a checkpoint starts fresh, so a whole ``compare`` run can be resumed: finished
    stages restart from their final checkpoint (nothing left to train), the interrupted one from
    its last, the others from scratch (the recipe refuses a resume when no stage has a checkpoint:
    :func:`jtln_hf.io.check_output_dir`).
    """
    choice = resume_choice(value)
    return latest_complete_checkpoint(stage_dir) if choice == "latest" else choice


def target_batch_size(args: JTLNTrainingArguments) -> int:
    """Target rows per step in joint batches: what every method sees per step."""
    batch = args.per_device_train_batch_size
    return max(1, batch - jdata.source_rows_per_batch(batch, args.source_fraction))


def source_batch_size(args: JTLNTrainingArguments) -> int:
    return max(1, jdata.source_rows_per_batch(args.per_device_train_batch_size, args.source_fraction))


def _eval_dataset(ds: datasets.Dataset, config: JointImageClassifierConfig, data: DataSpec):
    """A target set (test or validation) with the evaluation transform (domain 1 = target rows)."""
    return _with_transform(jdata.build_joint_dataset(None, ds), config, False, data)


def _stage_eval_dataset(stage: JTLNTrainingArguments, exp, config, data) -> datasets.Dataset | None:
    """The target test set for evaluation during a stage (``--eval_strategy steps|epoch``), else None."""
    return None if stage.eval_strategy == "no" else _eval_dataset(exp.target_test, config, data)


def train_source_only(model, exp, args, data, name: str, steps: int) -> JTLNTrainer:
    """Source head only (λ_ot = 0, batches of source rows)."""
    train_ds = _with_transform(jdata.build_joint_dataset(exp.source, None), model.config, True, data, args.seed)
    stage = _stage_args(
        args, name, max_steps=steps, per_device_train_batch_size=source_batch_size(args),
        source_fraction=1.0, ot_loss_weight=0.0,
    )  # fmt: skip
    return _train(model, stage, train_ds)


def train_target_only(model, exp, args, data, name: str) -> JTLNTrainer:
    """Target head only (batches of target rows); evaluated on the target test set if ``eval_strategy`` asks."""
    train_ds = _with_transform(jdata.build_joint_dataset(None, exp.target), model.config, True, data, args.seed)
    stage = _stage_args(
        args, name, per_device_train_batch_size=target_batch_size(args), source_fraction=0.0, ot_loss_weight=0.0
    )
    return _train(model, stage, train_ds, _stage_eval_dataset(stage, exp, model.config, data))


def train_joint(model, exp, args, data, name: str, ot_loss_weight: float, trainer_cls: type[JTLNTrainer] = JTLNTrainer,
                **trainer_kwargs: Any) -> JTLNTrainer:  # fmt: skip
    """Both heads on mixed batches, with the OT term when ``ot_loss_weight > 0`` (``trainer_cls``: e.g. Co-Tuning)."""
    train_ds = _with_transform(
        jdata.build_joint_dataset(exp.source, exp.target), model.config, True, data, args.seed
    )
    stage = _stage_args(args, name, ot_loss_weight=ot_loss_weight)
    return _train(model, stage, train_ds, _stage_eval_dataset(stage, exp, model.config, data), trainer_cls,
                  **trainer_kwargs)  # fmt: skip


def quiet_args(args: JTLNTrainingArguments, output_dir: str | None = None) -> JTLNTrainingArguments:
    """Arguments of a trainer that only predicts or evaluates: no OT term, no push, no loggers."""
    return dataclasses.replace(args, output_dir=output_dir or args.output_dir, push_to_hub=False, ot_loss_weight=0.0,
                               report_to="none", eval_strategy="no", fp16_full_eval=False,
                               bf16_full_eval=False)  # fmt: skip  # *_full_eval would cast the model in place


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
    cost: CostSettings, data: DataSpec, exp: ExperimentData, model: JointImageClassifier | None = None,
    seed: int = 0, warmup_steps: int = 0, args: JTLNTrainingArguments | None = None,
) -> tuple[np.ndarray, str]:  # fmt: skip
    """The cost matrix C for ``--cost`` (or its default) and a sentence saying how it was built.

    Looks the builder up in :data:`jtln_hf.cost_builders.COST_BUILDERS` (a file path otherwise);
    builders that read the model run it through :func:`predict_outputs` (needs ``model`` and ``args``).
    """
    predict = _predictor(model, data, args) if model is not None and args is not None else None
    inputs = CostInputs(
        exp.source, exp.target, list(exp.source_names), list(exp.target_names), predict=predict,
        prior=data_prior(data) or FASHION_MNIST_PRIOR_PATH, seed=seed, warmup_steps=warmup_steps,
        samples_per_class=cost.samples_per_class,
    )  # fmt: skip
    return build_cost(cost_kind(data, cost), inputs, cost.normalization)


def evaluate_model(
    model, exp: ExperimentData, data: DataSpec, args: JTLNTrainingArguments,
    log_to: JTLNTrainer | None = None,
) -> dict[str, float]:  # fmt: skip
    """Target test metrics (accuracy, mean per-class accuracy, top-k, loss), keys without ``eval_``.

    ``log_to``, the method's last training stage, evaluates its own model (``Trainer.evaluate``):
    the metrics join that stage's log history and loggers at its last step (with ``--report_to
    tensorboard`` its curves end with the test metrics) and ``eval_results.json`` is written in its
    folder. The ``loss`` is the plain target cross-entropy for every method
    (:meth:`JTLNTrainer.target_loss_only`), so it compares across methods. With a validation set
    (``--target_validation_fraction``) its accuracy and mean per-class accuracy are added as
    ``validation_*`` (what settings are chosen on), by a trainer of its own: not in the loggers.
    """
    stage_dir = log_to.args.output_dir if log_to is not None else str(Path(args.output_dir) / "runs" / "eval")
    quiet = None
    if log_to is None or exp.target_validation is not None:  # a trainer of its own only where one is needed
        quiet = JTLNTrainer(model=model, args=quiet_args(args, stage_dir))
    trainer = log_to if log_to is not None else quiet
    with trainer.target_loss_only():
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
    from .cotuning import CoTuningTrainer

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


# ------------------------------------------------------------------------------------------- run
@dataclass
class RunResult:
    """One method on one seed: its test (and validation) metrics, training time and model."""

    method: str
    seed: int
    metrics: dict[str, float]
    train_seconds: float
    model: JointImageClassifier
    cost_description: str = ""
    steps: str = ""  # what the run trained, e.g. "200 warm-up + 500": the budget every table states
    warmup_steps: int = 0  # source-only steps before the cost (JTLN) or the relationship (Co-Tuning)


def run_method(
    method: str, exp: ExperimentData, config: JointImageClassifierConfig, settings: MethodSettings,
    args: JTLNTrainingArguments, seed: int,
    fixed_cost: tuple[np.ndarray, str] | None = None,
) -> RunResult:  # fmt: skip
    """Train one method for one seed (its registered stage plan) and evaluate it on the target test set.

    ``fixed_cost`` is a cost resolved before training (``prior`` or a file); model costs are
    computed in the plan, from this seed's model.
    """
    if method not in METHOD_REGISTRY:
        raise ValueError(f"unknown method {method!r}: choose from {list(METHOD_REGISTRY)}.")
    args = dataclasses.replace(args, seed=seed)
    model = build_model(config, seed, settings.image_size if settings.cost.pretrained else None)
    start = time.perf_counter()
    run = MethodRun(model, exp, settings, args, f"{method}-seed{seed}", fixed_cost)
    trained = METHOD_REGISTRY[method].plan(run)
    seconds = time.perf_counter() - start
    metrics = evaluate_model(model, exp, settings.data, args, log_to=trained.last)
    logger.warning(f"{method} seed {seed}: accuracy {metrics['accuracy']:.4f} ({seconds:.0f} s)")
    return RunResult(method, seed, metrics, seconds, model, trained.description,
                     _steps_text(method, args, trained.warmup), trained.warmup)  # fmt: skip


def stage_length(args: JTLNTrainingArguments) -> str:
    """The length of one stage: ``"500 steps"`` or ``"2 epochs"``."""
    return f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"


def _steps_text(method: str, args: JTLNTrainingArguments, warmup: int) -> str:
    """The training budget of one run: consecutive trains twice, warm-ups add source-only steps."""
    length = stage_length(args).removesuffix(" steps")
    if method == "consecutive":
        return f"{length} source + {length} target"
    return f"{warmup} warm-up + {length}" if warmup else length


__all__ = [
    "METHODS",
    "METHOD_REGISTRY",
    "Method",
    "MethodRun",
    "MethodSettings",
    "RunResult",
    "Trained",
    "build_model",
    "evaluate_model",
    "predict_outputs",
    "register_method",
    "resolve_cost",
    "run_method",
    "stage_length",
]
