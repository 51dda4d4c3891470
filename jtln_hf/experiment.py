"""Experiments: the four training methods of the paper's table, run on the same data and seeds.

``recipes/train_jtln.py`` is the command line; this module holds what it runs, so tests and
notebooks can call it too. Methods (Lu, Chen & Saidi 2017, Table 1):

* ``finetune``    -- target only (the target head alone learns; source data unused);
* ``consecutive`` -- source only for ``max_steps``, then target only for ``max_steps``;
* ``joint``       -- both heads on mixed batches, no OT (``ot_loss_weight = 0``);
* ``jtln``        -- joint + the OT term under the cost matrix C.

Every method sees the same target images per step (``per_device_train_batch_size x
(1 - source_fraction)``), the same k-shot target images and the same initial weights for a seed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import set_seed
from transformers.integrations import TensorBoardCallback
from transformers.utils import logging

from . import data as jdata
from .configuration_jtln import JointImageClassifierConfig
from .cost import (
    COST_NORMALIZATIONS,
    FASHION_MNIST_PRIOR_PATH,
    cost_from_features,
    load_cost,
    normalize_cost,
)
from .hub import save_model_folder
from .io import atomic_write_dir, atomic_write_text, latest_complete_checkpoint
from .modelcard import has_cost, mean_transport_plan, training_hyperparameters, write_model_card
from .modeling_jtln import JointImageClassifier
from .trainer import JTLNTrainer, JTLNTrainingArguments

logger = logging.get_logger(__name__)

METHODS = ("finetune", "consecutive", "joint", "jtln")
MODES = (*METHODS, "compare")
FEATURE_COSTS = {"features-ot": "ot", "features-mmd": "mmd", "features-centroid": "centroid"}
FASHION_MNIST = "fashion-mnist"


# ------------------------------------------------------------------------------------ arguments
@dataclass
class DataArguments:
    """What to train on: the dataset, the class split and the number of labelled target images."""

    dataset: str = field(
        default=FASHION_MNIST,
        metadata={"help": "'fashion-mnist' (Debian package, offline) or a datasets.load_dataset name/path."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name for load_dataset."})
    train_split: str = field(default="train", metadata={"help": "Split to draw source and k-shot target images from."})
    test_split: str = field(default="test", metadata={"help": "Split the target test set comes from."})
    image_column: str = field(default="image", metadata={"help": "Image column of the dataset."})
    label_column: str = field(default="label", metadata={"help": "Label column of the dataset."})
    source_classes: list[str] = field(
        default_factory=lambda: list(jdata.DEFAULT_SOURCE_CLASSES),
        metadata={"help": "Source classes (names or indices); empty: every class not in --target_classes."},
    )
    target_classes: list[str] = field(
        default_factory=lambda: list(jdata.DEFAULT_TARGET_CLASSES),
        metadata={"help": "Target classes (names or indices), disjoint from the source classes."},
    )
    shots: int = field(
        default=5, metadata={"help": "Labelled training images per target class; 0: all of them."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap the target test set (for quick runs)."})
    train_scale: list[float] = field(
        default_factory=lambda: [0.7, 1.0], metadata={"help": "RandomResizedCrop scale range (timm)."}
    )
    hflip: float = field(default=0.5, metadata={"help": "Horizontal flip probability (timm)."})


@dataclass
class ModelArguments:
    """The network: a timm backbone and two heads."""

    backbone: str = field(default="test_resnet", metadata={"help": "timm architecture."})
    in_chans: int | None = field(default=None, metadata={"help": "Input channels (default: 1 for Fashion-MNIST, else 3)."})
    image_size: int | None = field(default=None, metadata={"help": "Input size (default: 28 for Fashion-MNIST, else timm's)."})
    pretrained_backbone: bool = field(default=False, metadata={"help": "Start from timm's pretrained weights (network)."})
    head_dropout: float = field(default=0.0, metadata={"help": "Dropout before the heads."})


@dataclass
class JTLNArguments:
    """What to run and with which cost matrix."""

    mode: str = field(default="compare", metadata={"help": f"One of {MODES}."})
    cost: str = field(
        default="prior",
        metadata={"help": "prior | features-ot | features-mmd | features-centroid | path to a .npy/.csv cost."},
    )
    cost_normalization: str = field(
        default="column",
        metadata={"help": f"One of {COST_NORMALIZATIONS}; 'column' gives every target class a free source class."},
    )
    cost_warmup_steps: int = field(
        default=200, metadata={"help": "Source-only steps before a features-* cost is computed."}
    )
    cost_samples_per_class: int = field(default=200, metadata={"help": "Source images per class for a features-* cost."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds (k-shot draw, init, data order)."})
    methods: list[str] = field(
        default_factory=lambda: list(METHODS), metadata={"help": "Methods run by --mode compare."}
    )

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {self.mode!r}.")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}: choose from {METHODS}.")
        if self.cost_normalization not in COST_NORMALIZATIONS:
            raise ValueError(f"--cost_normalization must be one of {COST_NORMALIZATIONS}.")
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed.")


# ------------------------------------------------------------------------------------------ data
@dataclass
class ExperimentData:
    """The source set, the k-shot target set and the target test set (labels in own spaces)."""

    source: datasets.Dataset
    target: datasets.Dataset
    target_test: datasets.Dataset
    source_names: list[str]
    target_names: list[str]


def load_splits(data_args: DataArguments) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The labelled train and test splits, standardised to ``image``/``label`` columns."""
    if data_args.dataset == FASHION_MNIST:
        return jdata.load_fashion_mnist("train"), jdata.load_fashion_mnist("test")
    kwargs = {"name": data_args.dataset_config} if data_args.dataset_config else {}
    columns = {"image_column": data_args.image_column, "label_column": data_args.label_column}
    return (
        jdata.load_hub_dataset(data_args.dataset, data_args.train_split, **columns, **kwargs),
        jdata.load_hub_dataset(data_args.dataset, data_args.test_split, **columns, **kwargs),
    )


