"""Ops' answer to a retraining run waiting for approval: paused (its process waits) or, on a work
pool, suspended (resumed there); either way Prefect's resume with run input, as its UI's form sends."""
from __future__ import annotations

from dfcl.ops.guards import OpsError


def answer_paused_run(flow_run: str | None, approve: bool, approver: str, reason: str):
    """Resume the retraining run `flow_run` (id or name; default: the latest paused one), which
    waits for ops, with their answer (flows.retrain.ApprovalDecision). Returns the flow run."""
    from prefect.flow_runs import resume_flow_run

    run = _find_run(flow_run)
    if run.state is None or not run.state.is_paused():
        raise OpsError(f"flow run {run.name} ({run.id}) is {run.state.name if run.state else 'unknown'}, not paused")
    resume_flow_run(run.id, run_input={"approve": approve, "approver": approver, "reason": reason})
    return run


def _find_run(flow_run: str | None):
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        if flow_run:
            try:
                return client.read_flow_run(flow_run)
            except Exception:  # not an id (or no run has it): a name, then
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name={"any_": [flow_run]}))
                if runs:
                    return runs[0]
                raise OpsError(f"no flow run with id or name {flow_run!r}") from None
        paused = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused", "Suspended"]))),
            sort=FlowRunSort.START_TIME_DESC)
        if not paused:
            raise OpsError("no paused retraining run is waiting for approval")
        return paused[0]
