"""Floating-point tolerances of the test suite, derived from the arithmetic in one place.

No bound here was measured on a machine.  Each follows from the standard model of floating-point
arithmetic (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., 2002, §2.2): an
operation returns its exact result times ``1 + δ`` with ``|δ| <= u``, the unit roundoff
``u = finfo(dtype).eps / 2``, whatever the CPU, the kernel (vectorised or scalar) or the order of a
reduction.  A bound that holds for every order of the operations holds on every CPU.

* ``gamma(n) = n u / (1 - n u)`` bounds the relative error of ``n`` roundings in a row (Higham,
  Lemma 3.1); a sum or dot product of ``n`` terms is off by at most ``gamma(n - 1) * sum |x_i|``
  (Higham, (3.5)).
* Sinkhorn, either domain, after ``n`` iterations (:func:`sinkhorn_potential_error`): one
  half-iteration computes ``f_i = log a_i - LSE_j(g_j - C_ij/ε)`` (log domain) or
  ``u = a / (K v)`` (kernel domain, ``log u = f/ε``).  With ``R = (max C - min C)/ε`` (the solver
  works on ``C - min C``) and ``Λ = -log(PROB_FLOOR) + log(max(L_s, L_t))`` (a bound on ``|log a|``,
  ``|log b|`` and on the potentials' offset), every operand of the update has magnitude at most
  ``M = R + 2Λ``.  The update rounds: the subtraction ``g_j - C_ij/ε`` (``u M``), the shift by
  the maximum and the exponential (``u (M + 1)``), the sum of ``L`` positive terms (``gamma(L)``),
  the logarithm and the maximum added back (``2 u M``), ``log a_i - ·`` (``u M``); the kernel
  domain rounds fewer and smaller terms (``exp(-C/ε)`` to ``u (R + 1)``, ``K v`` to ``gamma(L)``, the
  division to ``u``).  So one half-iteration adds at most ``(5 M + L + 2) u`` (in units of ε) to the
  sup-norm error of the potentials.  The exact update is 1-Lipschitz in that norm (``LSE`` is, and
  so is ``log(K v)`` as a function of ``log v``), so errors add up and do not grow: after ``n``
  iterations (``2 n`` half-iterations) the error is at most ``2 n (5 M + L + 2) u``.  This is a
  worst case: Sinkhorn contracts, so typical errors are ~100x smaller; the bound is what holds
  for *every* problem, which is what a test drawing many problems needs.
* A plan entry ``exp(f_i + g_j - C_ij/ε)`` then has relative error at most
  ``2 δ + (M + 2) u`` (:func:`sinkhorn_plan_rtol`); the values follow in
  :func:`sinkhorn_value_atol`.
* Two independent computations of the same exact quantity (ours and POT's, the kernel and the
  log domain) differ by at most the sum of their two bounds: the tests use ``2 *``.
* A network's logits (:func:`forward_error_bound`): each layer's own rounding, bounded as above from
  its inputs' magnitudes, carried to the output by the absolute Jacobian of the rest of the network
  (first order). Two float32 evaluations of one model (another process, batch, kernel or CPU) differ
  by at most twice it; a softmax of logits that close moves by :func:`softmax_shift` and rounds to
  :func:`softmax_atol`; an argmax is the same where :func:`stable_argmax` says so.
"""

from __future__ import annotations

import math

import torch

from jtln_hf.sinkhorn import PROB_FLOOR

LOG_FLOOR = -math.log(PROB_FLOOR)  # 18.42: the largest |log p| of a floored histogram entry


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = eps / 2``: the largest relative error of one rounding to ``dtype`` (2**-24 for float32)."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative error of ``n`` roundings in a row."""
    nu = n * unit_roundoff(dtype)
    assert nu < 1, f"gamma({n}) is unbounded in {dtype}"
    return nu / (1 - nu)


def sum_error(n: int, abs_sum: float, dtype: torch.dtype) -> float:
    """Absolute error of a sum (or dot product) of ``n`` terms whose magnitudes sum to ``abs_sum``."""
    return gamma(max(n, 2), dtype) * abs_sum


