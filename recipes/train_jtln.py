#!/usr/bin/env python
"""Train JTLN and compare it with plain fine-tuning, on the embedded default or on your own data.

With no arguments and no network this runs the embedded default: Fashion-MNIST (Debian package
``dataset-fashion-mnist``) split into 5 source classes and 5 target classes with 5 labelled images
each, the four methods of the paper's table (target-only, consecutive, joint, JTLN) and Co-Tuning
on seeds 0 1 2, and prints the comparison table with each method's paired difference to joint.

examples:
  python recipes/train_jtln.py                                   # the embedded default
  python recipes/train_jtln.py --mode jtln --seeds 0 --shots 20  # one method
  python recipes/train_jtln.py --source_dataset fashion-mnist --target_dataset path/to/my_photos \\
      --target_test_fraction 0.3                                 # your own target (ImageFolder)
  python recipes/train_jtln.py --source_dataset your-org/large-source --target_dataset my_photos \\
      --backbone resnet50 --pretrained_backbone                  # ImageNet-pretrained timm backbone
  python recipes/train_jtln.py ... --backbone_checkpoint resnet50.safetensors   # local timm weights
  python recipes/train_jtln.py --config recipes/configs/fashion_mnist.yaml --max_steps 200
  accelerate launch recipes/train_jtln.py --config ...           # several GPUs / mixed precision
  python recipes/train_jtln.py --push_to_hub --hub_model_id user/jtln-fashion-mnist   # then share it
  python recipes/train_jtln.py --push_to_hub --hub_model_id user/jtln-fmnist --push_space user/jtln-demo
  python recipes/train_jtln.py --report_to tensorboard           # curves: tensorboard --logdir OUTPUT_DIR/runs

Every flag of transformers.TrainingArguments works too (--learning_rate, --bf16 ...). A --config
YAML file sets defaults; flags on the command line override it. Every setting is checked before
the first training step: a user error prints one line, "error: <the problem and the fix>", and
exits with status 2 (a bare --debug, or JTLN_DEBUG=1, shows the traceback; --debug VALUE is
TrainingArguments' own debug option).

A non-empty --output_dir is refused before anything is written, unless --overwrite_output_dir
(the previous run's results, runs/ and model/ are deleted first) or --resume_from_checkpoint true
continues the run that is there (same settings, and checkpoints saved with --save_strategy steps
--save_steps N).

--push_to_hub checks every repository id, the token and HF_HUB_OFFLINE before training (exit
status 2), trains without pushing any stage, then uploads the finished OUTPUT_DIR/model folder
(weights, config, remote code, processor config, card, figures and the demo app) to
--hub_model_id in one commit, and its timm export OUTPUT_DIR/model/timm to --hub_timm_model_id
(default <hub_model_id>-timm) in another; --push_space SPACE_ID adds the Gradio demo as a Space
loading the model at the pushed revision. If a push fails, the error says why and how to fix it
(exit status 1); the local results stay as written. python OUTPUT_DIR/model/app.py serves the
demo locally.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
from pathlib import Path
from typing import NoReturn

import yaml
from transformers import HfArgumentParser

from jtln_hf.arguments import (
    DataArguments,
    JTLNArguments,
    ModelArguments,
    check_arguments,
    cost_help,
    mode_choices,
    run_settings,
)
from jtln_hf.data.bad_images import BadImagesError
from jtln_hf.data.loader import default_num_workers, loader_settings
from jtln_hf.experiment import plan_experiment, run_experiment
from jtln_hf.hub import HubPushError, check_can_push, push_model_folder
from jtln_hf.io import check_output_dir, clear_run_outputs, write_run_settings
from jtln_hf.methods import method_names
from jtln_hf.results import timm_repo_id
from jtln_hf.share import TIMM_FOLDER, push_space
from jtln_hf.training_args import JTLNTrainingArguments

# The embedded default's training set-up (AdamW 1e-3 cosine, wd 5e-4, 64 source + 64 target images
# per step). 500 steps per stage keeps `make demo` within 15 minutes on 2 CPU cores; it applies
# unless --max_steps or --num_train_epochs is given.
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
DATACLASSES = (DataArguments, ModelArguments, JTLNArguments, JTLNTrainingArguments)
#: TrainingArguments flags whose transformers help ("push ... every time the model is saved") is not
#: what the recipe does with them.
RECIPE_HELP = {
    "push_to_hub": "Upload OUTPUT_DIR/model (weights, code, processor, card) to --hub_model_id once, after every "
                   "method has trained; no stage or checkpoint is pushed. The repository id, a token and "
                   "HF_HUB_OFFLINE are checked before training.",
    "hub_model_id": "Repository to push to, user/name or org/name. Default: the --output_dir folder's name, in "
                    "the token's namespace.",
    "resume_from_checkpoint": "true: continue the run in --output_dir (same settings) from each stage's newest "
                              "complete checkpoint, which the run saved with --save_strategy steps --save_steps N; "
                              "or the path of one checkpoint.",
}
_UNSET = object()


class UsageError(ValueError):
    """A flag, a config file or their combination is wrong: exit status 2, one line."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, and the description's examples kept as written."""


class JTLNArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` whose errors are one line, ``error: ...``, exit status 2 (argparse's)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def registry_help() -> dict[str, str]:
    """The help of the flags that name registered methods and costs, read from the registries now.

    Called by :func:`build_parser`, so a method or cost registered before the parser is built is
    listed. The names are checked (with a "did you mean") by :class:`JTLNArguments`, not argparse.
    """
    methods = ", ".join(method_names())
    return {
        "mode": f"One of {{{', '.join(mode_choices())}}}: one method, or compare (every one of --methods).",
        "methods": f"Methods of --mode compare, among {{{methods}}}.",
        "cost": cost_help(),
    }


def build_parser() -> JTLNArgumentParser:
    """The recipe's parser: data, model, JTLN, then the Trainer's flags, plus --config and --debug.

    Built at call time: ``--mode``, ``--methods`` and ``--cost`` list what the registries hold now.
    """
    parser = JTLNArgumentParser(
        DATACLASSES, description=__doc__, formatter_class=_HelpFormatter, prog="train_jtln.py",
        usage="%(prog)s [--config FILE.yaml] [FLAG VALUE ...]   (flags in groups below)",
    )
    parser.add_argument("--config", type=Path, help="YAML file of flag defaults (flags on the command line override it).")
    helps = {**RECIPE_HELP, **registry_help()}
    for action in parser._actions:  # TrainingArguments' help describes Trainer; this is what the recipe does
        if action.dest in helps:
            action.help = helps[action.dest]
    return parser


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """Remove a bare ``--debug`` (show tracebacks); ``--debug VALUE`` stays TrainingArguments' own flag."""
    kept, debug = [], False
    for k, arg in enumerate(argv):
        value_follows = k + 1 < len(argv) and not argv[k + 1].startswith("-")
        if arg == "--debug" and not value_follows:
            debug = True
        else:
            kept.append(arg)
    return kept, debug or os.environ.get("JTLN_DEBUG", "") not in ("", "0")


def _flag_names() -> list[str]:
    return [f.name for dc in DATACLASSES for f in dataclasses.fields(dc) if f.init] + ["config"]


def _given_flags(parser: JTLNArgumentParser, argv: list[str]) -> set[str]:
    """The flags set on the command line (argparse leaves attributes already on a namespace alone)."""
    names = _flag_names()
    namespace = argparse.Namespace(**{name: _UNSET for name in names})
    namespace, _ = parser.parse_known_args(argv, namespace=namespace)
    return {name for name in names if getattr(namespace, name) is not _UNSET}


def _nearest_flag(arg: str) -> str:
    flag = arg.split("=", 1)[0]
    close = difflib.get_close_matches(flag.lstrip("-").replace("-", "_"), _flag_names(), n=1, cutoff=0.6)
    return f" (did you mean --{close[0]}?)" if close else ""


def parse_args(argv: list[str] | None = None):
    """Parse ``--config FILE.yaml`` first (defaults), then every flag (overrides).

    Returns the four argument dataclasses, the names of the flags the user set (command line or
    config file) and whether ``--debug`` is on. Raises :class:`UsageError` on a bad flag. Without
    ``--dataloader_num_workers``, the workers are :func:`jtln_hf.data.loader.default_num_workers`
    (prefetching).
    """
    argv, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    defaults = dict(DEFAULTS)
    given: set[str] = set()
    if known.config is not None:
        if not known.config.is_file():
            raise UsageError(f"--config {known.config}: no such file.")
        try:
            loaded = yaml.safe_load(known.config.read_text()) or {}
        except yaml.YAMLError as err:
            raise UsageError(f"--config {known.config}: not valid YAML ({str(err).splitlines()[0]}).") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"--config {known.config}: expected a mapping of flag names to values.")
        unknown = sorted(set(loaded) - set(_flag_names()))
        if unknown:
            hint = _nearest_flag(unknown[0])
            raise UsageError(f"--config {known.config}: unknown key(s) {unknown}{hint}.")
        defaults.update(loaded)
        given |= set(loaded)
    parser.set_defaults(**defaults)
    *parsed, remaining = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True, look_for_args_file=False
    )
    if remaining:
        raise UsageError(f"unrecognized argument {remaining[0]}{_nearest_flag(remaining[0])}; see --help.")
    data_args, model_args, jtln_args, training_args = parsed[:4]
    given |= _given_flags(parser, argv)
    if "num_train_epochs" in given and "max_steps" not in given:
        training_args = dataclasses.replace(training_args, max_steps=-1)  # the epochs count, not the default steps
    if "dataloader_num_workers" not in given:  # workers from this process's CPUs; batches do not depend on them
        loader = {k: v for k, v in loader_settings(default_num_workers()).items() if k not in given}
        training_args = dataclasses.replace(training_args, **loader)
    return data_args, model_args, jtln_args, training_args, given, debug


def hub_repo_id(training_args: JTLNTrainingArguments) -> str:
    """``--hub_model_id``, or the output folder's name (then in the token's user namespace)."""
    return training_args.hub_model_id or Path(training_args.output_dir).resolve().name


def push(training_args: JTLNTrainingArguments) -> int:
    """Upload ``OUTPUT_DIR/model`` to the Hub; print the commit, or the error and its fix (exit status 1).

    One commit per repository: the JTLN model (without ``timm/``) to ``--hub_model_id``; the timm export
    ``model/timm`` (when written) to ``--hub_timm_model_id`` (default ``<hub_model_id>-timm``); with
    ``--push_space``, the Gradio demo to that Space, loading the model at the revision just pushed.
    Only the main process pushes (under ``accelerate launch`` every process runs the recipe).
    """
    if training_args.process_index != 0:
        return 0
    folder = Path(training_args.output_dir) / "model"
    repo_id = hub_repo_id(training_args)
    private = training_args.hub_private_repo
    try:
        commit = push_model_folder(
            folder, repo_id, token=training_args.hub_token, private=private,
            revision=training_args.hub_revision, exclude=[f"{TIMM_FOLDER}/*"],
        )  # fmt: skip
        print(f"pushed {folder} to {repo_id}: {commit.commit_url}")
        if (folder / TIMM_FOLDER).is_dir():
            timm_id = timm_repo_id(repo_id, training_args.hub_timm_model_id)
            timm_commit = push_model_folder(
                folder / TIMM_FOLDER, timm_id, token=training_args.hub_token, private=private,
                revision=training_args.hub_revision, commit_message=f"Upload the timm export of {repo_id} (jtln_hf)",
            )  # fmt: skip
            print(f"pushed {folder / TIMM_FOLDER} to {timm_id}: {timm_commit.commit_url}")
        if training_args.push_space:
            space = push_space(folder, training_args.push_space, model_id=repo_id, revision=commit.oid,
                               token=training_args.hub_token, private=private)  # fmt: skip
            print(f"pushed the demo of {repo_id}@{commit.oid} to the Space {training_args.push_space}: "
                  f"{space.commit_url}")  # fmt: skip
    except HubPushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def check_sharing(training_args: JTLNTrainingArguments) -> None:
    """Before training: every repository the push will write to has a valid id, and a token exists."""
    if training_args.push_space and not training_args.push_to_hub:
        raise UsageError("--push_space loads the model from the Hub: add --push_to_hub (and --hub_model_id).")
    if training_args.hub_timm_model_id and not training_args.save_timm:
        raise UsageError("--hub_timm_model_id names where the timm export goes, but --save_timm is false: drop one.")
    if not training_args.push_to_hub:
        return
    repo_id = hub_repo_id(training_args)
    targets = [repo_id]
    if training_args.save_timm:
        targets.append(timm_repo_id(repo_id, training_args.hub_timm_model_id))
    if training_args.push_space:
        targets.append(training_args.push_space)
    for target in targets:
        check_can_push(target, training_args.hub_token)


def prepare_output_dir(training_args: JTLNTrainingArguments, settings: dict, overwrite: bool) -> None:
    """Once every process has checked the folder: clear the replaced run (``--overwrite_output_dir``), record
    the settings (main process)."""
    with training_args.main_process_first(local=False, desc="output folder check"):
        pass  # a barrier: no process checks a folder the main process has begun to change
    if training_args.should_save:
        if overwrite:
            clear_run_outputs(training_args.output_dir)
        write_run_settings(training_args.output_dir, settings)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    debug = _split_debug(list(sys.argv[1:] if argv is None else argv))[1]
    try:
        data_args, model_args, jtln_args, training_args, given, debug = parse_args(argv)
        check_arguments(data_args, model_args, jtln_args, given)
        settings = run_settings(data_args, model_args, jtln_args, training_args)
        check_output_dir(training_args.output_dir, settings, overwrite=jtln_args.overwrite_output_dir,
                         resume=training_args.resume_from_checkpoint)  # fmt: skip
        check_sharing(training_args)  # before hours of training, not after
        plan = plan_experiment(data_args, model_args, jtln_args, training_args)
        prepare_output_dir(training_args, settings, overwrite=jtln_args.overwrite_output_dir)
        result = run_experiment(plan, training_args)
    except (ValueError, FileNotFoundError, HubPushError) as err:  # user errors: UsageError, bad data, no token, ...
        if debug:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except BadImagesError as err:  # met in training, past --max_bad_images: the rows are listed, nothing half-written
        if debug:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    if training_args.process_index == 0:
        print(result["table"])
        out = Path(training_args.output_dir)
        print(f"results: {out / 'results.md'} | model and card: {out / 'model'} | per stage: {out / 'runs'}")
    return push(training_args) if training_args.push_to_hub else 0


if __name__ == "__main__":
    sys.exit(main())
