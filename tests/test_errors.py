"""Bad input gets a clear error, naming the problem and the fix, before any training step.

One test per bad input; each asserts the message (what is wrong and what to do). The README's
"Errors and guarantees" section lists the same inputs and messages.
"""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from jtln_hf import JointImageClassifier
from jtln_hf import data as jdata
from jtln_hf.cost import load_cost
from jtln_hf.training.loss import JTLNLoss, LossSettings
from jtln_hf.sinkhorn import resolve_method, wasserstein_loss

from conftest import make_config, make_model, make_trainer


# ------------------------------------------------------------------------------------- helpers
def png(value: int = 128, size=(28, 28), mode: str = "L") -> bytes:
    """An encoded image (PNG; JPEG for CMYK, which PNG cannot hold)."""
    buffer = io.BytesIO()
    Image.new(mode, size, value).save(buffer, format="JPEG" if mode == "CMYK" else "PNG")
    return buffer.getvalue()


def image_dataset(images: list, labels: list[int], names=("a", "b")) -> datasets.Dataset:
    """A Hub-style dataset (``Dataset.from_dict`` with an ``Image`` feature) of encoded images."""
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} if isinstance(b, bytes) else b for b in images], "label": labels},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))}),
    )


def joint_rows(labels, domains) -> datasets.Dataset:
    image = Image.new("L", (28, 28), 0)
    return datasets.Dataset.from_dict(
        {"image": [image] * len(labels), "label": labels, "domain": domains},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.Value("int64"), "domain": datasets.Value("int64")}
        ),
    )


@pytest.fixture(scope="module")
def tiny_joint():
    """3 source + 2 target rows, transformed: enough to build a trainer."""
    ds = jdata.build_joint_dataset(image_dataset([png(v) for v in (0, 50, 100)], [0, 1, 2], ("x", "y", "z")),
                                   image_dataset([png(v) for v in (150, 200)], [0, 1]))
    transform = jdata.build_transform(jdata.FASHION_MNIST_DATA_CONFIG, training=False)
    return ds.with_transform(jdata.make_batch_transform(transform, in_chans=1))


def saved_checkpoint(tmp_path):
    model = make_model(num_target=2, num_source=3)
    model.save_pretrained(tmp_path)
    return model, tmp_path / "model.safetensors"


# ------------------------------------------------------------------------------ the cost matrix
def test_cost_of_wrong_shape_at_model_construction():
    with pytest.raises(ValueError, match=r"cost matrix has shape \(2, 3\) but the model has L_s=3 source and "
                                         r"L_t=2 target classes: build it with rows = source classes"):
        JointImageClassifier(make_config(num_target=2, num_source=3), cost_matrix=torch.rand(2, 3))


def test_cost_with_nan_at_model_construction():
    cost = torch.rand(3, 2)
    cost[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite entry at \(source 2, target 1\) = nan.*replace missing "
                                         r"pairs by a large finite cost"):
        JointImageClassifier(make_config(num_target=2), cost_matrix=cost)


