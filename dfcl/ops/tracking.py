"""MLflow bookkeeping shared by the flows: the params sections a training reads, datasets as
MLflow dataset inputs, evaluations as metrics and matrix artifacts (named after
dfcl.measure.metrics), sweeps, `dfcl evaluate` reports, the detector as a logged (and registered)
MLflow model, and the links between an MLflow run and the Prefect flow run around it."""
from __future__ import annotations

import math
import re
import tempfile
from importlib import resources
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from dfcl.config import Params, flatten
from dfcl.measure.metrics import MATRICES, summary_values
from dfcl.measure.plots import matrix_heatmaps

# The top-level package `models` (in the wheel beside dfcl), shipped as a registered detector's code.
MODELS_DIR = Path(resources.files("models"))

# The params.yaml sections that decide what a training learns and how sure its answers are (the
# others say where the services are, how flows wait, what serving does): a training run logs them all.
TRAINING_SECTIONS = ("data", "faces", "augment", "sbi", "model", "strategy", "train", "trust")

# What `mlflow ui` serves by default: where the runs of local (sqlite) tracking are seen.
LOCAL_UI = "http://127.0.0.1:5000"


def log_params(params: Params, sections: tuple[str, ...]) -> None:
    """Every entry of `sections` as an MLflow param named by its params.yaml key (`train.epochs`).
    (Over 100 of them: MLflow's log_params sends them in batches of its per-request maximum.)"""
    mlflow.log_params(flatten(params.model_dump(include=set(sections))))


def mlflow_ui_url(experiment_id: str, run_id: str | None = None) -> str:
    """Where a person sees an experiment's runs (or one run) in the MLflow UI: the tracking
    server's address, or `mlflow ui`'s with local tracking. In the "Model training" view: without
    `workflowType` the UI opens its GenAI view, which shows traces, not these runs."""
    uri = mlflow.get_tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{base}/#/experiments/{experiment_id}/{page}?workflowType=machine_learning"


def link_to_prefect(artifact: bool = True) -> None:
    """The active MLflow run and the Prefect flow run it is logged in point at each other: the
    flow run's id and UI address (where a Prefect UI is configured: a temporary local API has
    none that outlives the run) as MLflow tags `prefect.flow_run_id` and `prefect.flow_run_url`;
    with `artifact`, the MLflow run's address as the flow run's link artifact `mlflow-run` and a
    line of its log. Nothing outside a flow run."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_UI_URL

    if flow_run.get_id() is None:
        return
    tags = {"prefect.flow_run_id": flow_run.get_id()}
    if PREFECT_UI_URL.value():
        tags["prefect.flow_run_url"] = flow_run.get_flow_run_ui_url()
    mlflow.set_tags(tags)
    if artifact:
        from prefect import get_run_logger
        from prefect.artifacts import create_link_artifact

        run = mlflow.active_run()
        url = mlflow_ui_url(run.info.experiment_id, run.info.run_id)
        create_link_artifact(url, link_text=f"MLflow run {run.info.run_name}", key="mlflow-run",
                             description="this flow run's parameters, metrics, matrices and model in MLflow")
        get_run_logger().info("MLflow run: %s", url)


def log_dataset_inputs(specs, context: str) -> None:
    """Each method's faces as an MLflow dataset input of the active run (the UI's Dataset column
    and dataset view): name = the method, digest = its DVC version, source = its DVC path."""
    for spec in specs:
        # The DVC-tracked folder it was extracted into (a learned method is read from its pinned copy).
        source = resolve_dataset_source(str(Path("data") / "processed" / spec.dataset / spec.method))
        digest = spec.version.removesuffix(".dir")[:36]  # MLflow keeps digests up to 36 characters
        mlflow.log_input(MetaDataset(source, name=spec.key, digest=digest), context=context)


def log_detector(model: torch.nn.Module, image_size: int, threshold: float, metadata: dict,
                 registered_model: str | None = None, architecture: dict | None = None, trust=None):
    """Log a detector in the active run as an MLflow pyfunc (models/pyfunc.py) over its weights:
    a safetensors state dict plus the architecture's registry name and constructor arguments
    (`architecture`, by default what models.create_model recorded on the model), never a
    pickle. `mlflow models serve` takes uint8 face crops and answers P(fake); dfcl builds the
    torch module itself (dfcl.serving.detector.load_mlflow_detector). `metadata` is open: every key
    goes into the model's MLflow metadata. `trust` (dfcl.measure.trust.Trust): its file becomes the
    `trust` artifact (the pyfunc calibrates with it) and its summary the `trust` metadata.
    Registered as a new version of `registered_model` when given. Returns MLflow's ModelInfo."""
    import safetensors

    from models.pyfunc import (
        WEIGHTS_FILE,
        WEIGHTS_FORMAT,
        architecture_of,
        save_weights,
    )

    architecture = architecture or architecture_of(model)
    if architecture is None:
        raise ValueError(f"{type(model).__name__} was not built by models.create_model: give its architecture "
                         "({'name': ..., 'arguments': {...}}) to register it")
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, image_size, image_size, 3))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]))
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {"detector": str(save_weights(model, Path(tmp) / WEIGHTS_FILE, architecture))}
        if trust is not None:
            from dfcl.measure.trust import TRUST_FILE

            artifacts["trust"] = str(trust.save(Path(tmp) / TRUST_FILE))
            metadata = {**metadata, "trust": trust.summary()}
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(MODELS_DIR / "pyfunc.py"), artifacts=artifacts,
            code_paths=[str(MODELS_DIR)], signature=signature,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "timm", f"safetensors=={safetensors.__version__}",
                              f"mlflow=={mlflow.__version__}"],
            metadata={"image_size": image_size, "classes": ["real", "fake"], "threshold": threshold,
                      "weights_format": WEIGHTS_FORMAT, "architecture": architecture["name"],
                      "model_arguments": architecture["arguments"], **metadata},
            registered_model_name=registered_model)


