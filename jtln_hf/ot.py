r"""Batched entropic optimal transport with one shared cost, used as a training loss.

JTLN (Lu, Chen & Saidi 2017) adds to its objective, for every target image, the entropic
optimal-transport cost between the source head's histogram ``a_b`` (length ``L_s``) and the
target head's histogram ``b_b`` (length ``L_t``) under one ground cost ``C`` (``L_s x L_t``)
shared by the whole batch.  This module solves those ``B`` problems together with a fixed
number of Sinkhorn iterations (Cuturi 2013) and differentiates them with the dual potentials
(envelope theorem, Frogner et al. 2015) instead of back-propagating through the iterations.

The envelope gradient is that of a *regularised* value, so ``objective`` says what is returned:
``"paper"`` (this function's default; training uses ``"entropic"``) returns the linear cost :math:`\langle\gamma, C\rangle`, as the
paper does, with the gradient of :math:`\langle\gamma, C\rangle - \varepsilon H(\gamma)` --
value and gradient of different functions; ``"entropic"`` returns that entropic value and
``"kl"`` :math:`\langle\gamma, C\rangle + \varepsilon\,\mathrm{KL}(\gamma\,\|\,a\otimes b)`,
each with its own gradient (see :func:`wasserstein_loss`; ``tests/test_ot_objective.py``).

Why by hand rather than POT: ``ot.batch.solve_batch(..., grad="autodiff")`` expects one cost
per problem and records every iteration for autograd; at B=128, a 1000x256 cost and 50
iterations it took 73 ms and 13 GiB on an H200, against ~6 ms and ~5 MiB for the kernel-domain
solver below with envelope gradients (``docs/design.md``, "Speed").  POT is kept as the
independent reference in ``tests/test_ot.py``.

Two solvers:

* ``"kernel"`` -- Sinkhorn's scaling iterations on :math:`K = e^{-(C - \min C)/\varepsilon}`,
  batched as matrix products with the shared ``K``; fast, but ``K`` underflows when the cost
  range is large relative to :math:`\varepsilon`.
* ``"log"`` -- the same iterations on the dual potentials with log-sum-exp (Schmitzer 2019;
  Peyré & Cuturi 2019, §4.4); stable for any :math:`\varepsilon`, but materialises a
  ``(B, L_s, L_t)`` tensor per half-iteration.

``"auto"`` uses the kernel domain when :math:`(\max C - \min C)/\varepsilon \le 50`
(:data:`KERNEL_MAX_RANGE`, 500 for float64) and the log domain otherwise; an explicit
``"kernel"`` beyond that range is refused (it would underflow) rather than returning NaN.

Inputs are validated in the same single host-device synchronisation that reads the cost's
range: a NaN, infinite or negative histogram entry (NaN logits, or logits passed instead of
probabilities) or cost entry raises a ``ValueError`` naming the problem and the fix.
:func:`resolve_method` runs the cost and setting checks alone, so a trainer can fail before
its first step -- and then call the solver with ``check_inputs=False`` and the resolved method,
which never synchronises: on a GPU the host keeps queueing the step's kernels instead of
waiting for the backbone's forward to finish (:class:`jtln_hf.loss.JTLNLoss` does this and
reads its own histogram checks a step later, without blocking).

Iterations are fixed by default (no data-dependent control flow, so the solve can be captured
in a CUDA graph).  ``tol`` adds a stopping test in the manner of POT's ``stopThr``: every
:data:`CHECK_EVERY` iterations the largest L1 error of the plans' row sums is read, and the
loop stops once it is ``<= tol`` (``iterations`` is then the maximum).  POT tests the L2 error
of the other marginal after iterations 1, 11, 21, ...; ours is stricter per row.  Each test is
one host-device synchronisation.  Both domains work on ``C - min C``, so float32 exponents scale with the cost's
*range* over :math:`\varepsilon`, not its maximum.  Accuracy bounds against POT are stated in
:func:`wasserstein_loss` (Notes) and tested in ``tests/test_ot_numerics.py``.
"""

from __future__ import annotations

