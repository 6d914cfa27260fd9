"""Scheduled and triggered retraining: each new dataset in data/incoming/ (a new folder, or a
new DVC version of one), once complete, gets a run of the deployment `retrain-detector/triggered`,
which runs one at a time; a dataset version already trained or already queued gets none, one
whose run failed another after a backoff, up to a limit (dfcl.ops.triggers)."""
from __future__ import annotations

from prefect import flow, get_client, get_run_logger
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from dfcl.config import Params
from dfcl.ops.triggers import Ledger, due_datasets
from dfcl.workspace import Workspace

DEPLOYMENT = "retrain-detector/triggered"


def run_state(entry: dict) -> str:
    """What became of a queued run: alive (scheduled, waiting its turn, running, paused or
    completed), failed (failed or crashed: counts against the dataset's attempts), cancelled
    (`dfcl serve` stopped it: queued again at once) or gone (deleted, or from another Prefect
    server: queued again)."""
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(entry["flow_run"])
        except ObjectNotFound:
            return "gone"
    state = run.state
    if state is None:
        return "alive"
    if state.is_cancelled():
        return "cancelled"
    return "failed" if state.is_failed() or state.is_crashed() else "alive"


def queue_new_datasets(params: Params, log=print) -> list[str]:
    ws = Workspace.here()
    ledger = Ledger(ws.root / "data" / "triggers.json")
    queued = []
    for due in due_datasets(ws.incoming, ledger, params.data.real_names, params.flow.serve, run_state,
                            log=log):
        run = run_deployment(DEPLOYMENT, timeout=0, as_subflow=False,
                             parameters={"data": str(due.folder), "params": params,
                                         "lock_wait_s": params.flow.serve.queue_wait_s})
        ledger.mark(due.folder, "queued", due.fingerprint, flow_run=str(run.id), attempts=due.attempt)
        log(f"new dataset {due.folder}: queued retraining run {run.name} ({run.id})"
            + (f", attempt {due.attempt} of {params.flow.serve.max_attempts}" if due.attempt > 1 else ""))
        queued.append(str(due.folder))
    return queued


@flow(name="retrain-incoming", log_prints=True)
def retrain_incoming(params: Params) -> list[str]:
    """The scheduled job: queue a retraining run for every new dataset in data/incoming/."""
    queued = queue_new_datasets(params)
    if not queued:
        get_run_logger().info("nothing new in data/incoming/")
    return queued
