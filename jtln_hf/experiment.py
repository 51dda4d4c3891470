"""Experiments: every method of a comparison on the same data and seeds, checked before the first step.

``recipes/train_jtln.py`` is the command line; this module holds what it runs, so tests and
notebooks can call it too. The data come in one of two shapes: one dataset split by class (the
paper's benchmark), or a source dataset and a separate target dataset (:mod:`jtln_hf.sources`
opens either). :func:`load_pools` selects the classes and carves the fixed test and validation
sets, :func:`prepare_data` draws each seed's shots, :func:`build_config` reads the input from
the data or the pretrained weights, and :func:`plan_experiment` checks all of it, the backbone
weights and the cost *before* the first method trains: a bad setting fails in seconds.
:func:`run_experiment` then runs every method (:mod:`jtln_hf.methods`) for every seed and writes
the results (:mod:`jtln_hf.results`).

Every method sees the same target images per step, the same k-shot target images and the same
initial weights for a seed. The step budgets differ and every table says so: ``consecutive``
trains two stages, and ``jtln`` with a model cost and ``cotuning`` add source-only warm-up steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformers.utils import logging

from . import data as jdata
from .data.pools import DataPools, ExperimentData
from .arguments import DataArguments, JTLNArguments, ModelArguments, cost_settings, method_settings
from .backbones import check_backbone
from .configuration_jtln import JointImageClassifierConfig
from .cost_builders import cost_kind, cost_warmup_steps, is_model_cost
from .methods import METHOD_REGISTRY, RunResult, build_model, resolve_cost, run_method, stage_length
from .modeling_jtln import JointImageClassifier, TimmExportError
from .results import results_markdown, save_model, summarize, write_results
from .sources import FASHION_MNIST, data_config_from_stats, display_name, image_stats, known_dataset, open_dataset, pick_split
from .training_args import JTLNTrainingArguments, loss_settings

logger = logging.get_logger(__name__)


# ------------------------------------------------------------------------------------------ data
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
            known = known_dataset(spec)
            if known is None or known.target_classes is None:
                raise ValueError(f"--dataset {spec}: name the target classes with --target_classes (the source "
                                 "classes are every other class unless --source_classes names them).")  # fmt: skip
            target_classes = list(known.target_classes)
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
def _own_data_config(data_args: DataArguments) -> dict[str, Any] | None:
    """The data config of one known dataset split by class (Fashion-MNIST's), else None."""
    known = None if data_args.two_datasets else known_dataset(data_args.dataset or FASHION_MNIST)
    return dict(known.data_config) if known is not None and known.data_config is not None else None


def build_config(model_args: ModelArguments, data_args: DataArguments, exp: ExperimentData) -> JointImageClassifierConfig:
    """The model config: label sets, backbone, and the input the data or the pretrained weights want.

    * Pretrained (``--pretrained_backbone`` or ``--backbone_checkpoint``): timm's pretrained data
      config (size, mean, std, channels) is kept (``--in_chans`` / ``--image_size`` override it);
      images of any mode and size are converted to it.
    * From scratch: channels, size, mean and std are read from the images
      (:func:`jtln_hf.sources.image_stats`: 1 channel when every image is grayscale, the target
      images' median side), not timm's 3 x 160 default; a known dataset split by class keeps its own
      (:class:`jtln_hf.sources.KnownDataset`, e.g. Fashion-MNIST's).
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
        data_config = _own_data_config(data_args)
        if data_config is None or model_args.in_chans not in (None, data_config["input_size"][0]):
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
    if args.save_timm:  # before training, not after: a backbone whose classifier the timm export cannot map
        try:
            model.to_timm()
        except TimmExportError as err:
            raise TimmExportError(f"{err} Pass --save_timm false to train without the timm export.") from None
    methods = jtln_args.run_methods
    fixed_cost = None
    cost = cost_settings(model_args, jtln_args)
    if _uses_ot(methods) and not is_model_cost(cost_kind(data_args.spec(), cost)):
        fixed_cost = resolve_cost(cost, data_args.spec(), data[jtln_args.seeds[0]])
        check_ot_settings(model, fixed_cost[0], args)
    return ExperimentPlan(methods, pools, data, config, fixed_cost)


def _uses_ot(methods: list[str]) -> bool:
    return any(METHOD_REGISTRY[m].uses_ot for m in methods)


def check_ot_settings(model: JointImageClassifier, cost: np.ndarray, args: JTLNTrainingArguments) -> None:
    """What ``JTLNTrainer`` checks at its start (C's shape and values, the solver), before any method trains."""
    model.set_cost_matrix(cost)
    loss_settings(args).check_cost(model.cost_matrix, model.config.num_source_labels, model.config.num_labels)


def run_experiment(
    data_args: DataArguments, model_args: ModelArguments, jtln_args: JTLNArguments, args: JTLNTrainingArguments,
    plan: ExperimentPlan | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run ``jtln_args.mode`` for every seed; write results and the first seed's model (JTLN's, if it ran).

    ``plan`` (from :func:`plan_experiment`) is made here when not given.
    """
    plan = plan if plan is not None else plan_experiment(data_args, model_args, jtln_args, args)
    settings = method_settings(data_args, model_args, jtln_args)  # the flags the methods read, frozen once
    methods = plan.methods
    runs: list[RunResult] = []
    keep: RunResult | None = None
    keep_exp: ExperimentData | None = None
    ot_methods = [m for m in methods if METHOD_REGISTRY[m].uses_ot]
    keep_method = ot_methods[0] if ot_methods else methods[-1]  # the model that is saved (first seed): JTLN's
    start = time.perf_counter()
    for seed in jtln_args.seeds:
        exp = plan.data[seed]
        for method in methods:
            run = run_method(method, exp, plan.config, settings, args, seed, plan.fixed_cost)
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
        f"{stage_length(args)} per stage, batch {args.per_device_train_batch_size} "
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
        "cost": cost_kind(settings.data, settings.cost) if ot_methods else None,
        "cost_normalization": jtln_args.cost_normalization,
        "cost_warmup_steps": cost_warmup_steps(settings.cost, settings.data) if ot_methods else 0,
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
        keep, args.output_dir, args, settings, table if len(methods) > 1 else None,
        exp=keep_exp, summary=summary if len(methods) > 1 else None,
    )  # fmt: skip
    return {"summary": summary, "table": table, "wall_seconds": wall, "runs": runs}


__all__ = [
    "DataPools",
    "ExperimentData",
    "ExperimentPlan",
    "build_config",
    "load_pools",
    "plan_experiment",
    "prepare_data",
    "run_experiment",
]
