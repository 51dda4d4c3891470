"""Tests for jtln_hf.training.loss (LossSettings, jtln_loss, JTLNLoss) against the objective written out by hand,
and for what the trainer keeps beside it (jtln_hf.training.state: the solver per cost, the deferred check).

Reference: cross-entropy as ``-log_softmax`` picked at the label (float64), and the OT term from
POT: ``ot.sinkhorn(a, b, C, reg=eps)`` gives the entropic plan gamma for each target row,
whose linear cost <gamma, C> is averaged over the target rows of the batch (helpers in conftest).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import ce_by_hand, objective_by_hand, ot_by_hand
from tolerances import cross_entropy_atol, sinkhorn_value_atol

from jtln_hf.training.loss import JTLNLoss, LossSettings, jtln_loss, rows_of, split_rows, step_stats
from jtln_hf.sinkhorn import resolve_method
from jtln_hf.training.state import DeferredCheck, SolverChoice

L_S, L_T = 4, 3


def batch(seed=0, domain=(0, 1, 1, 0, 1, 0, 1), scale=1.5):
    """Logits of both heads for a mixed batch; labels in each row's own domain's label space."""
    g = torch.Generator().manual_seed(seed)
    domain = torch.tensor(domain)
    n = len(domain)
    logits = scale * torch.randn(n, L_T, generator=g)
    source_logits = scale * torch.randn(n, L_S, generator=g)
    labels = torch.where(
        domain == 1, torch.randint(0, L_T, (n,), generator=g), torch.randint(0, L_S, (n,), generator=g)
    )
    cost = torch.rand(L_S, L_T, generator=g)
    return logits, source_logits, labels, domain, cost


def part_tolerances(logits, source_logits, cost, eps, iterations):
    """Derived float32 bounds (tests/tolerances.py) on each part against the float64 objective by hand:
    the cross-entropies' rounding, and Sinkhorn's after ``iterations`` float32 iterations (R = max C / eps)."""
    z = max(float(logits.float().abs().max()), float(source_logits.float().abs().max()))
    n = logits.shape[0]
    ot_tol = sinkhorn_value_atol(torch.float32, iterations, float(cost.max()) / eps, L_S, L_T, epsilon=eps,
                                 cost_max=float(cost.max()))  # fmt: skip
    return {"ce_target": cross_entropy_atol(torch.float32, L_T, z, rows=n),
            "ce_source": cross_entropy_atol(torch.float32, L_S, z, rows=n), "ot": ot_tol}


@pytest.mark.parametrize("lam_s,lam_ot", [(1.0, 1.0), (0.3, 2.0), (2.5, 0.1), (0.0, 1.0), (1.0, 0.0)])
@pytest.mark.parametrize("eps", [0.05, 0.1, 0.01])
def test_loss_equals_objective_by_hand(lam_s, lam_ot, eps):
    logits, source_logits, labels, domain, cost = batch(seed=int(lam_s * 10 + lam_ot * 100))
    loss_fn = JTLNLoss(source_loss_weight=lam_s, ot_loss_weight=lam_ot, ot_epsilon=eps, ot_iterations=2000)
    parts = loss_fn(logits, source_logits, labels, domain, cost)
    total, ce_t, ce_s, ot_value = objective_by_hand(logits, source_logits, labels, domain, cost, lam_s, lam_ot, eps)
    # float32 computation against a float64 reference, within derived bounds
    tol = part_tolerances(logits, source_logits, cost, eps, 2000)
    assert parts["ce_target"].item() == pytest.approx(ce_t, rel=0, abs=tol["ce_target"])
    assert parts["ce_source"].item() == pytest.approx(ce_s, rel=0, abs=tol["ce_source"])  # unweighted even when lam_s != 1
    if lam_ot:
        assert parts["ot"].item() == pytest.approx(ot_value, rel=0, abs=tol["ot"])  # unweighted
    else:
        assert parts["ot"].item() == 0.0  # exact: no OT term is computed
    # the total adds three float32 numbers (3 more roundings of its size) to the weighted parts' errors
    total_tol = tol["ce_target"] + lam_s * tol["ce_source"] + lam_ot * tol["ot"] + 3 * 2**-24 * abs(total)
    assert parts["loss"].item() == pytest.approx(total, rel=0, abs=total_tol)
    assert all(v.shape == () for v in parts.values())


def test_loss_with_default_iterations_close_to_converged():
    """50 Sinkhorn iterations (the default) on a [0, 1] cost with eps=0.05 are already converged."""
    logits, source_logits, labels, domain, cost = batch(seed=3)
    parts = JTLNLoss()(logits, source_logits, labels, domain, cost)
    total, *_ = objective_by_hand(logits, source_logits, labels, domain, cost, 1.0, 1.0, 0.05)
    assert parts["loss"].item() == pytest.approx(total, rel=1e-3)


def test_ot_uses_target_rows_only_and_no_labels():
    logits, source_logits, labels, domain, cost = batch(seed=4)
    loss_fn = JTLNLoss(ot_iterations=500)
    ref = loss_fn(logits, source_logits, labels, domain, cost)["ot"]
    # changing source rows' logits, or any label, leaves the OT term unchanged
    logits2, source_logits2, labels2 = logits.clone(), source_logits.clone(), labels.clone()
    logits2[domain == 0] += 5.0
    source_logits2[domain == 0] -= 3.0
    labels2[domain == 1] = (labels2[domain == 1] + 1) % L_T
    torch.testing.assert_close(loss_fn(logits2, source_logits2, labels2, domain, cost)["ot"], ref)


def _grads(parts_value, *inputs):
    return torch.autograd.grad(parts_value, inputs, allow_unused=True)


@pytest.mark.parametrize("domain,empty", [((0, 0, 0, 0), "target"), ((1, 1, 1), "source")])
def test_one_domain_only_is_finite(domain, empty):
    logits, source_logits, labels, domain, cost = batch(seed=5, domain=domain)
    logits.requires_grad_(True)
    source_logits.requires_grad_(True)
    parts = JTLNLoss(source_loss_weight=0.7, ot_loss_weight=1.3)(logits, source_logits, labels, domain, cost)
    assert all(torch.isfinite(v) for v in parts.values())
    if empty == "target":
        assert parts["ce_target"].item() == 0.0 and parts["ot"].item() == 0.0  # exact: no target row
        expected = 0.7 * ce_by_hand(source_logits.detach(), labels)
    else:
        assert parts["ce_source"].item() == 0.0  # exact: no source row
        expected = ce_by_hand(logits.detach(), labels) + 1.3 * ot_by_hand(
            source_logits.detach(), logits.detach(), cost, 0.05
        )
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-3)
    g_t, g_s = _grads(parts["loss"], logits, source_logits)
    for g in (g_t, g_s):
        assert g is not None and torch.isfinite(g).all()
    if empty == "target":
        assert torch.count_nonzero(g_t) == 0 and torch.count_nonzero(g_s) > 0
    else:  # OT reaches the source head through the target rows
        assert torch.count_nonzero(g_t) > 0 and torch.count_nonzero(g_s) > 0


def test_ot_weight_zero_gives_zero_ot():
    logits, source_logits, labels, domain, cost = batch(seed=6)
    source_logits.requires_grad_(True)
    parts = JTLNLoss(source_loss_weight=1.0, ot_loss_weight=0.0)(logits, source_logits, labels, domain, cost)
    assert parts["ot"].item() == 0.0  # exact: no OT term is computed
    # with no OT, the source head's only gradient is the source CE: zero on target rows
    (g_s,) = _grads(parts["loss"], source_logits)
    assert torch.count_nonzero(g_s[domain == 1]) == 0
    # the same loss with an all-zero cost (unused) works too
    zero = JTLNLoss(ot_loss_weight=0.0)(logits, source_logits, labels, domain, torch.zeros(L_S, L_T))
    torch.testing.assert_close(zero["loss"], parts["loss"])


@pytest.mark.parametrize("detach", [False, True])
def test_ot_detach_target(detach):
    logits, source_logits, labels, domain, cost = batch(seed=7)
    logits.requires_grad_(True)
    source_logits.requires_grad_(True)
    parts = JTLNLoss(ot_detach_target=detach)(logits, source_logits, labels, domain, cost)
    g_t, g_s = _grads(parts["ot"], logits, source_logits)
    assert g_s is not None and torch.count_nonzero(g_s[domain == 1]) > 0  # OT always shapes h_s
    assert torch.count_nonzero(g_s[domain == 0]) == 0  # ...on target rows only
    if detach:
        assert g_t is None or torch.count_nonzero(g_t) == 0
    else:
        assert g_t is not None and torch.count_nonzero(g_t[domain == 1]) > 0
    # the value does not depend on the option
    other = JTLNLoss(ot_detach_target=not detach)(logits, source_logits, labels, domain, cost)
    torch.testing.assert_close(other["ot"], parts["ot"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_computed_in_float32(dtype):
    """bf16/fp16 logits: every part is float32, and bit for bit what the loss gives on the same
    values in float32. That equality is exact by construction when the loss computes in float32:
    its first operation on the logits is ``.float()``, an exact cast, and the rest is the same
    deterministic float32 computation on identical numbers; any part computed in the logits' dtype
    would round to its 2^-9 (bf16) / 2^-12 (fp16) relative and break it. (Same kernels, thread count and
    buffer alignment in one process, so the reductions sum in the same order: no CPU can differ here.) Against the float64
    objective by hand on the same rounded logits, each part is within its derived float32 bound
    (tests/tolerances.py: cross-entropies; Sinkhorn at 1000 iterations, R = max C / eps)."""
    logits, source_logits, labels, domain, cost = batch(seed=8)
    low_t, low_s = logits.to(dtype), source_logits.to(dtype)
    loss_fn = JTLNLoss(ot_iterations=1000)
    parts = loss_fn(low_t, low_s, labels, domain, cost)
    assert all(v.dtype == torch.float32 for v in parts.values())
    as_float32 = loss_fn(low_t.float(), low_s.float(), labels, domain, cost)
    for name in parts:
        torch.testing.assert_close(parts[name], as_float32[name], rtol=0, atol=0, msg=name)
    total, ce_t, ce_s, ot_value = objective_by_hand(low_t.double(), low_s.double(), labels, domain, cost,
                                                    1.0, 1.0, 0.05)
    z = max(float(low_t.float().abs().max()), float(low_s.float().abs().max()))
    ce_t_tol = cross_entropy_atol(torch.float32, L_T, z, rows=len(domain))
    ce_s_tol = cross_entropy_atol(torch.float32, L_S, z, rows=len(domain))
    # the reference's own Sinkhorn converged to POT's threshold; ours ran 1000 float32 iterations
    ot_tol = sinkhorn_value_atol(torch.float32, 1000, float(cost.max()) / 0.05, L_S, L_T, epsilon=0.05,
                                 cost_max=float(cost.max()))  # fmt: skip
    for name, by_hand, tol in (("ce_target", ce_t, ce_t_tol), ("ce_source", ce_s, ce_s_tol), ("ot", ot_value, ot_tol),
                               ("loss", total, ce_t_tol + ce_s_tol + ot_tol)):  # fmt: skip
        assert parts[name].item() == pytest.approx(by_hand, rel=0, abs=tol), name


def test_row_positions_given_or_found_give_the_same_loss():
    """The trainer passes the collator's row positions; without them they are found from ``domain``."""
    logits, source_logits, labels, domain, cost = batch(seed=5)
    assert domain.tolist() == [0, 1, 1, 0, 1, 0, 1]
    source_rows, target_rows = torch.tensor([0, 3, 5]), torch.tensor([1, 2, 4, 6])  # read off by hand
    loss_fn = JTLNLoss(ot_iterations=1000)
    found = loss_fn(logits, source_logits, labels, domain, cost)
    given = loss_fn(logits, source_logits, labels, domain, cost, source_rows=source_rows, target_rows=target_rows)
    in_other_order = loss_fn(logits, source_logits, labels, domain, cost,
                             source_rows=source_rows.flip(0), target_rows=target_rows.flip(0))  # means: order-free
    _, ce_t, ce_s, ot_value = objective_by_hand(logits, source_logits, labels, domain, cost, 1.0, 1.0, 0.05)
    tol = part_tolerances(logits, source_logits, cost, 0.05, 1000)
    for parts in (found, given, in_other_order):
        assert parts["ce_target"].item() == pytest.approx(ce_t, rel=0, abs=tol["ce_target"])
        assert parts["ce_source"].item() == pytest.approx(ce_s, rel=0, abs=tol["ce_source"])
        assert parts["ot"].item() == pytest.approx(ot_value, rel=0, abs=tol["ot"])
    # and split_rows, which the trainer uses, cuts this batch at its 3 source rows into the same positions
    assert [r.tolist() for r in split_rows(domain, 3)] == [source_rows.tolist(), target_rows.tolist()]


