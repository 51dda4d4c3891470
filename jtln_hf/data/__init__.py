"""Data for JTLN: loading, source/target splits, few-shot sampling, timm transforms, paired batches.

Every training batch holds a fixed number of source rows and of target rows (the configured
source fraction), also when shuffled and when Accelerate shards batches over processes: the
:class:`PairedBatchSampler` yields *per-device* batches, and Accelerate hands whole batches to
each process, so the ratio holds on every device by construction.

Why not ``datasets.interleave_datasets`` alone: it fixes the order of rows, not the content of a
batch. With a random sampler on top, a batch can be all source; with a sequential one, the
default distributed sampler strides rows over ranks and an alternating s,t,s,t order puts every
source row on rank 0. We concatenate the two domains (``datasets.concatenate_datasets``) and let
the batch sampler draw from each side.

Reliability: :func:`build_joint_dataset` checks columns and images before anything trains and
keeps each row's index (``row``), so an image that cannot be decoded is reported with its row;
:func:`make_batch_transform` draws its random augmentation from generators seeded by the batch
itself, so a run resumed from a checkpoint replays the same augmented batches (the sampler
replays the same rows: its order depends only on the seed and the epoch).

Datasets come from a spec string (:mod:`jtln_hf.data.sources`: a known name, a folder, data files,
a Hub id); the known ones (:mod:`jtln_hf.data.known`) register beside their readers
(:mod:`jtln_hf.data.fashion_mnist`, :mod:`jtln_hf.data.fgvc_aircraft`). :func:`load_pools` and
:func:`prepare_data` turn a :class:`DataSpec` into an experiment's data.
"""

from __future__ import annotations

from .checks import FULL_DECODE_MAX_ROWS, HEADER_CHECK_MAX_ROWS, check_images
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
from .sources import display_name, hub_dataset_id, image_stats, open_dataset, pick_split
from .sampler import PairedBatchSampler, source_rows_per_batch
from .splits import did_you_mean, resolve_classes, sample_shots, select_classes, split_by_classes, standardize_columns
from .transforms import CHANNEL_MODES, IMAGE_ERRORS, build_transform, collate, make_batch_transform

__all__ = [
    "CHANNEL_MODES",
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
    "FULL_DECODE_MAX_ROWS",
    "HEADER_CHECK_MAX_ROWS",
    "IMAGE_ERRORS",
    "PairedBatchSampler",
    "SOURCE",
    "TARGET",
    "build_joint_dataset",
    "build_transform",
    "check_images",
    "collate",
    "did_you_mean",
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