import math
import operator

import torch

from .configuration_jtln import check_cost_matrix

__all__ = [
    "CHECK_EVERY",
    "KERNEL_MAX_RANGE",
    "OBJECTIVES",
    "PROB_FLOOR",
    "WassersteinLoss",
    "resolve_method",
    "sinkhorn_potentials",
    "transport_plan",
    "wasserstein_loss",
]

#: Histogram entries are clamped at this floor, then each row is renormalised to sum to 1.
PROB_FLOOR = 1e-8

#: Largest :math:`(\max C - \min C)/\varepsilon` for which ``method="auto"`` uses the kernel
#: domain.  float32: the smallest kernel entry is then :math:`e^{-50} \approx 2\cdot10^{-22}`,
#: far above the smallest normal float32 (:math:`1.2\cdot10^{-38} \approx e^{-87}`), and the
#: scalings :math:`u = a/(Kv)` stay within :math:`e^{\pm(50 + 18.4)}` (18.4 = -log of the
#: 1e-8 floor), below float32's overflow at :math:`e^{88.7}`.  float64 (limits
#: :math:`e^{\pm 708}`) gets the same margin at 500.
KERNEL_MAX_RANGE: dict[torch.dtype, float] = {torch.float32: 50.0, torch.float64: 500.0}

#: With ``tol``, the marginal error is tested every this many iterations (as often as POT tests).
CHECK_EVERY = 10

_METHODS = ("auto", "kernel", "log")

#: What :func:`wasserstein_loss` returns and differentiates (see its ``objective`` parameter).
OBJECTIVES = ("paper", "entropic", "kl")


def _positive_finite(value) -> bool:
    try:
        return math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(
            f"objective must be one of {OBJECTIVES}, got {objective!r}: 'paper' (value <gamma, C>, "
            "gradient of the entropic value: inconsistent, the paper's), 'entropic' "
            "(<gamma, C> - eps H(gamma)) or 'kl' (<gamma, C> + eps KL(gamma | a b^T))"
        )


def _check_settings(
    epsilon: float, iterations: int, method: str, tol: float | None = None, objective: str = "paper"
) -> int:
    """Validate the solver settings (no tensor work); return ``iterations`` as an int."""
    _check_objective(objective)
    if tol is not None and not _positive_finite(tol):
        raise ValueError(
            f"tol must be None (fixed iterations) or a finite number > 0, got {tol!r}: "
            "e.g. 1e-5 stops once every plan's row sums are within 1e-5 (L1) of source_probs"
        )
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if not _positive_finite(epsilon):
        raise ValueError(
            f"epsilon must be > 0 and finite, got {epsilon!r}: e.g. 0.05 (JTLN's default)"
        )
    try:
        iterations = operator.index(iterations)
    except TypeError:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}") from None
    if iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    return iterations


def _check_histogram_values(name: str, lo: float, hi: float) -> None:
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(
            f"{name} contains NaN: the histograms must be probabilities; NaN here usually "
            "means the network's logits are already NaN (lower the learning rate, enable "
            "gradient clipping with max_grad_norm, or look for NaN in the inputs)"
        )
    if math.isinf(lo) or math.isinf(hi):
        raise ValueError(
            f"{name} contains infinite entries: pass probabilities, e.g. logits.softmax(-1)"
        )
    if lo < 0:
        raise ValueError(
            f"{name} has negative entries (min {lo:.4g}): pass probabilities "
            "(e.g. logits.softmax(-1)), not logits"
        )


def _resolve_method(method: str, c_min: float, c_max: float, epsilon: float,
                    dtype: torch.dtype) -> str:
    """``"auto"`` -> kernel or log; refuse ``"kernel"`` where its kernel would underflow."""
    ratio = (c_max - c_min) / float(epsilon)
    limit = KERNEL_MAX_RANGE[dtype]
    if method == "auto":
        return "kernel" if ratio <= limit else "log"
    if method == "kernel" and ratio > limit:
        raise ValueError(
            f"method='kernel' needs (max C - min C) / epsilon <= {limit:g} in {dtype} "
            f"(got {ratio:.4g}): exp(-C/epsilon) would underflow and the scalings overflow; "
            "use method='log' or 'auto', or a larger epsilon"
        )
    return method


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if all(t.dtype == torch.float64 for t in tensors) else torch.float32


