import tempfile
from pathlib import Path

import mlflow
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from dfcl.data.arrays import ExperienceSpec
from dfcl.measure.tables import decision_plot, decision_table


@task(cache_policy=NO_CACHE)
def publish_decision(version: str, challenger: dict, verdict: dict, experiences: list[ExperienceSpec]) -> str:
    """The gate's verdict where ops look before they decide: the run's `gate` tag, the decision
    table (dfcl.measure.tables.decision_table) as the Prefect artifact `promotion-decision` and in the
    MLflow run with its plot. Returns the table."""
    mlflow.set_tag("gate", "passed" if verdict["passed"] else "failed: " + "; ".join(verdict["reasons"]))
    table = decision_table(version, challenger, verdict, experiences)
    create_markdown_artifact(table, key="promotion-decision", description="what ops decide on")
    mlflow.log_text(table, "promotion_decision.md")
    with tempfile.TemporaryDirectory() as tmp:
        if decision_plot(verdict, Path(tmp) / "promotion_decision.png"):
            mlflow.log_artifact(str(Path(tmp) / "promotion_decision.png"))
    return table
