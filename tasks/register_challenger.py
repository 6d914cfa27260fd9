import copy
import math

import mlflow
import torch
from mlflow import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dfcl.faces import framing_of
from dfcl.learner import Learner
from dfcl.metrics import learned_card
from dfcl.tracking import log_detector, log_matrices
from models.pyfunc import architecture_of


@task(cache_policy=NO_CACHE)
def register_challenger(learner: Learner, results: dict, registered_model: str) -> str:
    """Log the detector (an MLflow pyfunc, see models/pyfunc.py), register it as a new version and point the
    `challenger` alias at it. Returns the version number."""
    log_matrices(learner)
    model = copy.deepcopy(learner.strategy.model).to("cpu", memory_format=torch.contiguous_format).eval()
    mp = learner.params["model"]
    # A model restored from a checkpoint saved before create_model recorded its arguments was
    # built by make_model from these same params (the learner refuses other ones).
    architecture = architecture_of(model) or {
        "name": mp["name"], "arguments": {"num_classes": 2, **{k: v for k, v in mp.items()
                                                             if k not in ("name", "pretrained", "weights")}}}
    # Where each method's test faces are pinned: the gate scores a later challenger on them even
    # if that one never learned the method.
    test_sets = {e.key: {"test_x": e.test_x, "test_y": e.test_y, "digest": e.digest}
                 for e in learner.history.experiences}
    info = log_detector(model, learner.params["data"]["image_size"], learner.history.threshold,
                        {"methods": results["methods"], "test_sets": test_sets,
                         "framing": framing_of(learner.params), "learned": learned_card(learner.history),
                         "auc_forward_transfer": _number(results.get("auc_forward_transfer"))},
                        registered_model, architecture, trust=learner.trust)
    version = str(info.registered_model_version)
    client = MlflowClient()
    run = mlflow.active_run().info.run_id
    for key in ("avg_accuracy", "avg_balanced_accuracy", "avg_auc", "forgetting", "auc_forgetting", "bwt", "threshold"):
        if _number(results.get(key)) is not None:
            client.set_model_version_tag(registered_model, version, key, f"{results[key]:.4f}")
    client.set_model_version_tag(registered_model, version, "methods", ",".join(results["methods"]))
    client.set_registered_model_alias(registered_model, "challenger", version)
    get_run_logger().info("registered %s version %s as 'challenger' (run %s)", registered_model, version, run)
    return version


def _number(value) -> float | None:
    """A figure for metadata and tags: None when missing or NaN (JSON has no NaN)."""
    return None if value is None or math.isnan(value) else float(value)
