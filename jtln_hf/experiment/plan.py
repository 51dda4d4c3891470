"""Experiments: every method of a comparison on the same data and seeds, checked before the first step.

``recipes/train_jtln.py`` is the command line; this module holds what it runs, so tests and
notebooks can call it too. :func:`plan_experiment` resolves the command line's arguments once into
a frozen :class:`RunPlan` and checks everything *before* the first method trains (a bad setting
fails in seconds): the backbone weights, the data (:func:`jtln_hf.data.load_pools` selects the
classes and carves the fixed test and validation sets, :func:`jtln_hf.data.prepare_data` draws each
seed's shots), the config (:func:`build_config` reads the input from the data or the pretrained
weights), the cost and each method's settings. :func:`run_experiment` then runs every method
(:mod:`jtln_hf.methods`) for every seed from the plan alone and writes the results
(:mod:`jtln_hf.experiment.results`); the argument dataclasses stop here.

Every method sees the same target images per step, the same k-shot target images and the same
initial weights for a seed. The step budgets differ and every table says so: ``consecutive``
trains two stages, and ``jtln`` with a model cost and ``cotuning`` add source-only warm-up steps.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import datasets
import numpy as np
import timm
import torch
from transformers.utils import logging

from ..backbones import check_backbone, check_patch_size, patch_size
from ..configuration_jtln import JointImageClassifierConfig
from ..cost import SHUFFLE_CONTROL
from ..cost.builders import Cost
from ..cost.resolve import resolve_cost
from ..data.known import known_dataset
from ..data.pools import DataPools, DataSpec, ExperimentData, load_pools, prepare_data
from ..data.sources import data_config_from_stats, image_stats
from ..data.stream_source import take_rows
from ..methods import METHOD_REGISTRY, MethodSettings, RunResult, build_model, run_method, stage_length
from ..modeling_jtln import JointImageClassifier, TimmExportError, default_data_config
from ..sharing.folder import save_model
from ..training.arguments import JTLNTrainingArguments, loss_settings
from ..training.lora import add_lora, lora_settings, trainable_share
from .arguments import DataArguments, JTLNArguments, ModelArguments, method_settings
from .results import results_markdown, summarize, write_results

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------- model
def _own_data_config(data: DataSpec) -> dict[str, Any] | None:
    """The data config of one known dataset split by class (Fashion-MNIST's), else None."""
    known = None if data.two_datasets else known_dataset(data.specs[0])
    return dict(known.data_config) if known is not None and known.data_config is not None else None


def pretrained_data_config(backbone: str, backbone_kwargs: dict[str, Any], image_size: int) -> dict[str, Any]:
    """timm's pretrained data config of ``backbone`` (size, mean, std, channels), as the model resolves it when
    built without one, with ``input_size`` made ``image_size`` square. Read from the architecture on the meta
    device: no weights are loaded or allocated."""
    kwargs = {k: v for k, v in backbone_kwargs.items() if k != "pretrained_cfg_overlay"}
    with torch.device("meta"):
        net = timm.create_model(backbone, pretrained=False, num_classes=0, **kwargs)
    data_config = default_data_config(net)
    data_config["input_size"] = [data_config["input_size"][0], image_size, image_size]
    return data_config


def build_config(model_args: ModelArguments, data: DataSpec, exp: ExperimentData) -> JointImageClassifierConfig:
    """The model config: label sets, backbone, and the input the data or the pretrained weights want.

    * Pretrained (``--pretrained_backbone`` or ``--backbone_checkpoint``): timm's pretrained data
      config (size, mean, std, channels) is kept (``--in_chans`` / ``--image_size`` override it: with
      ``--image_size``, :func:`pretrained_data_config` puts it in the config here, the one place the size is set);
      images of any mode and size are converted to it.
    * From scratch: channels, size, mean and std are read from the images
      (:func:`jtln_hf.data.sources.image_stats`: 1 channel when every image is grayscale, the target
      images' median side; a streamed source's first 256 rows), not timm's 3 x 160 default; a known dataset split by class keeps its own
      (:class:`jtln_hf.data.known.KnownDataset`, e.g. Fashion-MNIST's).
    * ``--image_size`` is honoured on every data source; a backbone that cuts images into patches (a ViT) is
      built for the input size (timm's ``img_size``), which must be a multiple of its patch size.
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
        if model_args.image_size is not None:  # timm's pretrained config at another size: the one place it is set
            data_config = pretrained_data_config(model_args.backbone, backbone_kwargs, model_args.image_size)
    else:
        data_config = _own_data_config(data)
        if data_config is None or model_args.in_chans not in (None, data_config["input_size"][0]):
            source = take_rows(exp.source, 256) if isinstance(exp.source, datasets.IterableDataset) else exp.source
            stats = image_stats([source, exp.target], in_chans=model_args.in_chans,
                                image_size=model_args.image_size)  # fmt: skip
            data_config = data_config_from_stats(stats)
        elif model_args.image_size is not None:  # the dataset's own mean and std, at the size asked for
            data_config["input_size"] = [data_config["input_size"][0], model_args.image_size, model_args.image_size]
        backbone_kwargs["in_chans"] = data_config["input_size"][0]
    if data_config is not None:  # a ViT is built for its input size (timm checks it at every forward)
        patch = patch_size(model_args.backbone, backbone_kwargs)
        if patch is not None:
            size = int(data_config["input_size"][1])
            where = ("--image_size" if model_args.image_size is not None
                     else "read from the data" if not model_args.pretrained else "the pretrained config")  # fmt: skip
            check_patch_size(model_args.backbone, patch, size, where)
            backbone_kwargs["img_size"] = size
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
@dataclass(frozen=True)
class RunPlan:
    """A run resolved once from the command line, checked before training; all that runs below reads.

    ``methods`` and ``seeds`` in order; ``pools`` (fixed across seeds) and ``data`` (each seed's
    shots); ``config``; ``settings``: the data spec, the cost (its kind, normalisation, warm-up and,
    when fixed before training, its matrix) and each method's own settings (the input size is in ``config``);
    ``backbone`` and ``pretrained``: what the results and the card state.
    """

    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    pools: DataPools
    data: Mapping[int, ExperimentData]
    config: JointImageClassifierConfig
    settings: MethodSettings
    backbone: str
    pretrained: bool

    @property
    def spec(self) -> DataSpec:
        """The data flags, resolved."""
        return self.settings.data

    @property
    def cost(self) -> Cost:
        """The cost, resolved (``cost.fixed``: its matrix when fixed before training)."""
        return self.settings.cost


def plan_experiment(
    data_args: DataArguments, model_args: ModelArguments, jtln_args: JTLNArguments, args: JTLNTrainingArguments,
    pools: DataPools | None = None,
) -> RunPlan:  # fmt: skip
    """Resolve the arguments once into a :class:`RunPlan`, checking everything before the first training step.

    In order: the backbone name and its weights (a local checkpoint is read; pretrained weights
    must be cached or downloadable: no minute of retries offline), the datasets, splits, columns
    and classes, every seed's shots, the config, a first model (the checkpoint must fit the
    architecture), and a ``prior`` or file cost (its shape and class names, shuffled with ``--cost_shuffle_seed``)
    with the OT settings (a model cost shuffled needs two target classes; its permutation is drawn per seed).
    Raises a one-line ``ValueError`` naming the problem and the fix. ``pools`` (from
    :func:`jtln_hf.data.load_pools` on the same data spec) skips loading the data again, e.g. in a sweep.
    """
    check_backbone(model_args.backbone, pretrained=model_args.pretrained_backbone,
                   checkpoint=model_args.backbone_checkpoint)  # fmt: skip
    settings = method_settings(data_args, model_args, jtln_args)  # the flags the methods read, frozen once
    spec, seeds = settings.data, tuple(jtln_args.seeds)
    pools = pools if pools is not None else load_pools(spec)
    data = {seed: prepare_data(spec, seed, pools) for seed in seeds}
    config = build_config(model_args, spec, data[seeds[0]])
    model = build_model(config, seeds[0])
    lora = lora_settings(model_args.lora_rank, model_args.lora_alpha, model_args.lora_dropout,
                         model_args.lora_target_modules, model.backbone, model_args.backbone)  # fmt: skip
    if args.save_timm:  # before training, not after: a backbone whose classifier the timm export cannot map
        try:
            model.to_timm()
        except TimmExportError as err:
            raise TimmExportError(f"{err} Pass --save_timm false to train without the timm export.") from None
    if lora is not None:  # the first seed's model as every method builds it: what trains, counted
        settings = dataclasses.replace(settings, lora=lora)
        add_lora(model, lora)
        trained, total = trainable_share(model)
        logger.warning(f"LoRA {lora.describe()}: {trained:,} of {total:,} parameters train ({trained / total:.2%}; "
                       "the two heads included).")  # fmt: skip
    methods = tuple(jtln_args.run_methods)
    if _uses_ot(methods) and settings.cost.shuffle_seed is not None and config.num_labels < 2:
        raise ValueError("--cost_shuffle_seed permutes C's target columns, and this run has one target class: drop "
                         "--cost_shuffle_seed, or add target classes.")  # fmt: skip
    if _uses_ot(methods) and not settings.cost.per_seed:  # one matrix for every seed
        fixed = resolve_cost(settings.cost, data[seeds[0]])
        check_ot_settings(model, fixed.matrix, args)
        settings = dataclasses.replace(settings, cost=dataclasses.replace(settings.cost, fixed=fixed))
    return RunPlan(methods, seeds, pools, MappingProxyType(data), config, settings, model_args.backbone,
                   model_args.pretrained)  # fmt: skip


def _uses_ot(methods: tuple[str, ...]) -> bool:
    return any(METHOD_REGISTRY[m].uses_ot for m in methods)


def check_ot_settings(model: JointImageClassifier, cost: np.ndarray, args: JTLNTrainingArguments) -> None:
    """What ``JTLNTrainer`` checks at its start (C's shape and values, the solver), before any method trains."""
    model.set_cost_matrix(cost)
    loss_settings(args).check_cost(model.cost_matrix, model.config.num_source_labels, model.config.num_labels)


def _method_meta(plan: RunPlan) -> dict[str, Any]:
    """Each method's own resolved settings by field name (e.g. ``cotuning_weight``); None where it did not run."""
    meta: dict[str, Any] = {}
    for name, options in plan.settings.methods.items():
        for key, value in dataclasses.asdict(options).items():
            meta.setdefault(key, value if name in plan.methods else None)
    return meta


def run_experiment(plan: RunPlan, args: JTLNTrainingArguments) -> dict[str, Any]:
    """Run every method of ``plan`` for every seed; write results and the first seed's model (JTLN's, if it ran).

    ``plan`` comes from :func:`plan_experiment`: nothing here reads the command line's arguments.
    """
    settings, methods, spec = plan.settings, list(plan.methods), plan.spec
    runs: list[RunResult] = []
    keep: RunResult | None = None
    keep_exp: ExperimentData | None = None
    ot_methods = [m for m in methods if METHOD_REGISTRY[m].uses_ot]
    keep_method = ot_methods[0] if ot_methods else methods[-1]  # the model that is saved (first seed): JTLN's
    start = time.perf_counter()
    for seed in plan.seeds:
        exp = plan.data[seed]
        for method in methods:
            run = run_method(method, exp, plan.config, settings, args, seed)
            if keep is None and method == keep_method:
                keep, keep_exp = run, exp
            else:
                run.model = None  # free memory: only the first seed's JTLN (or last method) is saved
            runs.append(run)
    wall = time.perf_counter() - start
    summary = summarize(runs)
    shots = spec.shots or "all"
    shuffle = plan.cost.shuffle_seed if ot_methods else None
    caption = (
        f"Target test accuracy on {plan.pools.description} ({len(exp.target_names)} target classes, "
        f"{shots} labelled images each, {len(exp.target_test)} test images); "
        f"{stage_length(args)} per stage, batch {args.per_device_train_batch_size} "
        f"(source fraction {args.source_fraction}), backbone {plan.backbone}"
        f"{' (pretrained)' if plan.pretrained else ''}, "
        f"seeds {list(plan.seeds)}, mean ± sample std over seeds; wall time {wall:.0f} s."
        + (f" C's target columns shuffled by seed {shuffle} ({SHUFFLE_CONTROL})." if shuffle is not None else "")
    )
    meta = {
        "dataset": None if spec.two_datasets else spec.specs[0],
        "source_dataset": spec.source_dataset,
        "target_dataset": spec.target_dataset,
        "source_classes": exp.source_names,
        "target_classes": exp.target_names,
        "shots": spec.shots,
        "test_images": len(exp.target_test),
        "validation_images": len(exp.target_validation) if exp.target_validation is not None else 0,
        "max_steps": args.max_steps,
        "num_train_epochs": args.num_train_epochs if args.max_steps <= 0 else None,
        "batch_size": args.per_device_train_batch_size,
        "source_fraction": args.source_fraction,
        "backbone": plan.backbone,
        "pretrained_backbone": plan.pretrained,
        "lora": dataclasses.asdict(settings.lora) if settings.lora is not None else None,
        "input_size": list(keep.model.config.data_config["input_size"]),
        "cost": plan.cost.kind if ot_methods else None,
        "cost_normalization": plan.cost.normalization,
        "cost_warmup_steps": plan.cost.warmup_steps if ot_methods else 0,
        "cost_refresh_steps": plan.cost.refresh_steps if ot_methods else 0,
        "cost_shuffle_seed": shuffle,
        "ot_loss_weight": args.ot_loss_weight,
        "ot_epsilon": args.ot_epsilon,
        "ot_iterations": args.ot_iterations,
        "ot_tol": args.ot_tol,
        "ot_objective": args.ot_objective,
    }
    for key, value in _method_meta(plan).items():  # e.g. cotuning_weight
        meta.setdefault(key, value)
    meta.update(seeds=list(plan.seeds), wall_seconds=wall)
    table = results_markdown(summary, caption)
    if args.should_save:
        write_results(args.output_dir, summary, runs, meta, caption)
    save_model(
        keep, args.output_dir, args, settings, table if len(methods) > 1 else None,
        exp=keep_exp, summary=summary if len(methods) > 1 else None,
    )  # fmt: skip
    return {"summary": summary, "table": table, "wall_seconds": wall, "runs": runs}


__all__ = ["RunPlan", "build_config", "plan_experiment", "run_experiment"]
