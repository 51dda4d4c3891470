#!/usr/bin/env python
"""LoRA adapters against full fine-tuning: one JTLN training step's time and peak memory, side by side.

The same model (a timm ViT with random weights, ``vit_small_patch16_224`` at 224 px by default), batch
and JTLN loss; ``full`` trains every weight with AdamW, ``lora`` wraps the backbone with
:func:`jtln_hf.training.lora.add_lora` (the recipe's ``--lora_rank``, default layers) and AdamW trains
the adapters and the heads. Time: the two kinds of step alternate in one process (machine noise hits
both alike); the ratio of the medians is printed. Memory: each variant in its own process, the peak
of live tensors over one step once AdamW's moments exist (weights, moments, activations, gradients:
the torch profiler's memory timeline on a CPU, ``max_memory_allocated`` on a GPU), and the rise of
the process's peak RSS from before the model is built (which adds the allocator's own pages).

    python benchmarks/bench_lora.py                                   # CPU, batch 16
    python benchmarks/bench_lora.py --device cuda --batch 128 --bf16  # one GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from jtln_hf import JointImageClassifier, JointImageClassifierConfig
from jtln_hf.training.lora import add_lora, lora_settings, trainable_share
from jtln_hf.training.loss import LossSettings, jtln_loss, split_rows

from bench_ot import _profiled_peak_mib  # the torch profiler's peak of live CPU tensors (this folder)


def build(args, variant: str):
    """The model (adapters for ``lora``), one batch of half source, half target rows, and AdamW on what trains."""
    g = torch.Generator().manual_seed(0)
    config = JointImageClassifierConfig(backbone=args.backbone, backbone_kwargs={"img_size": args.image_size},
                                        num_source_labels=args.num_source_labels,
                                        id2label={i: f"t{i}" for i in range(args.num_target_labels)})  # fmt: skip
    torch.manual_seed(0)
    model = JointImageClassifier(config, cost_matrix=torch.rand(args.num_source_labels, args.num_target_labels,
                                                                generator=g))  # fmt: skip
    if variant == "lora":
        add_lora(model, lora_settings(args.rank, None, 0.0, None, model.backbone, args.backbone))
    model.to(args.device).train()
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(args.device)
    n_source = args.batch // 2
    labels = torch.cat([torch.randint(0, args.num_source_labels, (n_source,), generator=g),
                        torch.randint(0, args.num_target_labels, (args.batch - n_source,), generator=g)])  # fmt: skip
    domain = torch.cat([torch.zeros(n_source), torch.ones(args.batch - n_source)]).long()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    settings = LossSettings(ot_loss_weight=1.0)
    labels, domain = labels.to(args.device), domain.to(args.device)

    def step():
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            out = model(pixel_values=x)
            source_rows, target_rows = split_rows(domain, n_source)  # as JTLNTrainer.compute_loss does
            loss = jtln_loss(out.logits, out.source_logits, labels, model.cost_matrix, settings,
                             source_rows=source_rows, target_rows=target_rows)["loss"]  # fmt: skip
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()

    return model, step


def memory(args, variant: str) -> dict:
    """In this process (started for ``variant`` alone): the peak RSS rise over build + steps; the peak of live
    tensors over one step after them (CPU: the profiler's timeline; GPU: ``max_memory_allocated``)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    model, step = build(args, variant)
    for _ in range(args.memory_steps):  # AdamW's moments exist from the first step on
        step()
    out = {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before}
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mib"] = _profiled_peak_mib(step)
    trained, total = trainable_share(model)
    return {**out, "trained": trained, "total": total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="vit_small_patch16_224")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rank", type=int, default=8, help="--lora_rank of the lora variant")
    p.add_argument("--num_source_labels", type=int, default=5)
    p.add_argument("--num_target_labels", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="measured steps of each kind")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--memory_steps", type=int, default=2)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--memory_of", choices=["full", "lora"], help=argparse.SUPPRESS)  # the per-variant child
    args = p.parse_args()
    if args.memory_of:
        print(json.dumps(memory(args, args.memory_of)))
        return

    mem = {}
    for variant in ("full", "lora"):
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--memory_of", variant], check=True,
                               capture_output=True, text=True)  # fmt: skip
        mem[variant] = json.loads(child.stdout.strip().splitlines()[-1])
    steps = {variant: build(args, variant)[1] for variant in ("full", "lora")}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for k in range(args.warmup + args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if k >= args.warmup:
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.backbone} at {args.image_size} px, batch {args.batch}, {args.device}"
          f"{' bf16' if args.bf16 else ''}, LoRA rank {args.rank}; {args.steps} steps each, alternated")  # fmt: skip
    print("| variant | trained parameters | step (ms, median) | peak live tensors (MiB) | peak RSS rise (MiB) |")
    print("|---|---|---|---|---|")
    for name in ("full", "lora"):
        m = mem[name]
        print(f"| {name} | {m['trained']:,} of {m['total']:,} ({m['trained'] / m['total']:.2%}) | "
              f"{1000 * med[name]:.0f} | {m['peak_mib']:.0f} | {m['rss_mib']:.0f} |")  # fmt: skip
    ratio = [b / a for a, b in zip(times["full"], times["lora"])]
    peak, rss = (mem["lora"][k] / mem["full"][k] for k in ("peak_mib", "rss_mib"))
    print(f"\nLoRA / full: step time {med['lora'] / med['full']:.2f}x (ratio of medians; per-round median "
          f"{statistics.median(ratio):.2f}x), peak live tensors {peak:.2f}x, peak RSS rise {rss:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
