"""Shared fixtures: a tiny JTLN config/model, Fashion-MNIST splits and a small JTLNTrainer.

Everything here is cheap: ``test_resnet`` is timm's ~0.4M-parameter test model, images stay at
Fashion-MNIST's native 28x28, and the Fashion-MNIST datasets are built once per session (they
come from the ``datasets`` cache after the first run).  Nothing touches the network.
"""

from __future__ import annotations

import gc
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One intra-op thread (inherited by subprocesses too). The models here are tiny, and on a shared
# machine whose cores are busy, OpenMP's spinning barriers made a test_resnet step on 2 threads
# ~40x slower than on 1 (11 s vs 0.28 s for 5 forward/backward passes of 64 images).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import ot  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from jtln_hf import JointImageClassifier, JointImageClassifierConfig  # noqa: E402
from jtln_hf import data as jdata  # noqa: E402
from jtln_hf.training import JTLNTrainer, JTLNTrainingArguments  # noqa: E402

SOURCE_NAMES = ("T-shirt/top", "Trouser", "Pullover")
TARGET_NAMES = ("Sandal", "Bag", "Ankle boot", "Coat")


def make_config(num_target: int = 2, num_source: int = 3, **overrides) -> JointImageClassifierConfig:
    """A tiny config: timm ``test_resnet`` on 1-channel 28x28 images, named source/target classes."""
    assert 1 <= num_source <= len(SOURCE_NAMES) and 1 <= num_target <= len(TARGET_NAMES)
    kwargs = dict(
        backbone="test_resnet",
        backbone_kwargs={"in_chans": 1},
        source_id2label=dict(enumerate(SOURCE_NAMES[:num_source])),
        id2label=dict(enumerate(TARGET_NAMES[:num_target])),
        data_config=dict(jdata.FASHION_MNIST_DATA_CONFIG),
    )
    kwargs.update(overrides)
    return JointImageClassifierConfig(**kwargs)


def make_model(num_target: int = 2, num_source: int = 3, seed: int = 0, cost=None, **overrides) -> JointImageClassifier:
    """A tiny model built under ``torch.manual_seed(seed)``; ``cost`` defaults to a fixed non-zero C."""
    torch.manual_seed(seed)
    model = JointImageClassifier(make_config(num_target, num_source, **overrides))
    if cost is None:
        cost = default_cost(num_source, num_target)
    model.set_cost_matrix(cost)
    return model


def default_cost(num_source: int, num_target: int) -> torch.Tensor:
    """A fixed, non-degenerate C in [0, 1] (distinct entries, so OT is not a constant)."""
    g = torch.Generator().manual_seed(1234)
    return torch.rand(num_source, num_target, generator=g)


#: The files that start other processes or train end to end, longest first (``pytest --durations=40``).
#: Run first so that ``make test``'s two xdist workers (``--dist loadfile``: a file stays on one worker)
#: fill the end with short files, not wait on one long file. Only the order of files changes: no test
#: depends on another, and a file's tests keep their order.
LONG_FILES = (
    "test_trials.py", "test_readme.py", "test_stream_training.py", "test_distributed.py", "test_train_jtln.py",
    "test_resume.py", "test_two_nodes.py", "test_refresh.py", "test_sweep.py", "test_demo_browser.py", "test_data.py",
)  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: file order kept otherwise


def pytest_collection_finish(session):
    """Freeze what the imports and the collection made (``gc.freeze``): it lives as long as the process, and every
    full garbage collection would walk it again (~600,000 objects, 0.6 s each; Trainer runs one per ``train``)."""
    gc.collect()
    gc.freeze()


@pytest.fixture
def tiny_config() -> JointImageClassifierConfig:
    return make_config(num_target=4)


@pytest.fixture
def tiny_model() -> JointImageClassifier:
    return make_model(num_target=4)


