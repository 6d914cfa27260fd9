import copy

import mlflow
import torch
from mlflow import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dfcl.faces import framing_of
from dfcl.learner import Learner
from dfcl.learner_versions import archive
from dfcl.metrics import learned_card, summary_values
from dfcl.mlflow_registry import champion_version
from dfcl.tracking import log_detector, log_matrices
from models.pyfunc import architecture_of


@task(cache_policy=NO_CACHE)
def register_challenger(learner: Learner, results: dict, registered_model: str) -> str:
    """Log the matrices and the detector (an MLflow pyfunc, see models/pyfunc.py), register it as a
    new version tagged with its methods and summaries (dfcl.metrics.SUMMARIES) and point the
    `challenger` alias at it. Returns the version number."""
    log_matrices(learner)
    model = copy.deepcopy(learner.strategy.model).to("cpu", memory_format=torch.contiguous_format).eval()
    architecture = architecture_of(model)  # recorded by create_model, which builds every learner's model
    # Where each method's test faces are pinned: the gate scores a later challenger on them even
    # if that one never learned the method.
    test_sets = {e.key: {"test_x": e.test_x, "test_y": e.test_y, "digest": e.digest}
                 for e in learner.history.experiences}
    summaries = summary_values(results)  # NaN left out: JSON has none
    info = log_detector(model, learner.params["data"]["image_size"], learner.history.threshold,
                        {"methods": results["methods"], "test_sets": test_sets,
                         "framing": framing_of(learner.params), "learned": learned_card(learner.history),
                         "auc_forward_transfer": summaries.get("auc_forward_transfer")},
                        registered_model, architecture, trust=learner.trust)
    version = str(info.registered_model_version)
    client = MlflowClient()
    run = mlflow.active_run().info.run_id
    for key, value in summaries.items():
        client.set_model_version_tag(registered_model, version, key, f"{value:.4f}")
    client.set_model_version_tag(registered_model, version, "methods", ",".join(results["methods"]))
    client.set_registered_model_alias(registered_model, "challenger", version)
    # Its learner state is kept by version, so a later run can continue from whichever is champion.
    champion = champion_version(registered_model)
    archive(learner.folder, version, learner.params["flow"]["keep_learner_versions"],
            protect={str(champion.version)} if champion else set())
    get_run_logger().info("registered %s version %s as 'challenger' (run %s)", registered_model, version, run)
    return version

