r"""Batched entropic optimal transport with one shared cost, used as a training loss.

JTLN (Lu, Chen & Saidi 2017) adds, for every target image, the entropic OT cost between the source
head's histogram (length ``L_s``) and the target head's (length ``L_t``) under one ground cost ``C``
shared by the batch.  :func:`wasserstein_loss` solves the ``B`` problems together with Sinkhorn's
iterations (Cuturi 2013), in the kernel or the log domain (Peyre & Cuturi 2019), and differentiates
them with the dual potentials (envelope theorem: Frogner et al. 2015; Feydy et al. 2019), not through
the iterations.  ``objective`` says which value is returned: ``"entropic"`` (default)
:math:`\langle\gamma, C\rangle - \varepsilon H(\gamma)`, ``"kl"`` or ``"paper"``.  POT is the
independent reference in the tests.  The derivations, the accuracy bounds and the measurements are in
``docs/design.md``, "Sinkhorn solver".

Modules: :mod:`.settings` (constants, checks, choice of domain, prepared inputs), :mod:`.solve` (the
iterations and the autograd Function), :mod:`.api` (the functions below).
"""

from __future__ import annotations

from .api import mean_transport_plan, sinkhorn_potentials, transport_plan, wasserstein_loss
from .settings import (
    CHECK_EVERY,
    KERNEL_MAX_RANGE,
    METHODS,
    OBJECTIVES,
    PROB_FLOOR,
    check_histograms,
    check_settings,
    resolve_method,
)

__all__ = [
    "CHECK_EVERY",
    "KERNEL_MAX_RANGE",
    "METHODS",
    "OBJECTIVES",
    "PROB_FLOOR",
    "check_histograms",
    "check_settings",
    "mean_transport_plan",
    "resolve_method",
    "sinkhorn_potentials",
    "transport_plan",
    "wasserstein_loss",
]
