"""A few target test images saved beside a shared model: the demo's and the timm card's examples."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXAMPLES_FOLDER = "examples"


def example_images(dataset, target_names: Sequence[str], per_class: int = 1) -> list[tuple[Any, str]]:
    """The first ``per_class`` images of each target class of ``dataset`` (``image``/``label`` rows), in class order."""
    labels = list(dataset["label"])
    chosen: list[tuple[Any, str]] = []
    for class_id, name in enumerate(target_names):
        rows = [i for i, label in enumerate(labels) if label == class_id][:per_class]
        chosen.extend((dataset[i]["image"], name) for i in rows)
    return chosen


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "image"


def write_examples(folder: str | os.PathLike, examples: Sequence[tuple[Any, str]]) -> list[tuple[str, str]]:
    """Save ``(PIL image, label)`` pairs as ``folder/examples/<k>-<label>.png``; return ``(file name, label)``."""
    target = Path(folder) / EXAMPLES_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for k, (image, label) in enumerate(examples):
        name = f"{k}-{_slug(label)}.png"
        image.save(target / name)
        written.append((name, label))
    return written


__all__ = ["EXAMPLES_FOLDER", "example_images", "write_examples"]