def resolve_method(
    cost: torch.Tensor,
    *,
    epsilon: float = 0.1,
    iterations: int = 50,
    method: str = "auto",
    dtype: torch.dtype = torch.float32,
) -> str:
    r"""Check a cost and solver settings without solving; return the solver that will run.

    Runs every check :func:`wasserstein_loss` runs on ``cost``, ``epsilon``, ``iterations``
    and ``method`` -- a 2-D cost with finite entries :math:`C_{ij} \ge 0`, :math:`\varepsilon`
    finite and :math:`> 0`, an integer number of iterations :math:`\ge 1`, and for
    ``method="kernel"`` a range :math:`(\max C - \min C)/\varepsilon \le`
    ``KERNEL_MAX_RANGE[dtype]`` -- so that a trainer can fail before its first step rather
    than at it.

    Parameters
    ----------
    cost : torch.Tensor, shape (L_s, L_t)
    epsilon, iterations, method
        As in :func:`wasserstein_loss`.
    dtype : torch.dtype
        Compute dtype: ``torch.float64`` when both histograms will be float64, else
        ``torch.float32`` (the default; half and bfloat16 inputs are computed in float32).

    Returns
    -------
    str
        ``"kernel"`` or ``"log"``.

    Raises
    ------
    ValueError
        With the problem and the fix, as :func:`wasserstein_loss`.
    """
    _check_settings(epsilon, iterations, method)
    if dtype not in KERNEL_MAX_RANGE:
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if cost.dim() != 2 or cost.numel() == 0:
        check_cost_matrix(cost)  # raises: not a matrix
    C = cost.detach().to(dtype)
    c_min, c_max = torch.stack([C.min(), C.max()]).tolist()  # the one host read (min/max propagate NaN)
    if not (math.isfinite(c_min) and math.isfinite(c_max) and c_min >= 0):
        check_cost_matrix(C)  # raises, naming the first bad entry
    return _resolve_method(method, c_min, c_max, epsilon, dtype)


