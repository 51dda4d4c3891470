"""Numerical safety of jtln_hf.sinkhorn: finite, and accurate against POT in float64, over the whole range.

What is asserted, and where each bound comes from (``tests/tolerances.py`` derives them all from
the unit roundoff, the cost's range over ε, the histogram sizes and the number of iterations; no
bound was measured on a machine):

* **Same iterations as POT, float64**, over many problems drawn from fixed seeds (shapes, ε in
  [1e-3, 10], histograms with zeros / one-hot rows / near-zero rows, costs with zeros, ties, a
  constant row or a constant value). ``wasserstein_loss`` runs a *fixed* number of Sinkhorn
  iterations, so the exact reference is POT's log-domain Sinkhorn run for the same number of
  iterations with no stopping test (``ot.sinkhorn(..., method="sinkhorn_log", stopThr=0)``).
  POT updates the column scaling first and we update the row scaling first, so POT is run on the
  transposed problem ``(b, a, C^T)``: its iterates are then ours exactly, and plan, value and dual
  potentials (hence our envelope gradients) agree up to the rounding of the two computations,
  each bounded by ``tolerances.sinkhorn_*`` (POT works on ``C`` itself, ours on ``C - min C``: the
  bound uses ``max C / ε``, which covers both).
* **Low precision** (float32, float16, bfloat16 inputs; computed in float32): against the float64
  solve of the same rounded inputs, within the float32 bound plus the float64 one.
* **Converged accuracy**: with enough iterations our value matches POT's converged Sinkhorn,
  and the bound ``0 <= <γ_ε, C> - OT_0 <= ε min(H(a), H(b))`` against ``ot.emd2`` holds (it
  follows from the optimality of γ_ε for the regularised problem and ``max(H(a), H(b)) <=
  H(γ) <= H(a) + H(b)`` for every coupling γ).
* The same for ``objective="entropic"`` and ``"kl"``: value = POT's ``res.value`` formula on
  POT's plan after the same iterations, gradient = the centred (KL: shifted) potentials.
* Hand-computed cases: ``L_s = 1`` or ``L_t = 1`` (the only coupling is the other histogram),
  near-zero rows (the floor makes them uniform).

Problems are drawn from seeds given by ``pytest.mark.parametrize`` (no hypothesis): the examples
are the same with every package version, and every one of them must meet its bound.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
import torch
from tolerances import (
    sinkhorn_plan_rtol,
    sinkhorn_potential_error,
    sinkhorn_value_atol,
    unit_roundoff,
)

from jtln_hf.sinkhorn import KERNEL_MAX_RANGE, PROB_FLOOR, sinkhorn_potentials, transport_plan, wasserstein_loss

HIST_KINDS = ("softmax", "peaked", "onehot", "sparse", "near_zero", "uniform")
COST_KINDS = ("rand", "ties", "zeros", "constant", "constant_row", "with_zeros")
LOW_PRECISION = (torch.float32, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------ problems
def make_hist(rng: np.random.Generator, kind: str, B: int, L: int) -> np.ndarray:
    """(B, L) float64 histograms of a given kind (rows need not be normalised for 'near_zero')."""
    if kind == "softmax":
        x = rng.normal(size=(B, L)) * 2
    elif kind == "peaked":  # a saturated softmax: all but one entry underflow in low precision
        x = rng.normal(size=(B, L)) * 40
    elif kind == "onehot":
        return np.eye(L)[rng.integers(0, L, B)]
    elif kind == "sparse":  # exact zeros, a few non-zero entries
        p = rng.random((B, L)) * (rng.random((B, L)) < 0.4)
        p[np.arange(B), rng.integers(0, L, B)] += 0.05
        return p / p.sum(1, keepdims=True)
    elif kind == "near_zero":  # far below PROB_FLOOR, unnormalised
        return rng.random((B, L)) * 1e-30
    else:
        return np.full((B, L), 1.0 / L)
    x = x - x.max(1, keepdims=True)
    p = np.exp(x)
    return p / p.sum(1, keepdims=True)


def make_cost(rng: np.random.Generator, kind: str, Ls: int, Lt: int) -> np.ndarray:
    """(Ls, Lt) float64 costs in [0, 1] (the range normalize_cost gives)."""
    if kind == "ties":
        return rng.choice([0.0, 0.5, 1.0], size=(Ls, Lt))
    if kind == "zeros":
        return np.zeros((Ls, Lt))
    if kind == "constant":
        return np.full((Ls, Lt), 0.37)
    C = rng.random((Ls, Lt))
    if kind == "constant_row":
        C[rng.integers(0, Ls)] = 0.6
    elif kind == "with_zeros":
        C[rng.random((Ls, Lt)) < 0.3] = 0.0
    return C


def floored(p: np.ndarray) -> np.ndarray:
    """What the solver solves for: entries clamped at PROB_FLOOR, rows renormalised (float64)."""
    p = np.maximum(p, PROB_FLOOR)
    return p / p.sum(1, keepdims=True)


def pot_same_iterations(a: np.ndarray, b: np.ndarray, C: np.ndarray, eps: float, iterations: int):
    """POT's log-domain Sinkhorn, ``iterations`` iterations, no stopping test, on (b, a, C^T).

    Returns plans (B, Ls, Lt) and potentials f (B, Ls), g (B, Lt) with
    plan = exp((f_i + g_j - C_ij) / eps).
    """
    plans, fs, gs = [], [], []
    for ai, bi in zip(a, b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "did not converge": expected with stopThr=0
            P, log = ot.sinkhorn(bi, ai, C.T, eps, method="sinkhorn_log", numItermax=iterations,
                                 stopThr=0.0, log=True, warn=False)
        plans.append(P.T)
        fs.append(eps * log["log_v"])
        gs.append(eps * log["log_u"])
    return np.stack(plans), np.stack(fs), np.stack(gs)


METHODS = ("auto", "log", "kernel")
OBJECTIVES = ("entropic", "kl")


def draw_problem(seed: int) -> dict:
    """One problem of the distribution above, a function of ``seed`` alone.

    The histogram kinds run through all 36 pairs and the cost kinds through all 6 within any 36
    consecutive seeds; ε hits both ends of [1e-3, 10] every 10 seeds; the rest is drawn.
    """
    rng = np.random.default_rng([seed, 20261204])
    log_eps = {0: -3.0, 1: 1.0}.get(seed % 10, float(rng.uniform(-3.0, 1.0)))
    return {
        "B": int(rng.integers(1, 5)),
        "Ls": int(rng.integers(1, 8)),
        "Lt": int(rng.integers(1, 8)),
        "log_eps": log_eps,  # ε = 10**log_eps in [1e-3, 10]
        "iterations": int(rng.integers(1, 151)),
        "a_kind": HIST_KINDS[seed % 6],
        "b_kind": HIST_KINDS[(seed // 6) % 6],
        "cost_kind": COST_KINDS[(seed + seed // 36) % 6],
        "seed": int(rng.integers(0, 2**31 - 1)),
    }


def build(p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(p["seed"])
    a = make_hist(rng, p["a_kind"], p["B"], p["Ls"])
    b = make_hist(rng, p["b_kind"], p["B"], p["Lt"])
    return a, b, make_cost(rng, p["cost_kind"], p["Ls"], p["Lt"]), 10.0 ** p["log_eps"]


def bounds(dtype: torch.dtype, p: dict, C: np.ndarray, eps: float) -> dict:
    """The error bounds of one solve in ``dtype`` (tests/tolerances.py), for this problem.

    ``R`` is ``max C / ε``: POT works on ``C``, our solver on ``C - min C``, whose exponents are
    smaller; the larger of the two bounds both.
    """
    R = float(C.max()) / eps if C.size else 0.0
    args = (dtype, p["iterations"], R, p["Ls"], p["Lt"])
    return {
        "potential": sinkhorn_potential_error(*args),  # in units of ε
        "plan_rtol": sinkhorn_plan_rtol(*args),
        "value": sinkhorn_value_atol(*args, epsilon=eps, cost_max=max(float(C.max()), 1e-300)),
        # after the last (column) update the plan's columns sum to b up to one update's rounding
        "columns": sinkhorn_plan_rtol(dtype, 1, R, p["Ls"], p["Lt"]),
    }


def twice(b64: dict, other: dict | None = None) -> dict:
    """The bound on the difference of two computations: the sum of their bounds."""
    other = other or b64
    return {k: b64[k] + other[k] for k in b64}


TINY64 = torch.finfo(torch.float64).tiny  # below it, rounding is absolute (subnormals), not relative
TINY32 = torch.finfo(torch.float32).tiny


# ------------------------------------------------------------------- 1. float64: POT's iterates
@pytest.mark.parametrize("seed", range(120))
def test_float64_equals_pot_for_the_same_iterations(seed):
    p = draw_problem(seed)
    method = METHODS[seed % 3]
    a, b, C, eps = build(p)
    n = p["iterations"]
    if method == "kernel" and np.ptp(C) / eps > KERNEL_MAX_RANGE[torch.float64]:
        method = "log"  # explicit 'kernel' past its range is refused (tests/test_errors.py)
    x = torch.tensor(a, requires_grad=True)
    y = torch.tensor(b, requires_grad=True)
    Ct = torch.tensor(C)
    value = wasserstein_loss(x, y, Ct, epsilon=eps, iterations=n, method=method, objective="paper")
    value.sum().backward()
    plan = transport_plan(x.detach(), y.detach(), Ct, epsilon=eps, iterations=n, method=method)
    f, g = sinkhorn_potentials(x.detach(), y.detach(), Ct, epsilon=eps, iterations=n, method=method)
    for t in (value, plan, f, g, x.grad, y.grad):
        assert torch.isfinite(t).all()

    tol = twice(bounds(torch.float64, p, C, eps))
    ref_plan, ref_f, ref_g = pot_same_iterations(floored(a), floored(b), C, eps, n)
    np.testing.assert_allclose(plan.numpy(), ref_plan, rtol=tol["plan_rtol"], atol=TINY64)
    np.testing.assert_allclose(value.detach().numpy(), (ref_plan * C).sum((1, 2)), rtol=0, atol=tol["value"])
    # potentials are defined up to (f + c, g - c): compare f + g pairs and the centred gradients
    # (f + g carries two potentials' error; centring a row at most doubles an error)
    pot = eps * tol["potential"]
    np.testing.assert_allclose((f[:, :, None] + g[:, None, :]).numpy(),
                               ref_f[:, :, None] + ref_g[:, None, :], rtol=0, atol=2 * pot)
    np.testing.assert_allclose(x.grad.numpy(), ref_f - ref_f.mean(1, keepdims=True), rtol=0, atol=2 * pot)
    np.testing.assert_allclose(y.grad.numpy(), ref_g - ref_g.mean(1, keepdims=True), rtol=0, atol=2 * pot)
    # and the invariants of a Sinkhorn plan after a column update
    assert (plan >= 0).all()
    np.testing.assert_allclose(plan.sum(1).numpy(), floored(b), rtol=tol["columns"], atol=TINY64)
    assert (value >= C.min() - tol["value"]).all() and (value <= C.max() + tol["value"]).all()


def objective_value(plan: np.ndarray, C: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float, objective: str):
    """POT's formula for ``objective`` (``ot.solve``'s ``res.value``) on given plans, float64; 0 log 0 = 0."""
    positive = plan > 0
    log_plan = np.log(np.where(positive, plan, 1.0))
    reg = plan * log_plan  # reg_type="entropy": + eps sum P log P, i.e. H(P) = -sum P log P
    if objective == "kl":  # reg_type="KL": + eps sum P log(P / (a b^T))
        reg = reg - np.where(positive, plan * np.log(a[:, :, None] * b[:, None, :]), 0.0)
    return (plan * C).sum((1, 2)) + eps * reg.sum((1, 2))


@pytest.mark.parametrize("seed", range(60))
def test_objectives_float64_equal_pots_formula_on_pots_iterates(seed):
    """'entropic' / 'kl' over the same extreme problems: the value is POT's formula on POT's plan
    after the same iterations, the gradient the centred potentials (minus eps log a, eps log b for
    'kl')."""
    p = draw_problem(1000 + seed)
    method, objective = METHODS[seed % 3], OBJECTIVES[(seed // 3) % 2]
    a, b, C, eps = build(p)
    n = p["iterations"]
    if method == "kernel" and np.ptp(C) / eps > KERNEL_MAX_RANGE[torch.float64]:
        method = "log"
    x, y = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    value = wasserstein_loss(x, y, torch.tensor(C), epsilon=eps, iterations=n, method=method, objective=objective)
    value.sum().backward()
    for t in (value, x.grad, y.grad):
        assert torch.isfinite(t).all()
    A, B = floored(a), floored(b)
    ref_plan, ref_f, ref_g = pot_same_iterations(A, B, C, eps, n)
    if objective == "kl":
        ref_f, ref_g = ref_f - eps * np.log(A), ref_g - eps * np.log(B)
    tol = twice(bounds(torch.float64, p, C, eps))
    np.testing.assert_allclose(value.detach().numpy(), objective_value(ref_plan, C, A, B, eps, objective),
                               rtol=0, atol=tol["value"])  # fmt: skip
    pot = 2 * eps * tol["potential"]
    np.testing.assert_allclose(x.grad.numpy(), ref_f - ref_f.mean(1, keepdims=True), rtol=0, atol=pot)
    np.testing.assert_allclose(y.grad.numpy(), ref_g - ref_g.mean(1, keepdims=True), rtol=0, atol=pot)


@pytest.mark.parametrize("seed", range(60))
def test_objectives_low_precision_is_finite_and_close_to_float64(seed):
    """As test 2 below, for the regularised values: within the float32 bound of the solve (the
    entropy term reaches eps (H(a) + H(b)) ~ 40 at eps = 10, and the bound scales with it) plus
    the float64 bound of the reference."""
    p = draw_problem(2000 + seed)
    dtype, objective = LOW_PRECISION[seed % 3], OBJECTIVES[(seed // 3) % 2]
    a, b, C, eps = build(p)
    n = p["iterations"]
    x, y = torch.tensor(a).to(dtype).requires_grad_(), torch.tensor(b).to(dtype).requires_grad_()
    Ct = torch.tensor(C).to(dtype)
    value = wasserstein_loss(x, y, Ct, epsilon=eps, iterations=n, objective=objective)
    value.sum().backward()
    assert value.dtype == torch.float32 and x.grad.dtype == y.grad.dtype == dtype
    for t in (value, x.grad.float(), y.grad.float()):
        assert torch.isfinite(t).all()
    a64, b64, C64 = (t.detach().double().numpy() for t in (x, y, Ct))
    A, B = floored(a64), floored(b64)
    ref_plan, _, _ = pot_same_iterations(A, B, C64, eps, n)
    want = objective_value(ref_plan, C64, A, B, eps, objective)
    tol = twice(bounds(torch.float32, p, C64, eps), bounds(torch.float64, p, C64, eps))
    np.testing.assert_allclose(value.detach().double().numpy(), want, rtol=0, atol=tol["value"])


# ------------------------------------------------------ 2. float32 / float16 / bfloat16 inputs
@pytest.mark.parametrize("seed", range(80))
def test_low_precision_is_finite_and_close_to_float64(seed):
    p = draw_problem(3000 + seed)
    dtype = LOW_PRECISION[seed % 3]
    a, b, C, eps = build(p)
    n = p["iterations"]
    x = torch.tensor(a).to(dtype).requires_grad_()
    y = torch.tensor(b).to(dtype).requires_grad_()
    Ct = torch.tensor(C).to(dtype)
    value = wasserstein_loss(x, y, Ct, epsilon=eps, iterations=n, objective="paper")
    value.sum().backward()
    plan = transport_plan(x.detach(), y.detach(), Ct, epsilon=eps, iterations=n)
    assert value.dtype == plan.dtype == torch.float32
    assert x.grad.dtype == y.grad.dtype == dtype
    for t in (value, plan, x.grad.float(), y.grad.float()):
        assert torch.isfinite(t).all()

    # reference: the float64 solve of the same rounded inputs
    a64, b64, C64 = (t.detach().double().numpy() for t in (x, y, Ct))
    ref_plan, _, _ = pot_same_iterations(floored(a64), floored(b64), C64, eps, n)
    tol = twice(bounds(torch.float32, p, C64, eps), bounds(torch.float64, p, C64, eps))
    np.testing.assert_allclose(value.detach().double().numpy(), (ref_plan * C64).sum((1, 2)), rtol=0,
                               atol=tol["value"])  # fmt: skip
    np.testing.assert_allclose(plan.double().numpy(), ref_plan, rtol=tol["plan_rtol"], atol=TINY32)


# ------------------------------------------------------------------ 3. converged: POT and EMD
@pytest.mark.parametrize("eps,iterations", [(1e-3, 8000), (1e-2, 1500), (0.1, 500), (1.0, 100), (10.0, 50)])
def test_converged_value_matches_pot_and_the_emd_bound(eps, iterations):
    rng = np.random.default_rng(0)
    a = floored(make_hist(rng, "softmax", 4, 5))
    b = floored(make_hist(rng, "softmax", 4, 4))
    C = make_cost(rng, "rand", 5, 4)
    ours = wasserstein_loss(torch.tensor(a), torch.tensor(b), torch.tensor(C), epsilon=eps,
                            iterations=iterations, objective="paper").numpy()
    plan = transport_plan(torch.tensor(a), torch.tensor(b), torch.tensor(C), epsilon=eps,
                          iterations=iterations).numpy()
    np.testing.assert_allclose(plan.sum(2), a, rtol=0, atol=1e-9)  # converged: both marginals
    for i in range(4):
        P = ot.sinkhorn(a[i], b[i], C, eps, method="sinkhorn_log", numItermax=100000, stopThr=1e-10)
        np.testing.assert_allclose(P.sum(0), b[i], rtol=0, atol=1e-10)  # POT converged too
        assert ours[i] == pytest.approx(float((P * C).sum()), rel=1e-7, abs=1e-9)
        exact = ot.emd2(a[i], b[i], C)
        entropy = min(-(a[i] * np.log(a[i])).sum(), -(b[i] * np.log(b[i])).sum())
        assert -1e-9 <= ours[i] - exact <= eps * entropy + 1e-9


# ------------------------------------------------------------------------ 4. hand computations
@pytest.mark.parametrize("method,eps", [("kernel", 0.05), ("kernel", 10.0), ("log", 1e-3), ("log", 0.05),
                                        ("log", 10.0), ("auto", 1e-3)])
def test_single_source_or_target_class_has_one_coupling(method, eps):
    rng = np.random.default_rng(3)
    b = make_hist(rng, "softmax", 3, 4)
    C = make_cost(rng, "rand", 1, 4)
    # L_s = 1: the plan is b itself and the value sum_j C_0j b_j, after a single iteration
    value = wasserstein_loss(torch.ones(3, 1, dtype=torch.float64), torch.tensor(b), torch.tensor(C),
                             epsilon=eps, iterations=1, method=method, objective="paper")
    np.testing.assert_allclose(value.numpy(), floored(b) @ C[0], rtol=1e-12)
    # L_t = 1: the plan is a itself
    a = make_hist(rng, "onehot", 3, 4)
    value = wasserstein_loss(torch.tensor(a), torch.ones(3, 1, dtype=torch.float64), torch.tensor(C.T),
                             epsilon=eps, iterations=1, method=method, objective="paper")
    np.testing.assert_allclose(value.numpy(), floored(a) @ C[0], rtol=1e-12)


def test_near_zero_rows_are_solved_as_uniform_rows():
    rng = np.random.default_rng(4)
    C = torch.tensor(make_cost(rng, "rand", 5, 3))
    tiny = torch.tensor(make_hist(rng, "near_zero", 2, 5))
    b = torch.tensor(make_hist(rng, "softmax", 2, 3))
    uniform = torch.full((2, 5), 0.2, dtype=torch.float64)
    for eps in (1e-3, 0.1):
        torch.testing.assert_close(wasserstein_loss(tiny, b, C, epsilon=eps, objective="paper"),
                                   wasserstein_loss(uniform, b, C, epsilon=eps, objective="paper"),
                                   rtol=1e-12, atol=0)
    zeros = torch.zeros(2, 5, dtype=torch.float16)  # softmax underflow in half precision
    torch.testing.assert_close(
        wasserstein_loss(zeros, b.half(), C.half(), objective="paper"),
        wasserstein_loss(uniform.float(), b.half().float(), C.half().float(), objective="paper"),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_cost_range_stays_finite(dtype):
    # (max C - min C) / eps = 1e5: only the log domain can run it; 'auto' picks it, nothing overflows
    rng = np.random.default_rng(5)
    C = torch.tensor(make_cost(rng, "with_zeros", 6, 5) * 100, dtype=dtype)
    x = torch.tensor(make_hist(rng, "peaked", 3, 6), dtype=dtype, requires_grad=True)
    y = torch.tensor(make_hist(rng, "onehot", 3, 5), dtype=dtype, requires_grad=True)
    value = wasserstein_loss(x, y, C, epsilon=1e-3, iterations=200, objective="paper")
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    plan = transport_plan(x.detach(), y.detach(), C, epsilon=1e-3, iterations=200)
    assert torch.isfinite(plan).all() and (plan >= 0).all()
    # after the last (column) update the columns sum to b (3 rows of mass 1) up to one update's
    # rounding, whose exponents are of size R = 1e5 (u R = 6e-3 in float32)
    rel = sinkhorn_plan_rtol(dtype, 1, 1e5, 6, 5)
    assert math.isclose(float(plan.sum()), 3.0, rel_tol=rel)


@pytest.mark.parametrize("method", ["auto", "log"])
def test_a_constant_added_to_the_cost_costs_no_float32_accuracy(method):
    """OT plans ignore a constant added to C (the value moves by exactly that constant). The solver
    works on C - min C, so float32 exponents stay of size (max C - min C)/ε, not max C/ε: with
    C + 100 at ε = 1e-3 the result is within the float32 bound for R = (max C - min C)/ε ~ 1e3 of
    the float64 solve of the same (rounded) cost, a bound 100 times smaller than the one for
    exponents of size max C/ε = 1e5."""
    rng = np.random.default_rng(6)
    a, b = make_hist(rng, "softmax", 4, 6), make_hist(rng, "softmax", 4, 5)
    C = make_cost(rng, "rand", 6, 5)
    eps, n = 1e-3, 10
    x, y = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    shifted = torch.tensor(C + 100.0, dtype=torch.float32)
    C64 = shifted.double().numpy() - 100.0  # exact: the rounded cost the solver sees, less 100
    ref_plan, _, _ = pot_same_iterations(floored(x.double().numpy()), floored(y.double().numpy()), C64, eps, n)
    plan = transport_plan(x, y, shifted, epsilon=eps, iterations=n, method=method).double().numpy()
    value = wasserstein_loss(x, y, shifted, epsilon=eps, iterations=n, method=method, objective="paper")
    value = value.double().numpy()
    R = np.ptp(C64) / eps
    rtol = sinkhorn_plan_rtol(torch.float32, n, R, 6, 5) + sinkhorn_plan_rtol(torch.float64, n, R, 6, 5)
    assert rtol < 0.1 * sinkhorn_plan_rtol(torch.float32, n, 100.0 / eps, 6, 5)
    np.testing.assert_allclose(plan, ref_plan, rtol=rtol, atol=TINY32)
    # the value adds min C = 100 back: one more float32 rounding of a number of size 100
    atol = sinkhorn_value_atol(torch.float32, n, R, 6, 5, epsilon=eps, cost_max=1.0) + 2 * 100 * unit_roundoff(torch.float32)
    np.testing.assert_allclose(value - 100.0, (ref_plan * C64).sum((1, 2)), rtol=0, atol=atol)
