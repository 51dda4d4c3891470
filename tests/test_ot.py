"""Tests for jtln_hf.sinkhorn against POT (float64) as the independent reference.

POT conventions used here:
* ``ot.sinkhorn2(a, b, M, reg)`` returns the *linear* cost <gamma, M> of the entropic plan
  (no entropy term), the same quantity as ``wasserstein_loss(..., objective="paper")``.
* ``ot.batch.solve_batch`` needs one cost per problem (M of shape (B, ns, nt)); ``res.value``
  is the regularised objective <T, M> - reg * H(T), ``res.value_linear`` is <T, M>.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from ot.batch import solve_batch
from tolerances import sinkhorn_plan_rtol, sinkhorn_potential_error, sinkhorn_value_atol

from jtln_hf.sinkhorn import (
    KERNEL_MAX_RANGE,
    OBJECTIVES,
    PROB_FLOOR,
    resolve_method,
    sinkhorn_potentials,
    transport_plan,
    wasserstein_loss,
)

METHODS = ("kernel", "log")


def problem(B=6, Ls=7, Lt=5, seed=0, dtype=torch.float64):
    """Random softmax histograms (renormalised in float64 so rows sum to 1) and a [0, 1] cost."""
    g = torch.Generator().manual_seed(seed)
    a = torch.softmax(2 * torch.randn(B, Ls, generator=g, dtype=torch.float64), 1)
    b = torch.softmax(2 * torch.randn(B, Lt, generator=g, dtype=torch.float64), 1)
    C = torch.rand(Ls, Lt, generator=g, dtype=torch.float64)
    if dtype != torch.float64:  # round to dtype, then renormalise so POT sees the same masses
        a, b, C = (t.to(dtype).double() for t in (a, b, C))
        a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    return a, b, C


def pot_plans(a, b, C, eps, iters=20000):
    method = "sinkhorn" if eps >= 0.02 else "sinkhorn_log"
    return np.stack([
        ot.sinkhorn(a[i].numpy(), b[i].numpy(), C.numpy(), eps, method=method,
                    numItermax=iters, stopThr=1e-13)
        for i in range(a.shape[0])
    ])


def pot_regularised_value(a, b, C, eps):
    """<gamma, C> - eps * H(gamma) for one pair of numpy histograms, from POT's plan."""
    P = ot.sinkhorn(a, b, C, eps, numItermax=20000, stopThr=1e-14)
    return float((P * C).sum() + eps * (P * np.log(P)).sum())


# 1. values vs POT ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("eps", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_matches_pot_sinkhorn(method, eps, dtype):
    """Converged (1000 iterations) against POT's converged Sinkhorn: float64 within 1e-9 relative
    (convergence: POT stops at a 1e-13 marginal error, and our 1000 iterations are past it), float32
    within that plus the float32 rounding bound of 1000 iterations (tests/tolerances.py)."""
    a, b, C = problem(dtype=dtype)
    ours = wasserstein_loss(a.to(dtype), b.to(dtype), C.to(dtype), epsilon=eps,
                            iterations=1000, method=method, objective="paper")
    assert ours.shape == (6,) and ours.dtype == dtype
    P = pot_plans(a, b, C, eps)
    ref = torch.from_numpy((P * C.numpy()[None]).sum((1, 2)))
    sk2 = torch.tensor([ot.sinkhorn2(a[i].numpy(), b[i].numpy(), C.numpy(), eps,
                                     numItermax=20000, stopThr=1e-13) for i in range(6)],
                       dtype=torch.float64)
    torch.testing.assert_close(sk2, ref, rtol=1e-10, atol=0)  # sinkhorn2 is the linear cost
    atol = 0.0
    if dtype == torch.float32:
        atol = sinkhorn_value_atol(dtype, 1000, float(C.max() - C.min()) / eps, 7, 5, epsilon=eps, cost_max=float(C.max()))
    torch.testing.assert_close(ours.double(), ref, rtol=1e-9, atol=atol)


# 2. small epsilon approaches exact OT ---------------------------------------------------------
def test_small_epsilon_approaches_emd():
    a, b, C = problem()
    ours = wasserstein_loss(a, b, C, epsilon=0.005, iterations=3000, method="log", objective="paper")
    exact = torch.tensor([ot.emd2(a[i].numpy(), b[i].numpy(), C.numpy()) for i in range(6)],
                         dtype=torch.float64)
    torch.testing.assert_close(ours, exact, rtol=0, atol=1e-2)
    # and it is an upper bound up to convergence error (entropic plans are feasible couplings)
    assert (ours >= exact - 1e-6).all()


