"""The ``--cost`` registry: each name maps to the builder of the source-target cost matrix C.

A builder turns :class:`CostInputs` (the run's data, and a way to run the model on it) into the
raw ``(L_s, L_t)`` matrix and a sentence for the model card; :func:`build_cost` then normalises
it (``--cost_normalization``). ``--help`` lists the registry's names and help texts, and the
argument checks read its flags, so a new cost is one :func:`register_cost` call here. Any other
``--cost`` value is a ``.npy``/``.csv`` file (:func:`jtln_hf.cost.load_cost`). ``--cost_shuffle_seed``
then permutes the built C's target columns (:func:`jtln_hf.cost.shuffle_cost_columns`, in
:func:`jtln_hf.cost.resolve.resolve_cost`), the shuffled-cost control.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from ..data import sample_shots
from ..data.fashion_mnist import FASHION_MNIST_PRIOR_PATH
from ..data.labels import read_column
from ..data.stream_source import take_per_class
from . import cost_from_features, cost_from_relationship, load_cost, normalize_cost
from .pixels import PIXEL_SIDE, pixel_features
from .relationship import relationship_of
from .stability import STABLE_RESAMPLES, STABLE_THRESHOLD, UNSURE, bagged_cost, bootstrap_feature_costs
from .stability import describe_stability, stable_relation_cost

#: ``predict(dataset, fields) -> ({field: array}, labels)``: the model's outputs on a dataset's rows.
Predict = Callable[[datasets.Dataset, tuple[str, ...]], tuple[dict[str, np.ndarray], np.ndarray]]
#: Source-only steps before a model-computed cost, for a backbone trained from scratch.
DEFAULT_COST_WARMUP_STEPS = 200
#: A features-* cost reads at most this many times the rows it keeps from a streamed source (class imbalance).
STREAM_SCAN_FACTOR = 10
#: The cost when ``--cost`` is not given and the data has no prior: the paper's fc7-MKMMD.
DEFAULT_FEATURE_COST = "features-mmd"


@dataclass(frozen=True, eq=False)
class FixedCost:
    """A cost matrix resolved before training (a prior, a file, the constant control) and the card's sentence on it.

    ``permutation``: with ``--cost_shuffle_seed``, column ``j`` of ``matrix`` is column ``permutation[j]`` of
    C as built (a refresh applies the same one); None otherwise.
    """

    matrix: np.ndarray
    description: str
    permutation: np.ndarray | None = None


@dataclass(frozen=True)
class Cost:
    """The run's cost, resolved once from the flags (:func:`jtln_hf.cost.flags.plan_cost`).

    ``kind``: a registered ``--cost`` name or a ``.npy``/``.csv`` path (the data's default when
    not given: :func:`~jtln_hf.cost.flags.cost_kind`); ``normalization``: ``--cost_normalization``;
    ``warmup_steps``: source-only steps before a model cost is computed (0 for a fixed cost:
    :func:`~jtln_hf.cost.flags.default_warmup_steps`);
    ``samples_per_class``: ``--cost_samples_per_class``; ``refresh_steps``: ``--cost_refresh_steps`` (a
    model cost recomputed every that many joint steps; 0: computed once); ``prior``: the data's hand-written prior
    (:func:`~jtln_hf.cost.flags.data_prior`); ``fixed``: the matrix when it is resolved before training (``None`` for a
    model cost, or before the plan resolves it); ``shuffle_seed``: ``--cost_shuffle_seed`` (C's target
    columns permuted by that seed once built and normalised: the shuffled-cost control; None: not shuffled);
    ``from_target_pool``, ``warmup_restart``, ``unlabelled_target``, ``unlabelled_keep``: the ``--cost_*`` flags
    of those names (docs/cli.md; :mod:`jtln_hf.cost.pseudo_labels` for the last two).
    """

    kind: str
    normalization: str
    warmup_steps: int
    samples_per_class: int
    refresh_steps: int = 0
    prior: Path | None = None
    fixed: FixedCost | None = None
    shuffle_seed: int | None = None
    from_target_pool: bool = False
    warmup_restart: bool = False
    unlabelled_target: int = 0
    unlabelled_keep: float = 1.0

    @property
    def from_model(self) -> bool:
        """Whether the cost is computed from each seed's model (after :attr:`warmup_steps`)."""
        return is_model_cost(self.kind)

    @property
    def per_seed(self) -> bool:
        """Whether the cost is built from each seed's data (a model cost, or one from the images: ``pixels-mmd``)
        in the ``jtln`` method, not once before training."""
        return self.from_model or (self.kind in COST_BUILDERS and COST_BUILDERS[self.kind].from_images)

    @property
    def normalized(self) -> bool:
        """Whether ``--cost_normalization`` applies (a file cost is normalised too)."""
        builder = COST_BUILDERS.get(self.kind)
        return builder is None or builder.normalized

    @property
    def relations(self) -> bool:
        """Whether C can relate source and target classes (a file cost can), so that a shuffled C is a control."""
        builder = COST_BUILDERS.get(self.kind)
        return builder is None or builder.relations


