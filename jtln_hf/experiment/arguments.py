"""The recipe's arguments: what to train on, the network, what to run.

Three dataclasses that ``transformers.HfArgumentParser`` turns into flags (each its own group in
``--help``), beside :class:`jtln_hf.training.trainer.JTLNTrainingArguments`. A dataclass checks its own
values in ``__post_init__``; :func:`jtln_hf.experiment.checks.check_arguments` checks the flags *against each
other*. Every message names the problem and the fix on one line.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..cost import COST_NORMALIZATIONS, DEFAULT_NORMALIZATION, NORMALIZATIONS
from ..cost.builders import COST_BUILDERS, DEFAULT_COST_WARMUP_STEPS, DEFAULT_FEATURE_COST, Cost
from ..cost.flags import plan_cost
from ..data.pools import DataSpec
from ..errors import did_you_mean
from ..methods import METHOD_REGISTRY, MethodSettings, method_names
from ..training.cotuning import DEFAULT_COTUNING_WEIGHT

#: ``--mode`` runs all of ``--methods`` under this name, or one registered method under its own.
COMPARE = "compare"


def mode_choices() -> tuple[str, ...]:
    """``--mode``: one registered method (:func:`jtln_hf.methods.method_names`, read now), or ``compare``."""
    return (*method_names(), COMPARE)


def cost_help() -> str:
    """``--cost``'s help: every registered cost (read now, so a cost registered before the parser is built is listed)."""
    return ("; ".join(f"{b.name}: {b.help}" for b in COST_BUILDERS.values()) + "; or a .npy/.csv file. Default: prior "
            f"when the data has one naming the chosen classes (Fashion-MNIST's), else {DEFAULT_FEATURE_COST}.")  # fmt: skip


def _choice(value: str, choices: tuple[str, ...], flag: str) -> None:
    if value not in choices:
        raise ValueError(f"{flag} {value!r} is not one of {list(choices)}{did_you_mean(value, choices)}.")


