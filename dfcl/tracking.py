"""MLflow bookkeeping shared by the flows: datasets as MLflow dataset inputs, evaluations as
metrics and matrix artifacts (named after dfcl.metrics), sweeps, and the detector as a logged
(and registered) MLflow model."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from dfcl.metrics import MATRICES, summary_values
from dfcl.plots import matrix_heatmaps

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


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
    torch module itself (dfcl.detector.load_mlflow_detector). `metadata` is open: every key
    goes into the model's MLflow metadata. `trust` (dfcl.trust.Trust): its file becomes the
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
            from dfcl.trust import TRUST_FILE

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
    """One evaluation's results as MLflow metrics: each per-method metric (dfcl.metrics.MATRICES)
    as <prefix>/<method>, `auc_before/<method>` (a method's AUC just before it was learned), the
    summaries measured so far, and how sure its answers are (dfcl.trust: calibration error
    before/after, coverage of the band, attribution accuracy) as trust/<figure>."""
    metrics = {f"{m.prefix}/{k}": v for m in MATRICES for k, v in results.get(m.name, {}).items()}
    metrics |= {f"auc_before/{k}": v for k, v in results.get("auc_before", {}).items()}
    metrics |= summary_values(results)
    trust = results.get("trust", {})
    metrics |= {f"trust/{k}": v for k, v in trust.items() if isinstance(v, float) and not math.isnan(v)}
    if "band" in trust:
        metrics |= {"trust/band_lo": trust["band"][0], "trust/band_hi": trust["band"][1]}
    return metrics


def log_matrices(learner) -> None:
    """The per-method matrices as CSV and heatmap PNG artifacts of the active run (a column per
    method evaluated, learned or not yet: the upper triangle is forward transfer)."""
    h = learner.history
    methods = [key for key, _ in h.columns]
    with tempfile.TemporaryDirectory() as tmp:
        frames = matrix_heatmaps({m.history: getattr(h, m.history) for m in MATRICES}, methods, Path(tmp),
                                 f" ({learner.params['strategy']['name']})")
        for key, frame in frames.items():
            frame.to_csv(Path(tmp) / f"{key}.csv")
        mlflow.log_artifacts(tmp, artifact_path="evaluation")


def log_sweep(report: dict) -> None:
    """A sweep's results in its (parent) run: per strategy, each summary's mean and standard
    deviation over seeds, the table, and the whole report as JSON."""
    from dfcl.tables import compare_table

    metrics = {}
    for name, entry in report["strategies"].items():
        for key, value in summary_values(entry).items():
            metrics[f"{name}/{key}"] = value
            metrics[f"{name}/{key}_std"] = entry["std"][key]
    mlflow.log_metrics(metrics)
    mlflow.log_params({"seeds": ",".join(map(str, report["seeds"])), "strategies": ",".join(report["strategies"])})
    mlflow.log_text(compare_table(report), "comparison.txt")
    mlflow.log_dict(report, "comparison.json")


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
