"""The fast paths of jtln_hf.sinkhorn: the convergence test (``tol``), the sync-free call (``check_inputs=False``).

* ``tol``: the stopping rule is checked by hand -- the result equals the fixed-iteration result
  at the first multiple of ``CHECK_EVERY`` where the largest L1 row-marginal error of the plans
  (read from :func:`transport_plan`, not from the solver's own test) is ``<= tol`` -- and its
  accuracy against POT's converged Sinkhorn (``ot.sinkhorn2`` with a 1e-12 stopping threshold,
  float64): within ``tol * (max C - min C)`` absolute, and within 1e-4 relative at
  ``tol=1e-5`` on the benchmark's problem size (B=128, 1000x256).
* ``check_inputs=False``: the same numbers as the checked call, without reading any tensor on
  the host (``Tensor.item``/``tolist``/``__bool__``/``__float__`` are made to raise).

Both properties are checked for every ``objective`` (values and gradients).
"""

from __future__ import annotations

import contextlib

import ot
import pytest
import torch

from tolerances import sinkhorn_potential_error, sinkhorn_value_atol

from jtln_hf.sinkhorn import (
    CHECK_EVERY,
    OBJECTIVES,
    PROB_FLOOR,
    resolve_method,
    sinkhorn_potentials,
    transport_plan,
    wasserstein_loss,
)


def peaked_problem(B, Ls, Lt, seed=0, dtype=torch.float32, sharp=(3.0, 5.0)):
    """Histograms like a trained network's softmax (peaked: Sinkhorn needs ~100 iterations at ε=0.05)."""
    g = torch.Generator().manual_seed(seed)
    a = (sharp[0] * torch.randn(B, Ls, generator=g, dtype=torch.float64)).softmax(-1).to(dtype)
    b = (sharp[1] * torch.randn(B, Lt, generator=g, dtype=torch.float64)).softmax(-1).to(dtype)
    C = torch.rand(Ls, Lt, generator=g, dtype=torch.float64).to(dtype)
    return a, b, C


def row_error(a, b, C, eps, iterations, method):
    """max_b ||gamma_b 1 - a_b||_1 after exactly ``iterations`` iterations, from the plan itself."""
    plan = transport_plan(a, b, C, epsilon=eps, iterations=iterations, method=method)
    return (plan.sum(dim=2) - a / a.sum(dim=1, keepdim=True)).abs().sum(dim=1).max().item()


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("method", ["kernel", "log"])
@pytest.mark.parametrize("tol", [1e-3, 1e-5])
def test_tol_stops_at_the_first_test_that_meets_it(method, tol, objective):
    a, b, C = peaked_problem(6, 40, 12, dtype=torch.float64)
    eps, maximum = 0.05, 400
    stop = next(k for k in range(CHECK_EVERY, maximum, CHECK_EVERY) if row_error(a, b, C, eps, k, method) <= tol)
    assert CHECK_EVERY < stop < maximum  # a real early stop, not the first test nor the maximum
    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    got = wasserstein_loss(x, y, C, epsilon=eps, iterations=maximum, method=method, tol=tol, objective=objective)
    want = wasserstein_loss(x, y, C, epsilon=eps, iterations=stop, method=method, objective=objective)
    # float64: the same iterates, so equal up to the rounding of two computations (tests/tolerances.py),
    # a bound far below the change of CHECK_EVERY more or fewer iterations (asserted below)
    R = float(C.max() - C.min()) / eps
    atol = 2 * sinkhorn_value_atol(torch.float64, stop, R, 40, 12, epsilon=eps, cost_max=float(C.max()))
    pot = 2 * 2 * eps * sinkhorn_potential_error(torch.float64, stop, R, 40, 12)  # centred: doubled
    torch.testing.assert_close(got, want, rtol=0, atol=atol)
    for other in (stop - CHECK_EVERY, stop + CHECK_EVERY):
        moved = wasserstein_loss(x, y, C, epsilon=eps, iterations=other, method=method, objective=objective)
        assert (moved - want).abs().max() > 10 * atol  # the check tells the stop from its neighbours
    grads = torch.autograd.grad(got.sum(), (x, y)), torch.autograd.grad(want.sum(), (x, y))
    torch.testing.assert_close(*grads, rtol=0, atol=pot)
    f, g = sinkhorn_potentials(a, b, C, epsilon=eps, iterations=maximum, method=method, tol=tol)
    f_want, g_want = sinkhorn_potentials(a, b, C, epsilon=eps, iterations=stop, method=method)
    torch.testing.assert_close((f, g), (f_want, g_want), rtol=0, atol=pot)


