"""Experiments: the four training methods of the paper's table and Co-Tuning, on the same data and seeds.

``recipes/train_jtln.py`` is the command line; this module holds what it runs, so tests and
notebooks can call it too. Methods (Lu, Chen & Saidi 2017, Table 1):

* ``finetune``    -- target only (the target head alone learns; source data unused);
* ``consecutive`` -- source only for ``max_steps``, then target only for ``max_steps``;
* ``joint``       -- both heads on mixed batches, no OT (``ot_loss_weight = 0``);
* ``jtln``        -- joint + the OT term under the cost matrix C;
* ``cotuning``    -- joint + Co-Tuning's soft source labels (You et al. 2020), a baseline.

Every method sees the same target images per step (``per_device_train_batch_size x
(1 - source_fraction)``), the same k-shot target images and the same initial weights for a seed.
The step budgets differ and every table says so: ``consecutive`` trains two stages, and ``jtln``
with a ``features-*``/``relationship`` cost and ``cotuning`` add source-only warm-up steps.

The data come in one of two shapes: one dataset split by class (the paper's benchmark), or a
source dataset and a separate target dataset (:mod:`jtln_hf.sources` opens either).
:func:`plan_experiment` loads them, draws every seed's shots, builds the config and checks the
backbone weights and the cost *before* the first method trains: a bad setting fails in seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import set_seed
from transformers.utils import logging

from . import data as jdata
from .arguments import (
    FEATURE_COSTS,
    METHODS,
    MODEL_COSTS,
    MODES,
    DataArguments,
    JTLNArguments,
    ModelArguments,
    cost_kind,
    cost_warmup_steps,
    cotuning_warmup_steps,
)
from .cotuning import CoTuningTrainer
from .backbones import check_backbone
from .configuration_jtln import JointImageClassifierConfig
from .cost import (
    FASHION_MNIST_PRIOR_PATH,
    category_relationship,
    cost_from_features,
    cost_from_relationship,
    load_cost,
    normalize_cost,
)
from .hub import save_model_folder
from .io import atomic_write_dir, atomic_write_text, latest_complete_checkpoint
from .modelcard import has_cost, mean_transport_plan, training_hyperparameters, write_model_card
from .modeling_jtln import JointImageClassifier
from .sources import (
    FASHION_MNIST,
    data_config_from_stats,
    hub_dataset_id,
    display_name,
    image_stats,
    open_dataset,
    pick_split,
)
from .stats import BASELINE, paired_summary
from .trainer import JTLNTrainer, JTLNTrainingArguments, jtln_loss_from_args

logger = logging.get_logger(__name__)


# ------------------------------------------------------------------------------------------ data
@dataclass
class DataPools:
    """What is fixed across seeds: the source set, the target pool the shots come from, the test set."""

    source: datasets.Dataset
    target_pool: datasets.Dataset
    target_test: datasets.Dataset
    target_validation: datasets.Dataset | None = None
    description: str = ""


@dataclass
class ExperimentData:
    """The source set, the k-shot target set and the target test set (labels in own spaces)."""

    source: datasets.Dataset
    target: datasets.Dataset
    target_test: datasets.Dataset
    source_names: list[str]
    target_names: list[str]
    target_validation: datasets.Dataset | None = None


def _side(data_args: DataArguments, side: str) -> tuple[str, datasets.DatasetDict]:
    spec = getattr(data_args, f"{side}_dataset")
    config_name = getattr(data_args, f"{side}_dataset_config")
    wanted = [data_args.source_split] if side == "source" else [data_args.target_train_split, data_args.target_test_split]
    return spec, open_dataset(spec, config_name=config_name, root=data_args.dataset_root, splits=wanted)


def _standard(ds: datasets.Dataset, image_column: str, label_column: str, where: str) -> datasets.Dataset:
    try:
        return jdata.standardize_columns(ds, image_column=image_column, label_column=label_column)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _align(test: datasets.Dataset, train: datasets.Dataset, where: str) -> datasets.Dataset:
    """Give ``test`` the label ids of ``train`` (string labels are class-encoded per split)."""
    train_names, test_names = train.features["label"].names, test.features["label"].names
    if test_names == train_names:
        return test
    unknown = sorted(set(test_names) - set(train_names))
    if unknown:
        raise ValueError(f"{where}: test classes {unknown} do not occur in the training split.")
    aligned = test.align_labels_with_mapping({n: i for i, n in enumerate(train_names)}, "label")
    return aligned.cast_column("label", datasets.ClassLabel(names=list(train_names)))


def _carve(ds: datasets.Dataset, fraction: float, flag: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    """A stratified ``(rest, carved)`` split, the same for every seed (seed 0)."""
    try:
        parts = ds.train_test_split(test_size=fraction, stratify_by_column="label", seed=0)
    except ValueError as err:
        raise ValueError(f"{flag} {fraction}: cannot carve a stratified split ({err}); use a larger fraction "
                         "or a dataset with more images per class.") from None  # fmt: skip
    return parts["train"], parts["test"]


def load_pools(data_args: DataArguments) -> DataPools:
    """Load the data of either shape and select the classes (no seed-dependent draw yet).

    Two datasets: the source split with ``--source_classes`` (default all), the target train split
    with ``--target_classes`` (default all), and the target test split, or a stratified
    ``--target_test_fraction`` of the target train split. One dataset: its train/test splits
    divided into disjoint source and target classes. Either way ``--target_validation_fraction``
    then carves a stratified validation set from the target pool. Each carve uses seed 0, so every
    seed and every method is tested on the same images.
    """
    if data_args.two_datasets:
        source_spec, source_splits = _side(data_args, "source")
        source = _standard(pick_split(source_splits, data_args.source_split, "--source_split", source_spec),
                           data_args.source_image_column, data_args.source_label_column,
                           f"--source_dataset {source_spec}")  # fmt: skip
        if data_args.source_classes:
            source = jdata.select_classes(source, data_args.source_classes)
        target_spec, target_splits = _side(data_args, "target")
        columns = (data_args.target_image_column, data_args.target_label_column, f"--target_dataset {target_spec}")
        pool = _standard(pick_split(target_splits, data_args.target_train_split, "--target_train_split", target_spec),
                         *columns)  # fmt: skip
        if data_args.target_test_fraction is not None:
            pool, test = _carve(pool, data_args.target_test_fraction, "--target_test_fraction")
        else:
            if data_args.target_test_split not in target_splits:
                raise ValueError(
                    f"--target_test_split {data_args.target_test_split!r}: {target_spec} has no such split "
                    f"(splits: {sorted(target_splits)}); name one, or pass --target_test_fraction 0.2 to carve a "
                    f"stratified test split from {data_args.target_train_split!r}."
                )
            test = _align(_standard(target_splits[data_args.target_test_split], *columns), pool, columns[2])
        if data_args.target_classes:
            pool = jdata.select_classes(pool, data_args.target_classes)
            test = jdata.select_classes(test, data_args.target_classes)
        description = f"source {display_name(source_spec)} ({data_args.source_split}), target {display_name(target_spec)}"
    else:
        spec = data_args.dataset or FASHION_MNIST
        splits = open_dataset(spec, config_name=data_args.dataset_config, root=data_args.dataset_root,
                              splits=[data_args.train_split, data_args.test_split])  # fmt: skip
        columns = (data_args.image_column, data_args.label_column, f"--dataset {spec}")
        train = _standard(pick_split(splits, data_args.train_split, "--train_split", spec), *columns)
        test = _align(_standard(pick_split(splits, data_args.test_split, "--test_split", spec), *columns), train,
                      columns[2])  # fmt: skip
        names = train.features["label"].names
        target_classes = data_args.target_classes
        if not target_classes:
            if spec != FASHION_MNIST:
                raise ValueError(f"--dataset {spec}: name the target classes with --target_classes (the source "
                                 "classes are every other class unless --source_classes names them).")  # fmt: skip
            target_classes = list(jdata.DEFAULT_TARGET_CLASSES)
        source_classes = data_args.source_classes
        if not source_classes:
            target_ids = set(jdata.resolve_classes(target_classes, names))
            source_classes = [name for i, name in enumerate(names) if i not in target_ids]
        source, pool = jdata.split_by_classes(train, source_classes, target_classes)
        _, test = jdata.split_by_classes(test, source_classes, target_classes)
        description = display_name(spec)
    if not len(source) or not len(pool) or not len(test):
        empty = "source" if not len(source) else "target training" if not len(pool) else "target test"
        raise ValueError(f"the {empty} set is empty: check the split and class flags.")
    validation = None
    if data_args.target_validation_fraction is not None:
        pool, validation = _carve(pool, data_args.target_validation_fraction, "--target_validation_fraction")
    if data_args.max_eval_samples is not None and len(test) > data_args.max_eval_samples:
        test = test.shuffle(seed=0).select(range(data_args.max_eval_samples))
    return DataPools(source, pool, test, validation, description)


def prepare_data(data_args: DataArguments, seed: int, pools: DataPools | None = None) -> ExperimentData:
    """Draw the k-shot target set for ``seed`` (the same for every method) from the pools."""
    pools = pools if pools is not None else load_pools(data_args)
    target = jdata.sample_shots(pools.target_pool, data_args.shots, seed=seed) if data_args.shots else pools.target_pool
    return ExperimentData(
        source=pools.source,
        target=target,
        target_test=pools.target_test,
        source_names=pools.source.features["label"].names,
        target_names=target.features["label"].names,
        target_validation=pools.target_validation,
    )


# ----------------------------------------------------------------------------------------- model
def is_embedded_fashion_mnist(data_args: DataArguments) -> bool:
    """One Fashion-MNIST dataset split by class: the data config is Fashion-MNIST's own."""
    return not data_args.two_datasets and data_args.dataset in (None, FASHION_MNIST)


