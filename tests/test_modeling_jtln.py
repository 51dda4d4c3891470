"""Tests for JointImageClassifier on a tiny config (timm ``test_resnet``, 1x28x28 inputs).

References are independent of the code under test: cross-entropy written out with
``log_softmax``, ``timm.create_model`` for the backbone initialisation, and a fresh Python
process for ``from_pretrained`` (so nothing cached in this process can make a round trip pass).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from conftest import make_config, make_model
from safetensors.torch import load_file
from tolerances import jtln_logit_bounds
from transformers import AutoModelForImageClassification

import jtln_hf.modeling_jtln as modeling
from jtln_hf import JointClassifierOutput, JointImageClassifier, JointImageClassifierConfig

B, L_S, L_T = 5, 3, 4


def _inputs(seed=0, batch=B):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, 28, 28, generator=g)


# ------------------------------------------------------------------------------ forward / outputs
def test_output_shapes_and_fields(tiny_model):
    tiny_model.eval()
    out = tiny_model(_inputs())
    assert isinstance(out, JointClassifierOutput)
    num_features = tiny_model.backbone.num_features
    assert out.logits.shape == (B, L_T)
    assert out.source_logits.shape == (B, L_S)
    assert out.pooler_output.shape == (B, num_features)
    assert out.loss is None and out.hidden_states is None
    # logits are the target head, source_logits the source head, both on `pooled`
    torch.testing.assert_close(out.logits, out.pooler_output @ tiny_model.target_head.weight.T + tiny_model.target_head.bias)
    torch.testing.assert_close(
        out.source_logits, out.pooler_output @ tiny_model.source_head.weight.T + tiny_model.source_head.bias
    )
    # pooled = the timm backbone's own pooled features (num_classes=0 -> forward returns them)
    torch.testing.assert_close(out.pooler_output, tiny_model.backbone(_inputs()))


def test_hidden_states_when_asked(tiny_model):
    tiny_model.eval()
    x = _inputs()
    out = tiny_model(x, output_hidden_states=True)
    assert isinstance(out.hidden_states, tuple) and len(out.hidden_states) >= 2
    assert all(h.dim() == 4 and h.shape[0] == B for h in out.hidden_states)
    # the same predictions with or without the intermediates
    plain = tiny_model(x)
    torch.testing.assert_close(out.logits, plain.logits)
    torch.testing.assert_close(out.pooler_output, plain.pooler_output)
    # the config default is honoured too
    tiny_model.config.output_hidden_states = True
    assert tiny_model(x).hidden_states is not None


def test_loss_is_target_cross_entropy(tiny_model):
    tiny_model.eval()
    labels = torch.tensor([0, 3, 1, 2, 3])
    out = tiny_model(_inputs(), labels=labels)
    by_hand = -torch.log_softmax(out.logits.double(), dim=-1)[torch.arange(B), labels].mean()
    torch.testing.assert_close(out.loss.double(), by_hand, rtol=1e-6, atol=1e-7)
    # source logits play no part in it
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))


def test_tuple_output_order(tiny_model):
    tiny_model.eval()
    x, labels = _inputs(), torch.tensor([0, 1, 2, 3, 0])
    ref = tiny_model(x, labels=labels)
    loss, logits, source_logits, pooled = tiny_model(x, labels=labels, return_dict=False)
    for a, b in ((loss, ref.loss), (logits, ref.logits), (source_logits, ref.source_logits), (pooled, ref.pooler_output)):
        torch.testing.assert_close(a, b)
    assert len(tiny_model(x, return_dict=False)) == 3


# ------------------------------------------------------------------------------ initialisation
def test_timm_initialisation_survives_post_init():
    torch.manual_seed(7)
    model = JointImageClassifier(make_config(num_target=L_T))
    torch.manual_seed(7)
    reference = timm.create_model("test_resnet", pretrained=False, num_classes=0, in_chans=1)
    ours, ref = model.backbone.state_dict(), reference.state_dict()
    assert ours.keys() == ref.keys()
    for name in ref:  # exact: the same seeded initialisation calls on the same shapes, in this process
        torch.testing.assert_close(ours[name], ref[name], rtol=0, atol=0, msg=f"backbone {name} changed")


def test_heads_initialised_by_initializer_range():
    torch.manual_seed(0)
    model = JointImageClassifier(make_config(num_target=4, initializer_range=0.5))
    for head in (model.source_head, model.target_head):
        assert torch.count_nonzero(head.bias) == 0
        # std 0.5 (nn.Linear's default would be uniform with bound 1/sqrt(96) ~ 0.10)
        assert 0.3 < head.weight.std().item() < 0.7
    assert torch.count_nonzero(model.cost_matrix) == 0  # C starts at zero until set


def test_missing_source_classes_raises():
    with pytest.raises(ValueError, match="needs the source classes"):
        JointImageClassifier(JointImageClassifierConfig(backbone="test_resnet", num_labels=2))


def test_unknown_timm_architecture():
    with pytest.raises(ValueError, match=r"unknown timm architecture 'no_such_net_v0'.*timm\.list_models"):
        JointImageClassifier(make_config(backbone="no_such_net_v0"))


def test_data_config_resolved_from_backbone_when_missing():
    model = JointImageClassifier(make_config(data_config=None))
    dc = model.config.data_config
    assert dc["input_size"][0] == 1  # follows in_chans=1
    assert len(dc["mean"]) == 1 and len(dc["std"]) == 1


# ------------------------------------------------------------------------------ cost matrix
def test_set_cost_matrix_copies_valid_cost(tiny_model):
    cost = np.arange(L_S * L_T, dtype=np.float64).reshape(L_S, L_T)
    tiny_model.set_cost_matrix(cost)
    assert tiny_model.cost_matrix.dtype == torch.float32
    torch.testing.assert_close(tiny_model.cost_matrix, torch.tensor(cost, dtype=torch.float32))
    assert "cost_matrix" in tiny_model.state_dict()


def test_set_cost_matrix_wrong_shape(tiny_model):
    with pytest.raises(ValueError) as err:
        tiny_model.set_cost_matrix(torch.ones(L_T, L_S))
    assert "(4, 3)" in str(err.value) and "(3, 4)" in str(err.value)
    with pytest.raises(ValueError, match=r"\(12,\)"):
        tiny_model.set_cost_matrix(torch.ones(L_S * L_T))


def test_set_cost_matrix_nan_names_position(tiny_model):
    cost = torch.ones(L_S, L_T)
    cost[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite entry at \(source 1, target 2\)"):
        tiny_model.set_cost_matrix(cost)
    cost[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"\(source 1, target 2\)"):
        tiny_model.set_cost_matrix(cost)


def test_set_cost_matrix_negative(tiny_model):
    before = tiny_model.cost_matrix.clone()
    cost = torch.ones(L_S, L_T)
    cost[2, 0] = -0.5
    with pytest.raises(ValueError, match=r"negative entry at \(source 2, target 0\) = -0.5"):
        tiny_model.set_cost_matrix(cost)
    torch.testing.assert_close(tiny_model.cost_matrix, before)  # a rejected C leaves the buffer alone


def test_cost_matrix_in_constructor():
    model = JointImageClassifier(make_config(num_target=2), cost_matrix=[[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    torch.testing.assert_close(model.cost_matrix, torch.arange(6.0).reshape(3, 2))


# ------------------------------------------------------------------------------ save / load
_LOAD_IN_FRESH_PROCESS = r"""
import json, sys
import numpy as np, torch
from jtln_hf import JointImageClassifier
ckpt, out = sys.argv[1], sys.argv[2]
model = JointImageClassifier.from_pretrained(ckpt).eval()
x = torch.from_numpy(np.load(out + "/input.npy"))
with torch.no_grad():
    o = model(x)
