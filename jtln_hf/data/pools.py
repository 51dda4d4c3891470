"""The data of an experiment as frozen values: the pools fixed across seeds, and one seed's sets.

They live in the data layer so that the trainer-side code (methods, results) can take them without
importing the CLI and orchestration layer (``experiment.py`` builds them).
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets


@dataclass(frozen=True)
class DataPools:
    """What is fixed across seeds: the source set, the target pool the shots come from, the test set."""

    source: datasets.Dataset
    target_pool: datasets.Dataset
    target_test: datasets.Dataset
    target_validation: datasets.Dataset | None = None
    description: str = ""


@dataclass(frozen=True)
class ExperimentData:
    """The source set, the k-shot target set and the target test set (labels in own spaces)."""

    source: datasets.Dataset
    target: datasets.Dataset
    target_test: datasets.Dataset
    source_names: list[str]
    target_names: list[str]
    target_validation: datasets.Dataset | None = None


@dataclass(frozen=True)
class DataSpec:
    """What the code below the command line reads of the data flags, as a frozen value.

    Built once from the recipe's ``DataArguments`` (:meth:`jtln_hf.arguments.DataArguments.spec`);
    the flags' defaults and checks stay there. ``dataset`` None with one dataset: Fashion-MNIST.
    """

    dataset: str | None
    source_dataset: str | None
    target_dataset: str | None
    shots: int
    test_split: str
    target_train_split: str
    target_test_split: str
    target_test_fraction: float | None
    train_scale: tuple[float, float]
    hflip: float

    @property
    def two_datasets(self) -> bool:
        """Whether the source and the target come from their own datasets."""
        return self.source_dataset is not None or self.target_dataset is not None
