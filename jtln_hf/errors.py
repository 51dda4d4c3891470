"""Pieces of the error messages the package raises: the one "did you mean" hint."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'X'?)"`` for the closest of ``choices`` to ``name`` (case-insensitive), else ``""``."""
    lowered = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


__all__ = ["did_you_mean"]
