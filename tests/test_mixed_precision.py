"""Mixed precision: bf16 training through Trainer, fp16/bf16 autocast on the loss; the loss is computed in float32.

References: the objective by hand in float64 (``-log_softmax`` cross-entropies and POT's Sinkhorn plan,
see conftest) on the same low-precision logits, so that only the computation's precision is tested.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_model, make_trainer, objective_by_hand
from tolerances import cross_entropy_atol, sinkhorn_value_atol

import jtln_hf.training.trainer
from jtln_hf.training.loss import JTLNLoss


def test_bf16_training_is_finite_and_moves_the_weights(small_split, tmp_path, monkeypatch):
    """bf16=True really runs the model under bf16 autocast, the loss parts are float32, every logged part
    is finite and the weights move.

    Accelerate wraps the model's forward in autocast and converts its outputs to float32, so the loss
    receives float32 tensors holding bf16 values: every logit is exactly representable in bf16, which
    float32 logits from a forward without autocast almost never are."""
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer(model, small_split["joint"], tmp_path, bf16=True, max_steps=4, ot_loss_weight=1.0)
    seen = []
    real = jtln_hf.training.trainer.jtln_loss

    def spy(logits, source_logits, *args, **kwargs):
        parts = real(logits, source_logits, *args, **kwargs)
        in_bf16 = all(torch.equal(t, t.bfloat16().to(t.dtype)) for t in (logits, source_logits))
        seen.append((in_bf16, {k: v.dtype for k, v in parts.items()}))
        return parts

    monkeypatch.setattr(jtln_hf.training.trainer, "jtln_loss", spy)
    trainer.train()
    assert len(seen) == 4
    for in_bf16, part_dtypes in seen:
        assert in_bf16  # autocast was on: the heads computed in bf16
        assert set(part_dtypes.values()) == {torch.float32}  # ... and the loss in float32
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    for entry in logs:
        for key in ("loss", "ce_target", "ce_source", "ot"):
            assert math.isfinite(entry[key]), (key, entry)
    assert any(entry["ot"] > 0 for entry in logs)  # the OT term was active
    after = model.state_dict()
    assert all(torch.isfinite(after[k]).all() for k in after)
    assert not torch.equal(before["target_head.weight"], after["target_head.weight"])  # moved by a whole update


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ot_term_runs_in_float32_under_fp16_and_bf16_autocast(dtype):
    """Under autocast, low-precision logits give float32 parts that are, bit for bit, the loss of
    the same values in float32 without autocast: exact by construction when the cross-entropies,
    softmaxes and Sinkhorn run in float32 (the loss's first operation on the logits is an exact
    cast, and both calls run the same kernels in one process, so reductions sum in the same order),
    while any part that autocast ran in the logits' dtype would round to 2^-9 (bf16) or
    2^-12 (fp16) relative and break the equality. Against the float64 objective by hand on the same
    logits, each part is within its derived float32 bound (tests/tolerances.py)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    source_logits = torch.randn(6, 3, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 3, 1])
    domain = torch.tensor([0, 0, 0, 1, 1, 1])
    cost = torch.rand(3, 4, generator=g)
    low_t = logits.to(dtype).requires_grad_()
    low_s = source_logits.to(dtype).requires_grad_()
    loss_fn = JTLNLoss(ot_iterations=1000)
    with torch.autocast("cpu", dtype=dtype):
        parts = loss_fn(low_t, low_s, labels, domain, cost)
    assert all(parts[k].dtype == torch.float32 for k in parts)
    with torch.no_grad():
        plain = loss_fn(low_t.detach().float(), low_s.detach().float(), labels, domain, cost)
    for key in parts:
        torch.testing.assert_close(parts[key].detach(), plain[key], rtol=0, atol=0, msg=key)
    total, ce_t, ce_s, ot_value = objective_by_hand(low_t.detach().double(), low_s.detach().double(), labels, domain,
                                                    cost, 1.0, 1.0, 0.05)
    z = max(float(low_t.detach().float().abs().max()), float(low_s.detach().float().abs().max()))
    ce_t_tol, ce_s_tol = cross_entropy_atol(torch.float32, 4, z, rows=6), cross_entropy_atol(torch.float32, 3, z, rows=6)
    ot_tol = sinkhorn_value_atol(torch.float32, 1000, float(cost.max()) / 0.05, 3, 4, epsilon=0.05,
                                 cost_max=float(cost.max()))  # fmt: skip
    for key, by_hand, tol in (("ce_target", ce_t, ce_t_tol), ("ce_source", ce_s, ce_s_tol), ("ot", ot_value, ot_tol),
                              ("loss", total, ce_t_tol + ce_s_tol + ot_tol)):  # fmt: skip
        assert parts[key].item() == pytest.approx(by_hand, rel=0, abs=tol), (dtype, key)
    parts["loss"].backward()
    assert low_t.grad.dtype == dtype and torch.isfinite(low_t.grad.float()).all()
    assert low_s.grad.dtype == dtype and torch.isfinite(low_s.grad.float()).all()
