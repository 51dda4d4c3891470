"""Tests for JTLNTrainer on a tiny model and small real Fashion-MNIST sets (CPU, offline).

References: the objective by hand (``-log_softmax`` cross-entropies and POT's Sinkhorn plan, see
conftest), gradients recomputed by hand from a copy of the initial model, accuracies counted by
hand from the model's own predictions.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import make_args, make_model, make_trainer, objective_by_hand
from PIL import Image
from tolerances import cross_entropy_atol, gamma, jtln_logit_bounds, sinkhorn_value_atol, stable_argmax
from transformers import TrainingArguments

import jtln_hf
from jtln_hf import JointImageClassifier, JointImageClassifierConfig
from jtln_hf import data as jdata
from jtln_hf.cost import load_cost
from jtln_hf.training.loss import JTLNLoss
from jtln_hf.training.trainer import JTLNTrainer

# a backbone without BatchNorm (LayerNorm only): its gradients do not depend on how rows are
# split into batches, which makes "accumulated == one big batch" an exact statement
VIT = {"backbone": "test_vit", "backbone_kwargs": {"in_chans": 1, "img_size": 28, "patch_size": 4}}


def first_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


# ----------------------------------------------------------------------------- (a) compute_loss
def test_train_batches_hold_the_ratio(small_split, tmp_path):
    trainer = make_trainer(make_model(), small_split["joint"], tmp_path, per_device_train_batch_size=8,
                           source_fraction=0.25)
    loader = trainer.get_train_dataloader()
    assert len(loader) == math.ceil(180 / 2)
    for i, batch in zip(range(5), loader):
        assert batch["pixel_values"].shape == (8, 1, 28, 28)
        assert batch["domain"].tolist() == [0, 0, 1, 1, 1, 1, 1, 1]
        src, tgt = batch["labels"][:2], batch["labels"][2:]
        assert src.max() < 3 and tgt.max() < 2


@pytest.mark.parametrize("lam_s,lam_ot,tol", [(1.0, 1.0, None), (0.5, 2.0, None), (1.0, 1.0, 1e-6)])
def test_compute_loss_equals_objective_by_hand(small_split, tmp_path, lam_s, lam_ot, tol):
    model = make_model()
    trainer = make_trainer(model, small_split["joint"], tmp_path, per_device_train_batch_size=12,
                           source_loss_weight=lam_s, ot_loss_weight=lam_ot, ot_epsilon=0.05,
                           ot_iterations=1000 if tol is None else 5000, ot_tol=tol)  # fmt: skip
    assert trainer.loss_settings.ot_tol == tol
    batch = first_batch(trainer)
    assert batch["domain"].tolist() == [0] * 6 + [1] * 6
    model.eval()  # BatchNorm on running statistics: the forward below sees the same numbers ...
    model.training = True  # ... while compute_loss takes its training path (the whole objective)
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    with torch.no_grad():
        ref_out = model(batch["pixel_values"])
    torch.testing.assert_close(outputs.logits, ref_out.logits)
    total, ce_t, ce_s, ot_value = objective_by_hand(
        ref_out.logits, ref_out.source_logits, batch["labels"], batch["domain"], model.cost_matrix, lam_s, lam_ot, 0.05
    )
    assert loss.item() == pytest.approx(total, rel=1e-4)
    assert ot_value > 0 and ce_s > 0 and ce_t > 0
    parts = JTLNLoss(trainer.loss_settings)(ref_out.logits, ref_out.source_logits, batch["labels"], batch["domain"],
                                            model.cost_matrix)  # fmt: skip
    for name, by_hand in (("ce_target", ce_t), ("ce_source", ce_s), ("ot", ot_value)):  # each part, by hand
        assert parts[name].item() == pytest.approx(by_hand, rel=1e-4), name


def test_training_selects_rows_from_the_sampler_composition(small_split, tmp_path, monkeypatch):
    """In training the rows come from the sampler's n_source (no host sync); the loss is the objective by hand."""
    model = make_model()
    trainer = make_trainer(model, small_split["joint"], tmp_path, per_device_train_batch_size=8, source_fraction=0.25,
                           ot_iterations=1000)
    batch = first_batch(trainer)
    assert trainer._train_composition == (8, 2)
    assert batch["domain"].tolist() == [0, 0, 1, 1, 1, 1, 1, 1]  # the sampler's documented order: source rows first
    seen = {}
    real = jtln_hf.training.trainer.jtln_loss

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(jtln_hf.training.trainer, "jtln_loss", spy)
    model.eval()  # BatchNorm on running statistics, so both losses see the same logits ...
    model.training = True  # ... while compute_loss takes its training path
    loss = trainer.compute_loss(model, batch)
    assert seen["source_rows"].tolist() == [0, 1] and seen["target_rows"].tolist() == [2, 3, 4, 5, 6, 7]
    with torch.no_grad():
        out = model(batch["pixel_values"])
    total, *_ = objective_by_hand(out.logits, out.source_logits, batch["labels"], batch["domain"], model.cost_matrix,
                                  1.0, 1.0, 0.05)
    assert loss.item() == pytest.approx(total, rel=1e-4)
    wrong = dict(batch, domain=torch.ones_like(batch["domain"]), labels=batch["labels"] % 5)  # 8 target rows
    with pytest.raises(ValueError, match=r"2 row\(s\) given as source_rows/target_rows belong to the other domain"):
        trainer.compute_loss(model, wrong)