def prepare_data(
    data_args: DataArguments, seed: int, splits: tuple[datasets.Dataset, datasets.Dataset] | None = None
) -> ExperimentData:
    """Split by classes and draw the k-shot target set for ``seed`` (same for every method)."""
    train, test = splits if splits is not None else load_splits(data_args)
    source_classes = list(data_args.source_classes)
    if not source_classes:
        names = train.features["label"].names
        target_ids = set(jdata.resolve_classes(data_args.target_classes, names))
        source_classes = [name for i, name in enumerate(names) if i not in target_ids]
    source, target_pool = jdata.split_by_classes(train, source_classes, data_args.target_classes)
    _, target_test = jdata.split_by_classes(test, source_classes, data_args.target_classes)
    if data_args.shots < 0:
        raise ValueError(f"--shots must be >= 1 (or 0 for every target image), got {data_args.shots}.")
    target = jdata.sample_shots(target_pool, data_args.shots, seed=seed) if data_args.shots else target_pool
    if data_args.max_eval_samples is not None and len(target_test) > data_args.max_eval_samples:
        target_test = target_test.shuffle(seed=0).select(range(data_args.max_eval_samples))
    return ExperimentData(
        source=source,
        target=target,
        target_test=target_test,
        source_names=source.features["label"].names,
        target_names=target.features["label"].names,
    )


# ----------------------------------------------------------------------------------------- model
def build_config(model_args: ModelArguments, data_args: DataArguments, exp: ExperimentData) -> JointImageClassifierConfig:
    """Config for the split; Fashion-MNIST gets its 28x28 one-channel data config."""
    is_fmnist = data_args.dataset == FASHION_MNIST
    in_chans = model_args.in_chans or (1 if is_fmnist else 3)
    data_config = None
    if is_fmnist:
        data_config = dict(jdata.FASHION_MNIST_DATA_CONFIG)
    config = JointImageClassifierConfig(
        backbone=model_args.backbone,
        backbone_kwargs={"in_chans": in_chans},
        source_id2label=dict(enumerate(exp.source_names)),
        id2label=dict(enumerate(exp.target_names)),
        head_dropout=model_args.head_dropout,
        pretrained_backbone=model_args.pretrained_backbone,
        data_config=data_config,
    )
    return config


