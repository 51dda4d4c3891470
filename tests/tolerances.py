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
