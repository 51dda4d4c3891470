r"""Sinkhorn's iterations, kernel and log domain, and the autograd Function with envelope gradients.

``"kernel"``: scaling iterations on :math:`K = e^{-(C - \min C)/\varepsilon}` as batched matrix products
with the shared ``K`` (Cuturi 2013).  ``"log"``: the same iterations on the dual potentials with
log-sum-exp (Schmitzer 2019; Peyre & Cuturi 2019, section 4.4), stable for any :math:`\varepsilon`.
Both work on ``C - min C``.  The backward pass returns the centred dual potentials (envelope theorem,
Frogner et al. 2015; Feydy et al. 2019 for the KL form) instead of back-propagating through the loop.
Derivations and accuracy: ``docs/design.md``, "Sinkhorn solver".
"""

from __future__ import annotations

import torch

from .settings import CHECK_EVERY, prepare_inputs


def _test_due(it: int, iterations: int, tol: float | None) -> bool:
    """Whether iteration ``it`` (0-based) ends with a ``tol`` test: every CHECK_EVERY, not the last."""
    return tol is not None and (it + 1) % CHECK_EVERY == 0 and it + 1 < iterations


def _converged(row_error: torch.Tensor, tol: float) -> bool:
    """max_b ||gamma_b 1 - a_b||_1 <= tol (an empty batch has converged); one host-device sync."""
    return row_error.numel() == 0 or row_error.max().item() <= tol


_Maybe = torch.Tensor | None


def _kernel_scalings(
    a: torch.Tensor, b: torch.Tensor, K: torch.Tensor, iterations: int, tol: float | None = None,
    rows: bool = False, denominators: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, _Maybe, _Maybe, _Maybe, int]:
    """Sinkhorn scalings u (B, L_s), v (B, L_t) with plan u_i K_ij v_j (Cuturi 2013, Alg. 1).

    Returns ``(u, v, Kv, Ktu, Kv_next, iterations_run)``: ``u = a / Kv`` and ``v = b / Ktu`` are
    the last updates (their denominators give the KL potentials without a log of a ratio; kept
    only with ``denominators``, else ``None``, so that they cost no memory otherwise), and
    ``Kv_next`` is ``K v`` for the final ``v`` (the plan's row sums are ``u * Kv_next``) when a
    ``tol`` test computed it or ``rows`` asks for it, else ``None``.
    After the ``v`` update the plan's column sums are exactly ``b``; its row sums are
    ``u * (K v)``, which ``tol`` tests against ``a``.  The ``K v`` of a test is the next
    iteration's, so a test costs no extra product.
    """
    Kt = K.t().contiguous()
    v = torch.ones_like(b)
    Kv_next = None
    Kv = Ktu = None
    for it in range(iterations):
        if denominators:
            Kv = v @ Kt if Kv_next is None else Kv_next
            u = a / Kv
            Ktu = u @ K
            v = b / Ktu
        else:
            u = a / (v @ Kt if Kv_next is None else Kv_next)
            v = b / (u @ K)
        Kv_next = None
        if _test_due(it, iterations, tol):
            Kv_next = v @ Kt
            if _converged((u * Kv_next - a).abs().sum(dim=1), tol):
                return u, v, Kv, Ktu, Kv_next, it + 1
    if rows and Kv_next is None:
        Kv_next = v @ Kt
    return u, v, Kv, Ktu, Kv_next, iterations


