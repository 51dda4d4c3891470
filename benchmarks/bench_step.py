#!/usr/bin/env python
"""JTLN training step / joint training step, measured side by side in one run.

All steps run the same model, batch and optimiser; they differ only by the OT term:
``joint`` (``ot_loss_weight`` 0), ``jtln`` (fixed ``--iterations``, the default) and ``jtln-tol``
(``ot_tol=--tol``, ``--iterations`` the maximum). Steps alternate (joint, jtln, jtln-tol, joint,
...) so that machine noise hits all alike; the ratios of the medians are printed. Inputs are
synthetic tensors (the data loader is the same for all and is left out); the rows are split as
``JTLNTrainer.compute_loss`` splits them (:func:`jtln_hf.training.loss.split_rows`), and the loss is called as
the trainer calls it (:func:`jtln_hf.training.loss.jtln_loss` with the solver chosen once and the checks read a
step later, :mod:`jtln_hf.training.state`). On a GPU the script also
counts the host-device synchronisations of one step of each kind (``torch.cuda.set_sync_debug_mode``).

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
from jtln_hf.training.loss import LossSettings, jtln_loss, split_rows, step_stats, wrong_domain_rows
from jtln_hf.training.state import DeferredCheck, SolverChoice


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
    return model, x, labels, domain, n_source


def make_step(model, x, labels, domain, n_source, settings, optimizer, args):
    solver, checks = SolverChoice(settings), DeferredCheck()  # what JTLNTrainer keeps between steps

    def step():
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            out = model(pixel_values=x)
            source_rows, target_rows = split_rows(domain, n_source)  # as JTLNTrainer.compute_loss does
            cost = model.cost_matrix
            parts = jtln_loss(out.logits, out.source_logits, labels, cost, settings, source_rows=source_rows,
                              target_rows=target_rows, solver=solver(cost) if settings.uses_ot else None)  # fmt: skip
            checks.queue(step_stats(wrong_domain_rows(domain, source_rows, target_rows), parts.pop("prob_ranges", None)))
            loss = parts["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()

    return step


def _sync_warnings(fn) -> int:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def count_syncs(step) -> int:
    """Host-device synchronisations during one call of ``step`` (CUDA only), less the final
    ``torch.cuda.synchronize()`` that ends every timed step (counted as it counts on its own)."""
    return _sync_warnings(step) - _sync_warnings(torch.cuda.synchronize)


def alternate(steps: dict, rounds: int, times: dict | None = None) -> dict:
    """Run every step of ``steps`` back to back, ``rounds`` times; append each one's seconds to ``times[name]``."""
    times = {name: [] for name in steps} if times is None else times
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


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
    p.add_argument("--tol", type=float, default=1e-5, help="ot_tol of the jtln-tol variant")
    p.add_argument("--steps", type=int, default=30, help="measured steps of each kind")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--objective", default="paper", choices=["paper", "entropic", "kl"],
                   help="ot_objective of the two JTLN variants")
    args = p.parse_args()

    model, x, labels, domain, n_source = build(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses = {
        "joint": LossSettings(ot_loss_weight=0.0),
        "jtln": LossSettings(ot_loss_weight=1.0, ot_epsilon=args.epsilon, ot_iterations=args.iterations,
                             ot_objective=args.objective),
        "jtln-tol": LossSettings(ot_loss_weight=1.0, ot_epsilon=args.epsilon, ot_iterations=args.iterations,
                                 ot_tol=args.tol, ot_objective=args.objective),
    }
    steps = {name: make_step(model, x, labels, domain, n_source, loss, optimizer, args) for name, loss in losses.items()}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = alternate(steps, args.steps)
    med = {name: statistics.median(t) for name, t in times.items()}
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{device}: {args.backbone} {args.image_size}px batch {args.batch} (half target), "
          f"cost {args.num_source_labels}x{args.num_target_labels}, eps {args.epsilon}, {args.iterations} it., "
          f"bf16={args.bf16} channels_last={args.channels_last}, ot_objective {args.objective}")  # fmt: skip
    print(" | ".join(f"{name} step {1e3 * m:.2f} ms" for name, m in med.items()))
    print(f"JTLN / joint = {med['jtln'] / med['joint']:.3f}x | JTLN (tol {args.tol:g}) / joint = "
          f"{med['jtln-tol'] / med['joint']:.3f}x   (ratio of medians)")  # fmt: skip
    # Each round times the variants back to back: the per-round ratio cancels slow drifts of the machine.
    for name in ("jtln", "jtln-tol"):
        ratios = sorted(t / j for t, j in zip(times[name], times["joint"]))
        q1, q2, q3 = statistics.quantiles(ratios, n=4)
        print(f"{name} / joint per round: median {q2:.3f}x, quartiles {q1:.3f}-{q3:.3f}x")
    if args.device == "cuda":
        print("host syncs per step: " + ", ".join(f"{name} {count_syncs(step)}" for name, step in steps.items()))


if __name__ == "__main__":
    main()