def sinkhorn_operand_bound(cost_range_over_eps: float, Ls: int, Lt: int) -> float:
    """``M = R + 2Λ``: the largest operand of a Sinkhorn update, in units of ε (module docstring)."""
    log_floor = LOG_FLOOR + math.log(max(Ls, Lt, 2))
    return cost_range_over_eps + 2 * log_floor


def sinkhorn_potential_error(dtype: torch.dtype, iterations: int, cost_range_over_eps: float,
                             Ls: int, Lt: int) -> float:
    """``δ = 2 n (5 M + L + 2) u``: the sup-norm error of the potentials ``f/ε``, ``g/ε`` after
    ``n`` iterations computed in ``dtype`` (either domain); see the module docstring."""
    M = sinkhorn_operand_bound(cost_range_over_eps, Ls, Lt)
    per_half_iteration = (5 * M + max(Ls, Lt) + 2) * unit_roundoff(dtype)
    return 2 * max(iterations, 1) * per_half_iteration


def sinkhorn_plan_rtol(dtype: torch.dtype, iterations: int, cost_range_over_eps: float,
                       Ls: int, Lt: int) -> float:
    """Relative error of a plan entry ``exp(f_i + g_j - C_ij/ε)``: ``2 δ + (M + 2) u`` (to first order;
    the exponential turns an absolute error ``e`` of its argument into a relative ``e^e - 1``)."""
    delta = sinkhorn_potential_error(dtype, iterations, cost_range_over_eps, Ls, Lt)
    M = sinkhorn_operand_bound(cost_range_over_eps, Ls, Lt)
    e = 2 * delta + (M + 2) * unit_roundoff(dtype)
    return math.expm1(e)


def sinkhorn_value_atol(dtype: torch.dtype, iterations: int, cost_range_over_eps: float, Ls: int,
                        Lt: int, *, epsilon: float, cost_max: float) -> float:
    """Absolute error of a value computed from a plan of mass 1 (rows or columns sum to 1).

    The linear value ``<γ, C>`` is off by at most ``ρ max C`` for plan entries off by a relative
    ``ρ`` (:func:`sinkhorn_plan_rtol`), plus the rounding of a sum of ``L_s L_t`` terms
    (``gamma(L_s L_t) max C``).  The regularised values ``<r, f> + <b, g>`` (``objective``
    "entropic" or "kl") also carry the potentials' error ``ε δ`` per unit mass (twice: f and g)
    and the rounding of two sums of potentials of size up to ``ε M`` (weighted by ``ρ`` through
    ``r``).  One bound covers all three objectives.
    """
    rho = sinkhorn_plan_rtol(dtype, iterations, cost_range_over_eps, Ls, Lt)
    delta = sinkhorn_potential_error(dtype, iterations, cost_range_over_eps, Ls, Lt)
    M = sinkhorn_operand_bound(cost_range_over_eps, Ls, Lt)
    sums = gamma(Ls * Lt + 2, dtype)
    return (rho + sums) * cost_max + epsilon * (2 * delta + (rho + sums) * M)


def softmax_backward_bound(grad_bound: float) -> float:
    """|d/dz of a value through ``softmax(z)``| per entry, given |d value / d p_j| <= ``grad_bound``.

    ``(J^T v)_i = p_i (v_i - <p, v>)``, so each entry is at most ``max|v| + |<p, v>| <= 2 max|v|``.
    """
    return 2 * grad_bound


