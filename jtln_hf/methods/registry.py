"""The method registry: :class:`Method` (a name's stage plan, title, label, colour, flags and facts),
:func:`register_method`, :func:`method_names`, :func:`baseline_method`, and what a stage plan reads
(:class:`MethodSettings`, :class:`MethodRun`) and returns (:class:`Trained`).

Every method name the package uses comes from here: no code outside a registration names a method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..cost.builders import Cost
from ..data.pools import DataSpec, ExperimentData
from ..modeling_jtln import JointImageClassifier
from ..training.arguments import JTLNTrainingArguments
from ..training.lora import LoraSettings
from ..training.trainer import JTLNTrainer
from ..utils.styles import METHOD_STYLES, MethodStyle


# -------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class MethodSettings:
    """What the methods read of a run, resolved once by the plan into a frozen value.

    ``data``: the data flags; ``cost``: the resolved cost (with its matrix when it is fixed before
    training); ``methods``: each registered method's own resolved settings (:attr:`Method.settings`,
    e.g. Co-Tuning's weight and warm-up), by name; ``lora``: the LoRA adapters every method trains on the
    backbone (:class:`~jtln_hf.training.lora.LoraSettings`; None: full fine-tuning).
    """

    data: DataSpec
    cost: Cost
    methods: Mapping[str, Any] = field(default_factory=dict)
    lora: LoraSettings | None = None

    def of(self, method: str) -> Any:
        """The resolved settings of ``method`` (None for a method without settings of its own)."""
        return self.methods.get(method)


@dataclass
class MethodRun:
    """One method on one seed: what its stage plan reads (``args`` carry the seed; ``options``: its own settings)."""

    model: JointImageClassifier
    exp: ExperimentData
    settings: MethodSettings
    args: JTLNTrainingArguments
    name: str  # "<method>-seed<seed>": the stage folders' prefix
    options: Any = None


@dataclass
class Trained:
    """What a stage plan returns: its last stage's trainer, a sentence for the card, warm-up steps."""

    last: JTLNTrainer
    description: str = ""
    warmup: int = 0


def _steps_text(length: str, warmup: int) -> str:
    """The default training budget of one run: its stage length, after its source-only warm-up steps."""
    return f"{warmup} warm-up + {length}" if warmup else length


@dataclass(frozen=True)
class Method:
    """A registered method: its stage plan, its row title in results tables, its figure label and colour.

    ``flags``: the flags only this kind of method reads (one given for a run without such a
    method is an error); ``uses_ot``: trains with the OT term; ``joint_batches``: trains mixed
    source/target batches (``--source_fraction`` applies); ``baseline``: the method every other
    one is compared with, seed by seed (one registration has it); ``trains_source``: trains the
    source head (the card says whether it did); ``steps_text(length, warmup)``: the run's training
    budget as tables state it (``length``: one stage, e.g. ``"500"``); ``settings(flags)``: the
    method's own settings resolved from the values of its ``flags`` (a name -> value mapping,
    ``pretrained`` included), a frozen value its plan reads as ``run.options``.
    """

    name: str
    plan: Callable[[MethodRun], Trained]
    title: str
    label: str
    colour: str
    flags: tuple[str, ...] = ()
    uses_ot: bool = False
    joint_batches: bool = False
    baseline: bool = False
    trains_source: bool = True
    steps_text: Callable[[str, int], str] = _steps_text
    settings: Callable[[Mapping[str, Any]], Any] | None = None


METHOD_REGISTRY: dict[str, Method] = {}


def register_method(name: str, title: str, label: str, colour: str, **options: Any) -> Callable:
    """Decorator: register ``plan(run) -> Trained`` as method ``name`` (``--mode name``, ``--methods name``).

    ``options`` are :class:`Method`'s facts. Its title, label and colour also go to
    :data:`jtln_hf.utils.styles.METHOD_STYLES`, where tables, figures and cards read them."""

    def register(plan: Callable[[MethodRun], Trained]) -> Callable[[MethodRun], Trained]:
        METHOD_REGISTRY[name] = Method(name, plan, title, label, colour, **options)
        METHOD_STYLES[name] = MethodStyle(title, label, colour, uses_ot=options.get("uses_ot", False))
        return plan

    return register


def method_names() -> tuple[str, ...]:
    """The registered method names, in registration order (the order of a comparison), read at call time."""
    return tuple(METHOD_REGISTRY)


def baseline_method() -> str:
    """The method every other one is compared with seed by seed (the registration with ``baseline=True``)."""
    baselines = [m.name for m in METHOD_REGISTRY.values() if m.baseline]
    if len(baselines) != 1:
        raise ValueError(f"exactly one registered method must have baseline=True, found {baselines}: register one.")
    return baselines[0]
