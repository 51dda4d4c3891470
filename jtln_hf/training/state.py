"""What :class:`~jtln_hf.training.trainer.JTLNTrainer` keeps from step to step beside Trainer's own state.

The solver chosen per cost (:class:`SolverChoice`), the check read a step later (:class:`DeferredCheck`)
and the running means of the loss parts (:class:`PartMeans`): what lets a training step run
without the host waiting for the device, kept by the trainer rather than by the loss
(:func:`jtln_hf.training.loss.jtln_loss` is a function of its inputs).
"""

from __future__ import annotations

import torch

from .loss import LossSettings, check_stats


class SolverChoice:
    """The Sinkhorn solver for a cost under fixed :class:`~jtln_hf.training.loss.LossSettings`, resolved once per cost.

    :meth:`LossSettings.solver` reads the cost's range on the host (and checks it); this keeps its
    answer for the cost tensor (identity and in-place version counter), so a training step does
    not read it again until the cost changes. Inference tensors, which have no version counter,
    are resolved on every call.
    """

    def __init__(self, settings: LossSettings) -> None:
        self.settings = settings
        self._cached: tuple[torch.Tensor, int, str] | None = None  # (cost, its version, solver)

    def __call__(self, cost: torch.Tensor) -> str:
        if cost.is_inference():
            return self.settings.solver(cost)
        cached = self._cached
        if cached is None or cached[0] is not cost or cached[1] != cost._version:
            cached = self._cached = (cost, cost._version, self.settings.solver(cost))
        return cached[2]


class DeferredCheck:
    """A step's checks (:func:`jtln_hf.training.loss.step_stats`), read at the next step so the host never waits.

    :meth:`queue` copies the stats to pinned host memory without blocking (on a GPU) and reads the
    previous step's, long computed by then; on a CPU they are read at once. :meth:`flush` reads
    the pending one and raises its ``ValueError`` (:func:`jtln_hf.training.loss.check_stats`). With
    ``defer_errors`` (several processes, see :meth:`jtln_hf.training.trainer.JTLNTrainer._raise_on_every_process`) the
    first failure is kept as ``error = (checks read, ValueError)`` and training goes on.
    """

    def __init__(self, defer_errors: bool = False) -> None:
        self.defer_errors = defer_errors
        self.error: tuple[int, ValueError] | None = None
        self._pending: tuple[torch.Tensor, torch.cuda.Event | None] | None = None
        self._read = 0

    def queue(self, stats: torch.Tensor) -> None:
        """Start this step's check; read the previous step's."""
        self.flush()
        if stats.is_cuda:
            host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
            host.copy_(stats, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(stats.device))
            self._pending = (host, event)
        else:
            self._pending = (stats, None)
            self.flush()

    def flush(self) -> None:
        """Read the pending check (waiting, on a GPU, only for the step that queued it)."""
        if self._pending is None:
            return
        stats, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        self._read += 1
        try:
            check_stats(stats.tolist())
        except ValueError as error:
            if not self.defer_errors:
                raise
            if self.error is None:
                self.error = (self._read, error)

    def take_error(self) -> tuple[int, ValueError] | None:
        """The kept failure, if any, cleared."""
        error, self.error = self.error, None
        return error


class PartMeans:
    """Running sums of loss parts (device tensors, no host read) and their mean over processes on demand."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, parts: dict[str, torch.Tensor], names: tuple[str, ...]) -> None:
        for name in names:
            self.sums[name] = self.sums.get(name, 0.0) + parts[name].detach()
        self.count += 1

    def take(self, names: tuple[str, ...], accelerator) -> dict[str, float]:
        """``{name: mean since the last take}`` averaged over processes (6 decimals), then reset; {} if none."""
        if not self.count:
            return {}
        stacked = accelerator.reduce(torch.stack([self.sums[name] for name in names]) / self.count, reduction="mean")
        self.sums, self.count = {}, 0
        return {name: round(float(v), 6) for name, v in zip(names, stacked)}


__all__ = ["DeferredCheck", "PartMeans", "SolverChoice"]