def build_model(config: JointImageClassifierConfig, seed: int, image_size: int | None = None) -> JointImageClassifier:
    """A fresh model with seeded initial weights (identical across methods for one seed)."""
    set_seed(seed)
    model = JointImageClassifier(config)
    if image_size is not None:
        chans = model.config.data_config["input_size"][0]
        model.config.data_config["input_size"] = [chans, image_size, image_size]
    return model


# ------------------------------------------------------------------------------------- training
def _with_transform(ds: datasets.Dataset, config: JointImageClassifierConfig, training: bool, data_args: DataArguments):
    kwargs = {"scale": tuple(data_args.train_scale), "hflip": data_args.hflip} if training else {}
    transform = jdata.build_transform(config.data_config, training, **kwargs)
    return ds.with_transform(jdata.make_batch_transform(transform, config.data_config["input_size"][0]))


def _stage_args(args: JTLNTrainingArguments, name: str, **overrides: Any) -> JTLNTrainingArguments:
    """Arguments of one training stage: its own ``output_dir/runs/<name>`` and never a push.

    Only the final ``model/`` folder is pushed, once, by the recipe; a stage trainer with
    ``push_to_hub=True`` would create the repository at init and push every checkpoint.
    """
    overrides.setdefault("push_to_hub", False)
    return dataclasses.replace(args, output_dir=str(Path(args.output_dir) / "runs" / name), **overrides)


def _train(model, args, train_ds, eval_ds=None) -> JTLNTrainer:
    trainer = JTLNTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds)
    trainer.train(resume_from_checkpoint=_resume_value(args.resume_from_checkpoint, args.output_dir))
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
    return max(1, args.per_device_train_batch_size - round(args.per_device_train_batch_size * args.source_fraction))


def source_batch_size(args: JTLNTrainingArguments) -> int:
    return max(1, round(args.per_device_train_batch_size * args.source_fraction))


def _eval_dataset(exp: ExperimentData, config: JointImageClassifierConfig, data_args: DataArguments):
    """The target test set with the evaluation transform (domain 1 = target rows)."""
    return _with_transform(jdata.build_joint_dataset(None, exp.target_test), config, False, data_args)


def _stage_eval_dataset(stage: JTLNTrainingArguments, exp, config, data_args) -> datasets.Dataset | None:
    """The target test set for evaluation during a stage (``--eval_strategy steps|epoch``), else None."""
    return None if stage.eval_strategy == "no" else _eval_dataset(exp, config, data_args)


def train_source_only(model, exp, args, data_args, name: str, steps: int) -> JTLNTrainer:
    """Source head only (λ_ot = 0, batches of source rows)."""
    train_ds = _with_transform(jdata.build_joint_dataset(exp.source, None), model.config, True, data_args)
    stage = _stage_args(
        args, name, max_steps=steps, per_device_train_batch_size=source_batch_size(args),
        source_fraction=1.0, ot_loss_weight=0.0,
    )  # fmt: skip
    return _train(model, stage, train_ds)


def train_target_only(model, exp, args, data_args, name: str) -> JTLNTrainer:
    """Target head only (batches of target rows); evaluated on the target test set if ``eval_strategy`` asks."""
    train_ds = _with_transform(jdata.build_joint_dataset(None, exp.target), model.config, True, data_args)
    stage = _stage_args(
        args, name, per_device_train_batch_size=target_batch_size(args), source_fraction=0.0, ot_loss_weight=0.0
    )
    return _train(model, stage, train_ds, _stage_eval_dataset(stage, exp, model.config, data_args))


def train_joint(model, exp, args, data_args, name: str, ot_loss_weight: float) -> JTLNTrainer:
    """Both heads on mixed batches, with the OT term when ``ot_loss_weight > 0``."""
    train_ds = _with_transform(jdata.build_joint_dataset(exp.source, exp.target), model.config, True, data_args)
    stage = _stage_args(args, name, ot_loss_weight=ot_loss_weight)
    return _train(model, stage, train_ds, _stage_eval_dataset(stage, exp, model.config, data_args))


