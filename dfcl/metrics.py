"""What a learner's evaluation reports: one row of results (`summarize`) and one strategy's
whole run (`strategy_report`), as the flows, the CLI and the benchmarks show them."""
from __future__ import annotations

import math

def _mean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def matrix_forgetting(matrix: list[list[float]]) -> float:
    """Mean drop on the earlier methods, from right after learning each to now: Avalanche's
    StreamForgetting, which Avalanche computes for accuracy only, on any per-method matrix (AUC,
    balanced accuracy). Accuracy at 0.5 falls when predicted probabilities drift while the ranking
    holds (see the demo's batch-norm note in params.yaml); these do not."""
    if len(matrix) < 2:
        return 0.0
    drops = [matrix[i][i] - matrix[-1][i] for i in range(len(matrix) - 1)]
    return _mean(drops)


def matrix_forward_transfer(matrix: list[list[float]]) -> float:
    """Mean over the methods learned after the first of each one's value just before it was
    learned (cell [j-1][j], the upper triangle's first diagonal); NaN where none was measured
    (a method not yet known then, or evaluation of upcoming methods off). Avalanche's forward
    transfer is accuracy minus the accuracy of the model at initialisation, and Avalanche has no
    AUC: this is the AUC version, by hand, and absolute (0.5 is chance, as the matrix shows it)."""
    return _mean([matrix[j - 1][j] for j in range(1, len(matrix)) if j < len(matrix[j - 1])])


def values_before_learning(matrix: list[list[float]], keys: list[str]) -> dict[str, float]:
    """{method: its cell [j-1][j]} for each learned method measured just before it was learned."""
    return {keys[j]: matrix[j - 1][j] for j in range(1, min(len(matrix), len(keys)))
            if j < len(matrix[j - 1]) and not math.isnan(matrix[j - 1][j])}


def learned_card(history) -> list[dict]:
    """Each learned method for the model card: when it was learned, its test AUC now, and its AUC
    measured just before it was learned (what the model did on it while it was still unseen)."""
    keys = [e.key for e in history.experiences]
    now = history.auc_matrix[-1] if history.auc_matrix else []
    before = values_before_learning(history.auc_matrix, keys)
    return [{"method": e.key, "learned_at": e.learned_at or None,
             "test_auc": None if i >= len(now) or math.isnan(now[i]) else round(now[i], 4),
             "auc_before_learning": None if e.key not in before else round(before[e.key], 4)}
            for i, e in enumerate(history.experiences)]


def summarize(experiences: list, row_acc: list[float], row_auc: list[float],
              forgetting: float = math.nan, bwt: float = math.nan, row_bal: list[float] | None = None,
              threshold: float = 0.5, row_video_auc: list[float] | None = None) -> dict:
    """One evaluation's results on the learned `experiences` (a row's later cells, methods not
    learned yet, are left out: averages are over what the model has learned)."""
    keys = [e.key for e in experiences]
    row_acc, row_auc = row_acc[:len(keys)], row_auc[:len(keys)]
    row_bal = None if row_bal is None else row_bal[:len(keys)]
    row_video_auc = None if row_video_auc is None else row_video_auc[:len(keys)]
    out = {
        "methods": keys,
        "accuracy": dict(zip(keys, row_acc)),
        "auc": dict(zip(keys, row_auc)),
        "avg_accuracy": sum(row_acc) / len(row_acc),
        "avg_auc": _mean(row_auc),
        "forgetting": forgetting,
        "bwt": bwt,
        "threshold": threshold,
    }
    if row_bal is not None:
        out["balanced_accuracy"] = dict(zip(keys, row_bal))
        out["avg_balanced_accuracy"] = _mean(row_bal)
    if row_video_auc is not None and any(not math.isnan(v) for v in row_video_auc):
        # Video level (mean P(fake) of a video's faces) where methods have several faces per video.
        out["video_auc"] = {k: v for k, v in zip(keys, row_video_auc) if not math.isnan(v)}
        out["avg_video_auc"] = _mean(row_video_auc)
    return out


def strategy_report(learner, results: dict, seconds: float) -> dict:
    """One strategy's whole run, as `dfcl compare` and the benchmarks report it."""
    h = learner.history
    return {"accuracy_matrix": h.accuracy_matrix, "auc_matrix": h.auc_matrix,
            "balanced_accuracy_matrix": h.balanced_accuracy_matrix, "video_auc_matrix": h.video_auc_matrix,
            "avg_accuracy": results["avg_accuracy"], "avg_auc": results["avg_auc"], "avg_video_auc": results.get("avg_video_auc"),
            "avg_balanced_accuracy": results.get("avg_balanced_accuracy"), "threshold": results["threshold"],
            "forgetting": results["forgetting"], "auc_forgetting": results["auc_forgetting"], "bwt": results["bwt"],
            "auc_forward_transfer": results.get("auc_forward_transfer"), "forward_transfer": results.get("forward_transfer"),
            "train_seconds": seconds}
