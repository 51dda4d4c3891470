"""Experiments: the recipe's arguments, the plan resolved from them, the runs and their results.

* :mod:`~jtln_hf.experiment.arguments` -- the dataclasses ``HfArgumentParser`` turns into flags, and their checks;
* :mod:`~jtln_hf.experiment.cli` -- the recipe's parser (``recipes/train_jtln.py``, ``recipes/sweep.py``);
* :mod:`~jtln_hf.experiment.plan` -- :func:`plan_experiment` (everything checked before the first step, into a
  frozen :class:`RunPlan`) and :func:`run_experiment` (every method on every seed);
* :mod:`~jtln_hf.experiment.results` -- the summary, the table and ``results.json``.
"""

from __future__ import annotations

from .plan import RunPlan, build_config, plan_experiment, run_experiment

__all__ = ["RunPlan", "build_config", "plan_experiment", "run_experiment"]
