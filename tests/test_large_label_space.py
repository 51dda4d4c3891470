"""Large label spaces: 1,000 source x 200 target classes (the ImageNet -> CUB shape).

The cost builders, the OT term and a checkpoint at that size, on synthetic features (3 rows per
class, 16 dimensions). References are independent of the code under test: MMD and centroid
entries written out with numpy (squared distances as sums of squared differences, means as
sums over the rows), POT's Sinkhorn run for the same number of iterations, and a reload from the
saved files. Every tolerance comes from ``tests/tolerances.py`` (unit roundoff x the size of the
computation), none was measured.
"""

from __future__ import annotations

import math

import datasets
import numpy as np
import ot
import pytest
import torch
from conftest import make_config
from test_ot_numerics import bounds, floored, objective_value, pot_same_iterations, twice
from tolerances import euclidean_distance_atol, gamma, mmd2_atol, unit_roundoff

from jtln_hf import JointImageClassifier
from jtln_hf.cost import cost_from_features, normalize_cost
from jtln_hf.cost.features import _mmd2_cost, compute_class_pairwise, mmd2
from jtln_hf.cost.builders import CostInputs, build_cost
from jtln_hf.sinkhorn import transport_plan, wasserstein_loss

LS, LT, PER_CLASS, DIM = 1000, 200, 3, 16
EPSILON, ITERATIONS = 0.05, 50  # the recipe's defaults (--ot_epsilon, --ot_iterations)
F64 = torch.float64


@pytest.fixture(scope="module")
def features():
    """Source and target features, ``PER_CLASS`` rows per class, classes shuffled among the rows; target
    class j is centred near source class ``drawn_from[j]``."""
    rng = np.random.default_rng(18)
    centres_s = rng.normal(size=(LS, DIM))
    drawn_from = rng.choice(LS, LT, replace=False)
    centres_t = centres_s[drawn_from] + 0.2 * rng.normal(size=(LT, DIM))
    ys = rng.permutation(np.repeat(np.arange(LS), PER_CLASS))
    yt = rng.permutation(np.repeat(np.arange(LT), PER_CLASS))
    xs = centres_s[ys] + 0.3 * rng.normal(size=(len(ys), DIM))
    xt = centres_t[yt] + 0.3 * rng.normal(size=(len(yt), DIM))
    return xs, ys, xt, yt, drawn_from


@pytest.fixture(scope="module")
def mmd_cost(features):
    """The raw features-mmd cost with explicit bandwidths (the default ones are checked below)."""
    xs, ys, xt, yt, drawn_from = features
    bw = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    return bw, cost_from_features(xs, ys, xt, yt, method="mmd", bandwidths=bw, normalize="none")


def _hand_mmd2(x: np.ndarray, y: np.ndarray, sig2: np.ndarray) -> float:
    def mean_kernel(u, v):
        d2 = ((u[:, None, :] - v[None, :, :]) ** 2).sum(-1)
        return sum(np.exp(-d2 / s).sum() / d2.size for s in sig2)

    return max(mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y), 0.0)


PAIRS = [(0, 0), (0, LT - 1), (LS - 1, 0), (LS - 1, LT - 1), (417, 93), (999, 123), (3, 150), (512, 7)]


def test_mmd_cost_at_1000_by_200_matches_numpy_by_hand(features, mmd_cost):
    xs, ys, xt, yt, drawn_from = features
    bw, cost = mmd_cost
    assert cost.shape == (LS, LT) and cost.dtype == np.float64 and np.isfinite(cost).all()
    assert (cost >= 0).all() and cost.max() > 0
    sig2 = 2.0 * bw**2
    max_norm = max(np.linalg.norm(xs, axis=1).max(), np.linalg.norm(xt, axis=1).max())
    atol = 2 * mmd2_atol(DIM, max_norm, PER_CLASS, sig2, F64)  # two computations: ours and the hand one
    for i, j in PAIRS:
        ref = _hand_mmd2(xs[ys == i], xt[yt == j], sig2)
        assert abs(cost[i, j] - ref) <= atol, (i, j, cost[i, j], ref, atol)
    # each target class was drawn near one source class (features fixture): the cost finds it. Exact on any CPU:
    # each column's smallest entry beats its second by more than twice one computation's error (atol), so every
    # computation of the cost has the argmin of the exact one
    smallest, second = np.sort(cost, axis=0)[:2]
    assert (second - smallest > atol).all()
    np.testing.assert_array_equal(cost.argmin(0), drawn_from)


def test_vectorised_mmd_equals_the_pairwise_definition_within_rounding(features):
    """The per-source-class path of cost_from_features against mmd2 pair by pair (150 x 40 classes)."""
    xs, ys, xt, yt, drawn_from = features
    src = [xs[ys == i] for i in range(150)]
    tgt = [xt[yt == j] for j in range(40)]
    bw = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    fast = _mmd2_cost(src, tgt, bw)
    pairwise = compute_class_pairwise(src, tgt, lambda a, b: mmd2(a, b, bw))
    max_norm = max(np.linalg.norm(xs, axis=1).max(), np.linalg.norm(xt, axis=1).max())
    np.testing.assert_allclose(fast, pairwise, rtol=0, atol=2 * mmd2_atol(DIM, max_norm, PER_CLASS, 2 * bw**2, F64))


