"""The joint dataset: source and target rows with their ``domain`` (SOURCE, TARGET) and ``row`` index."""

from __future__ import annotations

import datasets
from datasets.fingerprint import Hasher

from .checks import check_images
from .domains import SOURCE, TARGET


# ---------------------------------------------------------------------------------------- pairing
def build_joint_dataset(source: datasets.Dataset | None, target: datasets.Dataset | None) -> datasets.Dataset:
    """Source rows first, then target rows, with ``domain`` (0 source, 1 target) and ``row`` columns.

    Labels stay in their own domain's label space (source ids for source rows, target ids for
    target rows); ``row`` is the row's index in its own input dataset, so an error can name it.
    Either side may be ``None`` (target-only or source-only training).

    Before anything trains, each input is checked: it needs ``image`` and ``label`` columns, and
    its images must open (:func:`check_images`: every image decoded for sets of up to
    :data:`FULL_DECODE_MAX_ROWS` rows, headers parsed up to :data:`HEADER_CHECK_MAX_ROWS`). The
    ``image`` column is then stored undecoded (``datasets.Image(decode=False)``):
    :func:`make_batch_transform` decodes it, naming the row of an image that fails.
    """
    parts = []
    for ds, domain in ((source, SOURCE), (target, TARGET)):
        if ds is None or len(ds) == 0:
            continue
        name = "source" if domain == SOURCE else "target"
        missing = [c for c in ("image", "label") if c not in ds.column_names]
        if missing:
            raise ValueError(
                f"the {name} dataset has no {missing[0]!r} column (columns: {ds.column_names}): rename its "
                "columns to 'image' and 'label', e.g. with jtln_hf.data.standardize_columns(ds, "
                "image_column=..., label_column=...)."
            )
        check_images(ds, f"the {name} dataset")
        ds = ds.select_columns(["image", "label"]).cast_column("label", datasets.Value("int64"))
        if isinstance(ds.features["image"], datasets.Image):
            ds = ds.cast_column("image", datasets.Image(decode=False))
        # fingerprints named, not hashed: datasets would pickle each column's Python list to hash it (seconds
        # for a 30,000-row source, every stage); the input's fingerprint and the column's rule determine it
        named = Hasher.hash((ds._fingerprint, "domain", domain))
        ds = ds.add_column("domain", [domain] * len(ds), new_fingerprint=named)
        parts.append(ds.add_column("row", list(range(len(ds))), new_fingerprint=Hasher.hash((named, "row"))))
    if not parts:
        raise ValueError("both the source and the target dataset are empty: nothing to train on.")
    return datasets.concatenate_datasets(parts)