def test_compute_loss_without_domain_counts_rows_as_target(small_split, tmp_path):
    """Rows without ``domain`` are target rows; in training the loss is the objective, in evaluation
    (model in eval mode, as Trainer's evaluation loop sets it) the target cross-entropy alone."""
    model = make_model().eval()
    trainer = make_trainer(model, small_split["joint"], tmp_path, ot_iterations=1000)
    rows = [small_split["test"][i] for i in range(0, 100, 10)]
    batch = jdata.collate(rows)
    assert "domain" not in batch
    evaluated = trainer.compute_loss(model, batch)
    model.training = True  # the training path, BatchNorm still on running statistics
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        out = model(batch["pixel_values"])
    target = torch.ones_like(batch["labels"])
    total, ce_t, ce_s, ot_value = objective_by_hand(out.logits, out.source_logits, batch["labels"], target,
                                                    model.cost_matrix, 1.0, 1.0, 0.05)  # fmt: skip
    assert loss.item() == pytest.approx(total, rel=1e-4)
    assert ce_s == 0.0 and ot_value > 0.01  # exact: no source row
    assert evaluated.item() == pytest.approx(ce_t, rel=1e-5)


def _rgba_joint(n_source: int = 12, n_target: int = 8, size: int = 20) -> datasets.Dataset:
    """RGBA images with random colours and alpha; source labels 0..2, target labels 0..1."""
    rng = np.random.default_rng(0)

    def images(n):
        return [Image.fromarray(rng.integers(0, 256, size=(size, size, 4), dtype=np.uint8), "RGBA") for _ in range(n)]

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    source = datasets.Dataset.from_dict({"image": images(n_source), "label": [i % 3 for i in range(n_source)]},
                                        features=features)
    target = datasets.Dataset.from_dict({"image": images(n_target), "label": [i % 2 for i in range(n_target)]},
                                        features=features)
    return jdata.build_joint_dataset(source, target)