def cross_entropy_atol(dtype: torch.dtype, num_classes: int, max_abs_logit: float, rows: int = 1) -> float:
    """Absolute error of a mean cross-entropy ``-log_softmax(z)_y`` computed in ``dtype``.

    ``log_softmax(z)_y = (z_y - m) - log sum_j exp(z_j - m)`` with ``m = max z``: the differences
    round to ``u 2 max|z|`` each, the exponentials to ``u`` relative, the sum of ``L`` terms to
    ``gamma(L)``, the logarithm to ``u log L`` plus the sum's relative error, the last difference to
    ``u (2 max|z| + log L)``: at most ``(L + 6) u (2 max|z| + log L)`` per row, and the mean over
    ``rows`` rows adds ``gamma(rows)`` of the same size.
    """
    per_row = (num_classes + 6) * unit_roundoff(dtype) * (2 * max_abs_logit + math.log(max(num_classes, 2)))
    return per_row * (1 + gamma(max(rows, 2), dtype))


def squared_distance_atol(dim: int, max_norm: float, dtype: torch.dtype) -> float:
    """Absolute error of ``||x - y||^2`` for vectors of norm at most ``max_norm`` in ``dim`` dimensions.

    Computed as ``||x||^2 + ||y||^2 - 2 <x, y>`` (``ot.dist``): three dot products of ``dim`` terms
    and two additions, at most ``gamma(dim + 2) (||x||^2 + ||y||^2 + 2 |<x, y>|)``; or as
    ``sum_k (x_k - y_k)^2``: a subtraction, a square and a sum of ``dim`` positive terms, at most
    ``gamma(dim + 2) ||x - y||^2``.  Both are at most ``gamma(dim + 2) (2 max_norm)^2`` (a
    clip of the first at 0 only moves it towards the exact value, which is >= 0).
    """
    return gamma(dim + 2, dtype) * (2 * max_norm) ** 2


def mmd2_atol(dim: int, max_norm: float, max_group_size: int, sig2, dtype: torch.dtype) -> float:
    """Absolute error of the biased multi-kernel MMD^2 of :func:`jtln_hf.cost.mmd2` (one computation).

    With ``sig2`` the exponents' divisors ``2 sigma_s^2`` (``S`` of them, the same numbers in every
    computation), a kernel entry ``exp(-d / s)`` in [0, 1] is off by at most ``Δd / s`` (``exp(-t)``
    is 1-Lipschitz for ``t >= 0``; ``Δd`` from :func:`squared_distance_atol`) plus three roundings
    (the division, the exponential, the product's second-order terms: ``3 u``).  The mean of ``N``
    such entries adds ``gamma(N - 1)`` (a sum of ``N`` terms <= 1, in any order) and one division:
    ``Δd / s + gamma(N + 4)`` with ``N <= max_group_size^2``.  The sum over the ``S`` kernels adds
    ``gamma(S) S``, and ``T_xx + T_yy - 2 T_xy`` (terms <= ``S``) adds ``gamma(2) 4 S`` to
    ``E_xx + E_yy + 2 E_xy``: four times one term's error.  The clip at 0 is 1-Lipschitz.
    """
    dd = squared_distance_atol(dim, max_norm, dtype)
    S = len(sig2)
    term = sum(dd / float(s) for s in sig2) + S * gamma(max_group_size**2 + 4, dtype) + gamma(max(S, 2), dtype) * S
    return 4 * term + gamma(2, dtype) * 4 * S


def euclidean_distance_atol(dim: int, max_norm: float, computed: float, dtype: torch.dtype) -> float:
    """Absolute error of ``||x - y||`` computed as the square root of a squared distance.

    ``|sqrt(a') - sqrt(a)| = |a' - a| / (sqrt(a') + sqrt(a)) <= min(sqrt(Δ), Δ / sqrt(a'))`` for
    ``|a' - a| <= Δ`` (:func:`squared_distance_atol`), ``sqrt(a') = computed``; the square root
    itself rounds once more (``u computed``).
    """
    dd = squared_distance_atol(dim, max_norm, dtype)
    return min(math.sqrt(dd), dd / computed if computed > 0 else math.inf) + unit_roundoff(dtype) * computed