def build_config(model_args: ModelArguments, data_args: DataArguments, exp: ExperimentData) -> JointImageClassifierConfig:
    """The model config: label sets, backbone, and the input the data or the pretrained weights want.

    * Pretrained (``--pretrained_backbone`` or ``--backbone_checkpoint``): timm's pretrained data
      config (size, mean, std, channels) is kept (``--in_chans`` / ``--image_size`` override it);
      images of any mode and size are converted to it.
    * From scratch: channels, size, mean and std are read from the images
      (:func:`jtln_hf.sources.image_stats`: 1 channel when every image is grayscale, the target
      images' median side), not timm's 3 x 160 default; Fashion-MNIST alone keeps its data config.
    * ``--backbone_checkpoint``: timm loads the file (``pretrained_cfg_overlay=dict(file=...)``);
      :func:`build_model` drops the local path from the saved config.
    """
    backbone_kwargs: dict[str, Any] = {}
    data_config = None
    if model_args.pretrained:
        if model_args.in_chans is not None:
            backbone_kwargs["in_chans"] = model_args.in_chans
        if model_args.backbone_checkpoint is not None:
            backbone_kwargs["pretrained_cfg_overlay"] = {"file": str(Path(model_args.backbone_checkpoint).resolve())}
    else:
        if is_embedded_fashion_mnist(data_args) and model_args.in_chans in (None, 1):
            data_config = dict(jdata.FASHION_MNIST_DATA_CONFIG)
        else:
            stats = image_stats([exp.source, exp.target], in_chans=model_args.in_chans,
                                image_size=model_args.image_size)  # fmt: skip
            data_config = data_config_from_stats(stats)
        backbone_kwargs["in_chans"] = data_config["input_size"][0]
    return JointImageClassifierConfig(
        backbone=model_args.backbone,
        backbone_kwargs=backbone_kwargs,
        source_id2label=dict(enumerate(exp.source_names)),
        id2label=dict(enumerate(exp.target_names)),
        head_dropout=model_args.head_dropout,
        pretrained_backbone=model_args.pretrained,
        data_config=data_config,
    )


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


