"""The recipe's command line: ``HfArgumentParser`` over the argument dataclasses, a YAML ``--config``, one-line errors.

``recipes/train_jtln.py`` and ``recipes/sweep.py`` read their flags through :func:`parse_args`: the
data, model and JTLN dataclasses (:mod:`jtln_hf.experiment.arguments`), then the Trainer's
(:class:`jtln_hf.training.JTLNTrainingArguments`), with the embedded default's training set-up
(:data:`DEFAULTS`) under them, a ``--config`` file over those, and the command line over everything.
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

from ..data.loader import default_num_workers, loader_settings
from ..methods import method_names
from ..training.arguments import JTLNTrainingArguments
from .arguments import DataArguments, JTLNArguments, ModelArguments, cost_help, mode_choices

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


def build_parser(description: str | None = None) -> JTLNArgumentParser:
    """The recipe's parser: data, model, JTLN, then the Trainer's flags, plus --config and --debug.

    Built at call time: ``--mode``, ``--methods`` and ``--cost`` list what the registries hold now, and
    ``--dataloader_num_workers`` the workers a run on this machine starts (:func:`default_workers_help`).
    ``description``: the text above the flags (the recipe's docstring).
    """
    parser = JTLNArgumentParser(
        DATACLASSES, description=description, formatter_class=_HelpFormatter, prog="train_jtln.py",
        usage="%(prog)s [--config FILE.yaml] [FLAG VALUE ...]   (flags in groups below)",
    )
    parser.add_argument("--config", type=Path, help="YAML file of flag defaults (flags on the command line override it).")
    helps = {**RECIPE_HELP, **registry_help(), "dataloader_num_workers": default_workers_help()}
    for action in parser._actions:  # TrainingArguments' help describes Trainer; this is what the recipe does
        if action.dest in helps:
            action.help = helps[action.dest]
        if action.dest == "dataloader_num_workers":  # the default a run uses here, not TrainingArguments' 0
            action.default = default_num_workers()
    return parser


def default_workers_help() -> str:
    """``--dataloader_num_workers``' help: the workers a run starts when the flag is not given, and why."""
    return ("Data-loader workers per training process. Default: this process's share of the CPUs less one "
            "(one core left to training; 0 loads in the training process), with 2 batches prefetched each; "
            "the batches do not depend on it.")


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


def parse_args(argv: list[str] | None = None, description: str | None = None):
    """Parse ``--config FILE.yaml`` first (defaults), then every flag (overrides).

    Returns the four argument dataclasses, the names of the flags the user set (command line or
    config file) and whether ``--debug`` is on; ``description`` heads ``--help``. Raises :class:`UsageError` on a bad flag. Without
    ``--dataloader_num_workers``, the workers are :func:`jtln_hf.data.loader.default_num_workers`
    (prefetching).
    """
    argv, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser(description)
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


__all__ = ["DATACLASSES", "DEFAULTS", "JTLNArgumentParser", "UsageError", "build_parser", "parse_args", "registry_help"]