def _prepare(
    source_probs: torch.Tensor,
    target_probs: torch.Tensor,
    cost: torch.Tensor,
    epsilon: float,
    iterations: int,
    method: str,
    tol: float | None = None,
    check_inputs: bool = True,
    objective: str = "paper",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str, float | torch.Tensor, int]:
    """Validate, floor and renormalise the histograms, cast, and resolve ``method``.

    Returns ``(a, b, C, method, c_min, iterations)`` in the compute dtype (float64 if both
    histograms are float64, else float32).  Costs one host-device synchronisation (the
    min/max of ``cost`` and of each histogram, read together), none with
    ``check_inputs=False``: then only shapes, devices and settings are checked, ``method``
    must already be resolved and ``c_min`` stays a 0-d tensor on the device.
    """
    iterations = _check_settings(epsilon, iterations, method, tol, objective)
    if not check_inputs and method == "auto":
        raise ValueError(
            "check_inputs=False needs method='kernel' or 'log' (choosing between them reads the "
            "cost's range): resolve it once with resolve_method(cost, epsilon=..., method='auto')"
        )
    epsilon = float(epsilon)
    for name, p in (("source_probs", source_probs), ("target_probs", target_probs)):
        if p.dim() != 2:
            raise ValueError(
                f"{name} must be 2-D (B, L), got shape {tuple(p.shape)}; "
                "for a single histogram use .unsqueeze(0)"
            )
    if cost.dim() != 2:
        raise ValueError(
            "cost must be a 2-D (L_s, L_t) matrix shared by the batch, "
            f"got shape {tuple(cost.shape)}"
        )
    (bs, ls), (bt, lt) = source_probs.shape, target_probs.shape
    if bs != bt:
        raise ValueError(
            f"batch sizes differ: source_probs has {bs} rows and target_probs {bt}; "
            "row b of each must describe the same example"
        )
    if tuple(cost.shape) != (ls, lt):
        raise ValueError(
            f"cost has shape {tuple(cost.shape)} but source_probs has {ls} columns and "
            f"target_probs {lt}: cost must be (L_s, L_t) = ({ls}, {lt})"
        )
    if ls == 0 or lt == 0:
        raise ValueError(f"histograms need at least one bin, got L_s={ls}, L_t={lt}")
    if not (source_probs.device == target_probs.device == cost.device):
        raise ValueError(
            f"source_probs ({source_probs.device}), target_probs ({target_probs.device}) and "
            f"cost ({cost.device}) must be on one device: register cost as a module buffer "
            "or move it with cost.to(source_probs.device)"
        )

    dtype = _compute_dtype(source_probs, target_probs)
    C = cost.detach().to(dtype)

    def simplex(p: torch.Tensor) -> torch.Tensor:
        p = p.detach().to(dtype).clamp_min(PROB_FLOOR)
        return p / p.sum(dim=1, keepdim=True)

    if not check_inputs:
        return simplex(source_probs), simplex(target_probs), C, method, C.min(), iterations
    stats = [C.min(), C.max()]
    if bs:  # min/max propagate NaN, so one read also catches NaN, inf and negative entries
        stats += [t.to(dtype) for p in (source_probs, target_probs)
                  for t in (p.detach().min(), p.detach().max())]
    values = torch.stack(stats).tolist()  # the one sync
    c_min, c_max = values[:2]
    if not (math.isfinite(c_min) and math.isfinite(c_max) and c_min >= 0):
        check_cost_matrix(C)  # min/max found NaN, inf or a negative entry: raise with its position
    if bs:
        _check_histogram_values("source_probs", values[2], values[3])
        _check_histogram_values("target_probs", values[4], values[5])
    method = _resolve_method(method, c_min, c_max, epsilon, dtype)
    return simplex(source_probs), simplex(target_probs), C, method, c_min, iterations


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
    objective: str = "paper",
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


