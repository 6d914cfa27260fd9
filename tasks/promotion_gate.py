import math

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dfcl import bootstrap
from dfcl.evaluate import load_mlflow_detector
from dfcl.arrays import face_videos
from dfcl.learner import Learner
from dfcl.metrics import fake_probabilities
from dfcl.registry import champion_version


def test_scores(learner: Learner, champion, champion_threshold: float, gate: dict) -> dict:
    """Per learned method, both models on the same test faces: each metric with its paired
    bootstrap interval of challenger - champion (groups = videos where a video has several faces)."""
    root, out = learner.root, {}
    draws = {m: [] for m in ("auc", "balanced_accuracy")}
    for i, e in enumerate(learner.history.experiences):
        x = np.load(root / e.test_x, mmap_mode="r")
        y = np.load(root / e.test_y)
        videos = face_videos(root / e.test_x)
        groups = videos if videos is not None and len(set(videos)) < len(videos) else None
        p_new = fake_probabilities(learner.strategy.model, x, learner.strategy.device).numpy()
        p_old = fake_probabilities(champion, x, "cpu").numpy()
        out[e.key] = {"faces": int(len(y)), "groups": "videos" if groups is not None else "faces"}
        for metric in draws:
            r = bootstrap.paired_difference(y, p_new, p_old, groups, metric=metric, n_boot=gate["bootstrap"],
                                            confidence=gate["confidence"], seed=gate["seed"] + i,
                                            thresholds=(learner.history.threshold, champion_threshold))
            draws[metric].append(r.pop("draws"))
            out[e.key][metric] = r
    average = {m: {"difference": float(np.mean([out[k][m]["difference"] for k in out])),
                   **bootstrap.interval(np.mean(draws[m], axis=0), gate["confidence"])} for m in draws}
    return {"methods": out, "average": average}


@task(cache_policy=NO_CACHE)
def promotion_gate(learner: Learner, challenger: dict, params: dict) -> dict:
    """Score the current champion on the same test sets as the challenger and decide whether the
    challenger may be put to ops. Per method and on average, a paired bootstrap of the gate
    metric (AUC by default: threshold-free, not moved by the class mix) says whether the
    challenger is "worse" (with `gate.confidence`, by more than the allowed drop), "better" or
    "cannot tell". Rejected when any method or the average is worse, or when forgetting (in the
    same metric) exceeds `gate.max_forgetting`."""
    logger = get_run_logger()
    gate, name = params["gate"], params["mlflow"]["registered_model"]
    metric, reasons = gate["metric"], []
    champ = champion_version(name)
    champion = None
    if champ is not None:
        model = load_mlflow_detector(f"models:/{name}/{champ.version}")
        champion = test_scores(learner, model.model, model.threshold, gate)
        champion["version"] = champ.version
        champion["methods_learned"] = (champ.tags.get("methods") or "").split(",")
        for key, r in champion["methods"].items():
            d = r[metric]
            r["verdict"] = bootstrap.verdict(d["low"], d["high"], gate["max_drop_per_method"])
            if r["verdict"] == "worse":
                reasons.append(f"{key}: {metric} {d['new']:.3f} vs the champion's {d['old']:.3f}, worse by "
                               f"{-d['difference']:.3f} ({gate['confidence']:.0%} interval {d['low']:+.3f} to {d['high']:+.3f})")
        avg = champion["average"][metric]
        champion["average"]["verdict"] = bootstrap.verdict(avg["low"], avg["high"], gate["max_drop_average"])
        if champion["average"]["verdict"] == "worse":
            reasons.append(f"average {metric} worse by {-avg['difference']:.3f} ({gate['confidence']:.0%} interval "
                           f"{avg['low']:+.3f} to {avg['high']:+.3f})")
    forgetting = learner.metric_forgetting()[f"{metric}_forgetting"]
    if not math.isnan(forgetting) and forgetting > gate["max_forgetting"]:
        reasons.append(f"forgetting {forgetting:.3f} ({metric}) exceeds the bound {gate['max_forgetting']}")
    verdict = {"passed": not reasons, "reasons": reasons, "champion": champion, "metric": metric,
               "forgetting": forgetting}
    logger.info("promotion gate: %s%s", "PASSED" if verdict["passed"] else "FAILED",
                "" if verdict["passed"] else " - " + "; ".join(reasons))
    return verdict