@pytest.fixture
def one_intra_op_thread():
    """torch's intra-op threads in this process: 1 during a test, whatever OMP_NUM_THREADS says; restored after.

    Runs compared bit for bit must reduce floats in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fashion_mnist():
    """(train, test) Fashion-MNIST as ``datasets.Dataset`` (image, label); cached by ``datasets``."""
    return jdata.load_fashion_mnist("train"), jdata.load_fashion_mnist("test")


@pytest.fixture(scope="session")
def eval_transform():
    """Deterministic timm transform for 1x28x28 Fashion-MNIST images, as a batch transform."""
    return jdata.make_batch_transform(jdata.build_transform(jdata.FASHION_MNIST_DATA_CONFIG, training=False), 1)


@pytest.fixture(scope="session")
def small_split(fashion_mnist, eval_transform):
    """3 source classes x 60 images + 2 target classes x 5 shots (train), 2 x 50 target test images.

    Returns a dict: ``source``, ``target`` (raw, labels renumbered 0..k-1), ``joint`` (with a
    ``domain`` column and the eval transform) and ``test`` (target test rows, transformed).
    """
    train, test = fashion_mnist
    source, target = jdata.split_by_classes(train, SOURCE_NAMES, TARGET_NAMES[:2])
    source = jdata.sample_shots(source, 60, seed=0)
    target = jdata.sample_shots(target, 5, seed=0)
    _, target_test = jdata.split_by_classes(test, SOURCE_NAMES, TARGET_NAMES[:2])
    target_test = jdata.sample_shots(target_test, 50, seed=0)
    joint = jdata.build_joint_dataset(source, target)
    return {
        "source": source,
        "target": target,
        "joint": joint.with_transform(eval_transform),
        "test": target_test.with_transform(eval_transform),
    }


def make_args(output_dir, **overrides) -> JTLNTrainingArguments:
    """CPU-only, quiet, no checkpoints, no reporting; ``overrides`` win."""
    kwargs = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=8,
        per_device_eval_batch_size=64,
        max_steps=3,
        learning_rate=1e-3,
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    kwargs.update(overrides)
    return JTLNTrainingArguments(**kwargs)


def make_trainer(
    model, train_dataset, output_dir, eval_dataset=None, trainer_cls=JTLNTrainer, **arg_overrides
) -> JTLNTrainer:
    """A small JTLNTrainer (or subclass) on CPU (see :func:`make_args` for the defaults)."""
    return trainer_cls(
        model=model,
        args=make_args(output_dir, **arg_overrides),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
    )


# ------------------------------------------------------------------ the JTLN objective, by hand
def ce_by_hand(scores, labels) -> float:
    """Mean cross-entropy as -log_softmax at the label, in float64 (0 for no rows)."""
    scores, labels = scores.detach().double(), labels.long()
    if len(labels) == 0:
        return 0.0
    return float(-torch.log_softmax(scores, dim=1)[torch.arange(len(labels)), labels].mean())


def ot_by_hand(source_logits, logits, cost, eps, objective: str = "entropic") -> float:
    """Mean over rows of the OT term, gamma = POT's converged entropic plan between the two heads' softmaxes.

    ``objective``: ``"paper"`` <gamma, C>; ``"entropic"`` <gamma, C> + eps sum gamma log gamma (POT's
    ``reg_type="entropy"``, the training default); ``"kl"`` <gamma, C> + eps KL(gamma || a b^T).
    """
    a = torch.softmax(source_logits.detach().double(), 1).numpy()
    b = torch.softmax(logits.detach().double(), 1).numpy()
    C = cost.detach().double().cpu().numpy()
    method = "sinkhorn" if eps >= 0.02 else "sinkhorn_log"
    values = []
    for ai, bi in zip(a, b):
        plan = ot.sinkhorn(ai, bi, C, reg=eps, method=method, numItermax=20000, stopThr=1e-13)
        np.testing.assert_allclose(plan.sum(1), ai, atol=1e-9)  # a converged plan
        value = float((plan * C).sum())
        positive = plan > 0
        if objective == "entropic":
            value += eps * float((plan[positive] * np.log(plan[positive])).sum())
        elif objective == "kl":
            prior = np.outer(ai, bi)
            value += eps * float((plan[positive] * np.log(plan[positive] / prior[positive])).sum())
        values.append(value)
    return float(np.mean(values)) if values else 0.0


def objective_by_hand(logits, source_logits, labels, domain, cost, lam_s, lam_ot, eps, objective="entropic"):
    """(total, ce_target, ce_source, ot) of the JTLN objective on one batch (float64)."""
    t, s = domain == 1, domain == 0
    ce_t = ce_by_hand(logits[t], labels[t])
    ce_s = ce_by_hand(source_logits[s], labels[s])
    ot_value = ot_by_hand(source_logits[t], logits[t], cost, eps, objective)
    return ce_t + lam_s * ce_s + lam_ot * ot_value, ce_t, ce_s, ot_value


# ------------------------------------------------------------------ scikit-learn's digits on disk
def write_digits_folder(root, *, layout: str = "split", mode: str = "L", size: int = 28, test_size: float = 0.3):
    """scikit-learn's 1,797 handwritten digits written as an ImageFolder of ``size``-px PNGs.

    ``layout="split"``: ``train/<digit>/*.png`` and ``test/<digit>/*.png`` (a stratified 70/30
    split); ``layout="classes"``: ``<digit>/*.png`` only (one split). ``mode="RGB"`` colours the
    strokes (a red-to-blue tint per image), for mixed grayscale/colour runs.
    """
    from pathlib import Path

    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = Path(root)
    digits = load_digits()
    rows = np.arange(len(digits.target))
    train, test = train_test_split(rows, test_size=test_size, stratify=digits.target, random_state=0)
    parts = {"train": train, "test": test} if layout == "split" else {"": rows}
    for split, chosen in parts.items():
        for i in chosen:
            gray = (digits.images[i] * 255 / 16).astype(np.uint8)
            if mode == "RGB":
                tint = np.array([255 - 20 * (i % 10), 80, 40 + 20 * (i % 10)]) / 255.0
                pixels = (gray[..., None] * tint).astype(np.uint8)
            else:
                pixels = gray
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).resize((size, size), Image.BILINEAR).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory):
    """Digits as ``train/``/``test/`` class folders of 28-px grayscale PNGs."""
    return write_digits_folder(tmp_path_factory.mktemp("digits"))