# 3. plan marginals and plan vs POT -------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_plan_marginals_and_pot_plan(method):
    a, b, C = problem(dtype=torch.float32)
    P = transport_plan(a.float(), b.float(), C.float(), epsilon=0.1, iterations=1000,
                       method=method)
    assert P.shape == (6, 7, 5) and P.dtype == torch.float32
    torch.testing.assert_close(P.sum(2).double(), a, rtol=0, atol=1e-5)
    torch.testing.assert_close(P.sum(1).double(), b, rtol=0, atol=1e-5)
    torch.testing.assert_close(P.double(), torch.from_numpy(pot_plans(a, b, C, 0.1)),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_plan_marginals_after_floor(method):
    a = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.2, 0.8]])
    C = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    P = transport_plan(a, b, C, epsilon=0.1, iterations=500, method=method)
    fa = a.clamp_min(PROB_FLOOR) / a.clamp_min(PROB_FLOOR).sum(1, keepdim=True)
    fb = b.clamp_min(PROB_FLOOR) / b.clamp_min(PROB_FLOOR).sum(1, keepdim=True)
    torch.testing.assert_close(P.sum(2), fa, rtol=0, atol=1e-5)
    torch.testing.assert_close(P.sum(1), fb, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_potentials_reproduce_plan(method):
    a, b, C = problem()
    f, g = sinkhorn_potentials(a, b, C, epsilon=0.1, iterations=200, method=method)
    P = transport_plan(a, b, C, epsilon=0.1, iterations=200, method=method)
    torch.testing.assert_close(torch.exp((f[:, :, None] + g[:, None, :] - C) / 0.1), P,
                               rtol=1e-10, atol=1e-14)


# 4. gradients -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("eps", [0.05, 0.5])
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_gradient_matches_pot_autodiff(method, eps, dtype, rtol):
    # tolerance: rel. to each row's gradient norm; float32 potentials carry ~1e-6 rounding.
    a, b, C = problem(dtype=dtype)
    B, Ls, Lt = 6, 7, 5
    w = torch.rand(B, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    ar, br = a.clone().requires_grad_(), b.clone().requires_grad_()
    res = solve_batch(M=C.expand(B, Ls, Lt), reg=eps, a=ar, b=br, max_iter=2000, tol=1e-13,
                      method="log_sinkhorn", reg_type="entropy", grad="autodiff")
    (res.value * w).sum().backward()
    ref_a = ar.grad - ar.grad.mean(1, keepdim=True)
    ref_b = br.grad - br.grad.mean(1, keepdim=True)

    x, y = a.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
    loss = wasserstein_loss(x, y, C.to(dtype), epsilon=eps, iterations=2000, method=method, objective="paper")
    (loss * w.to(dtype)).sum().backward()
    assert x.grad.dtype == dtype and y.grad.dtype == dtype
    for ours, ref in ((x.grad, ref_a), (y.grad, ref_b)):
        err = (ours.double() - ref).norm(dim=1) / ref.norm(dim=1)
        assert err.max() < rtol, err.max()
        torch.testing.assert_close(ours.double().sum(1), torch.zeros(B, dtype=torch.float64),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_matches_finite_differences(method):
    a, b, C = problem(B=2, seed=3)
    eps, h = 0.1, 1e-5
    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    wasserstein_loss(x, y, C, epsilon=eps, iterations=2000, method=method, objective="paper").sum().backward()
    g = torch.Generator().manual_seed(4)
    for i in range(2):
        da = torch.randn(7, dtype=torch.float64, generator=g)
        db = torch.randn(5, dtype=torch.float64, generator=g)
        da, db = da - da.mean(), db - db.mean()  # tangent to the simplex
        Cn = C.numpy()
        plus = pot_regularised_value((a[i] + h * da).numpy(), (b[i] + h * db).numpy(), Cn, eps)
        minus = pot_regularised_value((a[i] - h * da).numpy(), (b[i] - h * db).numpy(), Cn, eps)
        fd = (plus - minus) / (2 * h)
        analytic = float(x.grad[i] @ da + y.grad[i] @ db)
        assert math.isclose(fd, analytic, rel_tol=1e-6, abs_tol=1e-8), (fd, analytic)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_no_gradient_into_cost_and_no_plan_saved(objective, method):
    a, b, C = problem(B=4, Ls=6, Lt=3)
    C = C.float().requires_grad_()
    x = a.float().requires_grad_()
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(t.shape) or t,
                                                  lambda t: t):
        loss = wasserstein_loss(x, b.float(), C, method=method, objective=objective)
    loss.sum().backward()
    assert C.grad is None and x.grad is not None
    assert shapes and all(len(s) == 2 for s in shapes)  # f and g only, never (B, L_s, L_t)


# 5. kernel vs log, auto selection -------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.05, 0.1, 1.0])
def test_kernel_and_log_agree(eps):
    # both run the same iterates, so they agree even unconverged (50 iterations): in float64 to
    # float64 rounding, in float32 to float32 rounding (each domain within its bound, tests/tolerances.py)
    for dtype in (torch.float64, torch.float32):
        a, b, C = (t.to(dtype) for t in problem(B=16, Ls=9, Lt=4, seed=2, dtype=torch.float32))
        R = float(C.max() - C.min()) / eps
        outs = {m: wasserstein_loss(a, b, C, epsilon=eps, method=m, objective="paper") for m in METHODS}
        atol = 2 * sinkhorn_value_atol(dtype, 50, R, 9, 4, epsilon=eps, cost_max=float(C.max()))
        torch.testing.assert_close(outs["kernel"], outs["log"], rtol=0, atol=atol)
        pk = sinkhorn_potentials(a, b, C, epsilon=eps, method="kernel")
        pl = sinkhorn_potentials(a, b, C, epsilon=eps, method="log")
        pot = 2 * eps * sinkhorn_potential_error(dtype, 50, R, 9, 4)
        for u, v in zip(pk, pl):
            torch.testing.assert_close(u, v, rtol=0, atol=pot)
        if dtype == torch.float64 and eps < 1:  # tight enough to tell 50 iterations from 49 (unconverged)
            fewer = wasserstein_loss(a, b, C, epsilon=eps, iterations=49, method="log", objective="paper")
            assert (fewer - outs["kernel"]).abs().max() > atol


def test_auto_picks_log_for_tiny_epsilon_and_kernel_otherwise():
    """The documented rule: "kernel" while (max C - min C) / eps <= KERNEL_MAX_RANGE[dtype] (50 in float32,
    500 in float64), else "log". Dyadic costs and epsilons make every ratio below exact."""
    assert KERNEL_MAX_RANGE == {torch.float32: 50.0, torch.float64: 500.0}  # the documented limits
    C = torch.tensor([[0.0, 1.5625], [0.5, 0.25]])  # range 1.5625
    for shift in (0.0, 10.0):  # the range decides, not the largest cost
        cost = C + shift
        assert resolve_method(cost, epsilon=0.25) == "kernel"  # ratio 6.25
        assert resolve_method(cost, epsilon=0.03125) == "kernel"  # ratio 50: at the limit
        assert resolve_method(cost, epsilon=0.03125 * 50 / 52) == "log"  # ratio 52
        assert resolve_method(cost, epsilon=2**-8) == "log"  # ratio 400 in float32 ...
        assert resolve_method(cost, epsilon=2**-8, dtype=torch.float64) == "kernel"  # ... but not in float64
        assert resolve_method(cost, epsilon=2**-9, dtype=torch.float64) == "log"  # ratio 800
        assert resolve_method(cost, epsilon=2**-9, method="log") == "log"  # an explicit choice is kept
    # behaviour behind the choice: at ratio ~1000 the kernel exp(-C/eps) underflows, so "kernel" is
    # refused, while "auto" runs (in the log domain) with finite values and gradients
    a, b, C = (t.float() for t in problem(dtype=torch.float32))
    assert (C.max() - C.min()) / 1e-3 > 900
    with pytest.raises(ValueError, match="method='kernel' needs"):
        wasserstein_loss(a, b, C, epsilon=1e-3, iterations=200, method="kernel")
    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    tiny = wasserstein_loss(x, y, C, epsilon=1e-3, iterations=200, objective="paper")
    tiny.sum().backward()
    assert torch.isfinite(tiny).all() and torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


# 6. autocast and dtypes -------------------------------------------------------------------------
def test_autocast_bf16():
    """bf16 histograms under bf16 autocast: computed in float32 (the value is float32, and within the
    derived float32 bound of the float64 solve of the same rounded histograms, which matches POT's
    converged reference), with bf16 gradients."""
    a, b, C = problem(B=8, Ls=10, Lt=6, seed=5)
    a16 = a.bfloat16().requires_grad_()
    b16 = b.bfloat16().requires_grad_()
    C16 = C.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = wasserstein_loss(a16, b16, C16, epsilon=0.1, iterations=500, objective="paper")
        out.sum().backward()
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    ra, rb = a16.detach().double(), b16.detach().double()
    ra, rb = ra / ra.sum(1, keepdim=True), rb / rb.sum(1, keepdim=True)
    P = pot_plans(ra, rb, C16.double(), 0.1)
    reference = torch.from_numpy((P * C16.double().numpy()[None]).sum((1, 2)))
    # float32 (autocast off inside the solver) within its rounding bound of the float64 solve of the
    # same inputs, which is converged to POT's reference (1e-9 relative)
    solve64 = wasserstein_loss(ra, rb, C16.double(), epsilon=0.1, iterations=500, objective="paper")
    torch.testing.assert_close(solve64, reference, rtol=1e-9, atol=0)
    bound = 2 * sinkhorn_value_atol(torch.float32, 500, float(C16.max() - C16.min()) / 0.1, 10, 6, epsilon=0.1,
                                    cost_max=float(C16.max()))  # fmt: skip
    torch.testing.assert_close(out.double(), solve64, rtol=0, atol=bound)
    assert a16.grad.dtype == torch.bfloat16 and b16.grad.dtype == torch.bfloat16
    assert torch.isfinite(a16.grad.float()).all()


def test_float16_and_mixed_dtypes():
    a, b, C = problem()
    x = a.half().requires_grad_()
    out = wasserstein_loss(x, b.float(), C, objective="paper")  # float64 cost, float16/float32 histograms
    out.sum().backward()
    assert out.dtype == torch.float32 and x.grad.dtype == torch.float16
    assert wasserstein_loss(a, b, C, objective="paper").dtype == torch.float64


# 7. one-hot histograms, constant cost ---------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_one_hot_and_constant_cost(method):
    a = torch.eye(4)[[0, 1, 2, 3, 0]].requires_grad_()
    b = torch.eye(3)[[0, 1, 2, 2, 1]].requires_grad_()
    C = torch.rand(4, 3, generator=torch.Generator().manual_seed(0))
    out = wasserstein_loss(a, b, C, epsilon=0.05, iterations=200, method=method, objective="paper")
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(a.grad).all()
    assert torch.isfinite(b.grad).all()
    # one-hot to one-hot: the only coupling puts all mass on C[i, j]
    torch.testing.assert_close(out, C[[0, 1, 2, 3, 0], [0, 1, 2, 2, 1]], rtol=0, atol=1e-5)
    a2, b2, _ = problem(seed=7)
    const = wasserstein_loss(a2.float(), b2.float(), torch.full((7, 5), 0.37),
                             iterations=3, method=method, objective="paper")
    atol = sinkhorn_value_atol(torch.float32, 3, 0.0, 7, 5, epsilon=0.1, cost_max=0.37)  # R = 0: C - min C = 0
    torch.testing.assert_close(const, torch.full((6,), 0.37), rtol=0, atol=atol)


# 8. hand-computed 2x2 -------------------------------------------------------------------------
@pytest.mark.parametrize("method,eps", [("log", 0.01), ("log", 0.2), ("log", 1.0),
                                        ("kernel", 0.05), ("kernel", 0.2), ("kernel", 1.0)])
def test_two_by_two_closed_form(method, eps):
    # a = b = (1/2, 1/2), C = [[0,1],[1,0]]: by symmetry gamma = [[1/2-x, x], [x, 1/2-x]] with
    # x / (1/2 - x) = exp(-1/eps), so <gamma, C> = 2x = 1 / (1 + exp(1/eps)) (~0 for tiny eps).
    half = torch.full((1, 2), 0.5, dtype=torch.float64)
    C = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    out = wasserstein_loss(half, half, C, epsilon=eps, iterations=100, method=method, objective="paper")
    torch.testing.assert_close(out, torch.tensor([1 / (1 + math.exp(1 / eps))],
                                                 dtype=torch.float64), rtol=1e-9, atol=1e-30)
    out = wasserstein_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), C.float(),
                           epsilon=0.01, iterations=100, method="log", objective="paper")
    torch.testing.assert_close(out, torch.tensor([1.0]), rtol=0, atol=1e-6)


