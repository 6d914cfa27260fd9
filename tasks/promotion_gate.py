from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dfcl.config import Params
from dfcl.learning.learner import Learner
from dfcl.measure import gate
from dfcl.measure.metrics import matrix_metric
from dfcl.measure.scoring import fake_probabilities
from dfcl.ops.registry import champion_version
from dfcl.serving.detector import load_mlflow_detector


def challenger_verdict(learner: Learner, params: Params) -> dict:
    """The gate (dfcl.measure.gate.gate_verdict) on the challenger the learner now is, against
    the registered champion, if any."""
    name = params.mlflow.registered_model
    champ = champion_version(name)  # raises on anything but "no such model": never "no champion" by accident
    champion = None
    if champ is not None:
        model = load_mlflow_detector(f"models:/{name}/{champ.version}", trust_pickle=params.gate.trust_pickle)
        champion = {"version": champ.version, "methods": [m for m in (champ.tags.get("methods") or "").split(",") if m],
                    "test_sets": model.info.get("test_sets") or {}, "threshold": model.threshold,
                    "score": lambda x: fake_probabilities(model.model, x, "cpu").numpy()}
    forgetting = learner.metric_forgetting()[matrix_metric(params.gate.metric).forgetting]
    verdict = gate.gate_verdict(learner.root, learner.history.experiences,
                                lambda x: fake_probabilities(learner.strategy.model, x, learner.strategy.device).numpy(),
                                learner.history.threshold, forgetting, params.gate, params.sbi.method, champion)
    return verdict


@task(cache_policy=NO_CACHE)
def promotion_gate(learner: Learner, params: Params) -> dict:
    """The gate on the challenger the learner now is (challenger_verdict), said in the run's log."""
    verdict = challenger_verdict(learner, params)
    get_run_logger().info("promotion gate: %s%s", "PASSED" if verdict["passed"] else "FAILED",
                          "" if verdict["passed"] else " - " + "; ".join(verdict["reasons"]))
    return verdict
