import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dfcl import gate
from dfcl.arrays import face_videos
from dfcl.detector import load_mlflow_detector
from dfcl.learner import Learner
from dfcl.metrics import matrix_metric
from dfcl.mlflow_registry import champion_version
from dfcl.scoring import fake_probabilities


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


def compare_with_champion(learner: Learner, champion, champion_threshold: float, params: dict, sets: dict) -> dict:
    """Both models on the same test faces of each method of `sets` (dfcl.gate.compare_method:
    groups = videos where a video has several faces), and their average. A method whose faces
    cannot give the metrics goes to `unscored` with the reason."""
    rows, draws, unscored = {}, [], {}
    for i, (key, (x_path, y_path, learned)) in enumerate(sets.items()):
        y = np.load(y_path)
        why = gate.one_class(y)
        if why:
            unscored[key] = why
            continue
        x = np.load(x_path, mmap_mode="r")
        p_new = fake_probabilities(learner.strategy.model, x, learner.strategy.device).numpy()
        p_old = fake_probabilities(champion, x, "cpu").numpy()
        why = gate.not_finite(p_new, "challenger") or gate.not_finite(p_old, "champion")
        if why:
            unscored[key] = why
            continue
        row, drawn = gate.compare_method(y, p_new, p_old, gate.resampling_groups(face_videos(x_path)),
                                         (learner.history.threshold, champion_threshold), params["gate"],
                                         seed=params["gate"]["seed"] + i)
        rows[key] = {**row, "challenger_learned": learned}
        draws.append(drawn)
    return {"methods": rows, "unscored": unscored, "average": gate.average(rows, draws, params["gate"]["confidence"])}


def gate_verdict(learner: Learner, params: dict) -> dict:
    """Score the current champion on the same test sets as the challenger and decide whether the
    challenger may be put to ops (dfcl.gate.decide). The methods are those either model learned:
    a method only the champion knew is scored from its pinned test faces, and is a failure when
    they are gone. Without a champion, the challenger's own test splits must still give its
    numbers."""
    name = params["mlflow"]["registered_model"]
    champ = champion_version(name)  # raises on anything but "no such model": never "no champion" by accident
    comparison, unscored, own = None, {}, {}
    if champ is None:  # the challenger's own numbers must still be numbers, and reach the floor
        for e in learner.history.experiences:
            y = np.load(learner.root / e.test_y)
            why = gate.one_class(y)
            if not why:
                x = np.load(learner.root / e.test_x, mmap_mode="r")
                p = fake_probabilities(learner.strategy.model, x, learner.strategy.device).numpy()
                why = gate.not_finite(p, "challenger")
            if why:
                unscored[e.key] = why
            else:
                own[e.key] = gate.point_auc(y, p)
    else:
        model = load_mlflow_detector(f"models:/{name}/{champ.version}", trust_pickle=params["gate"]["trust_pickle"])
        learned = [m for m in (champ.tags.get("methods") or "").split(",") if m]
        sets, missing = test_sets(learner, learned, model.info.get("test_sets") or {})
        comparison = compare_with_champion(learner, model.model, model.threshold, params, sets)
        unscored = {**missing, **comparison["unscored"]}
        comparison |= {"unscored": unscored, "version": champ.version, "methods_learned": learned}
    forgetting = learner.metric_forgetting()[matrix_metric(params["gate"]["metric"]).forgetting]
    return gate.decide(comparison, unscored, forgetting, params, own)


@task(cache_policy=NO_CACHE)
def promotion_gate(learner: Learner, params: dict) -> dict:
    """The gate (gate_verdict) on the challenger the learner now is."""
    verdict = gate_verdict(learner, params)
    get_run_logger().info("promotion gate: %s%s", "PASSED" if verdict["passed"] else "FAILED",
                          "" if verdict["passed"] else " - " + "; ".join(verdict["reasons"]))
    return verdict