def test_default_bandwidths_and_column_normalisation(features):
    xs, ys, xt, yt, drawn_from = features
    cost = cost_from_features(xs, ys, xt, yt, method="mmd", normalize="column")
    assert cost.shape == (LS, LT) and np.isfinite(cost).all()
    assert (cost.min(0) == 0).all()  # a free source class per target class; exact: x - min x = 0
    assert (cost >= 0).all() and cost.max() <= 1


def test_centroid_cost_at_1000_by_200_matches_numpy_by_hand(features):
    xs, ys, xt, yt, drawn_from = features
    cost = cost_from_features(xs, ys, xt, yt, method="centroid", normalize="none")
    assert cost.shape == (LS, LT) and np.isfinite(cost).all()
    u = unit_roundoff(F64)
    max_norm = max(np.linalg.norm(xs, axis=1).max(), np.linalg.norm(xt, axis=1).max())
    # a class mean of n rows is off by gamma(n + 1) max|x| per coordinate, in either computation;
    # the distance is 1-Lipschitz in each mean
    mean_err = 2 * math.sqrt(DIM) * gamma(PER_CLASS + 1, F64) * max(np.abs(xs).max(), np.abs(xt).max())
    for i, j in PAIRS:
        mi = xs[ys == i].sum(0) / PER_CLASS
        mj = xt[yt == j].sum(0) / PER_CLASS
        ref = math.sqrt(((mi - mj) ** 2).sum())
        atol = 2 * mean_err + 2 * euclidean_distance_atol(DIM, max_norm, ref, F64) + u * ref
        assert abs(cost[i, j] - ref) <= atol, (i, j, cost[i, j], ref, atol)


def test_features_mmd_builder_reads_a_bounded_number_of_images_per_class(features):
    """--cost features-mmd through the registry: ``samples_per_class`` source rows per class go
    through the model, every labelled target row does, and C comes back column-normalised."""
    xs, ys, xt, yt, drawn_from = features
    extra = np.arange(LS)  # one more source row per class, which the builder must leave out
    source_x = np.concatenate([xs, xs[[np.flatnonzero(ys == c)[0] for c in extra]]])
    source_y = np.concatenate([ys, extra])
    names_s, names_t = [f"s{i}" for i in range(LS)], [f"t{j}" for j in range(LT)]

    def dataset(y, names):
        return datasets.Dataset.from_dict({"row": np.arange(len(y)), "label": y},
                                          features=datasets.Features({"row": datasets.Value("int64"),
                                                                      "label": datasets.ClassLabel(names=names)}))  # fmt: skip

    source, target = dataset(source_y, names_s), dataset(yt, names_t)
    seen = []

    def predict(ds, fields):
        assert fields == ("pooler_output",)
        table = source_x if ds.features["label"].names == names_s else xt
        rows = np.asarray(ds["row"])
        seen.append(np.bincount(np.asarray(ds["label"]), minlength=len(ds.features["label"].names)))
        return {"pooler_output": table[rows].astype(np.float32)}, np.asarray(ds["label"])

    inputs = CostInputs(source, target, names_s, names_t, predict=predict, samples_per_class=PER_CLASS)
    cost, how = build_cost("features-mmd", inputs, "column")
    assert (seen[0] == PER_CLASS).all() and (seen[1] == PER_CLASS).all()
    assert f"({LS * PER_CLASS} images)" in how and f"({LT * PER_CLASS} labelled images)" in how
    assert cost.shape == (LS, LT) and np.isfinite(cost).all() and (cost.min(0) == 0).all() and cost.max() <= 1


# ---------------------------------------------------------------------------- the OT term
@pytest.fixture(scope="module")
def ot_problem(mmd_cost):
    """The column-normalised MMD cost and 4 rows of softmax histograms (float64)."""
    C = normalize_cost(mmd_cost[1], "column")
    g = torch.Generator().manual_seed(0)
    a = torch.softmax(2 * torch.randn(4, LS, generator=g, dtype=F64), 1)
    b = torch.softmax(2 * torch.randn(4, LT, generator=g, dtype=F64), 1)
    return a, b, C