def test_tol_is_a_maximum_not_a_minimum():
    """An unreachable tol runs exactly ``iterations`` (here not a multiple of CHECK_EVERY)."""
    a, b, C = peaked_problem(4, 30, 10, dtype=torch.float64)
    got = wasserstein_loss(a, b, C, epsilon=0.05, iterations=37, tol=1e-300, objective="paper")
    want = wasserstein_loss(a, b, C, epsilon=0.05, iterations=37, objective="paper")
    atol = 2 * sinkhorn_value_atol(torch.float64, 37, float(C.max() - C.min()) / 0.05, 30, 10, epsilon=0.05,
                                   cost_max=float(C.max()))  # fmt: skip
    torch.testing.assert_close(got, want, rtol=0, atol=atol)
    for other in (30, 40):  # and not the result of a multiple of CHECK_EVERY
        moved = wasserstein_loss(a, b, C, epsilon=0.05, iterations=other, objective="paper")
        assert (moved - want).abs().max() > 10 * atol


def pot_converged(a, b, C, eps):
    """POT's Sinkhorn run to a 1e-12 marginal error, in float64, on the histograms our solver sees.

    Both are floored at PROB_FLOOR and renormalised in float64 (as ``wasserstein_loss`` does):
    float32 rows summing to 1 +- 1e-7 would leave unequal masses, and no plan could meet 1e-12.
    """

    def simplex(p):
        p = p.double().clamp_min(PROB_FLOOR)
        return (p / p.sum(dim=1, keepdim=True)).numpy()

    a, b = simplex(a), simplex(b)
    values = []
    for i in range(a.shape[0]):
        value, log = ot.sinkhorn2(a[i], b[i], C.double().numpy(), eps, numItermax=50_000, stopThr=1e-12, log=True)
        assert log["niter"] < 50_000 - 1, "POT's reference did not converge"
        values.append(float(value))
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("method", ["kernel", "log"])
@pytest.mark.parametrize("eps", [0.05, 0.1])
@pytest.mark.parametrize("tol", [1e-4, 1e-5])
def test_tol_value_within_tol_times_cost_range_of_pot_converged(method, eps, tol):
    a, b, C = peaked_problem(8, 60, 20, seed=1)
    got = wasserstein_loss(a, b, C, epsilon=eps, iterations=5000, method=method, tol=tol, objective="paper").double()
    ref = pot_converged(a, b, C, eps)
    assert (got - ref).abs().max().item() <= tol * (C.max() - C.min()).item()


def test_tol_meets_1e_4_relative_at_the_benchmark_shape():
    """B=128 rows of a 1000x256 cost (the issue's benchmark shape), float32, ε=0.05, tol=1e-5."""
    a, b, C = peaked_problem(128, 1000, 256, seed=2)
    got = wasserstein_loss(a, b, C, epsilon=0.05, iterations=2000, tol=1e-5, objective="paper").double()
    rows = torch.arange(0, 128, 16)  # POT's float64 reference on 8 of the rows keeps the test short
    ref = pot_converged(a[rows], b[rows], C, 0.05)
    assert ((got[rows] - ref).abs() / ref).max().item() <= 1e-4