def test_four_channel_model_trains_on_rgba_images(tmp_path):
    """A timm backbone with in_chans=4 (config.backbone_kwargs) and a 4-channel data_config: RGBA images keep
    their alpha as the 4th channel, a few JTLN steps run, the loss stays finite and the weights move,
    including the first convolution's alpha-channel slice."""
    data_config = {"input_size": [4, 16, 16], "interpolation": "bilinear", "mean": [0.5] * 4, "std": [0.25] * 4,
                   "crop_pct": 1.0, "crop_mode": "center"}  # fmt: skip
    model = make_model(backbone_kwargs={"in_chans": 4}, data_config=data_config)
    stem = next(p for n, p in model.named_parameters() if p.dim() == 4)  # the first convolution
    assert stem.shape[1] == 4
    before = _params(model)
    stem_alpha = stem.detach()[:, 3].clone()
    transform = jdata.make_batch_transform(jdata.build_transform(data_config, training=True, scale=(0.8, 1.0)), 4)
    joint = _rgba_joint().with_transform(transform)
    trainer = make_trainer(model, joint, tmp_path, per_device_train_batch_size=8, max_steps=3)
    batch = first_batch(trainer)
    assert batch["pixel_values"].shape == (8, 4, 16, 16)
    assert batch["pixel_values"][:, 3].std() > 0.5  # the images' random alpha, not a constant opaque channel
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        assert all(math.isfinite(h[k]) for k in ("loss", "ce_target", "ce_source", "ot")) and h["ot"] > 0
    after = _params(model)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not torch.equal(after["target_head.weight"], before["target_head.weight"])
    assert not torch.equal(stem.detach()[:, 3], stem_alpha)  # alpha reached the backbone's gradient
    # the saved processor is the 4-channel one: inference sees the same channels
    assert trainer.processing_class.image_mode == "RGBA"


# ----------------------------------------------------------------------------- (b) logged parts
def test_logged_parts_add_up_to_loss(small_split, tmp_path):
    lam_s, lam_ot = 0.5, 2.0
    trainer = make_trainer(make_model(), small_split["joint"], tmp_path, eval_dataset=small_split["test"],
                           max_steps=3, logging_steps=1, source_loss_weight=lam_s, ot_loss_weight=lam_ot,
                           eval_strategy="steps", eval_steps=1)
    trainer.train()
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in train_logs] == [1, 2, 3]
    for h in train_logs:
        for key in ("ce_target", "ce_source", "ot"):
            assert key in h and math.isfinite(h[key]) and h[key] > 0
        # The parts are logged rounded to 6 decimals (error <= 5e-7 each, so <= 1.75e-6 once
        # weighted by 1 + 0.5 + 2); the loss is Trainer's float32 running sum divided by the
        # step count (~1e-7 relative). 1e-5 covers both with margin, and is far below any
        # mistake in the weights (a missing lam_s alone would move the sum by > 0.1 here).
        assert h["loss"] == pytest.approx(h["ce_target"] + lam_s * h["ce_source"] + lam_ot * h["ot"], abs=1e-5)
    # evaluation during training neither logs parts nor leaks its batches into the next train log
    eval_logs = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert len(eval_logs) == 3 and not any("ce_target" in h for h in eval_logs)


# ----------------------------------------------------------------------------- (c) accumulation
def _sgd_args(**kw):
    return dict(optim="sgd", learning_rate=0.05, lr_scheduler_type="constant", warmup_steps=0,
                max_grad_norm=0.0, weight_decay=0.0, logging_steps=100, **kw)


def test_gradient_accumulation_equals_one_big_batch(small_split, tmp_path):
    """2 steps at batch 16 == 2 steps at batch 8 x accumulation 2, on the very same rows.

    The sampler draws the same stream for both: one source permutation per epoch sliced in
    order, then target rows from a stream of permutations, so big batch k holds exactly the rows
    of micro-batches 2k and 2k+1 (4+4 and 4+4 rows = 8+8). With a LayerNorm backbone the
    gradient of the mean loss over 16 rows is the mean of the two 8-row gradients, so the
    weights must agree to float rounding -- and would be off by the whole update if Trainer
    summed the micro-batch losses instead of averaging them.
    """
    joint = small_split["joint"]
    runs = {}
    for name, (bs, acc) in {"big": (16, 1), "accumulated": (8, 2), "doubled": (8, 2)}.items():
        model = make_model(seed=1, **VIT)
        before = _params(model)
        trainer = make_trainer(model, joint, tmp_path / name, per_device_train_batch_size=bs,
                               gradient_accumulation_steps=acc, max_steps=2, **_sgd_args())
        if name == "doubled":  # the pitfall in docs/design.md: Trainer believes the loss is pre-scaled
            trainer.model_accepts_loss_kwargs = True
        seen = []
        loader = trainer.get_train_dataloader
        trainer.get_train_dataloader = lambda loader=loader, seen=seen: _recording(loader(), seen)
        trainer.train()
        runs[name] = (_flat([p - before[n] for n, p in _params(model).items()]), seen)

    big, big_rows = runs["big"]
    acc, acc_rows = runs["accumulated"]
    # big batch k holds exactly the rows of micro-batches 2k and 2k+1
    for k in range(2):
        assert sorted(big_rows[k]) == sorted(acc_rows[2 * k] + acc_rows[2 * k + 1])
    assert big.norm() > 1e-2
    assert (acc - big).norm() / big.norm() < 1e-4
    doubled, _ = runs["doubled"]
    assert (doubled - big).norm() / big.norm() > 0.5  # the check would catch the doubled loss


