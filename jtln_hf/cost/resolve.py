"""A run's cost, resolved: the ``--cost`` builder run on the run's data (and model), normalised, and shuffled
when ``--cost_shuffle_seed`` asks (the shuffled-cost control).

:func:`resolve_cost` is the one place a run's C is made: before training for a fixed cost (the recipe's
plan), after the warm-up for a cost computed from the model (the ``jtln`` method), and again at each
refresh (:class:`jtln_hf.cost.refresh.CostRefresh`).
"""

from __future__ import annotations

import numpy as np

from ..data.fashion_mnist import FASHION_MNIST_PRIOR_PATH
from ..data.pools import ExperimentData
from ..data.splits import sample_shots
from .builders import Cost, CostInputs, FixedCost, Predict, build_cost
from .pseudo_labels import pseudo_labelled_target
from .shuffle import describe_shuffle, permute_columns, shuffle_cost_columns


def resolve_cost(
    cost: Cost, exp: ExperimentData, *, seed: int = 0, warmup_steps: int = 0, predict: Predict | None = None,
    permutation: np.ndarray | None = None,
) -> FixedCost:  # fmt: skip
    r"""The cost matrix C of ``cost.kind`` and a sentence saying how it was built.

    Looks the builder up in :data:`jtln_hf.cost.builders.COST_BUILDERS` (a file path otherwise);
    builders that read the model run ``predict`` (:func:`jtln_hf.methods.model_predictor`, after
    ``warmup_steps`` source-only steps; None for a cost fixed before training). With ``cost.shuffle_seed``
    (``--cost_shuffle_seed``), the built and normalised C's target columns are then permuted,
    :math:`C'_{:, j} = C_{:, p_j}`: :math:`p` drawn for this C by that seed
    (:func:`jtln_hf.cost.shuffle_cost_columns`), or ``permutation`` when given (a refresh keeps the first
    build's); the returned :class:`FixedCost` holds :math:`p` and says so. With ``cost.from_target_pool``
    (the ``--cost_from_target_pool`` diagnostic) the builder reads ``cost.samples_per_class`` images of each
    target class drawn by ``seed`` from ``exp.target_pool`` instead of the k shots.
    """
    target, agreement = exp.target, None
    if cost.unlabelled_target:
        if exp.target_pool is None or predict is None:
            raise ValueError("--cost_unlabelled_target: this run has no target pool or no model to label it with.")
        target, agreement = pseudo_labelled_target(exp.target, exp.target_pool, cost.unlabelled_target, predict, seed,
                                                   keep=cost.unlabelled_keep)  # fmt: skip
    if cost.from_target_pool:
        if exp.target_pool is None:
            raise ValueError("--cost_from_target_pool: this run's data has no target pool to read.")
        target = sample_shots(exp.target_pool, cost.samples_per_class, seed=seed)
    inputs = CostInputs(
        exp.source, target, list(exp.source_names), list(exp.target_names), predict=predict,
        prior=cost.prior or FASHION_MNIST_PRIOR_PATH, seed=seed, warmup_steps=warmup_steps,
        samples_per_class=cost.samples_per_class,
    )  # fmt: skip
    matrix, how = build_cost(cost.kind, inputs, cost.normalization)
    if cost.from_target_pool:
        how = (f"{how.removesuffix('.')}; a diagnostic (--cost_from_target_pool): the target images were drawn from "
               "the whole labelled target pool, not the k shots.")  # fmt: skip
    if agreement is not None:
        kept = f", the {cost.unlabelled_keep:.0%} surest of each class kept" if cost.unlabelled_keep < 1 else ""
        how = (f"{how.removesuffix('.')}; with {cost.unlabelled_target} unlabelled target images labelled by their "
               f"nearest shot centroid{kept} (--cost_unlabelled_target; {agreement:.0%} of those labels right).")  # fmt: skip
    if cost.refresh_steps:
        how = f"{how.removesuffix('.')}; recomputed from the current backbone every {cost.refresh_steps} joint steps."
    if cost.shuffle_seed is None:
        return FixedCost(matrix, how)
    if permutation is None:
        try:
            matrix, permutation = shuffle_cost_columns(matrix, cost.shuffle_seed)
        except ValueError as err:
            raise ValueError(f"--cost_shuffle_seed {cost.shuffle_seed}: {err}.") from None
    else:
        matrix = permute_columns(matrix, permutation)
    shuffled = describe_shuffle(cost.shuffle_seed, permutation, refreshed=bool(cost.refresh_steps))
    return FixedCost(matrix, f"{how} {shuffled}", permutation)


__all__ = ["resolve_cost"]
