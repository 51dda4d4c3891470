"""The ``--cost*`` flags resolved once into a :class:`~jtln_hf.cost.builders.Cost`: the cost's kind, its warm-up,
refresh and shuffle, and the data's hand-written prior, with the defaults that depend on the data and the backbone.

The matrix itself is built later (:func:`jtln_hf.cost.resolve.resolve_cost`), from the registry in
:mod:`jtln_hf.cost.builders`.
"""

from __future__ import annotations

from pathlib import Path

from ..data.known import known_dataset
from ..data.pools import DataSpec, chosen_classes
from ..data.splits import resolve_classes
from . import load_cost
from .builders import COST_BUILDERS, DEFAULT_COST_WARMUP_STEPS, DEFAULT_FEATURE_COST, Cost, is_model_cost


def data_prior(data: DataSpec) -> Path | None:
    """The hand-written prior of the run's data (Fashion-MNIST's), else None; it serves any classes it names."""
    known = [k for k in map(known_dataset, data.specs) if k is not None and k.prior_cost is not None]
    return known[0].prior_cost if known else None


def prior_covers(prior: Path, data: DataSpec) -> bool:
    """Whether ``prior`` names every class the run will use: its rows the source classes, its columns the target ones.

    The classes as the data will select them (:func:`jtln_hf.data.pools.load_pools`), resolved from the
    known dataset's label names: ``--target_classes`` (names or ids; default the dataset's split) and
    ``--source_classes`` (default every other class). Class flags that do not resolve count as covered:
    the data's own check names them first.
    """
    known = known_dataset(data.specs[0])
    if known is None or known.class_names is None:
        return True
    names = known.class_names
    try:
        sources, targets = [[names[i] for i in resolve_classes(side, names)] for side in chosen_classes(data, names)]
    except ValueError:
        return True
    try:
        load_cost(prior, sources, targets)
    except ValueError:
        return False
    return True


def cost_kind(cost: str | None, data: DataSpec) -> str:
    """``--cost``, or its default: the prior of one dataset split by class if it has one that covers the chosen
    classes (:func:`prior_covers`), else :data:`DEFAULT_FEATURE_COST` (the default for data without a prior)."""
    if cost is not None:
        return cost
    prior = None if data.two_datasets else data_prior(data)
    return "prior" if prior is not None and prior_covers(prior, data) else DEFAULT_FEATURE_COST


def default_warmup_steps(given: int | None, *, pretrained: bool = False, needs_source_head: bool = True) -> int:
    """Source-only steps before the model defines a cost or a relationship (``--cost_warmup_steps``).

    ``given`` when not None; else 0 when the backbone is pretrained and only its features are read
    (``needs_source_head`` false), :data:`DEFAULT_COST_WARMUP_STEPS` otherwise (a source head must
    know its task first).
    """
    if given is not None:
        return given
    return 0 if pretrained and not needs_source_head else DEFAULT_COST_WARMUP_STEPS


def plan_cost(
    cost: str | None, data: DataSpec, *, normalization: str, warmup_steps: int | None, samples_per_class: int,
    pretrained: bool, refresh_steps: int = 0, shuffle_seed: int | None = None, from_target_pool: bool = False,
    warmup_restart: bool = False, unlabelled_target: int = 0, unlabelled_keep: float = 1.0,
) -> Cost:  # fmt: skip
    """The cost flags resolved once into a :class:`Cost` (kind, warm-up, refresh, prior, shuffle; no matrix yet).

    ``cost`` and ``warmup_steps`` as given (None: their defaults, :func:`cost_kind` and
    :func:`default_warmup_steps`; a cost that needs no model has no refresh, and a warm-up only when one is given:
    the same source-only steps as a model cost's run, to compare the two costs after equal training).
    ``shuffle_seed`` (``--cost_shuffle_seed``) must be an integer >= 0, for a cost with relations.
    ``from_target_pool``: the diagnostic upper bound; ``warmup_restart``: for a model cost with a warm-up.
    """
    kind = cost_kind(cost, data)
    warmup = warmup_steps or 0  # a fixed cost: none unless asked (the prior after the warm-up of a model cost's run)
    if is_model_cost(kind):
        warmup = default_warmup_steps(warmup_steps, pretrained=pretrained,
                                      needs_source_head=COST_BUILDERS[kind].warmup_when_pretrained)  # fmt: skip
    refresh = refresh_steps if is_model_cost(kind) else 0
    planned = Cost(kind, normalization, warmup, samples_per_class, refresh, data_prior(data), shuffle_seed=shuffle_seed,
                   from_target_pool=from_target_pool, warmup_restart=warmup_restart,
                   unlabelled_target=unlabelled_target, unlabelled_keep=unlabelled_keep)  # fmt: skip
    if unlabelled_target < 0 or not 0.0 < unlabelled_keep <= 1.0:
        raise ValueError(f"--cost_unlabelled_target must be >= 0 and --cost_unlabelled_keep in (0, 1], got "
                         f"{unlabelled_target} and {unlabelled_keep}.")  # fmt: skip
    if unlabelled_keep < 1.0 and not unlabelled_target:
        raise ValueError("--cost_unlabelled_keep chooses among the images of --cost_unlabelled_target N: add it, or "
                         "drop --cost_unlabelled_keep.")  # fmt: skip
    if warmup_restart and not (is_model_cost(kind) and warmup):
        raise ValueError(f"--cost_warmup_restart discards the source-only warm-up once it has given C, and --cost "
                         f"{kind} with {warmup} warm-up steps has none to discard: drop it, or use a features-* cost.")
    if shuffle_seed is not None and shuffle_seed < 0:
        raise ValueError(f"--cost_shuffle_seed must be >= 0 (a numpy seed), got {shuffle_seed}.")
    if shuffle_seed is not None and not planned.relations:
        raise ValueError(f"--cost_shuffle_seed permutes C's target columns, and --cost {kind} relates no class to "
                         "another: drop --cost_shuffle_seed, or pass a cost with relations.")  # fmt: skip
    return planned


__all__ = ["cost_kind", "data_prior", "default_warmup_steps", "plan_cost", "prior_covers"]
