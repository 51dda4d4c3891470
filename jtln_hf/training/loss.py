r"""The JTLN objective on a mixed source/target batch: settings, a pure function, a small module.

For a batch with target rows :math:`T` and source rows :math:`S` (Lu, Chen & Saidi 2017, eq. of §3):

.. math::

    \mathcal{L} = \frac{1}{|T|}\sum_{i \in T} \mathrm{CE}(h_t(x_i), y_i)
        + \lambda_s \frac{1}{|S|}\sum_{i \in S} \mathrm{CE}(h_s(x_i), y_i)
        + \lambda_{ot} \frac{1}{|T|}\sum_{i \in T} \mathrm{OT}_C\big(\mathrm{softmax}\,h_s(x_i),
          \mathrm{softmax}\,h_t(x_i)\big)

The OT term sees target images only and no labels. A batch without target rows contributes
only the source term (and vice versa); an empty part is an exact zero that keeps the graph, so
no NaN appears.

:class:`LossSettings` holds the weights and OT settings (checked once); :func:`jtln_loss` is the
objective as a function of its inputs, returning its parts (like timm's losses). It reads
nothing on the host when given the row positions and the solver (:func:`jtln_hf.sinkhorn.resolve_method`):
:class:`~jtln_hf.training.trainer.JTLNTrainer` passes both and checks the histogram ranges it returns a
step later (:class:`jtln_hf.training.trainer.DeferredCheck`). :class:`JTLNLoss` wraps it as an
``nn.Module`` that finds the rows, resolves the solver and checks at once (a host read per call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..configuration_jtln import check_cost_matrix
from ..data import SOURCE, TARGET
from ..sinkhorn import check_histograms, check_settings, mean_transport_plan, resolve_method, wasserstein_loss


@dataclass(frozen=True)
class LossSettings:
    """The weights and OT settings of the JTLN objective, checked once when made.

    Attributes:
        source_loss_weight: λ_s.
        ot_loss_weight: λ_ot (0 gives plain joint training).
        ot_epsilon: entropic regularisation ε (the paper's 1/λ).
        ot_iterations: Sinkhorn iterations.
        ot_method: ``"auto"``, ``"kernel"`` or ``"log"`` (see :mod:`jtln_hf.sinkhorn`).
        ot_detach_target: stop the OT gradient into the target head, so OT only constrains the
            source head (the paper calls OT "a constraint on the source classifier"; whether the
            target head also receives it is not stated, our default lets both heads learn from it).
        ot_tol: stop Sinkhorn once the plans' row sums are within ``ot_tol`` (L1) of the source
            histograms, tested every 10 iterations (``ot_iterations`` is then the maximum);
            ``None`` runs exactly ``ot_iterations``.
        ot_objective: what the OT term is, as ``objective`` in :func:`jtln_hf.sinkhorn.wasserstein_loss`:
            ``"entropic"`` (default) uses ``<γ, C> - εH(γ)`` and ``"kl"`` ``<γ, C> + ε KL(γ ‖ a⊗b)``
            as both the value (logged as ``ot``) and the function differentiated; ``"paper"`` logs
            ``<γ, C>`` but back-propagates the gradient of ``<γ, C> - εH(γ)`` (the paper's
            inconsistent choice). ``"entropic"`` trains exactly as ``"paper"`` (same gradient) and
            logs the value it differentiates.
    """

    source_loss_weight: float = 1.0
    ot_loss_weight: float = 1.0
    ot_epsilon: float = 0.05
    ot_iterations: int = 50
    ot_method: str = "auto"
    ot_detach_target: bool = False
    ot_tol: float | None = None
    ot_objective: str = "entropic"

    def __post_init__(self) -> None:
        for name in ("source_loss_weight", "ot_loss_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        try:  # the solver's own check, named as the settings are
            check_settings(self.ot_epsilon, self.ot_iterations, self.ot_method, self.ot_tol, self.ot_objective)
        except ValueError as err:
            raise ValueError(f"ot_{err}") from None

    @property
    def uses_ot(self) -> bool:
        """Whether the objective has the OT term (λ_ot > 0)."""
        return bool(self.ot_loss_weight)

    def solver(self, cost: torch.Tensor) -> str:
        """The Sinkhorn solver these settings run on ``cost`` (:func:`jtln_hf.sinkhorn.resolve_method`; reads
        the cost on the host, and raises if it is unusable)."""
        return resolve_method(cost, epsilon=self.ot_epsilon, iterations=self.ot_iterations, method=self.ot_method)

    def mean_transport_plan(self, source_logits: Any, logits: Any, cost: Any) -> np.ndarray:
        r"""The mean transport plan between the two heads' predictions over ``N`` images, under these settings.

        :math:`\bar\gamma = \frac1N \sum_n \gamma^*(\mathrm{softmax}\,h_s(x_n), \mathrm{softmax}\,h_t(x_n); C, \varepsilon)`:
        :func:`jtln_hf.sinkhorn.mean_transport_plan` with this objective's ε, iterations, solver and tolerance,
        the plan whose cost the loss adds. The card and a sweep's record draw this one.
        """
        return mean_transport_plan(source_logits, logits, cost, epsilon=self.ot_epsilon, iterations=self.ot_iterations,
                                   method=self.ot_method, tol=self.ot_tol)  # fmt: skip

    def check_cost(
        self, cost: torch.Tensor, num_source_labels: int | None = None, num_target_labels: int | None = None
    ) -> None:
        """Raise before training if the OT term cannot run on ``cost`` with these settings.

        Checks the shape against ``(num_source_labels, num_target_labels)`` when given, finite
        and non-negative entries, a cost that is not all zeros (OT would be a constant), and,
        for ``ot_method="kernel"``, a cost range that ``exp(-C/ε)`` can represent
        (:func:`jtln_hf.sinkhorn.resolve_method`). Nothing is checked when ``ot_loss_weight`` is 0.
        """
        if not self.uses_ot:
            return
        check_cost_matrix(cost, num_source_labels, num_target_labels)
        self.solver(cost)
        if not bool(torch.any(cost != 0)):
            raise ValueError(
                "ot_loss_weight > 0 but the model's cost_matrix is all zeros (OT would be a constant): set it with "
                "model.set_cost_matrix(C), or train with ot_loss_weight=0 (joint fine-tuning)."
            )


def jtln_loss(
    logits: torch.Tensor,
    source_logits: torch.Tensor,
    labels: torch.Tensor,
    cost: torch.Tensor,
    settings: LossSettings,
    *,
    source_rows: torch.Tensor,
    target_rows: torch.Tensor,
    solver: str | None = None,
) -> dict[str, torch.Tensor]:
    """The objective's parts: ``{"loss", "ce_target", "ce_source", "ot"}`` (scalars; parts unweighted).

    ``loss = ce_target + λ_s ce_source + λ_ot ot``; ``ot`` is the mean over target rows of the
    ``ot_objective``'s value, the same tensor that enters ``loss``. When the OT term ran on at
    least one row, ``prob_ranges`` is added: the (4,) no-grad tensor ``(min, max)`` of the source
    histograms then of the target histograms, for a NaN/inf check (:func:`check_stats`); the
    solver is called with ``check_inputs=False``, so nothing here reads the device.

    Args:
        logits: target-head scores, (B, L_t).
        source_logits: source-head scores, (B, L_s).
        labels: (B,) class ids, each in its own domain's label space.
        cost: (L_s, L_t) ground cost C.
        settings: the weights and OT settings.
        source_rows, target_rows: positions of the source and target rows (:func:`split_rows`,
            :func:`rows_of`).
        solver: ``"kernel"`` or ``"log"``, resolved for ``cost`` beforehand
            (:meth:`LossSettings.solver`); None resolves it here (a host read).
    """
    target_logits = logits.index_select(0, target_rows).float()
    ce_target = _mean_cross_entropy(target_logits, labels.index_select(0, target_rows))
    ce_source = _mean_cross_entropy(
        source_logits.index_select(0, source_rows).float(), labels.index_select(0, source_rows)
    )
    ranges = None
    if settings.ot_loss_weight:
        source_probs = source_logits.index_select(0, target_rows).float().softmax(-1)
        target_probs = target_logits.softmax(-1)
        if settings.ot_detach_target:
            target_probs = target_probs.detach()
        if source_probs.shape[0]:
            with torch.no_grad():
                ranges = torch.stack([source_probs.amin(), source_probs.amax(), target_probs.amin(), target_probs.amax()])
        ot = wasserstein_loss(
            source_probs,
            target_probs,
            cost,
            epsilon=settings.ot_epsilon,
            iterations=settings.ot_iterations,
            method=solver or settings.solver(cost),
            tol=settings.ot_tol,
            check_inputs=False,
            objective=settings.ot_objective,
        )
        ot = ot.mean() if ot.numel() else ot.sum()
    else:
        ot = ce_target.new_zeros(())
    loss = ce_target + settings.source_loss_weight * ce_source + settings.ot_loss_weight * ot
    parts = {"loss": loss, "ce_target": ce_target, "ce_source": ce_source, "ot": ot}
    if ranges is not None:
        parts["prob_ranges"] = ranges
    return parts


class JTLNLoss(nn.Module):
    """:func:`jtln_loss` as a module, for use outside the trainer: stateless, checks at once.

    Args:
        settings: a :class:`LossSettings`; or its fields as keyword arguments.
    """

    def __init__(self, settings: LossSettings | None = None, **kwargs) -> None:
        super().__init__()
        if settings is not None and kwargs:
            raise TypeError("JTLNLoss takes a LossSettings or its fields as keyword arguments, not both.")
        self.settings = settings if settings is not None else LossSettings(**kwargs)

    def forward(
        self,
        logits: torch.Tensor,
        source_logits: torch.Tensor,
        labels: torch.Tensor,
        domain: torch.Tensor,
        cost: torch.Tensor,
        source_rows: torch.Tensor | None = None,
        target_rows: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss", "ce_target", "ce_source", "ot"}`` of :func:`jtln_loss`.

        ``domain`` is (B,) 0 for source rows, 1 for target rows; the row positions are found from
        it unless given (then checked against it). The solver is resolved and the histograms
        checked on every call: each reads the device on the host.
        """
        if source_rows is None or target_rows is None:
            source_rows, target_rows = rows_of(domain)
            wrong = None
        else:
            wrong = wrong_domain_rows(domain, source_rows, target_rows)
        solver = self.settings.solver(cost) if self.settings.uses_ot else None
        parts = jtln_loss(logits, source_logits, labels, cost, self.settings,
                          source_rows=source_rows, target_rows=target_rows, solver=solver)  # fmt: skip
        stats = step_stats(wrong, parts.pop("prob_ranges", None))
        if stats is not None:
            check_stats(stats.tolist())
        return parts


# ------------------------------------------------------------------------------- rows and checks
def split_rows(domain: torch.Tensor, num_source: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the source and target rows of a batch known to hold ``num_source`` source rows.

    A stable sort of ``domain`` (source = 0 first) cut at ``num_source``: no data-dependent shape,
    so on a GPU the host does not wait for the device (``domain == TARGET`` as a boolean index
    would). The cut is checked against ``domain`` lazily (:func:`wrong_domain_rows`).
    """
    order = torch.argsort(domain, stable=True)
    return order[:num_source], order[num_source:]


def rows_of(domain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the source and target rows, found from ``domain`` (on a GPU the host waits for it)."""
    return (domain == SOURCE).nonzero().flatten(), (domain == TARGET).nonzero().flatten()


def wrong_domain_rows(domain: torch.Tensor, source_rows: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
    """How many of the given positions select a row of the other domain (a device scalar, no host read)."""
    with torch.no_grad():
        return (domain.index_select(0, source_rows) != SOURCE).sum() + (domain.index_select(0, target_rows) != TARGET).sum()


def step_stats(wrong_rows: torch.Tensor | None, prob_ranges: torch.Tensor | None) -> torch.Tensor | None:
    """What :func:`check_stats` reads of one step, as one float tensor; None when there is nothing to check."""
    if wrong_rows is None and prob_ranges is None:
        return None
    first = (wrong_rows if wrong_rows is not None else torch.zeros((), device=prob_ranges.device)).float()
    return first.reshape(1) if prob_ranges is None else torch.cat([first.reshape(1), prob_ranges.float()])


def check_stats(values: list[float]) -> None:
    """Raise the ``ValueError`` of a step's stats (:func:`step_stats`): wrong-domain rows, NaN/inf histograms."""
    if values[0]:
        raise ValueError(
            f"{int(values[0])} row(s) given as source_rows/target_rows belong to the other domain: the "
            "positions must match `domain` (JTLNTrainer derives them from its PairedBatchSampler's n_source "
            "source rows per batch; a custom train dataloader must keep that composition)"
        )
    if len(values) > 1:
        check_histograms("source_probs", values[1], values[2])
        check_histograms("target_probs", values[3], values[4])


def _mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over rows; an exact, graph-connected zero when there are none."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return nn.functional.cross_entropy(logits, labels)


__all__ = ["JTLNLoss", "LossSettings", "check_stats", "jtln_loss", "rows_of", "split_rows", "step_stats",
           "wrong_domain_rows"]  # fmt: skip