def _recording(loader, seen):
    """Wrap a dataloader to record (labels, domain, first pixel) of every batch it yields."""

    class Recorder:
        def __init__(self):
            self.__dict__["_loader"] = loader

        def __getattr__(self, name):
            return getattr(self._loader, name)

        def __len__(self):
            return len(self._loader)

        def __iter__(self):
            for batch in self._loader:
                seen.append([tuple(x) for x in zip(batch["labels"].tolist(), batch["domain"].tolist(),
                                                   batch["pixel_values"][:, 0, 14, 14].tolist())])
                yield batch

    return Recorder()


class _RecordingTrainer(JTLNTrainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        self.micro_batches.append({k: v.clone() for k, v in inputs.items()})
        return super().training_step(model, inputs, num_items_in_batch)


def test_accumulated_step_is_mean_of_micro_batch_gradients(small_split, tmp_path):
    """With BatchNorm (test_resnet), the accumulated update must be -lr * mean of the gradients of
    the two micro-batches it saw, recomputed here by hand from a copy of the initial model."""
    model = make_model(seed=2)
    initial = copy.deepcopy(model)
    trainer = make_trainer(model, small_split["joint"], tmp_path, trainer_cls=_RecordingTrainer,
                           per_device_train_batch_size=8, gradient_accumulation_steps=2, max_steps=1,
                           **_sgd_args())
    trainer.micro_batches = []
    trainer.train()
    assert len(trainer.micro_batches) == 2

    initial.train()
    loss_fn = JTLNLoss(ot_iterations=trainer.args.ot_iterations, ot_epsilon=trainer.args.ot_epsilon)
    params = [p for _, p in initial.named_parameters()]
    grads = []
    for mb in trainer.micro_batches:
        out = initial(mb["pixel_values"])
        loss = loss_fn(out.logits, out.source_logits, mb["labels"], mb["domain"], initial.cost_matrix)["loss"]
        grads.append(_flat(torch.autograd.grad(loss, params)))
    expected = -0.05 * (grads[0] + grads[1]) / 2
    got = _flat([p.detach() - q.detach() for p, q in zip(model.parameters(), initial.parameters())])
    assert expected.norm() > 1e-3
    assert (got - expected).norm() / expected.norm() < 1e-4


# ----------------------------------------------------------------------------- (d), (e) errors
def _raw_joint(labels, domains):
    image = Image.new("L", (28, 28), 0)
    return datasets.Dataset.from_dict(
        {"image": [image] * len(labels), "label": labels, "domain": domains},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.Value("int64"), "domain": datasets.Value("int64")}
        ),
    )


@pytest.mark.parametrize("labels,domains,match", [
    ([0, 1, 2, 2], [0, 0, 1, 1], r"target label 2 is out of range: the model has 2 target classes \(ids 0..1\)"),
    ([0, 3, 1, 0], [0, 0, 1, 1], r"source label 3 is out of range: the model has 3 source classes \(ids 0..2\)"),
    ([0, -1, 1, 0], [0, 0, 1, 1], r"source label -1 is out of range"),
    ([0, 1, 1, 0], [0, 2, 1, 1], r"domain values must be 0 \(source\) or 1 \(target\), found \[2\]"),
    ([0, 1, 1, 0], [0, -1, 1, 1], r"found \[-1\]"),
])  # fmt: skip
def test_bad_labels_or_domains_raise_before_training(tmp_path, labels, domains, match):
    with pytest.raises(ValueError, match=match):
        make_trainer(make_model(), _raw_joint(labels, domains), tmp_path)


