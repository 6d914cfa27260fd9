import os
from pathlib import Path

import mlflow
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dfcl.config import Params
from dfcl.data.arrays import ExperienceSpec
from dfcl.learning.learner import train_sequence
from dfcl.measure.metrics import summary_values
from dfcl.ops.tracking import (
    TRAINING_SECTIONS,
    evaluation_metrics,
    link_to_prefect,
    log_dataset_inputs,
    log_matrices,
    log_params,
)
from dfcl.ops.versions import checked_out


@task(cache_policy=NO_CACHE, retry_delay_seconds=2)  # retries: compare.retries (the flow sets them)
def train_strategy(specs: list[ExperienceSpec], params: Params, workdir: str, data: dict, mlflow_run: dict) -> dict:
    """One strategy at one seed (both in `params`) over the whole sequence, from scratch, as an
    MLflow child run of the sweep's run. `data` says where the faces are: {"root": folder} on the
    launching machine, or {"remote": DVC remote settings, "cache": folder} for a worker that checks the DVC
    versions out itself. `mlflow_run`: tracking URI, experiment and parent run ids."""
    logger = get_run_logger()
    name, seed = params.strategy.name, params.train.seed
    if data.get("threads"):  # one training per worker process: it gets that many cores, no more
        import torch

        torch.set_num_threads(data["threads"])
    if "remote" in data:
        root = Path(data["cache"])
        specs = checked_out(specs, data["remote"], root)
    else:
        root = Path(data["root"])
    mlflow.set_tracking_uri(mlflow_run["tracking_uri"])
    with mlflow.start_run(run_name=f"compare {name} seed {seed}", experiment_id=mlflow_run["experiment_id"],
                          parent_run_id=mlflow_run["parent_run_id"], nested=mlflow.active_run() is not None):
        mlflow.set_tags({"strategy": name, "seed": str(seed), "host": os.uname().nodename, "pid": str(os.getpid())})
        link_to_prefect(artifact=False)  # the sweep's run is the flow run's link
        log_params(params, TRAINING_SECTIONS)
        mlflow.log_params({f"data.{s.key}.version": s.version for s in specs})
        log_dataset_inputs(specs, context="training")

        def log_step(step: int, results: dict, learner) -> None:
            logger.info("%s seed %d: after %s: avg accuracy %.3f, avg AUC %.3f", name, seed,
                        specs[step].key, results["avg_accuracy"], results["avg_auc"])
            mlflow.log_metrics(evaluation_metrics(results), step=step)

        learner, report = train_sequence(specs, params, Path(workdir), root, on_experience=log_step)
        mlflow.log_metrics(summary_values(report))
        log_matrices(learner)
    return report
