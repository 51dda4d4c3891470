"""Backbone weights: a local timm checkpoint loads exactly (through timm), offline without weights fails fast."""

from __future__ import annotations

import timm
import torch
from safetensors.torch import save_file
import pytest

from jtln_hf import backbones
from jtln_hf.experiment.arguments import DataArguments, ModelArguments
from jtln_hf.data.pools import ExperimentData
from jtln_hf.experiment import build_config
from jtln_hf.methods import build_model
from jtln_hf.sharing.modelcard import render_model_card


def _timm_weights(tmp_path, suffix: str, in_chans: int = 1):
    """A timm ``test_resnet`` (with its 1000-class classifier) saved as weights, and its state dict."""
    torch.manual_seed(123)
    reference = timm.create_model("test_resnet", pretrained=False, in_chans=in_chans)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    path = tmp_path / f"test_resnet{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state} if suffix == ".pth" else state, path)
    return path, state


def _exp(fashion_mnist) -> ExperimentData:
    train, test = fashion_mnist
    return ExperimentData(train.select(range(20)), train.select(range(20, 30)), test.select(range(10)),
                          ["a", "b"], ["c", "d", "e"])  # fmt: skip


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_checkpoint_loads_into_the_backbone_exactly(tmp_path, fashion_mnist, suffix):
    path, state = _timm_weights(tmp_path, suffix)
    backbones.check_checkpoint(path)
    model_args = ModelArguments(backbone="test_resnet", backbone_checkpoint=str(path), in_chans=1, image_size=28)
    config = build_config(model_args, DataArguments().spec(), _exp(fashion_mnist))
    assert config.data_config["input_size"] == [1, 28, 28]  # resolved once, in the config the plan builds
    model = build_model(config, seed=0)
    loaded = model.backbone.state_dict()
    assert set(loaded) == set(state) - {"fc.weight", "fc.bias"}  # timm drops the classifier (num_classes=0)
    for name, tensor in loaded.items():  # exact: tensors saved and read back
        assert torch.equal(tensor, state[name]), name
    # the saved config says "pretrained" but carries no path of this machine, and the card no Hub base model
    assert model.config.pretrained_backbone and "pretrained_cfg_overlay" not in model.config.backbone_kwargs
    assert model.config.data_config["input_size"] == [1, 28, 28]
    assert render_model_card(model).data.base_model is None


def test_checkpoint_of_rgb_weights_is_adapted_by_timm_to_one_channel(tmp_path, fashion_mnist):
    path, state = _timm_weights(tmp_path, ".safetensors", in_chans=3)
    model_args = ModelArguments(backbone="test_resnet", backbone_checkpoint=str(path), in_chans=1)
    model = build_model(build_config(model_args, DataArguments().spec(), _exp(fashion_mnist)), seed=0)
    # timm's adapt_input_conv: a 3-channel first conv becomes one channel by summing over channels
    first = timm.models.get_pretrained_cfg("test_resnet").first_conv + ".weight"  # conv1.0 (a deep stem)
    loaded = model.backbone.state_dict()
    torch.testing.assert_close(loaded[first], state[first].sum(1, keepdim=True))
    assert loaded[first].shape[1] == 1
    for name in set(loaded) - {first}:  # exact: tensors saved and read back
        assert torch.equal(loaded[name], state[name]), name


def test_bad_checkpoints_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        backbones.check_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unknown weight format '.ckpt'"):
        backbones.check_checkpoint(tmp_path / "w.ckpt")
    (tmp_path / "w.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot be read as weights"):
        backbones.check_checkpoint(tmp_path / "w.safetensors")
    torch.save({"nothing": "here"}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match="holds no tensors|cannot be read"):
        backbones.check_checkpoint(tmp_path / "w.pth")


def test_unknown_architecture_suggests_the_nearest():
    with pytest.raises(ValueError, match=r"'resnet5O' is not a timm architecture \(did you mean 'resnet50'\?\)"):
        backbones.check_architecture("resnet5O")


def test_offline_without_cache_fails_at_once_without_asking_timm(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones.hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(backbones.hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-torch-hub"))
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("timm must not be asked to download"))
    assert backbones.cached_weights("resnet18") is None
    with pytest.raises(ValueError) as err:
        backbones.check_backbone("resnet18", pretrained=True, checkpoint=None)
    message = str(err.value)
    assert "--backbone_checkpoint" in message and str(tmp_path / "empty-cache") in message
    assert "HF_HUB_OFFLINE=1" in message and "\n" not in message


def test_cached_weights_are_found_in_the_hf_cache(tmp_path, monkeypatch):
    """A file in the HF cache layout (models--timm--<name>/snapshots/<rev>/) counts as available offline."""
    repo = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    snapshot = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"w")
    (tmp_path / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (tmp_path / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("abc")
    monkeypatch.setattr(backbones.hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(backbones.hub_constants, "HF_HUB_CACHE", str(tmp_path))
    assert backbones.cached_weights("test_resnet") == str(snapshot / "model.safetensors")
    backbones.check_backbone("test_resnet", pretrained=True, checkpoint=None)  # no error


def test_pretrained_weights_keep_the_pretrained_data_config(tmp_path, fashion_mnist):
    """No --in_chans/--image_size: timm's pretrained config decides size, mean and std, not the data."""
    path, _ = _timm_weights(tmp_path, ".safetensors", in_chans=3)
    model = build_model(build_config(ModelArguments(backbone="test_resnet", backbone_checkpoint=str(path)),
                                     DataArguments().spec(), _exp(fashion_mnist)), seed=0)  # fmt: skip
    expected = timm.data.resolve_data_config({}, model=timm.create_model("test_resnet", pretrained=False))
    assert model.config.data_config["input_size"] == list(expected["input_size"])  # 3 x 160 x 160
    assert model.config.data_config["mean"] == pytest.approx(list(expected["mean"]))
    assert model.config.data_config["std"] == pytest.approx(list(expected["std"]))


def test_image_size_on_a_pretrained_backbone_keeps_the_rest_of_its_data_config(tmp_path, fashion_mnist):
    """--image_size with pretrained weights: timm's mean, std and channels, at the asked size, in the config itself."""
    path, _ = _timm_weights(tmp_path, ".safetensors", in_chans=3)
    config = build_config(ModelArguments(backbone="test_resnet", backbone_checkpoint=str(path), image_size=64),
                          DataArguments().spec(), _exp(fashion_mnist))  # fmt: skip
    expected = timm.data.resolve_data_config({}, model=timm.create_model("test_resnet", pretrained=False))
    assert config.data_config["input_size"] == [3, 64, 64]
    assert config.data_config["mean"] == pytest.approx(list(expected["mean"]))
    assert config.data_config["interpolation"] == expected["interpolation"]
    assert build_model(config, seed=0).config.data_config == config.data_config  # the model keeps it as given