# ------------------------------------------------------------------------------------- training
def _with_transform(ds: datasets.Dataset, config: JointImageClassifierConfig, training: bool, data_args: DataArguments,
                    seed: int = 0) -> datasets.Dataset:  # fmt: skip
    """``ds`` under timm's train or eval transform; training augmentation is salted with the run's ``seed``.

    Without the salt, a row drawn in the same batch position by two seeds would get the same crop
    and flip: the seeds of a comparison would share their augmentation noise.
    """
    kwargs = {"scale": tuple(data_args.train_scale), "hflip": data_args.hflip} if training else {}
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
    result = trainer.train(resume_from_checkpoint=_resume_value(args.resume_from_checkpoint, args.output_dir))
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return trainer


def _resume_value(value: str | bool | None, stage_dir: str) -> str | None:
    """``--resume_from_checkpoint true`` (or ``last``): the stage's latest checkpoint, if it has one.

    A stage without a checkpoint starts fresh, so a whole ``compare`` run can be resumed: finished
    stages restart from their final checkpoint (nothing left to train), the interrupted one from
    its last, the others from scratch.
    """
    if value is True or (isinstance(value, str) and value.lower() in ("true", "last", "latest")):
        return latest_complete_checkpoint(stage_dir)
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("false", "none", "")):
        return None
    return value


def target_batch_size(args: JTLNTrainingArguments) -> int:
    """Target rows per step in joint batches: what every method sees per step."""
    batch = args.per_device_train_batch_size
    return max(1, batch - jdata.source_rows_per_batch(batch, args.source_fraction))


def source_batch_size(args: JTLNTrainingArguments) -> int:
    return max(1, jdata.source_rows_per_batch(args.per_device_train_batch_size, args.source_fraction))


def _eval_dataset(ds: datasets.Dataset, config: JointImageClassifierConfig, data_args: DataArguments):
    """A target set (test or validation) with the evaluation transform (domain 1 = target rows)."""
    return _with_transform(jdata.build_joint_dataset(None, ds), config, False, data_args)


def _stage_eval_dataset(stage: JTLNTrainingArguments, exp, config, data_args) -> datasets.Dataset | None:
    """The target test set for evaluation during a stage (``--eval_strategy steps|epoch``), else None."""
    return None if stage.eval_strategy == "no" else _eval_dataset(exp.target_test, config, data_args)


def train_source_only(model, exp, args, data_args, name: str, steps: int) -> JTLNTrainer:
    """Source head only (λ_ot = 0, batches of source rows)."""
    train_ds = _with_transform(jdata.build_joint_dataset(exp.source, None), model.config, True, data_args, args.seed)
    stage = _stage_args(
        args, name, max_steps=steps, per_device_train_batch_size=source_batch_size(args),
        source_fraction=1.0, ot_loss_weight=0.0,
    )  # fmt: skip
    return _train(model, stage, train_ds)