# 9. validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,cost,match", [
    ({}, torch.rand(5, 4), r"cost has shape \(5, 4\) but source_probs has 6 columns and "
                           r"target_probs 4: cost must be \(L_s, L_t\) = \(6, 4\)"),
    ({}, torch.rand(6, 4, 1), r"cost must be a 2-D \(L_s, L_t\).*\(6, 4, 1\)"),
    ({}, torch.tensor([[float("nan")] * 4] * 6), r"non-finite entry at \(source 0, target 0\) = nan"),
    ({}, torch.full((6, 4), float("inf")), r"non-finite entry at \(source 0, target 0\) = inf"),
    ({}, torch.tensor([[0.5] * 4] * 5 + [[0.5, -0.5, 0.5, 0.5]]), r"negative entry at \(source 5, target 1\) = -0.5.*shift it"),
    ({"epsilon": 0.0}, torch.rand(6, 4), "epsilon must be > 0"),
    ({"epsilon": -1.0}, torch.rand(6, 4), "epsilon must be > 0"),
    ({"iterations": 0}, torch.rand(6, 4), "iterations must be an integer >= 1"),
    ({"iterations": 2.5}, torch.rand(6, 4), "iterations must be an integer >= 1"),
    ({"method": "exact"}, torch.rand(6, 4), "method must be one of"),
])
def test_validation_errors(kwargs, cost, match):
    a, b = torch.softmax(torch.randn(3, 6), 1), torch.softmax(torch.randn(3, 4), 1)
    with pytest.raises(ValueError, match=match):
        wasserstein_loss(a, b, cost, **kwargs)


