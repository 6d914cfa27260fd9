import math

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dfcl.learner import Learner, score_model


def champion_version(registered_model: str):
    try:
        return MlflowClient().get_model_version_by_alias(registered_model, "champion")
    except MlflowException:
        return None


@task(cache_policy=NO_CACHE)
def promotion_gate(learner: Learner, challenger: dict, params: dict) -> dict:
    """Score the current champion on the same test sets and decide whether the challenger may
    be put to ops: its average accuracy must not fall below the champion's minus a tolerance,
    and its forgetting must stay under a bound."""
    logger = get_run_logger()
    gate, name = params["gate"], params["mlflow"]["registered_model"]
    reasons = []
    champ = champion_version(name)
    champion = None
    if champ is not None:
        model = mlflow.pytorch.load_model(f"models:/{name}@champion", map_location="cpu")
        champion = score_model(model, learner)
        champion["version"] = champ.version
        floor = champion["avg_accuracy"] - gate["tolerance"]
        if challenger["avg_accuracy"] < floor:
            reasons.append(f"average accuracy {challenger['avg_accuracy']:.3f} is below the champion's "
                           f"{champion['avg_accuracy']:.3f} minus tolerance {gate['tolerance']}")
    forgetting = challenger["forgetting"]
    if not math.isnan(forgetting) and forgetting > gate["max_forgetting"]:
        reasons.append(f"forgetting {forgetting:.3f} exceeds the bound {gate['max_forgetting']}")
    verdict = {"passed": not reasons, "reasons": reasons, "champion": champion}
    logger.info("promotion gate: %s%s", "PASSED" if verdict["passed"] else "FAILED",
                "" if verdict["passed"] else " - " + "; ".join(reasons))
    return verdict
