"""What a dataset's images look like (:class:`ImageStats`) and the timm data config of a backbone trained
from scratch on them (:func:`data_config_from_stats`): the one builder of such a config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImageStats:
    """What a sample of a dataset's images looks like: channels, typical side, per-channel stats."""

    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def data_config_from_stats(stats: ImageStats) -> dict[str, Any]:
    """A timm data config (``input_size``, ``mean``, ``std`` ...) for a backbone trained from scratch."""
    return {
        "input_size": [stats.in_chans, stats.image_size, stats.image_size],
        "interpolation": "bilinear",
        "mean": [float(v) for v in stats.mean],
        "std": [float(v) for v in stats.std],
        "crop_pct": 1.0,
        "crop_mode": "center",
    }


__all__ = ["ImageStats", "data_config_from_stats"]
