"""Seed-paired statistics of a comparison: each method against a baseline method, seed by seed.

For a seed, every method sees the same target images and starts from the same weights
(:mod:`jtln_hf.experiment`), so two methods' accuracies are *paired* by seed: the per-seed
difference removes what the seed alone decides (which shots were drawn, the initial head), and
its mean and interval say whether one method helps, which two means ± std side by side do not.

* :func:`paired_difference` -- the differences of two methods on their common seeds, their mean,
  the 95 % Student-t interval of the mean and the number of seeds won;
* :func:`paired_summary` -- that, for every method of a :func:`jtln_hf.experiment.results.summarize`
  summary against a baseline (the registered one, :func:`jtln_hf.methods.baseline_method`: joint
  fine-tuning without the OT term, so the JTLN row measures what the OT term adds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """Per-seed differences ``values - baseline`` and their summary (see :func:`paired_difference`).

    Attributes
    ----------
    seeds : tuple of int
        The seeds both methods ran, in the order of ``values``.
    per_seed : tuple of float
        ``values[s] - baseline[s]`` for each seed ``s`` of ``seeds``.
    mean : float
        Mean of ``per_seed``.
    ci95 : (float, float) or None
        Two-sided 95 % Student-t interval of the mean; ``None`` for a single seed.
    wins : int
        Number of seeds with a strictly positive difference (a tie is not a win).
    """

    seeds: tuple[int, ...]
    per_seed: tuple[float, ...]
    mean: float
    ci95: tuple[float, float] | None
    wins: int

    @property
    def n(self) -> int:
        """Number of paired seeds."""
        return len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"per_seed", "mean", "ci95" ([lo, hi] or None), "wins", "seeds"}``."""
        return {
            "per_seed": list(self.per_seed),
            "mean": self.mean,
            "ci95": list(self.ci95) if self.ci95 is not None else None,
            "wins": self.wins,
            "seeds": list(self.seeds),
        }

    def to_text(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"+0.7 [+0.1, +1.4], 4/5"``: mean [95 % interval], wins/seeds, values times ``scale``.

        The default ``scale`` turns accuracy fractions into percentage points.
        """
        text = f"{scale * self.mean:+.{digits}f}"
        if self.ci95 is not None:
            lo, hi = self.ci95
            text += f" [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"
        return f"{text}, {self.wins}/{self.n}"


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float]) -> PairedDifference:
    r"""Seed-paired difference of a method to a baseline, with its 95 % Student-t interval.

    Only the seeds in both mappings are paired, in the order of ``values``. With the per-seed
    differences :math:`d_i = v_i - b_i`, :math:`i = 1..n`:

    .. math::
        \bar d = \frac1n \sum_i d_i, \qquad
        s = \sqrt{\frac{1}{n-1} \sum_i (d_i - \bar d)^2}, \qquad
        \mathrm{CI}_{95} = \bar d \pm t_{0.975,\,n-1}\, \frac{s}{\sqrt n},

    the interval of the paired t-test (Student, "The probable error of a mean", *Biometrika* 6,
    1908; ``scipy.stats.ttest_rel(values, baseline).confidence_interval()``). It assumes the
    :math:`d_i` are independent draws of one normal distribution; with a handful of seeds it is
    wide, as it should be. ``wins`` counts the seeds with :math:`d_i > 0`.

    Parameters
    ----------
    values : mapping of int to float
        Seed -> metric of the method (e.g. accuracy as a fraction).
    baseline : mapping of int to float
        Seed -> the same metric of the baseline.

    Returns
    -------
    PairedDifference
        ``ci95`` is ``None`` when only one seed is paired.

    Raises
    ------
    ValueError
        When the two methods have no seed in common.
    """
    seeds = tuple(s for s in values if s in baseline)
    if not seeds:
        raise ValueError(
            f"no seed in common to pair: the method ran seeds {list(values)}, the baseline {list(baseline)}."
        )
    diffs = np.array([float(values[s]) - float(baseline[s]) for s in seeds])
    n = len(diffs)
    mean = float(diffs.mean())
    interval = None
    if n > 1:
        from scipy.stats import t  # scipy comes with POT and scikit-learn

        half = float(t.ppf(0.975, n - 1)) * float(diffs.std(ddof=1)) / math.sqrt(n)
        interval = (mean - half, mean + half)
    return PairedDifference(seeds, tuple(diffs.tolist()), mean, interval, int((diffs > 0).sum()))


def paired_summary(
    summary: Mapping[str, Mapping[str, Any]], baseline: str, metric: str = "accuracy"
) -> dict[str, PairedDifference]:
    """:func:`paired_difference` of every method of ``summary`` but ``baseline``, against ``baseline``.

    ``summary`` is :func:`jtln_hf.experiment.results.summarize`'s output: per method ``"seeds"`` and
    ``metric: {"per_seed": [...]}`` in the same order. Returns ``{method: PairedDifference}`` in
    the order of ``summary``; empty when ``baseline`` did not run. A method with no seed in common
    with ``baseline`` is left out.
    """
    if baseline not in summary:
        return {}

    def by_seed(entry: Mapping[str, Any]) -> dict[int, float]:
        return dict(zip(entry["seeds"], entry[metric]["per_seed"]))

    base = by_seed(summary[baseline])
    out: dict[str, PairedDifference] = {}
    for method, entry in summary.items():
        mine = by_seed(entry)
        if method != baseline and any(s in base for s in mine):
            out[method] = paired_difference(mine, base)
    return out


__all__ = ["PairedDifference", "paired_difference", "paired_summary"]
