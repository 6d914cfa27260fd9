"""Scheduled and triggered retraining: each new dataset in data/incoming/ (a new folder, or a
new DVC version of one) gets a run of the deployment `retrain-detector/triggered`, which runs
one at a time; a dataset version already trained or already queued gets none."""
from __future__ import annotations

from prefect import flow, get_client, get_run_logger
from prefect.deployments import run_deployment

from dfcl.triggers import Ledger, new_datasets
from dfcl.workspace import Workspace

DEPLOYMENT = "retrain-detector/triggered"


def still_queued(entry: dict) -> bool:
    """A queued run that failed, crashed or was cancelled no longer holds its dataset: the
    dataset is queued again (and resumes from the last finished experience)."""
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(entry["flow_run"])
        except Exception:  # deleted, or from another Prefect server
            return False
    state = run.state
    return state is not None and not (state.is_failed() or state.is_crashed() or state.is_cancelled())


def queue_new_datasets(params: dict, log=print) -> list[str]:
    ws = Workspace.here()
    ledger = Ledger(ws.root / "data" / "triggers.json")
    queued = []
    for folder in new_datasets(ws.incoming, ledger, params["data"]["real_names"], still_queued):
        run = run_deployment(DEPLOYMENT, timeout=0, as_subflow=False,
                             parameters={"data": str(folder), "params": params,
                                         "lock_wait_s": params["flow"]["serve"]["queue_wait_s"]})
        ledger.mark(folder, "queued", flow_run=str(run.id))
        log(f"new dataset {folder}: queued retraining run {run.name} ({run.id})")
        queued.append(str(folder))
    return queued


@flow(name="retrain-incoming", log_prints=True)
def retrain_incoming(params: dict) -> list[str]:
    """The scheduled job: queue a retraining run for every new dataset in data/incoming/."""
    queued = queue_new_datasets(params)
    if not queued:
        get_run_logger().info("nothing new in data/incoming/")
    return queued
