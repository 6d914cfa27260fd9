"""The promotion gate's statistics and rules, as functions of labels, scores and the `gate` section: per
method, challenger vs champion on the same test faces with a paired bootstrap interval of the
difference (dfcl.measure.bootstrap); each method's and the average's verdict in the gate metric
("worse" with `gate.confidence` by more than the allowed drop, "better", "cannot tell", and "too
far below" where the interval cannot tell but the point estimate lies beyond `gate.max_point_drop`);
the floors (scores that are not numbers, a first champion under `gate.min_auc`); and the reasons
to reject. Also which test faces both models are scored on (`test_sets`) and the scoring itself
(`gate_verdict`), with each model given as a function from faces to P(fake): the task
(tasks/promotion_gate.py) only finds the champion in the registry and loads it."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from dfcl.config import GATE_METRICS, GateConfig
from dfcl.data.arrays import ExperienceSpec, face_videos
from dfcl.measure import bootstrap

Scorer = Callable[[np.ndarray], np.ndarray]  # faces (N, S, S, 3) uint8 -> P(fake) (N,)

METRICS = GATE_METRICS  # what the bootstrap compares (dfcl.measure.bootstrap.score)


def one_class(y: np.ndarray) -> str | None:
    """Why a test split gives no AUC or balanced accuracy, or None."""
    real, fake = int((y == 0).sum()), int((y == 1).sum())
    if real and fake:
        return None
    return f"its test split has only {'real' if real else 'fake'} faces ({real or fake}): no AUC to compare"


def not_finite(p: np.ndarray, who: str) -> str | None:
    """Why scores cannot be compared: NaN or infinite ones (a diverged model). They would sort as
    they are listed, so a model of NaNs scores AUC 1.000 on a test set that lists reals first."""
    bad = int((~np.isfinite(np.asarray(p, dtype=float))).sum())
    return f"{bad} of {len(p)} of the {who}'s scores are not finite (NaN or inf)" if bad else None


def point_auc(y, p) -> float:
    return float(bootstrap.weighted_auc(np.asarray(y), np.asarray(p), np.ones((1, len(y)), dtype=np.float32))[0])


def below_floor(aucs: dict[str, float], gate: GateConfig) -> list[str]:
    """A first champion (no champion to compare with) must reach `gate.min_auc` on each method."""
    return [f"{key}: AUC {auc:.3f} is below gate.min_auc {gate.min_auc} (a first champion's floor)"
            for key, auc in aucs.items() if auc < gate.min_auc]


def resampling_groups(videos: np.ndarray | None) -> np.ndarray | None:
    """What the bootstrap draws together: a face's video where a video has several faces, else
    each face on its own (None)."""
    return videos if videos is not None and len(set(videos)) < len(videos) else None


def compare_method(y, p_new, p_old, groups, thresholds: tuple[float, float], gate: GateConfig, seed: int) -> tuple[dict, dict]:
    """Challenger (`p_new`) and champion (`p_old`) on one method's test faces: each of METRICS
    with the bootstrap interval of challenger - champion at `thresholds` (challenger's,
    champion's). Returns (the method's row, {metric: its resampled differences})."""
    row, draws = {"faces": int(len(y)), "groups": "videos" if groups is not None else "faces"}, {}
    for metric in METRICS:
        r = bootstrap.paired_difference(y, p_new, p_old, groups, metric=metric, n_boot=gate.bootstrap,
                                        confidence=gate.confidence, seed=seed, thresholds=thresholds)
        draws[metric] = r.pop("draws")
        row[metric] = r
    return row, draws


def average(rows: dict[str, dict], draws: list[dict], confidence: float) -> dict | None:
    """Over the compared methods (`rows`, their `draws` in the same order): each metric's mean
    difference, with the interval of the mean of the same resamples; None with no method."""
    if not rows:
        return None
    return {m: {"difference": float(np.mean([r[m]["difference"] for r in rows.values()])),
                **bootstrap.interval(np.mean([d[m] for d in draws], axis=0), confidence)} for m in METRICS}


def allowed_drop(key: str, gate: GateConfig, self_blended: str) -> float:
    """How much worse than the champion a method may be. The self-blended experience is a means
    (pseudo-fakes that teach blending artefacts), not a forgery anyone uploads: learning real
    methods may cost it a little."""
    return gate.max_drop_self_blended if key.split("/")[0] == self_blended else gate.max_drop_per_method


def judge(comparison: dict, gate: GateConfig, self_blended: str) -> list[str]:
    """Set each method's and the average's verdict in `comparison` (rows of compare_method under
    "methods", `average` under "average"); returns the reasons to reject: what is worse."""
    metric, reasons = gate.metric, []
    for key, r in comparison["methods"].items():
        d, drop = r[metric], allowed_drop(key, gate, self_blended)
        r["verdict"] = _verdict(d, drop, gate)
        if r["verdict"] == "worse":
            reasons.append(f"{key}: {metric} {d['new']:.3f} vs the champion's {d['old']:.3f}, worse by "
                           f"{-d['difference']:.3f} ({gate.confidence:.0%} interval {d['low']:+.3f} to {d['high']:+.3f})")
        elif r["verdict"] == TOO_FAR:
            reasons.append(f"{key}: {metric} {d['new']:.3f} vs the champion's {d['old']:.3f}: below by "
                           f"{-d['difference']:.3f}, more than gate.max_point_drop {max(gate.max_point_drop, drop)} "
                           "(the interval alone cannot tell)")
    if comparison["average"] is not None:
        avg = comparison["average"][metric]
        comparison["average"]["verdict"] = _verdict(avg, gate.max_drop_average, gate)
        if comparison["average"]["verdict"] == "worse":
            reasons.append(f"average {metric} worse by {-avg['difference']:.3f} ({gate.confidence:.0%} interval "
                           f"{avg['low']:+.3f} to {avg['high']:+.3f})")
        elif comparison["average"]["verdict"] == TOO_FAR:
            reasons.append(f"average {metric} below the champion's by {-avg['difference']:.3f}, more than "
                           f"gate.max_point_drop {max(gate.max_point_drop, gate.max_drop_average)}")
    return reasons


TOO_FAR = "too far below"


def _verdict(d: dict, drop: float, gate: GateConfig) -> str:
    """The interval's verdict, except that "cannot tell" on a point estimate far below the
    champion's (0.974 vs 1.000 on a small test set) is no reason to put it to ops, let alone to
    --auto-approve: a non-inferiority margin on the point (at least the interval's own drop)."""
    v = bootstrap.verdict(d["low"], d["high"], drop)
    return TOO_FAR if v == "cannot tell" and d["difference"] < -max(gate.max_point_drop, drop) else v


def decide(comparison: dict | None, unscored: dict[str, str], forgetting: float, gate: GateConfig, self_blended: str,
           own: dict[str, float] | None = None) -> dict:
    """The gate's verdict: rejected when a method gives no number (`unscored`: {method: why}),
    when a method or the average is worse than the champion (`comparison`, None when there is
    no champion yet), when a first challenger's own AUC (`own`: {method: AUC}) is under
    `gate.min_auc`, or when `forgetting` (in the gate metric) exceeds `gate.max_forgetting`."""
    reasons = [f"{key}: {why}" for key, why in unscored.items()]
    if comparison is not None:
        reasons += judge(comparison, gate, self_blended)
    else:
        reasons += below_floor(own or {}, gate)
    if not math.isnan(forgetting) and forgetting > gate.max_forgetting:
        reasons.append(f"forgetting {forgetting:.3f} ({gate.metric}) exceeds the bound {gate.max_forgetting}")
    return {"passed": not reasons, "reasons": reasons, "champion": comparison, "metric": gate.metric,
            "forgetting": forgetting, "own_auc": own}


def test_sets(root: Path, experiences: list[ExperienceSpec], champion_methods: list[str],
              champion_sets: dict) -> tuple[dict, dict]:
    """The test faces to score both models on: every method either model learned. The
    challenger's own methods from its pinned experiences; a method only the champion learned
    from where the champion's version says its test faces are pinned. Returns
    ({method: (x path, y path, learned by the challenger)}, {method: why it cannot be scored})."""
    sets = {e.key: (root / e.test_x, root / e.test_y, True) for e in experiences}
    missing = {}
    for key in champion_methods:
        if key in sets:
            continue
        where = champion_sets.get(key) or {}
        x, y = (root / where[k] if where.get(k) else None for k in ("test_x", "test_y"))
        if x is not None and x.is_file() and y.is_file():
            sets[key] = (x, y, False)
        else:
            missing[key] = ("the champion learned it, the challenger did not, and its test faces are not here "
                            f"({x or 'the champion recorded none'}): the challenger cannot be checked on it")
    return sets, missing


def compare_with_champion(sets: dict, new: Scorer, old: Scorer, thresholds: tuple[float, float], gate: GateConfig) -> dict:
    """Both models on the same test faces of each method of `sets` (compare_method: groups =
    videos where a video has several faces), and their average. A method whose faces cannot give
    the metrics goes to `unscored` with the reason."""
    rows, draws, unscored = {}, [], {}
    for i, (key, (x_path, y_path, learned)) in enumerate(sets.items()):
        y = np.load(y_path)
        why = one_class(y)
        if why:
            unscored[key] = why
            continue
        x = np.load(x_path, mmap_mode="r")
        p_new, p_old = new(x), old(x)
        why = not_finite(p_new, "challenger") or not_finite(p_old, "champion")
        if why:
            unscored[key] = why
            continue
        row, drawn = compare_method(y, p_new, p_old, resampling_groups(face_videos(x_path)), thresholds,
                                    gate, seed=gate.seed + i)
        rows[key] = {**row, "challenger_learned": learned}
        draws.append(drawn)
    return {"methods": rows, "unscored": unscored, "average": average(rows, draws, gate.confidence)}


def own_aucs(sets: dict, new: Scorer) -> tuple[dict[str, float], dict[str, str]]:
    """Without a champion: the challenger's own AUC on each of its test sets, and the sets that
    give no number (one class, scores that are not numbers) with the reason."""
    own, unscored = {}, {}
    for key, (x_path, y_path, _) in sets.items():
        y = np.load(y_path)
        why = one_class(y)
        if not why:
            p = new(np.load(x_path, mmap_mode="r"))
            why = not_finite(p, "challenger")
        if why:
            unscored[key] = why
        else:
            own[key] = point_auc(y, p)
    return own, unscored


def gate_verdict(root: Path, experiences: list[ExperienceSpec], new: Scorer, threshold: float,
                 forgetting: float, gate: GateConfig, self_blended: str, champion: dict | None = None) -> dict:
    """Score the champion on the same test sets as the challenger (`new`, learned `experiences`
    pinned under `root`) and decide whether the challenger may be put to ops (decide). The
    methods are those either model learned: a method only the champion knew is scored from its
    pinned test faces, and is a failure when they are gone. Without a champion (None), the
    challenger's own test splits must still give its numbers and reach the floor. `champion`:
    {"version", "methods" (learned), "test_sets" (where it pinned them), "threshold", "score"}."""
    if champion is None:
        sets, _ = test_sets(root, experiences, [], {})
        own, unscored = own_aucs(sets, new)
        return decide(None, unscored, forgetting, gate, self_blended, own)
    sets, missing = test_sets(root, experiences, champion["methods"], champion["test_sets"])
    comparison = compare_with_champion(sets, new, champion["score"], (threshold, champion["threshold"]), gate)
    unscored = {**missing, **comparison["unscored"]}
    comparison |= {"unscored": unscored, "version": champion["version"], "methods_learned": champion["methods"]}
    return decide(comparison, unscored, forgetting, gate, self_blended)
