"""LoRA adapters on the backbone (jtln_hf.training.lora) and ViT backbones, on timm's tiny test models.

What LoRA must do: train the adapters and the two heads, nothing else (the base weights bit for bit as
built); save a merged model that loads as full fine-tuning's does, and the adapters alone in PEFT's
format, which a PeftModel on the same base backbone reads back to the saved model's weights; resume
mid-run bit for bit; work with Trainer's ``--gradient_checkpointing``.

Exact comparisons here are of one of the kinds that hold on any CPU: a tensor compared with itself after
training left it alone (frozen weights), a tensor saved and reloaded, or the same sequence of calls on the
same shapes in one process (a merge done again, a resumed run against an uninterrupted one on one thread).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import json

import numpy as np
import pytest
import timm
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import TrainingArguments, set_seed

from jtln_hf import JointImageClassifier
from jtln_hf import data as jdata
from jtln_hf.training.lora import (
    ADAPTER_FOLDER,
    DEFAULT_TARGETS,
    HEADS_FILE,
    LoraSettings,
    add_lora,
    default_targets,
    has_lora,
    lora_settings,
    merged_model,
    trainable_share,
)
from jtln_hf.utils.io import latest_complete_checkpoint

from conftest import make_model, make_trainer
from test_recipe_cli import recipe  # recipes/train_jtln.py as a module, loaded once
from test_resume import _StopAt

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # runs compared bit for bit: one torch thread

VIT_CONFIG = {"input_size": [1, 32, 32], "mean": [0.286], "std": [0.353], "interpolation": "bilinear",
              "crop_pct": 1.0, "crop_mode": "center"}  # fmt: skip
# Trainer's flag: --activation_checkpointing since transformers 5.25, --gradient_checkpointing (its alias) before
_FLAGS = {f.name for f in dataclasses.fields(TrainingArguments)}
CHECKPOINTING = "activation_checkpointing" if "activation_checkpointing" in _FLAGS else "gradient_checkpointing"
LORA = LoraSettings(rank=4, alpha=8.0, dropout=0.0, targets=DEFAULT_TARGETS["VisionTransformer"])


def _vit(seed: int = 0, lora: LoraSettings | None = LORA) -> JointImageClassifier:
    """A test_vit JTLN model on 1-channel 32x32 images, seeded, with LoRA adapters unless ``lora`` is None."""
    model = make_model(seed=seed, backbone="test_vit", backbone_kwargs={"in_chans": 1, "img_size": 32},
                       data_config=dict(VIT_CONFIG))  # fmt: skip
    if lora is not None:
        torch.manual_seed(seed + 1)
        add_lora(model, lora)
    return model


@pytest.fixture(scope="module")
def train_32(fashion_mnist):
    """Fashion-MNIST source (3 classes x 4) and target (2 classes x 5) images at 32 px, augmented."""
    train, _ = fashion_mnist
    source, target = jdata.split_by_classes(train, ("T-shirt/top", "Trouser", "Pullover"), ("Sandal", "Bag"))
    joint = jdata.build_joint_dataset(jdata.sample_shots(source, 4, seed=1), jdata.sample_shots(target, 5, seed=1))
    transform = jdata.build_transform(VIT_CONFIG, training=True, scale=(0.5, 1.0), hflip=0.5)
    return joint.with_transform(jdata.make_batch_transform(transform, in_chans=1))


# ----------------------------------------------------------------------------------- the settings
def test_each_family_has_its_default_layers():
    names = {arch: [n for n, m in timm.create_model(arch, num_classes=0).named_modules()
                    if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
             for arch in ("test_vit", "test_convnext", "test_resnet")}  # fmt: skip
    for arch, family, expected in (("test_vit", "VisionTransformer", {"qkv", "proj", "fc1", "fc2"}),
                                   ("test_convnext", "ConvNeXt", {"fc1", "fc2"}),
                                   ("test_resnet", "ResNet", {"conv1", "conv2", "conv3"})):  # fmt: skip
        backbone = timm.create_model(arch, num_classes=0)
        settings = lora_settings(2, None, 0.0, None, backbone, arch)
        assert settings.targets == DEFAULT_TARGETS[family] == default_targets(backbone)
        assert settings.alpha == 4.0  # 2 x rank
        chosen = [n for n in names[arch] if re.fullmatch(settings.targets, n)]
        assert chosen and {n.rsplit(".", 1)[-1] for n in chosen} == expected, arch
    # the ViT's patch embedding (a Conv2d named proj) and a ResNet's stem and shortcuts are left alone
    assert "patch_embed.proj" in names["test_vit"] and not re.fullmatch(LORA.targets, "patch_embed.proj")
    assert lora_settings(None, None, 0.0, None, timm.create_model("test_vit"), "test_vit") is None


def test_given_layers_are_names_or_suffixes_as_peft_reads_them():
    backbone = timm.create_model("test_vit", num_classes=0)
    settings = lora_settings(3, 1.5, 0.1, ["qkv", "blocks.0.mlp.fc2"], backbone, "test_vit")
    assert settings == LoraSettings(3, 1.5, 0.1, ("qkv", "blocks.0.mlp.fc2"))
    wrapped = get_peft_model(copy.deepcopy(backbone), settings.config())
    adapted = sorted({n.rsplit(".lora_A", 1)[0].removeprefix("base_model.model.")
                      for n, _ in wrapped.named_parameters() if ".lora_A." in n})  # fmt: skip
    blocks = len(backbone.blocks)
    assert blocks > 1 and adapted == sorted([f"blocks.{i}.attn.qkv" for i in range(blocks)] + ["blocks.0.mlp.fc2"])


# --------------------------------------------------------------------------------- what trains
def test_only_the_adapters_and_the_heads_train(train_32, tmp_path):
    model = _vit()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trained} == {"backbone", "source_head", "target_head"}
    assert all(".lora_" in n for n in trained if n.startswith("backbone."))
    assert all(".lora_" not in n for n in frozen) and len(frozen) > len(trained)
    trainable, total = trainable_share(model)
    assert trainable == sum(p.numel() for p in trained.values()) and total == trainable + sum(
        p.numel() for p in frozen.values())  # fmt: skip
    make_trainer(model, train_32, tmp_path, per_device_train_batch_size=8, max_steps=3, ot_loss_weight=0.5).train()
    after = dict(model.named_parameters())
    for name, before in frozen.items():  # exact: nothing wrote to them (no gradient, not in the optimizer)
        assert torch.equal(after[name], before), name
    for name, before in trained.items():  # every adapter B (zero at the start) and every head moved
        if ".lora_B." in name or "_head." in name:
            assert not torch.equal(after[name], before), name


def test_the_merged_model_has_the_plain_models_weights_and_the_adapted_layers_sum(train_32, tmp_path):
    model = _vit()
    make_trainer(model, train_32, tmp_path, per_device_train_batch_size=8, max_steps=2, ot_loss_weight=0.5).train()
    merged = merged_model(model)
    plain = _vit(lora=None)
    assert not has_lora(merged) and has_lora(model) and merged_model(plain) is plain
    assert list(merged.state_dict()) == list(plain.state_dict())  # every load path of a plain model applies
    state = dict(model.named_parameters())
    u = torch.finfo(torch.float32).eps / 2
    for name, weight in merged.state_dict().items():
        base = f"backbone.base_model.model.{name.removeprefix('backbone.')}"
        layer = base.rsplit(".", 1)[0]
        if f"{layer}.lora_A.default.weight" not in state:  # not adapted: the very tensor
            key = base if base in state else name if name in state else None
            if key is not None:
                assert torch.equal(weight, state[key]), name
            continue
        if not name.endswith(".weight"):  # exact: PEFT's merge adds B A to the weight and leaves the bias as it is
            assert torch.equal(weight, state[f"{layer}.base_layer.bias"]), name
            continue
        w = state[f"{layer}.base_layer.weight"].double()
        a, b = state[f"{layer}.lora_A.default.weight"].double(), state[f"{layer}.lora_B.default.weight"].double()
        scale = LORA.alpha / LORA.rank  # 2: a power of two, exact
        exact = w + scale * (b @ a)
        # PEFT merges in float32: B @ A (r products summed: gamma(r) |B||A|), times the scale (exact), plus W (one
        # rounding of the sum): |merged - exact| <= gamma(r) scale |B||A| + u |W + scale B A| (first order)
        r = LORA.rank
        bound = (r * u / (1 - r * u)) * scale * (b.abs() @ a.abs()) + u * exact.abs() * (1 + 2 * u)
        assert ((weight.double() - exact).abs() <= bound).all(), name


def test_gradient_checkpointing_through_trainers_flag_trains_the_same_weights(train_32, tmp_path):
    """Exact: the recomputation in the backward runs the same kernels on the same shapes in this process, so
    the activations it rebuilds are the ones it dropped, and the gradients are the same."""
    runs = {}
    for checkpointing in (False, True):
        model = _vit()
        trainer = make_trainer(model, train_32, tmp_path / str(checkpointing), per_device_train_batch_size=8,
                               max_steps=2, ot_loss_weight=0.5, **{CHECKPOINTING: checkpointing})  # fmt: skip
        trainer.train()
        assert model.backbone.grad_checkpointing is checkpointing  # timm's own flag, set through the model
        runs[checkpointing] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for name, weight in runs[False].items():
        assert torch.equal(runs[True][name], weight), name


def test_resume_with_adapters_is_bit_exact(train_32, tmp_path):
    """As test_resume's in-process test: stopped at a checkpoint, resumed in a fresh model, bit for bit."""
    args = dict(per_device_train_batch_size=8, max_steps=6, save_strategy="steps", save_steps=3, logging_steps=1,
                ot_loss_weight=0.5)  # fmt: skip
    full = make_trainer(_vit(), train_32, tmp_path / "full", **args)
    full.train()
    killed = make_trainer(_vit(), train_32, tmp_path / "killed", **args)
    killed.add_callback(_StopAt(3))
    killed.train()
    resumed = make_trainer(_vit(seed=7), train_32, tmp_path / "killed", **args)  # other initial weights
    resumed.train(resume_from_checkpoint=latest_complete_checkpoint(tmp_path / "killed"))
    assert resumed.state.global_step == 6
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------- the recipe's model folder
@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    """The recipe on the embedded default with a ViT from scratch and LoRA: --image_size 32 --lora_rank 4."""
    out = tmp_path_factory.mktemp("lora") / "run"
    argv = ["--mode", "jtln", "--backbone", "test_vit", "--image_size", "32", "--lora_rank", "4", "--seeds", "0",
            "--shots", "2", "--max_steps", "3", "--max_eval_samples", "40", "--per_device_train_batch_size", "8",
            "--dataloader_num_workers", "0", "--output_dir", str(out)]  # fmt: skip
    assert recipe.main(argv) == 0
    return out


