import copy
import tempfile
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dfcl.learner import Learner
from dfcl.plots import heatmap, matrix_frame

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


def log_matrices(learner: Learner) -> None:
    """Accuracy and AUC matrices as CSV and heatmap PNG artifacts of the active run."""
    methods = [e.key for e in learner.history.experiences]
    with tempfile.TemporaryDirectory() as tmp:
        for name, matrix in (("accuracy", learner.history.accuracy_matrix), ("auc", learner.history.auc_matrix)):
            frame = matrix_frame(matrix, methods)
            frame.to_csv(Path(tmp) / f"{name}_matrix.csv")
            heatmap(frame, Path(tmp) / f"{name}_matrix.png", f"{name} ({learner.params['strategy']['name']})")
        mlflow.log_artifacts(tmp, artifact_path="evaluation")


@task(cache_policy=NO_CACHE)
def register_challenger(learner: Learner, results: dict, registered_model: str) -> str:
    """Log the detector with mlflow.pytorch, register it as a new version and point the
    `challenger` alias at it. Returns the version number."""
    log_matrices(learner)
    model = copy.deepcopy(learner.strategy.model).to("cpu", memory_format=torch.contiguous_format).eval()
    size = learner.params["data"]["image_size"]
    # Pickle format: torch.export would freeze the example's batch size into the model.
    info = mlflow.pytorch.log_model(
        model, name="model", serialization_format="pickle", code_paths=[str(MODELS_DIR)],
        input_example=torch.zeros(2, 3, size, size).numpy(),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "timm"],
        metadata={"image_size": size, "classes": ["real", "fake"], "methods": results["methods"],
                  "threshold": learner.history.threshold},
        registered_model_name=registered_model)
    version = str(info.registered_model_version)
    client = MlflowClient()
    run = mlflow.active_run().info.run_id
    for key in ("avg_accuracy", "avg_balanced_accuracy", "avg_auc", "forgetting", "bwt", "threshold"):
        if key in results:
            client.set_model_version_tag(registered_model, version, key, f"{results[key]:.4f}")
    client.set_model_version_tag(registered_model, version, "methods", ",".join(results["methods"]))
    client.set_registered_model_alias(registered_model, "challenger", version)
    get_run_logger().info("registered %s version %s as 'challenger' (run %s)", registered_model, version, run)
    return version
