"""The timm export of the target network (``JointImageClassifier.save_timm``), loaded without jtln_hf.

The loading test runs in a fresh Python process in which ``import jtln_hf`` raises ImportError (the
meta-path blocker of tests/test_hub.py, through ``sitecustomize``), with no ``trust_remote_code``:
``timm.create_model("local-dir:...")``, ``TimmWrapperForImageClassification.from_pretrained`` and
``pipeline("image-classification")`` must all work from timm's ``config.json`` alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_model
from test_hub import WITHOUT_JTLN_HF_HEAD, hidden_jtln_hf
from PIL import Image
from safetensors.torch import load_file
from tolerances import (forward_error_bound, gamma, jtln_logit_bounds, softmax_atol, softmax_shift, stable_argmax,
                        unit_roundoff)

from jtln_hf import JointImageClassifierImageProcessor
from jtln_hf.modeling_jtln import LUMA_RGB, TimmExportError


def _heads(model):
    with torch.no_grad():  # non-trivial heads
        model.target_head.weight.normal_(0, 0.5)
        model.target_head.bias.normal_(0, 0.1)
        model.source_head.weight.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny grayscale JTLN model and its timm export."""
    folder = tmp_path_factory.mktemp("timm") / "timm"
    model = _heads(make_model(num_target=4, num_source=3, seed=1))
    model.save_timm(folder)
    return model, folder


def _gray_images(fashion_mnist) -> list[Image.Image]:
    """Fashion-MNIST test images (28x28 "L"), one resized to another shape (the transform then resizes)."""
    test = fashion_mnist[1]
    images = [test[i]["image"] for i in range(6)]
    return images + [images[0].resize((37, 53), Image.BILINEAR)]


def _colour_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8), "RGB") for _ in range(3)]


def logit_tolerance(model, pixels: torch.Tensor) -> torch.Tensor:
    """Float32 bound, entry by entry, on |timm export - JTLN| target logits on ``pixels`` (the JTLN model's input),
    derived from the computation (tests/tolerances.py: forward_error_bound), not tuned.

    Each network's float32 logits are within its forward-error bound of the exact JTLN logits, on any CPU,
    whatever kernels or summation order ran (this process or the subprocess): the JTLN model's bound, and the
    export's on R = G = B = the pixels. For a grayscale model the export's first convolution sums 3 luma-weighted
    channels, ``fl(w k_c)`` with ``sum k_c = 1``: exactly the JTLN kernel up to one rounding of each weight,
    ``|θ| <= u`` (``weight_rtol``). The two differ by at most the sum of the two bounds.
    """
    export = model.to_timm()
    if pixels.shape[1] == 1:
        first = export.pretrained_cfg["first_conv"]
        rgb = pixels.expand(-1, 3, -1, -1).contiguous()  # R = G = B, as the pipeline's pixels of a gray image
        _, timm_bound = forward_error_bound(export, rgb, weight_rtol={first: unit_roundoff(torch.float32)})
    else:
        _, timm_bound = forward_error_bound(export, pixels)  # the 3-channel weights are copied as they are
    _, jtln_bound = jtln_logit_bounds(model, pixels)["logits"]
    return (jtln_bound + timm_bound).float()


# ------------------------------------------------------------------------------------ the folder
def test_folder_is_a_timm_model_with_the_target_head_and_preprocessing(exported):
    model, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 4
    assert config["label_names"] == [model.config.id2label[i] for i in range(4)]
    assert config["model_args"] == {"in_chans": 3, "global_pool": "avg"}  # no num_classes: TimmWrapper passes its own
    cfg = config["pretrained_cfg"]
    data = model.config.data_config
    assert cfg["input_size"] == [3, *data["input_size"][1:]]
    assert cfg["mean"] == data["mean"] * 3 and cfg["std"] == data["std"] * 3
    assert (cfg["interpolation"], cfg["crop_pct"], cfg["crop_mode"]) == (data["interpolation"], data["crop_pct"],
                                                                         data["crop_mode"])  # fmt: skip
    assert cfg["classifier"] == "fc" and cfg["first_conv"] == "conv1.0" and "tag" not in cfg
    weights = load_file(folder / "model.safetensors")
    # exact: tensors saved and read back; the first kernel is the same float32 product w * k_c made here again
    torch.testing.assert_close(weights["fc.weight"], model.target_head.weight, rtol=0, atol=0)
    torch.testing.assert_close(weights["fc.bias"], model.target_head.bias, rtol=0, atol=0)
    luma = torch.tensor(LUMA_RGB).view(1, 3, 1, 1)
    torch.testing.assert_close(weights["conv1.0.weight"], model.backbone.conv1[0].weight * luma, rtol=0, atol=0)
    assert not any(k.startswith(("source_head", "cost_matrix")) for k in weights)  # they stay in the JTLN repo
    assert sum(LUMA_RGB) == 1.0 and all(v * 2**16 == int(v * 2**16) for v in LUMA_RGB)  # exact in float32


