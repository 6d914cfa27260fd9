import math

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dfcl import bootstrap
from dfcl.arrays import face_videos
from dfcl.detector import load_mlflow_detector
from dfcl.learner import Learner
from dfcl.scoring import fake_probabilities
from dfcl.mlflow_registry import champion_version


def test_sets(learner: Learner, champion_methods: list[str], champion_sets: dict) -> tuple[dict, dict]:
    """The test faces to score both models on: every method either model learned. The
    challenger's own methods from its pinned experiences; a method only the champion learned
    from where the champion's version says its test faces are pinned. Returns
    ({method: (x path, y path, learned by the challenger)}, {method: why it cannot be scored})."""
    sets = {e.key: (learner.root / e.test_x, learner.root / e.test_y, True) for e in learner.history.experiences}
    missing = {}
    for key in champion_methods:
        if key in sets:
            continue
        where = champion_sets.get(key) or {}
        x, y = (learner.root / where[k] if where.get(k) else None for k in ("test_x", "test_y"))
        if x is not None and x.is_file() and y.is_file():
            sets[key] = (x, y, False)
        else:
            missing[key] = ("the champion learned it, the challenger did not, and its test faces are not here "
                            f"({x or 'the champion recorded none'}): the challenger cannot be checked on it")
    return sets, missing


def one_class(y: np.ndarray) -> str | None:
    """Why a test split gives no AUC or balanced accuracy, or None."""
    real, fake = int((y == 0).sum()), int((y == 1).sum())
    if real and fake:
        return None
    return f"its test split has only {'real' if real else 'fake'} faces ({real or fake}): no AUC to compare"


def test_scores(learner: Learner, champion, champion_threshold: float, gate: dict, sets: dict) -> dict:
    """Per method of `sets`, both models on the same test faces: each metric with its paired
    bootstrap interval of challenger - champion (groups = videos where a video has several
    faces). A method whose faces cannot give the metric goes to `unscored` with the reason."""
    out, unscored = {}, {}
    draws = {m: [] for m in ("auc", "balanced_accuracy")}
    for i, (key, (x_path, y_path, learned)) in enumerate(sets.items()):
        y = np.load(y_path)
        why = one_class(y)
        if why:
            unscored[key] = why
            continue
        x = np.load(x_path, mmap_mode="r")
        videos = face_videos(x_path)
        groups = videos if videos is not None and len(set(videos)) < len(videos) else None
        p_new = fake_probabilities(learner.strategy.model, x, learner.strategy.device).numpy()
        p_old = fake_probabilities(champion, x, "cpu").numpy()
        out[key] = {"faces": int(len(y)), "groups": "videos" if groups is not None else "faces",
                    "challenger_learned": learned}
        for metric in draws:
            r = bootstrap.paired_difference(y, p_new, p_old, groups, metric=metric, n_boot=gate["bootstrap"],
                                            confidence=gate["confidence"], seed=gate["seed"] + i,
                                            thresholds=(learner.history.threshold, champion_threshold))
            draws[metric].append(r.pop("draws"))
            out[key][metric] = r
    average = None
    if out:
        average = {m: {"difference": float(np.mean([out[k][m]["difference"] for k in out])),
                       **bootstrap.interval(np.mean(draws[m], axis=0), gate["confidence"])} for m in draws}
    return {"methods": out, "unscored": unscored, "average": average}


def gate_verdict(learner: Learner, params: dict) -> dict:
    """Score the current champion on the same test sets as the challenger and decide whether the
    challenger may be put to ops. The methods are those either model learned: a method only the
    champion knew is scored from its pinned test faces, and is a failure when they are gone.
    Per method and on average, a paired bootstrap of the gate metric (AUC by default:
    threshold-free, not moved by the class mix) says whether the challenger is "worse" (with
    `gate.confidence`, by more than the allowed drop: `gate.max_drop_self_blended` on the
    self-blended experience), "better" or "cannot tell". Rejected when
    any method or the average is worse, when a method cannot be scored (no faces, one class),
    or when forgetting (in the same metric) exceeds `gate.max_forgetting`."""
    gate, name = params["gate"], params["mlflow"]["registered_model"]
    metric, reasons = gate["metric"], []
    champ = champion_version(name)  # raises on anything but "no such model": never "no champion" by accident
    champion = None
    if champ is None:
        # No champion to compare with; the challenger's own test splits must still give its numbers.
        for e in learner.history.experiences:
            why = one_class(np.load(learner.root / e.test_y))
            if why:
                reasons.append(f"{e.key}: {why}")
    else:
        model = load_mlflow_detector(f"models:/{name}/{champ.version}", trust_pickle=gate["trust_pickle"])
        learned = [m for m in (champ.tags.get("methods") or "").split(",") if m]
        sets, missing = test_sets(learner, learned, model.info.get("test_sets") or {})
        champion = test_scores(learner, model.model, model.threshold, gate, sets)
        champion["unscored"] = {**missing, **champion["unscored"]}
        champion["version"] = champ.version
        champion["methods_learned"] = learned
        reasons += [f"{key}: {why}" for key, why in champion["unscored"].items()]
        for key, r in champion["methods"].items():
            d = r[metric]
            # The self-blended experience is a means (pseudo-fakes that teach blending artefacts),
            # not a forgery anyone uploads: learning real methods may cost it a little.
            allowed = gate["max_drop_self_blended"] if key.split("/")[0] == params["sbi"]["method"] else gate["max_drop_per_method"]
            r["verdict"] = bootstrap.verdict(d["low"], d["high"], allowed)
            if r["verdict"] == "worse":
                reasons.append(f"{key}: {metric} {d['new']:.3f} vs the champion's {d['old']:.3f}, worse by "
                               f"{-d['difference']:.3f} ({gate['confidence']:.0%} interval {d['low']:+.3f} to {d['high']:+.3f})")
        if champion["average"] is not None:
            avg = champion["average"][metric]
            champion["average"]["verdict"] = bootstrap.verdict(avg["low"], avg["high"], gate["max_drop_average"])
            if champion["average"]["verdict"] == "worse":
                reasons.append(f"average {metric} worse by {-avg['difference']:.3f} ({gate['confidence']:.0%} interval "
                               f"{avg['low']:+.3f} to {avg['high']:+.3f})")
    forgetting = learner.metric_forgetting()[f"{metric}_forgetting"]
    if not math.isnan(forgetting) and forgetting > gate["max_forgetting"]:
        reasons.append(f"forgetting {forgetting:.3f} ({metric}) exceeds the bound {gate['max_forgetting']}")
    return {"passed": not reasons, "reasons": reasons, "champion": champion, "metric": metric,
            "forgetting": forgetting}


@task(cache_policy=NO_CACHE)
def promotion_gate(learner: Learner, challenger: dict, params: dict) -> dict:
    """The gate (gate_verdict) on the challenger the learner now is."""
    verdict = gate_verdict(learner, params)
    get_run_logger().info("promotion gate: %s%s", "PASSED" if verdict["passed"] else "FAILED",
                          "" if verdict["passed"] else " - " + "; ".join(verdict["reasons"]))
    return verdict
