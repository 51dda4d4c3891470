"""Two datasets: pools, carved test/validation splits, input read from the data, mixed image modes."""

from __future__ import annotations

import dataclasses

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_args, write_digits_folder
from jtln_hf import JointImageClassifier
from jtln_hf import data as jdata
from jtln_hf.experiment.arguments import DataArguments, JTLNArguments, ModelArguments
from jtln_hf.data import load_pools, prepare_data
from jtln_hf.experiment import build_config, plan_experiment
from jtln_hf.methods import run_method
from jtln_hf.training.trainer import JTLNTrainer


def _paths(ds: datasets.Dataset) -> set[str]:
    return {v["path"] for v in ds.cast_column("image", datasets.Image(decode=False))["image"]}


def _per_class(ds: datasets.Dataset) -> np.ndarray:
    return np.bincount(ds["label"], minlength=ds.features["label"].num_classes)


def test_two_datasets_keep_their_own_classes(digits_folder):
    data_args = DataArguments(source_dataset="fashion-mnist", target_dataset=str(digits_folder), shots=3)
    pools = load_pools(data_args.spec())
    exp = prepare_data(data_args.spec(), seed=0, pools=pools)
    assert exp.source_names == list(jdata.FASHION_MNIST_LABELS) and len(exp.source) == 60_000
    assert exp.target_names == [str(d) for d in range(10)]
    assert len(exp.target) == 30 and list(_per_class(exp.target)) == [3] * 10
    assert len(exp.target_test) == 540  # the folder's test split (30% of 1,797)
    assert not _paths(exp.target) & _paths(exp.target_test)
    # the shots change with the seed, the test set does not
    other = prepare_data(data_args.spec(), seed=1, pools=pools)
    assert _paths(other.target) != _paths(exp.target) and _paths(other.target_test) == _paths(exp.target_test)


def test_class_subsets_on_both_sides(digits_folder):
    data_args = DataArguments(source_dataset="fashion-mnist", target_dataset=str(digits_folder), shots=2,
                              source_classes=["Trouser", "Bag"], target_classes=["7", "1"])  # fmt: skip
    exp = prepare_data(data_args.spec(), seed=0)
    assert exp.source_names == ["Trouser", "Bag"] and exp.target_names == ["7", "1"]
    assert set(exp.target_test["label"]) == {0, 1}


def _assert_stratified(carved: np.ndarray, population: np.ndarray, fraction: float) -> None:
    """``carved`` per-class counts are a stratified ``fraction`` of ``population``'s, up to rounding.

    ``Dataset.train_test_split(test_size=f, stratify_by_column=...)`` carves n = ceil(f N) of N rows
    (N - n for the other part). Per class i (N_i rows) the other part gets floor or floor + 1 of
    (N - n) N_i / N (scikit-learn's approximate mode: floors, then the largest remainders), and
    the carved part the rest, N_i minus that; so the carved count differs from its exact share
    n N_i / N by less than one: |carved_i - n N_i / N| < 1. An unstratified draw of 450 from
    1,797 misses that for some class almost surely (each class's count has a standard deviation
    of ~5.8).
    """
    n = int(np.ceil(fraction * population.sum()))
    assert carved.sum() == n  # datasets rounds the carved share up
    share = n * population / population.sum()
    assert np.all(np.abs(carved - share) < 1), (carved, share)


def test_test_fraction_carves_a_stratified_split_disjoint_from_the_shots(tmp_path):
    root = write_digits_folder(tmp_path / "digits", layout="classes")  # a single split
    data_args = DataArguments(source_dataset="fashion-mnist", target_dataset=str(root), shots=5,
                              target_test_fraction=0.25, target_validation_fraction=0.2)  # fmt: skip
    pools = load_pools(data_args.spec())
    full = _per_class(datasets.load_dataset("imagefolder", data_dir=str(root), split="train"))
    test, validation = _per_class(pools.target_test), _per_class(pools.target_validation)
    assert full.sum() == 1797
    _assert_stratified(test, full, 0.25)  # 450 test images, stratified
    _assert_stratified(validation, full - test, 0.2)  # then the validation set, from what is left
    exp = prepare_data(data_args.spec(), seed=0, pools=pools)
    shots, test_paths, val_paths = _paths(exp.target), _paths(exp.target_test), _paths(exp.target_validation)
    assert len(shots) == 50 and not shots & test_paths and not shots & val_paths and not test_paths & val_paths
    again = load_pools(data_args.spec())  # the same carve every time: every seed is tested on the same images
    assert _paths(again.target_test) == test_paths


