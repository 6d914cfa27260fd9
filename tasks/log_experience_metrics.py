import mlflow
from prefect import task

from dfcl.ops.tracking import evaluation_metrics


@task
def log_experience_metrics(results: dict, step: int) -> None:
    """One evaluation's per-method and summary metrics (dfcl.ops.tracking.evaluation_metrics) in the
    active MLflow run, at step = experience index."""
    mlflow.log_metrics(evaluation_metrics(results), step=step)
