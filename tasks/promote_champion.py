import mlflow
from mlflow import MlflowClient
from prefect import get_run_logger, task

from dfcl import ops


def tag_decision(registered_model: str, version: str, tags: dict[str, str]) -> None:
    """The same who/when/why tags on the model version and on the active run."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, value)
        mlflow.set_tag(key, value)


@task
def promote_champion(registered_model: str, version: str, approver: str, reason: str, scored: str | None) -> None:
    """Move the `champion` alias to `version` if it still points at `scored`, the version the gate
    compared with (ops.promote: else StaleDecision, and nothing moves); then keep who, when and
    why as MLflow tags (on the model version and on the run that trained it)."""
    try:
        ops.promote(registered_model, version, approver, reason, scored)
    except ops.StaleDecision as e:
        get_run_logger().warning("%s", e)
        raise
    tag_decision(registered_model, version,
                 {"promoted_by": approver, "promoted_at": ops.now(), "promotion_reason": reason})
    get_run_logger().info("version %s of %s is now 'champion' (approved by %s)", version, registered_model, approver)


@task
def record_rejection(registered_model: str, version: str, approver: str, reason: str) -> None:
    """Keep the rejection on the record; the champion alias does not move."""
    tag_decision(registered_model, version,
                 {"rejected_by": approver, "rejected_at": ops.now(), "rejection_reason": reason})
    ops.record_rejection(registered_model, version, approver, reason)
    get_run_logger().info("version %s of %s rejected by %s: %s", version, registered_model, approver, reason)