def test_solver_resolved_once_per_cost_version(monkeypatch):
    """SolverChoice (the trainer's) reads the cost's range once (a host sync on a GPU), again only when it changes."""
    import jtln_hf.training.loss as loss_module

    calls = []
    real = loss_module.resolve_method
    monkeypatch.setattr(loss_module, "resolve_method", lambda *a, **k: calls.append(1) or real(*a, **k))
    logits, source_logits, labels, domain, cost = batch(seed=6)
    choice = SolverChoice(LossSettings())
    for _ in range(3):
        assert choice(cost) == "kernel"
    assert len(calls) == 1
    cost.mul_(2.0)  # edited in place (e.g. model.set_cost_matrix): checked and resolved again
    choice(cost)
    assert len(calls) == 2
    choice(cost.clone())  # another tensor: resolved again
    assert len(calls) == 3
    with pytest.raises(ValueError, match=r"negative entry at \(source 0, target 0\)"):
        cost[0, 0] = -1.0
        choice(cost)


def test_pure_loss_returns_the_histogram_ranges_it_checks():
    """jtln_loss given rows and a solver: the wrapper's parts, plus the min/max of both histograms (by hand)."""
    logits, source_logits, labels, domain, cost = batch(seed=4)
    settings = LossSettings(ot_iterations=1000)
    source_rows, target_rows = rows_of(domain)
    parts = jtln_loss(logits, source_logits, labels, cost, settings, source_rows=source_rows, target_rows=target_rows,
                      solver=resolve_method(cost, epsilon=0.05))  # fmt: skip
    ranges = parts.pop("prob_ranges")
    wrapped = JTLNLoss(settings)(logits, source_logits, labels, domain, cost)
    assert parts.keys() == wrapped.keys()
    for name in parts:  # exact: the wrapper makes this very call on the same tensors, in this process
        assert torch.equal(parts[name], wrapped[name]), name
    a, b = source_logits[domain == 1].softmax(-1), logits[domain == 1].softmax(-1)
    # exact: the same softmax on the same rows and shapes in this process, and min/max are exact
    assert ranges.tolist() == [a.min().item(), a.max().item(), b.min().item(), b.max().item()]
    assert not ranges.requires_grad
    no_ot = jtln_loss(logits, source_logits, labels, cost, dataclasses.replace(settings, ot_loss_weight=0.0),
                      source_rows=source_rows, target_rows=target_rows)  # fmt: skip
    assert "prob_ranges" not in no_ot and no_ot["ot"].item() == 0.0  # exact: no OT term


