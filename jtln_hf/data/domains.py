"""The ``domain`` values of a joint dataset's rows: which head a row's label belongs to, and their one check."""

import numpy as np

SOURCE, TARGET = 0, 1


def check_domains(domains) -> None:
    """Raise when a ``domain`` value is neither :data:`SOURCE` (0) nor :data:`TARGET` (1)."""
    unknown = sorted(set(np.unique(np.asarray(domains)).tolist()) - {SOURCE, TARGET})
    if unknown:
        raise ValueError(f"domain values must be 0 (source) or 1 (target), found {unknown}.")


__all__ = ["SOURCE", "TARGET", "check_domains"]
