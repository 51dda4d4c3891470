"""``objective``: which value ``wasserstein_loss`` returns, and whether its gradient is that value's.

References (float64 unless said otherwise), independent of our solver:

* values: POT run to convergence, ``ot.solve(M, a, b, reg=eps, reg_type=...)`` per row and
  ``ot.batch.solve_batch(M, reg=eps, a=a, b=b, reg_type=...)`` for the batch, ``res.value_linear``
  for "paper" and ``res.value`` for "entropic" (``reg_type="entropy"``) and "kl"
  (``reg_type="KL"`` / ``"kl"``).  POT's conventions, read in its source (POT 0.9.7.post1):
  ``reg_type="entropy"`` adds ``reg * sum(T log T)``, i.e. H(T) = -sum T log T, with no
  ``-sum T`` term (``ot/solvers/_linear.py``; ``ot/batch/_utils.py::entropy_batch``), and
  ``"KL"`` adds ``reg * sum T log(T / (a b^T))`` (``nx.kl_div`` without its mass term);
  both add 1e-16 inside the logarithm.  With H(T) = -sum T (log T - 1) instead, the value would
  be lower by exactly eps (plans have mass 1), with the same gradient;
* gradients: central finite differences *on the simplex*: the logits are perturbed and the
  histograms are their softmax, so the derivative compared is d value / d logits, the one
  training uses, and the FD of POT's value is compared with our autograd gradient.

"paper" keeps the JTLN paper's inconsistency (value <gamma, C>, gradient of
<gamma, C> - eps H(gamma)); its tests show that the FD of the returned value does *not* match
its gradient, while "entropic" and "kl" match.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import ot
import pytest
import torch
from conftest import make_args, make_model, make_trainer
from ot.batch import solve_batch
from test_ot_fast import peaked_problem
from tolerances import sinkhorn_potential_error, sinkhorn_value_atol, softmax_backward_bound

from jtln_hf.training.loss import JTLNLoss
from jtln_hf.sinkhorn import OBJECTIVES, check_settings, transport_plan, wasserstein_loss

METHODS = ("kernel", "log")
POT_REG_TYPE = {"paper": "entropy", "entropic": "entropy", "kl": "KL"}


def logits_problem(B=3, Ls=7, Lt=5, seed=0, scale=2.0):
    """Logits of both heads (float64) and a [0, 1] cost; histograms are their softmax."""
    g = torch.Generator().manual_seed(seed)
    zs = scale * torch.randn(B, Ls, generator=g, dtype=torch.float64)
    zt = scale * torch.randn(B, Lt, generator=g, dtype=torch.float64)
    C = torch.rand(Ls, Lt, generator=g, dtype=torch.float64)
    return zs, zt, C


def pot_value(a, b, C, eps, objective):
    """POT's converged float64 value of ``objective`` for one pair of numpy histograms."""
    res = ot.solve(C, a, b, reg=eps, reg_type=POT_REG_TYPE[objective], max_iter=200_000, tol=1e-14)
    return float(res.value_linear if objective == "paper" else res.value)


def pot_values(a, b, C, eps, objective):
    """``pot_value`` for every row of (B, L) tensors, as a float64 tensor."""
    Cn = C.double().numpy()
    return torch.tensor([pot_value(a[i].double().numpy(), b[i].double().numpy(), Cn, eps, objective)
                         for i in range(a.shape[0])], dtype=torch.float64)  # fmt: skip


def entropy(p):
    """H(p) = -sum p log p per row (the convention of POT's reg_type='entropy')."""
    return -(p * p.log()).sum(dim=-1)