def test_nan_logits_raise_with_the_fix():
    logits, source_logits, labels, domain, cost = batch(seed=7)
    source_logits[domain == 1] = float("nan")
    with pytest.raises(ValueError, match=r"source_probs contains NaN.*logits are already NaN.*max_grad_norm"):
        JTLNLoss()(logits, source_logits, labels, domain, cost)


def test_deferred_errors_keep_the_first_failure_and_go_on():
    """DeferredCheck with defer_errors (JTLNTrainer on several processes): no raise in the step, the first
    failure kept; without it, the failed check raises (on a CPU at once)."""
    logits, source_logits, labels, domain, cost = batch(seed=7)
    settings = LossSettings()
    source_rows, target_rows = rows_of(domain)
    checks = DeferredCheck(defer_errors=True)

    def step(source_logits):
        parts = jtln_loss(logits, source_logits, labels, cost, settings, source_rows=source_rows,
                          target_rows=target_rows, solver="kernel")  # fmt: skip
        checks.queue(step_stats(None, parts.pop("prob_ranges")))
        return parts

    step(source_logits)  # check 1 passes
    bad = source_logits.clone()
    bad[domain == 1] = float("nan")
    for _ in range(2):  # checks 2 and 3 fail: the process trains on, check 2 is the one kept
        parts = step(bad)
    assert torch.isnan(parts["loss"])
    index, error = checks.take_error()
    assert index == 2 and isinstance(error, ValueError) and "source_probs contains NaN" in str(error)
    assert checks.take_error() is None
    checks = DeferredCheck()
    with pytest.raises(ValueError, match="source_probs contains NaN"):
        step(bad)