def test_missing_test_split_says_how_to_carve_one(tmp_path):
    root = write_digits_folder(tmp_path / "digits", layout="classes")
    with pytest.raises(ValueError, match=r"has no such split \(splits: \['train'\]\).*--target_test_fraction 0.2"):
        load_pools(DataArguments(source_dataset="fashion-mnist", target_dataset=str(root)).spec())


def test_input_comes_from_the_data_when_training_from_scratch(digits_folder):
    data_args = DataArguments(source_dataset="fashion-mnist", target_dataset=str(digits_folder), shots=5)
    exp = prepare_data(data_args.spec(), seed=0)
    config = build_config(ModelArguments(backbone="test_resnet"), data_args.spec(), exp)
    assert config.data_config["input_size"] == [1, 28, 28] and config.backbone_kwargs == {"in_chans": 1}
    mean = config.data_config["mean"][0]
    assert 0.05 < mean < 0.5  # dark backgrounds: Fashion-MNIST ~0.29, digits ~0.2


def _raw_pixels(pixel_values: torch.Tensor, data_config: dict) -> np.ndarray:
    """The 0..255 integer pixels behind normalised ``pixel_values`` (C, H, W) (every timm step on a PIL
    image -- crop, resize, flip, colour jitter -- yields integers; ToTensor divides by 255, Normalize
    subtracts the mean and divides by the std). The float32 error of (x/255 - mean)/std is a few
    units of roundoff u = 2**-24 of |result| + 1/std (< 1e-5 here), i.e. < 1e-5 * std * 255 << 0.5
    in pixel units once undone, so rounding recovers the integers exactly."""
    mean = np.asarray(data_config["mean"], dtype=np.float64)[:, None, None]
    std = np.asarray(data_config["std"], dtype=np.float64)[:, None, None]
    raw = (pixel_values.double().numpy() * std + mean) * 255
    whole = np.round(raw)
    assert np.abs(raw - whole).max() < 1e-3  # integers, up to the float32 rounding above
    return whole.astype(np.int64)


def _hand_rgb(path: str, size: int) -> np.ndarray:
    """A digit PNG as (3, size, size) RGB integers, converted with numpy: a grayscale (L) file's value
    repeated in each channel (PIL's documented L -> RGB: R = G = B = L), an RGB file as stored; then,
    if it is not at ``size`` already, resized bilinearly by PIL (what timm's Resize does to a PIL image,
    channel by channel)."""
    stored = np.asarray(Image.open(path), dtype=np.uint8)
    rgb = np.repeat(stored[..., None], 3, axis=-1) if stored.ndim == 2 else stored
    if rgb.shape[:2] != (size, size):
        rgb = np.asarray(Image.fromarray(rgb, "RGB").resize((size, size), Image.BILINEAR))
    return rgb.transpose(2, 0, 1).astype(np.int64)


