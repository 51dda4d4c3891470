"""``--cost_refresh_steps K``: a cost computed from the model, recomputed from the current backbone every K steps.

A ``features-*`` or ``relationship`` cost read once, before the joint stage, comes from a backbone
that has seen only the warm-up's source steps; as joint training goes on, the backbone's features
and the source head's predictions on target images improve, and so can C. :class:`CostRefresh`
rebuilds C with the same builder, inputs and normalisation as the first one (the same sampled
source images, the labelled target images), through the one prediction path, on every process.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.utils import logging

logger = logging.get_logger(__name__)


def relative_change(new: np.ndarray, old: np.ndarray) -> float:
    r"""How much a refresh moved C: :math:`\lVert C_\text{new} - C_\text{old}\rVert_F / \lVert C_\text{old}\rVert_F`.

    ``inf`` when the old cost is all zeros and the new one is not, 0 when both are.
    """
    old_norm = float(np.linalg.norm(old))
    diff = float(np.linalg.norm(np.asarray(new, dtype=np.float64) - old))
    if old_norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / old_norm


class CostRefresh(TrainerCallback):
    """Every ``every`` steps of a stage, replace the model's cost matrix by ``rebuild()`` and log the change.

    Refreshes happen when the step count (``TrainerState.global_step``, restored on resume) is a
    multiple of ``every``, before that step's checkpoint is saved, and not at the last step (no
    step would read it): a resumed run refreshes at the same steps as an uninterrupted one, and
    its checkpoint holds the cost its next steps train with (the ``cost_matrix`` buffer is in
    ``model.safetensors``). Each refresh adds ``{"cost_refresh": n, "cost_change": r, "step": s}``
    to the log history (``trainer_state.json``; :func:`relative_change`). ``rebuild`` runs the
    model on every process (a forward pass gathered over them), so it is called on every process;
    it must not change the training's random state: the refresh saves and restores torch's,
    numpy's and Python's generators around it.

    Parameters
    ----------
    rebuild : callable
        ``rebuild() -> C``, the new ``(L_s, L_t)`` cost from the model as it is now.
    every : int
        Steps between refreshes, >= 1.
    """

    def __init__(self, rebuild: Callable[[], np.ndarray], every: int) -> None:
        if every < 1:
            raise ValueError(f"--cost_refresh_steps must be >= 1 to refresh, got {every}.")
        self.rebuild = rebuild
        self.every = int(every)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.every or step >= state.max_steps or model is None:
            return
        model = getattr(model, "module", model)  # under DDP the callback gets the wrapped model
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            new = np.asarray(self.rebuild(), dtype=np.float64)
        random.setstate(py_state)
        np.random.set_state(np_state)
        old = model.cost_matrix.detach().cpu().double().numpy()
        change = relative_change(new, old)
        model.set_cost_matrix(new)
        entry = {"cost_refresh": step // self.every, "cost_change": change, "step": step}
        state.log_history.append(entry)
        logger.info(f"cost refreshed at step {step}: relative change {change:.4f}")


__all__ = ["CostRefresh", "relative_change"]
