"""What a trainer does differently when its ``train_dataset`` is a streamed source's :class:`PairedStream`.

:class:`StreamTrainingMixin` (a base of :class:`~jtln_hf.training.trainer.JTLNTrainer`) gives such a
trainer the stream's own loader (:func:`~jtln_hf.data.stream_loader.streaming_dataloader`),
never prepared by Accelerate: the stream already reads this process's part of the source and
yields whole per-device batches, which ``Trainer._prepare_inputs`` moves to the device. A
checkpoint holds where every process's stream stands (``stream_state_rank<k>.json``, written
beside ``rng_state*.pth`` and so before ``trainer_state.json``, which marks a checkpoint
complete); a resumed run loads it instead of re-reading and skipping the batches trained.
A map-style ``train_dataset`` goes through Trainer's code unchanged.
"""

from __future__ import annotations

from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader
from transformers.trainer_utils import get_last_checkpoint

from ..data.stream import PairedStream
from ..data.stream_loader import load_stream_state, save_stream_state, streaming_dataloader


class StreamTrainingMixin:
    """Trainer methods for a :class:`PairedStream` ``train_dataset``; a base placed before ``Trainer``."""

    _stream_loader: StatefulDataLoader | None = None
    _resumed_from: str | None = None

    @property
    def streams_source(self) -> bool:
        """Whether ``train_dataset`` is a streamed source's :class:`PairedStream`."""
        return isinstance(getattr(self, "train_dataset", None), PairedStream)

    def stream_dataloader(self) -> StatefulDataLoader:
        """The stream's loader with the ``dataloader_*`` arguments, kept for checkpoints; not prepared."""
        stream, args = self.train_dataset, self.args
        workers = args.dataloader_num_workers
        self._stream_loader = streaming_dataloader(
            stream, num_workers=workers, prefetch_factor=args.dataloader_prefetch_factor if workers else None,
            persistent_workers=args.dataloader_persistent_workers and workers > 0,
            pin_memory=args.dataloader_pin_memory,
        )  # fmt: skip
        return self._stream_loader

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """``Trainer.train``; the checkpoint resumed from is recorded for :meth:`get_resumed_dataloader`."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        self._resumed_from = resume_from_checkpoint or None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """A stream continues from the checkpoint's saved position (no batch re-read); else Trainer's skip."""
        if dataloader is not self._stream_loader or self._resumed_from is None:
            return super().get_resumed_dataloader(dataloader, num_batches)
        return load_stream_state(dataloader, self._resumed_from, self.args.process_index)

    def _save_rng_state(self, output_dir: str) -> None:
        """Trainer's RNG state, then (every process) its stream's position: both before ``trainer_state.json``."""
        super()._save_rng_state(output_dir)
        if self._stream_loader is not None:
            save_stream_state(self._stream_loader, output_dir, self.args.process_index)


__all__ = ["StreamTrainingMixin"]