class _WassersteinFn(torch.autograd.Function):
    """Value of ``objective``; backward = its centred dual potentials (envelope theorem)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, source_probs, target_probs, cost, epsilon, iterations, method, tol, check_inputs,
        objective,
    ):
        with torch.autocast(device_type=source_probs.device.type, enabled=False):
            a, b, C, method, c_min, iterations = _prepare(
                source_probs, target_probs, cost, epsilon, iterations, method, tol, check_inputs,
                objective,
            )
            f, g, value = _solve(
                a, b, C, c_min, float(epsilon), iterations, method, "value", tol, objective
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


def wasserstein_loss(
    source_probs: torch.Tensor,
    target_probs: torch.Tensor,
    cost: torch.Tensor,
    *,
    epsilon: float = 0.1,
    iterations: int = 50,
    method: str = "auto",
    tol: float | None = None,
    check_inputs: bool = True,
    objective: str = "paper",
) -> torch.Tensor:
    r"""Per-row entropic OT loss between two batches of histograms, with envelope gradients.

    For every row :math:`b` it solves (Cuturi 2013)

    .. math::
        \gamma^*_b = \mathop{\arg\min}_{\gamma \in U(a_b, b_b)} \langle \gamma, C \rangle
                     - \varepsilon H(\gamma), \qquad
        H(\gamma) = -\sum_{ij} \gamma_{ij}\log\gamma_{ij},

    :math:`U(a, b) = \{\gamma \ge 0 : \gamma 1 = a,\ \gamma^\top 1 = b\}`, with a fixed number
    of Sinkhorn iterations, and returns, per ``objective``, one value of that plan:

    .. math::
        \text{paper:}\ \langle\gamma^*, C\rangle, \qquad
        \text{entropic:}\ W_H = \langle\gamma^*, C\rangle - \varepsilon H(\gamma^*), \qquad
        \text{kl:}\ W_{KL} = \langle\gamma^*, C\rangle
            + \varepsilon\,\mathrm{KL}(\gamma^* \,\|\, a \otimes b),

    :math:`\mathrm{KL}(\gamma\,\|\,a\otimes b) = \sum_{ij}\gamma_{ij}\log\frac{\gamma_{ij}}{a_i
    b_j}`.  These are POT's conventions: ``ot.sinkhorn2`` / ``res.value_linear`` for "paper",
    ``res.value`` of ``ot.solve(M, a, b, reg=epsilon, reg_type="entropy")`` (and of
    ``ot.batch.solve_batch``, whose ``entropy_batch`` is the same :math:`H`, without the
    :math:`-\sum\gamma` term some authors add) for "entropic", and of ``reg_type="KL"`` for "kl".
    All three have the same plan, since :math:`\mathrm{KL}(\gamma\,\|\,a\otimes b) = -H(\gamma)
    + H(a) + H(b)` on :math:`U(a, b)`, so :math:`W_{KL} = W_H + \varepsilon(H(a) + H(b))`.

    The gradient is the envelope gradient (Frogner et al. 2015, §4 and Algorithm 1) of the
    regularised value: with Sinkhorn's potentials :math:`f, g`
    (:math:`\gamma^*_{ij} = e^{(f_i + g_j - C_{ij})/\varepsilon}`, :func:`sinkhorn_potentials`),
    :math:`W_H = \langle f, a\rangle + \langle g, b\rangle` at convergence and

    .. math::
        \nabla_a W_H = f, \quad \nabla_b W_H = g, \qquad
        \nabla_a W_{KL} = f - \varepsilon\log a, \quad \nabla_b W_{KL} = g - \varepsilon\log b,

    up to a constant (Frogner et al. 2015; Feydy et al. 2019 for the KL form, whose dual
    potentials are :math:`f - \varepsilon\log a`, :math:`g - \varepsilon\log b`).  Each is
    **centred** (its row mean subtracted): only sum-zero directions stay on the simplex, and
    the centred vector is the gradient's projection onto that tangent space, e.g. for
    ``source_probs``

    .. math::
        \nabla_{a_b} = \bar g_b\,\big(\phi_b - \tfrac{1}{L_s}\textstyle\sum_i \phi_{b,i}\big),
        \qquad \phi = f \ \text{(paper, entropic)}, \quad \phi = f - \varepsilon\log a
        \ \text{(kl)},

    :math:`\bar g_b` being the incoming gradient (the same for ``target_probs`` with ``g``).
    Through a softmax the constant is irrelevant anyway (its Jacobian maps constant vectors
    to 0), so ``d loss / d logits`` is the true derivative of the regularised value along the
    simplex.

    * ``"paper"`` (this function's default, JTLN's and Frogner et al.'s choice) is
      **inconsistent**: it returns :math:`\langle\gamma^*, C\rangle` but back-propagates
      :math:`\nabla W_H`, the gradient of a different function.  The difference is the
      gradient of :math:`-\varepsilon H(\gamma^*(a, b))`, a hidden confidence penalty
      (Pereyra et al. 2017): under a constant cost the value is flat, yet the gradient is
      :math:`\varepsilon(\log a - \overline{\log a})`, and descending it raises the
      histograms' entropy (pushes them towards uniform).  Finite differences of the returned
      value do not match its gradient.
    * ``"entropic"`` returns :math:`W_H` and its gradient (the same gradient as "paper"):
      consistent.  :math:`W_H` can be negative (:math:`\ge \mathrm{OT}_0 - \varepsilon(H(a)
      + H(b))`); under a constant cost it is :math:`c - \varepsilon(H(a) + H(b))`.
    * ``"kl"`` returns :math:`W_{KL} \ge \langle\gamma^*, C\rangle \ge 0` and its gradient:
      consistent, and under a constant cost the value is the constant and the gradient is
      zero up to rounding: the KL potentials are computed as :math:`-\varepsilon\log` of the
      last Sinkhorn updates' denominators (:math:`K v`, :math:`K^\top u` or their
      log-sum-exps), whose rows a constant cost makes equal in exact arithmetic. In floating
      point the rows of a reduction may be summed in different orders (vectorised kernels
      treat the tail of a row apart), so they agree to a few units of roundoff of the
      potentials' size, not bit for bit: the gradient is at most ~``2 n u (5M + L)`` times ε
      (``n`` iterations, ``u`` the unit roundoff, ``M ~ 2 |log PROB_FLOOR|``), i.e. zero to
      rounding on every CPU.

    The values are the primal values of the returned (possibly unconverged) plan, as POT
    computes ``res.value`` from its plan; the envelope gradients are exact at convergence.
    Nothing is back-propagated through the iterations, and only two centred ``(B, L)``
    potentials (not the plan) are kept for backward, for every objective.  No gradient flows
    into ``cost``: it is treated as a constant (detached if it requires grad).  The floor and
    renormalisation below are not differentiated either (the centred potentials are passed
    straight to the inputs).

    Parameters
    ----------
    source_probs : torch.Tensor, shape (B, L_s)
        Source-class histograms, rows on the simplex (e.g. softmax outputs).  Entries are
        clamped at ``PROB_FLOOR = 1e-8`` and each row renormalised, so one-hot and zero
        entries are fine.
    target_probs : torch.Tensor, shape (B, L_t)
        Target-class histograms, treated the same way.
    cost : torch.Tensor, shape (L_s, L_t)
        Finite, non-negative ground cost shared by all rows.
    epsilon : float
        Entropic regularisation :math:`\varepsilon > 0` (the paper's :math:`1/\lambda`).
    iterations : int
        Number of Sinkhorn iterations; the maximum when ``tol`` is given.
    method : {"auto", "kernel", "log"}
        ``"kernel"``: scaling iterations :math:`u = a / (K v)`, :math:`v = b / (K^\top u)`
        with :math:`K = e^{-(C - \min C)/\varepsilon}` as batched matmuls (Cuturi 2013).
        ``"log"``:
        :math:`f = \varepsilon\log a - \varepsilon\,\mathrm{LSE}_j((g_j - C_{ij})/\varepsilon)`
        and the symmetric update for ``g`` (Schmitzer 2019; Peyré & Cuturi 2019, §4.4),
        stable for tiny :math:`\varepsilon`.  ``"auto"``: kernel if
        :math:`(\max C - \min C)/\varepsilon \le` ``KERNEL_MAX_RANGE[dtype]`` (50 in float32),
        else log.
    tol : float, optional
        Stop early once :math:`\max_b \lVert\gamma_b \mathbf{1} - a_b\rVert_1 \le` ``tol``
        (the plans' row sums; their column sums are exact after every iteration), tested every
        :data:`CHECK_EVERY` iterations (one host-device synchronisation each).  ``None``
        (default): exactly ``iterations`` iterations, no synchronisation, CUDA-graph friendly.
        The value's error against the converged plan is within ``tol`` times the cost's range
        (tested against POT's converged Sinkhorn in ``tests/test_ot_fast.py``).  float32
        cannot resolve a ``tol`` below ~1e-6.
    check_inputs : bool
        ``True`` (default): check the values of the cost and the histograms (one host-device
        synchronisation per call).  ``False``: check shapes, devices and settings only, never
        synchronise; ``method`` must then be ``"kernel"`` or ``"log"``, resolved beforehand with
        :func:`resolve_method` (which also checks the cost; pass it the compute dtype, float32
        unless both histograms are float64), and NaN inputs give NaN outputs.
    objective : {"paper", "entropic", "kl"}
        Which value is returned and differentiated, see above.  ``"paper"`` (default):
        :math:`\langle\gamma^*, C\rangle` with the gradient of :math:`W_H` (inconsistent);
        ``"entropic"``: :math:`W_H`; ``"kl"``: :math:`W_{KL}`.  The two consistent ones cost
        the same as "paper" (one ``(B, L_s, L_t)`` product or reduction for the value).

    Returns
    -------
    torch.Tensor, shape (B,)
        The ``objective``'s value per row.  Computed and returned in float32 (autocast is
        disabled inside; half/bfloat16 inputs are upcast), or in float64 when both histograms
        are float64.  Gradients come back in each input's dtype.  ``B = 0`` gives an empty
        tensor that back-propagates zero-size gradients.

    Raises
    ------
    ValueError
        On a non-2-D or mis-shaped ``cost``, differing batch sizes, non-finite or negative
        cost entries, NaN, infinite or negative histogram entries (logits passed instead of
        probabilities, or a network that already diverged), ``epsilon`` not finite and
        ``> 0``, ``iterations`` not an integer ``>= 1``, an unknown ``method`` or
        ``objective``, or
        ``method="kernel"`` where :math:`(\max C - \min C)/\varepsilon` exceeds
        :data:`KERNEL_MAX_RANGE` (the kernel would underflow; ``"auto"`` switches to the log
        domain there instead).  Each message names the problem and the fix.

    Notes
    -----
    **Numerical guarantees** (tested in ``tests/test_ot_numerics.py``).  For any finite,
    non-negative cost, :math:`\varepsilon \in [10^{-3}, 10]` with a cost range up to 1
    (the range :func:`jtln_hf.cost.normalize_cost` produces), histograms with zeros, one-hot
    rows or entries far below ``PROB_FLOOR``, any ``L_s, L_t >= 1`` and float16, bfloat16,
    float32 or float64 inputs, the value, the plan and the gradients are finite (``"auto"``).
    The iterates are exactly POT's Sinkhorn iterates (``ot.sinkhorn(..., method="sinkhorn"
    / "sinkhorn_log")`` on the transposed problem, which updates the same side first), so
    for the same number of iterations the two agree to rounding: ~1e-12 relative in float64;
    in float32 the log-domain exponents carry an absolute error of about
    :math:`6\cdot10^{-8}\,(\max C - \min C)/\varepsilon`, so plan entries are accurate to
    that relative error (~1e-4 at :math:`\varepsilon = 10^{-3}` for a cost range of 1).
    With a fixed iteration count the plan is only as converged as Sinkhorn gets in that
    many iterations: its column sums are exact, its row sums converge linearly, more slowly
    for small :math:`\varepsilon` (raise ``iterations`` when ``epsilon`` is small).  When
    converged, :math:`0 \le \langle\gamma^*, C\rangle - \mathrm{OT}_0(a, b) \le
    \varepsilon \min(H(a), H(b))` against the exact OT cost (``ot.emd2``).

    References
    ----------
    M. Cuturi, "Sinkhorn distances: lightspeed computation of optimal transport", NeurIPS 2013.
    C. Frogner, C. Zhang, H. Mobahi, M. Araya-Polo, T. Poggio, "Learning with a Wasserstein
    loss", NeurIPS 2015.
    B. Schmitzer, "Stabilized sparse scaling algorithms for entropy regularized transport
    problems", SIAM J. Sci. Comput. 2019.
    G. Peyré, M. Cuturi, "Computational optimal transport", Found. Trends Mach. Learn. 2019.
    G. Pereyra, G. Tucker, J. Chorowski, Ł. Kaiser, G. Hinton, "Regularizing neural networks by
    penalizing confident output distributions", ICLR workshop 2017.
    J. Feydy, T. Séjourné, F.-X. Vialard, S. Amari, A. Trouvé, G. Peyré, "Interpolating between
    optimal transport and MMD using Sinkhorn divergences", AISTATS 2019 (the KL form).
    """
    return _WassersteinFn.apply(
        source_probs, target_probs, cost, epsilon, iterations, method, tol, check_inputs, objective
    )


def sinkhorn_potentials(
    source_probs: torch.Tensor,
    target_probs: torch.Tensor,
    cost: torch.Tensor,
    *,
    epsilon: float = 0.1,
    iterations: int = 50,
    method: str = "auto",
    tol: float | None = None,
    check_inputs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Dual potentials of the entropic OT problems solved by :func:`wasserstein_loss`.

    Returns ``f`` (B, L_s) and ``g`` (B, L_t) with

    .. math::
        \gamma^*_b[i, j] = \exp\big((f_{b,i} + g_{b,j} - C_{ij})/\varepsilon\big),

    i.e. :math:`f = \varepsilon \log u + \min C`, :math:`g = \varepsilon\log v` for Sinkhorn's
    scalings (Cuturi 2013; Peyré & Cuturi 2019, Prop. 4.3).  The regularised value is
    :math:`\langle f, a\rangle + \langle g, b\rangle` and, centred, ``f``/``g`` are its
    gradients on the simplex (Frogner et al. 2015).  Arguments, flooring, dtype rules and
    errors as in :func:`wasserstein_loss`; the outputs carry no autograd graph.
    """
    with torch.no_grad(), torch.autocast(device_type=source_probs.device.type, enabled=False):
        a, b, C, method, c_min, iterations = _prepare(
            source_probs, target_probs, cost, epsilon, iterations, method, tol, check_inputs
        )
        f, g, _ = _solve(a, b, C, c_min, float(epsilon), iterations, method, "none", tol)
    return f, g


