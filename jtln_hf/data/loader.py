"""Data-loader workers by default: how many the CPUs available to each process can feed."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs this process may run on: ``os.sched_getaffinity`` (a container's or ``taskset``'s limit), else ``os.cpu_count``."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_num_workers(cpus: int | None = None, local_world_size: int | None = None) -> int:
    """Data-loader workers per training process: its share of the CPUs less one, ``max(cpus // local_world_size - 1, 0)``.

    The processes of one machine (``LOCAL_WORLD_SIZE``, set by ``torchrun`` and ``accelerate
    launch``; 1 otherwise) share its CPUs equally; of each process's share one core is left to
    the training process itself and the rest decode and augment. A share of one core gives 0
    workers (loading in the training process: a worker would only compete with it for the core).

    Args:
        cpus: CPUs available (default :func:`available_cpus`).
        local_world_size: training processes on this machine (default ``$LOCAL_WORLD_SIZE``, else 1).
    """
    cpus = available_cpus() if cpus is None else cpus
    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if cpus < 1 or local_world_size < 1:
        raise ValueError(
            f"cpus={cpus} and local_world_size={local_world_size} must be >= 1: check LOCAL_WORLD_SIZE "
            "or pass --dataloader_num_workers."
        )
    share = cpus // local_world_size
    return max(share - 1, 0)


def loader_settings(num_workers: int) -> dict[str, object]:
    """The ``TrainingArguments`` data-loader fields for ``num_workers`` workers: 2 batches prefetched each when > 0.

    Workers are not persistent: a stage reads its loader once (the sampler's one epoch), and torch
    joins persistent workers at the loader's end only after a 5 s timeout, per loader.
    """
    if num_workers == 0:
        return {"dataloader_num_workers": 0}
    return {"dataloader_num_workers": num_workers, "dataloader_prefetch_factor": 2}


__all__ = ["available_cpus", "default_num_workers", "loader_settings"]
