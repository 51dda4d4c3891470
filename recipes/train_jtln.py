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

import gc
import sys
from pathlib import Path

from jtln_hf.data.bad_images import BadImagesError
from jtln_hf.experiment import plan_experiment, run_experiment
from jtln_hf.experiment.arguments import ADDED_SETTINGS, run_settings
from jtln_hf.experiment.checks import check_arguments
from jtln_hf.experiment import cli
from jtln_hf.experiment.cli import UsageError, _split_debug
from jtln_hf.sharing.demo import push_space
from jtln_hf.sharing.folder import timm_repo_id
from jtln_hf.sharing.hub import HubPushError, check_can_push, push_model_folder
from jtln_hf.sharing.timm_export import TIMM_FOLDER
from jtln_hf.training.arguments import JTLNTrainingArguments
from jtln_hf.utils.io import check_output_dir, clear_run_outputs, write_run_settings


def build_parser() -> cli.JTLNArgumentParser:
    """The recipe's parser, this docstring above its flags (:func:`jtln_hf.experiment.cli.build_parser`)."""
    return cli.build_parser(__doc__)


def parse_args(argv: list[str] | None = None):
    """The recipe's flags (:func:`jtln_hf.experiment.cli.parse_args`), with this docstring in ``--help``."""
    return cli.parse_args(argv, description=__doc__)


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
                         resume=training_args.resume_from_checkpoint, added=ADDED_SETTINGS)  # fmt: skip
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
    # The ~600,000 objects the imports made live as long as the process: frozen, every full garbage collection
    # skips them (Trainer frees memory with one per stage, 0.6 s each otherwise on a 2-core machine).
    gc.freeze()
    sys.exit(main())
