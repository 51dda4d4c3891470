"""Mixed precision: bf16 training through Trainer, fp16 autocast on the loss; the OT term stays float32."""

from __future__ import annotations

import math

import torch
from conftest import make_model, make_trainer

from jtln_hf.loss import JTLNLoss
from jtln_hf.ot import wasserstein_loss


def test_bf16_training_is_finite_and_moves_the_weights(small_split, tmp_path):
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer(model, small_split["joint"], tmp_path, bf16=True, max_steps=4, ot_loss_weight=1.0)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    for entry in logs:
        for key in ("loss", "ce_target", "ce_source", "ot"):
            assert math.isfinite(entry[key]), (key, entry)
    assert any(entry["ot"] > 0 for entry in logs)  # the OT term was active
    after = model.state_dict()
    assert all(torch.isfinite(after[k]).all() for k in after)
    assert not torch.equal(before["target_head.weight"], after["target_head.weight"])
    assert model.target_head.weight.dtype == torch.float32  # autocast, not a bf16 model


def test_ot_term_runs_in_float32_under_fp16_and_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    source_logits = torch.randn(6, 3, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 3, 1])
    domain = torch.tensor([0, 0, 0, 1, 1, 1])
    cost = torch.rand(3, 4, generator=g)
    reference = JTLNLoss()(logits, source_logits, labels, domain, cost)
    for dtype in (torch.float16, torch.bfloat16):
        low_t = logits.to(dtype).requires_grad_()
        low_s = source_logits.to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            parts = JTLNLoss()(low_t, low_s, labels, domain, cost)
            ot_value = wasserstein_loss(low_s.float().softmax(-1), low_t.float().softmax(-1), cost)
        assert ot_value.dtype == torch.float32
        assert all(parts[k].dtype == torch.float32 for k in parts)
        # same objective as in float32, up to the inputs' rounding to `dtype`
        tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
        for key in ("loss", "ce_target", "ce_source", "ot"):
            assert torch.allclose(parts[key], reference[key], rtol=tol, atol=tol), (dtype, key)
        parts["loss"].backward()
        assert low_t.grad.dtype == dtype and torch.isfinite(low_t.grad.float()).all()
        assert low_s.grad.dtype == dtype and torch.isfinite(low_s.grad.float()).all()
