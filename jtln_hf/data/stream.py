"""Paired batches from a streamed source and an in-memory target, resumable to the row.

:class:`PairedStream` yields whole collated batches of exactly ``n_source`` streamed source rows
and ``n_target`` target rows, forever. Each process reads a disjoint part of the source
(``datasets.distributed.split_dataset_by_node``) and each data-loader worker a disjoint part of
that (datasets gives each worker its own shards). The source is shuffled by a buffer of our own
rather than ``IterableDataset.shuffle``: datasets' buffer is lost on resume (its ``state_dict``
holds no buffer content), ours is rebuilt exactly by re-reading the stream from the oldest row
still in the buffer, so a resumed stream yields the very batches an uninterrupted one does.
"""

from __future__ import annotations

import hashlib
import itertools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from .bad_images import StandIns
from .checks import check_images
from .domains import SOURCE, TARGET
from .stream_source import row_identity
from .transforms import BAD_IMAGES_KEY, Replace, collate

#: Stream rows tried in place of one unreadable source row before giving up (a stream of unreadable images).
MAX_SOURCE_STAND_INS = 10_000

_STATE_VERSION = 1


def datasets_epoch(seed: int, epoch: int) -> int:
    """The ``IterableDataset.set_epoch`` value of our ``epoch``: datasets orders shards by it, so seed it (>= 1)."""
    digest = hashlib.blake2b(repr((seed, epoch)).encode(), digest_size=4).digest()
    return 1 + int.from_bytes(digest, "little")