def test_the_recipe_saves_the_merged_model_and_the_adapters(vit_run):
    folder = vit_run / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["data_config"]["input_size"] == [1, 32, 32]  # --image_size honoured on Fashion-MNIST
    assert config["backbone_kwargs"] == {"in_chans": 1, "img_size": 32}
    weights = load_file(str(folder / "model.safetensors"))
    assert not [k for k in weights if "lora_" in k or "base_layer" in k or "base_model" in k]
    assert sorted(p.name for p in (folder / ADAPTER_FOLDER).iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", HEADS_FILE]  # fmt: skip
    adapter_config = json.loads((folder / ADAPTER_FOLDER / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8
    assert adapter_config["base_model_name_or_path"] == "test_vit"
    card = (folder / "README.md").read_text()
    assert "| LoRA adapters | rank 4, alpha 8, dropout 0, on `blocks" in card and "alone in `adapter/`" in card
    meta = json.loads((vit_run / "results.json").read_text())["lora"]
    assert meta == {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": DEFAULT_TARGETS["VisionTransformer"]}

    # reloaded, the merged model computes what the saved one does: a tensor saved and reloaded, the same calls
    model = JointImageClassifier.from_pretrained(folder)
    again = JointImageClassifier.from_pretrained(folder)
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x).logits, again(x).logits)
    assert model(x).logits.shape == (3, 5)


def test_the_adapters_on_the_same_base_backbone_give_the_saved_model(vit_run):
    """The run trained from scratch, so its base backbone is this seed's initial one, built again here as the run
    built it. PEFT reads the adapter folder onto it; merged here (the same calls on the same tensors as the run's
    merge, in this process), with the heads and C of heads.safetensors, it is the saved model, bit for bit: the
    adapters give the saved model's features, and training left the base weights as they were built."""
    folder = vit_run / "model"
    config = JointImageClassifier.config_class.from_pretrained(folder)
    set_seed(0)  # build_model's seeding, without its adapters (PEFT brings them from the folder)
    base = JointImageClassifier(config)
    backbone = PeftModel.from_pretrained(base.backbone, str(folder / ADAPTER_FOLDER))
    assert backbone.peft_config["default"].r == 4
    heads = load_file(str(folder / ADAPTER_FOLDER / HEADS_FILE))
    saved = load_file(str(folder / "model.safetensors"))
    for key in ("source_head.weight", "source_head.bias", "target_head.weight", "target_head.bias", "cost_matrix"):
        assert torch.equal(heads[key], saved[key]), key
    merged = backbone.merge_and_unload()  # the same weights, hence the same features as the saved model's
    for name, tensor in merged.state_dict().items():
        assert torch.equal(tensor, saved[f"backbone.{name}"]), name


def test_the_timm_export_holds_the_merged_weights(vit_run):
    """The plain timm copy (model/timm) is the merged backbone with the target head as timm's classifier: its
    weights are the saved model's (tensors copied and reloaded; the 1-channel stem as RGB with PIL's luma)."""
    folder = vit_run / "model"
    export = timm.create_model(f"local-dir:{folder / 'timm'}", pretrained=True)
    saved = load_file(str(folder / "model.safetensors"))
    state = export.state_dict()
    assert torch.equal(state["head.weight"], saved["target_head.weight"])
    for name, tensor in state.items():
        if name.startswith("head.") or name == "patch_embed.proj.weight":
            continue
        assert torch.equal(tensor, saved[f"backbone.{name}"]), name
    luma = torch.tensor((19595 / 65536, 38470 / 65536, 7471 / 65536)).view(1, 3, 1, 1)
    assert torch.equal(state["patch_embed.proj.weight"], saved["backbone.patch_embed.proj.weight"] * luma)
    assert np.isfinite(export(torch.zeros(1, 3, 32, 32)).detach().numpy()).all()


def test_a_push_uploads_the_adapters_with_the_merged_model(vit_run, monkeypatch):
    """The recipe's push of model/ (its timm/ export left for its own repository), the Hub calls replaced."""
    from huggingface_hub import constants

    from jtln_hf.sharing.hub import push_model_folder
    from test_recipe_hub import _fake_hub

    calls: list = []
    _fake_hub(monkeypatch, calls)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the Hub calls are replaced: nothing goes out
    push_model_folder(vit_run / "model", "your-name/vit-lora", token="hf_fake_token_for_tests", exclude=["timm/*"])
    files = calls[-1][2]
    folder = vit_run / "model" / ADAPTER_FOLDER
    for name in ("adapter_config.json", "adapter_model.safetensors", HEADS_FILE, "README.md"):
        assert files[f"{ADAPTER_FOLDER}/{name}"] == (folder / name).read_bytes(), name
    assert "model.safetensors" in files and not [f for f in files if f.startswith("timm/")]
