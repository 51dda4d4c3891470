#!/usr/bin/env python
"""Our batched OT loss vs POT, forward + backward, side by side in one run: time and peak memory.

Compared, at the same problem and the same number of Sinkhorn iterations (no early stop):
* ``ours``        -- ``jtln_hf.sinkhorn.wasserstein_loss`` (envelope gradients), inputs checked (one host sync);
* ``ours-nosync`` -- the same with ``check_inputs=False`` and the solver resolved beforehand, as
  :class:`jtln_hf.training.loss.JTLNLoss` calls it in training (no host sync);
* ``ours-tol``    -- ``check_inputs=False`` and ``tol=1e-5``: stops once the row marginals are within
  1e-5, tested every 10 iterations (``--iterations`` is then the maximum);
* ``pot-batch``   -- ``ot.batch.solve_batch(..., grad="autodiff")``, back-propagating through the iterations;
* ``pot-loop``    -- a Python loop of ``ot.sinkhorn2`` over the rows (POT's torch backend, autodiff).

Each variant runs in its own subprocess so that peak memory is its own.  Peak memory is the peak
of live tensor bytes during one forward+backward: ``torch.cuda.max_memory_allocated`` on a GPU;
on a CPU, which has no such counter, the peak of the torch profiler's memory timeline (every
allocation and free of the CPU allocator, by category), measured in a separate pass from the
timing (not for ``pot-loop``, whose ~25,000 small ops would take the profiler many minutes).
The rise of the process's peak RSS is printed beside it on a CPU, as an upper bound that
includes the allocator's and libraries' own pages.  For our variants the table also gives the
largest relative difference of the values from POT's *converged* Sinkhorn (float64, stopThr
1e-12) on 8 of the rows.  Prints a table and the ratios (POT time / ours, our memory / POT memory).

``--objective`` (``paper``, ``entropic`` or ``kl``, see :func:`jtln_hf.sinkhorn.wasserstein_loss`) is
passed to our variants; the accuracy reference is then POT's value of that objective
(``ot.sinkhorn2`` for ``paper``, ``ot.solve(..., reg_type="entropy" / "KL")`` otherwise) and
``pot-batch`` returns ``solve_batch``'s ``value`` with the matching ``reg_type`` (``pot-loop``
always returns the linear cost: its time does not depend on it).

    python benchmarks/bench_ot.py                    # CPU, both shapes
    python benchmarks/bench_ot.py --objective kl     # the KL objective
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


TOL = 1e-5
_METHODS: dict[tuple[int, float], str] = {}
POT_REG_TYPE = {"paper": "entropy", "entropic": "entropy", "kl": "KL"}


def _ours(variant, x, y, cost, epsilon, iterations, objective="paper"):
    from jtln_hf.sinkhorn import resolve_method, wasserstein_loss

    if variant == "ours":
        return wasserstein_loss(x, y, cost, epsilon=epsilon, iterations=iterations, objective=objective)
    key = (id(cost), epsilon)
    if key not in _METHODS:  # resolved once per cost, as JTLNLoss does: it reads the cost on the host
        _METHODS[key] = resolve_method(cost, epsilon=epsilon)
    method = _METHODS[key]
    tol = TOL if variant == "ours-tol" else None
    return wasserstein_loss(x, y, cost, epsilon=epsilon, iterations=iterations, method=method, tol=tol,
                            check_inputs=False, objective=objective)  # fmt: skip


def _step(variant, a, b, cost, epsilon, iterations, objective="paper"):
    import ot
    import torch

    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    if variant.startswith("ours"):
        loss = _ours(variant, x, y, cost, epsilon, iterations, objective).sum()
    elif variant == "pot-batch":
        res = ot.batch.solve_batch(
            M=cost.expand(x.shape[0], *cost.shape), reg=epsilon, a=x, b=y, max_iter=iterations, tol=0.0,
            method="sinkhorn", reg_type=POT_REG_TYPE[objective].lower(), grad="autodiff",
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


def _profiled_peak_mib(fn):
    """Peak live CPU tensor memory of ``fn()`` from the torch profiler's memory timeline (MiB)."""
    import tempfile
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated for CUDA in favour of memory snapshots
        prof.export_memory_timeline(f"{tmp}/timeline.json", device="cpu")
        with open(f"{tmp}/timeline.json") as f:
            _, sizes = json.load(f)
    return max((sum(s) for s in sizes), default=0) / 2**20


def _accuracy(variant, a, b, cost, epsilon, iterations, objective="paper", rows=8):
    """Largest relative difference of our values from POT's converged Sinkhorn (float64) on ``rows`` rows."""
    import numpy as np
    import ot
    import torch

    from jtln_hf.sinkhorn import PROB_FLOOR

    idx = torch.linspace(0, a.shape[0] - 1, rows).long()
    ours = _ours(variant, a[idx], b[idx], cost, epsilon, iterations, objective).double().cpu().numpy()

    def simplex(p):  # the histograms our solver sees: floored and renormalised
        p = p.double().clamp_min(PROB_FLOOR)
        return (p / p.sum(dim=1, keepdim=True)).cpu().numpy()

    sa, sb, c = simplex(a[idx]), simplex(b[idx]), cost.double().cpu().numpy()
    if objective == "paper":
        ref = np.array([ot.sinkhorn2(sa[i], sb[i], c, epsilon, numItermax=100_000, stopThr=1e-12) for i in range(rows)])
    else:
        ref = np.array([ot.solve(c, sa[i], sb[i], reg=epsilon, reg_type=POT_REG_TYPE[objective], max_iter=100_000,
                                 tol=1e-12).value for i in range(rows)])  # fmt: skip
    return float(np.max(np.abs(ours - ref) / np.abs(ref)))