def test_cost_with_inf_at_model_construction():
    cost = torch.rand(3, 2)
    cost[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite entry at \(source 0, target 0\) = inf"):
        JointImageClassifier(make_config(num_target=2), cost_matrix=cost)


def test_cost_with_negative_entry_at_model_construction():
    cost = torch.rand(3, 2)
    cost[1, 0] = -0.25
    with pytest.raises(ValueError, match=r"negative entry at \(source 1, target 0\) = -0.25: optimal-transport "
                                         r"costs must be >= 0; shift it"):
        JointImageClassifier(make_config(num_target=2), cost_matrix=cost)


def test_cost_file_with_nan(tmp_path):
    np.save(tmp_path / "c.npy", np.array([[0.0, np.nan], [1.0, 0.5]]))
    with pytest.raises(ValueError, match=r"non-finite value \(nan\) at \(row, col\) = \(0, 1\).*replace NaN/inf"):
        load_cost(tmp_path / "c.npy")


def test_cost_file_of_wrong_shape(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"cost matrix has shape \(2, 3\) but the given labels need shape \(3, 2\) "
                                         r"\(rows = source classes, columns = target classes\)"):
        load_cost(tmp_path / "c.npy", ["s1", "s2", "s3"], ["t1", "t2"])


def test_tampered_cost_in_checkpoint_fails_to_load(tmp_path):
    """A checkpoint whose cost_matrix buffer was edited to hold NaN must not load silently."""
    _, weights = saved_checkpoint(tmp_path)
    tensors = load_file(weights)
    tensors["cost_matrix"][1, 0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"cost_matrix.*non-finite entry at \(source 1, target 0\)"):
        JointImageClassifier.from_pretrained(tmp_path)


def test_checkpoint_label_maps_not_matching_cost_fail_to_load(tmp_path):
    """config.json names 3 target classes, but the weights (cost_matrix, target head) are for 2."""
    saved_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["id2label"] = {"0": "Sandal", "1": "Bag", "2": "Coat"}
    config["label2id"] = {"Sandal": 0, "Bag": 1, "Coat": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"(?s)cost_matrix.*\(3, 2\).*id2label.*3"):
        JointImageClassifier.from_pretrained(tmp_path)


def test_cost_with_nan_at_train_fails_before_the_first_step(tiny_joint, tmp_path):
    model = make_model(num_target=2)
    with torch.no_grad():
        model.cost_matrix[0, 1] = float("nan")  # e.g. a buffer edited after construction
    with pytest.raises(ValueError, match=r"non-finite|NaN or infinite"):
        make_trainer(model, tiny_joint, tmp_path, ot_loss_weight=1.0)  # at construction, not at step 1


def test_all_zero_cost_with_ot_at_train(tiny_joint, tmp_path):
    with pytest.raises(ValueError, match=r"ot_loss_weight > 0 but the model's cost_matrix is all zeros.*"
                                         r"set_cost_matrix\(C\), or train with ot_loss_weight=0"):
        make_trainer(make_model(num_target=2, cost=torch.zeros(3, 2)), tiny_joint, tmp_path, ot_loss_weight=0.5)


def test_loss_check_names_every_cost_problem():
    loss = LossSettings(ot_loss_weight=1.0, ot_epsilon=0.05, ot_method="kernel")
    with pytest.raises(ValueError, match=r"shape \(2, 3\) but the model has L_s=3 source and L_t=2 target"):
        loss.check_cost(torch.rand(2, 3), 3, 2)
    with pytest.raises(ValueError, match=r"non-finite entry at \(source 0, target 1\) = nan.*replace missing pairs"):
        loss.check_cost(torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"negative entry at \(source 0, target 1\) = -1.*shift it"):
        loss.check_cost(torch.tensor([[0.0, -1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"method='kernel' needs \(max C - min C\) / epsilon <= 50.*use "
                                         r"method='log' or 'auto'"):
        loss.check_cost(torch.tensor([[0.0, 5.0], [1.0, 0.0]]))  # 5 / 0.05 = 100 > 50
    LossSettings(ot_loss_weight=0.0).check_cost(torch.full((2, 2), float("nan")))  # no OT term: nothing to check


# ---------------------------------------------------------------------------------- OT settings
def test_kernel_solver_where_its_kernel_would_underflow():
    a, b = torch.full((1, 3), 1 / 3), torch.full((1, 2), 0.5)
    with pytest.raises(ValueError, match=r"method='kernel' needs \(max C - min C\) / epsilon <= 50 in "
                                         r"torch.float32 \(got 1000\).*underflow.*use method='log' or 'auto'"):
        wasserstein_loss(a, b, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]), epsilon=1e-3, method="kernel")
    assert resolve_method(torch.tensor([[0.0, 1.0]]), epsilon=1e-3) == "log"  # what 'auto' does instead


def test_nan_probabilities():
    a = torch.tensor([[0.5, float("nan"), 0.5]])
    with pytest.raises(ValueError, match=r"source_probs contains NaN.*logits are already NaN.*learning rate"):
        wasserstein_loss(a, torch.full((1, 2), 0.5), torch.rand(3, 2))


def test_logits_passed_instead_of_probabilities():
    with pytest.raises(ValueError, match=r"target_probs has negative entries \(min -1.5\): pass probabilities "
                                         r"\(e.g. logits.softmax\(-1\)\), not logits"):
        wasserstein_loss(torch.full((1, 3), 1 / 3), torch.tensor([[2.0, -1.5]]), torch.rand(3, 2))


@pytest.mark.parametrize("kwargs,match", [
    ({"ot_epsilon": float("nan")}, r"ot_epsilon must be > 0 and finite, got nan: e.g. 0.05 \(JTLN's default\)"),
    ({"ot_method": "sinkhorn"}, r"method must be one of \('auto', 'kernel', 'log'\), got 'sinkhorn'"),
    ({"ot_iterations": 0}, r"iterations must be an integer >= 1, got 0"),
    ({"ot_loss_weight": float("inf")}, r"ot_loss_weight must be a finite number >= 0, got inf"),
])  # fmt: skip
def test_bad_ot_settings_at_loss_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossSettings(**kwargs)
    with pytest.raises(ValueError, match=match):
        JTLNLoss(**kwargs)


# -------------------------------------------------------------------------- labels and domains
def test_source_label_outside_its_range(tmp_path):
    with pytest.raises(ValueError, match=r"source label 3 is out of range: the model has 3 source classes "
                                         r"\(ids 0..2\); labels must be in their own domain's label space"):
        make_trainer(make_model(num_target=2), joint_rows([0, 3, 1, 0], [0, 0, 1, 1]), tmp_path)


def test_target_label_outside_its_range(tmp_path):
    with pytest.raises(ValueError, match=r"target label 2 is out of range: the model has 2 target classes"):
        make_trainer(make_model(num_target=2), joint_rows([0, 1, 2, 0], [0, 0, 1, 1]), tmp_path)


def test_domain_value_other_than_0_or_1(tmp_path):
    with pytest.raises(ValueError, match=r"domain values must be 0 \(source\) or 1 \(target\), found \[2\]"):
        make_trainer(make_model(num_target=2), joint_rows([0, 1, 1, 0], [0, 2, 1, 1]), tmp_path)


# ---------------------------------------------------------------------------- classes and shots
@pytest.fixture(scope="module")
def labelled():
    return image_dataset([png(v) for v in range(0, 240, 40)], [0, 0, 1, 1, 2, 2], ("cat", "dog", "fox"))


def test_empty_class_list(labelled):
    with pytest.raises(ValueError, match="source and target class lists must both be non-empty"):
        jdata.split_by_classes(labelled, ["cat"], [])


def test_overlapping_class_lists(labelled):
    with pytest.raises(ValueError, match=r"classes \['dog'\] are in both the source and the target list: "
                                         r"JTLN's source and target label sets are disjoint"):
        jdata.split_by_classes(labelled, ["cat", "dog"], ["dog", "fox"])


def test_unknown_class_name(labelled):
    with pytest.raises(ValueError, match=r"unknown class 'cow': valid names are \['cat', 'dog', 'fox'\]"):
        jdata.split_by_classes(labelled, ["cat"], ["cow"])


def test_class_index_out_of_range(labelled):
    with pytest.raises(ValueError, match=r"class index 7 is out of range: the dataset has 3 classes"):
        jdata.split_by_classes(labelled, [0], [7])


def test_more_shots_than_images(labelled):
    with pytest.raises(ValueError, match=r"class 'cat' has 2 images but 3 shots were asked: lower --shots"):
        jdata.sample_shots(labelled, 3)


def test_zero_shots(labelled):
    with pytest.raises(ValueError, match=r"shots must be an integer >= 1, got 0"):
        jdata.sample_shots(labelled, 0)


# ----------------------------------------------------------------------------- backbone, columns
def test_unknown_timm_architecture():
    with pytest.raises(ValueError, match=r"unknown timm architecture 'resnet_typo': pick a name from "
                                         r"timm.list_models\(\)"):
        JointImageClassifier(make_config(backbone="resnet_typo"))


def test_channel_count_without_an_image_mode():
    with pytest.raises(ValueError, match=r"in_chans=2 has no PIL image mode: use 1 \(grayscale\), 3 \(RGB\) "
                                         r"or 4 \(RGBA\)"):
        jdata.make_batch_transform(lambda image: image, in_chans=2)


def test_hub_dataset_missing_the_image_column():
    ds = datasets.Dataset.from_dict({"picture": [png()], "label": [0]})
    with pytest.raises(ValueError, match=r"dataset has no column 'image' \(columns: \['picture', 'label'\]\): "
                                         r"pass the right name with --image_column / --label_column"):
        jdata.standardize_columns(ds)


def test_hub_dataset_missing_the_label_column():
    ds = image_dataset([png()], [0]).rename_column("label", "category")
    with pytest.raises(ValueError, match=r"dataset has no column 'label' \(columns: \['image', 'category'\]\)"):
        jdata.standardize_columns(ds)


def test_training_set_missing_a_column():
    ds = image_dataset([png()], [0]).rename_column("image", "img")
    with pytest.raises(ValueError, match=r"the target dataset has no 'image' column \(columns: \['img', 'label'\]\)"
                                         r".*standardize_columns"):
        jdata.build_joint_dataset(None, ds)


# -------------------------------------------------------------------------------------- images
def test_unreadable_image_named_before_training():
    target = image_dataset([png(), png(), b"this is not an image", png()], [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"the target dataset has 1 image\(s\) that cannot be read \(row 2: "
                                         r"UnidentifiedImageError.*\): remove or replace them"):
        jdata.build_joint_dataset(None, target)


def test_truncated_image_in_a_large_set_named_by_the_transform(monkeypatch):
    """Sets too large for a full decode pass get a header check; data truncated after a valid
    header is then caught when the batch is decoded, and the error names the row."""
    monkeypatch.setattr(jdata.checks, "FULL_DECODE_MAX_ROWS", 0)  # where check_images reads it
    good = png(7, size=(64, 64))
    source = image_dataset([good, good, good[: len(good) // 2], good], [0, 1, 0, 1])
    joint = jdata.build_joint_dataset(source, None)  # the header check passes
    transform = jdata.build_transform(jdata.FASHION_MNIST_DATA_CONFIG, training=False)
    joint = joint.with_transform(jdata.make_batch_transform(transform, in_chans=1))
    assert joint[:2]["pixel_values"][0].shape == (1, 28, 28)
    with pytest.raises(ValueError, match=r"cannot decode the image of source row 2: OSError: image file is "
                                         r"truncated.*Remove or replace that row"):
        joint[1:4]


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "I;16", "CMYK"])
def test_any_image_mode_is_converted_to_the_backbone_channels(mode, in_chans):
    """Grayscale into an RGB backbone and colour into a grayscale one: converted, the model runs."""
    data_config = {**jdata.FASHION_MNIST_DATA_CONFIG, "input_size": [in_chans, 28, 28],
                   "mean": [0.5] * in_chans, "std": [0.5] * in_chans}
    model = make_model(num_target=2, backbone_kwargs={"in_chans": in_chans}, data_config=data_config)
    images = [{"bytes": png(90, size=(32, 30), mode=mode), "path": None}] * 2
    ds = image_dataset(images, [0, 1])
    joint = jdata.build_joint_dataset(None, ds).with_transform(
        jdata.make_batch_transform(jdata.build_transform(data_config, training=True), in_chans=in_chans))
    batch = jdata.collate([joint[0], joint[1]])
    assert batch["pixel_values"].shape == (2, in_chans, 28, 28)
    assert torch.isfinite(model(pixel_values=batch["pixel_values"]).logits).all()


@pytest.mark.parametrize("bad,message", [
    (torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, 1.0]]), r"non-finite entry at \(source 1, target 0\) = nan"),
    (torch.tensor([[0.0, 1.0], [0.5, 0.0], [1.0, -2.0]]), r"negative entry at \(source 2, target 1\) = -2"),
])
def test_every_consumer_of_a_cost_gives_the_one_check_message(bad, message):
    """Model, cost helpers, loss and solver all run configuration_jtln.check_cost_matrix: one message."""
    from jtln_hf.configuration_jtln import check_cost_matrix
    from jtln_hf.cost import validate_cost

    model = make_model(num_target=2)  # L_s = 3, L_t = 2
    a, b = torch.full((1, 3), 1 / 3), torch.full((1, 2), 0.5)
    consumers = {
        "check_cost_matrix": lambda: check_cost_matrix(bad, 3, 2),
        "set_cost_matrix": lambda: model.set_cost_matrix(bad),
        "validate_cost": lambda: validate_cost(bad.numpy(), 3, 2),
        "LossSettings.check_cost": lambda: LossSettings(ot_loss_weight=1.0).check_cost(bad, 3, 2),
        "wasserstein_loss": lambda: wasserstein_loss(a, b, bad),
    }
    messages = {}
    for name, call in consumers.items():
        with pytest.raises(ValueError, match=message) as err:
            call()
        messages[name] = str(err.value)
    assert len(set(messages.values())) == 1, messages
