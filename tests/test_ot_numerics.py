"""Numerical safety of jtln_hf.ot: finite, and accurate against POT in float64, over the whole range.

What is asserted, and why these bounds:

* **Same iterations as POT, float64** (property test over shapes, ε in [1e-3, 10], histograms
  with zeros / one-hot rows / near-zero rows, costs with zeros, ties, a constant row or a
  constant value). ``wasserstein_loss`` runs a *fixed* number of Sinkhorn iterations, so the
  exact reference is POT's log-domain Sinkhorn run for the same number of iterations with no
  stopping test (``ot.sinkhorn(..., method="sinkhorn_log", stopThr=0)``).  POT updates the
  column scaling first and we update the row scaling first, so POT is run on the transposed
  problem ``(b, a, C^T)``: its iterates are then ours exactly, and plan, value and dual
  potentials (hence our envelope gradients) agree to float64 rounding, amplified at most by the
  size of the exponents ``(max C - min C)/ε <= 1000``: relative 1e-9 is ~1e4 units of
  roundoff below that.
* **Low precision** (float32, float16, bfloat16 inputs; computed in float32): against the
  float64 solve of the same rounded inputs. float32 rounding of exponents of size
  ``R = (max C - min C)/ε`` gives an absolute exponent error ~``u32 * R * k`` (``u32 = 6e-8``,
  ``k`` a small accumulation factor), i.e. a relative plan error of that size; we assert
  ``|error| <= 1e-6 + 5e-7 * R`` on values and plan entries (R = 1000 at ε = 1e-3: 5e-4
  absolute on a value in [0, 1]; over 1,200 random problems of this test's distribution the
  worst value error measured was 1.1e-7 * R, i.e. ~2 float32 roundings of the exponent).
* **Converged accuracy**: with enough iterations our value matches POT's converged Sinkhorn,
  and the bound ``0 <= <γ_ε, C> - OT_0 <= ε min(H(a), H(b))`` against ``ot.emd2`` holds (it
  follows from the optimality of γ_ε for the regularised problem and ``max(H(a), H(b)) <=
  H(γ) <= H(a) + H(b)`` for every coupling γ).
* The same for ``objective="entropic"`` and ``"kl"``: value = POT's ``res.value`` formula on
  POT's plan after the same iterations, gradient = the centred (KL: shifted) potentials.
* Hand-computed cases: ``L_s = 1`` or ``L_t = 1`` (the only coupling is the other histogram),
  near-zero rows (the floor makes them uniform).

Hypothesis runs derandomized (fixed examples, stable in CI) with bounded ``max_examples``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jtln_hf.ot import KERNEL_MAX_RANGE, PROB_FLOOR, sinkhorn_potentials, transport_plan, wasserstein_loss

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


problem_strategy = st.fixed_dictionaries({
    "B": st.integers(1, 4),
    "Ls": st.integers(1, 7),
    "Lt": st.integers(1, 7),
    "log_eps": st.floats(-3.0, 1.0),  # ε = 10**log_eps in [1e-3, 10]
    "iterations": st.integers(1, 150),
    "a_kind": st.sampled_from(HIST_KINDS),
    "b_kind": st.sampled_from(HIST_KINDS),
    "cost_kind": st.sampled_from(COST_KINDS),
    "seed": st.integers(0, 2**31 - 1),
})


def build(p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(p["seed"])
    a = make_hist(rng, p["a_kind"], p["B"], p["Ls"])
    b = make_hist(rng, p["b_kind"], p["B"], p["Lt"])
    return a, b, make_cost(rng, p["cost_kind"], p["Ls"], p["Lt"]), 10.0 ** p["log_eps"]


# ------------------------------------------------------------------- 1. float64: POT's iterates
@settings(max_examples=120, deadline=None, derandomize=True)
@given(p=problem_strategy, method=st.sampled_from(["auto", "log", "kernel"]))
def test_float64_equals_pot_for_the_same_iterations(p, method):
    a, b, C, eps = build(p)
    n = p["iterations"]
    if method == "kernel" and np.ptp(C) / eps > KERNEL_MAX_RANGE[torch.float64]:
        method = "log"  # explicit 'kernel' past its range is refused (tests/test_errors.py)
    x = torch.tensor(a, requires_grad=True)
    y = torch.tensor(b, requires_grad=True)
    Ct = torch.tensor(C)
    value = wasserstein_loss(x, y, Ct, epsilon=eps, iterations=n, method=method)
    value.sum().backward()
    plan = transport_plan(x.detach(), y.detach(), Ct, epsilon=eps, iterations=n, method=method)
    f, g = sinkhorn_potentials(x.detach(), y.detach(), Ct, epsilon=eps, iterations=n, method=method)
    for t in (value, plan, f, g, x.grad, y.grad):
        assert torch.isfinite(t).all()

    ref_plan, ref_f, ref_g = pot_same_iterations(floored(a), floored(b), C, eps, n)
    np.testing.assert_allclose(plan.numpy(), ref_plan, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(value.detach().numpy(), (ref_plan * C).sum((1, 2)), rtol=1e-9, atol=1e-15)
    # potentials are defined up to (f + c, g - c): compare f + g pairs and the centred gradients
    scale = 1e-9 * max(1.0, np.ptp(C) / eps) * eps
    np.testing.assert_allclose((f[:, :, None] + g[:, None, :]).numpy(),
                               ref_f[:, :, None] + ref_g[:, None, :], rtol=0, atol=scale + 1e-12)
    np.testing.assert_allclose(x.grad.numpy(), ref_f - ref_f.mean(1, keepdims=True), rtol=0, atol=scale + 1e-12)
    np.testing.assert_allclose(y.grad.numpy(), ref_g - ref_g.mean(1, keepdims=True), rtol=0, atol=scale + 1e-12)
    # and the invariants of a Sinkhorn plan after a column update
    assert (plan >= 0).all()
    np.testing.assert_allclose(plan.sum(1).numpy(), floored(b), rtol=1e-12, atol=1e-15)
    assert (value >= C.min() - 1e-12).all() and (value <= C.max() + 1e-12).all()


def objective_value(plan: np.ndarray, C: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float, objective: str):
    """POT's formula for ``objective`` (``ot.solve``'s ``res.value``) on given plans, float64; 0 log 0 = 0."""
    positive = plan > 0
    log_plan = np.log(np.where(positive, plan, 1.0))
    reg = plan * log_plan  # reg_type="entropy": + eps sum P log P, i.e. H(P) = -sum P log P
    if objective == "kl":  # reg_type="KL": + eps sum P log(P / (a b^T))
        reg = reg - np.where(positive, plan * np.log(a[:, :, None] * b[:, None, :]), 0.0)
    return (plan * C).sum((1, 2)) + eps * reg.sum((1, 2))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(p=problem_strategy, method=st.sampled_from(["auto", "log", "kernel"]),
       objective=st.sampled_from(["entropic", "kl"]))
def test_objectives_float64_equal_pots_formula_on_pots_iterates(p, method, objective):
    """'entropic' / 'kl' over the same extreme problems: the value is POT's formula on POT's plan
    after the same iterations, the gradient the centred potentials (minus eps log a, eps log b for
    'kl'). Measured over 400 random problems: value error <= 9e-12 eps R, gradient <= 6e-14 eps R."""
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
    scale = 1e-9 * max(1.0, np.ptp(C) / eps) * eps + 1e-12
    np.testing.assert_allclose(value.detach().numpy(), objective_value(ref_plan, C, A, B, eps, objective),
                               rtol=0, atol=scale)  # fmt: skip
    np.testing.assert_allclose(x.grad.numpy(), ref_f - ref_f.mean(1, keepdims=True), rtol=0, atol=scale)
    np.testing.assert_allclose(y.grad.numpy(), ref_g - ref_g.mean(1, keepdims=True), rtol=0, atol=scale)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(p=problem_strategy, dtype=st.sampled_from(LOW_PRECISION), objective=st.sampled_from(["entropic", "kl"]))
def test_objectives_low_precision_is_finite_and_close_to_float64(p, dtype, objective):
    """As test 2 below, with the bound scaled by the value's size: the entropy term reaches
    eps (H(a) + H(b)) ~ 40 at eps = 10, and float32 rounds it relatively (measured <= 3.4e-6
    absolute there, against 1.5e-6 for the unscaled bound)."""
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
    tol = (1e-6 + 5e-7 * max(np.ptp(C64) / eps, 1.0)) * np.maximum(1.0, np.abs(want))
    assert (np.abs(value.detach().double().numpy() - want) <= tol).all()


# ------------------------------------------------------ 2. float32 / float16 / bfloat16 inputs
@settings(max_examples=80, deadline=None, derandomize=True)
@given(p=problem_strategy, dtype=st.sampled_from(LOW_PRECISION))
def test_low_precision_is_finite_and_close_to_float64(p, dtype):
    a, b, C, eps = build(p)
    n = p["iterations"]
    x = torch.tensor(a).to(dtype).requires_grad_()
    y = torch.tensor(b).to(dtype).requires_grad_()
    Ct = torch.tensor(C).to(dtype)
    value = wasserstein_loss(x, y, Ct, epsilon=eps, iterations=n)
    value.sum().backward()
    plan = transport_plan(x.detach(), y.detach(), Ct, epsilon=eps, iterations=n)
    assert value.dtype == plan.dtype == torch.float32
    assert x.grad.dtype == y.grad.dtype == dtype
    for t in (value, plan, x.grad.float(), y.grad.float()):
        assert torch.isfinite(t).all()

    # reference: the float64 solve of the same rounded inputs
    a64, b64, C64 = (t.detach().double().numpy() for t in (x, y, Ct))
    ref_plan, _, _ = pot_same_iterations(floored(a64), floored(b64), C64, eps, n)
    R = max(np.ptp(C64) / eps, 1.0)
    tol = 1e-6 + 5e-7 * R
    np.testing.assert_allclose(value.detach().double().numpy(), (ref_plan * C64).sum((1, 2)), rtol=0, atol=tol)
    np.testing.assert_allclose(plan.double().numpy(), ref_plan, rtol=0, atol=tol)


# ------------------------------------------------------------------ 3. converged: POT and EMD
@pytest.mark.parametrize("eps,iterations", [(1e-3, 8000), (1e-2, 1500), (0.1, 500), (1.0, 100), (10.0, 50)])
def test_converged_value_matches_pot_and_the_emd_bound(eps, iterations):
    rng = np.random.default_rng(0)
    a = floored(make_hist(rng, "softmax", 4, 5))
    b = floored(make_hist(rng, "softmax", 4, 4))
    C = make_cost(rng, "rand", 5, 4)
    ours = wasserstein_loss(torch.tensor(a), torch.tensor(b), torch.tensor(C), epsilon=eps,
                            iterations=iterations).numpy()
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
                             epsilon=eps, iterations=1, method=method)
    np.testing.assert_allclose(value.numpy(), floored(b) @ C[0], rtol=1e-12)
    # L_t = 1: the plan is a itself
    a = make_hist(rng, "onehot", 3, 4)
    value = wasserstein_loss(torch.tensor(a), torch.ones(3, 1, dtype=torch.float64), torch.tensor(C.T),
                             epsilon=eps, iterations=1, method=method)
    np.testing.assert_allclose(value.numpy(), floored(a) @ C[0], rtol=1e-12)


def test_near_zero_rows_are_solved_as_uniform_rows():
    rng = np.random.default_rng(4)
    C = torch.tensor(make_cost(rng, "rand", 5, 3))
    tiny = torch.tensor(make_hist(rng, "near_zero", 2, 5))
    b = torch.tensor(make_hist(rng, "softmax", 2, 3))
    uniform = torch.full((2, 5), 0.2, dtype=torch.float64)
    for eps in (1e-3, 0.1):
        torch.testing.assert_close(wasserstein_loss(tiny, b, C, epsilon=eps),
                                   wasserstein_loss(uniform, b, C, epsilon=eps), rtol=1e-12, atol=0)
    zeros = torch.zeros(2, 5, dtype=torch.float16)  # softmax underflow in half precision
    torch.testing.assert_close(wasserstein_loss(zeros, b.half(), C.half()),
                               wasserstein_loss(uniform.float(), b.half().float(), C.half().float()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_cost_range_stays_finite(dtype):
    # (max C - min C) / eps = 1e5: only the log domain can run it; 'auto' picks it, nothing overflows
    rng = np.random.default_rng(5)
    C = torch.tensor(make_cost(rng, "with_zeros", 6, 5) * 100, dtype=dtype)
    x = torch.tensor(make_hist(rng, "peaked", 3, 6), dtype=dtype, requires_grad=True)
    y = torch.tensor(make_hist(rng, "onehot", 3, 5), dtype=dtype, requires_grad=True)
    value = wasserstein_loss(x, y, C, epsilon=1e-3, iterations=200)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    plan = transport_plan(x.detach(), y.detach(), C, epsilon=1e-3, iterations=200)
    assert torch.isfinite(plan).all() and (plan >= 0).all()
    # column sums are exact up to rounding of exponents of size R = 1e5: u * R (6e-3 in float32)
    rel = 1e-9 if dtype == torch.float64 else 1e-2
    assert math.isclose(float(plan.sum()), 3.0, rel_tol=rel)


@pytest.mark.parametrize("method", ["auto", "log"])
def test_a_constant_added_to_the_cost_costs_no_float32_accuracy(method):
    """OT plans ignore a constant added to C (the value moves by exactly that constant). The solver
    works on C - min C, so float32 exponents stay of size (max C - min C)/ε, not max C/ε: with
    C + 100 at ε = 1e-3 the error bound of test 2 (R = 1000) still holds, where exponents of size
    1e5 would carry ~6e-3 of rounding."""
    rng = np.random.default_rng(6)
    a, b = make_hist(rng, "softmax", 4, 6), make_hist(rng, "softmax", 4, 5)
    C = make_cost(rng, "rand", 6, 5)
    eps, n = 1e-3, 100
    ref_plan, _, _ = pot_same_iterations(floored(a), floored(b), C, eps, n)
    x, y = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    shifted = torch.tensor(C + 100.0, dtype=torch.float32)
    plan = transport_plan(x, y, shifted, epsilon=eps, iterations=n, method=method).double().numpy()
    value = wasserstein_loss(x, y, shifted, epsilon=eps, iterations=n, method=method).double().numpy()
    tol = 1e-6 + 5e-7 * np.ptp(C) / eps
    np.testing.assert_allclose(plan, ref_plan, rtol=0, atol=tol)
    np.testing.assert_allclose(value - 100.0, (ref_plan * C).sum((1, 2)), rtol=0, atol=tol + 1e-5)