def test_validation_batch_and_rank():
    C = torch.rand(6, 4)
    with pytest.raises(ValueError, match="batch sizes differ: source_probs has 3 rows and "
                                         "target_probs 2"):
        wasserstein_loss(torch.rand(3, 6), torch.rand(2, 4), C)
    with pytest.raises(ValueError, match=r"source_probs must be 2-D.*unsqueeze\(0\)"):
        wasserstein_loss(torch.rand(6), torch.rand(1, 4), C)
    with pytest.raises(ValueError, match="method must be one of"):
        transport_plan(torch.rand(1, 6), torch.rand(1, 4), C, method="sinkhorn")


# 10. empty batch -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_empty_batch(method, objective):
    a = torch.empty(0, 6, requires_grad=True)
    b = torch.empty(0, 4, requires_grad=True)
    out = wasserstein_loss(a, b, torch.rand(6, 4), method=method, objective=objective)
    assert out.shape == (0,) and out.dtype == torch.float32
    out.sum().backward()
    assert a.grad.shape == (0, 6) and b.grad.shape == (0, 4)
    assert transport_plan(a, b, torch.rand(6, 4), method=method).shape == (0, 6, 4)


# property: after the last (column) update, column sums match b for any shape / iterations
@pytest.mark.parametrize("seed", range(30))
def test_property_column_marginals_and_bounds(seed):
    """Shapes, iterations and ε drawn from ``seed`` (fixed examples: no hypothesis). Column sums
    are b up to one update's rounding; the value is <P, C> up to the plan's rounding bound."""
    rng = np.random.default_rng([seed, 7])
    B, Ls, Lt, iters = (int(rng.integers(1, hi + 1)) for hi in (5, 8, 8, 20))
    eps = (0.02, 0.1, 1.0)[seed % 3]
    a, b, C = problem(B, Ls, Lt, seed=seed)
    R = float(C.max() - C.min()) / eps
    columns = sinkhorn_plan_rtol(torch.float64, 1, R, Ls, Lt)
    value_atol = sinkhorn_value_atol(torch.float64, iters, R, Ls, Lt, epsilon=eps, cost_max=float(C.max()))
    for method in METHODS:
        if method == "kernel" and R > KERNEL_MAX_RANGE[torch.float64]:
            continue
        P = transport_plan(a, b, C, epsilon=eps, iterations=iters, method=method)
        torch.testing.assert_close(P.sum(1), b, rtol=columns, atol=0)
        value = wasserstein_loss(a, b, C, epsilon=eps, iterations=iters, method=method, objective="paper")
        torch.testing.assert_close(value, (P * C).sum((1, 2)), rtol=0, atol=2 * value_atol)
        assert (value >= C.min() - value_atol).all() and (value <= C.max() + value_atol).all()
