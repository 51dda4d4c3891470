"""The recipe's flags checked against each other, before anything loads or trains.

:func:`check_arguments` turns a flag that the chosen set-up would silently ignore, or two flags that
contradict each other, into a one-line error that names the problem and the fix (not a surprise hours
later). Each dataclass of :mod:`jtln_hf.experiment.arguments` checks its own values.
"""

from __future__ import annotations

from ..cost.builders import COST_BUILDERS
from ..methods import METHOD_REGISTRY
from ..data.fgvc_aircraft import FGVC_AIRCRAFT
from .arguments import COMPARE, DataArguments, JTLNArguments, ModelArguments, resolved_cost


#: Flags of ``--dataset`` and their two-dataset counterparts (a flag of the other shape is ignored).
ONE_DATASET_FLAGS = {
    "dataset_config": "--source_dataset_config / --target_dataset_config",
    "train_split": "--source_split / --target_train_split",
    "test_split": "--target_test_split",
    "image_column": "--source_image_column / --target_image_column",
    "label_column": "--source_label_column / --target_label_column",
}
TWO_DATASET_FLAGS = (
    "source_dataset_config", "source_split", "source_image_column", "source_label_column", "target_dataset_config",
    "target_train_split", "target_test_split", "target_image_column", "target_label_column", "source_streaming",
)  # fmt: skip
#: Flags that only a streamed source (``--source_streaming``) reads.
STREAMING_FLAGS = ("source_shuffle_buffer", "source_label_names")


def check_arguments(data: DataArguments, model: ModelArguments, jtln: JTLNArguments, given: set[str]) -> None:
    """Raise a one-line ``ValueError`` for flags that contradict each other or would be ignored.

    ``given`` holds the names of the flags set on the command line or in ``--config`` (a flag left
    at its default is never an error).
    """
    if data.two_datasets:
        if data.source_dataset is None or data.target_dataset is None:
            missing = "--target_dataset" if data.target_dataset is None else "--source_dataset"
            raise ValueError(f"two-dataset runs need both --source_dataset and --target_dataset: add {missing}.")
        if "dataset" in given:
            raise ValueError("--dataset (one dataset split by class) and --source_dataset/--target_dataset "
                             "exclude each other: pass one or the other.")  # fmt: skip
        for name, other in ONE_DATASET_FLAGS.items():
            if name in given:
                raise ValueError(f"--{name} applies to --dataset; with --source_dataset/--target_dataset use {other}.")
    else:
        for name in TWO_DATASET_FLAGS + ("target_test_fraction",):
            if name in given:
                raise ValueError(f"--{name} applies to --source_dataset/--target_dataset runs; with --dataset use "
                                 f"{_one_dataset_counterpart(name)}.")  # fmt: skip
    _check_streaming(data, given)
    if "target_test_split" in given and data.target_test_fraction is not None:
        raise ValueError("--target_test_split and --target_test_fraction exclude each other: test on the dataset's "
                         "split, or carve one from its train split.")  # fmt: skip
    if data.dataset_root is not None and FGVC_AIRCRAFT not in data.spec().specs:
        raise ValueError("--dataset_root is only read for 'fgvc-aircraft' datasets: drop it, or name fgvc-aircraft.")
    if "methods" in given and jtln.mode != COMPARE:
        raise ValueError(f"--methods chooses what --mode compare runs; with --mode {jtln.mode} drop it "
                         "(or pass --mode compare).")  # fmt: skip
    methods = jtln.run_methods
    registered = [METHOD_REGISTRY[m] for m in methods]
    uses_ot = any(m.uses_ot for m in registered)
    for name in {flag for m in METHOD_REGISTRY.values() for flag in m.flags} & given:
        readers = [m.name for m in METHOD_REGISTRY.values() if name in m.flags]
        if not any(name in m.flags for m in registered):
            raise ValueError(f"--{name} has no effect: no method of this run ({', '.join(methods)}) reads it; drop it, "
                             f"or run {' or '.join(readers)}.")  # fmt: skip
    if uses_ot:
        cost = resolved_cost(data, model, jtln)
        kind = cost.kind
        unused = {"cost_refresh_steps": [b.name for b in COST_BUILDERS.values() if b.from_model],
                  "cost_samples_per_class": [b.name for b in COST_BUILDERS.values() if b.samples],
                  "cost_from_target_pool": [b.name for b in COST_BUILDERS.values() if b.samples],
                  "cost_unlabelled_target": [b.name for b in COST_BUILDERS.values() if b.samples],
                  "cost_unlabelled_keep": [b.name for b in COST_BUILDERS.values() if b.samples]}  # fmt: skip
        for name, kinds in unused.items():
            also_read = any(name in m.flags for m in registered if not m.uses_ot)  # e.g. Co-Tuning's warm-up
            if name in given and kind not in kinds and not also_read:
                raise ValueError(f"--{name} is only used by {' / '.join(kinds)} costs and --cost is {kind}: drop it, "
                                 "or pass such a cost.")  # fmt: skip
        if not cost.normalized and "cost_normalization" in given:
            raise ValueError(f"--cost_normalization has no effect on --cost {kind}: drop it.")
    if not any(m.joint_batches for m in registered) and "source_fraction" in given:
        raise ValueError("--source_fraction sets the source share of joint batches; no method of this run trains "
                         "joint batches: drop it.")  # fmt: skip
    if not any(m.trains_source for m in registered) and "source_loss_weight" in given:
        raise ValueError(f"--source_loss_weight has no effect with --mode {jtln.mode} (the source head is not "
                         "trained): drop it.")  # fmt: skip
    if model.backbone_checkpoint is not None and "pretrained_backbone" in given and not model.pretrained_backbone:
        raise ValueError("--backbone_checkpoint loads pretrained weights but --pretrained_backbone is false: "
                         "drop one of them.")  # fmt: skip
    if model.lora_rank is None and given & {"lora_alpha", "lora_dropout", "lora_target_modules"}:
        flag = sorted(given & {"lora_alpha", "lora_dropout", "lora_target_modules"})[0]
        raise ValueError(f"--{flag} sets up LoRA adapters, which --lora_rank R turns on: add it, or drop --{flag}.")
    if "max_steps" in given and "num_train_epochs" in given:
        raise ValueError("--max_steps and --num_train_epochs both set the training length (max_steps wins in "
                         "transformers): pass one of them.")  # fmt: skip


def _check_streaming(data: DataArguments, given: set[str]) -> None:
    """``--source_streaming`` needs a step count (a stream has no length); its own flags need it."""
    if not data.source_streaming:
        for name in STREAMING_FLAGS:
            if name in given:
                raise ValueError(f"--{name} applies to a streamed source: add --source_streaming, or drop it.")
        return
    if "max_steps" not in given:
        raise ValueError("--source_streaming needs --max_steps N: a stream has no length to derive the steps from.")


def _one_dataset_counterpart(name: str) -> str:
    for one, two in ONE_DATASET_FLAGS.items():
        if f"--{name}" in two:
            return f"--{one}"
    return "--source_dataset and --target_dataset to use it"


__all__ = ["STREAMING_FLAGS", "check_arguments"]
