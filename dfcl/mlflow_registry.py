"""Questions to the MLflow model registry, in one place: which version an alias points at,
and which methods the newest registered version learned.

Only "this model does not exist" means there is nothing: any other error (the server is down,
the database is locked) raises, so a transient failure never reads as "no champion yet" and
lets a challenger through unchecked."""
from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException


def _registered_model(client: MlflowClient, registered_model: str):
    """The RegisteredModel, or None when no version was ever registered under that name."""
    try:
        return client.get_registered_model(registered_model)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def alias_version(registered_model: str, alias: str = "champion"):
    """The ModelVersion `alias` points at, or None (no such model or alias yet)."""
    client = MlflowClient()
    model = _registered_model(client, registered_model)
    # MLflow says INVALID_PARAMETER_VALUE for a missing alias, as for a malformed request, so
    # the aliases are read instead of asked for one by one.
    if model is None or alias not in model.aliases:
        return None
    return client.get_model_version(registered_model, model.aliases[alias])


def champion_version(registered_model: str):
    return alias_version(registered_model, "champion")


def registered_methods(registered_model: str) -> list[str] | None:
    """The methods of the newest fully registered version (its `methods` tag is written after
    the model is logged), or None when there is none."""
    client = MlflowClient()
    if _registered_model(client, registered_model) is None:
        return None
    versions = client.search_model_versions(f"name='{registered_model}'", order_by=["version_number DESC"])
    for v in versions:
        if v.tags.get("methods"):
            return v.tags["methods"].split(",")
    return None