@dataclass
class CostInputs:
    """What a cost builder may read.

    ``source`` / ``target`` are the source training set (a stream with ``--source_streaming``: a
    features-* cost then reads its first ``samples_per_class`` images of each class, from at most
    :data:`STREAM_SCAN_FACTOR` times that many rows) and the k-shot target set (labels in
    their own spaces); ``predict`` runs the (warmed-up) model on a dataset, None before a model
    exists; ``prior`` is a hand-written prior file, its rows and columns looked up by class name
    (the data's own, else the shipped Fashion-MNIST prior, which serves any classes it names).
    """

    source: datasets.Dataset | datasets.IterableDataset
    target: datasets.Dataset
    source_names: list[str]
    target_names: list[str]
    predict: Predict | None = None
    prior: Path = FASHION_MNIST_PRIOR_PATH
    seed: int = 0
    warmup_steps: int = 0
    samples_per_class: int = 200


@dataclass(frozen=True)
class CostBuilder:
    """One ``--cost`` name: its builder, its ``--help`` text and what it needs.

    ``from_model``: computed from the model (per seed, after ``--cost_warmup_steps`` source-only
    steps); ``warmup_when_pretrained``: whether those steps also default to 200 on a pretrained
    backbone (features are meaningful without them, a source head is not); ``from_images``: computed from
    each seed's images without the model (per seed, in the ``jtln`` method, with no warm-up unless one is
    given, never refreshed: the images do not change); ``samples``: reads ``--cost_samples_per_class``;
    ``normalized``: ``--cost_normalization`` applies; ``relations``: C can
    relate source and target classes (False for a control without class structure, which
    ``--cost_shuffle_seed`` refuses: there is nothing to shuffle).
    """

    name: str
    help: str
    build: Callable[[CostInputs], tuple[np.ndarray, str]]
    from_model: bool = False
    warmup_when_pretrained: bool = True
    from_images: bool = False
    samples: bool = False
    normalized: bool = True
    relations: bool = True


COST_BUILDERS: dict[str, CostBuilder] = {}


def register_cost(name: str, help: str, **flags: bool) -> Callable:
    """Decorator: register ``build(inputs) -> (C, description)`` as ``--cost name``."""

    def register(build: Callable[[CostInputs], tuple[np.ndarray, str]]) -> Callable:
        COST_BUILDERS[name] = CostBuilder(name, help, build, **flags)
        return build

    return register


def _after(inputs: CostInputs) -> str:
    return f"after {inputs.warmup_steps} source-only warm-up steps" if inputs.warmup_steps else "from the initial weights"


def _needs_model(inputs: CostInputs, name: str) -> Predict:
    if inputs.predict is None:
        raise ValueError(f"--cost {name} is computed from a model: pass CostInputs.predict.")
    return inputs.predict


@register_cost("prior", "a hand-written prior, rows and columns looked up by class name (shipped for Fashion-MNIST)")
def _prior(inputs: CostInputs) -> tuple[np.ndarray, str]:
    try:
        raw = load_cost(inputs.prior, inputs.source_names, inputs.target_names)
    except ValueError as err:
        raise ValueError(f"--cost prior ({inputs.prior.name}) does not fit these classes ({err}): pass a "
                         "features-* cost or a .npy/.csv file.") from None  # fmt: skip
    return raw, f"Hand-written prior relation between the classes ({inputs.prior.name})"


