"""Researchers compare strategies: each strategy, at each seed, learns the same sequence of
methods from scratch, as one Prefect task and one MLflow child run under the sweep's run. The
trainings run where `compare.runner` says (here, one after the other, or on a Dask cluster)."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from dfcl.config import Params, apply_overrides, flatten
from dfcl.data.layouts import dataset_name
from dfcl.learning.strategies import STRATEGIES
from dfcl.ops.runners import sweep_task_runner, training_data
from dfcl.ops.tracking import (
    close_abandoned_runs,
    link_to_prefect,
    log_dataset_versions,
    log_sweep,
)
from dfcl.workspace import Workspace, ensure_workspace, use_mlflow_experiment
from flows.ingest import ingest_dataset
from tasks.summarize_sweep import summarize_sweep
from tasks.train_strategy import train_strategy


@flow(name="compare-strategies", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def compare_strategies(data: str | list[str], params: Params, strategies: list[str] | None = None,
                       methods: list[str] | None = None, seeds: list[int] | None = None,
                       json_out: str | None = None, artifacts_dir: str | None = None) -> dict:
    """Every strategy (default: all) at every seed (default: compare.seeds) over the methods of
    `data` (one folder or several, in order; `methods` picks and orders those of the first).
    With `artifacts_dir`, heatmaps and forgetting curves per strategy are written there too."""
    ws = Workspace.here()
    ensure_workspace(ws, params.dvc)
    cp = params.compare
    strategies, seeds = strategies or list(STRATEGIES), seeds or cp.seeds
    folders = [data] if isinstance(data, str) else list(data)
    experiment_id = use_mlflow_experiment(ws, params.mlflow.compare_experiment)
    with mlflow.start_run(run_name="compare " + ", ".join(dataset_name(d, None) for d in folders)) as sweep:
        link_to_prefect()
        # How the sweep ran; its seeds are a param of their own (log_sweep), --seeds may replace compare.seeds.
        mlflow.log_params(flatten(params.compare.model_dump(exclude={"seeds"}), "compare."))
        specs = []
        for i, folder in enumerate(folders):
            ingested = ingest_dataset(folder, params, methods=methods if i == 0 else None)
            log_dataset_versions(ingested)
            specs += ingested.specs
        where = training_data(cp, params, ws.root)
        run = {"tracking_uri": mlflow.get_tracking_uri(), "experiment_id": experiment_id,
               "parent_run_id": sweep.info.run_id}
        train = train_strategy.with_options(retries=cp.retries)
        futures = {(name, seed): train.submit(
            specs, apply_overrides(params, [f"strategy.name={name}", f"train.seed={seed}"]),
            str(ws.root / "data" / "compare" / f"{name}-seed{seed}"), where, run)
            for name in strategies for seed in seeds}
        trainings = {name: {seed: futures[name, seed].result() for seed in seeds} for name in strategies}
        if close_abandoned_runs(experiment_id, sweep.info.run_id):
            get_run_logger().warning("a worker stopped mid-training; its training ran again and its MLflow run is closed")
        report = summarize_sweep(specs, seeds, trainings, artifacts_dir)
        log_sweep(report)
    get_run_logger().info("wrote the sweep's report to MLflow run %s", sweep.info.run_id)
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1))
    return report


def compare(data: str | list[str], params: Params, **kwargs) -> dict:
    """compare_strategies on the task runner `compare.runner` asks for."""
    return compare_strategies.with_options(task_runner=sweep_task_runner(params.compare))(data, params, **kwargs)