def test_bad_eval_labels_raise(small_split, tmp_path):
    bad_eval = datasets.Dataset.from_dict({"image": [Image.new("L", (28, 28))] * 2, "label": [0, 5]})
    with pytest.raises(ValueError, match=r"target label 5 is out of range"):
        make_trainer(make_model(), small_split["joint"], tmp_path, eval_dataset={"test": bad_eval})
    no_label = datasets.Dataset.from_dict({"image": [Image.new("L", (28, 28))], "y": [0]})
    with pytest.raises(ValueError, match=r"no 'label' column"):
        make_trainer(make_model(), small_split["joint"], tmp_path, eval_dataset=no_label)


def test_zero_cost_with_ot_raises(small_split, tmp_path):
    model = make_model(cost=torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"ot_loss_weight > 0 but the model's cost_matrix is all zeros"):
        make_trainer(model, small_split["joint"], tmp_path, ot_loss_weight=0.5)
    make_trainer(model, small_split["joint"], tmp_path, ot_loss_weight=0.0)  # joint training needs no C


def test_arguments_validated(tmp_path):
    # the loss's own checks (one place), named after the arguments
    for kw, match in [({"source_loss_weight": -1.0}, "source_loss_weight must be a finite number >= 0"),
                      ({"ot_loss_weight": -0.1}, "ot_loss_weight must be a finite number >= 0"),
                      ({"source_fraction": 1.2}, "source_fraction must be in"),
                      ({"ot_epsilon": 0.0}, "ot_epsilon must be > 0"),
                      ({"ot_iterations": 0}, "ot_iterations must be an integer >= 1"),
                      ({"ot_tol": 0.0}, r"ot_tol must be None \(fixed iterations\) or a finite number > 0")]:
        with pytest.raises(ValueError, match=match):
            make_args(tmp_path, **kw)
    assert make_args(tmp_path).remove_unused_columns is False


def test_dataset_without_domain_is_target_only(small_split, eval_transform, tmp_path):
    target = small_split["target"].with_transform(eval_transform)
    assert "domain" not in target.column_names
    trainer = make_trainer(make_model(), target, tmp_path, source_fraction=0.0, max_steps=2)
    batch = first_batch(trainer)
    assert "domain" not in batch and len(batch["labels"]) == 8
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(h["ce_source"] == 0.0 and h["ot"] > 0 for h in logs)  # exact: no source row
    # with the default source_fraction the sampler says what is missing
    trainer = make_trainer(make_model(), target, tmp_path, max_steps=2)
    with pytest.raises(ValueError, match="asks for source rows but the training set has none"):
        trainer.train()