def test_ot_tol_reaches_the_converged_value():
    """ot_tol=1e-6 gives POT's converged OT term to 1e-4 relative, on peaked histograms."""
    logits, source_logits, labels, domain, cost = batch(seed=8, scale=4.0)  # peaked: slow to converge
    _, _, _, reference = objective_by_hand(logits, source_logits, labels, domain, cost, 1.0, 1.0, 0.05)
    tested = JTLNLoss(ot_iterations=5000, ot_tol=1e-6)(logits, source_logits, labels, domain, cost)["ot"]
    assert tested.item() == pytest.approx(reference, rel=1e-4)
    with pytest.raises(ValueError, match=r"tol must be None \(fixed iterations\) or a finite number > 0"):
        JTLNLoss(ot_tol=0.0)


def test_wrong_row_positions_are_caught():
    """Positions that select rows of the other domain raise (read lazily; on a CPU at once)."""
    logits, source_logits, labels, domain, cost = batch(seed=9)
    swapped = {"source_rows": (domain == 1).nonzero().flatten(), "target_rows": (domain == 0).nonzero().flatten()}
    with pytest.raises(ValueError, match=r"7 row\(s\) given as source_rows/target_rows belong to the other domain"):
        JTLNLoss(ot_loss_weight=0.0)(logits, source_logits, labels % L_T, domain, cost, **swapped)


