"""Raw column reads that decode no image (:func:`read_column`, :func:`domains_of`), and the check of a
training set's labels and domains built on them (:func:`check_labels`)."""

from __future__ import annotations

import numpy as np

from .domains import SOURCE, TARGET, check_domains


def check_labels(dataset, num_source_labels: int, num_target_labels: int) -> None:
    """Raise before training when a ``domain`` value or a label is outside its label set."""
    columns = dataset.column_names
    if "label" not in columns:
        raise ValueError(f"dataset has no 'label' column (columns: {columns}): rename the label column to 'label'.")
    labels = read_column(dataset, "label")
    domains = domains_of(dataset)
    check_domains(domains)
    for domain, size, name in ((SOURCE, num_source_labels, "source"), (TARGET, num_target_labels, "target")):
        rows = labels[domains == domain]
        bad = rows[(rows < 0) | (rows >= size)]
        if len(bad):
            raise ValueError(
                f"{name} label {int(bad[0])} is out of range: the model has {size} {name} classes "
                f"(ids 0..{size - 1}); labels must be in their own domain's label space."
            )


def read_column(dataset, name: str) -> np.ndarray:
    """A raw column as numpy, bypassing the dataset's transform (which would decode every image)."""
    return dataset.select_columns([name]).with_format("numpy")[:][name]


def domains_of(dataset) -> np.ndarray:
    """The ``domain`` column; a dataset without one is all target rows (as in ``compute_loss``)."""
    if "domain" in dataset.column_names:
        return read_column(dataset, "domain")
    return np.full(len(dataset), TARGET)


__all__ = ["check_labels", "domains_of", "read_column"]