def test_plain_training_arguments_rejected(small_split, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(TypeError, match="needs JTLNTrainingArguments"):
        JTLNTrainer(model=make_model(), args=args, train_dataset=small_split["joint"])


# ----------------------------------------------------------------------------- (f) evaluate
def test_evaluate_metrics_match_predictions(small_split, tmp_path):
    model = make_model(num_target=2)
    trainer = make_trainer(model, small_split["joint"], tmp_path, eval_dataset=small_split["test"], max_steps=5)
    trainer.train()
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_accuracy", "eval_mean_per_class_accuracy"} <= set(metrics)
    assert not any(k.startswith("eval_top_") for k in metrics)  # 2 target classes: no top-k
    # by hand from the model's own predictions, on the whole set in one batch where evaluate() ran batches of 8:
    # the logits of the two runs are within twice the forward-error bound of each other (tests/tolerances.py),
    # so a row's prediction is the same in both wherever no such gap can move its argmax; a row where one can
    # counts as right or wrong, and each metric must lie in the range that leaves (a point when there is none)
    model.eval()
    batch = jdata.collate([small_split["test"][i] for i in range(len(small_split["test"]))])
    with torch.no_grad():
        logits = model(batch["pixel_values"]).logits
    pred, labels = logits.argmax(-1).numpy(), batch["labels"].numpy()
    stable = stable_argmax(logits, 2 * jtln_logit_bounds(model, batch["pixel_values"])["logits"][1]).numpy()

    def share_right(rows):  # (lowest, highest) share of right predictions among these rows
        right, unsure = (pred[rows & stable] == labels[rows & stable]).sum(), (rows & ~stable).sum()
        return right / rows.sum(), (right + unsure) / rows.sum()

    slack = gamma(4, torch.float64)  # the metrics and these: ratios of counts, a mean of two; <= 4 roundings of <= 1
    low, high = share_right(np.ones_like(stable))
    assert low - slack <= metrics["eval_accuracy"] <= high + slack
    recalls = [share_right(labels == k) for k in (0, 1)]
    low, high = np.mean([r[0] for r in recalls]), np.mean([r[1] for r in recalls])
    assert low - slack <= metrics["eval_mean_per_class_accuracy"] <= high + slack


# ----------------------------------------------------------------------------- (g) real training
@pytest.fixture(scope="module")
def fashion_mnist_task(fashion_mnist, eval_transform):
    """The default split: 5 source classes x 400 images, 5 target classes x 20 shots, 5 x 200 test."""
    train, test = fashion_mnist
    source_names, target_names = list(jdata.DEFAULT_SOURCE_CLASSES), list(jdata.DEFAULT_TARGET_CLASSES)
    source, target = jdata.split_by_classes(train, source_names, target_names)
    source, target = jdata.sample_shots(source, 400, seed=0), jdata.sample_shots(target, 20, seed=0)
    _, target_test = jdata.split_by_classes(test, source_names, target_names)
    target_test = jdata.sample_shots(target_test, 200, seed=0)
    cost = load_cost(Path(jtln_hf.__file__).parent / "data" / "fashion_mnist_prior.csv",
                     source_names, target_names)
    return {
        "joint": jdata.build_joint_dataset(source, target).with_transform(eval_transform),
        "test": target_test.with_transform(eval_transform),
        "source_names": source_names,
        "target_names": target_names,
        "cost": cost,
    }


@pytest.mark.slow
def test_short_fashion_mnist_training_learns_the_target_task(fashion_mnist_task, tmp_path):
    """200 steps of batch 64 (32 source + 32 target rows): ~15 s on one CPU core.

    Measured: target test accuracy 0.81 (seed 0; 0.79-0.84 over seeds 0-3); chance is 0.2.
    """
    task = fashion_mnist_task
    torch.manual_seed(0)
    config = JointImageClassifierConfig(
        backbone="test_resnet", backbone_kwargs={"in_chans": 1},
        source_id2label=dict(enumerate(task["source_names"])), id2label=dict(enumerate(task["target_names"])),
        data_config=dict(jdata.FASHION_MNIST_DATA_CONFIG),
    )
    model = JointImageClassifier(config, cost_matrix=task["cost"])
    untrained = make_trainer(copy.deepcopy(model), task["joint"], tmp_path / "untrained",
                             eval_dataset=task["test"]).evaluate()
    trainer = make_trainer(model, task["joint"], tmp_path, eval_dataset=task["test"],
                           per_device_train_batch_size=64, max_steps=200, learning_rate=3e-3,
                           warmup_steps=0, logging_steps=50)
    trainer.train()
    metrics = trainer.evaluate()
    assert untrained["eval_accuracy"] < 0.4
    assert metrics["eval_accuracy"] > 0.6
    assert metrics["eval_mean_per_class_accuracy"] > 0.6
    assert "eval_top_4_accuracy" in metrics  # 5 target classes: top-k lowered from 5 to 4
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[-1]["ce_target"] < logs[0]["ce_target"] and logs[-1]["ce_source"] < logs[0]["ce_source"]


# ----------------------------------------------------------------------------- prediction
def test_predict_outputs_is_the_model_on_every_row_in_order(small_split, tmp_path):
    """Trainer.predict with batches of 4 over 13 rows: every row once, in order, as the model alone computes it."""
    model = make_model(num_target=2)
    rows = small_split["test"].select(range(13))
    trainer = make_trainer(model, small_split["joint"], tmp_path, per_device_eval_batch_size=4)
    outputs, labels = trainer.predict_outputs(rows, ("source_logits", "pooler_output", "logits"))
    batch = [rows[i] for i in range(len(rows))]
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=torch.stack([r["pixel_values"] for r in batch]))
    for name in ("source_logits", "pooler_output", "logits"):
        assert outputs[name].shape == tuple(getattr(expected, name).shape)
        np.testing.assert_allclose(outputs[name], getattr(expected, name).numpy(), rtol=1e-5, atol=1e-5)
    assert labels.tolist() == [r["labels"] for r in batch]
    # the trainer's ordinary evaluation is untouched by the prediction mode
    assert set(trainer.evaluate(rows)) >= {"eval_loss", "eval_accuracy"}