def test_three_channel_model_exports_as_is(tmp_path):
    model = _heads(make_model(num_target=3, seed=2, backbone_kwargs={"in_chans": 3},
                              data_config={"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.5, 0.4, 0.3],
                                           "std": [0.2, 0.25, 0.3], "crop_pct": 0.875, "crop_mode": "center"}))  # fmt: skip
    export = model.to_timm()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference, logits = model(x).logits, export(x)
    assert ((logits - reference).abs() <= logit_tolerance(model, x)).all()
    model.save_timm(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())["pretrained_cfg"]
    assert cfg["mean"] == [0.5, 0.4, 0.3] and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"


# ---------------------------------------------------------------- loaded where jtln_hf is missing
_WITHOUT_JTLN_HF = WITHOUT_JTLN_HF_HEAD + r'''
import numpy as np, timm, torch
from PIL import Image
from transformers import TimmWrapperForImageClassification, pipeline

folder, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
images = [Image.open(f"{out}/image{i}.png") for i in range(n)]
classifier = pipeline("image-classification", model=folder)
pixels = torch.cat([classifier.preprocess(image)["pixel_values"] for image in images])  # the pipeline's own path
timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
wrapper = TimmWrapperForImageClassification.from_pretrained(folder).eval()
with torch.no_grad():
    np.save(f"{out}/pixels.npy", pixels.numpy())
    np.save(f"{out}/timm.npy", timm_model(pixels).numpy())
    np.save(f"{out}/wrapper.npy", wrapper(pixel_values=pixels).logits.numpy())
print(json.dumps({
    "blocked": blocked, "jtln_hf_loaded": any(m.split(".")[0] == "jtln_hf" for m in sys.modules),
    "remote_code": [m for m in sys.modules if m.startswith("transformers_modules")],
    "classes": [type(timm_model).__module__, type(wrapper).__name__, type(classifier.model).__name__,
                type(classifier.image_processor).__name__],
    "labels": wrapper.config.id2label,
    "pipeline": [classifier(image, top_k=10) for image in images],
}))
'''