@pytest.mark.parametrize("colour_side", ["target", "source"])
def test_grayscale_and_colour_images_meet_in_one_batch(tmp_path, digits_folder, colour_side, monkeypatch):
    """Grayscale source + RGB target, and the reverse: the model gets 3 channels, every training batch
    holds grayscale- and colour-origin images each converted to RGB, and the trained model reloads.

    Pixels are checked against a numpy conversion of the files: exactly under the evaluation
    transform (crop_pct 1, bilinear: the target's images are at the model's size, the source's
    resized by PIL), and under the training augmentation through what it cannot change: a
    grayscale-origin image has three equal channels (crop, flip and colour jitter act on each
    channel alike, and the luma of (g, g, g) is g), a colour-origin one does not.
    """
    colour = write_digits_folder(tmp_path / "colour", mode="RGB", size=20)
    source, target = (str(digits_folder), str(colour)) if colour_side == "target" else (str(colour), str(digits_folder))
    data_args = DataArguments(source_dataset=source, target_dataset=target, shots=2, max_eval_samples=40)
    model_args = ModelArguments(backbone="test_resnet")
    jtln_args = JTLNArguments(mode="joint", seeds=[0])
    args = make_args(tmp_path / "run", max_steps=2, per_device_train_batch_size=8)
    plan = plan_experiment(data_args, model_args, jtln_args, args)
    data_config = plan.config.data_config
    size = 20 if colour_side == "target" else 28  # the target's images' size
    assert data_config["input_size"] == [3, size, size] and plan.config.backbone_kwargs["in_chans"] == 3
    assert data_config["interpolation"] == "bilinear" and data_config["crop_pct"] == 1.0  # as _hand_rgb resizes
    colour_domain = jdata.TARGET if colour_side == "target" else jdata.SOURCE
    exp = plan.data[0]

    # evaluation transform: pixel for pixel what numpy makes of the files
    joint = jdata.build_joint_dataset(exp.source.select(range(8)), exp.target)
    transform = jdata.make_batch_transform(jdata.build_transform(data_config, training=False), 3)
    rows = [0, 1, 8, 9]  # 2 source rows, 2 target rows
    batch = jdata.collate([joint.with_transform(transform)[i] for i in rows])
    assert batch["pixel_values"].shape == (4, 3, size, size) and batch["domain"].tolist() == [0, 0, 1, 1]
    paths = [joint.select([i])[0]["image"]["path"] for i in rows]
    origins = [Image.open(p).mode for p in paths]
    assert origins == (["L", "L", "RGB", "RGB"] if colour_side == "target" else ["RGB", "RGB", "L", "L"])
    for pixels, path in zip(batch["pixel_values"], paths):
        np.testing.assert_array_equal(_raw_pixels(pixels, data_config), _hand_rgb(path, size))  # integers

    # training: record the batches the trainer really feeds the model
    seen = []
    compute_loss = JTLNTrainer.compute_loss

    def recording(self, model, inputs, *a, **kw):
        if model.training:
            seen.append((inputs["pixel_values"].detach().clone(), inputs["domain"].clone()))
        return compute_loss(self, model, inputs, *a, **kw)

    monkeypatch.setattr(JTLNTrainer, "compute_loss", recording)
    run = run_method("joint", exp, plan.config, plan.settings, args, seed=0)
    assert len(seen) == 2  # max_steps
    for pixel_values, domain in seen:
        assert pixel_values.shape == (8, 3, size, size) and set(domain.tolist()) == {0, 1}  # both origins in one batch
        for pixels, d in zip(pixel_values, domain.tolist()):
            raw = _raw_pixels(pixels, data_config)
            equal_channels = bool(np.all(raw[0] == raw[1]) and np.all(raw[1] == raw[2]))
            assert equal_channels == (d != colour_domain), f"domain {d}"

    # the trained model reloads: the same weights, the same logits on the batch above
    run.model.save_pretrained(tmp_path / "saved")
    reloaded = JointImageClassifier.from_pretrained(tmp_path / "saved").eval()
    assert reloaded.config.data_config["input_size"] == [3, size, size]
    state, again = run.model.state_dict(), reloaded.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)  # copies of the bits
    # Exact by construction: the weights are the bits read back from the file (torch.equal above), the input is
    # one tensor, and both forward passes run the same kernels in one process with one thread count on buffers
    # that torch's CPU allocator aligns alike (64 bytes), so every reduction sums in the same order.
    with torch.no_grad():
        assert torch.equal(run.model.eval()(pixel_values=batch["pixel_values"]).logits,
                           reloaded(pixel_values=batch["pixel_values"]).logits)  # fmt: skip


def test_validation_metrics_are_reported(tmp_path, digits_folder):
    data_args = DataArguments(source_dataset="fashion-mnist", target_dataset=str(digits_folder), shots=2,
                              target_validation_fraction=0.1, max_eval_samples=50)  # fmt: skip
    model_args, jtln_args = ModelArguments(backbone="test_resnet"), JTLNArguments(mode="finetune", seeds=[0])
    args = make_args(tmp_path / "run", max_steps=1)
    plan = plan_experiment(data_args, model_args, jtln_args, args)
    run = run_method("finetune", plan.data[0], plan.config, plan.settings, args, seed=0)
    assert {"accuracy", "validation_accuracy", "validation_mean_per_class_accuracy"} <= set(run.metrics)
    stage = tmp_path / "run" / "runs" / "finetune-seed0"
    assert {"train_results.json", "eval_results.json", "all_results.json", "trainer_state.json"} <= {
        p.name for p in stage.iterdir()}  # fmt: skip
    assert not (tmp_path / "run" / "runs" / "eval").exists()


def test_epochs_name_the_length(tmp_path, digits_folder):
    from jtln_hf.methods import stage_length

    assert stage_length(make_args(tmp_path, max_steps=7)) == "7 steps"
    assert stage_length(dataclasses.replace(make_args(tmp_path), max_steps=-1, num_train_epochs=2)) == "2 epochs"


