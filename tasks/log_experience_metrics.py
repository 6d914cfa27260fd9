import mlflow
from prefect import task


@task
def log_experience_metrics(results: dict, step: int) -> None:
    """Per-method and aggregate metrics of one evaluation, at step = experience index."""
    metrics = {f"acc/{k}": v for k, v in results["accuracy"].items()}
    metrics |= {f"auc/{k}": v for k, v in results["auc"].items()}
    metrics |= {f"balanced_acc/{k}": v for k, v in results.get("balanced_accuracy", {}).items()}
    metrics |= {f"video_auc/{k}": v for k, v in results.get("video_auc", {}).items()}
    metrics |= {k: results[k] for k in ("avg_accuracy", "avg_balanced_accuracy", "avg_auc", "avg_video_auc",
                                         "forgetting", "auc_forgetting", "balanced_accuracy_forgetting", "bwt",
                                         "threshold") if k in results}
    mlflow.log_metrics(metrics, step=step)
