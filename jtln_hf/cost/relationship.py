"""The category relationship p(y_s | y_t) (Co-Tuning's) and the cost ``-log`` of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .features import _group_by_class
from .normalize import (
    COST_NORMALIZATIONS,
    DEFAULT_NORMALIZATION,
    _check_finite,
    _check_method,
    _to_numpy,
    normalize_cost,
)

# --------------------------------------------------------------------------- relationship


def category_relationship(source_probs: Any, target_labels: Any, num_target_labels: int | None = None) -> np.ndarray:
    r"""The category relationship :math:`p(y_s \mid y_t)` of Co-Tuning (You et al. 2020).

    For each target class :math:`j`, the mean of the source head's predicted distribution over
    the labelled target images of that class:
    :math:`p(y_s = i \mid y_t = j) = \frac{1}{|T_j|} \sum_{x \in T_j} h_s(x)_i`
    (TLlib's ``Relationship`` without calibration). Call it on a source head that has learnt
    the source task (after the source stage or a warm-up).

    Parameters
    ----------
    source_probs : array-like, shape (N, L_s)
        Softmax of the source head on the labelled target images (rows sum to 1).
    target_labels : array-like, shape (N,)
        Their target class ids in ``[0, L_t)``.
    num_target_labels : int, optional
        ``L_t``; default ``max(label) + 1``. Every class needs at least one image.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(L_t, L_s)``, each row a distribution over the source classes.
    """
    probs = _to_numpy(source_probs)
    labels = np.asarray(_to_numpy(target_labels, np.int64), dtype=np.int64)
    if probs.ndim != 2 or labels.shape != (len(probs),):
        raise ValueError(f"source_probs must be (N, L_s) and target_labels (N,), got {probs.shape} and {labels.shape}")
    _check_finite(probs)
    if np.any(probs < 0) or not np.allclose(probs.sum(1), 1.0, atol=1e-4):
        raise ValueError("source_probs must be probabilities (rows >= 0 summing to 1): pass softmax(source_logits)")
    groups = _group_by_class(probs, labels, num_target_labels, "target", None, np.random.default_rng(0))
    return np.stack([g.mean(0) for g in groups])


def relationship_of(predict: Callable[..., tuple[dict[str, np.ndarray], np.ndarray]], target: Any,
                    num_target_labels: int) -> np.ndarray:  # fmt: skip
    """Co-Tuning's :math:`p(y_s \\mid y_t)`, shape ``(L_t, L_s)``: the source head's mean softmax per target class.

    ``predict(dataset, fields) -> ({field: array}, labels)`` runs the model (``jtln_hf.cost.builders.Predict``);
    ``target`` holds the labelled target images. See :func:`category_relationship`.
    """
    outputs, labels = predict(target, ("source_logits",))
    z = outputs["source_logits"].astype(np.float64)
    probs = np.exp(z - z.max(-1, keepdims=True))
    return category_relationship(probs / probs.sum(-1, keepdims=True), labels, num_target_labels)


def cost_from_relationship(
    relationship: Any, *, floor: float = 1e-6, normalize: str = DEFAULT_NORMALIZATION
) -> np.ndarray:
    r"""A JTLN cost from a category relationship: :math:`C_{ij} = -\log p(y_s = i \mid y_t = j)`.

    ``relationship`` is :math:`p(y_s \mid y_t)`, shape ``(L_t, L_s)`` (:func:`category_relationship`);
    probabilities are floored at ``floor``, so a never-predicted pair costs :math:`-\log(\text{floor})`.
    Returns float64 of shape ``(L_s, L_t)``, after :func:`normalize_cost` with ``normalize``.
    """
    _check_method(normalize, COST_NORMALIZATIONS, "cost normalization")
    rel = _to_numpy(relationship)
    if rel.ndim != 2:
        raise ValueError(f"relationship must be a 2-D (L_t, L_s) array, got shape {rel.shape}")
    _check_finite(rel)
    return normalize_cost(-np.log(np.maximum(rel, floor)).T, normalize)
