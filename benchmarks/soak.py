#!/usr/bin/env python
"""Soak test of the JTLN training step (outside ``make test``): many steps under random settings.

    python benchmarks/soak.py                 # 2,000 steps, ~4 min on one CPU thread
    python benchmarks/soak.py --steps 100     # a quick look

Every step draws, independently:

* ε log-uniform in [1e-3, 1] (both Sinkhorn solvers: ``"auto"`` takes the kernel domain for
  large ε and the log domain for small ε), Sinkhorn iterations in [5, 100];
* λ_s and λ_ot uniform in [0, 2];
* the batch composition: 64 rows of which a uniform number in [0, 64] are source rows (so
  all-source and all-target batches happen), rows drawn at random,

and trains ``test_resnet`` with AdamW on the embedded Fashion-MNIST split (5 source classes,
400 images each, and 5 target classes with 5 shots), through the real data path
(:func:`jtln_hf.data.build_joint_dataset`, timm's training transform, :class:`jtln_hf.training.loss.JTLNLoss`).

It asserts, and the exit code says (0 = all held):

1. **No NaN/inf**: every loss part and the gradient norm are finite at every step.
2. **Bounded memory**: the resident set size grows by less than ``--max_rss_growth_mib``
   (default 64 MiB) between the end of the warm-up (10% of the steps) and the end. A leak of
   one batch of images (64 x 28 x 28 float32 = 0.2 MiB) per step would add 400 MiB over 2,000
   steps; allocator caching of varying batch shapes stays within a few MiB.
3. **Learning**: a probe loss -- the full JTLN objective at fixed ε = 0.05, λ_s = λ_ot = 1 on a
   fixed batch of 32 source + 32 target images, evaluated in eval mode -- ends below its
   starting value, and the mean cross-entropy of the last 10% of steps is below that of the
   first 10%.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from jtln_hf import JointImageClassifier, JointImageClassifierConfig  # noqa: E402
from jtln_hf import data as jdata  # noqa: E402
from jtln_hf.data.fashion_mnist import FASHION_MNIST_PRIOR_PATH
from jtln_hf.cost import load_cost, normalize_cost  # noqa: E402
from jtln_hf.training.loss import JTLNLoss  # noqa: E402
from jtln_hf.sinkhorn import resolve_method  # noqa: E402

BATCH = 64


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_rss_growth_mib", type=float, default=64.0)
    parser.add_argument("--source_per_class", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def build(seed: int, source_per_class: int):
    """Model (with the column-normalised prior cost), transformed joint dataset, its domains."""
    source, pool = jdata.split_by_classes(jdata.load_fashion_mnist("train"), jdata.DEFAULT_SOURCE_CLASSES,
                                          jdata.DEFAULT_TARGET_CLASSES)
    source = jdata.sample_shots(source, source_per_class, seed=seed)
    target = jdata.sample_shots(pool, 5, seed=seed)
    joint = jdata.build_joint_dataset(source, target)
    train_tf = jdata.build_transform(jdata.FASHION_MNIST_DATA_CONFIG, training=True, scale=(0.7, 1.0))
    eval_tf = jdata.build_transform(jdata.FASHION_MNIST_DATA_CONFIG, training=False)
    config = JointImageClassifierConfig(
        backbone="test_resnet", backbone_kwargs={"in_chans": 1}, data_config=dict(jdata.FASHION_MNIST_DATA_CONFIG),
        source_id2label=dict(enumerate(source.features["label"].names)),
        id2label=dict(enumerate(target.features["label"].names)),
    )
    torch.manual_seed(seed)
    cost = normalize_cost(load_cost(FASHION_MNIST_PRIOR_PATH, jdata.DEFAULT_SOURCE_CLASSES,
                                    jdata.DEFAULT_TARGET_CLASSES), "column")
    model = JointImageClassifier(config, cost_matrix=cost)
    train = joint.with_transform(jdata.make_batch_transform(train_tf, in_chans=1))
    probe = joint.with_transform(jdata.make_batch_transform(eval_tf, in_chans=1))
    domains = np.asarray(joint.select_columns(["domain"]).with_format("numpy")[:]["domain"])
    return model, train, probe, domains


def batch_of(ds, rows) -> dict[str, torch.Tensor]:
    return jdata.collate(ds.__getitems__([int(r) for r in rows]))


def probe_loss(model, batch) -> float:
    loss = JTLNLoss(source_loss_weight=1.0, ot_loss_weight=1.0, ot_epsilon=0.05)
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=batch["pixel_values"])
        value = loss(out.logits, out.source_logits, batch["labels"], batch["domain"], model.cost_matrix)["loss"]
    model.train()
    return float(value)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    model, train, probe, domains = build(args.seed, args.source_per_class)
    source_rows, target_rows = np.flatnonzero(domains == 0), np.flatnonzero(domains == 1)
    probe_batch = batch_of(probe, np.concatenate([rng.choice(source_rows, 32, replace=False),
                                                  rng.choice(target_rows, 25, replace=False),
                                                  rng.choice(target_rows, 7, replace=False)]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4)
    warmup = max(1, args.steps // 10)
    probes = [(0, probe_loss(model, probe_batch))]
    ce, rss_after_warmup, failures = [], None, []
    methods_used = {"kernel": 0, "log": 0}
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        eps = float(10 ** rng.uniform(-3, 0))
        loss_fn = JTLNLoss(source_loss_weight=float(rng.uniform(0, 2)), ot_loss_weight=float(rng.uniform(0, 2)),
                           ot_epsilon=eps, ot_iterations=int(rng.integers(5, 101)))
        methods_used[resolve_method(model.cost_matrix, epsilon=eps)] += 1
        n_source = int(rng.integers(0, BATCH + 1))
        rows = np.concatenate([rng.choice(source_rows, n_source), rng.choice(target_rows, BATCH - n_source)])
        batch = batch_of(train, rng.permutation(rows))
        out = model(pixel_values=batch["pixel_values"])
        parts = loss_fn(out.logits, out.source_logits, batch["labels"], batch["domain"], model.cost_matrix)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9))
        values = {k: float(v.detach()) for k, v in parts.items()} | {"grad_norm": grad_norm}
        if not all(math.isfinite(v) for v in values.values()):
            failures.append(f"step {step}: non-finite {values} (eps={eps:.3g}, n_source={n_source})")
            break
        optimizer.step()
        ce.append(values["ce_target"] + values["ce_source"])
        if step == warmup:
            gc.collect()
            rss_after_warmup = rss_mib()
        if step % max(1, args.steps // 8) == 0 or step == args.steps:
            probes.append((step, probe_loss(model, probe_batch)))
            print(f"step {step:5d}  probe loss {probes[-1][1]:.4f}  rss {rss_mib():7.1f} MiB  "
                  f"{(time.perf_counter() - start) / step * 1000:.0f} ms/step", flush=True)
    gc.collect()
    rss_end = rss_mib()
    k = max(1, len(ce) // 10)
    first, last = float(np.mean(ce[:k])), float(np.mean(ce[-k:]))
    growth = rss_end - (rss_after_warmup if rss_after_warmup is not None else rss_end)
    if growth >= args.max_rss_growth_mib:
        failures.append(f"RSS grew by {growth:.1f} MiB after warm-up (bound {args.max_rss_growth_mib} MiB)")
    if not probes[-1][1] < probes[0][1]:
        failures.append(f"probe loss did not go down: {probes[0][1]:.4f} -> {probes[-1][1]:.4f}")
    if not last < first:
        failures.append(f"mean cross-entropy did not go down: {first:.4f} -> {last:.4f}")
    print(f"\nsoak: {len(ce)}/{args.steps} steps in {time.perf_counter() - start:.0f} s | "
          f"solver kernel {methods_used['kernel']} / log {methods_used['log']} steps | "
          f"probe loss {probes[0][1]:.4f} -> {probes[-1][1]:.4f} | "
          f"CE first/last 10% {first:.4f} -> {last:.4f} | "
          f"RSS after warm-up {rss_after_warmup or float('nan'):.1f} MiB, end {rss_end:.1f} MiB "
          f"(growth {growth:+.1f} MiB, bound {args.max_rss_growth_mib:g})")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else "FAILED")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