def _log_potentials(
    a: torch.Tensor, b: torch.Tensor, C_eps: torch.Tensor, iterations: int,
    tol: float | None = None, rows: bool = False, denominators: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, _Maybe, _Maybe, _Maybe, int]:
    """Log-domain Sinkhorn on potentials in units of epsilon: f/eps (B, L_s), g/eps (B, L_t).

    Returns ``(f, g, lse_f, lse_g, lse_next, iterations_run)`` with ``f = log a - lse_f`` and
    ``g = log b - lse_g`` the last updates (``lse_f``, ``lse_g`` kept only with
    ``denominators``, else ``None``) and ``lse_next = LSE_j(g_j - C_ij)`` for the final
    ``g`` when a ``tol`` test computed it or ``rows`` asks for it, else ``None``; ``tol`` as in
    :func:`_kernel_scalings`, the row sums being ``exp(f_i + lse_next_i)``.
    """
    log_a, log_b = a.log(), b.log()
    g = torch.zeros_like(b)
    lse_next = None
    lse_f = lse_g = None
    for it in range(iterations):
        if denominators:
            lse_f = torch.logsumexp(g[:, None, :] - C_eps, dim=2) if lse_next is None else lse_next
            f = log_a - lse_f
            lse_g = torch.logsumexp(f[:, :, None] - C_eps, dim=1)
            g = log_b - lse_g
        else:
            lse = torch.logsumexp(g[:, None, :] - C_eps, dim=2) if lse_next is None else lse_next
            f = log_a - lse
            del lse
            g = log_b - torch.logsumexp(f[:, :, None] - C_eps, dim=1)
        lse_next = None
        if _test_due(it, iterations, tol):
            lse_next = torch.logsumexp(g[:, None, :] - C_eps, dim=2)
            if _converged(((f + lse_next).exp() - a).abs().sum(dim=1), tol):
                return f, g, lse_f, lse_g, lse_next, it + 1
    if rows and lse_next is None:
        lse_next = torch.logsumexp(g[:, None, :] - C_eps, dim=2)
    return f, g, lse_f, lse_g, lse_next, iterations


