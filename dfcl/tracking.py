"""MLflow bookkeeping shared by the flows: datasets as MLflow dataset inputs."""
from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset


def log_dataset_inputs(specs, context: str) -> None:
    """Each method's faces as an MLflow dataset input of the active run (the UI's Dataset column
    and dataset view): name = the method, digest = its DVC version, source = its DVC path."""
    for spec in specs:
        # The DVC-tracked folder it was extracted into (a learned method is read from its pinned copy).
        source = resolve_dataset_source(str(Path("data") / "processed" / spec.dataset / spec.method))
        digest = spec.version.removesuffix(".dir")[:36]  # MLflow keeps digests up to 36 characters
        mlflow.log_input(MetaDataset(source, name=spec.key, digest=digest), context=context)