@pytest.mark.parametrize("cost", ["relationship", "constant"])
def test_relationship_and_constant_costs_run(tmp_path, cost):
    data_args = DataArguments(shots=2, max_eval_samples=40)  # the embedded Fashion-MNIST split
    model_args = ModelArguments(backbone="test_resnet")
    jtln_args = JTLNArguments(mode="jtln", seeds=[0], cost=cost, cost_warmup_steps=2)
    args = make_args(tmp_path / "run", max_steps=2, per_device_train_batch_size=8)
    plan = plan_experiment(data_args, model_args, jtln_args, args)
    run = run_method("jtln", plan.data[0], plan.config, plan.settings, args, 0)
    cost_matrix = run.model.cost_matrix.numpy()
    assert cost_matrix.shape == (5, 5)
    warmed = (tmp_path / "run" / "runs" / "jtln-seed0-warmup").is_dir()
    assert run.warmup_steps == 2  # a fixed cost too: the same source-only steps first, when they are asked for
    if cost == "constant":
        assert np.all(cost_matrix == 1.0) and warmed and "control" in run.cost_description  # exact: filled
        assert "joint steps after 2 source-only warm-up steps" in run.cost_description
    else:  # column-normalised -log p(y_s | y_t), after the source-only warm-up
        assert np.allclose(cost_matrix.min(0), 0.0) and cost_matrix.max() <= 1.0 and warmed
        assert "p(y_s | y_t)" in run.cost_description and "after 2 source-only warm-up steps" in run.cost_description


def test_training_augmentation_is_salted_with_the_run_seed(small_split):
    import torch

    from jtln_hf.methods.stages import _with_transform

    config = __import__("conftest").make_config()
    rows = small_split["source"].select(range(4))
    data_args = DataArguments(train_scale=[0.3, 1.0])

    def pixels(seed):
        ds = _with_transform(jdata.build_joint_dataset(rows, None), config, True, data_args.spec(), seed)
        return torch.stack(ds[:4]["pixel_values"])

    assert torch.equal(pixels(0), pixels(0))  # a function of the batch and the seed (same calls, one process)
    assert not torch.equal(pixels(0), pixels(1))  # another seed, other crops and flips


def test_cotuning_adds_the_soft_source_term_with_the_relationship(tmp_path):
    """Co-Tuning's loss on a batch = the joint objective + λ_ct · soft CE of the source head (by hand)."""
    import torch

    from conftest import make_model, make_trainer
    from jtln_hf.training.cotuning import CoTuningTrainer

    model = make_model(num_target=2, num_source=3)
    relationship = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    pixels = torch.randn(6, 1, 28, 28)
    labels, domain = torch.tensor([0, 2, 1, 0, 1, 1]), torch.tensor([0, 0, 0, 1, 1, 1])
    inputs = {"pixel_values": pixels, "labels": labels, "domain": domain}
    plain = make_trainer(model, None, tmp_path / "a", ot_loss_weight=0.0)
    co = CoTuningTrainer(model=model, args=plain.args, relationship=relationship, cotuning_weight=2.3)
    model.eval()  # BatchNorm on running statistics ...
    model.training = True  # ... on the training path: the whole objective
    with torch.no_grad():
        joint_loss = plain.compute_loss(model, inputs)
        total = co.compute_loss(model, inputs)
        model.training = False  # evaluation: the target cross-entropy alone, for both: the same calls, exact
        assert torch.equal(co.compute_loss(model, inputs), plain.compute_loss(model, inputs))
        out = model(pixel_values=pixels)
    target = domain == 1
    log_p = torch.log_softmax(out.source_logits[target].double(), -1)
    soft = -(relationship.double()[labels[target]] * log_p).sum(-1).mean()
    assert float(total) == pytest.approx(float(joint_loss) + 2.3 * float(soft), rel=1e-5)
    with pytest.raises(ValueError, match=r"relationship has shape \(3, 3\) but the model needs \(L_t, L_s\) = \(2, 3\)"):
        CoTuningTrainer(model=model, args=plain.args, relationship=torch.ones(3, 3) / 3)


def test_cotuning_runs_as_a_method_and_states_its_steps(tmp_path):
    data_args = DataArguments(shots=2, max_eval_samples=40)
    model_args = ModelArguments(backbone="test_resnet")
    jtln_args = JTLNArguments(mode="cotuning", seeds=[0], cost_warmup_steps=2)
    args = make_args(tmp_path / "run", max_steps=2, per_device_train_batch_size=8)
    plan = plan_experiment(data_args, model_args, jtln_args, args)
    run = run_method("cotuning", plan.data[0], plan.config, plan.settings, args, 0)
    assert run.steps == "2 warm-up + 2" and "Co-Tuning" in run.cost_description
    state = (tmp_path / "run" / "runs" / "cotuning-seed0" / "trainer_state.json").read_text()
    assert '"cotuning"' in state  # the soft source term is logged beside ce_target, ce_source, ot