np.save(out + "/logits.npy", o.logits.numpy())
np.save(out + "/source_logits.npy", o.source_logits.numpy())
np.savez(out + "/state.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
json.dump({"id2label": model.config.id2label, "source_id2label": model.config.source_id2label,
           "label2id": model.config.label2id, "num_source_labels": model.config.num_source_labels,
           "type": type(model).__name__}, open(out + "/meta.json", "w"))
"""


def _trained_a_little(model):
    """Move weights and BatchNorm running statistics away from their initial values."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for seed in range(2):
        out = model(_inputs(seed), labels=torch.tensor([0, 1, 2, 3, 0]))
        (out.loss + out.source_logits.square().mean()).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_save_then_load_in_fresh_process(tmp_path):
    model = _trained_a_little(make_model(num_target=L_T, cost=torch.rand(L_S, L_T, generator=torch.Generator().manual_seed(3))))
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    out.mkdir()
    model.save_pretrained(ckpt)
    assert (ckpt / "model.safetensors").is_file()
    assert not list(ckpt.glob("*.bin"))
    on_disk = load_file(ckpt / "model.safetensors")
    torch.testing.assert_close(on_disk["cost_matrix"], model.cost_matrix, rtol=0, atol=0)  # exact: saved and read back

    x = _inputs(seed=11, batch=6)
    np.save(out / "input.npy", x.numpy())
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_FRESH_PROCESS, str(ckpt), str(out)],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr

    state = dict(np.load(out / "state.npz"))  # exact: the weights as loaded there, saved and read back here
    ours = model.state_dict()
    assert state.keys() == ours.keys()
    for name, value in ours.items():
        np.testing.assert_array_equal(state[name], value.numpy(), err_msg=name)
    np.testing.assert_array_equal(state["cost_matrix"], model.cost_matrix.numpy())

    meta = json.loads((out / "meta.json").read_text())
    assert meta["type"] == "JointImageClassifier"
    # JSON keys are strings again here; what matters is that both maps came back complete
    assert meta["id2label"] == {str(k): v for k, v in model.config.id2label.items()}
    assert meta["source_id2label"] == {str(k): v for k, v in model.config.source_id2label.items()}
    assert meta["label2id"] == model.config.label2id
    assert meta["num_source_labels"] == L_S

    with torch.no_grad():
        ref = model(x)
    # Same weights and inputs in another process: each side's float32 logits are within the forward-error bound
    # of the exact ones, whatever the CPU, kernels or thread split (tests/tolerances.py), so within twice it.
    bounds = jtln_logit_bounds(model, x)
    for name in ("logits", "source_logits"):
        gap = (torch.from_numpy(np.load(out / f"{name}.npy")) - getattr(ref, name)).abs()
        assert (gap <= 2 * bounds[name][1]).all(), name


