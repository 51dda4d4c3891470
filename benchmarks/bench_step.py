#!/usr/bin/env python
"""JTLN training step / joint training step, measured side by side in one run.

Both steps run the same model, batch and optimiser; they differ only by the OT term
(``ot_loss_weight`` 1 vs 0). Steps alternate (joint, JTLN, joint, JTLN, ...) so that machine
noise hits both alike; the ratio of the medians is printed. Inputs are synthetic tensors (the
data loader is the same for both and is left out).

    python benchmarks/bench_step.py                                   # the embedded default, CPU
    python benchmarks/bench_step.py --device cuda --backbone resnet50 --image_size 224 \\
        --batch 256 --num_source_labels 1000 --num_target_labels 256 --bf16 --channels_last
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from jtln_hf import JointImageClassifier, JointImageClassifierConfig
from jtln_hf.loss import JTLNLoss


def build(args):
    config = JointImageClassifierConfig(
        backbone=args.backbone,
        backbone_kwargs={"in_chans": args.in_chans},
        num_source_labels=args.num_source_labels,
        id2label={i: f"t{i}" for i in range(args.num_target_labels)},
    )
    g = torch.Generator().manual_seed(0)
    model = JointImageClassifier(config, cost_matrix=torch.rand(args.num_source_labels, args.num_target_labels, generator=g))
    model.to(args.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, args.in_chans, args.image_size, args.image_size, generator=g).to(args.device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    n_source = args.batch // 2
    domain = torch.cat([torch.zeros(n_source), torch.ones(args.batch - n_source)]).long().to(args.device)
    labels = torch.where(
        domain == 0,
        torch.randint(0, args.num_source_labels, (args.batch,), generator=g).to(args.device),
        torch.randint(0, args.num_target_labels, (args.batch,), generator=g).to(args.device),
    )
    return model, x, labels, domain


def make_step(model, x, labels, domain, loss_fn, optimizer, args):
    def step():
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            out = model(pixel_values=x)
            loss = loss_fn(out.logits, out.source_logits, labels, domain, model.cost_matrix)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()

    return step


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="test_resnet")
    p.add_argument("--in_chans", type=int, default=1)
    p.add_argument("--image_size", type=int, default=28)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--num_source_labels", type=int, default=5)
    p.add_argument("--num_target_labels", type=int, default=5)
    p.add_argument("--epsilon", type=float, default=0.05)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--steps", type=int, default=30, help="measured steps of each kind")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--channels_last", action="store_true")
    args = p.parse_args()

    model, x, labels, domain = build(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    joint = make_step(model, x, labels, domain, JTLNLoss(ot_loss_weight=0.0), optimizer, args)
    jtln = make_step(
        model, x, labels, domain,
        JTLNLoss(ot_loss_weight=1.0, ot_epsilon=args.epsilon, ot_iterations=args.iterations), optimizer, args,
    )  # fmt: skip
    for _ in range(args.warmup):
        joint()
        jtln()
    times = {"joint": [], "jtln": []}
    for _ in range(args.steps):
        for name, step in (("joint", joint), ("jtln", jtln)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    j, t = statistics.median(times["joint"]), statistics.median(times["jtln"])
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{device}: {args.backbone} {args.image_size}px batch {args.batch} (half target), "
          f"cost {args.num_source_labels}x{args.num_target_labels}, eps {args.epsilon}, {args.iterations} it., "
          f"bf16={args.bf16} channels_last={args.channels_last}")  # fmt: skip
    print(f"joint step {1e3 * j:.2f} ms | JTLN step {1e3 * t:.2f} ms | JTLN / joint = {t / j:.3f}x")


if __name__ == "__main__":
    main()