# 1. values vs POT ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("eps", [0.05, 0.5])
def test_converged_value_matches_pot(objective, method, eps):
    zs, zt, C = logits_problem(B=4, seed=1)
    a, b = zs.softmax(1), zt.softmax(1)
    ours = wasserstein_loss(a, b, C, epsilon=eps, iterations=3000, method=method, objective=objective)
    torch.testing.assert_close(ours, pot_values(a, b, C, eps, objective), rtol=0, atol=1e-11)
    # the batched solver, whose reg_type is lower case and which needs one cost per problem
    res = solve_batch(M=C.expand(4, *C.shape), reg=eps, a=a, b=b, max_iter=20_000, tol=1e-14,
                      method="log_sinkhorn", reg_type=POT_REG_TYPE[objective].lower(), grad="detach")
    ref = res.value_linear if objective == "paper" else res.value
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-11)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_is_pots_formula_on_the_returned_plan(objective, method, dtype):
    """Unconverged (3 iterations): the value is POT's formula evaluated on *our* plan, up to the
    rounding of the value and of the plan (tests/tolerances.py, R = 1/eps: C in [0, 1])."""
    atol = 2 * sinkhorn_value_atol(dtype, 3, 1 / 0.1, 7, 5, epsilon=0.1, cost_max=1.0)
    zs, zt, C = logits_problem(B=5, seed=2)
    a, b, C = zs.softmax(1).to(dtype), zt.softmax(1).to(dtype), C.to(dtype)
    eps = 0.1
    value = wasserstein_loss(a, b, C, epsilon=eps, iterations=3, method=method, objective=objective)
    P = transport_plan(a, b, C, epsilon=eps, iterations=3, method=method).double()
    A, Bh = a.double() / a.double().sum(1, keepdim=True), b.double() / b.double().sum(1, keepdim=True)
    linear = (P * C.double()).sum((1, 2))
    want = {
        "paper": linear,
        "entropic": linear + eps * (P * P.log()).sum((1, 2)),
        "kl": linear + eps * (P * (P / (A[:, :, None] * Bh[:, None, :])).log()).sum((1, 2)),
    }[objective]
    assert (P.sum(2) - A).abs().max() > 1e-3  # really unconverged: the row sums are still off
    assert value.dtype == dtype
    torch.testing.assert_close(value.double(), want, rtol=0, atol=atol)


def test_objectives_order_and_the_kl_entropy_identity():
    """Same plan: W_KL = W_H + eps (H(a) + H(b)) >= <gamma, C> >= W_H; 'paper' is the linear value."""
    zs, zt, C = logits_problem(B=6, seed=3)
    a, b = zs.softmax(1), zt.softmax(1)
    eps = 0.2
    v = {o: wasserstein_loss(a, b, C, epsilon=eps, iterations=2000, objective=o) for o in OBJECTIVES}
    torch.testing.assert_close(v["kl"], v["entropic"] + eps * (entropy(a) + entropy(b)), rtol=0, atol=1e-12)
    assert (v["kl"] >= v["paper"]).all() and (v["paper"] >= v["entropic"]).all()
    # the default objective is "entropic" (the training default): the same call, the same operations
    same = sinkhorn_value_atol(torch.float64, 2000, 1 / eps, 7, 5, epsilon=eps, cost_max=1.0)
    default = wasserstein_loss(a, b, C, epsilon=eps, iterations=2000)
    torch.testing.assert_close(v["entropic"], default, rtol=0, atol=same)


# 2. gradients vs finite differences on the simplex ----------------------------------------------
def autograd_directional(zs, zt, C, eps, method, objective, ds, dt, iterations=3000):
    """Autograd d value / d logits (through the softmax), per row, along (ds, dt)."""
    x, y = zs.clone().requires_grad_(), zt.clone().requires_grad_()
    value = wasserstein_loss(x.softmax(1), y.softmax(1), C, epsilon=eps, iterations=iterations,
                             method=method, objective=objective)  # fmt: skip
    gx, gy = torch.autograd.grad(value.sum(), (x, y))
    return (gx * ds).sum(1) + (gy * dt).sum(1)


def fd_directional(value_fn, zs, zt, ds, dt, h):
    """Central finite difference of ``value_fn(softmax(zs), softmax(zt))`` along (ds, dt)."""
    plus = value_fn((zs + h * ds).softmax(1), (zt + h * dt).softmax(1))
    minus = value_fn((zs - h * ds).softmax(1), (zt - h * dt).softmax(1))
    return (plus - minus) / (2 * h)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("objective", ["entropic", "kl"])