def log_dataset_versions(ingested) -> None:
    """The data this run trains on, as MLflow params: DVC versions of raw and processed data."""
    name = ingested.name
    mlflow.log_params({f"data.{name}.raw_version": ingested.raw_version, f"data.{name}.version": ingested.version,
                       f"data.{name}.layout": ingested.layout})
    if ingested.left_out:
        mlflow.set_tag(f"data.{name}.left_out", "; ".join(f"{m}: {why}" for m, why in ingested.left_out.items()))


def evaluation_metrics(results: dict) -> dict[str, float]:
    """One evaluation's results as MLflow metrics: each per-method metric (dfcl.measure.metrics.MATRICES)
    as <prefix>/<method>, `auc_before/<method>` (a method's AUC just before it was learned), the
    summaries measured so far, and how sure its answers are (dfcl.measure.trust: calibration error
    before/after, coverage of the band, attribution accuracy) as trust/<figure>, and how long the
    training and the evaluation took (Learner.learn) as speed/<figure>."""
    metrics = {f"{m.prefix}/{k}": v for m in MATRICES for k, v in results.get(m.name, {}).items()}
    metrics |= {f"auc_before/{k}": v for k, v in results.get("auc_before", {}).items()}
    metrics |= summary_values(results)
    trust = results.get("trust", {})
    metrics |= {f"trust/{k}": v for k, v in trust.items() if isinstance(v, float) and not math.isnan(v)}
    if "band" in trust:
        metrics |= {"trust/band_lo": trust["band"][0], "trust/band_hi": trust["band"][1]}
    metrics |= {f"speed/{k}": v for k, v in results.get("speed", {}).items() if not math.isnan(v)}
    return metrics


def log_matrices(learner) -> None:
    """The per-method matrices as CSV and heatmap PNG artifacts of the active run (a column per
    method evaluated, learned or not yet: the upper triangle is forward transfer)."""
    h = learner.history
    methods = [key for key, _ in h.columns]
    with tempfile.TemporaryDirectory() as tmp:
        frames = matrix_heatmaps({m.history: getattr(h, m.history) for m in MATRICES}, methods, Path(tmp),
                                 f" ({learner.params.strategy.name})")
        for key, frame in frames.items():
            frame.to_csv(Path(tmp) / f"{key}.csv")
        mlflow.log_artifacts(tmp, artifact_path="evaluation")


def log_sweep(report: dict) -> None:
    """A sweep's results in its (parent) run: per strategy, each summary's mean and standard
    deviation over seeds, the table, and the whole report as JSON."""
    from dfcl.measure.tables import compare_table

    metrics = {}
    for name, entry in report["strategies"].items():
        for key, value in summary_values(entry).items():
            metrics[f"{name}/{key}"] = value
            metrics[f"{name}/{key}_std"] = entry["std"][key]
    mlflow.log_metrics(metrics)
    mlflow.log_params({"seeds": ",".join(map(str, report["seeds"])), "strategies": ",".join(report["strategies"])})
    mlflow.log_text(compare_table(report), "comparison.txt")
    mlflow.log_dict(report, "comparison.json")