def train_target_only(model, exp, args, data_args, name: str) -> JTLNTrainer:
    """Target head only (batches of target rows); evaluated on the target test set if ``eval_strategy`` asks."""
    train_ds = _with_transform(jdata.build_joint_dataset(None, exp.target), model.config, True, data_args, args.seed)
    stage = _stage_args(
        args, name, per_device_train_batch_size=target_batch_size(args), source_fraction=0.0, ot_loss_weight=0.0
    )
    return _train(model, stage, train_ds, _stage_eval_dataset(stage, exp, model.config, data_args))


def train_joint(model, exp, args, data_args, name: str, ot_loss_weight: float, trainer_cls: type[JTLNTrainer] = JTLNTrainer,
                **trainer_kwargs: Any) -> JTLNTrainer:  # fmt: skip
    """Both heads on mixed batches, with the OT term when ``ot_loss_weight > 0`` (``trainer_cls``: e.g. Co-Tuning)."""
    train_ds = _with_transform(
        jdata.build_joint_dataset(exp.source, exp.target), model.config, True, data_args, args.seed
    )
    stage = _stage_args(args, name, ot_loss_weight=ot_loss_weight)
    return _train(model, stage, train_ds, _stage_eval_dataset(stage, exp, model.config, data_args), trainer_cls,
                  **trainer_kwargs)  # fmt: skip


def quiet_args(args: JTLNTrainingArguments, output_dir: str | None = None) -> JTLNTrainingArguments:
    """Arguments of a trainer that only predicts or evaluates: no OT term, no push, no loggers."""
    return dataclasses.replace(args, output_dir=output_dir or args.output_dir, push_to_hub=False, ot_loss_weight=0.0,
                               report_to="none", eval_strategy="no")  # fmt: skip