def test_auto_model_loads_checkpoint(tmp_path):
    model = _trained_a_little(make_model(num_target=L_T))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is JointImageClassifier
    assert loaded.config.source_id2label == model.config.source_id2label
    assert loaded.config.id2label == model.config.id2label
    torch.testing.assert_close(loaded.cost_matrix, model.cost_matrix, rtol=0, atol=0)  # exact: saved and read back
    x = _inputs(seed=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)


def _record_create_model(monkeypatch):
    """Replace timm.create_model by a recorder that never downloads (forces pretrained=False)."""
    calls = []
    original = timm.create_model

    def recorder(*args, **kwargs):
        calls.append({"pretrained": kwargs.get("pretrained"), "loading": modeling._LOADING_CHECKPOINT.get()})
        kwargs["pretrained"] = False
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling.timm, "create_model", recorder)
    return calls


def test_pretrained_backbone_not_requested_by_from_pretrained(tmp_path, monkeypatch):
    calls = _record_create_model(monkeypatch)
    # A fresh model does ask timm for pretrained weights (this shows the recorder sees the flag).
    model = JointImageClassifier(make_config(num_target=2, pretrained_backbone=True))
    assert calls == [{"pretrained": True, "loading": False}]
    model.save_pretrained(tmp_path)

    calls.clear()
    loaded = JointImageClassifier.from_pretrained(tmp_path)
    assert loaded.config.pretrained_backbone is True  # the flag is kept in the config...
    assert calls == [{"pretrained": False, "loading": True}]  # ...but not honoured when loading
    calls.clear()
    AutoModelForImageClassification.from_pretrained(tmp_path)
    assert calls == [{"pretrained": False, "loading": True}]
    assert modeling._LOADING_CHECKPOINT.get() is False  # reset afterwards
    for name, value in model.state_dict().items():  # exact: saved and read back
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_loading_flag_reset_after_failed_load(tmp_path):
    with pytest.raises(Exception):
        JointImageClassifier.from_pretrained(tmp_path / "does_not_exist")
    assert modeling._LOADING_CHECKPOINT.get() is False
