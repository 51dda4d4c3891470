#!/usr/bin/env python
"""Train and compare JTLN on a source/target class split.

With no arguments and no network this runs the embedded default: Fashion-MNIST (Debian package
``dataset-fashion-mnist``) split into 5 source classes and 5 target classes with 5 labelled
images each, the four methods of the paper's table (target-only, consecutive, joint, JTLN) on
seeds 0 1 2, and prints the comparison table.

    python recipes/train_jtln.py                                   # the embedded default
    python recipes/train_jtln.py --mode jtln --seeds 0 --shots 20  # one method
    python recipes/train_jtln.py --config recipes/configs/fashion_mnist.yaml --max_steps 200
    accelerate launch recipes/train_jtln.py --config ...           # several GPUs / mixed precision
    python recipes/train_jtln.py --push_to_hub --hub_model_id user/jtln-fashion-mnist   # then share it
    python recipes/train_jtln.py --report_to tensorboard           # curves: tensorboard --logdir OUTPUT_DIR/runs

Every flag of ``transformers.TrainingArguments`` works too (``--learning_rate``, ``--bf16`` ...).
A ``--config`` YAML file sets defaults; flags on the command line override it.

``--push_to_hub`` checks for a Hugging Face token before training, trains without pushing any
stage, then uploads the finished ``OUTPUT_DIR/model`` folder (weights, config, remote code,
processor config, card and figures) to ``--hub_model_id`` in one commit. If the push fails, the
error says why and how to fix it; the local results stay as written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from jtln_hf.experiment import DataArguments, JTLNArguments, ModelArguments, run_experiment
from jtln_hf.hub import HubPushError, check_can_push, push_model_folder
from jtln_hf.trainer import JTLNTrainingArguments

# The embedded default's training set-up (FINDINGS.md: AdamW 1e-3 cosine, wd 5e-4, 64 source + 64
# target images per step). 500 steps per stage keeps `make demo` within 15 minutes on 2 CPU cores.
DEFAULTS = {
    "output_dir": "outputs/jtln-fashion-mnist",
    "max_steps": 500,
    "per_device_train_batch_size": 128,
    "per_device_eval_batch_size": 512,
    "learning_rate": 1e-3,
    "weight_decay": 5e-4,
    "lr_scheduler_type": "cosine",
    "logging_steps": 50,
    "save_strategy": "no",
    "eval_strategy": "no",
    "report_to": "none",
    "disable_tqdm": True,
}


def parse_args(argv: list[str] | None = None):
    """Parse ``--config FILE.yaml`` first (defaults), then every other flag (overrides)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, help="YAML file of flag defaults (flags override it).")
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser((DataArguments, ModelArguments, JTLNArguments, JTLNTrainingArguments))
    defaults = dict(DEFAULTS)
    if known.config is not None:
        if not known.config.is_file():
            parser.error(f"--config {known.config}: no such file.")
        loaded = yaml.safe_load(known.config.read_text()) or {}
        valid = {action.dest for action in parser._actions}
        unknown = sorted(set(loaded) - valid)
        if unknown:
            parser.error(f"--config {known.config}: unknown key(s) {unknown}.")
        defaults.update(loaded)
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args=rest, look_for_args_file=False)


def hub_repo_id(training_args: JTLNTrainingArguments) -> str:
    """``--hub_model_id``, or the output folder's name (then in the token's user namespace)."""
    return training_args.hub_model_id or Path(training_args.output_dir).resolve().name


def push(training_args: JTLNTrainingArguments) -> int:
    """Upload ``OUTPUT_DIR/model`` to the Hub; print the commit, or the error and its fix (exit status 1).

    Only the main process pushes (under ``accelerate launch`` every process runs the recipe).
    """
    if training_args.process_index != 0:
        return 0
    folder = Path(training_args.output_dir) / "model"
    repo_id = hub_repo_id(training_args)
    try:
        commit = push_model_folder(
            folder, repo_id, token=training_args.hub_token, private=training_args.hub_private_repo,
            revision=training_args.hub_revision,
        )  # fmt: skip
    except HubPushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"pushed {folder} to {repo_id}: {commit.commit_url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    data_args, model_args, jtln_args, training_args = parse_args(argv)
    if training_args.push_to_hub:
        try:  # before hours of training, not after
            check_can_push(hub_repo_id(training_args), training_args.hub_token)
        except HubPushError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    result = run_experiment(data_args, model_args, jtln_args, training_args)
    print(result["table"])
    print(f"results: {Path(training_args.output_dir) / 'results.md'} | model and card: "
          f"{Path(training_args.output_dir) / 'model'}")
    return push(training_args) if training_args.push_to_hub else 0


if __name__ == "__main__":
    sys.exit(main())
