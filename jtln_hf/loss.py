r"""The JTLN objective on a mixed source/target batch, as one small loss module.

For a batch with target rows :math:`T` and source rows :math:`S` (Lu, Chen & Saidi 2017, eq. of §3):

.. math::

    \mathcal{L} = \frac{1}{|T|}\sum_{i \in T} \mathrm{CE}(h_t(x_i), y_i)
        + \lambda_s \frac{1}{|S|}\sum_{i \in S} \mathrm{CE}(h_s(x_i), y_i)
        + \lambda_{ot} \frac{1}{|T|}\sum_{i \in T} \mathrm{OT}_C\big(\mathrm{softmax}\,h_s(x_i),
          \mathrm{softmax}\,h_t(x_i)\big)

The OT term sees target images only and no labels. A batch without target rows contributes
only the source term (and vice versa); an empty part is an exact zero that keeps the graph, so
no NaN appears. Like timm's losses, the module is small and returns its parts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .data import SOURCE, TARGET
from .ot import _check_settings, resolve_method, wasserstein_loss


class JTLNLoss(nn.Module):
    """Target cross-entropy + λ_s · source cross-entropy + λ_ot · mean OT on target rows.

    Args:
        source_loss_weight: λ_s.
        ot_loss_weight: λ_ot (0 gives plain joint training).
        ot_epsilon: entropic regularisation ε (the paper's 1/λ).
        ot_iterations: Sinkhorn iterations.
        ot_method: ``"auto"``, ``"kernel"`` or ``"log"`` (see :mod:`jtln_hf.ot`).
        ot_detach_target: stop the OT gradient into the target head, so OT only constrains the
            source head (the paper calls OT "a constraint on the source classifier"; whether the
            target head also receives it is not stated, our default lets both heads learn from it).
    """

    def __init__(
        self,
        source_loss_weight: float = 1.0,
        ot_loss_weight: float = 1.0,
        ot_epsilon: float = 0.05,
        ot_iterations: int = 50,
        ot_method: str = "auto",
        ot_detach_target: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("source_loss_weight", source_loss_weight), ("ot_loss_weight", ot_loss_weight)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        _check_settings(ot_epsilon, ot_iterations, ot_method)  # names the bad setting and the fix
        self.source_loss_weight = source_loss_weight
        self.ot_loss_weight = ot_loss_weight
        self.ot_epsilon = ot_epsilon
        self.ot_iterations = ot_iterations
        self.ot_method = ot_method
        self.ot_detach_target = ot_detach_target

    def check(
        self, cost: torch.Tensor, num_source_labels: int | None = None, num_target_labels: int | None = None
    ) -> None:
        """Raise before training if the OT term cannot run on ``cost`` with these settings.

        Checks the shape against ``(num_source_labels, num_target_labels)`` when given, finite
        and non-negative entries, a cost that is not all zeros (OT would be a constant), and,
        for ``ot_method="kernel"``, a cost range that ``exp(-C/ε)`` can represent
        (:func:`jtln_hf.ot.resolve_method`). Nothing is checked when ``ot_loss_weight`` is 0.
        """
        if not self.ot_loss_weight:
            return
        expected = (num_source_labels, num_target_labels)
        if None not in expected and tuple(cost.shape) != expected:
            raise ValueError(
                f"cost matrix has shape {tuple(cost.shape)} but the model has L_s={expected[0]} source and "
                f"L_t={expected[1]} target classes: rows = source classes, columns = target classes."
            )
        resolve_method(cost, epsilon=self.ot_epsilon, iterations=self.ot_iterations, method=self.ot_method)
        if not bool(torch.any(cost != 0)):
            raise ValueError(
                "ot_loss_weight > 0 but the model's cost_matrix is all zeros (OT would be a constant): set it with "
                "model.set_cost_matrix(C), or train with ot_loss_weight=0 (joint fine-tuning)."
            )

    def forward(
        self,
        logits: torch.Tensor,
        source_logits: torch.Tensor,
        labels: torch.Tensor,
        domain: torch.Tensor,
        cost: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss", "ce_target", "ce_source", "ot"}`` (scalars; parts unweighted).

        Args:
            logits: target-head scores, (B, L_t).
            source_logits: source-head scores, (B, L_s).
            labels: (B,) class ids, each in its own domain's label space.
            domain: (B,) 0 for source rows, 1 for target rows.
            cost: (L_s, L_t) ground cost C.
        """
        is_target = domain == TARGET
        is_source = domain == SOURCE
        target_logits = logits[is_target].float()
        ce_target = _mean_cross_entropy(target_logits, labels[is_target])
        ce_source = _mean_cross_entropy(source_logits[is_source].float(), labels[is_source])
        if self.ot_loss_weight:
            source_probs = source_logits[is_target].float().softmax(-1)
            target_probs = target_logits.softmax(-1)
            if self.ot_detach_target:
                target_probs = target_probs.detach()
            ot = wasserstein_loss(
                source_probs,
                target_probs,
                cost,
                epsilon=self.ot_epsilon,
                iterations=self.ot_iterations,
                method=self.ot_method,
            )
            ot = ot.mean() if ot.numel() else ot.sum()
        else:
            ot = ce_target.new_zeros(())
        loss = ce_target + self.source_loss_weight * ce_source + self.ot_loss_weight * ot
        return {"loss": loss, "ce_target": ce_target, "ce_source": ce_source, "ot": ot}


def _mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over rows; an exact, graph-connected zero when there are none."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return nn.functional.cross_entropy(logits, labels)