def transport_plan(
    source_probs: torch.Tensor,
    target_probs: torch.Tensor,
    cost: torch.Tensor,
    *,
    epsilon: float = 0.1,
    iterations: int = 50,
    method: str = "auto",
    tol: float | None = None,
    check_inputs: bool = True,
) -> torch.Tensor:
    r"""Entropic OT plans :math:`\gamma^*_b` (B, L_s, L_t) of :func:`wasserstein_loss`.

    :math:`\gamma^*_b = \mathrm{diag}(u_b)\, K\, \mathrm{diag}(v_b)` (kernel domain) or
    :math:`\exp((f_{b,i} + g_{b,j} - C_{ij})/\varepsilon)` (log domain).  After the last
    iteration the column sums equal the (floored, renormalised) ``target_probs`` exactly and
    the row sums ``source_probs`` up to the solver's convergence.  Arguments, dtype rules and
    errors as in :func:`wasserstein_loss`; the output carries no autograd graph.
    """
    with torch.no_grad(), torch.autocast(device_type=source_probs.device.type, enabled=False):
        a, b, C, method, c_min, iterations = _prepare(
            source_probs, target_probs, cost, epsilon, iterations, method, tol, check_inputs
        )
        return _solve(a, b, C, c_min, float(epsilon), iterations, method, "plan", tol)[2]


