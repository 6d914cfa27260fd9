import copy

import mlflow
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dfcl.data.faces import framing_of
from dfcl.learning.learner import Learner
from dfcl.learning.learner_versions import archive
from dfcl.measure.metrics import learned_card, summary_values
from dfcl.ops.registry import champion_version, tag_challenger
from dfcl.ops.tracking import log_detector, log_matrices
from models.pyfunc import architecture_of


@task(cache_policy=NO_CACHE)
def register_challenger(learner: Learner, results: dict, registered_model: str) -> str:
    """Log the matrices and the detector (an MLflow pyfunc, see models/pyfunc.py), register it as a
    new version tagged with its methods and summaries (dfcl.measure.metrics.SUMMARIES) and point the
    `challenger` alias at it. Returns the version number."""
    log_matrices(learner)
    model = copy.deepcopy(learner.strategy.model).to("cpu", memory_format=torch.contiguous_format).eval()
    architecture = architecture_of(model)  # recorded by create_model, which builds every learner's model
    # Where each method's test faces are pinned: the gate scores a later challenger on them even
    # if that one never learned the method.
    test_sets = {e.key: {"test_x": e.test_x, "test_y": e.test_y, "digest": e.digest}
                 for e in learner.history.experiences}
    summaries = summary_values(results)  # NaN left out: JSON has none
    info = log_detector(model, learner.params.data.image_size, learner.history.threshold,
                        {"methods": results["methods"], "test_sets": test_sets,
                         "framing": framing_of(learner.params.faces), "learned": learned_card(learner.history),
                         "auc_forward_transfer": summaries.get("auc_forward_transfer")},
                        registered_model, architecture, trust=learner.trust)
    version = str(info.registered_model_version)
    tag_challenger(registered_model, version, summaries, results["methods"])
    # Its learner state is kept by version, so a later run can continue from whichever is champion.
    champion = champion_version(registered_model)
    archive(learner.folder, version, learner.params.flow.keep_learner_versions,
            protect={str(champion.version)} if champion else set())
    get_run_logger().info("registered %s version %s as 'challenger' (run %s)", registered_model, version,
                          mlflow.active_run().info.run_id)
    return version

