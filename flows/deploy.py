"""`dfcl deploy`: the two retraining deployments on a process work pool of a Prefect server, run by
workers on any host (`prefect worker start --pool dfcl`) instead of `dfcl serve`'s one process:
`retrain-detector/triggered` (one dataset each, one run at a time) and `retrain-incoming/scheduled`
(the cron: a run for every new dataset in data/incoming/). More workers or a GPU pool is then
configuration, not code."""
from __future__ import annotations

from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import (
    ConcurrencyLimitConfig,
    ConcurrencyLimitStrategy,
)
from prefect.deployments.runner import EntrypointType
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron
from prefect.workers.process import ProcessWorker

from dfcl.config import Params
from dfcl.ops.guards import OpsError, ensure_retrain_limit, prefect_server
from dfcl.workspace import Workspace, ensure_workspace
from flows.incoming import retrain_incoming
from flows.retrain import retrain_detector


def deploy_to_pool(params: Params, pool: str) -> list[str]:
    """Register both deployments on work pool `pool` (a process pool, made if missing) and the
    concurrency limit of retraining runs; returns the deployments' names. Their runs work in this
    workspace (DFCL_WORKSPACE, their folder), so a worker's host must see it at the same path."""
    server = prefect_server()
    if not server:
        raise OpsError("dfcl deploy registers deployments on a Prefect server: start one (`prefect server start`) "
                       "and export PREFECT_API_URL=http://HOST:4200/api; without one, `dfcl serve` serves them")
    ws = Workspace.here()
    ensure_workspace(ws, params.dvc)
    ws.incoming.mkdir(parents=True, exist_ok=True)
    ensure_process_pool(pool)
    ensure_retrain_limit()
    sp = params.flow.serve
    # By module path, not file: a worker imports the installed flows (editable or wheel) wherever it runs.
    common = dict(entrypoint_type=EntrypointType.MODULE_PATH,
                  job_variables={"env": {"DFCL_WORKSPACE": str(ws.root)}, "working_dir": str(ws.root)})
    deployments = [
        retrain_detector.to_deployment(
            "triggered", description="retrain on one dataset; one run at a time, the others wait in line; "
            "the approval wait is a suspension that frees the worker",
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
            **common),
        retrain_incoming.to_deployment(
            "scheduled", schedules=[Cron(sp.cron, timezone=sp.timezone)], parameters={"params": params},
            description="queue a retraining run for every new dataset in data/incoming/", **common)]
    for deployment in deployments:
        deployment.apply(work_pool_name=pool)
    return [f"{d.flow_name}/{d.name}" for d in deployments]


def ensure_process_pool(pool: str) -> None:
    """Work pool `pool` of type process (what `prefect work-pool create --type process` makes), made if missing."""
    with get_client(sync_client=True) as client:
        try:
            found = client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process",
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))
            return
    if found.type != "process":
        raise OpsError(f"work pool {pool!r} is of type {found.type}, not process: name another with --pool")
