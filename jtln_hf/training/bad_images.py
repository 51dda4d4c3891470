"""What a trainer does with the rows its batches skipped because their image cannot be decoded.

:class:`BadImagesMixin` (a base of :class:`~jtln_hf.training.trainer.JTLNTrainer`) takes the batch's
``bad_images`` records (:data:`~jtln_hf.data.transforms.BAD_IMAGES_KEY`) off every training batch
before the model sees it, gathers them over processes (every step on one process; at each log,
checkpoint and the end of training on several, where every process meets anyway), keeps them in
``TrainerState.stateful_callbacks["bad_images"]`` (so a checkpoint holds the count and a resumed
run continues it), stops every process with :class:`~jtln_hf.data.bad_images.BadImagesError` past
``--max_bad_images``, and writes the stage's listing (:data:`~jtln_hf.data.bad_images.BAD_IMAGES_FILE`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object

from ..data.bad_images import BAD_IMAGES_FILE, BadImagesError, bad_image_limit, write_bad_images
from ..data.transforms import BAD_IMAGES_KEY

#: The ``TrainerState.stateful_callbacks`` entry of the skipped rows: ``{"count": n, "rows": [records]}``.
STATE_KEY = "bad_images"


class BadImagesMixin:
    """Trainer methods that count, limit and list the training rows skipped as unreadable; a base before ``Trainer``."""

    _bad_pending: list[dict[str, Any]] | None = None  # this process's records since the last gather

    @property
    def bad_images(self) -> list[dict[str, Any]]:
        """Every row skipped so far by every process (after the last gather): ``domain``, ``row``, ``path``, ``error``."""
        return list(self.state.stateful_callbacks.get(STATE_KEY, {}).get("rows", []))

    def train(self, *args: Any, **kwargs: Any):
        """``Trainer.train``; then the stage's listing of skipped rows (main process; none when nothing was skipped)."""
        self._bad_pending = []
        result = super().train(*args, **kwargs)
        self.write_bad_images()
        return result

    def training_step(self, model, inputs, *args: Any, **kwargs: Any):
        """Take the batch's skipped-row records off it (the model does not take them), then Trainer's step."""
        records = inputs.pop(BAD_IMAGES_KEY, None)
        if records:
            self._bad_pending = (self._bad_pending or []) + list(records)
            if self.accelerator.num_processes == 1:
                self._gather_bad_images()
        return super().training_step(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Gather the skipped rows (every process logs), then log."""
        self._gather_bad_images()
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial) -> None:
        """Gather the skipped rows into the state first, so the checkpoint's ``trainer_state.json`` holds them."""
        self._gather_bad_images()
        super()._save_checkpoint(model, trial)

    def write_bad_images(self) -> Path | None:
        """Write the skipped rows to ``output_dir``/``bad_images.json`` (main process; nothing when there are none)."""
        return write_bad_images(self.args.output_dir, self.bad_images) if self.args.should_save else None

    def _gather_bad_images(self) -> None:
        """Add every process's new records to the state; past the limit, write the listing and raise on every process."""
        pending, self._bad_pending = self._bad_pending or [], []
        if self.accelerator.num_processes > 1 and torch.distributed.is_initialized():
            pending = gather_object(pending)
        if not pending and STATE_KEY in self.state.stateful_callbacks:
            return
        rows = self.bad_images + pending
        self.state.stateful_callbacks[STATE_KEY] = {"count": len(rows), "rows": rows}
        read = self.state.max_steps * self._train_batch_size * self.args.gradient_accumulation_steps
        read *= self.accelerator.num_processes
        limit = bad_image_limit(self.args.max_bad_images, read)
        if len(rows) > limit:
            self.write_bad_images()
            raise BadImagesError(
                f"{len(rows)} training images could not be decoded by step {self.state.global_step}, more than "
                f"--max_bad_images {self.args.max_bad_images:g} allows ({limit} of the {read} rows this stage reads): "
                f"remove or replace the rows listed in {Path(self.args.output_dir) / BAD_IMAGES_FILE}, or raise "
                "--max_bad_images."
            )


__all__ = ["BadImagesMixin", "STATE_KEY"]
