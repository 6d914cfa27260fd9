"""The promotion gate scores the real champion on the same test sets and stops regressions."""
import mlflow
import pytest
from mlflow import MlflowClient

from dfcl.learner import Learner
from tasks.promotion_gate import promotion_gate
from tests.conftest import small_params
from tests.test_learner import specs_for


def test_gate_scores_the_champion_and_stops_regressions(workspace, demo_data):
    specs = specs_for(demo_data, workspace.root, ["BlendSwap"])
    learner = Learner(workspace.root / "learner", small_params("train.epochs=2"), workspace.root)
    results = learner.learn(specs[0])
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(learner.strategy.model, name="model", serialization_format="pickle",
                                        registered_model_name="deepfake-detector")
    MlflowClient().set_registered_model_alias("deepfake-detector", "champion", info.registered_model_version)

    # The same model as challenger: the champion is scored on the same data, so it ties.
    verdict = promotion_gate(learner, results, learner.params)
    assert verdict["passed"], verdict["reasons"]
    assert verdict["champion"]["avg_accuracy"] == pytest.approx(results["avg_accuracy"])
    assert str(verdict["champion"]["version"]) == "1"

    worse = {**results, "avg_accuracy": verdict["champion"]["avg_accuracy"] - 0.2}
    verdict = promotion_gate(learner, worse, learner.params)
    assert not verdict["passed"]
    assert "below the champion's" in verdict["reasons"][0]

    verdict = promotion_gate(learner, {**results, "forgetting": 0.5}, learner.params)
    assert not verdict["passed"]
    assert verdict["reasons"] == ["forgetting 0.500 exceeds the bound 0.15"]
