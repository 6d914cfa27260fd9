"""Paired bootstrap of the difference between two detectors on the same test faces.

Hand-written because neither scikit-learn nor torchmetrics resamples *pairs* of models by
*group* (a video's faces move together) and computes thousands of AUCs at once: this does all
resamples in a few array operations (about a second for 10,000 faces and 1,000 resamples).

The resampling is stratified: real and fake groups are drawn separately, so every resample
holds both classes in the test set's proportions. Each resample is a weight per face (how often
its group was drawn); AUC and balanced accuracy are computed with those weights.
"""
from __future__ import annotations

import numpy as np


def group_weights(y: np.ndarray, groups: np.ndarray | None, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_faces) weights: each face gets the number of times its group was drawn."""
    y = np.asarray(y)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    _, unit = np.unique(groups, return_inverse=True)
    n_units = unit.max() + 1 if len(unit) else 0
    unit_label = np.zeros(n_units, dtype=int)
    unit_label[unit] = y
    counts = np.zeros((n_boot, n_units), dtype=np.float32)
    for label in (0, 1):
        members = np.flatnonzero(unit_label == label)
        if len(members):  # len(members) draws with replacement = one multinomial per resample
            counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=n_boot)
    return counts[:, unit]


def weighted_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUC of scores p for labels y under each row of weights w (B, N); ties count one half."""
    order = np.argsort(p, kind="stable")
    p, y, w = p[order], np.asarray(y)[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])  # one block per distinct score
    pos = np.add.reduceat(w * (y == 1), starts, axis=1)
    neg = np.add.reduceat(w * (y == 0), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each score
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    total = pos.sum(axis=1) * neg.sum(axis=1)
    return np.where(total > 0, wins / np.maximum(total, 1e-12), np.nan)


def weighted_balanced_accuracy(y: np.ndarray, p: np.ndarray, threshold: float, w: np.ndarray) -> np.ndarray:
    correct = (np.asarray(p) >= threshold) == (np.asarray(y) == 1)
    recalls = []
    for label in (0, 1):
        mask = np.asarray(y) == label
        recalls.append((w[:, mask] * correct[mask]).sum(axis=1) / np.maximum(w[:, mask].sum(axis=1), 1e-12))
    return (recalls[0] + recalls[1]) / 2


def score(metric: str, y, p, threshold: float, w: np.ndarray) -> np.ndarray:
    if metric == "auc":
        return weighted_auc(y, p, w)
    if metric == "balanced_accuracy":
        return weighted_balanced_accuracy(y, p, threshold, w)
    raise ValueError(f"unknown gate metric {metric!r}: choose auc or balanced_accuracy")


def paired_difference(y, p_new, p_old, groups=None, *, metric: str = "auc", thresholds=(0.5, 0.5),
                      n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Point estimates of both models and the bootstrap interval of new - old, plus the
    resampled differences themselves (to average over methods with the same draws)."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    ones = np.ones((1, len(y)), dtype=np.float32)
    w = group_weights(y, groups, n_boot, rng)
    new = float(score(metric, y, p_new, thresholds[0], ones)[0])
    old = float(score(metric, y, p_old, thresholds[1], ones)[0])
    diffs = score(metric, y, p_new, thresholds[0], w) - score(metric, y, p_old, thresholds[1], w)
    return {"new": new, "old": old, "difference": new - old, "draws": diffs,
            **interval(diffs, confidence)}


def interval(diffs: np.ndarray, confidence: float = 0.95) -> dict:
    tail = 100 * (1 - confidence) / 2
    low, high = np.nanpercentile(diffs, [tail, 100 - tail])
    return {"low": float(low), "high": float(high)}


def verdict(low: float, high: float, allowed_drop: float) -> str:
    """'worse' when the whole interval is below -allowed_drop, 'better' when it is above zero,
    otherwise 'cannot tell'."""
    if high < -allowed_drop:
        return "worse"
    if low > 0:
        return "better"
    return "cannot tell"
