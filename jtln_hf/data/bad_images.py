"""Images that cannot be decoded in training: their stand-in rows, the limit, and the listing of skipped rows.

The batch transform (:func:`~jtln_hf.data.transforms.make_batch_transform` with ``replace``)
replaces an unreadable row by a stand-in of the same domain and records it; the trainer
(:mod:`jtln_hf.training.bad_images`) counts the records over workers and processes and stops past
``--max_bad_images``; each stage writes its listing, :data:`BAD_IMAGES_FILE`, and the recipe
joins the stages' listings into the output folder's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ..utils.io import atomic_write_text
from .labels import read_column
from .transforms import BAD_IMAGES_KEY

#: The listing of the skipped rows: in a stage's folder, and (all stages) in the run's output folder.
BAD_IMAGES_FILE = "bad_images.json"


class BadImagesError(RuntimeError):
    """More training images could not be decoded than ``--max_bad_images`` allows."""


class StandIns:
    """Stand-ins for unreadable rows: the rows after it in a seeded permutation of its domain.

    ``StandIns(ds, seed)(domain, row)`` yields ``{"image", "label", "row"}`` rows of ``domain``,
    starting after ``row`` in a permutation of that domain's rows seeded by ``(seed, domain)``
    and wrapping around (``row`` itself last excluded): a function of the seed and the failed
    row only, so a batch is the same with any number of data-loader workers and on resume.

    Parameters
    ----------
    dataset : datasets.Dataset
        A joint dataset (:func:`~jtln_hf.data.joint.build_joint_dataset`, without its transform:
        ``domain`` and ``row`` columns), or, with ``domain`` given, one domain's rows in row order.
    seed : int
        Seed of the permutations.
    domain : int, optional
        The domain of every row of ``dataset`` (a dataset without ``domain`` and ``row`` columns).
    """

    def __init__(self, dataset: datasets.Dataset, seed: int, domain: int | None = None) -> None:
        self.dataset, self.seed, self.domain = dataset, seed, domain
        self._index: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # built at the first failure

    def __call__(self, domain: int, row: int) -> Iterator[dict[str, Any]]:
        indices, order, position = self._domain(domain)
        start = int(position[row])
        for step in range(1, len(order)):
            candidate = int(order[(start + step) % len(order)])
            example = self.dataset[int(indices[candidate])]
            yield {"image": example["image"], "label": example["label"], "row": candidate}

    def _domain(self, domain: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The dataset indices of ``domain``'s rows (by row), a seeded permutation of its rows, its inverse."""
        if domain not in self._index:
            if self.domain is not None:
                indices = np.arange(len(self.dataset)) if domain == self.domain else np.zeros(0, np.int64)
            else:
                domains, rows = read_column(self.dataset, "domain"), read_column(self.dataset, "row")
                indices = np.flatnonzero(domains == domain)
                indices = indices[np.argsort(rows[indices], kind="stable")]
            order = np.random.default_rng([self.seed, 7, domain]).permutation(len(indices))
            position = np.empty_like(order)
            position[order] = np.arange(len(order))
            self._index[domain] = (indices, order, position)
        return self._index[domain]


def bad_image_limit(max_bad_images: float, rows: int) -> int:
    """Skipped rows a stage may have: ``max_bad_images`` itself (>= 1), else that fraction of its ``rows``."""
    return int(max_bad_images) if max_bad_images >= 1 else int(max_bad_images * rows)


def check_max_bad_images(value: float) -> None:
    """Raise unless ``value`` is 0, a fraction in (0, 1) or a whole count >= 1."""
    if not (value == 0 or 0 < value < 1 or (value >= 1 and float(value).is_integer())):
        raise ValueError(f"--max_bad_images {value} is neither a whole count (0, 1, 2 ...) nor a fraction in (0, 1): "
                         "pass e.g. 10 or 0.001.")  # fmt: skip


def write_bad_images(folder: str | Path, records: list[dict[str, Any]]) -> Path | None:
    """Write ``records`` to ``folder``/:data:`BAD_IMAGES_FILE` atomically; nothing when there are none."""
    if not records:
        return None
    return atomic_write_text(Path(folder) / BAD_IMAGES_FILE, json.dumps(records, indent=1) + "\n")


def read_bad_images(runs_dir: str | Path, run_name: str) -> list[dict[str, Any]]:
    """The rows skipped by every stage of ``run_name`` (``runs/<run_name>[-<stage>]/``), with their ``stage``."""
    runs_dir = Path(runs_dir)
    stages = sorted(p for p in runs_dir.glob(f"{run_name}*") if p.name == run_name or p.name.startswith(f"{run_name}-"))
    records = []
    for stage in stages:
        path = stage / BAD_IMAGES_FILE
        if path.is_file():
            records += [{"stage": stage.name, **r} for r in json.loads(path.read_text())]
    return records


__all__ = [
    "BAD_IMAGES_FILE",
    "BAD_IMAGES_KEY",
    "BadImagesError",
    "StandIns",
    "bad_image_limit",
    "check_max_bad_images",
    "read_bad_images",
    "write_bad_images",
]