class WassersteinLoss(torch.nn.Module):
    r"""Module form of :func:`wasserstein_loss` with a batch reduction.

    Parameters
    ----------
    epsilon, iterations, method, tol, objective
        As in :func:`wasserstein_loss` (``objective="paper"``, the default, returns the linear
        cost but back-propagates the entropic value's gradient; ``"entropic"`` and ``"kl"``
        return the value they differentiate).
    reduction : {"mean", "sum", "none"}
        How the (B,) per-row costs are reduced.  ``"mean"`` of an empty batch is 0 (not NaN).
    """

    def __init__(
        self, epsilon: float = 0.1, iterations: int = 50, method: str = "auto",
        reduction: str = "mean", tol: float | None = None, objective: str = "paper",
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        _check_settings(epsilon, iterations, method, tol, objective)
        self.epsilon, self.iterations, self.method, self.reduction, self.tol = (
            epsilon, iterations, method, reduction, tol
        )
        self.objective = objective

    def forward(
        self, source_probs: torch.Tensor, target_probs: torch.Tensor, cost: torch.Tensor
    ) -> torch.Tensor:
        loss = wasserstein_loss(
            source_probs, target_probs, cost,
            epsilon=self.epsilon, iterations=self.iterations, method=self.method, tol=self.tol,
            objective=self.objective,
        )
        if self.reduction == "none":
            return loss
        total = loss.sum()
        return total / max(loss.shape[0], 1) if self.reduction == "mean" else total

    def extra_repr(self) -> str:
        return (f"epsilon={self.epsilon}, iterations={self.iterations}, "
                f"method={self.method!r}, reduction={self.reduction!r}, tol={self.tol}, "
                f"objective={self.objective!r}")
