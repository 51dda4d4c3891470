#!/usr/bin/env python
"""A large label space (1,000 source x 200 target classes, the ImageNet -> CUB shape), side by side in one run.

Measured, alternated round by round so that machine noise hits all alike:

* ``cost``: building a ``features-mmd`` cost (:func:`jtln_hf.cost.cost_from_features`, then the
  recipe's ``column`` normalisation) from ``--per_class`` source and ``--target_per_class`` target
  feature rows per class of ``--dim`` dimensions: synthetic float32 features, as the model's
  ``pooler_output`` gives them (2048: a ResNet-50's pooled features). Always numpy on the CPU, as
  the recipe builds it. The recipe reads ``--cost_samples_per_class`` (default 200) source images
  per class and every labelled target image. Peak memory: ``tracemalloc`` (numpy reports its
  buffers to it), in a separate untimed pass, features included.
* ``ot``: the OT term alone, forward + backward: ``wasserstein_loss`` on the softmaxes of
  ``--ot_batch`` rows of source and target logits, the recipe's settings (ε 0.05, 50 iterations,
  the ``entropic`` objective, solver resolved once and ``check_inputs=False``, as
  as :func:`jtln_hf.training.loss.jtln_loss` calls it), on the cost built above.
* ``joint``: a backbone step at the same label space: forward + backward + AdamW step of a
  :class:`JointImageClassifier` (timm ``--backbone`` with a 1,000-class source head and a 200-class
  target head) on a batch of ``--batch`` images at ``--image_size`` px, half of them target rows;
  ``jtln``: the same step with the OT term on its target rows (``benchmarks/bench_step.py``'s steps).

Peak memory of the torch parts: ``max_memory_allocated`` on a GPU; on a CPU the peak of the torch
profiler's memory timeline (live tensors, as ``bench_ot.py`` measures it). Prints medians and the
ratios ``ot / joint``, ``jtln / joint`` and ``cost / joint``.

    python benchmarks/bench_scale.py                                  # CPU: resnet18, 20 rows per class
    python benchmarks/bench_scale.py --device cuda --backbone resnet50 --batch 256 --per_class 200
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np
import torch
from bench_ot import _profiled_peak_mib
from bench_step import alternate, build, make_step

from jtln_hf.cost import cost_from_features, normalize_cost
from jtln_hf.training.loss import LossSettings
from jtln_hf.sinkhorn import resolve_method, wasserstein_loss


def synthetic_features(args):
    """float32 features with class structure: each class a Gaussian around its own centre."""
    rng = np.random.default_rng(args.seed)
    centres = rng.normal(size=(args.num_source_labels, args.dim)).astype(np.float32)
    ys = np.repeat(np.arange(args.num_source_labels), args.per_class)
    drawn_from = rng.choice(args.num_source_labels, args.num_target_labels, replace=False)
    yt = np.repeat(np.arange(args.num_target_labels), args.target_per_class)
    xs = centres[ys] + rng.normal(scale=0.5, size=(len(ys), args.dim)).astype(np.float32)
    xt = centres[drawn_from][yt] + rng.normal(scale=0.5, size=(len(yt), args.dim)).astype(np.float32)
    return xs, ys, xt, yt


def build_cost(features, args):
    xs, ys, xt, yt = features
    raw = cost_from_features(xs, ys, xt, yt, method="mmd", num_source_labels=args.num_source_labels,
                             num_target_labels=args.num_target_labels, normalize="none")  # fmt: skip
    return normalize_cost(raw, "column")


def traced_cost(args):
    """The cost and the peak of numpy's and Python's allocations while the features are made and it is built (MiB)."""
    tracemalloc.start()
    features = synthetic_features(args)
    cost = build_cost(features, args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return cost, features, peak / 2**20


def make_ot_step(cost, args):
    g = torch.Generator().manual_seed(args.seed)
    zs = torch.randn(args.ot_batch, args.num_source_labels, generator=g).to(args.device)
    zt = torch.randn(args.ot_batch, args.num_target_labels, generator=g).to(args.device)
    method = resolve_method(cost, epsilon=args.epsilon)  # once per cost, as JTLNTrainer does

    def step():
        a, b = zs.clone().requires_grad_(), zt.clone().requires_grad_()
        value = wasserstein_loss(a.softmax(1), b.softmax(1), cost, epsilon=args.epsilon, iterations=args.iterations,
                                 method=method, check_inputs=False, objective="entropic")  # fmt: skip
        value.mean().backward()
        if args.device == "cuda":
            torch.cuda.synchronize()

    return step, method


def peak_mib(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return _profiled_peak_mib(fn)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num_source_labels", type=int, default=1000)
    p.add_argument("--num_target_labels", type=int, default=200)
    p.add_argument("--per_class", type=int, default=20, help="source feature rows per class (the recipe: 200)")
    p.add_argument("--target_per_class", type=int, default=None, help="target rows per class (default --per_class)")
    p.add_argument("--dim", type=int, default=2048, help="feature dimension (ResNet-50: 2048, ResNet-18: 512)")
    p.add_argument("--ot_batch", type=int, default=128, help="target rows of the OT term alone")
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32, help="images per backbone step, half of them target rows")
    p.add_argument("--bf16", action="store_true", help="autocast the backbone steps to bfloat16")
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (cost build, then --steps of each step kind)")
    p.add_argument("--steps", type=int, default=3, help="steps of each kind per round, alternated")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.target_per_class = args.target_per_class or args.per_class

    cost_np, features, cost_peak = traced_cost(args)  # untimed: tracemalloc slows allocations
    cost = torch.tensor(cost_np, dtype=torch.float32, device=args.device)
    ot_step, method = make_ot_step(cost, args)
    model_args = SimpleNamespace(backbone=args.backbone, in_chans=3, image_size=args.image_size, batch=args.batch,
                                 num_source_labels=args.num_source_labels, num_target_labels=args.num_target_labels,
                                 device=args.device, bf16=args.bf16, channels_last=args.channels_last)  # fmt: skip
    model, x, labels, domain, n_source = build(model_args)
    model.set_cost_matrix(cost)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses = {"joint": LossSettings(ot_loss_weight=0.0),
              "jtln": LossSettings(ot_epsilon=args.epsilon, ot_iterations=args.iterations, ot_objective="entropic")}
    steps = {"ot": ot_step, **{name: make_step(model, x, labels, domain, n_source, loss, optimizer, model_args)
                               for name, loss in losses.items()}}  # fmt: skip
    for step in steps.values():  # warm-up: allocator, kernels, the solver's resolution
        step()
    peaks = {name: peak_mib(step, args.device) for name, step in steps.items()}

    times = {name: [] for name in ("cost", *steps)}
    for _ in range(args.rounds):
        start = time.perf_counter()
        build_cost(features, args)
        times["cost"].append(time.perf_counter() - start)
        alternate(steps, args.steps, times)
    med = {name: statistics.median(t) for name, t in times.items()}

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    xs, _, xt, _ = features
    print(f"{device}; label space {args.num_source_labels} x {args.num_target_labels}; torch {torch.__version__}")
    print(f"cost : features-mmd + column normalisation, {args.per_class} source / {args.target_per_class} target rows "
          f"per class x {args.dim} dims ({len(xs):,} + {len(xt):,} rows, {(xs.nbytes + xt.nbytes) / 2**20:.0f} MiB "
          f"of float32 features): {med['cost']:.2f} s, peak {cost_peak:.0f} MiB (tracemalloc, features included)")
    print(f"ot   : OT term fwd+bwd, {args.ot_batch} rows, eps {args.epsilon}, {args.iterations} it., {method} domain: "
          f"{1e3 * med['ot']:.1f} ms, peak {peaks['ot']:.1f} MiB")
    for name in ("joint", "jtln"):
        what = "no OT" if name == "joint" else f"+ OT on its {args.batch - n_source} target rows"
        print(f"{name:5}: {args.backbone} {args.image_size}px batch {args.batch} fwd+bwd+AdamW, {what}, bf16={args.bf16}: "
              f"{1e3 * med[name]:.1f} ms, peak {peaks[name]:.0f} MiB")  # fmt: skip
    print(f"ratios (medians of {args.rounds} cost builds and {args.rounds * args.steps} steps of each kind): "
          f"ot / joint = {med['ot'] / med['joint']:.4f}x | jtln / joint = {med['jtln'] / med['joint']:.3f}x | "
          f"cost / joint = {med['cost'] / med['joint']:.1f}x")  # fmt: skip
    for name in ("ot", "jtln"):  # each round times the kinds back to back
        ratios = sorted(t / j for t, j in zip(times[name], times["joint"]))
        q1, q2, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        print(f"{name} / joint per step pair: median {q2:.4f}x, quartiles {q1:.4f}-{q3:.4f}x")


if __name__ == "__main__":
    main()
