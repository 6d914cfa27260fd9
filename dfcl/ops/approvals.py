"""Ops' answer to a retraining run waiting for approval: paused (its process waits) or, on a work
pool, suspended (resumed there); either way Prefect's resume with run input, as its UI's form sends."""
from __future__ import annotations

from dfcl.ops.guards import OpsError


def answer_paused_run(flow_run: str | None, approve: bool, approver: str, reason: str, registered_model: str):
    """Resume the retraining run `flow_run` (id or name; default: the latest paused one), which
    waits for ops, with their answer (flows.retrain.ApprovalDecision). Returns the flow run. With
    none waiting, the error says the newest decision on `registered_model`: a run the gate
    rejected never waits, and ops who expected one learn why."""
    from prefect.flow_runs import resume_flow_run

    run = _find_run(flow_run)
    if run is None:
        raise OpsError(f"no paused retraining run is waiting for approval{newest_decision(registered_model)}")
    if run.state is None or not run.state.is_paused():
        raise OpsError(f"flow run {run.name} ({run.id}) is {run.state.name if run.state else 'unknown'}, not paused")
    resume_flow_run(run.id, run_input={"approve": approve, "approver": approver, "reason": reason})
    return run


def newest_decision(registered_model: str) -> str:
    """"; the newest decision: version 2 rejected by promotion gate at ...: why (dfcl history)", or
    "" when nothing was decided yet."""
    from dfcl.ops.registry import alias_history

    try:
        events = alias_history(registered_model)[1]
    except OpsError:  # nothing registered yet
        return ""
    if not events:
        return ""
    e = events[-1]
    done = {"promote": "promoted to champion", "reject": "rejected", "rollback": "made champion again (rollback)"}
    why = f": {e['reason']}" if e.get("reason") else ""
    return (f"; the newest decision: version {e['version']} {done.get(e['action'], e['action'])} by {e['by']} at "
            f"{e['at']}{why} (dfcl history)")


def _find_run(flow_run: str | None):
    """The flow run named, or the latest paused or suspended one (None: none waits)."""
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
        return paused[0] if paused else None