def evaluation_report_metrics(report: dict) -> dict[str, float]:
    """A `dfcl evaluate` report's figures as MLflow metrics: each number of its overall scores
    under its own name (`auc`, `eer`, `ece`, ...), each method's as <figure>/<method>; NaN (one
    class only: no AUC) left out."""
    def numbers(scores: dict, suffix: str = "") -> dict[str, float]:
        return {f"{k}{suffix}": float(v) for k, v in scores.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)}

    metrics = numbers(report["overall"])
    for method, scores in report["methods"].items():
        metrics |= numbers(scores, f"/{method}")
    return metrics


def log_evaluation(report: dict, model: dict, experiment_id: str, files: list[Path]) -> str:
    """A `dfcl evaluate` report as an MLflow run: its figures as metrics, the report as JSON and
    its plots (`files`) as artifacts under evaluation/. A registered version's (`model`: the
    detector's info, with name and version) evaluation is a child run of the run that trained it,
    its metrics linked to the version's logged model (the model's page lists them); any other
    model's goes into the experiment `experiment_id`. Returns the run's MLflow UI address."""
    client = mlflow.MlflowClient()
    # An alias was resolved to its version when the model was loaded; models:/NAME/VERSION is one.
    named = re.fullmatch(r"models:/([^/@]+)/(\d+)", model["uri"])
    if named and not model.get("version"):
        model = {**model, "name": named[1], "version": named[2]}
    version = client.get_model_version(model["name"], model["version"]) if model.get("version") else None
    source = client.get_run(version.run_id) if version is not None and version.run_id else None
    data = Path(report["data"]).name
    tags = {"dfcl.command": "evaluate", "model.uri": model["uri"], "data": report["data"]}
    if version is not None:
        tags |= {"model.name": model["name"], "model.version": str(model["version"])}
    where = ({"experiment_id": source.info.experiment_id, "parent_run_id": source.info.run_id} if source
             else {"experiment_id": experiment_id})
    label = f"version {model['version']}" if version is not None else Path(model["uri"]).name
    with mlflow.start_run(run_name=f"evaluate {label} on {data}", tags=tags, **where) as run:
        # The version's logged model (MLflow 3 keeps its id in the model's MLmodel, not on the version).
        model_id = mlflow.models.get_model_info(model["uri"]).model_id if version is not None else None
        mlflow.log_metrics(evaluation_report_metrics(report), model_id=model_id)
        mlflow.log_dict(report, f"evaluation/{data}.json")
        for file in files:
            mlflow.log_artifact(str(file), artifact_path="evaluation")
    return mlflow_ui_url(run.info.experiment_id, run.info.run_id)


def close_abandoned_runs(experiment_id: str, parent_run_id: str) -> int:
    """Child runs of a finished sweep still marked RUNNING: attempts whose worker died mid-training
    (the training ran again elsewhere). Closed as FAILED, saying why. Returns how many."""
    client = mlflow.MlflowClient()
    abandoned = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                                    "and attributes.status = 'RUNNING'")
    for run in abandoned:
        client.set_tag(run.info.run_id, "failure", "its worker stopped mid-training; the training ran again")
        client.set_terminated(run.info.run_id, "FAILED")
    return len(abandoned)


def run_link(run_id: str) -> str:
    """Where ops find a run, as a markdown line: its address in the MLflow UI (mlflow_ui_url)."""
    run = mlflow.get_run(run_id)
    return f"MLflow run: [{run.info.run_name}]({mlflow_ui_url(run.info.experiment_id, run_id)})"


def suspended_run(experiment: str, flow_run_id, outcome: str):
    """The MLflow run of Prefect flow run `flow_run_id` whose `outcome` tag is `outcome` (a run
    suspended for ops), or None."""
    found = mlflow.get_experiment_by_name(experiment)
    if not flow_run_id or found is None:
        return None
    runs = mlflow.search_runs([found.experiment_id], output_format="list", max_results=1,
                              filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.outcome = '{outcome}'")
    return runs[0] if runs else None
