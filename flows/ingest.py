"""Ingest: a dataset folder (FF++, Celeb-DF, DFDC, image folders) -> raw copy versioned with
DVC -> face crops (the DVC stage extract_faces_<name>) versioned with DVC -> one experience
per method, ready for the learner."""
from __future__ import annotations

from dataclasses import dataclass, field

from prefect import flow, get_run_logger

from dfcl.config import Params
from dfcl.data.arrays import ExperienceSpec, face_arrays
from dfcl.data.layouts import dataset_name, is_synthetic
from dfcl.workspace import Workspace, ensure_workspace
from tasks.copy_raw_dataset import copy_raw_dataset
from tasks.discover_dataset import discover_dataset
from tasks.extract_faces import extract_faces
from tasks.report_extraction import report_extraction
from tasks.version_with_dvc import version_with_dvc


@dataclass
class Ingested:
    name: str
    layout: str
    raw_version: str
    version: str
    raw_dir: str                                             # its DVC-tracked copy, data/raw/<name>
    specs: list[ExperienceSpec]                              # learnable methods, in learning order
    left_out: dict[str, str] = field(default_factory=dict)   # method -> why it cannot be learned
    stats: dict = field(default_factory=dict)


@flow(name="ingest-dataset", log_prints=True)
def ingest_dataset(data: str | list[str], params: Params, method: str | None = None,
                   methods: list[str] | None = None) -> Ingested:
    ws = Workspace.here()
    ensure_workspace(ws, params.dvc)
    name = dataset_name(data, method)
    sources = discover_dataset(ws, data, params, name, methods, method)
    raw_dir = copy_raw_dataset(ws, data, name, sources.all_paths(), sources.written, sources.roots)
    raw_version = version_with_dvc(ws, raw_dir, params, f"dfcl: raw dataset {name}")
    version = extract_faces(ws, name, params)
    summary = report_extraction(ws, name, sources.refused)
    specs, left_out = [], {}
    for m in methods or sources.methods:
        e = summary["experiences"][m]
        if not e["learnable"]:
            left_out[m] = "; ".join(e["problems"])
            continue
        folder = (ws.processed / name / m).relative_to(ws.root)
        specs.append(ExperienceSpec(key=m if m == name else f"{name}/{m}", dataset=name, method=m, version=version,
                                    synthetic=is_synthetic(data),
                                    **{k: str(v) for k, v in face_arrays(folder).items()}))
    if left_out:
        get_run_logger().warning("%s: left out (cannot be learned): %s", name, left_out)
    return Ingested(name, summary["layout"], raw_version, version, str(raw_dir), specs, left_out, summary["stats"])