def predict_outputs(
    model, ds: datasets.Dataset, data_args: DataArguments, fields: tuple[str, ...], batch_size: int = 256
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Model outputs ``fields`` (e.g. ``pooled``, ``logits``, ``source_logits``) and labels of ``ds``.

    Runs under the eval transform, in eval mode and without gradients; returns
    ``({field: (N, ...)}, labels (N,))``.
    """
    loader = torch.utils.data.DataLoader(
        _with_transform(ds, model.config, False, data_args), batch_size=batch_size, collate_fn=jdata.collate
    )
    device = next(model.parameters()).device
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in fields}
    labels = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in loader:
            out = model(pixel_values=batch["pixel_values"].to(device))
            for name in fields:
                outputs[name].append(getattr(out, name).float().cpu())
            labels.append(batch["labels"])
    model.train(was_training)
    return {name: torch.cat(parts).numpy() for name, parts in outputs.items()}, torch.cat(labels).numpy()


def extract_features(model, ds: datasets.Dataset, data_args: DataArguments, batch_size: int = 256):
    """Pooled backbone features (N, D) and labels (N,) of ``ds`` under the eval transform."""
    outputs, labels = predict_outputs(model, ds, data_args, ("pooled",), batch_size)
    return outputs["pooled"], labels


def resolve_cost(
    jtln_args: JTLNArguments,
    data_args: DataArguments,
    exp: ExperimentData,
    model: JointImageClassifier | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, str]:
    """The cost matrix C for ``--cost`` and a sentence saying how it was built.

    ``prior`` is the shipped Fashion-MNIST prior (FINDINGS.md) for the default split; feature
    costs use ``model``'s pooled features (call after a source warm-up).
    """
    kind = jtln_args.cost
    norm = jtln_args.cost_normalization
    if kind == "prior":
        if data_args.dataset != FASHION_MNIST:
            raise ValueError(
                "--cost prior is only known for the Fashion-MNIST split: pass a .npy/.csv cost file "
                "or a features-* cost for other datasets."
            )
        raw = load_cost(FASHION_MNIST_PRIOR_PATH, exp.source_names, exp.target_names)
        how = "Hand-written prior relation between Fashion-MNIST classes (jtln_hf/resources/fashion_mnist_prior.csv)"
    elif kind in FEATURE_COSTS:
        if model is None:
            raise ValueError(f"--cost {kind} needs a model to extract features from.")
        source = jdata.sample_shots(
            exp.source, min(jtln_args.cost_samples_per_class, _min_class_size(exp.source)), seed=seed
        )
        xs, ys = extract_features(model, source, data_args)
        xt, yt = extract_features(model, exp.target, data_args)
        raw = cost_from_features(
            xs, ys, xt, yt, method=FEATURE_COSTS[kind],
            num_source_labels=len(exp.source_names), num_target_labels=len(exp.target_names), seed=seed,
        )  # fmt: skip
        how = (
            f"{FEATURE_COSTS[kind]} distance between the pooled backbone features of each source class "
            f"({len(xs)} images) and each target class ({len(xt)} labelled images), after "
            f"{jtln_args.cost_warmup_steps} source-only warm-up steps"
        )
    else:
        path = Path(kind)
        if not path.is_file():
            raise ValueError(
                f"--cost {kind!r} is neither prior, a features-* method ({', '.join(FEATURE_COSTS)}) "
                "nor an existing .npy/.csv file."
            )
        raw = load_cost(path, exp.source_names, exp.target_names)
        how = f"Loaded from {path.name}"
    return normalize_cost(raw, norm), f"{how}; normalisation: {norm}."


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


def run_method(
    method: str,
    exp: ExperimentData,
    config: JointImageClassifierConfig,
    data_args: DataArguments,
    model_args: ModelArguments,
    jtln_args: JTLNArguments,
    args: JTLNTrainingArguments,
    seed: int,
) -> RunResult:
    """Train one method for one seed and evaluate it on the target test set."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose from {METHODS}.")
    args = dataclasses.replace(args, seed=seed)
    model = build_model(config, seed, model_args.image_size)
    name = f"{method}-seed{seed}"
    start = time.perf_counter()
    description = ""
    if method == "finetune":
        last = train_target_only(model, exp, args, data_args, name)
    elif method == "consecutive":
        train_source_only(model, exp, args, data_args, f"{name}-source", args.max_steps)
        last = train_target_only(model, exp, args, data_args, f"{name}-target")
    elif method == "joint":
        last = train_joint(model, exp, args, data_args, name, ot_loss_weight=0.0)
    else:
        if jtln_args.cost in FEATURE_COSTS:
            train_source_only(model, exp, args, data_args, f"{name}-warmup", jtln_args.cost_warmup_steps)
        cost, description = resolve_cost(jtln_args, data_args, exp, model, seed)
        model.set_cost_matrix(cost)
        last = train_joint(model, exp, args, data_args, name, ot_loss_weight=args.ot_loss_weight)
    seconds = time.perf_counter() - start
    metrics = evaluate_model(model, exp, data_args, args, log_to=last)
    logger.warning(f"{method} seed {seed}: accuracy {metrics['accuracy']:.4f} ({seconds:.0f} s)")
    return RunResult(method, seed, metrics, seconds, model, description)