# ------------------------------------------------------------------ a network's forward pass, in float32
def forward_error_bound(module: torch.nn.Module, *inputs: torch.Tensor, dtype: torch.dtype = torch.float32,
                        weight_rtol: dict[str, float] | None = None):  # fmt: skip
    """``(values, bounds)``: ``module(*inputs)`` evaluated in float64, and, entry by entry, a bound on how far an
    evaluation of it in ``dtype`` on the same inputs, on any CPU, is from the exact value (first-order analysis).

    ``module`` (eval mode; outputs of shape ``(batch, classes)``, rows computed independently) is traced with
    ``torch.fx`` and re-run node by node in float64 with autograd. Each node's own rounding ``δ`` is bounded from
    its inputs' magnitudes for every order of its sums and every kernel (Higham's standard model, module
    docstring), so the bound holds on every CPU. Every operation covered is piecewise linear (convolutions,
    affine maps, ReLU, max and mean pools, sums), so a rounding made at node ``l`` reaches an output ``z`` as
    ``J_l δ_l``, ``J_l = ∂z/∂a_l`` the Jacobian of the rest of the network at the float64 point, and
    ``|ẑ - z| <= Σ_l |J_l| δ_l`` (Higham's first-order bounds, chained). That is exact while the ``dtype``
    evaluation stays on the same linear pieces, up to ``O(u²)`` (``δ`` taken at the float64 magnitudes, not the
    computed ones). A unit within its own rounding error of a ReLU kink or a max-pool tie may switch pieces; it
    then passes on at most that error (both pieces are 1-Lipschitz), of the size the bound already counts for
    it, but through the other piece's Jacobian: the one case this first-order bound does not cover term by
    term. One backward pass per output column gives every ``J_l`` of that column. With
    ``u = unit_roundoff(dtype)``, ``δ`` at a node with input ``x``:

    * ``Conv2d``/``Linear`` with ``n`` terms per output (``in_channels/groups x kernel area``, ``in_features``)
      and a bias: ``gamma(n + 1) (|W| |x| + |b|)`` (Higham (3.5), any summation order). PyTorch runs CPU
      convolutions as direct or GEMM dot products (oneDNN ``convolution_direct``), never Winograd or FFT,
      whose error is not of this form. ``weight_rtol[name]``: the layer's weights are the exact ones times
      ``1 + θ``, ``|θ| <= rtol`` (e.g. rounded when they were made): ``+ rtol |W| |x|``.
    * ``BatchNorm2d`` (running statistics): ``(x - μ) γ / sqrt(σ² + ε) + β`` in at most 8 roundings in a row,
      in any order (PyTorch: ``α = γ / sqrt(σ² + ε)``, ``β - μ α``, then ``x α + β``):
      ``gamma(8) (|α| (|x| + |μ|) + |β|)``.
    * ``AvgPool2d``, ``AdaptiveAvgPool2d`` to 1x1: a mean of at most ``k`` terms (a sum, then a division or a
      product by a rounded ``1/k``): ``gamma(k + 2) mean(|x|)``.
    * ``a + b`` (a residual): ``u (|a| + |b|)``.
    * ``ReLU``, ``MaxPool2d``, and ``Identity``, ``Flatten``, ``Dropout`` in eval mode: exact, ``δ = 0``.

    Anything else raises ``NotImplementedError``: the bound covers what it names. It is computed in float64,
    whose relative rounding (below 1e-12 here) the factor ``1 + 2**-20`` applied at the end covers. Returns the
    output's structure (a tensor, or a tuple of tensors) for both.
    """
    import operator

    import torch.fx
    import torch.nn.functional as F
    from torch import nn

    u = unit_roundoff(dtype)
    weight_rtol = dict(weight_rtol or {})
    graph = torch.fx.symbolic_trace(module)
    f64 = torch.float64
    env: dict = {}
    local: list[tuple[torch.Tensor, torch.Tensor]] = []  # (a node's float64 output, the bound δ of its rounding)
    feed = iter(inputs)
    result = None
    with torch.enable_grad():
        for node in graph.graph.nodes:
            if node.op == "placeholder":
                env[node] = next(feed).detach().to(f64).requires_grad_()  # the inputs are exact
                continue
            if node.op == "output":
                result = node.args[0]
                break
            delta = None
            if node.op == "call_module":
                sub = graph.get_submodule(node.target)
                if sub.training:
                    raise NotImplementedError(f"{node.target} is in training mode: the bound is for eval mode")
                x = env[node.args[0]]
                size = x.detach().abs()
                rtol = weight_rtol.pop(node.target, 0.0)
                if isinstance(sub, (nn.Conv2d, nn.Linear)):
                    w = sub.weight.detach().to(f64)
                    b = None if sub.bias is None else sub.bias.detach().to(f64)
                    if isinstance(sub, nn.Conv2d):
                        if sub.padding_mode != "zeros":
                            raise NotImplementedError(f"{node.target}: padding_mode {sub.padding_mode}")
                        n = (sub.in_channels // sub.groups) * sub.kernel_size[0] * sub.kernel_size[1]
                        args = (sub.stride, sub.padding, sub.dilation, sub.groups)
                        out, terms = F.conv2d(x, w, b, *args), F.conv2d(size, w.abs(), None, *args)
                        bias = 0.0 if b is None else b.abs().view(1, -1, 1, 1)
                    else:
                        n = sub.in_features
                        out, terms = F.linear(x, w, b), F.linear(size, w.abs())
                        bias = 0.0 if b is None else b.abs()
                    delta = gamma(n + 1, dtype) * (terms + bias) + rtol * terms
                elif isinstance(sub, nn.BatchNorm2d):
                    if not sub.track_running_stats or sub.running_mean is None:
                        raise NotImplementedError(f"{node.target}: batch statistics")
                    mean, var = sub.running_mean.to(f64), sub.running_var.to(f64)
                    weight = sub.weight.detach().to(f64) if sub.affine else torch.ones_like(mean)
                    shift = sub.bias.detach().to(f64) if sub.affine else torch.zeros_like(mean)
                    alpha, mu, beta = ((weight / torch.sqrt(var + sub.eps)).view(1, -1, 1, 1), mean.view(1, -1, 1, 1),
                                       shift.view(1, -1, 1, 1))  # fmt: skip
                    out = (x - mu) * alpha + beta
                    delta = gamma(8, dtype) * (alpha.abs() * (size + mu.abs()) + beta.abs())
                elif isinstance(sub, nn.ReLU):
                    out = F.relu(x)  # not in place: x stays the ReLU's input
                elif isinstance(sub, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                    if isinstance(sub, nn.AvgPool2d):
                        if sub.divisor_override is not None:
                            raise NotImplementedError(f"{node.target}: divisor_override")
                        k = math.prod(torch.nn.modules.utils._pair(sub.kernel_size))
                    else:
                        if tuple(torch.nn.modules.utils._pair(sub.output_size)) != (1, 1):
                            raise NotImplementedError(f"{node.target}: output size {sub.output_size}")
                        k = x.shape[-1] * x.shape[-2]
                    out = sub(x)
                    delta = gamma(k + 2, dtype) * sub(size)
                elif isinstance(sub, (nn.MaxPool2d, nn.Identity, nn.Flatten, nn.Dropout)):
                    out = sub(x)
                else:
                    raise NotImplementedError(f"no rounding bound for {type(sub).__name__} ({node.target})")
            elif node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add) \
                    and not node.kwargs and len(node.args) == 2:  # fmt: skip
                a, b = env[node.args[0]], env[node.args[1]]
                out = a + b
                delta = u * (a.detach().abs() + b.detach().abs())
            else:
                raise NotImplementedError(f"no rounding bound for {node.op} {node.target}")
            env[node] = out
            if delta is not None:
                local.append((out, delta))
        if weight_rtol:
            raise ValueError(f"weight_rtol names layers the network does not run: {sorted(weight_rtol)}")
        single = isinstance(result, torch.fx.Node)
        outputs = [env[result]] if single else [env[n] for n in result]
        activations = [a for a, _ in local]
        bounds = []
        for out in outputs:
            if out.dim() != 2:
                raise NotImplementedError(f"outputs of shape (batch, classes) only, not {tuple(out.shape)}")
            bound = torch.zeros_like(out.detach())
            for k in range(out.shape[1]):  # rows are independent: one pass gives each row its Jacobian
                grads = torch.autograd.grad(out[:, k].sum(), activations, retain_graph=True, allow_unused=True)
                for g, (_, delta) in zip(grads, local):
                    if g is not None:
                        bound[:, k] += (g.abs() * delta).flatten(1).sum(1)
            bounds.append(bound * (1 + 2**-20))
    values = [out.detach() for out in outputs]
    return (values[0], bounds[0]) if single else (tuple(values), tuple(bounds))


class JTLNHeads(torch.nn.Module):
    """``pixels -> (logits, source_logits)`` of a :class:`~jtln_hf.JointImageClassifier`, for
    :func:`forward_error_bound`: the path of its ``forward`` (backbone features, pooling, dropout, both heads)."""

    def __init__(self, model):
        super().__init__()
        self.backbone, self.dropout = model.backbone, model.dropout
        self.target_head, self.source_head = model.target_head, model.source_head

    def forward(self, pixel_values):
        pooled = self.backbone.forward_head(self.backbone.forward_features(pixel_values), pre_logits=True)
        dropped = self.dropout(pooled)
        return self.target_head(dropped), self.source_head(dropped)


def jtln_logit_bounds(model, pixel_values: torch.Tensor, dtype: torch.dtype = torch.float32):
    """``{"logits": (values, bound), "source_logits": (values, bound)}`` for ``model(pixel_values)`` (eval mode):
    float64 values of both heads and :func:`forward_error_bound` of a ``dtype`` evaluation, entry by entry.

    Two float32 evaluations of the model on these pixels (another process, another batch, another CPU or
    kernel) differ by at most ``2 * bound`` per entry: each is within ``bound`` of the exact value.
    """
    (logits, source), (e_logits, e_source) = forward_error_bound(JTLNHeads(model).eval(), pixel_values, dtype=dtype)
    return {"logits": (logits, e_logits), "source_logits": (source, e_source)}


def softmax_atol(dtype: torch.dtype, num_classes: int, max_abs_logit: float) -> float:
    """Absolute error of one entry of ``softmax(z)`` computed in ``dtype`` (PyTorch's or numpy's, on ``z - max z``).

    ``p_i = exp(z_i - m) / sum_j exp(z_j - m)``: the subtraction is off by at most ``u 2 max|z|``, which the
    exponential turns into a relative ``expm1(2 u max|z|)``, and rounds once (``u``); the sum of ``L`` such terms
    adds ``gamma(L)`` relative, the division ``u``: relative ``gamma(L + 3) + 2 expm1(2 u max|z|)`` (one term for
    the numerator, one for the sum), and ``p_i <= 1``.
    """
    u = unit_roundoff(dtype)
    return gamma(num_classes + 3, dtype) + 2 * math.expm1(2 * u * max_abs_logit)


def softmax_shift(logit_gap: float) -> float:
    """``max_i |softmax(z + δ)_i - softmax(z)_i|`` over ``max|δ| <= logit_gap``: at most ``expm1(2 logit_gap)``.

    ``softmax(z + δ)_i / softmax(z)_i = exp(δ_i) / sum_j p_j exp(δ_j)`` lies in ``[exp(-2t), exp(2t)]`` for
    ``t = max|δ|``, and ``p_i <= 1``.
    """
    return math.expm1(2 * logit_gap)


def stable_argmax(logits: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """Rows whose argmax no perturbation of at most ``gap`` (entry by entry) can change: the top entry beats every
    other by more than the sum of their two gaps. Another evaluation within ``gap`` has the same argmax there."""
    logits, gap = logits.double(), gap.double()
    top = logits.argmax(-1, keepdim=True)
    margin = logits.gather(-1, top) - logits - (gap.gather(-1, top) + gap)
    margin.scatter_(-1, top, math.inf)
    return (margin > 0).all(-1)