def predict_outputs(
    model, ds: datasets.Dataset, data_args: DataArguments, args: JTLNTrainingArguments, fields: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Model outputs ``fields`` (e.g. ``pooler_output``, ``logits``, ``source_logits``) and labels of ``ds``.

    Under the eval transform, through :meth:`jtln_hf.trainer.JTLNTrainer.predict_outputs`
    (``Trainer.predict``: batched, gathered over processes); every process must call it.
    """
    trainer = JTLNTrainer(model=model, args=quiet_args(args))
    return trainer.predict_outputs(_with_transform(ds, model.config, False, data_args), fields)


def resolve_cost(
    jtln_args: JTLNArguments,
    data_args: DataArguments,
    exp: ExperimentData,
    model: JointImageClassifier | None = None,
    seed: int = 0,
    warmup_steps: int = 0,
    args: JTLNTrainingArguments | None = None,
) -> tuple[np.ndarray, str]:
    """The cost matrix C for ``--cost`` (or its default) and a sentence saying how it was built.

    ``prior`` is the shipped hand-written Fashion-MNIST prior (its rows and columns are looked up by
    class name, so it serves any run whose classes it names); feature costs use ``model``'s pooled
    features (after ``warmup_steps`` source-only steps, or straight from pretrained weights);
    ``relationship`` is :math:`-\\log p(y_s \\mid y_t)` from the source head's predictions on the labelled
    target images (:func:`jtln_hf.cost.category_relationship`); ``constant`` is a control (all ones).
    """
    kind = cost_kind(data_args, jtln_args)
    norm = jtln_args.cost_normalization
    if kind == "prior":
        try:
            raw = load_cost(FASHION_MNIST_PRIOR_PATH, exp.source_names, exp.target_names)
        except ValueError as err:
            raise ValueError(f"--cost prior is the hand-written Fashion-MNIST prior and does not fit these classes "
                             f"({err}): pass a features-* cost or a .npy/.csv file.") from None  # fmt: skip
        how = "Hand-written prior relation between Fashion-MNIST classes (jtln_hf/resources/fashion_mnist_prior.csv)"
    elif kind == "constant":
        n_s, n_t = len(exp.source_names), len(exp.target_names)
        return np.ones((n_s, n_t)), "Constant cost (every entry 1): a control with no class structure."
    elif kind == "relationship":
        if model is None:
            raise ValueError("--cost relationship needs a model whose source head predicts on the target images.")
        raw = cost_from_relationship(relationship_of(model, exp, data_args, args), normalize="none")
        after = f"after {warmup_steps} source-only warm-up steps" if warmup_steps else "from the initial weights"
        how = (
            f"-log p(y_s | y_t): the source head's mean prediction on the {len(exp.target)} labelled images of each "
            f"target class (Co-Tuning's category relationship), {after}"
        )
    elif kind in FEATURE_COSTS:
        if model is None:
            raise ValueError(f"--cost {kind} needs a model to extract features from.")
        source = jdata.sample_shots(
            exp.source, min(jtln_args.cost_samples_per_class, _min_class_size(exp.source)), seed=seed
        )
        features = [predict_outputs(model, ds, data_args, args, ("pooler_output",)) for ds in (source, exp.target)]
        (xs, ys), (xt, yt) = [(outputs["pooler_output"], labels) for outputs, labels in features]
        raw = cost_from_features(
            xs, ys, xt, yt, method=FEATURE_COSTS[kind],
            num_source_labels=len(exp.source_names), num_target_labels=len(exp.target_names), seed=seed,
        )  # fmt: skip
        after = f"after {warmup_steps} source-only warm-up steps" if warmup_steps else "from the initial weights"
        how = (
            f"{FEATURE_COSTS[kind]} distance between the pooled backbone features of each source class "
            f"({len(xs)} images) and each target class ({len(xt)} labelled images), {after}"
        )
    else:
        path = Path(kind)
        if not path.is_file():
            raise ValueError(f"--cost {kind}: no such file; pass an existing .npy/.csv cost file.")
        try:
            raw = load_cost(path, exp.source_names, exp.target_names)
        except ValueError as err:
            raise ValueError(f"--cost {kind}: {err}") from None
        how = f"Loaded from {path.name}"
    return normalize_cost(raw, norm), f"{how}; normalisation: {norm}."


def relationship_of(model: JointImageClassifier, exp: ExperimentData, data_args: DataArguments,
                    args: JTLNTrainingArguments) -> np.ndarray:  # fmt: skip
    """Co-Tuning's :math:`p(y_s \\mid y_t)`, shape ``(L_t, L_s)``, from ``model``'s source head on the labelled target images."""
    outputs, labels = predict_outputs(model, exp.target, data_args, args, ("source_logits",))
    probs = torch.softmax(torch.as_tensor(outputs["source_logits"], dtype=torch.float64), -1).numpy()
    return category_relationship(probs, labels, len(exp.target_names))


def _min_class_size(ds: datasets.Dataset) -> int:
    return int(np.bincount(ds.select_columns(["label"]).with_format("numpy")[:]["label"]).min())


@dataclass
class RunResult:
    method: str
    seed: int
    metrics: dict[str, float]
    train_seconds: float
    model: JointImageClassifier
    cost_description: str = ""
    steps: str = ""  # what the run trained, e.g. "200 warm-up + 500": the budget every table states


def run_method(
    method: str,
    exp: ExperimentData,
    config: JointImageClassifierConfig,
    data_args: DataArguments,
    model_args: ModelArguments,
    jtln_args: JTLNArguments,
    args: JTLNTrainingArguments,
    seed: int,
    fixed_cost: tuple[np.ndarray, str] | None = None,
) -> RunResult:
    """Train one method for one seed and evaluate it on the target test (and validation) set.

    ``fixed_cost`` is a cost resolved before training (``prior`` or a file); ``features-*`` costs
    are computed here, from this seed's model.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose from {METHODS}.")
    args = dataclasses.replace(args, seed=seed)
    model = build_model(config, seed, model_args.image_size if model_args.pretrained else None)
    name = f"{method}-seed{seed}"
    start = time.perf_counter()
    description = ""
    warmup = 0
    if method == "finetune":
        last = train_target_only(model, exp, args, data_args, name)
    elif method == "consecutive":
        train_source_only(model, exp, args, data_args, f"{name}-source", args.max_steps)
        last = train_target_only(model, exp, args, data_args, f"{name}-target")
    elif method == "joint":
        last = train_joint(model, exp, args, data_args, name, ot_loss_weight=0.0)
    elif method == "cotuning":
        warmup = cotuning_warmup_steps(jtln_args)
        if warmup:
            train_source_only(model, exp, args, data_args, f"{name}-warmup", warmup)
        relationship = relationship_of(model, exp, data_args, args)
        last = train_joint(model, exp, args, data_args, name, ot_loss_weight=0.0, trainer_cls=CoTuningTrainer,
                           relationship=relationship, cotuning_weight=jtln_args.cotuning_weight)  # fmt: skip
        description = (f"Co-Tuning: p(y_s | y_t) read after {warmup} source-only warm-up steps, soft source term "
                       f"weight {jtln_args.cotuning_weight:g}.")  # fmt: skip
    else:
        if fixed_cost is not None:
            cost, description = fixed_cost
        else:
            warmup = cost_warmup_steps(model_args, jtln_args, data_args)
            if warmup:
                train_source_only(model, exp, args, data_args, f"{name}-warmup", warmup)
            cost, description = resolve_cost(jtln_args, data_args, exp, model, seed, warmup, args)
        model.set_cost_matrix(cost)
        last = train_joint(model, exp, args, data_args, name, ot_loss_weight=args.ot_loss_weight)
    seconds = time.perf_counter() - start
    steps = _steps_text(method, args, warmup if method in ("jtln", "cotuning") else 0)
    metrics = evaluate_model(model, exp, data_args, args, log_to=last)
    logger.warning(f"{method} seed {seed}: accuracy {metrics['accuracy']:.4f} ({seconds:.0f} s)")
    return RunResult(method, seed, metrics, seconds, model, description, steps)


def _steps_text(method: str, args: JTLNTrainingArguments, warmup: int) -> str:
    """The training budget of one run: consecutive trains twice, warm-ups add source-only steps."""
    length = str(args.max_steps) if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"
    if method == "consecutive":
        return f"{length} source + {length} target"
    return f"{warmup} warm-up + {length}" if warmup else length


def evaluate_model(
    model, exp: ExperimentData, data_args: DataArguments, args: JTLNTrainingArguments,
    log_to: JTLNTrainer | None = None,
) -> dict[str, float]:  # fmt: skip
    """Target test metrics (accuracy, mean per-class accuracy, top-k, loss), keys without ``eval_``.

    ``log_to``, the method's last training stage, evaluates its own model (``Trainer.evaluate``):
    the metrics join that stage's log history and loggers at its last step (with ``--report_to
    tensorboard`` its curves end with the test metrics) and ``eval_results.json`` is written in its
    folder; its ``loss`` is that stage's objective on the test images. Without ``log_to`` a
    trainer without the OT term evaluates. With a validation set (``--target_validation_fraction``)
    its accuracy and mean per-class accuracy are added as ``validation_*``: what settings are
    chosen on.
    """
    trainer = log_to if log_to is not None else JTLNTrainer(
        model=model, args=quiet_args(args, str(Path(args.output_dir) / "runs" / "eval")))  # fmt: skip
    metrics = trainer.evaluate(_eval_dataset(exp.target_test, model.config, data_args))
    if exp.target_validation is not None:
        metrics.update(trainer.evaluate(_eval_dataset(exp.target_validation, model.config, data_args),
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


# --------------------------------------------------------------------------------------- results
def summarize(runs: list[RunResult]) -> dict[str, dict[str, Any]]:
    """Mean and sample standard deviation (ddof=1) of each metric per method."""
    summary: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        entry: dict[str, Any] = {"seeds": [r.seed for r in mine], "train_seconds": sum(r.train_seconds for r in mine),
                                 "steps": mine[0].steps}  # fmt: skip
        keys = ["accuracy", "mean_per_class_accuracy"]
        keys += [k for k in ("validation_accuracy", "validation_mean_per_class_accuracy") if k in mine[0].metrics]
        for key in keys:
            values = np.array([r.metrics[key] for r in mine])
            entry[key] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "per_seed": values.tolist(),
            }
        summary[method] = entry
    return summary


METHOD_TITLES = {
    "finetune": "fine-tuning on target only",
    "consecutive": "consecutive fine-tuning, source then target",
    "joint": "joint fine-tuning, two heads, no OT",
    "jtln": "JTLN (joint + OT)",
    "cotuning": "Co-Tuning (joint + soft source labels)",
}


def results_markdown(summary: dict[str, dict[str, Any]], caption: str = "") -> str:
    """The comparison table: mean ± std (over seeds) of target test accuracy, in percent.

    When joint fine-tuning ran with other methods, a column gives each method's seed-paired
    difference to it in percentage points (:func:`jtln_hf.stats.paired_difference`): mean
    [95 % Student-t interval], seeds won / seeds paired; "—" on joint's own row.
    """
    paired = paired_summary(summary)
    diff_head = f" − {BASELINE} (points, 95% CI, wins) |" if paired else ""
    lines = [
        f"| method | accuracy (%) |{diff_head} mean per-class accuracy (%) | steps per seed | seeds | train time (s) |",
        "|---|---|" + ("---|" if paired else "") + "---|---|---|---|",
    ]
    best = max(summary, key=lambda m: summary[m]["accuracy"]["mean"])
    for method, entry in summary.items():
        acc, mpc = entry["accuracy"], entry["mean_per_class_accuracy"]
        acc_text = f"{100 * acc['mean']:.1f} ± {100 * acc['std']:.1f}"
        if method == best:
            acc_text = f"**{acc_text}**"
        diff_text = f" {paired[method].to_text() if method in paired else '—'} |" if paired else ""
        lines.append(
            f"| {METHOD_TITLES[method]} | {acc_text} |{diff_text} {100 * mpc['mean']:.1f} ± {100 * mpc['std']:.1f} "
            f"| {entry.get('steps', '')} | {len(entry['seeds'])} | {entry['train_seconds']:.0f} |"
        )
    table = "\n".join(lines)
    if paired:
        table += (
            f"\n\n− {BASELINE}: accuracy minus {BASELINE} fine-tuning's on the same seed (same target images and "
            "initial weights), in percentage points: mean [95% Student-t interval, n − 1 degrees of freedom], "
            f"seeds where the method beats {BASELINE} / seeds paired."
        )
    return f"{caption}\n\n{table}\n" if caption else table + "\n"


def write_results(output_dir: str | Path, summary: dict, runs: list[RunResult], meta: dict[str, Any], caption: str) -> str:
    """Write ``results.json`` and ``results.md`` atomically; return the Markdown table.

    ``results.json`` holds ``meta``, the ``summary``, every run's metrics and ``"paired"``:
    ``{"<method>-joint": PairedDifference.to_dict()}`` of the accuracy (fractions), for every
    method but joint; empty when joint did not run.
    """
    output_dir = Path(output_dir)
    table = results_markdown(summary, caption)
    payload = {
        **meta,
        "summary": summary,
        "paired": {f"{m}-{BASELINE}": d.to_dict() for m, d in paired_summary(summary).items()},
        "runs": [
            {"method": r.method, "seed": r.seed, "steps": r.steps, "train_seconds": r.train_seconds, **r.metrics}
            for r in runs
        ],
    }
    atomic_write_text(output_dir / "results.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(output_dir / "results.md", table)
    return table


def save_model(
    run: RunResult, output_dir: str | Path, args: JTLNTrainingArguments, jtln_args: JTLNArguments,
    data_args: DataArguments, results_table: str | None = None, *, exp: ExperimentData | None = None,
    summary: dict[str, dict[str, Any]] | None = None,
) -> Path:  # fmt: skip
    """Write the Hub-ready ``output_dir/model`` folder, atomically.

    It holds the weights (safetensors), ``config.json`` and ``preprocessor_config.json`` with their
    remote code (``configuration_jtln.py``, ``modeling_jtln.py``, ``image_processing_jtln.py``),
    the card ``README.md`` and its figures: the cost matrix, the mean transport plan over
    ``exp.target_test`` (when the model has a cost matrix and ``exp`` is given) and, for a
    comparison (``summary`` of several methods), the bar chart. ``--push_to_hub`` uploads it as is.
    Every process must call it (the plan is a gathered forward pass); the main process writes.
    """
    model = run.model
    hyper: dict[str, Any] = {
        "method": METHOD_TITLES[run.method],
        "seed": run.seed,
        "labelled images per target class": data_args.shots or "all",
        **training_hyperparameters(args, ot_used=run.method == "jtln"),
    }
    if run.method == "consecutive":
        hyper["steps"] = f"{args.max_steps} source-only, then {args.max_steps} target-only"
    plan, plan_images = None, None
    if exp is not None and has_cost(model):
        outputs, _ = predict_outputs(model, exp.target_test, data_args, args, ("source_logits", "logits"))
        plan = mean_transport_plan(
            outputs["source_logits"], outputs["logits"], model.cost_matrix.detach().cpu(),
            epsilon=args.ot_epsilon, iterations=args.ot_iterations, method=args.ot_method, tol=args.ot_tol,
        )  # fmt: skip
        plan_images = len(outputs["logits"])
    specs = [data_args.source_dataset, data_args.target_dataset] if data_args.two_datasets else [
        data_args.dataset or FASHION_MNIST]  # fmt: skip
    dataset_ids = [i for i in dict.fromkeys(hub_dataset_id(spec) for spec in specs) if i]  # local data: no id
    test_split = data_args.target_test_split if data_args.two_datasets else data_args.test_split
    if data_args.target_test_fraction is not None:
        test_split = f"{data_args.target_test_fraction:g} of {data_args.target_train_split}"
    data_name = display_name(specs[-1])
    target_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    card_kwargs = dict(
        repo_id=args.hub_model_id or f"your-name/{Path(output_dir).resolve().name}",
        cost_description=run.cost_description or "No cost matrix was used (no OT term).",
        hyperparameters=hyper,
        results_table=results_table,
        metrics={k: v for k, v in run.metrics.items() if k != "loss"},
        datasets=dataset_ids,
        dataset_name=f"{data_name} {test_split} split, target classes ({', '.join(target_names)})",
        eval_dataset=hub_dataset_id(specs[-1]) or data_name,
    )

    def write(folder: Path) -> None:
        save_model_folder(model, folder)
        write_model_card(folder, model, plan=plan, plan_images=plan_images, summary=summary, **card_kwargs)

    if not args.should_save:  # under `accelerate launch`: the plan above needs every process, the files one
        return Path(output_dir) / "model"
    return atomic_write_dir(Path(output_dir) / "model", write)


# ------------------------------------------------------------------------------------- top level
@dataclass
class ExperimentPlan:
    """Everything a run needs that can be checked before training: data per seed, config, fixed cost."""

    methods: list[str]
    pools: DataPools
    data: dict[int, ExperimentData]
    config: JointImageClassifierConfig
    fixed_cost: tuple[np.ndarray, str] | None = None


def plan_experiment(
    data_args: DataArguments, model_args: ModelArguments, jtln_args: JTLNArguments, args: JTLNTrainingArguments,
    pools: DataPools | None = None,
) -> ExperimentPlan:  # fmt: skip
    """Load and check everything before the first training step of the first method.

    In order: the backbone name and its weights (a local checkpoint is read; pretrained weights
    must be cached or downloadable: no minute of retries offline), the datasets, splits, columns
    and classes, every seed's shots, the config, a first model (the checkpoint must fit the
    architecture), and a ``prior`` or file cost (its shape and class names) with the OT settings.
    Raises a one-line ``ValueError`` naming the problem and the fix. ``pools`` (from
    :func:`load_pools` on the same ``data_args``) skips loading the data again, e.g. in a sweep.
    """
    check_backbone(model_args.backbone, pretrained=model_args.pretrained_backbone,
                   checkpoint=model_args.backbone_checkpoint)  # fmt: skip
    pools = pools if pools is not None else load_pools(data_args)
    data = {seed: prepare_data(data_args, seed, pools) for seed in jtln_args.seeds}
    config = build_config(model_args, data_args, data[jtln_args.seeds[0]])
    model = build_model(config, jtln_args.seeds[0], model_args.image_size if model_args.pretrained else None)
    methods = jtln_args.run_methods
    fixed_cost = None
    if "jtln" in methods and cost_kind(data_args, jtln_args) not in MODEL_COSTS:
        fixed_cost = resolve_cost(jtln_args, data_args, data[jtln_args.seeds[0]])
        check_ot_settings(model, fixed_cost[0], args)
    return ExperimentPlan(methods, pools, data, config, fixed_cost)


def check_ot_settings(model: JointImageClassifier, cost: np.ndarray, args: JTLNTrainingArguments) -> None:
    """What ``JTLNTrainer`` checks at its start (C's shape and values, the solver), before any method trains."""
    model.set_cost_matrix(cost)
    jtln_loss_from_args(args).check(model.cost_matrix, model.config.num_source_labels, model.config.num_labels)


def _length(args: JTLNTrainingArguments) -> str:
    return f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"


def run_experiment(
    data_args: DataArguments, model_args: ModelArguments, jtln_args: JTLNArguments, args: JTLNTrainingArguments,
    plan: ExperimentPlan | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run ``jtln_args.mode`` for every seed; write results and the first seed's model (JTLN's, if it ran).

    ``plan`` (from :func:`plan_experiment`) is made here when not given.
    """
    plan = plan if plan is not None else plan_experiment(data_args, model_args, jtln_args, args)
    methods = plan.methods
    runs: list[RunResult] = []
    keep: RunResult | None = None
    keep_exp: ExperimentData | None = None
    keep_method = "jtln" if "jtln" in methods else methods[-1]  # the model that is saved (first seed)
    start = time.perf_counter()
    for seed in jtln_args.seeds:
        exp = plan.data[seed]
        for method in methods:
            run = run_method(method, exp, plan.config, data_args, model_args, jtln_args, args, seed, plan.fixed_cost)
            if keep is None and method == keep_method:
                keep, keep_exp = run, exp
            else:
                run.model = None  # free memory: only the first seed's JTLN (or last method) is saved
            runs.append(run)
    wall = time.perf_counter() - start
    summary = summarize(runs)
    shots = data_args.shots or "all"
    caption = (
        f"Target test accuracy on {plan.pools.description} ({len(exp.target_names)} target classes, "
        f"{shots} labelled images each, {len(exp.target_test)} test images); "
        f"{_length(args)} per stage, batch {args.per_device_train_batch_size} "
        f"(source fraction {args.source_fraction}), backbone {model_args.backbone}"
        f"{' (pretrained)' if model_args.pretrained else ''}, "
        f"seeds {list(jtln_args.seeds)}, mean ± sample std over seeds; wall time {wall:.0f} s."
    )
    meta = {
        "dataset": data_args.dataset or (None if data_args.two_datasets else FASHION_MNIST),
        "source_dataset": data_args.source_dataset,
        "target_dataset": data_args.target_dataset,
        "source_classes": exp.source_names,
        "target_classes": exp.target_names,
        "shots": data_args.shots,
        "test_images": len(exp.target_test),
        "validation_images": len(exp.target_validation) if exp.target_validation is not None else 0,
        "max_steps": args.max_steps,
        "num_train_epochs": args.num_train_epochs if args.max_steps <= 0 else None,
        "batch_size": args.per_device_train_batch_size,
        "source_fraction": args.source_fraction,
        "backbone": model_args.backbone,
        "pretrained_backbone": model_args.pretrained,
        "input_size": list(keep.model.config.data_config["input_size"]),
        "cost": cost_kind(data_args, jtln_args) if "jtln" in methods else None,
        "cost_normalization": jtln_args.cost_normalization,
        "cost_warmup_steps": cost_warmup_steps(model_args, jtln_args, data_args) if "jtln" in methods else 0,
        "ot_loss_weight": args.ot_loss_weight,
        "ot_epsilon": args.ot_epsilon,
        "ot_iterations": args.ot_iterations,
        "ot_tol": args.ot_tol,
        "ot_objective": args.ot_objective,
        "cotuning_weight": jtln_args.cotuning_weight if "cotuning" in methods else None,
        "seeds": list(jtln_args.seeds),
        "wall_seconds": wall,
    }
    table = results_markdown(summary, caption)
    if args.should_save:
        write_results(args.output_dir, summary, runs, meta, caption)
    save_model(
        keep, args.output_dir, args, jtln_args, data_args, table if len(methods) > 1 else None,
        exp=keep_exp, summary=summary if len(methods) > 1 else None,
    )  # fmt: skip
    return {"summary": summary, "table": table, "wall_seconds": wall, "runs": runs}


__all__ = [
    "METHODS",
    "MODES",
    "DataArguments",
    "ModelArguments",
    "JTLNArguments",
    "ExperimentData",
    "DataPools",
    "ExperimentPlan",
    "load_pools",
    "plan_experiment",
    "prepare_data",
    "build_config",
    "build_model",
    "resolve_cost",
    "run_method",
    "run_experiment",
    "summarize",
    "results_markdown",
]