def evaluate_model(
    model, exp: ExperimentData, data_args: DataArguments, args: JTLNTrainingArguments,
    log_to: JTLNTrainer | None = None,
) -> dict[str, float]:  # fmt: skip
    """Target test metrics (accuracy, mean per-class accuracy, top-k), keys without ``eval_``.

    With ``--report_to tensorboard``, the metrics are written (as ``eval/accuracy`` ...) into the
    TensorBoard run of ``log_to``, the method's last training stage, at its last step, so each
    run's curves end with its test metrics (and no stray ``runs/`` folder appears in the cwd).
    """
    report_to = [r for r in args.report_to if r != "tensorboard"]
    eval_args = _stage_args(args, "eval", ot_loss_weight=0.0, report_to=report_to or "none")
    eval_ds = _eval_dataset(exp, model.config, data_args)
    board = None
    if log_to is not None and "tensorboard" in args.report_to:
        board = next((cb for cb in log_to.callback_handler.callbacks if isinstance(cb, TensorBoardCallback)), None)
    trainer = JTLNTrainer(model=model, args=eval_args, eval_dataset=eval_ds, callbacks=[board] if board else None)
    if board is not None:
        trainer.state.global_step = log_to.state.global_step
    try:
        metrics = trainer.evaluate()
    finally:
        if board is not None and board.tb_writer is not None:
            board.tb_writer.close()
            board.tb_writer = None
    keep = ("eval_accuracy", "eval_mean_per_class_accuracy", "eval_loss")
    return {k.removeprefix("eval_"): float(v) for k, v in metrics.items() if k in keep or k.startswith("eval_top_")}


# --------------------------------------------------------------------------------------- results
def summarize(runs: list[RunResult]) -> dict[str, dict[str, Any]]:
    """Mean and sample standard deviation (ddof=1) of each metric per method."""
    summary: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        entry: dict[str, Any] = {"seeds": [r.seed for r in mine], "train_seconds": sum(r.train_seconds for r in mine)}
        for key in ("accuracy", "mean_per_class_accuracy"):
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
}


def results_markdown(summary: dict[str, dict[str, Any]], caption: str = "") -> str:
    """The comparison table: mean ± std (over seeds) of target test accuracy, in percent."""
    lines = [
        "| method | accuracy (%) | mean per-class accuracy (%) | seeds | train time (s) |",
        "|---|---|---|---|---|",
    ]
    best = max(summary, key=lambda m: summary[m]["accuracy"]["mean"])
    for method, entry in summary.items():
        acc, mpc = entry["accuracy"], entry["mean_per_class_accuracy"]
        acc_text = f"{100 * acc['mean']:.1f} ± {100 * acc['std']:.1f}"
        if method == best:
            acc_text = f"**{acc_text}**"
        lines.append(
            f"| {METHOD_TITLES[method]} | {acc_text} | {100 * mpc['mean']:.1f} ± {100 * mpc['std']:.1f} "
            f"| {len(entry['seeds'])} | {entry['train_seconds']:.0f} |"
        )
    table = "\n".join(lines)
    return f"{caption}\n\n{table}\n" if caption else table + "\n"