@pytest.mark.parametrize("objective", ["paper", "entropic"])
def test_ot_term_at_1000_by_200_equals_pot_for_the_same_iterations(ot_problem, objective):
    a, b, C = ot_problem
    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    Ct = torch.from_numpy(C)
    value = wasserstein_loss(x, y, Ct, epsilon=EPSILON, iterations=ITERATIONS, objective=objective)
    value.sum().backward()
    for t in (value, x.grad, y.grad):
        assert torch.isfinite(t).all()
    assert x.grad.abs().max() > 0 and y.grad.abs().max() > 0

    # row 0 against POT's log-domain Sinkhorn, same iterations, on the transposed problem (its
    # update order is then ours: tests/test_ot_numerics.py)
    A, B = floored(a[:1].numpy()), floored(b[:1].numpy())
    ref_plan, ref_f, ref_g = pot_same_iterations(A, B, C, EPSILON, ITERATIONS)
    tol = twice(bounds(F64, {"iterations": ITERATIONS, "Ls": LS, "Lt": LT}, C, EPSILON))
    plan = transport_plan(a[:1], b[:1], Ct, epsilon=EPSILON, iterations=ITERATIONS)
    np.testing.assert_allclose(plan.numpy(), ref_plan, rtol=tol["plan_rtol"], atol=torch.finfo(F64).tiny)
    if objective == "paper":  # <γ, C>: also POT's kernel-domain sinkhorn2, stopped at the same iteration
        ref = ot.sinkhorn2(B[0], A[0], C.T, EPSILON, numItermax=ITERATIONS, stopThr=0.0, warn=False)
        np.testing.assert_allclose(value[0].item(), (ref_plan * C).sum(), rtol=0, atol=tol["value"])
        np.testing.assert_allclose(value[0].item(), ref, rtol=0, atol=tol["value"])
    else:
        ref = objective_value(ref_plan, C, A, B, EPSILON, objective)[0]
        np.testing.assert_allclose(value[0].item(), ref, rtol=0, atol=tol["value"])
    pot = 2 * EPSILON * tol["potential"]  # centred potentials are the gradients
    np.testing.assert_allclose(x.grad[0].numpy(), ref_f[0] - ref_f[0].mean(), rtol=0, atol=pot)
    np.testing.assert_allclose(y.grad[0].numpy(), ref_g[0] - ref_g[0].mean(), rtol=0, atol=pot)


def test_ot_term_in_float32_as_in_training(ot_problem):
    """float32 logits through softmax, as JTLNLoss feeds the OT term: finite values and gradients,
    and row 0 within the float32 bound of the solve plus the float64 bound of POT's solve of the
    same rounded histograms (as tests/test_ot_numerics.py's low-precision tests)."""
    a, b, C = ot_problem
    logits_s = torch.log(a).float().requires_grad_()
    logits_t = torch.log(b).float().requires_grad_()
    Ct = torch.from_numpy(C).float()
    x, y = logits_s.softmax(1), logits_t.softmax(1)
    value = wasserstein_loss(x, y, Ct, epsilon=EPSILON, iterations=ITERATIONS, objective="entropic")
    value.mean().backward()
    assert value.dtype == torch.float32
    for t in (value, logits_s.grad, logits_t.grad):
        assert torch.isfinite(t).all()
    assert logits_s.grad.abs().max() > 0 and logits_t.grad.abs().max() > 0
    a64, b64, C64 = (t.detach().double().numpy() for t in (x[:1], y[:1], Ct))
    A, B = floored(a64), floored(b64)
    ref_plan, _, _ = pot_same_iterations(A, B, C64, EPSILON, ITERATIONS)
    want = objective_value(ref_plan, C64, A, B, EPSILON, "entropic")
    p = {"iterations": ITERATIONS, "Ls": LS, "Lt": LT}
    tol = twice(bounds(torch.float32, p, C64, EPSILON), bounds(F64, p, C64, EPSILON))
    np.testing.assert_allclose(value[:1].detach().double().numpy(), want, rtol=0, atol=tol["value"])


# ---------------------------------------------------------------------------- the checkpoint
def test_model_with_1000_source_and_200_target_labels_saves_and_reloads_its_cost(tmp_path, mmd_cost):
    C = normalize_cost(mmd_cost[1], "column")
    config = make_config(source_id2label={i: f"s{i}" for i in range(LS)}, id2label={j: f"t{j}" for j in range(LT)})
    torch.manual_seed(0)
    model = JointImageClassifier(config, cost_matrix=C).eval()
    assert model.cost_matrix.shape == (LS, LT)
    model.save_pretrained(tmp_path)
    loaded = JointImageClassifier.from_pretrained(tmp_path).eval()
    assert loaded.config.num_source_labels == LS and loaded.config.num_labels == LT
    assert loaded.config.source_id2label[LS - 1] == f"s{LS - 1}" and loaded.config.id2label[LT - 1] == f"t{LT - 1}"
    # exact: the float32 rounding of the same float64 C, saved and read back
    torch.testing.assert_close(loaded.cost_matrix, torch.tensor(C, dtype=torch.float32), rtol=0, atol=0)
    # the round trip: every tensor (the cost, both heads, the backbone) as saved, bit for bit
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        torch.testing.assert_close(theirs[name], tensor, rtol=0, atol=0, msg=name)
    with torch.no_grad():
        out = loaded(torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    assert out.logits.shape == (2, LT) and out.source_logits.shape == (2, LS)