def _source_sample(inputs: CostInputs) -> datasets.Dataset:
    """``samples_per_class`` source images of each class (seeded; of a stream, its first ones of each class)."""
    if isinstance(inputs.source, datasets.IterableDataset):
        per_class, classes = inputs.samples_per_class, len(inputs.source_names)
        return take_per_class(inputs.source, per_class, max_rows=STREAM_SCAN_FACTOR * per_class * classes)
    smallest = int(np.bincount(read_column(inputs.source, "label")).min())
    return sample_shots(inputs.source, min(inputs.samples_per_class, smallest), seed=inputs.seed)


def _pooled_features(inputs: CostInputs, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pooled backbone features and labels of the source sample and of the labelled target images."""
    predict, source = _needs_model(inputs, name), _source_sample(inputs)
    (xs, ys), (xt, yt) = [
        (outputs["pooler_output"], labels)
        for outputs, labels in (predict(ds, ("pooler_output",)) for ds in (source, inputs.target))
    ]
    return xs, ys, xt, yt


def _feature_builder(distance: str) -> Callable[[CostInputs], tuple[np.ndarray, str]]:
    def build(inputs: CostInputs) -> tuple[np.ndarray, str]:
        xs, ys, xt, yt = _pooled_features(inputs, f"features-{distance}")
        raw = cost_from_features(
            xs, ys, xt, yt, method=distance, num_source_labels=len(inputs.source_names),
            num_target_labels=len(inputs.target_names), seed=inputs.seed, normalize="none",  # build_cost normalises
        )  # fmt: skip
        return raw, (f"{distance} distance between the pooled backbone features of each source class ({len(xs)} "
                     f"images) and each target class ({len(xt)} labelled images), {_after(inputs)}")  # fmt: skip

    return build


for _distance, _help in (("ot", "exact OT (W2) between the classes' pooled features"),
                         ("mmd", "multi-kernel MMD between them (the paper's fc7-MKMMD)"),
                         ("centroid", "distance between their centroids")):  # fmt: skip
    register_cost(f"features-{_distance}", _help, from_model=True, warmup_when_pretrained=False, samples=True)(
        _feature_builder(_distance)
    )


def _resampled(inputs: CostInputs, name: str) -> tuple[np.ndarray, str]:
    """features-mmd of :data:`STABLE_RESAMPLES` bootstrap resamples of the images, and the sentence's start."""
    xs, ys, xt, yt = _pooled_features(inputs, name)
    costs = bootstrap_feature_costs(xs, ys, xt, yt, method="mmd", num_source_labels=len(inputs.source_names),
                                    num_target_labels=len(inputs.target_names), seed=inputs.seed)  # fmt: skip
    return costs, (f"between the pooled backbone features of each source class ({len(xs)} images) and each target "
                   f"class ({len(xt)} labelled images)")  # fmt: skip


@register_cost("features-mmd-stable", "features-mmd's relations kept only where stable over bootstrap resamples "
               "of the images (0 related, 1 not, the rest neutral)", from_model=True, warmup_when_pretrained=False,
               samples=True)  # fmt: skip
def _stable(inputs: CostInputs) -> tuple[np.ndarray, str]:
    costs, between = _resampled(inputs, "features-mmd-stable")
    raw = stable_relation_cost(costs)
    if not (raw == 0).any():  # every column neutral: normalised, C would be all zeros and the OT term a constant
        raise ValueError(f"--cost features-mmd-stable: no relation between the classes held in {STABLE_THRESHOLD:.0%} "
                         f"of {STABLE_RESAMPLES} resamples of the images {_after(inputs)}: pass features-mmd (the "
                         "graded cost), more labelled images per class, or a longer --cost_warmup_steps.")  # fmt: skip
    return raw, (f"mmd relations {between}, kept where {STABLE_THRESHOLD:.0%} of {STABLE_RESAMPLES} bootstrap "
                 f"resamples of the images agree (0 related, 1 unrelated, {UNSURE} unsure; a target class with no "
                 f"stable relation neutral), {_after(inputs)}: "
                 f"{describe_stability(raw, inputs.source_names, inputs.target_names)}")  # fmt: skip


@register_cost("features-mmd-bagged", "features-mmd averaged over bootstrap resamples of the images (bagging)",
               from_model=True, warmup_when_pretrained=False, samples=True)  # fmt: skip
def _bagged(inputs: CostInputs) -> tuple[np.ndarray, str]:
    costs, between = _resampled(inputs, "features-mmd-bagged")
    return bagged_cost(costs), (f"mmd distance {between}, averaged over {STABLE_RESAMPLES} bootstrap resamples of "
                                f"the images, {_after(inputs)}")  # fmt: skip


@register_cost("pixels-mmd", f"multi-kernel MMD between the classes' {PIXEL_SIDE}x{PIXEL_SIDE} thumbnail pixels: "
               "no network, no warm-up (for small centred images)", from_images=True, samples=True)  # fmt: skip
def _pixels(inputs: CostInputs) -> tuple[np.ndarray, str]:
    (xs, ys, skipped_s), (xt, yt, skipped_t) = pixel_features(_source_sample(inputs)), pixel_features(inputs.target)
    raw = cost_from_features(xs, ys, xt, yt, method="mmd", num_source_labels=len(inputs.source_names),
                             num_target_labels=len(inputs.target_names), seed=inputs.seed,
                             normalize="none")  # fmt: skip
    skipped = f"; {skipped_s + skipped_t} unreadable images left out" if skipped_s + skipped_t else ""
    return raw, (f"mmd distance between the {PIXEL_SIDE}x{PIXEL_SIDE} thumbnail pixels of each source class "
                 f"({len(xs)} images) and each target class ({len(xt)} labelled images), "
                 f"no network{skipped}")  # fmt: skip


@register_cost("relationship", "-log p(y_s|y_t) from the source head on the labelled target images", from_model=True)
def _relationship(inputs: CostInputs) -> tuple[np.ndarray, str]:
    relationship = relationship_of(_needs_model(inputs, "relationship"), inputs.target, len(inputs.target_names))
    raw = cost_from_relationship(relationship, normalize="none")
    return raw, (f"-log p(y_s | y_t): the source head's mean prediction on the {len(inputs.target)} labelled images "
                 f"of each target class (Co-Tuning's category relationship), {_after(inputs)}")  # fmt: skip


@register_cost("constant", "every entry 1: a control without class structure", normalized=False, relations=False)
def _constant(inputs: CostInputs) -> tuple[np.ndarray, str]:
    return np.ones((len(inputs.source_names), len(inputs.target_names))), "Constant cost (every entry 1): a control with no class structure"


def load_file_cost(path: str, inputs: CostInputs) -> tuple[np.ndarray, str]:
    """``--cost PATH``: a ``.npy`` or labelled ``.csv`` matrix, rows and columns looked up by class name."""
    if not Path(path).is_file():
        raise ValueError(f"--cost {path}: no such file; pass an existing .npy/.csv cost file.")
    try:
        raw = load_cost(path, inputs.source_names, inputs.target_names)
    except ValueError as err:
        raise ValueError(f"--cost {path}: {err}") from None
    return raw, f"Loaded from {Path(path).name}"


def build_cost(kind: str, inputs: CostInputs, normalization: str) -> tuple[np.ndarray, str]:
    """The cost matrix C for ``--cost kind`` (a registered name or a file) and a sentence saying how it was built."""
    builder = COST_BUILDERS.get(kind)
    raw, how = builder.build(inputs) if builder else load_file_cost(kind, inputs)
    if builder is not None and not builder.normalized:
        return raw, f"{how}."
    return normalize_cost(raw, normalization), f"{how}; normalisation: {normalization}."


def is_model_cost(kind: str) -> bool:
    """Whether ``--cost kind`` is computed from the model (per seed), not fixed before training."""
    return kind in COST_BUILDERS and COST_BUILDERS[kind].from_model


__all__ = [
    "COST_BUILDERS",
    "DEFAULT_COST_WARMUP_STEPS",
    "DEFAULT_FEATURE_COST",
    "STREAM_SCAN_FACTOR",
    "CostBuilder",
    "CostInputs",
    "Cost",
    "FixedCost",
    "build_cost",
    "is_model_cost",
    "load_file_cost",
    "register_cost",
]