def _measure(variant, shape, device, epsilon, iterations, repeats, objective="paper"):
    """Median seconds per forward+backward, peak memory above the inputs (MiB), and accuracy.

    GPU: ``max_memory_allocated`` minus what was allocated before. CPU: the peak of the profiler's
    memory timeline over one forward+backward, and the rise of the process's peak RSS over its
    value after imports and inputs (the child does nothing else).
    """
    import torch

    a, b, cost = _problem(*SHAPES[shape], device)
    # Start the BLAS/OpenMP machinery (thread pools, workspaces) before the baseline, so that the
    # CPU figure is the solver's own memory, not the libraries' one-off set-up.
    _ = (a @ cost).sum() + (b @ cost.T).sum()
    base = torch.cuda.memory_allocated() if device == "cuda" else _peak_rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _step(variant, a, b, cost, epsilon, iterations, objective)  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _step(variant, a, b, cost, epsilon, iterations, objective)
        times.append(time.perf_counter() - start)
    result = {"seconds": statistics.median(times)}
    if device == "cuda":
        result["peak_mib"] = max((torch.cuda.max_memory_allocated() - base) / 2**20, 0.0)
    else:
        result["rss_mib"] = max(_peak_rss_mib() - base, 0.0)
        if variant != "pot-loop":  # thousands of small ops: the profiled pass would take many minutes
            result["peak_mib"] = _profiled_peak_mib(lambda: _step(variant, a, b, cost, epsilon, iterations, objective))
    if variant.startswith("ours"):
        result["rel_err"] = _accuracy(variant, a, b, cost, epsilon, iterations, objective)
    return result


def child(args):
    import ot  # noqa: F401
    import torch

    import jtln_hf.sinkhorn  # noqa: F401

    torch.set_num_threads(args.threads)
    print(json.dumps(_measure(args.variant, args.shape, args.device, args.epsilon, args.iterations, args.repeats,
                              args.objective)))  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--variants", nargs="+", default=["ours", "ours-nosync", "ours-tol", "pot-batch", "pot-loop"])
    p.add_argument("--epsilon", type=float, default=0.1)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--objective", default="paper", choices=["paper", "entropic", "kl"],
                   help="wasserstein_loss(objective=...) of our variants (and the reference's value); paper, "
                   "the linear cost ot.sinkhorn2 returns, is what benchmarks/README.md's tables measured")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        return child(args)
    rows = {}
    for shape in args.shapes:
        for variant in args.variants:
            repeats = args.repeats if variant.startswith("ours") else max(1, args.repeats // 2)
            cmd = [sys.executable, __file__, "--variant", variant, "--shape", shape, "--device", args.device,
                   "--epsilon", str(args.epsilon), "--iterations", str(args.iterations),
                   "--repeats", str(repeats), "--threads", str(args.threads),
                   "--objective", args.objective]  # fmt: skip
            # A fixed mmap threshold: glibc then returns every large freed block to the system at
            # once, so the child's peak RSS tracks its live tensors instead of allocator leftovers.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                rows[shape, variant] = {"error": out.stderr.strip().splitlines()[-1][:120]}
            else:
                rows[shape, variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"device={args.device} threads={args.threads} epsilon={args.epsilon} iterations={args.iterations} "
          f"objective={args.objective}")  # fmt: skip
    rss = args.device != "cuda"
    print(f"| shape (B, L_s, L_t) | variant | ms (fwd+bwd) | peak MiB (tensors) |{' peak RSS rise MiB |' * rss} "
          "time / ours | ours mem / this mem | max rel. diff. from POT converged |")  # fmt: skip
    print("|---|---|---|---|---|---|---|" + "---|" * rss)
    for shape in args.shapes:
        ours = rows.get((shape, "ours"), {})
        for variant in args.variants:
            r = rows[shape, variant]
            if "error" in r:
                print(f"| {shape} {SHAPES[shape]} | {variant} | failed: {r['error']} |" + " |" * (4 + rss))
                continue
            speed = r["seconds"] / ours["seconds"] if "seconds" in ours else float("nan")
            mem = ours["peak_mib"] / r["peak_mib"] if "peak_mib" in ours and r.get("peak_mib") else float("nan")
            err = f"{r['rel_err']:.1e}" if "rel_err" in r else ""
            peak = f"{r['peak_mib']:.2f}" if "peak_mib" in r else "n/a"
            print(f"| {shape} {SHAPES[shape]} | {variant} | {1e3 * r['seconds']:.2f} | {peak} |"
                  + (f" {r['rss_mib']:.1f} |" if rss else "")
                  + f" {speed:.2f}x | {mem:.4f} | {err} |")  # fmt: skip


if __name__ == "__main__":
    main()
