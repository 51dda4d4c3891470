"""Datasets known by name: :class:`KnownDataset` (what is special about one) and its registry.

Every other dataset spec (a folder, a data file, a Hub id) is read generically
(:func:`jtln_hf.data.sources.open_dataset`). The built-ins register themselves beside their readers:
:mod:`jtln_hf.data.fashion_mnist` and :mod:`jtln_hf.data.fgvc_aircraft`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets


@dataclass(frozen=True)
class KnownDataset:
    """What is special about a dataset the package knows by name; every other spec is read generically.

    Attributes
    ----------
    name : str
        The spec (``--dataset fashion-mnist``).
    open : callable
        ``open(root, splits) -> DatasetDict``: its splits (``root`` from ``--dataset_root``).
    hub_id : str or None
        The Hub id a model card cites in its metadata (None: no Hub copy to cite).
    target_classes : tuple of str, optional
        The target classes when the dataset is split by class and ``--target_classes`` is not
        given (the paper's benchmark shape); without them the flag is required.
    data_config : dict, optional
        timm data config of a backbone trained from scratch on it, instead of one read from the
        images (:func:`jtln_hf.data.sources.image_stats`).
    prior_cost : Path, optional
        A hand-written source-target prior (labelled CSV): ``--cost prior``, and the default cost
        when the dataset is split by class and the prior names every chosen class.
    class_names : tuple of str, optional
        Its label names, in label order, known without opening it (to resolve ``--source_classes`` /
        ``--target_classes`` given as names or ids before the data loads).
    """

    name: str
    open: Callable[[str | None, Sequence[str] | None], datasets.DatasetDict]
    hub_id: str | None = None
    target_classes: tuple[str, ...] | None = None
    data_config: dict[str, Any] | None = None
    prior_cost: Path | None = None
    class_names: tuple[str, ...] | None = None


#: The datasets known by name (``register_known_dataset`` adds one); every other spec is read generically.
KNOWN_DATASETS: dict[str, KnownDataset] = {}


def register_known_dataset(known: KnownDataset) -> KnownDataset:
    """Make ``known.name`` a dataset spec of every flag that takes one (``--dataset`` ...)."""
    KNOWN_DATASETS[known.name] = known
    return known


def known_dataset(spec: str | None) -> KnownDataset | None:
    """The :class:`KnownDataset` named by ``spec``, or None for a folder, a data file or a Hub id."""
    return KNOWN_DATASETS.get(spec) if spec else None


__all__ = ["KNOWN_DATASETS", "KnownDataset", "known_dataset", "register_known_dataset"]
