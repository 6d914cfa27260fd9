"""What people follow a retraining by, on the shared champion workspace (a real retraining flow
run): every params section a training reads in MLflow, the MLflow run and the Prefect flow run
pointing at each other, training progress in Prefect, the figures as DVC metrics and plots, and
`dfcl evaluate --log-mlflow`."""
import json
import math
import subprocess
import sys
from uuid import UUID

import mlflow
import pytest
from mlflow import MlflowClient

from dfcl.config import flatten
from dfcl.ops.tracking import (
    TRAINING_SECTIONS,
    evaluation_report_metrics,
    log_evaluation,
    mlflow_ui_url,
)
from tests.conftest import SMALL, small_params

REGISTERED = "deepfake-detector"


def flow_run_artifacts(flow_run_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))


def test_a_retraining_run_logs_every_section_it_reads_and_links_to_its_flow_run(champion):
    client = MlflowClient()
    run = client.get_run(client.get_model_version(REGISTERED, "1").run_id)
    params = small_params("train.epochs=2")  # what the champion fixture trained with
    logged = flatten(params.model_dump(include=set(TRAINING_SECTIONS + ("gate",))))
    assert {k for k in logged} <= set(run.data.params), sorted(set(logged) - set(run.data.params))
    assert len(logged) > 100, "more than one batch of MLflow params"
    for key in ("augment.jpeg_quality_min", "faces.landmarks", "sbi.first", "gate.min_auc", "trust.precision",
                "train.epochs"):
        assert run.data.params[key] == str(logged[key])

    # The MLflow run names its flow run; the flow run links back to the MLflow run, and shows
    # each experience's training progress (the temporary local API has no UI address to tag).
    flow_run_id = run.data.tags["prefect.flow_run_id"]
    assert "prefect.flow_run_url" not in run.data.tags
    artifacts = flow_run_artifacts(flow_run_id)
    link = next(a for a in artifacts if a.key == "mlflow-run")
    url = mlflow_ui_url(run.info.experiment_id, run.info.run_id)
    assert url in link.data and url.endswith(f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
                                             "?workflowType=machine_learning")
    progress = [a for a in artifacts if a.key == "training-progress"]
    assert progress and all(a.type == "progress" and a.data == 100 and a.task_run_id for a in progress)


def test_the_latest_retraining_s_figures_are_dvc_metrics_and_plots(champion):
    client = MlflowClient()
    latest = max(client.search_model_versions(f"name = '{REGISTERED}'"), key=lambda v: int(v.version))
    run = client.get_run(latest.run_id)
    dvc = [sys.executable, "-m", "dvc"]
    shown = subprocess.run([*dvc, "metrics", "show", "--json"], cwd=champion, capture_output=True, text=True, check=True)
    figures = json.loads(shown.stdout)[""]["data"]["metrics/retrain.json"]["data"]
    assert figures["avg_auc"] == pytest.approx(run.data.metrics["avg_auc"])
    methods = latest.tags["methods"].split(",")
    assert figures["auc"] == pytest.approx({m: run.data.metrics[f"auc/{m}"] for m in methods})
    plotted = subprocess.run([*dvc, "plots", "show", "--json"], cwd=champion, capture_output=True, text=True, check=True)
    auc = json.loads(plotted.stdout)["data"]["plots/auc_matrix.csv"][0]["content"]["data"]["values"]
    # Each point is a row of the matrix: the last evaluation's are the run's last per-method AUCs.
    last = {m: float(p[m]) for p in auc if int(p["experience"]) == len(methods) - 1 for m in methods}
    assert last == pytest.approx({m: run.data.metrics[f"auc/{m}"] for m in methods})


def test_evaluate_logs_its_figures_and_plots_to_a_run_linked_to_the_version(champion, demo_data, capsys, tmp_path):
    from dfcl.cli import main

    args = [a for s in SMALL for a in ("-S", s)]
    runs_before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    assert main(["evaluate", "--data", str(demo_data / "MouthWarp"), "--json", str(tmp_path / "r.json"), *args]) == 0
    assert f"wrote {tmp_path / 'r.json'} and {tmp_path / 'r.roc.png'} and {tmp_path / 'r.reliability.png'}" in capsys.readouterr().out
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == runs_before, "MLflow only when asked"
    assert main(["evaluate", "--data", str(demo_data / "MouthWarp"), "--log-mlflow", *args]) == 0
    out = capsys.readouterr().out
    client = MlflowClient()
    version = client.get_model_version_by_alias(REGISTERED, "champion")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.`model.version` = '{version.version}' and tags.data LIKE '%MouthWarp'")
    assert len(runs) == 1
    run = runs[0]
    assert mlflow_ui_url(run.info.experiment_id, run.info.run_id) in out
    assert run.data.tags["mlflow.parentRunId"] == version.run_id, "a child of the run that trained the version"
    report = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evaluation/MouthWarp.json"))
    assert run.data.metrics == pytest.approx(evaluation_report_metrics(report))
    assert run.data.metrics["auc/MouthWarp"] == pytest.approx(report["methods"]["MouthWarp"]["auc"])
    assert not any(math.isnan(v) for v in run.data.metrics.values())
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/MouthWarp.roc.png", "evaluation/MouthWarp.reliability.png"} <= plots
    # The version's logged model carries the evaluation's figures (the model's page in the UI).
    model = client.get_logged_model(mlflow.models.get_model_info(f"models:/{REGISTERED}/{version.version}").model_id)
    assert {m.key for m in model.metrics} >= {"auc", "eer", "auc/MouthWarp"}
    # A version named by its number (--model models:/NAME/1) is linked the same way.
    url = log_evaluation(report, {"uri": f"models:/{REGISTERED}/1"}, "0", [])
    by_number = client.get_run(url.split("/runs/")[1].split("?")[0])
    assert by_number.data.tags["model.version"] == "1"
    assert by_number.data.tags["mlflow.parentRunId"] == client.get_model_version(REGISTERED, "1").run_id


def test_training_progress_that_prefect_cannot_take_never_stops_the_training(monkeypatch):
    import prefect.artifacts
    from prefect import flow

    from dfcl.learning.plugins import progress as module
    from dfcl.learning.plugins.progress import RunProgress

    said = []  # (Prefect's logging set-up in the flow run replaces pytest's capturing handler)
    monkeypatch.setattr(module.log, "warning", lambda message, *args: said.append(message % args))

    outside = RunProgress()
    outside.start("no flow run around it")
    assert outside.artifact is None

    def api_down(*args, **kwargs):
        raise ConnectionError("the Prefect API does not answer")

    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", api_down)

    @flow
    def training():
        progress = RunProgress()
        progress.start("training experience 0")
        progress.update(100.0, "trained", final=True)
        return progress.artifact

    assert training() is None
    assert said == ["training progress not shown in Prefect: the Prefect API does not answer"]
