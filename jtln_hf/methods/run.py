"""One method on one seed: :func:`run_method` trains it (its registered stage plan) and evaluates it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from transformers.utils import logging

from ..configuration_jtln import JointImageClassifierConfig
from ..data.bad_images import read_bad_images
from ..data.pools import ExperimentData
from ..modeling_jtln import JointImageClassifier
from ..training.arguments import JTLNTrainingArguments
from .predict import evaluate_model
from .registry import METHOD_REGISTRY, MethodRun, MethodSettings
from .stages import build_model

logger = logging.get_logger(__name__)


# ------------------------------------------------------------------------------------------- run
@dataclass
class RunResult:
    """One method on one seed: its test (and validation) metrics, training time and model."""

    method: str
    seed: int
    metrics: dict[str, float]
    train_seconds: float
    model: JointImageClassifier
    cost_description: str = ""
    steps: str = ""  # what the run trained, e.g. "200 warm-up + 500": the budget every table states
    warmup_steps: int = 0  # source-only steps before the cost (JTLN) or the relationship (Co-Tuning)
    bad_images: list[dict] = dataclasses.field(default_factory=list)  # rows its stages skipped, with their stage


def run_method(
    method: str, exp: ExperimentData, config: JointImageClassifierConfig, settings: MethodSettings,
    args: JTLNTrainingArguments, seed: int,
) -> RunResult:  # fmt: skip
    """Train one method for one seed (its registered stage plan) and evaluate it on the target test set.

    ``settings`` come resolved from the run's plan: ``settings.cost.fixed`` is a cost resolved before
    training (``prior`` or a file); model costs are computed in the stage plan, from this seed's model.
    """
    if method not in METHOD_REGISTRY:
        raise ValueError(f"unknown method {method!r}: choose from {list(METHOD_REGISTRY)}.")
    args = dataclasses.replace(args, seed=seed)
    registered = METHOD_REGISTRY[method]
    model = build_model(config, seed, settings.lora)
    start = time.perf_counter()
    run = MethodRun(model, exp, settings, args, f"{method}-seed{seed}", settings.of(method))
    trained = registered.plan(run)
    seconds = time.perf_counter() - start
    metrics = evaluate_model(model, exp, settings.data, args, log_to=trained.last)
    logger.warning(f"{method} seed {seed}: accuracy {metrics['accuracy']:.4f} ({seconds:.0f} s)")
    steps = registered.steps_text(stage_length(args).removesuffix(" steps"), trained.warmup)
    bad = read_bad_images(Path(args.output_dir) / "runs", run.name)  # the listings its stages wrote
    return RunResult(method, seed, metrics, seconds, model, trained.description, steps, trained.warmup, bad)


def stage_length(args: JTLNTrainingArguments) -> str:
    """The length of one stage: ``"500 steps"`` or ``"2 epochs"``."""
    return f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"