def _solve(
    a: torch.Tensor, b: torch.Tensor, C: torch.Tensor, c_min: float | torch.Tensor,
    epsilon: float, iterations: int, method: str, want: str, tol: float | None = None,
    objective: str = "entropic",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Potentials ``f, g`` and optionally a third output.

    ``want``: ``"value"`` (the ``objective``'s value per row), ``"plan"`` (gamma, (B, L_s, L_t))
    or ``"none"``.  The potentials are the plan's, gamma = exp((f_i + g_j - C_ij)/eps), except
    with ``want="value"`` and an ``objective`` other than ``"paper"``, where they are only used
    centred and are returned without ``min C``: the plan's for ``"entropic"``, the KL
    problem's ``f - eps log a``, ``g - eps log b`` for ``"kl"`` (computed as ``-eps log`` of the
    last updates' denominators, so that a constant cost gives rows that are constant up to
    rounding, with no cancellation of ``eps log a`` against itself).

    Values, with ``r`` the plan's row sums (``a`` once converged) and its column sums ``b``
    (exact after the last update): ``"paper"`` <gamma, C>; ``"entropic"``
    <gamma, C> + eps sum gamma log gamma = <r, f> + <b, g>; ``"kl"`` that minus
    eps (<r, log a> + <b, log b>) = <r, f - eps log a> + <b, g - eps log b>.  These are the
    primal values of the returned plan (not the dual <a, f> + <b, g>, which differs before
    convergence), each for one more ``(B, L_s, L_t)`` product (kernel) or reduction (log), as
    the linear value costs.  Both domains work on the shifted cost ``C - min C`` (the plan does
    not change; the potentials get ``min C`` back on ``f``, the value gets it back as ``min C``
    times the plan's mass, exactly 1 after the column update), which keeps the float32
    exponents within ``(max C - min C) / eps`` instead of ``max C / eps`` and the value's
    rounding proportional to ``max C - min C`` instead of ``max C``.
    """
    C_shift = C - c_min  # a new tensor: the in-place steps below never touch ``cost``
    linear = want == "value" and objective == "paper"
    kl = want == "value" and objective == "kl"
    if method == "kernel":
        K = (C_shift / -epsilon).exp_()
        u, v, Kv, Ktu, Kv_next, _ = _kernel_scalings(
            a, b, K, iterations, tol, rows=want == "value" and not linear, denominators=kl
        )
        if want == "plan":
            return epsilon * u.log() + c_min, epsilon * v.log(), u[:, :, None] * K * v[:, None, :]
        if linear:  # <gamma, C - min C> + min C: the plan has mass 1 (sum of b)
            value = (u * (v @ C_shift.mul_(K).t())).sum(dim=1) + c_min  # K * (C - min C), in place
            return epsilon * u.log() + c_min, epsilon * v.log(), value
        if want == "none":
            return epsilon * u.log() + c_min, epsilon * v.log(), None
        if kl:  # u = a / Kv: eps log u - eps log a = -eps log Kv; likewise v
            f, g = -epsilon * Kv.log(), -epsilon * Ktu.log()
        else:
            f, g = epsilon * u.log(), epsilon * v.log()
        rows = u * Kv_next
    else:
        C_eps = C_shift / epsilon
        f, g, lse_f, lse_g, lse_next, _ = _log_potentials(
            a, b, C_eps, iterations, tol, rows=want == "value" and not linear, denominators=kl
        )
        if want == "plan" or linear:
            plan = torch.exp(f[:, :, None] + g[:, None, :] - C_eps)
            extra = (plan * C_shift).sum(dim=(1, 2)) + c_min if linear else plan
            return epsilon * f + c_min, epsilon * g, extra
        if want == "none":
            return epsilon * f + c_min, epsilon * g, None
        rows = (f + lse_next).exp()
        if kl:  # f = log a - lse_f: f - log a = -lse_f; likewise g
            f, g = -lse_f, -lse_g
        f, g = epsilon * f, epsilon * g
    # <r, f + min C> + <b, g>, with sum(r) = sum(b) = 1: min C added once, as for the linear value
    return f, g, (rows * f).sum(dim=1) + (b * g).sum(dim=1) + c_min


def _centred(t: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """``t`` minus its row means, subtracted in float64 so that float32 rows sum to ~0 exactly.

    ``exact=True`` first subtracts each row's first entry (the same result up to rounding), so
    that a row of equal entries becomes exactly zero: the mean of ``L`` equal float64 numbers
    need not round back to that number.
    """
    wide = torch.float32 if t.device.type == "mps" else torch.float64
    w = t.to(wide)
    if exact:
        w = w - w[:, :1]
    return (w - w.mean(dim=1, keepdim=True)).to(t.dtype)


def sinkhorn_solve(
    source_probs: torch.Tensor, target_probs: torch.Tensor, cost: torch.Tensor, epsilon: float, iterations: int,
    method: str, tol: float | None, check_inputs: bool, want: str, objective: str = "entropic",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`~.settings.prepare_inputs`, then :func:`_solve` (``want`` as there), with autocast disabled.

    The one path from the public functions' arguments to a solve: the checks, the floor, the compute
    dtype and the domain are the same for the loss, the potentials and the plans.
    """
    with torch.autocast(device_type=source_probs.device.type, enabled=False):
        a, b, C, method, c_min, iterations = prepare_inputs(
            source_probs, target_probs, cost, epsilon, iterations, method, tol, check_inputs, objective
        )
        return _solve(a, b, C, c_min, float(epsilon), iterations, method, want, tol, objective)


class WassersteinFunction(torch.autograd.Function):
    """Value of ``objective``; backward = its centred dual potentials (envelope theorem)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, source_probs, target_probs, cost, epsilon, iterations, method, tol, check_inputs,
        objective,
    ):
        f, g, value = sinkhorn_solve(
            source_probs, target_probs, cost, epsilon, iterations, method, tol, check_inputs, "value", objective
        )
        exact = objective == "kl"  # a constant cost's (equal) rows then centre to ~0, not to a mean's rounding
        ctx.save_for_backward(_centred(f, exact), _centred(g, exact))
        ctx.dtypes = (source_probs.dtype, target_probs.dtype)
        return value

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        f_c, g_c = ctx.saved_tensors
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = (grad_out[:, None] * f_c).to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            grad_b = (grad_out[:, None] * g_c).to(ctx.dtypes[1])
        return grad_a, grad_b, None, None, None, None, None, None, None
