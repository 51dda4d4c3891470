"""The data loader of a :class:`~jtln_hf.data.stream.PairedStream`: each process iterates its own, resumably.

Accelerate must not prepare this loader: with several processes, ``prepare_data_loader`` wraps
a torch ``IterableDataset`` in ``IterableDatasetShard`` (every process reads every batch and
keeps a slice, breaking the per-device ratio) or, with ``dispatch_batches``, reads on process 0
and sends slices to the others. A :class:`PairedStream` already reads this process's part of
the source and yields whole per-device batches, so the loader is used as it is; the trainer
moves batches to its device (``Trainer._prepare_inputs``). torchdata's ``StatefulDataLoader``
keeps each worker's :meth:`PairedStream.state_dict`, so a checkpoint saves where every worker's
stream stands (:func:`save_stream_state`) and a resumed run continues there
(:func:`load_stream_state`) instead of re-reading the skipped batches.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

from .stream import PairedStream

#: The file of a checkpoint folder holding process ``rank``'s stream position.
STREAM_STATE_FILE = "stream_state_rank{rank}.json"


def streaming_dataloader(
    stream: PairedStream,
    *,
    num_workers: int = 0,
    prefetch_factor: int | None = None,
    persistent_workers: bool = False,
    pin_memory: bool = False,
    multiprocessing_context: Any = None,
) -> StatefulDataLoader:
    """A loader of ``stream``'s batches as they are (``batch_size=None``), with a ``state_dict``.

    Parameters mean what they mean for ``torch.utils.data.DataLoader`` (transformers'
    ``dataloader_*`` training arguments). Warns when workers outnumber this process's source
    shards: datasets gives each worker whole shards, so the extra workers read nothing.
    """
    if not isinstance(stream, PairedStream):
        raise TypeError(f"streaming_dataloader takes a PairedStream, got {type(stream).__name__}: build one first.")
    if num_workers > stream.node_shards:
        warnings.warn(
            f"{num_workers} data-loader workers but {stream.node_shards} source shards on this process: "
            f"{num_workers - stream.node_shards} workers read nothing; write the source as more shards, or use "
            f"--dataloader_num_workers {stream.node_shards}.",
            stacklevel=2,
        )
    kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers:
        kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=persistent_workers,
                      multiprocessing_context=multiprocessing_context)  # fmt: skip
    return StatefulDataLoader(stream, batch_size=None, **kwargs)


def save_stream_state(loader: StatefulDataLoader, folder: str | Path, rank: int) -> Path:
    """Write ``loader``'s position (every worker's stream) into checkpoint ``folder`` for process ``rank``."""
    path = Path(folder) / STREAM_STATE_FILE.format(rank=rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(loader.state_dict()))
    return path


def load_stream_state(loader: StatefulDataLoader, folder: str | Path, rank: int) -> StatefulDataLoader:
    """Make ``loader`` continue where the checkpoint in ``folder`` stopped (process ``rank``'s file)."""
    path = Path(folder) / STREAM_STATE_FILE.format(rank=rank)
    if not path.is_file():
        raise ValueError(
            f"{folder} holds no {path.name}: it was not saved by a streamed-source run on {rank + 1}+ processes; "
            "resume from a checkpoint of this run, or start without --resume_from_checkpoint."
        )
    loader.load_state_dict(json.loads(path.read_text()))
    return loader
