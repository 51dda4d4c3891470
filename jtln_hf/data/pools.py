"""The data of an experiment: the data flags (:class:`DataSpec`), the pools fixed across seeds
(:func:`load_pools`), and one seed's sets (:func:`prepare_data`), as frozen values.

They live in the data layer so that the trainer-side code (methods, results) can take them without
importing the CLI and orchestration layer (the recipe's ``DataArguments`` builds the spec).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import datasets

from . import splits as jsplits
from .fashion_mnist import FASHION_MNIST
from .known import known_dataset
from .sources import display_name, open_dataset, pick_split
from .stream_source import open_streaming_source


@dataclass(frozen=True)
class DataPools:
    """What is fixed across seeds: the source set (a stream with ``--source_streaming``), the target pool the
    shots come from, the test set."""

    source: datasets.Dataset | datasets.IterableDataset
    target_pool: datasets.Dataset
    target_test: datasets.Dataset
    target_validation: datasets.Dataset | None = None
    description: str = ""


@dataclass(frozen=True)
class ExperimentData:
    """The source set (or stream), the k-shot target set and the target test set (labels in own spaces).

    ``target_pool`` is the labelled pool the shots were drawn from: read only by the
    ``--cost_from_target_pool`` diagnostic.
    """

    source: datasets.Dataset | datasets.IterableDataset
    target: datasets.Dataset
    target_test: datasets.Dataset
    source_names: list[str]
    target_names: list[str]
    target_validation: datasets.Dataset | None = None
    target_pool: datasets.Dataset | None = None


@dataclass(frozen=True)
class DataSpec:
    """What the code below the command line reads of the data flags, as a frozen value.

    Built once from the recipe's ``DataArguments`` (:meth:`jtln_hf.experiment.arguments.DataArguments.spec`),
    one field per flag of the same name (lists as tuples); the flags' defaults and checks stay
    there. ``dataset`` None with one dataset: Fashion-MNIST (:attr:`specs`).
    """

    dataset: str | None
    dataset_config: str | None
    dataset_root: str | None
    train_split: str
    test_split: str
    image_column: str
    label_column: str
    source_dataset: str | None
    source_dataset_config: str | None
    source_split: str
    source_image_column: str
    source_label_column: str
    source_streaming: bool
    source_shuffle_buffer: int
    source_label_names: tuple[str, ...] | None
    target_dataset: str | None
    target_dataset_config: str | None
    target_train_split: str
    target_test_split: str
    target_image_column: str
    target_label_column: str
    target_test_fraction: float | None
    target_validation_fraction: float | None
    source_classes: tuple[str, ...] | None
    target_classes: tuple[str, ...] | None
    shots: int
    max_eval_samples: int | None
    train_scale: tuple[float, float]
    hflip: float
    decode_at_crop_scale: bool = True

    @property
    def two_datasets(self) -> bool:
        """Whether the source and the target come from their own datasets."""
        return self.source_dataset is not None or self.target_dataset is not None

    @property
    def specs(self) -> tuple[str, ...]:
        """The dataset specs of the run: ``(source, target)``, or the one dataset (default Fashion-MNIST)."""
        return (self.source_dataset, self.target_dataset) if self.two_datasets else (self.dataset or FASHION_MNIST,)

    @property
    def test_split_name(self) -> str:
        """The target test split as a card names it: a split, or ``"<fraction> of <train split>"``."""
        if self.target_test_fraction is not None:
            return f"{self.target_test_fraction:g} of {self.target_train_split}"
        return self.target_test_split if self.two_datasets else self.test_split


# ------------------------------------------------------------------------------------------ load
def _side(data: DataSpec, side: str) -> tuple[str, datasets.DatasetDict]:
    spec = getattr(data, f"{side}_dataset")
    config_name = getattr(data, f"{side}_dataset_config")
    wanted = [data.source_split] if side == "source" else [data.target_train_split, data.target_test_split]
    return spec, open_dataset(spec, config_name=config_name, root=data.dataset_root, splits=wanted)


def _standard(ds: datasets.Dataset, image_column: str, label_column: str, where: str) -> datasets.Dataset:
    try:
        return jsplits.standardize_columns(ds, image_column=image_column, label_column=label_column)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _align(test: datasets.Dataset, train: datasets.Dataset, where: str) -> datasets.Dataset:
    """Give ``test`` the label ids of ``train`` (string labels are class-encoded per split)."""
    train_names, test_names = train.features["label"].names, test.features["label"].names
    if test_names == train_names:
        return test
    unknown = sorted(set(test_names) - set(train_names))
    if unknown:
        raise ValueError(f"{where}: test classes {unknown} do not occur in the training split.")
    aligned = test.align_labels_with_mapping({n: i for i, n in enumerate(train_names)}, "label")
    return aligned.cast_column("label", datasets.ClassLabel(names=list(train_names)))


def _carve(ds: datasets.Dataset, fraction: float, flag: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    """A stratified ``(rest, carved)`` split, the same for every seed (seed 0)."""
    try:
        parts = ds.train_test_split(test_size=fraction, stratify_by_column="label", seed=0)
    except ValueError as err:
        raise ValueError(f"{flag} {fraction}: cannot carve a stratified split ({err}); use a larger fraction "
                         "or a dataset with more images per class.") from None  # fmt: skip
    return parts["train"], parts["test"]


def _two_datasets(data: DataSpec) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset, str]:
    """Source, target pool, target test and description of a ``--source_dataset`` + ``--target_dataset`` run."""
    source_spec = data.source_dataset
    if data.source_streaming:
        source = _streamed_source(data)
    else:
        source_splits = _side(data, "source")[1]
        source = _standard(pick_split(source_splits, data.source_split, "--source_split", source_spec),
                           data.source_image_column, data.source_label_column, f"--source_dataset {source_spec}")  # fmt: skip
        if data.source_classes:
            source = jsplits.select_classes(source, list(data.source_classes))
    target_spec, target_splits = _side(data, "target")
    columns = (data.target_image_column, data.target_label_column, f"--target_dataset {target_spec}")
    pool = _standard(pick_split(target_splits, data.target_train_split, "--target_train_split", target_spec),
                     *columns)  # fmt: skip
    if data.target_test_fraction is not None:
        pool, test = _carve(pool, data.target_test_fraction, "--target_test_fraction")
    else:
        if data.target_test_split not in target_splits:
            raise ValueError(
                f"--target_test_split {data.target_test_split!r}: {target_spec} has no such split "
                f"(splits: {sorted(target_splits)}); name one, or pass --target_test_fraction 0.2 to carve a "
                f"stratified test split from {data.target_train_split!r}."
            )
        test = _align(_standard(target_splits[data.target_test_split], *columns), pool, columns[2])
    if data.target_classes:
        pool = jsplits.select_classes(pool, list(data.target_classes))
        test = jsplits.select_classes(test, list(data.target_classes))
    return source, pool, test, f"source {display_name(source_spec)} ({data.source_split}), target {display_name(target_spec)}"


def _streamed_source(data: DataSpec) -> datasets.IterableDataset:
    """``--source_dataset`` as a stream (``--source_streaming``): columns and classes as the map-style path."""
    spec = data.source_dataset
    if known_dataset(spec) is not None:
        raise ValueError(f"--source_streaming: {spec} is read into memory by jtln_hf, not streamed: drop "
                         "--source_streaming, or name its files, folder or Hub id.")  # fmt: skip
    return open_streaming_source(
        spec, split=data.source_split, config_name=data.source_dataset_config,
        image_column=data.source_image_column, label_column=data.source_label_column,
        classes=data.source_classes, label_names=data.source_label_names,
    )  # fmt: skip


def chosen_classes(data: DataSpec, names: Sequence[str]) -> tuple[list, list]:
    """The source and target classes of one dataset split by class, among its label ``names``.

    ``--target_classes`` (names or ids), else the known dataset's split; ``--source_classes``, else every other
    class (as names). The one rule :func:`load_pools` selects by and the default cost reads before loading.
    """
    spec = data.specs[0]
    target_classes = list(data.target_classes or ())
    if not target_classes:
        known = known_dataset(spec)
        if known is None or known.target_classes is None:
            raise ValueError(f"--dataset {spec}: name the target classes with --target_classes (the source "
                             "classes are every other class unless --source_classes names them).")  # fmt: skip
        target_classes = list(known.target_classes)
    source_classes = list(data.source_classes or ())
    if not source_classes:
        target_ids = set(jsplits.resolve_classes(target_classes, names))
        source_classes = [name for i, name in enumerate(names) if i not in target_ids]
    return source_classes, target_classes


def _one_dataset(data: DataSpec) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset, str]:
    """Source, target pool, target test and description of one ``--dataset`` split by class."""
    spec = data.specs[0]
    splits = open_dataset(spec, config_name=data.dataset_config, root=data.dataset_root,
                          splits=[data.train_split, data.test_split])  # fmt: skip
    columns = (data.image_column, data.label_column, f"--dataset {spec}")
    train = _standard(pick_split(splits, data.train_split, "--train_split", spec), *columns)
    test = _align(_standard(pick_split(splits, data.test_split, "--test_split", spec), *columns), train,
                  columns[2])  # fmt: skip
    source_classes, target_classes = chosen_classes(data, train.features["label"].names)
    source, pool = jsplits.split_by_classes(train, source_classes, target_classes)
    _, test = jsplits.split_by_classes(test, source_classes, target_classes)
    return source, pool, test, display_name(spec)


def load_pools(data: DataSpec) -> DataPools:
    """Load the data of either shape and select the classes (no seed-dependent draw yet).

    Two datasets: the source split with ``--source_classes`` (default all), the target train split
    with ``--target_classes`` (default all), and the target test split, or a stratified
    ``--target_test_fraction`` of the target train split. One dataset: its train/test splits
    divided into disjoint source and target classes. Either way ``--target_validation_fraction``
    then carves a stratified validation set from the target pool. Each carve uses seed 0, so every
    seed and every method is tested on the same images.
    """
    source, pool, test, description = _two_datasets(data) if data.two_datasets else _one_dataset(data)
    streamed = isinstance(source, datasets.IterableDataset)  # its length is unknown: PairedStream says if it is empty
    if (not streamed and not len(source)) or not len(pool) or not len(test):
        empty = "source" if not streamed and not len(source) else "target training" if not len(pool) else "target test"
        raise ValueError(f"the {empty} set is empty: check the split and class flags.")
    validation = None
    if data.target_validation_fraction is not None:
        pool, validation = _carve(pool, data.target_validation_fraction, "--target_validation_fraction")
    if data.max_eval_samples is not None and len(test) > data.max_eval_samples:
        test = test.shuffle(seed=0).select(range(data.max_eval_samples))
    return DataPools(source, pool, test, validation, description)


def prepare_data(data: DataSpec, seed: int, pools: DataPools | None = None) -> ExperimentData:
    """Draw the k-shot target set for ``seed`` (the same for every method) from the pools."""
    pools = pools if pools is not None else load_pools(data)
    target = jsplits.sample_shots(pools.target_pool, data.shots, seed=seed) if data.shots else pools.target_pool
    return ExperimentData(
        source=pools.source,
        target=target,
        target_test=pools.target_test,
        source_names=pools.source.features["label"].names,
        target_names=target.features["label"].names,
        target_validation=pools.target_validation,
        target_pool=pools.target_pool,
    )


__all__ = ["DataPools", "DataSpec", "ExperimentData", "load_pools", "prepare_data"]