class PairedStream(torch.utils.data.IterableDataset):
    """Collated batches of ``n_source`` streamed source rows and ``n_target`` in-memory target rows.

    Every batch is ``{"pixel_values", "labels", "domain"}`` (and ``"row"`` with ``return_rows``:
    the rows' identities, :func:`~jtln_hf.data.stream_source.row_identity` for source rows, the
    target index for target rows). The source is read in epochs: epoch ``e`` orders the shards by
    ``datasets_epoch(seed, e)`` and shuffles rows through a buffer of ``buffer_size`` rows
    seeded by ``(seed, rank, worker, e)``; when it ends, epoch ``e + 1`` starts. Target rows
    are drawn as fresh permutations seeded by ``(seed, rank, worker, k)``, so every target image is
    seen equally often (to within one). Use it with :func:`~jtln_hf.data.stream_loader.streaming_dataloader`.

    Parameters
    ----------
    source : datasets.IterableDataset
        ``image`` and ``label`` columns (:func:`~jtln_hf.data.stream_source.open_streaming_source`).
    target : datasets.Dataset or None
        ``image`` and ``label`` columns; None only when ``n_target`` is 0 (source-only warm-up).
    n_source, n_target : int
        Rows of each domain per batch (:func:`~jtln_hf.data.sampler.source_rows_per_batch`).
    transform : callable
        The batch transform (:func:`~jtln_hf.data.transforms.make_batch_transform`).
    seed : int
        Seed of shard order, buffer and target draws.
    buffer_size : int
        Source rows in the shuffle buffer (per worker).
    rank, world_size : int
        This process and the number of processes; each reads a disjoint part of the source.
    return_rows : bool
        Add the rows' identities to every batch (for checks; a model's forward does not take them).
    skip_bad_images : bool
        A source row whose image cannot be decoded is skipped for the next row of the stream, a
        target row replaced as in a joint dataset (:class:`~jtln_hf.data.bad_images.StandIns`);
        both are recorded under ``bad_images``. False: such a row raises, naming it.
    """

    def __init__(self, source: datasets.IterableDataset, target: datasets.Dataset | None, *, n_source: int,
                 n_target: int, transform: Callable[[dict], dict], seed: int = 0, buffer_size: int = 1000,
                 rank: int = 0, world_size: int = 1, return_rows: bool = False,
                 skip_bad_images: bool = False) -> None:  # fmt: skip
        if n_source < 1 or n_target < 0:
            raise ValueError(f"a streamed source needs n_source >= 1 and n_target >= 0, got {n_source} and {n_target}.")
        if buffer_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"buffer_size must be >= 1 and 0 <= rank < world_size, got {buffer_size}, {rank}, {world_size}.")
        if n_target and (target is None or len(target) == 0):
            raise ValueError(f"n_target={n_target} asks for target rows but the target set is empty: pass labelled target images.")
        if n_target:
            check_images(target, "the target dataset")
            target = target.select_columns(["image", "label"]).cast_column("image", datasets.Image(decode=False))
        self.shards = source.num_shards
        if world_size > 1 and self.shards % world_size:
            warnings.warn(
                f"the streamed source has {self.shards} shards, not a multiple of {world_size} processes: every "
                f"process reads the whole stream and keeps 1/{world_size} of it ({world_size}x the reading and "
                f"download); write the source as a multiple of {world_size} shards to read each shard once.",
                stacklevel=2,
            )
        self.node_source = split_dataset_by_node(source, rank=rank, world_size=world_size) if world_size > 1 else source
        self.node_shards = self.shards // world_size if self.shards % world_size == 0 else self.shards
        self.target, self.n_source, self.n_target, self.transform = target, n_source, n_target, transform
        self.seed, self.buffer_size, self.rank, self.world_size = seed, buffer_size, rank, world_size
        self.return_rows, self.skip_bad_images = return_rows, skip_bad_images
        self._resume: dict[str, Any] | None = None
        self._live: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Where this worker's stream stands after the last batch it yielded (a plain dict, JSON-able)."""
        if self._live is None:
            return dict(self._resume) if self._resume is not None else {"version": _STATE_VERSION, "fresh": True}
        live = self._live
        return {"version": _STATE_VERSION, "fresh": False, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "worker": live["worker"], "workers": live["workers"],
                "epoch": live["epoch"], "target_drawn": live["target_drawn"], "batches": live["batches"],
                "source": live["buffer"].snapshot()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue, at the next ``__iter__``, right after the batch ``state`` was taken at."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"stream state version {state.get('version')} is not {_STATE_VERSION}: resume with the same jtln_hf.")
        if not state["fresh"]:
            ours = {"seed": self.seed, "rank": self.rank, "world_size": self.world_size}
            theirs = {k: state[k] for k in ours}
            if ours != theirs:
                raise ValueError(f"the stream state was saved with {theirs}, this run has {ours}: resume with the same settings.")
        self._resume, self._live = state, None

    # -------------------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        resume = self._resume if self._resume is not None and not self._resume["fresh"] else None
        if resume is not None and (resume["worker"], resume["workers"]) != (worker, workers):
            raise ValueError(
                f"the stream state was saved by data-loader worker {resume['worker']} of {resume['workers']}, "
                f"this is worker {worker} of {workers}: resume with the same --dataloader_num_workers."
            )
        self._resume = None  # a second __iter__ starts afresh, as a torch DataLoader's next epoch would
        live = {"worker": worker, "workers": workers, "epoch": resume["epoch"] if resume else 0,
                "target_drawn": resume["target_drawn"] if resume else 0, "batches": resume["batches"] if resume else 0}  # fmt: skip
        self._live = live
        rows = self._source_rows(live, resume["source"] if resume else None)
        while True:
            source = [next(rows, None) for _ in range(self.n_source)]
            if source[0] is None:  # this worker has no shard (more workers than shards): datasets warned
                return
            target_ids = [self._target_row(live["target_drawn"] + i, worker) for i in range(self.n_target)]
            live["target_drawn"] += self.n_target
            live["batches"] += 1
            yield self._collate(source, target_ids, rows)

    def _source_rows(self, live: dict[str, Any], resume: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
        while True:
            view = self.node_source.with_format(None)  # a view with its own epoch (set_epoch is shared otherwise)
            view.set_epoch(datasets_epoch(self.seed, live["epoch"]))
            rng = np.random.default_rng([self.seed, 2, self.rank, live["worker"], live["epoch"]])
            buffer = _ShuffleBuffer(self.buffer_size, rng, view)
            live["buffer"] = buffer
            produced = 0
            for example in buffer.rows(resume):
                produced += 1
                yield example
            resume = None
            if not produced and not buffer.read:
                if live["worker"] >= self.node_shards:
                    return
                raise ValueError(
                    "the streamed source yields no rows on this process: check the source split and --source_classes "
                    f"(process {self.rank} of {self.world_size}, epoch {live['epoch']})."
                )
            live["epoch"] += 1

    def _target_row(self, draw: int, worker: int) -> int:
        n = len(self.target)
        cycle, position = divmod(draw, n)
        if getattr(self, "_perm_key", None) != (worker, cycle):
            self._perm_key = (worker, cycle)
            self._perm = np.random.default_rng([self.seed, 1, self.rank, worker, cycle]).permutation(n)
        return int(self._perm[position])

    def _collate(self, source: list[dict[str, Any]], target_ids: list[int],
                 stream: Iterator[dict[str, Any]]) -> dict[str, torch.Tensor]:  # fmt: skip
        images = [ex["image"] for ex in source]
        labels = [int(ex["label"]) for ex in source]
        rows = [row_identity(image) for image in images]
        if target_ids:
            picked = self.target[target_ids]
            images, labels, rows = images + picked["image"], labels + list(picked["label"]), rows + target_ids
        domains = [SOURCE] * len(source) + [TARGET] * len(target_ids)
        batch = {"image": images, "label": labels, "domain": domains, "row": rows}
        keys = ("pixel_values", "labels", "domain")
        if self.skip_bad_images:  # the next stream row stands in for a source row, the transform's records come along
            out, keys = self.transform(batch, replace=self._stand_ins(stream)), keys + (BAD_IMAGES_KEY,)
        else:
            out = self.transform(batch)
        batch = collate([{k: out[k][i] for k in keys} for i in range(len(rows))])
        if self.return_rows:
            batch["row"] = torch.tensor(out.get("row", rows), dtype=torch.long)
        return batch

    def _stand_ins(self, stream: Iterator[dict[str, Any]]) -> Replace:
        """Stand-ins of an unreadable row: the stream's next rows (source), :class:`StandIns` (target)."""
        if getattr(self, "_target_stand_ins", None) is None and self.target is not None:
            self._target_stand_ins = StandIns(self.target, self.seed, domain=TARGET)

        def replace(domain: int, row: int) -> Iterator[dict[str, Any]]:
            if domain == TARGET:
                return self._target_stand_ins(domain, row)
            return ({"image": ex["image"], "label": int(ex["label"]), "row": row_identity(ex["image"])}
                    for ex in itertools.islice(stream, MAX_SOURCE_STAND_INS))  # fmt: skip

        return replace


class _ShuffleBuffer:
    """A streaming shuffle buffer whose state is a few numbers, not the buffered rows.

    Rows are read in order (read index ``j``); the buffer fills to ``size`` rows, then each
    read row replaces a uniformly drawn one, which is yielded; at the end of the stream the rest
    is drained in random order. The snapshot names the rows in the buffer by read index, with
    datasets' stream state before the oldest of them (the anchor) and the generator's state: on
    resume the stream is re-read from the anchor and the buffer refilled with exactly those rows
    (reading, not decoding, at most the span the oldest buffered row has waited).
    """

    def __init__(self, size: int, rng: np.random.Generator, view: datasets.IterableDataset) -> None:
        self.size, self.rng, self.view = size, rng, view
        self.slots: list[tuple[int, dict[str, Any]]] = []
        self.before: dict[int, dict | None] = {}  # read index -> datasets state before reading it
        self.read, self.after = 0, None

    def snapshot(self) -> dict[str, Any]:
        if self.before:
            anchor_read = next(iter(self.before))  # insertion order: the oldest buffered row
            anchor = self.before[anchor_read]
        else:
            anchor_read, anchor = self.read, self.after
        return {"read": self.read, "anchor_read": anchor_read, "anchor": anchor,
                "slots": [j for j, _ in self.slots], "rng": self.rng.bit_generator.state}  # fmt: skip

    def rows(self, resume: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
        replay_until, wanted = 0, {}
        if resume is not None:
            if resume["anchor"] is not None:
                self.view.load_state_dict(resume["anchor"])
            self.read, self.after = resume["anchor_read"], resume["anchor"]
            replay_until = resume["read"]
            wanted = {j: slot for slot, j in enumerate(resume["slots"])}
            self.slots = [None] * len(resume["slots"])
            if self.read == replay_until:  # nothing to re-read (the buffer was empty)
                self.rng.bit_generator.state = resume["rng"]
        for example in self.view:
            j, before = self.read, self.after
            self.read, self.after = j + 1, self.view.state_dict()
            if j < replay_until:
                if j in wanted:
                    self.slots[wanted[j]] = (j, example)
                    self.before[j] = before
                if self.read == replay_until:  # the buffer is as it was: draw on from the saved generator
                    self.rng.bit_generator.state = resume["rng"]
                continue
            self.before[j] = before
            if len(self.slots) < self.size:
                self.slots.append((j, example))
                continue
            k = int(self.rng.integers(self.size))
            (out_j, out), self.slots[k] = self.slots[k], (j, example)
            del self.before[out_j]
            yield out
        while self.slots:
            out_j, out = self.slots.pop(int(self.rng.integers(len(self.slots))))
            del self.before[out_j]
            yield out