def test_consistent_objectives_gradient_is_fd_of_their_value(objective, method):
    zs, zt, C = logits_problem(B=3, seed=4)
    eps, h = 0.1, 1e-5
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        ds = torch.randn(zs.shape, generator=g, dtype=torch.float64)
        dt = torch.randn(zt.shape, generator=g, dtype=torch.float64)
        analytic = autograd_directional(zs, zt, C, eps, method, objective, ds, dt)
        fd_pot = fd_directional(lambda a, b: pot_values(a, b, C, eps, objective), zs, zt, ds, dt, h)
        fd_ours = fd_directional(
            lambda a, b: wasserstein_loss(a, b, C, epsilon=eps, iterations=3000, method=method,
                                          objective=objective), zs, zt, ds, dt, h)  # fmt: skip
        torch.testing.assert_close(analytic, fd_pot, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(analytic, fd_ours, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_paper_gradient_is_not_the_gradient_of_its_value(method):
    """The documented inconsistency: 'paper' returns <gamma, C> but its gradient is W_H's."""
    zs, zt, C = logits_problem(B=3, seed=4)
    eps, h = 0.1, 1e-5
    g = torch.Generator().manual_seed(6)
    ds = torch.randn(zs.shape, generator=g, dtype=torch.float64)
    dt = torch.randn(zt.shape, generator=g, dtype=torch.float64)
    analytic = autograd_directional(zs, zt, C, eps, method, "paper", ds, dt)
    fd_value = fd_directional(lambda a, b: pot_values(a, b, C, eps, "paper"), zs, zt, ds, dt, h)
    fd_entropic = fd_directional(lambda a, b: pot_values(a, b, C, eps, "entropic"), zs, zt, ds, dt, h)
    assert ((analytic - fd_value).abs() > 0.05 * fd_value.abs().clamp_min(1e-3)).all(), (analytic, fd_value)
    torch.testing.assert_close(analytic, fd_entropic, rtol=1e-6, atol=1e-9)
    # and it is the 'entropic' objective's gradient: the same plan's centred potentials, computed
    # by two code paths whose float64 rounding is bounded by the potentials' error (tests/tolerances.py),
    # times |d| through the softmax; the difference from fd_value above is 5% and more
    delta = eps * sinkhorn_potential_error(torch.float64, 3000, 1 / eps, 7, 5)
    bound = softmax_backward_bound(2 * 2 * delta) * float(ds.abs().sum(1).max() + dt.abs().sum(1).max())
    entropic = autograd_directional(zs, zt, C, eps, method, "entropic", ds, dt)
    torch.testing.assert_close(analytic, entropic, rtol=0, atol=bound)
    assert bound < 1e-3 * float((analytic - fd_value).abs().min())  # the check can tell the two apart


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_gradient_wrt_probabilities_is_centred(objective, method):
    """The gradient w.r.t. each histogram is the potential projected on the simplex's tangent space."""
    zs, zt, C = logits_problem(B=4, seed=7)
    a, b = zs.softmax(1).requires_grad_(), zt.softmax(1).requires_grad_()
    eps = 0.1
    value = wasserstein_loss(a, b, C, epsilon=eps, iterations=3000, method=method, objective=objective)
    ga, gb = torch.autograd.grad(value.sum(), (a, b))
    torch.testing.assert_close(ga.sum(1), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-13)
    torch.testing.assert_close(gb.sum(1), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-13)
    # the KL potentials are the entropic ones minus eps log of the histogram (Feydy et al. 2019)
    if objective == "kl":
        wa, wb = torch.autograd.grad(
            wasserstein_loss(a, b, C, epsilon=eps, iterations=3000, method=method, objective="entropic").sum(),
            (a, b))  # fmt: skip
        for got, w, p in ((ga, wa, a), (gb, wb, b)):
            shift = eps * p.detach().log()
            torch.testing.assert_close(got, w - (shift - shift.mean(1, keepdim=True)), rtol=0, atol=1e-12)


# 3. constant cost ------------------------------------------------------------------------------
def kl_constant_cost_gradient_bound(dtype, iterations, Ls, Lt, eps):
    """|d value / d logits| under a constant cost for 'kl': zero in exact arithmetic, at most this
    in ``dtype``. Its potentials -eps LSE(...) are equal across a row up to the potentials' error
    ``eps δ`` (tests/tolerances.py, R = 0: the solver works on C - min C = 0), centring at most
    doubles it, and the softmax's backward at most doubles it again."""
    delta = eps * sinkhorn_potential_error(dtype, iterations, 0.0, Ls, Lt)
    return softmax_backward_bound(2 * delta)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("check_inputs", [True, False])
def test_kl_constant_cost_gives_the_constant_and_zero_gradient_to_rounding(method, dtype, check_inputs):
    """Zero in exact arithmetic; in floating point, within the rounding bound above, which is far
    below the gradient that 'entropic' and 'paper' have on the same problem (their constant-cost
    gradient is eps (log p - mean log p), of size ~0.1 here)."""
    zs, zt, _ = logits_problem(B=5, seed=8)
    x, y = zs.to(dtype).requires_grad_(), zt.to(dtype).requires_grad_()
    C = torch.full((7, 5), 0.37, dtype=dtype)
    for iterations in (1, 3, 50):
        value = wasserstein_loss(x.softmax(1), y.softmax(1), C, epsilon=0.05, iterations=iterations,
                                 method=method, objective="kl", check_inputs=check_inputs)  # fmt: skip
        gx, gy = torch.autograd.grad(value.sum(), (x, y))
        atol = sinkhorn_value_atol(dtype, iterations, 0.0, 7, 5, epsilon=0.05, cost_max=0.37)
        torch.testing.assert_close(value, torch.full((5,), 0.37, dtype=dtype), rtol=0, atol=atol)
        bound = kl_constant_cost_gradient_bound(dtype, iterations, 7, 5, 0.05)
        assert gx.abs().max() <= bound and gy.abs().max() <= bound, (gx.abs().max(), gy.abs().max(), bound)
        other = wasserstein_loss(x.softmax(1), y.softmax(1), C, epsilon=0.05, iterations=iterations,
                                 method=method, objective="entropic", check_inputs=check_inputs)  # fmt: skip
        ex, _ = torch.autograd.grad(other.sum(), (x, y))
        assert ex.abs().max() > 10 * bound  # the bound is far below a real gradient


@pytest.mark.parametrize("method", METHODS)
def test_entropic_constant_cost_is_the_constant_minus_the_entropies(method):
    zs, zt, _ = logits_problem(B=4, seed=9)
    C, eps, h = torch.full((7, 5), 0.37, dtype=torch.float64), 0.1, 1e-5
    a, b = zs.softmax(1), zt.softmax(1)
    value = wasserstein_loss(a, b, C, epsilon=eps, iterations=3, method=method, objective="entropic")
    torch.testing.assert_close(value, 0.37 - eps * (entropy(a) + entropy(b)), rtol=0, atol=1e-14)
    torch.testing.assert_close(value, pot_values(a, b, C, eps, "entropic"), rtol=0, atol=1e-12)
    g = torch.Generator().manual_seed(10)
    ds = torch.randn(zs.shape, generator=g, dtype=torch.float64)
    dt = torch.randn(zt.shape, generator=g, dtype=torch.float64)
    analytic = autograd_directional(zs, zt, C, eps, method, "entropic", ds, dt, iterations=3)
    fd = fd_directional(lambda p, q: 0.37 - eps * (entropy(p) + entropy(q)), zs, zt, ds, dt, h)
    torch.testing.assert_close(analytic, fd, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_paper_constant_cost_is_flat_but_its_gradient_is_not_zero(method):
    """The hidden confidence penalty: value constant, gradient eps (log a - mean log a)."""
    zs, _, _ = logits_problem(B=4, seed=11)
    a = zs.softmax(1).requires_grad_()
    b = torch.full((4, 5), 0.2, dtype=torch.float64)
    C, eps = torch.full((7, 5), 0.37, dtype=torch.float64), 0.1
    value = wasserstein_loss(a, b, C, epsilon=eps, iterations=3, method=method, objective="paper")
    torch.testing.assert_close(value, torch.full((4,), 0.37, dtype=torch.float64), rtol=0, atol=1e-15)
    (grad,) = torch.autograd.grad(value.sum(), a)
    log_a = a.detach().log()
    torch.testing.assert_close(grad, eps * (log_a - log_a.mean(1, keepdim=True)), rtol=0, atol=1e-13)
    assert grad.abs().max() > 0.1  # not a rounding artefact: a gradient on a flat function


# 4. the value the JTLN loss logs is the value that is differentiated ----------------------------------
def loss_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    domain = torch.tensor([0, 1, 1, 0, 1, 1])
    logits, source_logits = 1.5 * torch.randn(6, 3, generator=g), 1.5 * torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    return logits, source_logits, labels, domain, torch.rand(4, 3, generator=g)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_jtln_loss_logs_the_objectives_value(objective):
    logits, source_logits, labels, domain, C = loss_batch()
    parts = JTLNLoss(ot_epsilon=0.1, ot_iterations=1000, ot_objective=objective)(
        logits, source_logits, labels, domain, C)  # fmt: skip
    t = domain == 1
    ref = pot_values(source_logits[t].double().softmax(1), logits[t].double().softmax(1), C, 0.1, objective)
    assert parts["ot"].item() == pytest.approx(ref.mean().item(), rel=1e-5, abs=1e-6)
    assert parts["loss"].item() == pytest.approx(
        (parts["ce_target"] + parts["ce_source"] + parts["ot"]).item(), rel=1e-6)  # fmt: skip


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_the_logged_ot_and_its_gradient_are_the_solvers(objective):
    """JTLNLoss's ``ot`` part is the mean over the target rows of ``wasserstein_loss`` of the two heads'
    softmaxes, and its gradient w.r.t. both heads' logits is that function's: compared, in float32,
    with the same function computed in float64, within the derived float32 bounds (tests/tolerances.py).
    Whether that function's gradient is the gradient of its value (yes for 'entropic' and 'kl', no for
    'paper') is tested above in float64, where finite differences are accurate."""
    logits, source_logits, labels, domain, C = loss_batch()
    eps, n = 0.1, 50
    loss_fn = JTLNLoss(ot_epsilon=eps, ot_iterations=n, ot_objective=objective)
    x, y = logits.clone().requires_grad_(), source_logits.clone().requires_grad_()
    ot_part = loss_fn(x, y, labels, domain, C)["ot"]
    gx, gy = torch.autograd.grad(ot_part, (x, y))

    t = domain == 1
    x64, y64 = logits.double().requires_grad_(), source_logits.double().requires_grad_()
    want = wasserstein_loss(y64[t].softmax(1), x64[t].softmax(1), C.double(), epsilon=eps, iterations=n,
                            objective=objective).mean()  # fmt: skip
    wx, wy = torch.autograd.grad(want, (x64, y64))
    R, (Ls, Lt) = float(C.max() - C.min()) / eps, C.shape
    value_tol = sinkhorn_value_atol(torch.float32, n, R, Ls, Lt, epsilon=eps, cost_max=float(C.max()))
    # the gradient w.r.t. each histogram is a centred potential (error 2 eps delta), through the softmax
    grad_tol = softmax_backward_bound(2 * eps * sinkhorn_potential_error(torch.float32, n, R, Ls, Lt))
    assert ot_part.item() == pytest.approx(want.item(), rel=0, abs=2 * value_tol)
    torch.testing.assert_close(gx.double(), wx, rtol=0, atol=2 * grad_tol)
    torch.testing.assert_close(gy.double(), wy, rtol=0, atol=2 * grad_tol)
    assert wx[t].abs().max() > 10 * grad_tol  # a real gradient, not one lost in the bound
    assert gx[~t].abs().max() == 0 and gy[~t].abs().max() == 0  # source rows: no OT gradient (no arithmetic)


def test_jtln_loss_kl_constant_cost_contributes_no_gradient():
    """Zero to rounding: the solver's bound (float32, the loss's 50 iterations; the mean over the
    target rows only shrinks it), far below the 'entropic' objective's gradient on the same batch."""
    logits, source_logits, labels, domain, _ = loss_batch(seed=2)
    x, y = logits.clone().requires_grad_(), source_logits.clone().requires_grad_()
    loss = JTLNLoss(ot_objective="kl")
    parts = loss(x, y, labels, domain, torch.full((4, 3), 0.5))
    gx, gy = torch.autograd.grad(parts["ot"], (x, y))
    settings = loss.settings
    atol = sinkhorn_value_atol(torch.float32, settings.ot_iterations, 0.0, 4, 3, epsilon=settings.ot_epsilon,
                               cost_max=0.5)  # fmt: skip
    assert parts["ot"].item() == pytest.approx(0.5, abs=atol)
    bound = kl_constant_cost_gradient_bound(torch.float32, settings.ot_iterations, 4, 3, settings.ot_epsilon)
    assert gx.abs().max() <= bound and gy.abs().max() <= bound
    entropic = JTLNLoss(ot_objective="entropic")(x, y, labels, domain, torch.full((4, 3), 0.5))
    ex, _ = torch.autograd.grad(entropic["ot"], (x, y))
    assert ex.abs().max() > 10 * bound


# 5. solver domains and tol (the sync-free call, tol's stopping rule, the saved tensors and the
# empty batch are checked for every objective in tests/test_ot_fast.py and tests/test_ot.py) -------
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_kernel_and_log_agree_for_every_objective(objective):
    a, b, C = peaked_problem(16, 9, 4, seed=3)
    outs, grads = {}, {}
    for method in METHODS:
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        outs[method] = wasserstein_loss(x, y, C, epsilon=0.1, method=method, objective=objective)
        grads[method] = torch.autograd.grad(outs[method].sum(), (x, y))
    # the same iterates in two domains, float32: each within its bound (tests/tolerances.py), 50
    # iterations, R = 1/0.1; the gradients are the centred potentials (centring doubles an error)
    R, (Ls, Lt) = float(C.max() - C.min()) / 0.1, C.shape
    atol = 2 * sinkhorn_value_atol(torch.float32, 50, R, Ls, Lt, epsilon=0.1, cost_max=float(C.max()))
    pot = 2 * 2 * 0.1 * sinkhorn_potential_error(torch.float32, 50, R, Ls, Lt)
    torch.testing.assert_close(outs["kernel"], outs["log"], rtol=0, atol=atol)
    torch.testing.assert_close(grads["kernel"], grads["log"], rtol=0, atol=pot)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("objective", ["entropic", "kl"])
def test_tol_value_close_to_pot_converged(objective, method):
    """float64, tol=1e-7: within 1e-6 of POT's converged value (the primal value of a near-feasible plan)."""
    a, b, C = peaked_problem(8, 60, 20, seed=1, dtype=torch.float64)
    got = wasserstein_loss(a, b, C, epsilon=0.05, iterations=20_000, method=method, tol=1e-7, objective=objective)
    assert (got - pot_values(a, b, C, 0.05, objective)).abs().max().item() <= 1e-6


# 6. validation and plumbing ----------------------------------------------------------------------
CHOICES = r"objective must be one of \('paper', 'entropic', 'kl'\), got 'sharp'"


def test_unknown_objective_is_refused_everywhere(tmp_path):
    a, b, C = peaked_problem(2, 3, 2)
    with pytest.raises(ValueError, match=CHOICES):
        wasserstein_loss(a, b, C, objective="sharp")
    with pytest.raises(ValueError, match=CHOICES):
        check_settings(0.05, 50, "auto", objective="sharp")
    with pytest.raises(ValueError, match=CHOICES):
        JTLNLoss(ot_objective="sharp")
    with pytest.raises(ValueError, match="ot_" + CHOICES):
        make_args(tmp_path, ot_objective="sharp")
    assert make_args(tmp_path).ot_objective == "entropic"  # the training default, chosen by recipes/sweep.py
    assert JTLNLoss().settings.ot_objective == "entropic"
    # the library's default is the recipe's: a user of wasserstein_loss gets the consistent gradient
    assert inspect.signature(wasserstein_loss).parameters["objective"].default == "entropic"
    assert inspect.signature(check_settings).parameters["objective"].default == "entropic"


def test_trainer_passes_ot_objective_to_the_loss(small_split, tmp_path):
    trainer = make_trainer(make_model(), small_split["joint"], tmp_path, ot_objective="kl")
    assert trainer.loss_settings.ot_objective == "kl"
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, next(iter(trainer.get_train_dataloader())))
    assert math.isfinite(loss.item())


def test_pot_entropy_convention_is_minus_sum_p_log_p():
    """Pins the convention matched above: POT's entropic value has no -sum(T) term (0.9.7)."""
    a, b = np.array([0.3, 0.7]), np.array([0.6, 0.4])
    C = np.zeros((2, 2))
    res = ot.solve(C, a, b, reg=1.0, reg_type="entropy")
    plan = np.outer(a, b)  # a zero cost: the entropic plan is the independent coupling
    assert res.value == pytest.approx(float((plan * np.log(plan)).sum()), abs=1e-12)
    assert float(ot.solve(C, a, b, reg=1.0, reg_type="KL").value) == pytest.approx(0.0, abs=1e-12)
