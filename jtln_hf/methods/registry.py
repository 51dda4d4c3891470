"""The method registry: :class:`Method` (a name's stage plan, title, label, colour, flags),
:func:`register_method`, and what a stage plan reads (:class:`MethodRun`) and returns (:class:`Trained`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cost_builders import CostSettings
from ..data.pools import DataSpec, ExperimentData
from ..method_styles import METHOD_STYLES, MethodStyle
from ..modeling_jtln import JointImageClassifier
from ..trainer import JTLNTrainer, JTLNTrainingArguments


# -------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class MethodSettings:
    """What the methods read of the command line, as a frozen value (built once from its arguments).

    ``data``: the data flags; ``cost``: the cost flags; ``image_size``: ``--image_size`` (a pretrained
    backbone is built at it); ``cotuning_weight``: ``--cotuning_weight``.
    """

    data: DataSpec
    cost: CostSettings
    image_size: int | None
    cotuning_weight: float


@dataclass
class MethodRun:
    """One method on one seed: what its stage plan reads (``args`` carry the seed)."""

    model: JointImageClassifier
    exp: ExperimentData
    settings: MethodSettings
    args: JTLNTrainingArguments
    name: str  # "<method>-seed<seed>": the stage folders' prefix
    fixed_cost: tuple[np.ndarray, str] | None = None


@dataclass
class Trained:
    """What a stage plan returns: its last stage's trainer, a sentence for the card, warm-up steps."""

    last: JTLNTrainer
    description: str = ""
    warmup: int = 0


@dataclass(frozen=True)
class Method:
    """A registered method: its stage plan, its row title in results tables, its figure label and colour.

    ``flags``: the flags only this kind of method reads (one given for a run without such a
    method is an error); ``uses_ot``: trains with the OT term; ``joint_batches``: trains mixed
    source/target batches (``--source_fraction`` applies).
    """

    name: str
    plan: Callable[[MethodRun], Trained]
    title: str
    label: str
    colour: str
    flags: tuple[str, ...] = ()
    uses_ot: bool = False
    joint_batches: bool = False


METHOD_REGISTRY: dict[str, Method] = {}


def register_method(name: str, title: str, label: str, colour: str, **options: Any) -> Callable:
    """Decorator: register ``plan(run) -> Trained`` as method ``name`` (``--mode name``, ``--methods name``).

    Its title, label and colour also go to :data:`jtln_hf.method_styles.METHOD_STYLES`, where tables,
    figures and cards read them."""

    def register(plan: Callable[[MethodRun], Trained]) -> Callable[[MethodRun], Trained]:
        METHOD_REGISTRY[name] = Method(name, plan, title, label, colour, **options)
        METHOD_STYLES[name] = MethodStyle(title, label, colour, uses_ot=options.get("uses_ot", False))
        return plan

    return register
