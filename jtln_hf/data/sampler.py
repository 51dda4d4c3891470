"""Paired batches: every per-device batch holds the configured share of source rows."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from .domains import SOURCE, TARGET, check_domains


def source_rows_per_batch(batch_size: int, source_fraction: float) -> int:
    """Source rows in a batch: ``batch_size x source_fraction`` rounded half up.

    Python's ``round`` rounds half to even, which gave batch 2 at fraction 0.25 no source row;
    every place that needs the count (sampler, trainer, recipe, card) calls this function.
    """
    return int(math.floor(batch_size * source_fraction + 0.5))


class PairedBatchSampler(Sampler[list[int]]):
    """Per-device batches of exactly ``n_source`` source rows and ``n_target`` target rows.

    Each epoch visits the source rows once in a fresh random order (the last batch is topped up
    with source rows it does not already hold, so no batch repeats a row unless the source set is
    smaller than a batch); the target rows, usually far
    fewer, are re-sampled as a stream of fresh permutations, so every target image is seen equally
    often (to within one). The order depends only on ``seed`` and the epoch (``set_epoch``, which
    Trainer calls), so a resumed run replays the same batches.

    Several processes: rows are drawn as *global* batches of ``num_replicas x batch_size`` rows
    (``num_replicas x n_source`` source and ``num_replicas x n_target`` target rows), and each is
    yielded as ``num_replicas`` consecutive per-device batches, each with the exact ratio.
    Accelerate's ``BatchSamplerShard`` hands batch ``i`` to process ``i % num_replicas``, so every
    process gets its slice of every global batch, and 2 processes x batch ``b`` see exactly the rows
    of 1 process x batch ``2b``.

    Args:
        domains: the ``domain`` column of the training dataset (0 source, 1 target).
        batch_size: rows per per-device batch.
        source_fraction: share of source rows per batch; ``n_source`` = :func:`source_rows_per_batch`.
        seed: base seed.
        drop_last: drop the last, incomplete global source batch instead of topping it up.
        num_replicas: number of processes the batches are sharded over.
    """

    def __init__(
        self,
        domains: Sequence[int],
        batch_size: int,
        source_fraction: float = 0.5,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
    ) -> None:
        if not 0.0 <= source_fraction <= 1.0:
            raise ValueError(f"source_fraction must be in [0, 1], got {source_fraction}.")
        if batch_size < 1 or num_replicas < 1:
            raise ValueError(f"batch_size and num_replicas must be >= 1, got {batch_size} and {num_replicas}.")
        domains = np.asarray(domains)
        check_domains(domains)
        self.source_rows = np.flatnonzero(domains == SOURCE)
        self.target_rows = np.flatnonzero(domains == TARGET)
        self.n_source = source_rows_per_batch(batch_size, source_fraction)
        self.n_target = batch_size - self.n_source
        if self.n_source and not len(self.source_rows):
            raise ValueError(
                f"source_fraction={source_fraction} asks for source rows but the training set has none: "
                "add source data or set source_fraction=0 (target-only training)."
            )
        if self.n_target and not len(self.target_rows):
            raise ValueError(
                f"source_fraction={source_fraction} asks for target rows but the training set has none: "
                "JTLN needs labelled target images (or set source_fraction=1 for source-only training)."
            )
        self.batch_size, self.seed, self.drop_last, self.epoch = batch_size, seed, drop_last, 0
        self.num_replicas = num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _num_global_batches(self) -> int:
        if self.n_source:
            rounding = math.floor if self.drop_last else math.ceil
            return max(1, rounding(len(self.source_rows) / (self.n_source * self.num_replicas)))
        return max(1, math.ceil(len(self.target_rows) / (self.n_target * self.num_replicas)))

    def __len__(self) -> int:
        return self._num_global_batches() * self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        source_order = rng.permutation(self.source_rows)
        target_stream = _permutation_stream(self.target_rows, rng)
        n_s, n_t = self.n_source * self.num_replicas, self.n_target * self.num_replicas
        for b in range(self._num_global_batches()):
            source = source_order[b * n_s : (b + 1) * n_s]
            if len(source) < n_s:  # last batch: top up with rows it does not hold yet
                source = np.concatenate([source, rng.permutation(np.setdiff1d(self.source_rows, source))])[:n_s]
                if len(source) < n_s:  # fewer source rows than one global batch: rows must repeat
                    stream = _permutation_stream(self.source_rows, rng)
                    source = np.concatenate([source, [next(stream) for _ in range(n_s - len(source))]])
            target = [next(target_stream) for _ in range(n_t)]
            for d in range(self.num_replicas):
                rows = source[d * self.n_source : (d + 1) * self.n_source].tolist()
                yield rows + target[d * self.n_target : (d + 1) * self.n_target]


def _permutation_stream(rows: np.ndarray, rng: np.random.Generator) -> Iterator[int]:
    while len(rows):
        yield from (int(i) for i in rng.permutation(rows))
