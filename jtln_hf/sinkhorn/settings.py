r"""The solver's settings and inputs: constants, checks, the choice of domain, the prepared histograms.

Every check raises a ``ValueError`` that names the problem and the fix.  :func:`resolve_method` checks
a cost and the settings without solving, so that a trainer fails before its first step; the values of
the histograms are read by :func:`prepare_inputs` in the same single host-device synchronisation as
the cost's range, or, with ``check_inputs=False``, not at all (the caller reads them later and passes
their min/max to :func:`check_histograms`).
"""

from __future__ import annotations

import math
import operator

import torch

from ..configuration_jtln import check_cost_matrix

#: Histogram entries are clamped at this floor, then each row is renormalised to sum to 1.
PROB_FLOOR = 1e-8

#: Largest :math:`(\max C - \min C)/\varepsilon` for which ``method="auto"`` uses the kernel domain:
#: :math:`e^{-50}` and the scalings :math:`e^{\pm(50 + 18.4)}` (18.4 = -log PROB_FLOOR) stay normal
#: float32 numbers; float64 gets the same margin at 500 (``docs/design.md``, "Sinkhorn solver").
KERNEL_MAX_RANGE: dict[torch.dtype, float] = {torch.float32: 50.0, torch.float64: 500.0}

#: With ``tol``, the marginal error is tested every this many iterations (as often as POT tests).
CHECK_EVERY = 10

#: The solvers: ``"kernel"`` (scaling iterations), ``"log"`` (log-sum-exp on the potentials), ``"auto"``.
METHODS = ("auto", "kernel", "log")

#: What :func:`jtln_hf.sinkhorn.wasserstein_loss` returns and differentiates (its ``objective``).
OBJECTIVES = ("paper", "entropic", "kl")


def _positive_finite(value) -> bool:
    try:
        return math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False


def check_settings(
    epsilon: float, iterations: int, method: str, tol: float | None = None, objective: str = "entropic"
) -> int:
    """Validate the solver settings (no tensor work); return ``iterations`` as an int.

    Raises
    ------
    ValueError
        On an unknown ``objective`` or ``method``, ``tol`` not ``None`` or finite and > 0, ``epsilon``
        not finite and > 0, or ``iterations`` not an integer >= 1; the message starts with the
        setting's name (a caller may prefix it, e.g. ``ot_``).
    """
    if objective not in OBJECTIVES:
        raise ValueError(
            f"objective must be one of {OBJECTIVES}, got {objective!r}: 'paper' (value <gamma, C>, "
            "gradient of the entropic value: inconsistent, the paper's), 'entropic' "
            "(<gamma, C> - eps H(gamma)) or 'kl' (<gamma, C> + eps KL(gamma | a b^T))"
        )
    if tol is not None and not _positive_finite(tol):
        raise ValueError(
            f"tol must be None (fixed iterations) or a finite number > 0, got {tol!r}: "
            "e.g. 1e-5 stops once every plan's row sums are within 1e-5 (L1) of source_probs"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not _positive_finite(epsilon):
        raise ValueError(
            f"epsilon must be > 0 and finite, got {epsilon!r}: e.g. 0.05 (JTLN's default)"
        )
    try:
        iterations = operator.index(iterations)
    except TypeError:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}") from None
    if iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    return iterations


def check_histograms(name: str, lo: float, hi: float) -> None:
    """Raise unless a batch of histograms whose smallest entry is ``lo`` and largest ``hi`` holds probabilities.

    ``lo`` and ``hi`` are read from the device by the caller (min and max propagate NaN, so one read
    finds NaN, infinite and negative entries); ``name`` is the argument named in the message.
    """
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(
            f"{name} contains NaN: the histograms must be probabilities; NaN here usually "
            "means the network's logits are already NaN (lower the learning rate, enable "
            "gradient clipping with max_grad_norm, or look for NaN in the inputs)"
        )
    if math.isinf(lo) or math.isinf(hi):
        raise ValueError(
            f"{name} contains infinite entries: pass probabilities, e.g. logits.softmax(-1)"
        )
    if lo < 0:
        raise ValueError(
            f"{name} has negative entries (min {lo:.4g}): pass probabilities "
            "(e.g. logits.softmax(-1)), not logits"
        )


