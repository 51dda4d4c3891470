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

Given the row positions (the trainer derives them from its sampler's fixed composition), the
loss never makes the host wait for the device: the solver is chosen once per cost
(:func:`jtln_hf.ot.resolve_method`) and called with ``check_inputs=False``, and the checks of
the step (NaN/inf histograms, rows of the wrong domain) are copied to pinned host memory
without blocking and read at the next step, when they have long been computed.  On a CPU they
are read at once.  ``ot_tol`` adds one read per test (every 10 Sinkhorn iterations).  Under DDP,
:class:`~jtln_hf.trainer.JTLNTrainer` has a failed check raised on every process at its next log.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .configuration_jtln import check_cost_matrix
from .data import SOURCE, TARGET
from .sinkhorn import check_histograms as _check_histogram_values
from .sinkhorn import check_settings as _check_settings
from .sinkhorn import resolve_method, wasserstein_loss


class JTLNLoss(nn.Module):
    """Target cross-entropy + λ_s · source cross-entropy + λ_ot · mean OT on target rows.

    Args:
        source_loss_weight: λ_s.
        ot_loss_weight: λ_ot (0 gives plain joint training).
        ot_epsilon: entropic regularisation ε (the paper's 1/λ).
        ot_iterations: Sinkhorn iterations.
        ot_method: ``"auto"``, ``"kernel"`` or ``"log"`` (see :mod:`jtln_hf.ot`).
        ot_tol: stop Sinkhorn once the plans' row sums are within ``ot_tol`` (L1) of the source
            histograms, tested every 10 iterations (``ot_iterations`` is then the maximum);
            ``None`` runs exactly ``ot_iterations``.
        ot_detach_target: stop the OT gradient into the target head, so OT only constrains the
            source head (the paper calls OT "a constraint on the source classifier"; whether the
            target head also receives it is not stated, our default lets both heads learn from it).
        ot_objective: what the OT term is, as ``objective`` in :func:`jtln_hf.ot.wasserstein_loss`:
            ``"entropic"`` (default) uses ``<γ, C> - εH(γ)`` and ``"kl"`` ``<γ, C> + ε KL(γ ‖ a⊗b)``
            as both the value (logged as ``ot``) and the function differentiated; ``"paper"`` logs
            ``<γ, C>`` but back-propagates the gradient of ``<γ, C> - εH(γ)`` (the paper's
            inconsistent choice). ``"entropic"`` trains exactly as ``"paper"`` (same gradient) and
            logs the value it differentiates; ``recipes/sweep.py`` on the embedded split found
            ``"kl"`` within 0.1 point of it on validation (README, "What we found").
    """

    def __init__(
        self,
        source_loss_weight: float = 1.0,
        ot_loss_weight: float = 1.0,
        ot_epsilon: float = 0.05,
        ot_iterations: int = 50,
        ot_method: str = "auto",
        ot_detach_target: bool = False,
        ot_tol: float | None = None,
        ot_objective: str = "entropic",
    ) -> None:
        super().__init__()
        for name, value in (("source_loss_weight", source_loss_weight), ("ot_loss_weight", ot_loss_weight)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        try:  # the solver's own check, named as the loss's settings are
            _check_settings(ot_epsilon, ot_iterations, ot_method, ot_tol, ot_objective)
        except ValueError as err:
            raise ValueError(f"ot_{err}") from None
        self.source_loss_weight = source_loss_weight
        self.ot_loss_weight = ot_loss_weight
        self.ot_epsilon = ot_epsilon
        self.ot_iterations = ot_iterations
        self.ot_method = ot_method
        self.ot_detach_target = ot_detach_target
        self.ot_tol = ot_tol
        self.ot_objective = ot_objective
        self._method_for: tuple[torch.Tensor, tuple, str] | None = None  # (cost, (version, ε, method), solver)
        self._pending: tuple[torch.Tensor, torch.cuda.Event | None] | None = None
        self.defer_errors = False  # JTLNTrainer sets it on several processes: see flush_checks
        self.deferred_error: tuple[int, ValueError] | None = None  # (checks read when it failed, error)
        self._checks_read = 0

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
        check_cost_matrix(cost, num_source_labels, num_target_labels)
        self._solver_for(cost)
        if not bool(torch.any(cost != 0)):
            raise ValueError(
                "ot_loss_weight > 0 but the model's cost_matrix is all zeros (OT would be a constant): set it with "
                "model.set_cost_matrix(C), or train with ot_loss_weight=0 (joint fine-tuning)."
            )

    def _solver_for(self, cost: torch.Tensor) -> str:
        """The solver for ``cost`` and the current settings, resolved (and the cost checked) once.

        Cached on the cost tensor itself (identity and in-place version), ``ot_epsilon`` and
        ``ot_method``; inference tensors, which have no version counter, are resolved each call.
        """
        if cost.is_inference():
            return resolve_method(cost, epsilon=self.ot_epsilon, iterations=self.ot_iterations, method=self.ot_method)
        key = (cost._version, self.ot_epsilon, self.ot_method)
        cached = self._method_for
        if cached is None or cached[0] is not cost or cached[1] != key:
            method = resolve_method(cost, epsilon=self.ot_epsilon, iterations=self.ot_iterations, method=self.ot_method)
            cached = self._method_for = (cost, key, method)
        return cached[2]

    def _queue_check(self, stats: torch.Tensor) -> None:
        """Start this step's deferred check (see :meth:`flush_checks`); read the previous step's."""
        self.flush_checks()
        if stats.is_cuda:
            host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
            stream = torch.cuda.current_stream(stats.device)
            host.copy_(stats, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
            self._pending = (host, event)
        else:
            self._pending = (stats, None)
            self.flush_checks()

    def flush_checks(self) -> None:
        """Read the pending check (waiting, on a GPU, only for the step that queued it).

        Raises ``ValueError`` naming the problem and the fix if that step's histograms held NaN
        or infinite values (a network whose logits already diverged), or if the row positions it
        was given did not select rows of the right domains.

        Under DDP a process raising alone (say its shard diverged) would leave the others blocked
        in the next gradient all-reduce until the process group's timeout. So when
        ``defer_errors`` is set (:class:`~jtln_hf.trainer.JTLNTrainer` sets it on several
        processes) the first failure is kept in ``deferred_error`` as ``(checks read, error)``
        and training goes on; the trainer raises it on every process at its next log.
        """
        if self._pending is None:
            return
        stats, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        self._checks_read += 1
        try:
            _raise_if_failed(stats.tolist())
        except ValueError as error:
            if not self.defer_errors:
                raise
            if self.deferred_error is None:
                self.deferred_error = (self._checks_read, error)

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
        """Return ``{"loss", "ce_target", "ce_source", "ot"}`` (scalars; parts unweighted).

        ``ot`` is the mean over target rows of the ``ot_objective``'s value, the same tensor that
        enters ``loss`` (for ``"entropic"`` and ``"kl"`` also the function whose gradient flows).

        Args:
            logits: target-head scores, (B, L_t).
            source_logits: source-head scores, (B, L_s).
            labels: (B,) class ids, each in its own domain's label space.
            domain: (B,) 0 for source rows, 1 for target rows.
            cost: (L_s, L_t) ground cost C.
            source_rows, target_rows: positions of the source and target rows, when the caller
                knows how many there are (the trainer does, from its sampler); checked against
                ``domain`` lazily. Otherwise found from ``domain``, which on a GPU makes the host
                wait for the device.
        """
        given = source_rows is not None and target_rows is not None
        if not given:
            source_rows = (domain == SOURCE).nonzero().flatten()
            target_rows = (domain == TARGET).nonzero().flatten()
        target_logits = logits.index_select(0, target_rows).float()
        ce_target = _mean_cross_entropy(target_logits, labels.index_select(0, target_rows))
        ce_source = _mean_cross_entropy(
            source_logits.index_select(0, source_rows).float(), labels.index_select(0, source_rows)
        )
        with torch.no_grad():  # what the deferred check reads: wrong-domain rows, then histogram ranges
            stats = [
                (domain.index_select(0, source_rows) != SOURCE).sum() + (domain.index_select(0, target_rows) != TARGET).sum()
                if given else domain.new_zeros(())
            ]  # fmt: skip
        if self.ot_loss_weight:
            source_probs = source_logits.index_select(0, target_rows).float().softmax(-1)
            target_probs = target_logits.softmax(-1)
            if self.ot_detach_target:
                target_probs = target_probs.detach()
            if source_probs.shape[0]:
                with torch.no_grad():
                    stats += [source_probs.amin(), source_probs.amax(), target_probs.amin(), target_probs.amax()]
            ot = wasserstein_loss(
                source_probs,
                target_probs,
                cost,
                epsilon=self.ot_epsilon,
                iterations=self.ot_iterations,
                method=self._solver_for(cost),
                tol=self.ot_tol,
                check_inputs=False,
                objective=self.ot_objective,
            )
            ot = ot.mean() if ot.numel() else ot.sum()
        else:
            ot = ce_target.new_zeros(())
        if given or len(stats) > 1:
            self._queue_check(torch.stack([t.float() for t in stats]))
        loss = ce_target + self.source_loss_weight * ce_source + self.ot_loss_weight * ot
        return {"loss": loss, "ce_target": ce_target, "ce_source": ce_source, "ot": ot}


def _raise_if_failed(values: list[float]) -> None:
    """Raise the ``ValueError`` of a deferred check's stats (wrong-domain rows, histogram ranges)."""
    if values[0]:
        raise ValueError(
            f"{int(values[0])} row(s) given as source_rows/target_rows belong to the other domain: the "
            "positions must match `domain` (JTLNTrainer derives them from its PairedBatchSampler's n_source "
            "source rows per batch; a custom train dataloader must keep that composition)"
        )
    if len(values) > 1:
        _check_histogram_values("source_probs", values[1], values[2])
        _check_histogram_values("target_probs", values[3], values[4])


def split_rows(domain: torch.Tensor, num_source: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the source and target rows of a batch known to hold ``num_source`` source rows.

    A stable sort of ``domain`` (source = 0 first) cut at ``num_source``: no data-dependent shape,
    so on a GPU the host does not wait for the device (``domain == TARGET`` as a boolean index
    would). :class:`JTLNLoss` checks lazily that the cut matches ``domain``.
    """
    order = torch.argsort(domain, stable=True)
    return order[:num_source], order[num_source:]


def _mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over rows; an exact, graph-connected zero when there are none."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return nn.functional.cross_entropy(logits, labels)