def test_loads_without_jtln_hf_and_gives_the_target_logits(exported, fashion_mnist, tmp_path):
    """timm, TimmWrapper and the pipeline, in a process without jtln_hf: same pixels, same logits.

    Gray images: the pipeline's pixels equal the JTLN processor's in each of R, G, B exactly, and the
    logits agree within :func:`logit_tolerance`. Colour images: the pipeline keeps R, G, B where JTLN
    converts to "L" (PIL's luma, rounded to uint8), so the luma-weighted sum of the pipeline's
    pixels is JTLN's pixel up to that rounding: at most 0.5/255 before normalisation, 0.5/(255 std)
    after (no resize at 28x28), plus float32 rounding.
    """
    model, folder = exported
    hidden, out = hidden_jtln_hf(tmp_path)
    gray, colour = _gray_images(fashion_mnist), _colour_images()
    images = gray + colour
    for i, image in enumerate(images):
        image.save(out / f"image{i}.png")
    env = {**os.environ, "PYTHONPATH": str(hidden), "HF_HOME": str(tmp_path / "hf_home"),
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_JTLN_HF, str(folder), str(out), str(len(images))],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "hidden by the test" in info["blocked"] and not info["jtln_hf_loaded"] and info["remote_code"] == []
    assert info["classes"] == ["timm.models.resnet", "TimmWrapperForImageClassification",
                               "TimmWrapperForImageClassification", "TimmWrapperImageProcessor"]  # fmt: skip
    assert info["labels"] == {str(i): model.config.id2label[i] for i in range(4)}

    processor = JointImageClassifierImageProcessor.from_model_config(model.config)
    reloaded = [Image.open(out / f"image{i}.png") for i in range(len(images))]
    reference_pixels = processor(reloaded)["pixel_values"]  # (N, 1, 28, 28)
    pixels = torch.from_numpy(np.load(out / "pixels.npy"))  # (N, 3, 28, 28)
    n_gray = len(gray)
    # exact on any CPU: both are timm's eval transform on the same PIL image (PIL's integer resize, then
    # x / 255, - mean, / std: element-wise, each one correctly rounded IEEE operation, no sum)
    for c in range(3):
        torch.testing.assert_close(pixels[:n_gray, c], reference_pixels[:n_gray, 0], rtol=0, atol=0)
    luma = torch.tensor(LUMA_RGB).view(1, 3, 1, 1)
    mean, std = model.config.data_config["mean"][0], model.config.data_config["std"][0]
    colour_gap = ((pixels[n_gray:] * luma).sum(1) - reference_pixels[n_gray:, 0]).abs().max()
    # float32 rounding: a pixel (x / 255 - mean) / std is 3 roundings, off by at most gamma(3) A (A below); the
    # luma-weighted sum (3 products, 2 sums, weights summing to 1) carries its pixels' errors and adds gamma(3) P,
    # P the largest |pixel|; JTLN's pixel adds its own gamma(3) A
    g3 = gamma(3, torch.float32)
    big, top = (1 + max(mean, 1 - mean)) / std, max(mean, 1 - mean) / std  # A and P
    assert colour_gap <= 0.5 / 255 / std + g3 * (2 * big + top) * (1 + g3), colour_gap

    with torch.no_grad():
        reference = model(reference_pixels[:n_gray]).logits
    tolerance = logit_tolerance(model, reference_pixels[:n_gray])  # (n_gray, 4), entry by entry
    for name in ("timm", "wrapper"):
        logits = torch.from_numpy(np.load(out / f"{name}.npy"))[:n_gray]
        assert ((logits - reference).abs() <= tolerance).all(), name
    # the pipeline's scores: the softmax (float32, its own or numpy's) of logits within `tolerance` of these,
    # so within softmax_shift of the row's largest gap plus both softmaxes' rounding; its top label is this
    # argmax wherever no perturbation within `tolerance` can change it
    probs = reference.softmax(-1)
    stable = stable_argmax(reference, tolerance)
    assert stable.any()  # else the labels below would check nothing
    z = float(reference.abs().max() + tolerance.max())
    for answer, p, gap, sure in zip(info["pipeline"][:n_gray], probs, tolerance, stable):
        got = {a["label"]: a["score"] for a in answer}
        if sure:
            assert answer[0]["label"] == model.config.id2label[int(p.argmax())]
        atol = softmax_shift(float(gap.max())) + 2 * softmax_atol(torch.float32, 4, z)
        np.testing.assert_allclose([got[model.config.id2label[i]] for i in range(4)], p.numpy(), rtol=0, atol=atol)


# ------------------------------------------------------------------------- what cannot be mapped
@pytest.mark.parametrize("overrides,reason", [
    ({"backbone": "dla46_c"}, r"classifier for it \(fc\) is Conv2d, not one nn.Linear"),
    ({"backbone": "deit_tiny_distilled_patch16_224", "backbone_kwargs": {"in_chans": 1, "img_size": 32}},
     r"classifier for it \(\('head', 'head_dist'\)\) is two classifiers"),
    ({"backbone_kwargs": {"in_chans": 4}, "data_config": {"input_size": [4, 28, 28], "mean": [0.5] * 4,
                                                            "std": [0.5] * 4}},
     r"its input has 4 channels"),
])  # fmt: skip
def test_unmappable_backbones_get_a_one_line_error(overrides, reason):
    model = make_model(num_target=2, seed=0, **overrides)
    with pytest.raises(TimmExportError, match=reason) as info:
        model.to_timm()
    message = str(info.value)
    assert message.startswith(f"cannot export backbone '{model.config.backbone}' to timm:") and "\n" not in message


def test_recipe_refuses_an_unmappable_backbone_before_training(tmp_path, capsys):
    from test_recipe_hub import _load_recipe

    out = tmp_path / "run"
    argv = ["--mode", "finetune", "--seeds", "0", "--shots", "2", "--max_steps", "2", "--max_eval_samples", "20",
            "--backbone", "dla46_c", "--output_dir", str(out)]  # fmt: skip
    assert _load_recipe().main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot export backbone 'dla46_c' to timm:") and "\n" not in err
    assert err.endswith("Pass --save_timm false to train without the timm export.")
    assert not (out / "model").exists()
