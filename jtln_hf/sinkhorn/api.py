r"""The public functions: the per-row OT loss, its dual potentials and plans, and a mean plan over images.

All solve the same ``B`` entropic OT problems, between the rows of ``source_probs`` (B, L_s) and
``target_probs`` (B, L_t) under one ground cost ``cost`` (L_s, L_t), with the arguments of
:func:`wasserstein_loss`.  Derivations, accuracy against POT and speed: ``docs/design.md``,
"Sinkhorn solver".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .solve import WassersteinFunction, sinkhorn_solve


def wasserstein_loss(
    source_probs: torch.Tensor, target_probs: torch.Tensor, cost: torch.Tensor, *, epsilon: float = 0.1,
    iterations: int = 50, method: str = "auto", tol: float | None = None, check_inputs: bool = True,
    objective: str = "entropic",
) -> torch.Tensor:
    r"""Per-row entropic OT loss between two batches of histograms, with envelope gradients.

    For each row, Sinkhorn's plan (Cuturi 2013)
    :math:`\gamma^* = \arg\min_{\gamma \in U(a, b)} \langle\gamma, C\rangle - \varepsilon H(\gamma)`,
    :math:`H(\gamma) = -\sum_{ij}\gamma_{ij}\log\gamma_{ij}`, and per ``objective`` one value of it:

    - ``"entropic"`` (default): :math:`W_H = \langle\gamma^*, C\rangle - \varepsilon H(\gamma^*)`;
    - ``"kl"``: :math:`W_{KL} = \langle\gamma^*, C\rangle + \varepsilon\,\mathrm{KL}(\gamma^*\,\|\,a\otimes b)`
      (zero gradient, to rounding, under a constant cost);
    - ``"paper"``: :math:`\langle\gamma^*, C\rangle` with the gradient of :math:`W_H`, as JTLN and
      Frogner et al. (2015) do: value and gradient of two functions.

    The gradient is the envelope gradient of the regularised value (Frogner et al. 2015; Feydy et al.
    2019 for the KL form): the dual potentials :math:`f` (for ``source_probs``) and :math:`g`, minus
    :math:`\varepsilon\log a`, :math:`\varepsilon\log b` for ``"kl"``, centred per row; nothing is
    back-propagated through the iterations.  Values follow POT (``ot.sinkhorn2``, ``ot.solve`` with
    ``reg_type="entropy"`` / ``"KL"``).

    Parameters
    ----------
    source_probs, target_probs : torch.Tensor, shape (B, L_s) and (B, L_t)
        Histograms (e.g. softmax outputs); entries are floored at ``PROB_FLOOR`` and rows renormalised.
    cost : torch.Tensor, shape (L_s, L_t)
        Finite, non-negative ground cost shared by the rows; a constant (no gradient flows into it).
    epsilon : float
        Entropic regularisation :math:`\varepsilon > 0` (the paper's :math:`1/\lambda`).
    iterations : int
        Sinkhorn iterations (the maximum when ``tol`` is given).
    method : {"auto", "kernel", "log"}
        Scaling iterations on :math:`K = e^{-(C - \min C)/\varepsilon}`, or log-sum-exp on the potentials
        (stable for small :math:`\varepsilon`); ``"auto"``: kernel when
        :math:`(\max C - \min C)/\varepsilon \le` ``KERNEL_MAX_RANGE[dtype]``, else log.
    tol : float, optional
        Stop once :math:`\max_b \lVert\gamma_b \mathbf 1 - a_b\rVert_1 \le` ``tol``, tested every
        ``CHECK_EVERY`` iterations (one host-device synchronisation each).  ``None``: exactly ``iterations``.
    check_inputs : bool
        ``True``: read the values of the cost and histograms (one synchronisation).  ``False``: shapes
        and settings only, never synchronise; ``method`` resolved beforehand by
        :func:`~jtln_hf.sinkhorn.resolve_method`.
    objective : {"entropic", "kl", "paper"}
        What is returned and differentiated, see above.

    Returns
    -------
    torch.Tensor, shape (B,)
        The value per row, in float32 with autocast disabled (float64 when both histograms are
        float64); gradients come back in each input's dtype.

    Raises
    ------
    ValueError
        On bad shapes, devices, settings, cost entries or histogram entries (NaN, inf, negative:
        logits passed instead of probabilities), each message naming the problem and the fix.

    References
    ----------
    M. Cuturi, "Sinkhorn distances", NeurIPS 2013.  C. Frogner et al., "Learning with a Wasserstein
    loss", NeurIPS 2015.  G. Peyre, M. Cuturi, "Computational optimal transport", 2019.  J. Feydy et
    al., "Interpolating between optimal transport and MMD using Sinkhorn divergences", AISTATS 2019.
    """
    return WassersteinFunction.apply(
        source_probs, target_probs, cost, epsilon, iterations, method, tol, check_inputs, objective
    )


def sinkhorn_potentials(
    source_probs: torch.Tensor, target_probs: torch.Tensor, cost: torch.Tensor, *, epsilon: float = 0.1,
    iterations: int = 50, method: str = "auto", tol: float | None = None, check_inputs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Dual potentials ``f`` (B, L_s), ``g`` (B, L_t) of :func:`wasserstein_loss`'s problems.

    :math:`\gamma^*_b[i, j] = \exp\big((f_{b,i} + g_{b,j} - C_{ij})/\varepsilon\big)`, i.e.
    :math:`f = \varepsilon\log u + \min C`, :math:`g = \varepsilon\log v` for Sinkhorn's scalings
    (Peyre & Cuturi 2019, Prop. 4.3).  ``epsilon``, ``iterations``, ``method``, ``tol``,
    ``check_inputs`` as in :func:`wasserstein_loss`.  No autograd graph.
    """
    f, g, _ = _without_grad(source_probs, target_probs, cost, "none", epsilon, iterations, method, tol, check_inputs)
    return f, g


def transport_plan(
    source_probs: torch.Tensor, target_probs: torch.Tensor, cost: torch.Tensor, *, epsilon: float = 0.1,
    iterations: int = 50, method: str = "auto", tol: float | None = None, check_inputs: bool = True,
) -> torch.Tensor:
    r"""Entropic OT plans :math:`\gamma^*_b` (B, L_s, L_t) of :func:`wasserstein_loss`'s problems.

    :math:`\gamma^*_b = \mathrm{diag}(u_b)\,K\,\mathrm{diag}(v_b)`, :math:`K = e^{-(C - \min C)/\varepsilon}`
    (Cuturi 2013): column sums exactly the (floored) ``target_probs``, row sums ``source_probs`` up to
    convergence.  The settings as in :func:`wasserstein_loss`.  No autograd graph.
    """
    return _without_grad(source_probs, target_probs, cost, "plan", epsilon, iterations, method, tol, check_inputs)[2]


def _without_grad(
    source_probs: torch.Tensor, target_probs: torch.Tensor, cost: torch.Tensor, want: str, *settings: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The solve behind :func:`sinkhorn_potentials` and :func:`transport_plan`, outside autograd."""
    with torch.no_grad():
        return sinkhorn_solve(source_probs, target_probs, cost, *settings, want)


def mean_transport_plan(
    source_logits: Any, logits: Any, cost: Any, *, epsilon: float, iterations: int, method: str = "auto",
    tol: float | None = None, batch_size: int = 1024,
) -> np.ndarray:
    r"""Mean entropic OT plan between the two heads' predictions over ``N`` images, (L_s, L_t).

    .. math::
        \bar\gamma = \frac1N \sum_{n=1}^N \gamma^*\big(\mathrm{softmax}(h_s(x_n)),\,
        \mathrm{softmax}(h_t(x_n));\, C, \varepsilon\big)

    with :math:`\gamma^*` from :func:`transport_plan` (the plan whose cost the training loss adds).
    :math:`\bar\gamma` sums to 1; its row ``s`` sums to the mean source probability of class ``s`` and
    its column ``t`` to the mean target probability of ``t``.  ``source_logits`` (N, L_s) and
    ``logits`` (N, L_t) are the heads' scores, ``cost`` is C; ``epsilon``, ``iterations``, ``method``,
    ``tol`` as in training; ``batch_size`` images per call to the solver.
    """
    source_logits = torch.as_tensor(np.asarray(source_logits), dtype=torch.float32)
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float32)
    cost = torch.as_tensor(np.asarray(cost), dtype=torch.float32)
    if len(source_logits) != len(logits) or len(logits) == 0:
        raise ValueError(
            f"need as many source as target predictions, and at least one: got {len(source_logits)} and {len(logits)}."
        )
    total = torch.zeros(cost.shape, dtype=torch.float64)
    for start in range(0, len(logits), batch_size):
        a = source_logits[start : start + batch_size].softmax(-1)
        b = logits[start : start + batch_size].softmax(-1)
        plans = transport_plan(a, b, cost, epsilon=epsilon, iterations=iterations, method=method, tol=tol)
        total += plans.double().sum(0)
    return (total / len(logits)).numpy()