@dataclass
class DataArguments:
    """What to train on: one dataset split by class (the paper's benchmark shape), or two datasets."""

    _argument_group_name = "data (one --dataset split by class, or --source_dataset + --target_dataset)"

    dataset: str | None = field(
        default=None,
        metadata={"help": "One dataset split into source and target classes: 'fashion-mnist' (Debian package, "
                  "offline), 'fgvc-aircraft' (with --dataset_root), a local folder or data file, or a Hub id. "
                  "Default: fashion-mnist, unless --source_dataset/--target_dataset are given."},
    )  # fmt: skip
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name for load_dataset."})
    dataset_root: str | None = field(
        default=None, metadata={"help": "Folder holding fgvc-aircraft-2013b, for 'fgvc-aircraft' datasets."}
    )
    train_split: str = field(default="train", metadata={"help": "--dataset: split of source and k-shot images."})
    test_split: str = field(default="test", metadata={"help": "--dataset: split of the target test images."})
    image_column: str = field(default="image", metadata={"help": "--dataset: image column."})
    label_column: str = field(default="label", metadata={"help": "--dataset: label column."})
    source_dataset: str | None = field(
        default=None, metadata={"help": "Source dataset (same kinds as --dataset); needs --target_dataset."}
    )
    source_dataset_config: str | None = field(default=None, metadata={"help": "Configuration of the source dataset."})
    source_split: str = field(default="train", metadata={"help": "Split of the source dataset to train on."})
    source_image_column: str = field(default="image", metadata={"help": "Image column of the source dataset."})
    source_label_column: str = field(default="label", metadata={"help": "Label column of the source dataset."})
    source_streaming: bool = field(
        default=False,
        metadata={"help": "Stream --source_dataset (a Hub id, parquet/arrow/webdataset shards, an ImageFolder) "
                  "instead of loading it: each process reads its own shards; needs --max_steps."},
    )  # fmt: skip
    source_shuffle_buffer: int = field(
        default=1000, metadata={"help": "--source_streaming: source rows in each process's shuffle buffer."}
    )
    source_label_names: list[str] | None = field(
        default=None,
        metadata={"help": "--source_streaming: class names, in label-id order, when the source's label column "
                  "has none (e.g. webdataset 'cls' integers)."},
    )  # fmt: skip
    target_dataset: str | None = field(
        default=None, metadata={"help": "Target dataset (same kinds as --dataset); needs --source_dataset."}
    )
    target_dataset_config: str | None = field(default=None, metadata={"help": "Configuration of the target dataset."})
    target_train_split: str = field(default="train", metadata={"help": "Target split the k shots come from."})
    target_test_split: str = field(default="test", metadata={"help": "Target split to test on."})
    target_image_column: str = field(default="image", metadata={"help": "Image column of the target dataset."})
    target_label_column: str = field(default="label", metadata={"help": "Label column of the target dataset."})
    target_test_fraction: float | None = field(
        default=None,
        metadata={"help": "Carve a stratified test split of this fraction from the target's train split "
                  "(for a dataset with one split). Fixed across seeds."},
    )  # fmt: skip
    target_validation_fraction: float | None = field(
        default=None,
        metadata={"help": "Carve a stratified validation split of this fraction from the target training pool, "
                  "for model selection; the shots are drawn from what is left. Fixed across seeds."},
    )  # fmt: skip
    source_classes: list[str] | None = field(
        default=None,
        metadata={"help": "Source classes (names or indices). Default: the embedded split for fashion-mnist, "
                  "else every class (of --source_dataset, or of --dataset not in --target_classes)."},
    )  # fmt: skip
    target_classes: list[str] | None = field(
        default=None,
        metadata={"help": "Target classes (names or indices). Default: the embedded split for fashion-mnist, "
                  "every class of --target_dataset; required for another --dataset."},
    )  # fmt: skip
    shots: int = field(default=5, metadata={"help": "Labelled training images per target class; 0: all of them."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap the target test set (quick runs)."})
    train_scale: list[float] = field(
        default_factory=lambda: [0.7, 1.0], metadata={"help": "RandomResizedCrop scale range (timm)."}
    )
    hflip: float = field(default=0.5, metadata={"help": "Horizontal flip probability (timm)."})
    decode_at_crop_scale: bool = field(
        default=True,
        metadata={"help": "Decode a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) that keeps its crop's pixels, its "
                  "box drawn as timm draws it and its rows below the box not decoded (training) or its shorter "
                  "side kept >= the resize (evaluation); "
                  "false: decode every image fully. Other formats are always decoded fully."},
    )  # fmt: skip

    def __post_init__(self):
        if self.shots < 0:
            raise ValueError(f"--shots must be >= 1 (or 0 for every target image), got {self.shots}.")
        for name in ("target_test_fraction", "target_validation_fraction"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0.0 < value < 1.0):
                raise ValueError(f"--{name} must be in (0, 1), e.g. 0.2, got {value}.")
        if self.source_shuffle_buffer < 1:
            raise ValueError(f"--source_shuffle_buffer must be >= 1, got {self.source_shuffle_buffer}.")
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise ValueError(f"--max_eval_samples must be >= 1, got {self.max_eval_samples}.")

    @property
    def two_datasets(self) -> bool:
        """Whether the source and the target come from their own datasets."""
        return self.source_dataset is not None or self.target_dataset is not None

    def spec(self) -> DataSpec:
        """What the code below the command line reads of these flags, as a frozen value (lists as tuples)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(DataSpec)}
        return DataSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass
class ModelArguments:
    """The network: a timm backbone, its weights, and two heads."""

    _argument_group_name = "model"

    backbone: str = field(default="test_resnet", metadata={"help": "timm architecture, or an 'hf-hub:' id."})
    in_chans: int | None = field(
        default=None, metadata={"help": "Input channels. Default: the pretrained config's, else read from the data."}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Input size. Default: the pretrained config's, else read from the data."}
    )
    pretrained_backbone: bool = field(
        default=False, metadata={"help": "Start from timm's pretrained weights (network, or the local HF cache)."}
    )
    backbone_checkpoint: str | None = field(
        default=None,
        metadata={"help": "A local .safetensors/.pth/.bin of timm weights for the backbone (implies pretrained); "
                  "loaded by timm (in_chans adaptation, classifier dropped)."},
    )  # fmt: skip
    head_dropout: float = field(default=0.0, metadata={"help": "Dropout before the heads."})
    lora_rank: int | None = field(
        default=None,
        metadata={"help": "Train LoRA adapters of this rank on the backbone (PEFT) instead of all its weights; the "
                  "heads train fully. Default: full fine-tuning."},
    )  # fmt: skip
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA's alpha (scale alpha / rank). Default: "
                                                                     "2 x --lora_rank."})  # fmt: skip
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA adapters' input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Backbone layers LoRA adapts (module names or their last parts, as PEFT's target_modules). "
                  "Default: a ViT's attention and MLP linears, a ConvNeXt's pointwise convolutions, a ResNet's "
                  "block convolutions."},
    )  # fmt: skip

    @property
    def pretrained(self) -> bool:
        return self.pretrained_backbone or self.backbone_checkpoint is not None


@dataclass
class JTLNArguments:
    """What to run, on which seeds, with which cost matrix."""

    _argument_group_name = "JTLN: methods and cost"

    mode: str = field(default=COMPARE, metadata={"help": "A registered method, or compare (every one of --methods)."})
    methods: list[str] = field(default_factory=lambda: list(method_names()),
                               metadata={"help": "Methods of --mode compare (registered methods)."})  # fmt: skip
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds (k-shot draw, init, data order)."})
    cost: str | None = field(
        default=None, metadata={"help": "A registered cost, or a .npy/.csv file (the recipe's --help lists them)."}
    )
    cost_normalization: str = field(
        default=DEFAULT_NORMALIZATION,
        metadata={"help": "; ".join(f"{name}: C {what}" for name, what in NORMALIZATIONS.items()) + "."},
    )
    cost_warmup_steps: int | None = field(
        default=None,
        metadata={"help": f"Source-only steps before a features-* or relationship cost is computed (default "
                  f"{DEFAULT_COST_WARMUP_STEPS}, or 0 for features-* on a pretrained backbone), or before a fixed cost's "
                  "joint steps (default 0)."},
    )  # fmt: skip
    cost_samples_per_class: int = field(default=200, metadata={"help": "Source images per class for a features-* cost."})
    cost_refresh_steps: int = field(
        default=0,
        metadata={"help": "Recompute a features-* or relationship cost from the current backbone every K joint "
                  "steps (same images; logged as cost_change, saved in each checkpoint). 0: computed once."},
    )  # fmt: skip
    cost_shuffle_seed: int | None = field(default=None, metadata={"help": "A control: permute C's target columns by "
                                          "this seed once C is built and normalised (same values, wrong relations)."})
    cost_from_target_pool: bool = field(
        default=False,
        metadata={"help": "A diagnostic, not a method: a features-* cost reads --cost_samples_per_class labelled images "
                  "of each target class from the whole target training pool instead of the k shots (the cost "
                  "without its estimation noise; a few-shot user has no such labels)."},
    )  # fmt: skip
    cost_unlabelled_target: int = field(
        default=0,
        metadata={"help": "A features-* cost also reads this many target training images without their labels, each "
                  "labelled by its nearest shot centroid in the warmed-up features (more target images than the k "
                  "shots; the target pool's images stand in for a user's unlabelled ones). 0: the shots only."},
    )  # fmt: skip
    cost_unlabelled_keep: float = field(
        default=1.0,
        metadata={"help": "With --cost_unlabelled_target: keep this share of each class's pseudo-labelled images, "
                  "those nearest their centroid by the widest margin over the next (fewer images, surer labels)."},
    )  # fmt: skip
    cost_warmup_restart: bool = field(
        default=False,
        metadata={"help": "After the --cost_warmup_steps source-only steps have given a features-* or relationship "
                  "cost, restart from the initial weights: the warm-up is a probe whose only output is C, and the "
                  "run's control is plain joint training (its OT part is then JTLN - joint)."},
    )  # fmt: skip
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the run in a non-empty --output_dir: its results.md, results.json, settings.json, "
                  "runs/ and model/ are deleted before training (other files stay). Without it such a folder is "
                  "refused, unless --resume_from_checkpoint continues a run of the same settings."},
    )  # fmt: skip
    cotuning_weight: float = field(
        default=DEFAULT_COTUNING_WEIGHT,
        metadata={"help": f"λ_ct of the cotuning method: weight of the soft source term (TLlib's default "
                  f"{DEFAULT_COTUNING_WEIGHT}). Its "
                  "relationship p(y_s|y_t) is read after --cost_warmup_steps source-only steps."},
    )  # fmt: skip

    def __post_init__(self):
        _choice(self.mode, mode_choices(), "--mode")
        for method in self.methods:
            _choice(method, method_names(), "--methods")
        _choice(self.cost_normalization, COST_NORMALIZATIONS, "--cost_normalization")
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed.")
        if self.cost is not None and self.cost not in COST_BUILDERS and not self.cost.lower().endswith((".npy", ".csv")):
            raise ValueError(
                f"--cost {self.cost!r} is neither one of {list(COST_BUILDERS)}{did_you_mean(self.cost, COST_BUILDERS)} "
                "nor a .npy/.csv file."
            )
        if not (math.isfinite(self.cotuning_weight) and self.cotuning_weight >= 0):
            raise ValueError(f"--cotuning_weight must be a finite number >= 0, got {self.cotuning_weight}.")
        if self.cost_warmup_steps is not None and self.cost_warmup_steps < 0:
            raise ValueError(f"--cost_warmup_steps must be >= 0, got {self.cost_warmup_steps}.")
        if self.cost_refresh_steps < 0:
            raise ValueError(f"--cost_refresh_steps must be >= 0 (0: no refresh), got {self.cost_refresh_steps}.")

    @property
    def run_methods(self) -> list[str]:
        """The methods this run trains, in order."""
        return list(dict.fromkeys(self.methods)) if self.mode == COMPARE else [self.mode]


#: Flags that say where a run is written, reported or shared (or which process reads them, or how
#: many data-loader workers load its batches, which never changes a batch), not what it trains:
#: :func:`run_settings` leaves them out, so a resumed run may change them.
NOT_SETTINGS = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "push_to_hub", "report_to", "run_name",
    "project", "logging_dir", "disable_tqdm", "log_level", "log_level_replica", "log_on_each_node", "local_rank",
    "debug", "dataloader_num_workers", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "max_bad_images",
})  # fmt: skip


#: Settings added after runs were recorded, with the value those runs ran with: a ``settings.json`` without
#: one of them resumes when the flag has that value (``--decode_at_crop_scale false`` for a JPEG run from before).
ADDED_SETTINGS = {"decode_at_crop_scale": False, "cost_warmup_restart": False, "cost_unlabelled_target": 0,
                  "cost_unlabelled_keep": 1.0}


def run_settings(data: DataArguments, model: ModelArguments, jtln: JTLNArguments, training: Any) -> dict[str, Any]:
    """Every setting of a run, resolved (defaults included), as JSON values: what ``settings.json`` records.

    Two runs have the same settings when these dicts are equal; the flags of :data:`NOT_SETTINGS`
    and the Hub's (``hub_*``) and trackio's (``trackio_*``) are left out.
    """
    values = {**dataclasses.asdict(data), **dataclasses.asdict(model), **dataclasses.asdict(jtln), **training.to_dict()}
    kept = {k: v for k, v in sorted(values.items())
            if k not in NOT_SETTINGS and not k.startswith(("hub_", "trackio_", "_"))}  # fmt: skip
    return json.loads(json.dumps(kept, default=str))  # the values a settings.json read back gives


def resolved_cost(data: DataArguments, model: ModelArguments, jtln: JTLNArguments) -> Cost:
    """The cost flags resolved into the frozen :class:`~jtln_hf.cost.builders.Cost` (kind, warm-up, prior)."""
    return plan_cost(jtln.cost, data.spec(), normalization=jtln.cost_normalization,
                     warmup_steps=jtln.cost_warmup_steps, samples_per_class=jtln.cost_samples_per_class,
                     refresh_steps=jtln.cost_refresh_steps, shuffle_seed=jtln.cost_shuffle_seed,
                     from_target_pool=jtln.cost_from_target_pool, warmup_restart=jtln.cost_warmup_restart,
                     unlabelled_target=jtln.cost_unlabelled_target, unlabelled_keep=jtln.cost_unlabelled_keep,
                     pretrained=model.pretrained)  # fmt: skip


def method_settings(data: DataArguments, model: ModelArguments, jtln: JTLNArguments) -> MethodSettings:
    """What the methods read of the command line, resolved once into a frozen value.

    Each registered method with settings of its own resolves them from the values of its flags
    (:attr:`jtln_hf.methods.Method.settings`; ``pretrained`` included).
    """
    values = {**dataclasses.asdict(data), **dataclasses.asdict(model), **dataclasses.asdict(jtln),
              "pretrained": model.pretrained}  # fmt: skip
    own = {
        m.name: m.settings({f: values[f] for f in (*m.flags, "pretrained") if f in values})
        for m in METHOD_REGISTRY.values() if m.settings is not None
    }  # fmt: skip
    return MethodSettings(data=data.spec(), cost=resolved_cost(data, model, jtln), methods=MappingProxyType(own))


__all__ = [
    "COMPARE",
    "DataArguments",
    "JTLNArguments",
    "ModelArguments",
    "NOT_SETTINGS",
    "cost_help",
    "method_settings",
    "mode_choices",
    "resolved_cost",
    "run_settings",
]