def test_settings_are_frozen_so_a_cached_solver_cannot_go_stale():
    """A stale kernel solver at a tiny ε would give NaN: the settings a SolverChoice keys on cannot change."""
    logits, source_logits, labels, domain, cost = batch(seed=10)
    settings = LossSettings(ot_epsilon=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.ot_epsilon = 1e-3
    assert SolverChoice(settings)(cost) == "kernel"
    small = dataclasses.replace(settings, ot_epsilon=1e-3)  # (max C - min C)/ε > 50 needs the log domain
    assert SolverChoice(small)(cost) == "log"
    assert torch.isfinite(JTLNLoss(small)(logits, source_logits, labels, domain, cost)["ot"])


def test_cost_made_in_inference_mode():
    """Inference tensors have no version counter: SolverChoice resolves them on every call instead of caching.

    So a cost made under ``torch.inference_mode`` gives the loss and the gradients (into both
    heads' logits) of the same values in an ordinary tensor, and an in-place change to it made
    under inference mode is seen at the next call: C scaled to a range of 100 / eps = 2000 needs
    the log-domain solver (the kernel exp(-C/eps) underflows), where the first call's C (range < 1,
    20 / eps) took the kernel one; a solver cached from the first call would give NaN or a
    different value. Equality is exact by construction: ``values * 100`` and ``cost.mul_(100)`` are one
    IEEE rounding of the same product, and then the same code runs on the same float32 values in one
    process (the same solver, the same kernels and thread count, buffers aligned alike by torch's CPU
    allocator), so every reduction sums in the same order.
    """
    logits, source_logits, labels, domain, values = batch(seed=11)
    with torch.inference_mode():
        cost = values.clone()
    assert cost.is_inference() and not values.is_inference()
    settings = LossSettings(ot_epsilon=0.05)
    choice = SolverChoice(settings)
    source_rows, target_rows = rows_of(domain)

    def cached(x, s, labels, domain, c):  # as JTLNTrainer.compute_loss calls it
        return jtln_loss(x, s, labels, c, settings, source_rows=source_rows, target_rows=target_rows, solver=choice(c))

    def loss_and_grads(loss, c):
        x, s = logits.clone().requires_grad_(), source_logits.clone().requires_grad_()
        parts = loss(x, s, labels, domain, c)
        parts["loss"].backward()
        return parts, x.grad, s.grad

    for scale in (1.0, 100.0):
        if scale != 1.0:
            with torch.inference_mode():
                cost.mul_(scale)  # allowed on an inference tensor, inside inference mode only
        reference = values * scale
        assert resolve_method(reference, epsilon=0.05) == ("kernel" if scale == 1.0 else "log")
        assert choice(cost) == ("kernel" if scale == 1.0 else "log")
        parts, grad, source_grad = loss_and_grads(cached, cost)
        ref_parts, ref_grad, ref_source_grad = loss_and_grads(JTLNLoss(settings), reference)
        for key in ("loss", "ot", "ce_target", "ce_source"):
            assert torch.equal(parts[key], ref_parts[key]), key
        assert parts["ot"] > 0 and torch.isfinite(parts["loss"])
        # the gradient flows into both heads' logits (OT reaches the target rows of both), as with an ordinary C
        assert torch.equal(grad, ref_grad) and torch.equal(source_grad, ref_source_grad)
        assert grad.abs().sum() > 0 and source_grad[domain == 1].abs().sum() > 0


def test_tol_with_a_batch_without_target_rows():
    logits, source_logits, labels, domain, cost = batch(seed=12, domain=(0, 0, 0))
    parts = JTLNLoss(ot_tol=1e-5, ot_iterations=100)(logits, source_logits, labels, domain, cost)
    assert parts["ot"].item() == 0.0 and torch.isfinite(parts["loss"])  # exact: no target row


def test_split_rows_by_a_known_count():
    domain = torch.tensor([1, 0, 1, 1, 0, 0, 1])
    source_rows, target_rows = split_rows(domain, 3)
    assert source_rows.tolist() == [1, 4, 5] and target_rows.tolist() == [0, 2, 3, 6]  # stable: batch order kept