def test_predict_outputs_leaves_the_model_as_it_was_when_a_forward_fails(small_split, tmp_path, monkeypatch):
    """predict_outputs is its own loop, no mode of the trainer: a failure mid-way leaves the model in the
    mode it had, and the trainer's evaluation works as before."""
    model = make_model(num_target=2)
    trainer = make_trainer(model, small_split["joint"], tmp_path, per_device_eval_batch_size=4)
    forward, calls = model.forward, []

    def broken(*args, **kwargs):
        calls.append(model.training)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", broken)
    model.train()
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.predict_outputs(small_split["test"].select(range(8)), ("pooler_output",))
    assert calls == [False, False] and model.training  # ran in eval mode, left in train mode
    monkeypatch.undo()
    assert "eval_accuracy" in trainer.evaluate(small_split["test"].select(range(8)))  # an ordinary evaluation


def test_eval_loss_is_the_target_cross_entropy_and_the_other_parts_are_reported(small_split, tmp_path):
    """In evaluation ``eval_loss`` is the target cross-entropy by construction (whatever the weights), and
    ``eval_ce_source`` / ``eval_ot`` are the mean over batches of the other parts, computed by hand."""
    from conftest import ce_by_hand, ot_by_hand

    model = make_model(num_target=2)
    trainer = make_trainer(model, small_split["joint"], tmp_path, ot_loss_weight=1.0, per_device_eval_batch_size=8,
                           ot_iterations=1000)  # fmt: skip
    rows = small_split["test"].select(range(16))
    metrics = trainer.evaluate(rows)
    batch = [rows[i] for i in range(len(rows))]
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=torch.stack([r["pixel_values"] for r in batch]))
    labels = torch.tensor([r["labels"] for r in batch])
    z = max(float(out.logits.abs().max()), float(out.source_logits.abs().max()))
    cost = model.cost_matrix
    # two batches of 8: eval_loss (Trainer's mean over rows) and eval_ot (ours, over batches) are both the
    # mean of the two batch means; float32 against float64 by hand within the derived bounds, and the
    # parts are rounded to 6 decimals (5e-7) when reported
    ce_tol = cross_entropy_atol(torch.float32, 2, z, rows=16)
    ot_tol = sinkhorn_value_atol(torch.float32, 1000, float(cost.max()) / 0.05, 3, 2, epsilon=0.05,
                                 cost_max=float(cost.max())) + 5e-7  # fmt: skip
    assert metrics["eval_loss"] == pytest.approx(ce_by_hand(out.logits, labels), rel=0, abs=ce_tol)
    assert metrics["eval_ce_source"] == 0.0  # an evaluation set is all target rows (exact: no source row)
    by_hand = [ot_by_hand(out.source_logits[i:i + 8], out.logits[i:i + 8], cost, 0.05) for i in (0, 8)]
    assert metrics["eval_ot"] == pytest.approx(sum(by_hand) / 2, rel=0, abs=ot_tol) and metrics["eval_ot"] > 0.01
    assert "eval_ce_target" not in metrics  # it is eval_loss
    assert trainer.loss_settings.ot_loss_weight == 1.0  # nothing was switched off to get there


def test_trainer_arguments_are_keyword_only(small_split, tmp_path):
    with pytest.raises(TypeError, match="positional"):
        JTLNTrainer(make_model(), make_args(tmp_path))
