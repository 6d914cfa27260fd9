"""Ingest: a dataset folder (FF++, Celeb-DF, DFDC, image folders) -> raw copy versioned with
DVC -> face crops (the DVC stage extract_faces_<name>) versioned with DVC -> one experience
per method, ready for the learner."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from dfcl.layouts import dataset_name
from dfcl.learner import ExperienceSpec
from dfcl.workspace import Workspace, ensure_workspace
from tasks.copy_raw_dataset import copy_raw_dataset
from tasks.discover_dataset import discover_dataset
from tasks.extract_faces import extract_faces
from tasks.version_with_dvc import version_with_dvc


@dataclass
class Ingested:
    name: str
    layout: str
    raw_version: str
    version: str
    specs: list[ExperienceSpec]                              # learnable methods, in learning order
    left_out: dict[str, str] = field(default_factory=dict)   # method -> why it cannot be learned
    stats: dict = field(default_factory=dict)


@task
def report_extraction(ws: Workspace, name: str) -> dict:
    """Faces per method, split and class, and every skipped file with its reason: in the log
    and as Prefect artifacts."""
    logger = get_run_logger()
    out = ws.processed / name
    summary = json.loads((out / "experiences.json").read_text())
    rows = [{"method": m, **{f"{s} {c}": e[s][c] for s in ("train", "val", "test") for c in ("real", "fake")},
             "learnable": "yes" if e["learnable"] else "no", "problems": "; ".join(e["problems"])}
            for m, e in summary["experiences"].items()]
    table = pd.DataFrame(rows)
    skipped = pd.read_csv(out / "skipped.csv", keep_default_na=False)
    logger.info("%s (%s): faces per method\n%s", name, summary["layout"], table.to_string(index=False))
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower())  # artifact keys: lowercase, digits, dashes
    create_table_artifact(rows, key=f"faces-{slug}",
                          description=f"faces of {name} per method, split and class")
    if len(skipped):
        logger.warning("%s: %d file(s)/frame(s) skipped\n%s", name, len(skipped), skipped.to_string(index=False))
        create_markdown_artifact("| source | frame | reason |\n| --- | --- | --- |\n" + "\n".join(
            f"| {r.source} | {r.frame} | {r.skipped} |" for r in skipped.itertuples()),
            key=f"skipped-{slug}", description=f"files and frames of {name} skipped")
    stats_file = ws.processed / f"{name}.stats.json"
    summary["stats"] = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    return summary


@flow(name="ingest-dataset", log_prints=True)
def ingest_dataset(data: str, params: dict, method: str | None = None,
                   methods: list[str] | None = None) -> Ingested:
    ws = Workspace.here()
    ensure_workspace(ws, params)
    name = dataset_name(data, method)
    sources = discover_dataset(data, params, name, methods)
    raw_dir = copy_raw_dataset(ws, data, name, sources.all_paths())
    raw_version = version_with_dvc(ws, raw_dir, params, f"dfcl: raw dataset {name}")
    version = extract_faces(ws, name, params)
    summary = report_extraction(ws, name)
    specs, left_out = [], {}
    for m in methods or sources.methods:
        e = summary["experiences"][m]
        if not e["learnable"]:
            left_out[m] = "; ".join(e["problems"])
            continue
        folder = (ws.processed / name / m).relative_to(ws.root)
        specs.append(ExperienceSpec(key=m if m == name else f"{name}/{m}", dataset=name, method=m, version=version,
                                    **{f"{s}_{a}": str(folder / f"{s}-{a}.npy") for s in ("train", "val", "test") for a in "xy"}))
    if left_out:
        get_run_logger().warning("%s: left out (cannot be learned): %s", name, left_out)
    return Ingested(name, summary["layout"], raw_version, version, specs, left_out, summary["stats"])
