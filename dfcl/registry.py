"""Questions to the MLflow model registry, in one place: which version an alias points at,
and which methods the newest registered version learned."""
from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException


def alias_version(registered_model: str, alias: str = "champion"):
    """The ModelVersion `alias` points at, or None (no such model or alias yet)."""
    try:
        return MlflowClient().get_model_version_by_alias(registered_model, alias)
    except MlflowException:
        return None


def champion_version(registered_model: str):
    return alias_version(registered_model, "champion")


def registered_methods(registered_model: str) -> list[str] | None:
    """The methods of the newest fully registered version (its `methods` tag is written after
    the model is logged), or None when there is none."""
    try:
        versions = MlflowClient().search_model_versions(f"name='{registered_model}'", order_by=["version_number DESC"])
    except MlflowException:
        return None
    for v in versions:
        if v.tags.get("methods"):
            return v.tags["methods"].split(",")
    return None
