#!/usr/bin/env python
"""Our batched OT loss vs POT, forward + backward, side by side in one run: time and peak memory.

Compared, at the same problem and the same number of Sinkhorn iterations (no early stop):
* ``ours``     -- ``jtln_hf.ot.wasserstein_loss`` (envelope gradients);
* ``pot-batch`` -- ``ot.batch.solve_batch(..., grad="autodiff")``, back-propagating through the iterations;
* ``pot-loop``  -- a Python loop of ``ot.sinkhorn2`` over the rows (POT's torch backend, autodiff).

Each variant runs in its own subprocess so that peak memory is its own: CUDA's
``max_memory_allocated`` on a GPU, the rise of peak RSS over the process's baseline on a CPU.
Prints a table and the ratios (POT time / ours, our memory / POT memory).

    python benchmarks/bench_ot.py                    # CPU, both shapes
    python benchmarks/bench_ot.py --device cuda      # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPES = {"imagenet-like": (128, 1000, 256), "boeing": (32, 78, 22)}  # (B, L_s, L_t)


def _problem(batch, ls, lt, device, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, ls, generator=g).softmax(-1).to(device)
    b = torch.randn(batch, lt, generator=g).softmax(-1).to(device)
    cost = torch.rand(ls, lt, generator=g).to(device)
    return a, b, cost


def _step(variant, a, b, cost, epsilon, iterations):
    import ot
    import torch

    from jtln_hf.ot import wasserstein_loss

    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    if variant == "ours":
        loss = wasserstein_loss(x, y, cost, epsilon=epsilon, iterations=iterations).sum()
    elif variant == "pot-batch":
        res = ot.batch.solve_batch(
            M=cost.expand(x.shape[0], *cost.shape), reg=epsilon, a=x, b=y, max_iter=iterations, tol=0.0,
            method="sinkhorn", reg_type="entropy", grad="autodiff",
        )  # fmt: skip
        loss = res.value.sum()
    else:
        loss = sum(ot.sinkhorn2(x[i], y[i], cost, epsilon, numItermax=iterations, stopThr=0.0) for i in range(len(x)))
    loss.backward()
    if a.is_cuda:
        torch.cuda.synchronize()
    return float(loss)


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _measure(variant, shape, device, epsilon, iterations, repeats):
    """Median seconds per forward+backward, and peak memory above the inputs (MiB).

    GPU: ``max_memory_allocated`` minus what was allocated before. CPU: the rise of the
    process's peak RSS over its value after imports and inputs (the child does nothing else).
    """
    import torch

    a, b, cost = _problem(*SHAPES[shape], device)
    # Start the BLAS/OpenMP machinery (thread pools, workspaces) before the baseline, so that the
    # CPU figure is the solver's own memory, not the libraries' one-off set-up.
    _ = (a @ cost).sum() + (b @ cost.T).sum()
    base = torch.cuda.memory_allocated() if device == "cuda" else _peak_rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _step(variant, a, b, cost, epsilon, iterations)  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _step(variant, a, b, cost, epsilon, iterations)
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _peak_rss_mib() - base
    return {"seconds": statistics.median(times), "peak_mib": max(peak, 0.0)}


def child(args):
    import ot  # noqa: F401
    import torch

    import jtln_hf.ot  # noqa: F401

    torch.set_num_threads(args.threads)
    print(json.dumps(_measure(args.variant, args.shape, args.device, args.epsilon, args.iterations, args.repeats)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--variants", nargs="+", default=["ours", "pot-batch", "pot-loop"])
    p.add_argument("--epsilon", type=float, default=0.1)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        return child(args)
    rows = {}
    for shape in args.shapes:
        for variant in args.variants:
            repeats = args.repeats if variant == "ours" else max(1, args.repeats // 2)
            cmd = [sys.executable, __file__, "--variant", variant, "--shape", shape, "--device", args.device,
                   "--epsilon", str(args.epsilon), "--iterations", str(args.iterations),
                   "--repeats", str(repeats), "--threads", str(args.threads)]  # fmt: skip
            # A fixed mmap threshold: glibc then returns every large freed block to the system at
            # once, so the child's peak RSS tracks its live tensors instead of allocator leftovers.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                rows[shape, variant] = {"error": out.stderr.strip().splitlines()[-1][:120]}
            else:
                rows[shape, variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"device={args.device} threads={args.threads} epsilon={args.epsilon} iterations={args.iterations}")
    print("| shape (B, L_s, L_t) | variant | ms (fwd+bwd) | peak MiB | POT time / ours | ours mem / POT mem |")
    print("|---|---|---|---|---|---|")
    for shape in args.shapes:
        ours = rows[shape, "ours"]
        for variant in args.variants:
            r = rows[shape, variant]
            if "error" in r:
                print(f"| {shape} {SHAPES[shape]} | {variant} | failed: {r['error']} | | | |")
                continue
            speed = r["seconds"] / ours["seconds"] if variant != "ours" else 1.0
            mem = ours["peak_mib"] / r["peak_mib"] if variant != "ours" and r["peak_mib"] > 0 else float("nan")
            print(f"| {shape} {SHAPES[shape]} | {variant} | {1e3 * r['seconds']:.2f} | {r['peak_mib']:.1f} "
                  f"| {speed:.1f}x | {mem:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
