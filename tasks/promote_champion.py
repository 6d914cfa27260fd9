from datetime import datetime, timezone

import mlflow
from mlflow import MlflowClient
from prefect import get_run_logger, task


@task
def promote_champion(registered_model: str, version: str, approver: str, reason: str) -> None:
    """Move the `champion` alias to `version`, keeping who, when and why as MLflow tags
    (on the model version and on the run that trained it)."""
    client = MlflowClient()
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tags = {"promoted_by": approver, "promoted_at": when, "promotion_reason": reason}
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, value)
        mlflow.set_tag(key, value)
    client.set_registered_model_alias(registered_model, "champion", version)
    get_run_logger().info("version %s of %s is now 'champion' (approved by %s)", version, registered_model, approver)


@task
def record_rejection(registered_model: str, version: str, approver: str, reason: str) -> None:
    """Keep the rejection on the record; the champion alias does not move."""
    client = MlflowClient()
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for key, value in {"rejected_by": approver, "rejected_at": when, "rejection_reason": reason}.items():
        client.set_model_version_tag(registered_model, version, key, value)
        mlflow.set_tag(key, value)
    get_run_logger().info("version %s of %s rejected by %s: %s", version, registered_model, approver, reason)