def write_results(output_dir: str | Path, summary: dict, runs: list[RunResult], meta: dict[str, Any], caption: str) -> str:
    """Write ``results.json`` and ``results.md`` atomically; return the Markdown table."""
    output_dir = Path(output_dir)
    table = results_markdown(summary, caption)
    payload = {
        **meta,
        "summary": summary,
        "runs": [
            {"method": r.method, "seed": r.seed, "train_seconds": r.train_seconds, **r.metrics} for r in runs
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
        outputs, _ = predict_outputs(model, exp.target_test, data_args, ("source_logits", "logits"))
        plan = mean_transport_plan(
            outputs["source_logits"], outputs["logits"], model.cost_matrix.detach().cpu(),
            epsilon=args.ot_epsilon, iterations=args.ot_iterations, method=args.ot_method, tol=args.ot_tol,
        )  # fmt: skip
        plan_images = len(outputs["logits"])
    dataset_id = "fashion_mnist" if data_args.dataset == FASHION_MNIST else data_args.dataset
    target_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    card_kwargs = dict(
        repo_id=args.hub_model_id or f"your-name/{Path(output_dir).resolve().name}",
        cost_description=run.cost_description or "No cost matrix was used (no OT term).",
        hyperparameters=hyper,
        results_table=results_table,
        metrics={k: v for k, v in run.metrics.items() if k != "loss"},
        datasets=[dataset_id],
        dataset_name=f"{data_args.dataset} {data_args.test_split} split, target classes ({', '.join(target_names)})",
    )

    def write(folder: Path) -> None:
        save_model_folder(model, folder)
        write_model_card(folder, model, plan=plan, plan_images=plan_images, summary=summary, **card_kwargs)

    return atomic_write_dir(Path(output_dir) / "model", write)


# ------------------------------------------------------------------------------------- top level
def run_experiment(
    data_args: DataArguments, model_args: ModelArguments, jtln_args: JTLNArguments, args: JTLNTrainingArguments
) -> dict[str, Any]:
    """Run ``jtln_args.mode`` for every seed; write results (and the first seed's model)."""
    methods = list(jtln_args.methods) if jtln_args.mode == "compare" else [jtln_args.mode]
    splits = load_splits(data_args)
    runs: list[RunResult] = []
    keep: RunResult | None = None
    keep_exp: ExperimentData | None = None
    start = time.perf_counter()
    for seed in jtln_args.seeds:
        exp = prepare_data(data_args, seed, splits)
        config = build_config(model_args, data_args, exp)
        for method in methods:
            run = run_method(method, exp, config, data_args, model_args, jtln_args, args, seed)
            if keep is None and method == methods[-1]:
                keep, keep_exp = run, exp
            else:
                run.model = None  # free memory: only the first seed's last method is saved
            runs.append(run)
    wall = time.perf_counter() - start
    summary = summarize(runs)
    caption = (
        f"Target test accuracy on {data_args.dataset} ({len(exp.target_names)} target classes, "
        f"{data_args.shots} labelled images each, {len(exp.target_test)} test images); "
        f"{args.max_steps} steps per stage, batch {args.per_device_train_batch_size} "
        f"(source fraction {args.source_fraction}), backbone {model_args.backbone}, "
        f"seeds {list(jtln_args.seeds)}, mean ± sample std over seeds; wall time {wall:.0f} s."
    )
    meta = {
        "dataset": data_args.dataset,
        "source_classes": exp.source_names,
        "target_classes": exp.target_names,
        "shots": data_args.shots,
        "max_steps": args.max_steps,
        "batch_size": args.per_device_train_batch_size,
        "source_fraction": args.source_fraction,
        "backbone": model_args.backbone,
        "cost": jtln_args.cost,
        "cost_normalization": jtln_args.cost_normalization,
        "ot_loss_weight": args.ot_loss_weight,
        "ot_epsilon": args.ot_epsilon,
        "ot_iterations": args.ot_iterations,
        "ot_tol": args.ot_tol,
        "seeds": list(jtln_args.seeds),
        "wall_seconds": wall,
    }
    table = write_results(args.output_dir, summary, runs, meta, caption)
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
    "prepare_data",
    "build_config",
    "build_model",
    "resolve_cost",
    "run_method",
    "run_experiment",
    "summarize",
    "results_markdown",
]