def test_fixed_iterations_are_not_converged_on_peaked_histograms():
    """Why tol exists: 50 fixed iterations leave a ~1e-3 error where tol=1e-5 leaves ~1e-5."""
    a, b, C = peaked_problem(8, 60, 20, seed=1)
    ref = pot_converged(a, b, C, 0.05)
    linear = {"epsilon": 0.05, "objective": "paper"}  # <gamma, C>, as ot.sinkhorn2
    fixed = (wasserstein_loss(a, b, C, iterations=50, **linear).double() - ref).abs().max().item()
    tested = (wasserstein_loss(a, b, C, iterations=5000, tol=1e-5, **linear).double() - ref).abs().max().item()
    assert fixed > 10 * tested


@pytest.mark.parametrize("tol", [0.0, -1e-4, float("nan"), float("inf"), "1e-4x"])
def test_bad_tol(tol):
    a, b, C = peaked_problem(2, 3, 2)
    with pytest.raises(ValueError, match=r"tol must be None \(fixed iterations\) or a finite number > 0"):
        wasserstein_loss(a, b, C, tol=tol)


# ------------------------------------------------------------------------------- check_inputs=False
@contextlib.contextmanager
def no_host_reads():
    """Inside, every way of reading a tensor's value on the host raises."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the solver read a tensor on the host (a device synchronisation)")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
            mp.setattr(torch.Tensor, name, refuse)
        yield


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("method", ["kernel", "log"])
def test_unchecked_call_matches_and_never_reads_on_the_host(method, objective):
    """float64 (the numbers are the point, not the precision): equal to the checked call up to the
    rounding of two computations of the same iterates (tests/tolerances.py)."""
    a, b, C = peaked_problem(5, 9, 4, dtype=torch.float64)
    C = C + 0.25  # a cost with min > 0 exercises the device-side shift by min C
    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    want = wasserstein_loss(x, y, C, epsilon=0.1, method=method, objective=objective)
    want_grads = torch.autograd.grad(want.sum(), (x, y))
    assert resolve_method(C, epsilon=0.1, method=method) == method
    with no_host_reads():
        got = wasserstein_loss(x, y, C, epsilon=0.1, method=method, check_inputs=False, objective=objective)
        got_grads = torch.autograd.grad(got.sum(), (x, y))
        plan = transport_plan(a, b, C, epsilon=0.1, method=method, check_inputs=False)
    R = float(C.max() - C.min()) / 0.1
    atol = 2 * sinkhorn_value_atol(torch.float64, 50, R, 9, 4, epsilon=0.1, cost_max=float(C.max()))
    pot = 2 * 2 * 0.1 * sinkhorn_potential_error(torch.float64, 50, R, 9, 4)
    torch.testing.assert_close(got, want, rtol=0, atol=atol)
    torch.testing.assert_close(got_grads, want_grads, rtol=0, atol=pot)
    torch.testing.assert_close(plan, transport_plan(a, b, C, epsilon=0.1, method=method), rtol=0, atol=atol)


def test_the_guard_catches_a_host_read():
    """The guard above is not vacuous: the checked call reads the cost's range on the host."""
    a, b, C = peaked_problem(2, 3, 2)
    with no_host_reads(), pytest.raises(AssertionError, match="read a tensor on the host"):
        wasserstein_loss(a, b, C)


def test_unchecked_call_needs_a_resolved_method():
    a, b, C = peaked_problem(2, 3, 2)
    with pytest.raises(ValueError, match=r"check_inputs=False needs method='kernel' or 'log'.*resolve_method"):
        wasserstein_loss(a, b, C, check_inputs=False)


def test_unchecked_call_still_checks_shapes():
    a, b, C = peaked_problem(2, 3, 2)
    with pytest.raises(ValueError, match=r"cost has shape \(2, 3\) but source_probs has 3 columns"):
        wasserstein_loss(a, b, C.T, method="kernel", check_inputs=False)
