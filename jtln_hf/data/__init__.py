"""Data for JTLN: Fashion-MNIST, class splits and k-shot draws, timm transforms, the joint dataset of both
domains and :class:`PairedBatchSampler`, whose every per-device batch holds a fixed number of source and
target rows (docs/design.md). Re-exports the modules of this package.
"""

from __future__ import annotations

from .checks import check_images
from .domains import SOURCE, TARGET
from .fashion_mnist import (
    DEFAULT_SOURCE_CLASSES,
    DEFAULT_TARGET_CLASSES,
    FASHION_MNIST_DATA_CONFIG,
    FASHION_MNIST_DIR,
    FASHION_MNIST_LABELS,
    load_fashion_mnist,
)
from .joint import build_joint_dataset
from .pools import DataPools, DataSpec, ExperimentData
from .sampler import PairedBatchSampler, source_rows_per_batch
from .splits import resolve_classes, sample_shots, select_classes, split_by_classes, standardize_columns
from .transforms import build_transform, collate, make_batch_transform

__all__ = [
    "DEFAULT_SOURCE_CLASSES",
    "DEFAULT_TARGET_CLASSES",
    "DataPools",
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
    "load_fashion_mnist",
    "make_batch_transform",
    "resolve_classes",
    "sample_shots",
    "select_classes",
    "source_rows_per_batch",
    "split_by_classes",
    "standardize_columns",
]
