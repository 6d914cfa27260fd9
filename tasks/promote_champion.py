from prefect import get_run_logger, task

from dfcl.ops import registry


@task
def promote_champion(registered_model: str, version: str, approver: str, reason: str, scored: str | None) -> None:
    """Move the `champion` alias to `version` if it still points at `scored`, the version the gate
    compared with (registry.promote: else StaleDecision, and nothing moves); then keep who, when
    and why as MLflow tags (on the model version and on the run that trained it)."""
    try:
        registry.promote(registered_model, version, approver, reason, scored)
    except registry.StaleDecision as e:
        get_run_logger().warning("%s", e)
        raise
    registry.tag_decision(registered_model, version,
                          {"promoted_by": approver, "promoted_at": registry.now(), "promotion_reason": reason})
    get_run_logger().info("version %s of %s is now 'champion' (approved by %s)", version, registered_model, approver)


@task
def record_rejection(registered_model: str, version: str, approver: str, reason: str) -> None:
    """Keep the rejection on the record; the champion alias does not move."""
    registry.tag_decision(registered_model, version,
                          {"rejected_by": approver, "rejected_at": registry.now(), "rejection_reason": reason})
    registry.record_rejection(registered_model, version, approver, reason)
    get_run_logger().info("version %s of %s rejected by %s: %s", version, registered_model, approver, reason)