def _method_for_range(method: str, c_min: float, c_max: float, epsilon: float, dtype: torch.dtype) -> str:
    """``"auto"`` -> kernel or log; refuse ``"kernel"`` where its kernel would underflow."""
    ratio = (c_max - c_min) / float(epsilon)
    limit = KERNEL_MAX_RANGE[dtype]
    if method == "auto":
        return "kernel" if ratio <= limit else "log"
    if method == "kernel" and ratio > limit:
        raise ValueError(
            f"method='kernel' needs (max C - min C) / epsilon <= {limit:g} in {dtype} "
            f"(got {ratio:.4g}): exp(-C/epsilon) would underflow and the scalings overflow; "
            "use method='log' or 'auto', or a larger epsilon"
        )
    return method


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when every tensor is float64, else float32 (half and bfloat16 are computed in float32)."""
    return torch.float64 if all(t.dtype == torch.float64 for t in tensors) else torch.float32


def resolve_method(
    cost: torch.Tensor, *, epsilon: float = 0.1, iterations: int = 50, method: str = "auto",
    dtype: torch.dtype = torch.float32,
) -> str:
    r"""Check a cost and solver settings without solving; return the solver that will run.

    Runs every check :func:`~jtln_hf.sinkhorn.wasserstein_loss` runs on them (a 2-D cost with finite
    entries :math:`C_{ij} \ge 0`, the settings of :func:`check_settings`) and picks ``"kernel"`` when
    :math:`(\max C - \min C)/\varepsilon \le` ``KERNEL_MAX_RANGE[dtype]``, else ``"log"``; an explicit
    ``"kernel"`` beyond that range is refused (it would underflow).  ``dtype`` is the compute dtype:
    float64 when both histograms will be float64, else float32.  One host-device synchronisation.
    """
    check_settings(epsilon, iterations, method)
    if dtype not in KERNEL_MAX_RANGE:
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if cost.dim() != 2 or cost.numel() == 0:
        check_cost_matrix(cost)  # raises: not a matrix
    C = cost.detach().to(dtype)
    c_min, c_max = torch.stack([C.min(), C.max()]).tolist()  # the one host read (min/max propagate NaN)
    if not (math.isfinite(c_min) and math.isfinite(c_max) and c_min >= 0):
        check_cost_matrix(C)  # raises, naming the first bad entry
    return _method_for_range(method, c_min, c_max, epsilon, dtype)


def _check_shapes(source_probs: torch.Tensor, target_probs: torch.Tensor, cost: torch.Tensor) -> None:
    for name, p in (("source_probs", source_probs), ("target_probs", target_probs)):
        if p.dim() != 2:
            raise ValueError(
                f"{name} must be 2-D (B, L), got shape {tuple(p.shape)}; "
                "for a single histogram use .unsqueeze(0)"
            )
    if cost.dim() != 2:
        raise ValueError(
            "cost must be a 2-D (L_s, L_t) matrix shared by the batch, "
            f"got shape {tuple(cost.shape)}"
        )
    (bs, ls), (bt, lt) = source_probs.shape, target_probs.shape
    if bs != bt:
        raise ValueError(
            f"batch sizes differ: source_probs has {bs} rows and target_probs {bt}; "
            "row b of each must describe the same example"
        )
    if tuple(cost.shape) != (ls, lt):
        raise ValueError(
            f"cost has shape {tuple(cost.shape)} but source_probs has {ls} columns and "
            f"target_probs {lt}: cost must be (L_s, L_t) = ({ls}, {lt})"
        )
    if ls == 0 or lt == 0:
        raise ValueError(f"histograms need at least one bin, got L_s={ls}, L_t={lt}")
    if not (source_probs.device == target_probs.device == cost.device):
        raise ValueError(
            f"source_probs ({source_probs.device}), target_probs ({target_probs.device}) and "
            f"cost ({cost.device}) must be on one device: register cost as a module buffer "
            "or move it with cost.to(source_probs.device)"
        )


def prepare_inputs(
    source_probs: torch.Tensor, target_probs: torch.Tensor, cost: torch.Tensor, epsilon: float,
    iterations: int, method: str, tol: float | None = None, check_inputs: bool = True,
    objective: str = "entropic",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str, float | torch.Tensor, int]:
    """Validate, floor at :data:`PROB_FLOOR` and renormalise the histograms, cast, and resolve ``method``.

    Returns ``(a, b, C, method, c_min, iterations)`` in the compute dtype (:func:`compute_dtype`).
    One host-device synchronisation (the min/max of ``cost`` and of each histogram, read together);
    none with ``check_inputs=False``: then only shapes, devices and settings are checked, ``method``
    must already be resolved and ``c_min`` stays a 0-d tensor on the device.
    """
    iterations = check_settings(epsilon, iterations, method, tol, objective)
    if not check_inputs and method == "auto":
        raise ValueError(
            "check_inputs=False needs method='kernel' or 'log' (choosing between them reads the "
            "cost's range): resolve it once with resolve_method(cost, epsilon=..., method='auto')"
        )
    _check_shapes(source_probs, target_probs, cost)
    dtype = compute_dtype(source_probs, target_probs)
    C = cost.detach().to(dtype)

    def simplex(p: torch.Tensor) -> torch.Tensor:
        p = p.detach().to(dtype).clamp_min(PROB_FLOOR)
        return p / p.sum(dim=1, keepdim=True)

    if not check_inputs:
        return simplex(source_probs), simplex(target_probs), C, method, C.min(), iterations
    stats = [C.min(), C.max()]
    if len(source_probs):  # min/max propagate NaN, so one read also catches NaN, inf and negative entries
        stats += [t.to(dtype) for p in (source_probs, target_probs)
                  for t in (p.detach().min(), p.detach().max())]
    values = torch.stack(stats).tolist()  # the one sync
    c_min, c_max = values[:2]
    if not (math.isfinite(c_min) and math.isfinite(c_max) and c_min >= 0):
        check_cost_matrix(C)  # min/max found NaN, inf or a negative entry: raise with its position
    if len(source_probs):
        check_histograms("source_probs", values[2], values[3])
        check_histograms("target_probs", values[4], values[5])
    method = _method_for_range(method, c_min, c_max, float(epsilon), dtype)
    return simplex(source_probs), simplex(target_probs), C, method, c_min, iterations
