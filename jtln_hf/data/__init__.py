"""Data for JTLN: datasets from a spec (known names, folders, data files, Hub ids), class splits and
k-shot draws, timm transforms, the joint dataset of both domains, :class:`PairedBatchSampler` (every
per-device batch holds a fixed number of source and target rows) and streamed sources
(docs/design.md). Re-exports the modules of this package.
"""

from __future__ import annotations

from .checks import check_images
from .domains import SOURCE, TARGET
from .fashion_mnist import (
    DEFAULT_SOURCE_CLASSES,
    DEFAULT_TARGET_CLASSES,
    FASHION_MNIST,
    FASHION_MNIST_DATA_CONFIG,
    FASHION_MNIST_DIR,
    FASHION_MNIST_LABELS,
    load_fashion_mnist,
)
from .fgvc_aircraft import FGVC_AIRCRAFT, load_fgvc_aircraft
from .joint import build_joint_dataset
from .known import KNOWN_DATASETS, KnownDataset, known_dataset, register_known_dataset
from .pools import DataPools, DataSpec, ExperimentData, load_pools, prepare_data
from .sampler import PairedBatchSampler, source_rows_per_batch
from .sources import display_name, hub_dataset_id, image_stats, open_dataset, pick_split
from .splits import resolve_classes, sample_shots, select_classes, split_by_classes, standardize_columns
from .transforms import build_transform, collate, make_batch_transform

__all__ = [
    "DEFAULT_SOURCE_CLASSES",
    "DEFAULT_TARGET_CLASSES",
    "DataPools",
    "FASHION_MNIST",
    "FGVC_AIRCRAFT",
    "KNOWN_DATASETS",
    "KnownDataset",
    "DataSpec",
    "ExperimentData",
    "FASHION_MNIST_DATA_CONFIG",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_LABELS",
    "PairedBatchSampler",
    "SOURCE",
    "TARGET",
    "build_joint_dataset",
    "build_transform",
    "check_images",
    "collate",
    "display_name",
    "hub_dataset_id",
    "image_stats",
    "known_dataset",
    "load_fgvc_aircraft",
    "load_pools",
    "open_dataset",
    "pick_split",
    "prepare_data",
    "register_known_dataset",
    "load_fashion_mnist",
    "make_batch_transform",
    "resolve_classes",
    "sample_shots",
    "select_classes",
    "source_rows_per_batch",
    "split_by_classes",
    "standardize_columns",
]
