"""Train several strategies over the same sequence of methods, one MLflow run each, side by
side in one experiment."""
from __future__ import annotations

import copy
from dataclasses import asdict
import json
import math
import shutil
import time
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger
from tqdm.auto import tqdm

from dfcl.config import flatten
from dfcl.learner import Learner, strategy_report
from dfcl.plots import strategy_plots
from dfcl.tracking import log_dataset_inputs, log_dataset_versions, log_matrices
from dfcl.workspace import Workspace, ensure_workspace, use_mlflow_experiment
from dfcl.layouts import dataset_name
from flows.ingest import ingest_dataset
from tasks.learn_experience import learn_experience
from tasks.log_experience_metrics import log_experience_metrics


def table(report: dict) -> str:
    lines = [f"{'strategy':<10} {'avg acc':>8} {'avg AUC':>8} {'video AUC':>9} {'forgetting':>10} {'BWT':>7} {'train s':>8}"]
    for name, r in report["strategies"].items():
        auc = r["auc_matrix"][-1]
        finite = [a for a in auc if not math.isnan(a)]
        video = r.get("avg_video_auc")
        video = f"{video:>9.3f}" if video is not None and not math.isnan(video) else f"{'-':>9}"
        lines.append(f"{name:<10} {r['avg_accuracy']:>8.3f} {sum(finite) / max(len(finite), 1):>8.3f} {video} "
                     f"{r['forgetting']:>10.3f} {r['bwt']:>7.3f} {r['train_seconds']:>8.1f}")
    return "\n".join(lines)


@flow(name="compare-strategies", log_prints=True)
def compare_strategies(data: str | list[str], params: dict, strategies: list[str], methods: list[str] | None = None,
                       json_out: str | None = None, artifacts_dir: str | None = None) -> dict:
    """Each strategy from scratch over the methods of `data` (one folder or several, in order;
    `methods` picks and orders those of the first). With `artifacts_dir`, each strategy's
    accuracy/AUC heatmaps and forgetting curves are written there too."""
    logger = get_run_logger()
    ws = Workspace.here()
    ensure_workspace(ws, params)
    use_mlflow_experiment(ws, params["mlflow"]["compare_experiment"])
    folders = [data] if isinstance(data, str) else list(data)
    specs = []
    with mlflow.start_run(run_name="ingest " + ", ".join(dataset_name(d, None) for d in folders)):
        for i, folder in enumerate(folders):
            ingested = ingest_dataset(folder, params, methods=methods if i == 0 else None)
            log_dataset_versions(ingested)
            specs += ingested.specs
    report = {"methods": [s.key for s in specs], "experiences": [asdict(s) for s in specs], "strategies": {}}
    for name in strategies:
        p = copy.deepcopy(params)
        p["strategy"]["name"] = name
        folder = ws.root / "data" / "compare" / name
        shutil.rmtree(folder, ignore_errors=True)  # every strategy starts from scratch
        learner = Learner(folder, p, ws.root)
        with mlflow.start_run(run_name=f"compare {name}"):
            mlflow.log_params(flatten({k: p[k] for k in ("model", "strategy", "train", "data")}))
            mlflow.log_params({f"data.{s.key}.version": s.version for s in specs})
            log_dataset_inputs(specs, context="training")
            start = time.perf_counter()
            for step, spec in enumerate(tqdm(specs, desc=f"{name}", unit="experience")):
                results = learn_experience(learner, spec)
                log_experience_metrics(results, step=step)
            seconds = time.perf_counter() - start
            mlflow.log_metric("train_seconds", seconds)
            log_matrices(learner)
            if artifacts_dir:
                strategy_plots(learner.history, Path(artifacts_dir), name)
        report["strategies"][name] = strategy_report(learner, results, seconds)
    logger.info("strategies on %s:\n%s", " -> ".join(report["methods"]), table(report))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1))
        logger.info("wrote %s", json_out)
    return report
