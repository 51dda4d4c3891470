"""Unlabelled target images labelled by their nearest shot centroid: more target images for a features-* cost.

A features-* cost estimated from k = 5 labelled images per target class is noisy: the same builder given
200 labelled images per class (the ``--cost_from_target_pool`` diagnostic) gains more. A practitioner
usually has more *unlabelled* target images than labelled ones. ``--cost_unlabelled_target N`` reads N
of them (the target training pool's images, their labels never read), labels each with the target class
whose shot centroid is nearest in the warmed-up model's features (cosine similarity), and gives the
builder the shots plus these pseudo-labelled images. Nearest-centroid labelling of a few shots is the
prototype classifier of Snell et al. 2017 ("Prototypical networks for few-shot learning").
"""

from __future__ import annotations

from collections.abc import Callable

import datasets
import numpy as np

#: ``predict(dataset, fields) -> ({field: array}, labels)``, as :data:`jtln_hf.cost.builders.Predict`.
Predict = Callable[[datasets.Dataset, tuple[str, ...]], tuple[dict[str, np.ndarray], np.ndarray]]


def nearest_centroid_labels(shot_features: np.ndarray, shot_labels: np.ndarray, features: np.ndarray,
                            num_classes: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    r"""The class of each row of ``features`` whose shot centroid is nearest by cosine similarity, and its margin.

    .. math:: \hat y(x) = \arg\max_j \frac{x^\top \mu_j}{\|x\| \|\mu_j\|}, \qquad
              \mu_j = \frac{1}{|S_j|} \sum_{s \in S_j} \frac{s}{\|s\|}

    over the classes with at least one shot (a class without shots is never assigned). The margin is the
    nearest centroid's similarity less the second nearest's (a confidence: 0 with one class).
    """
    unit = shot_features / np.maximum(np.linalg.norm(shot_features, axis=1, keepdims=True), 1e-12)
    centroids = np.full((num_classes, unit.shape[1]), np.nan)
    for j in np.unique(shot_labels):
        centroids[j] = unit[shot_labels == j].mean(0)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    unit_features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    scores = unit_features @ np.nan_to_num(centroids, nan=0.0).T
    scores[:, np.isnan(centroids[:, 0])] = -np.inf
    top = np.sort(scores, axis=1)[:, ::-1]
    margin = top[:, 0] - top[:, 1] if top.shape[1] > 1 and np.isfinite(top[:, 1]).all() else np.zeros(len(top))
    return scores.argmax(1), margin


def pseudo_labelled_target(shots: datasets.Dataset, pool: datasets.Dataset, count: int, predict: Predict,
                           seed: int = 0, keep: float = 1.0) -> tuple[datasets.Dataset, float]:  # fmt: skip
    """The shots plus ``count`` images drawn (by ``seed``) from ``pool``, labelled by
    :func:`nearest_centroid_labels` in ``predict``'s pooled features; and the share of those labels that
    match the pool's own (a diagnostic the run's description reports; the labels never reach the cost).

    ``keep`` < 1 keeps, of the images given each class, that share with the largest margins (at least one):
    fewer images, surer labels."""
    rows = np.random.default_rng([seed, 7]).choice(len(pool), size=min(count, len(pool)), replace=False)
    unlabelled = pool.select(np.sort(rows))
    (shot_out, shot_labels), (out, true_labels) = (predict(ds, ("pooler_output",)) for ds in (shots, unlabelled))
    labels, margin = nearest_centroid_labels(shot_out["pooler_output"], np.asarray(shot_labels), out["pooler_output"],
                                             shots.features["label"].num_classes)  # fmt: skip
    if keep < 1.0:
        kept = [i for j in np.unique(labels) for i in _most_confident(np.flatnonzero(labels == j), margin, keep)]
        unlabelled, labels, true_labels = unlabelled.select(sorted(kept)), labels[sorted(kept)], \
            np.asarray(true_labels)[sorted(kept)]  # fmt: skip
    relabelled = unlabelled.remove_columns("label").add_column("label", labels.tolist())
    relabelled = relabelled.cast_column("label", shots.features["label"])
    common = [c for c in shots.column_names if c in relabelled.column_names]
    joined = datasets.concatenate_datasets([shots.select_columns(common), relabelled.select_columns(common)])
    return joined, float(np.mean(labels == np.asarray(true_labels)))


def _most_confident(rows: np.ndarray, margin: np.ndarray, keep: float) -> list[int]:
    """The ``keep`` share of ``rows`` (at least one) with the largest ``margin``."""
    count = max(1, int(round(keep * len(rows))))
    return rows[np.argsort(-margin[rows], kind="stable")[:count]].tolist()


__all__ = ["nearest_centroid_labels", "pseudo_labelled_target"]
