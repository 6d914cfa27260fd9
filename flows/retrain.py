"""The retraining story: a new forgery dataset arrives -> versioned with DVC -> new Avalanche
experience(s) -> evaluated on every method so far -> MLflow run + `challenger` -> gate ->
ops approval -> `champion`."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import Pause
from prefect.flow_runs import FlowPauseTimeout, pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import Field
from tqdm.auto import tqdm

from dfcl.config import Params
from dfcl.data.layouts import LayoutError, dataset_name
from dfcl.learning.learner import Learner
from dfcl.learning.learner_versions import continue_from_champion
from dfcl.ops.guards import check_services, one_retraining
from dfcl.ops.registry import StaleDecision, champion_version, registered_methods
from dfcl.ops.tracking import (
    TRAINING_SECTIONS,
    link_to_prefect,
    log_dataset_inputs,
    log_dataset_versions,
    log_params,
    mlflow_ui_url,
    run_link,
    suspended_run,
)
from dfcl.ops.triggers import Ledger, fingerprint
from dfcl.workspace import Workspace, ensure_workspace, use_mlflow_experiment
from flows.ingest import Ingested, ingest_dataset
from tasks.check_learned_data import check_learned_data
from tasks.check_no_leak import check_no_leak
from tasks.learn_experience import learn_experience
from tasks.log_experience_metrics import log_experience_metrics
from tasks.promote_champion import promote_champion, record_rejection
from tasks.promotion_gate import promotion_gate
from tasks.publish_decision import publish_decision
from tasks.record_dvc_metrics import record_dvc_metrics
from tasks.register_challenger import register_challenger


class ApprovalDecision(RunInput):
    """What ops answer through `dfcl approve/reject` or the Prefect UI form (whose description is
    the gate's decision table and the MLflow run's link, approval_form)."""
    approve: bool = Field(description="Promote the challenger: `champion` moves to it. Leave it off to reject "
                                      "(the champion stays).")
    approver: str = Field("unknown", description="Who decides: kept with the reason as MLflow tags on the model "
                                                 "version and the run, and in `dfcl history`.")
    reason: str = Field("", description="Why: shown in `dfcl history` and the MLflow tags.")


WAITING = "waiting for ops"  # the MLflow run's `outcome` while its flow run is suspended for approval


@flow(name="retrain-detector", log_prints=True)
def retrain_detector(data: str | list[str], params: Params, method: str | None = None, methods: list[str] | None = None,
                     auto_approve: bool = False, fresh: bool = False, lock_wait_s: float | None = None,
                     from_challenger: bool = False) -> dict:
    ws = Workspace.here()
    ensure_workspace(ws, params.dvc)
    check_services(params.dvc, ws.root)  # fail before anything is copied or any alias moves
    waiting = suspended_run(params.mlflow.experiment, flow_run.get_id(), WAITING)
    if waiting:  # suspended for ops, resumed on the work pool once they answered: only their answer is left
        outcome, taken = decide_resumed(waiting, params), waiting.data.tags.get("approval.fingerprint")
    else:
        wait = params.flow.lock_wait_s if lock_wait_s is None else lock_wait_s
        with one_retraining(ws.root, wait, holder=f"flow run {flow_run.get_name()} on {data}",
                            log=get_run_logger().info):
            # What ingest copies: a file added during the run is a new version. (Several folders are
            # the real faces of a self-blended experience, given by hand: no trigger watches them.)
            taken = fingerprint(Path(data)) if isinstance(data, str) else None
            if not fresh:  # never on from a learner ops rejected or rolled back, unless asked
                champion = champion_version(params.mlflow.registered_model)
                said = continue_from_champion(ws.learner, champion.version if champion else None, from_challenger)
                if said:
                    get_run_logger().info("%s", said)
            outcome = _retrain(ws, data, params, method, methods, auto_approve, fresh, taken)
    if taken:
        Ledger(ws.root / "data" / "triggers.json").mark(Path(data), "trained", taken, outcome=outcome["outcome"])
    return outcome


def _retrain(ws: Workspace, data: str, params: Params, method, methods, auto_approve: bool, fresh: bool,
             taken: str | None) -> dict:
    use_mlflow_experiment(ws, params.mlflow.experiment)
    registered = params.mlflow.registered_model
    # The learner first: one trained with other settings is refused before minutes of ingest, and
    # before an MLflow run that would only record the refusal as a failed run.
    learner = Learner(ws.learner, params, ws.root) if fresh else Learner.load(ws.learner, params, ws.root)
    with mlflow.start_run(run_name=f"retrain {dataset_name(data, method)}") as run:
        link_to_prefect()  # tags prefect.flow_run_id, which a run resumed after suspension is found by
        url = mlflow_ui_url(run.info.experiment_id, run.info.run_id)
        ingested = ingest_learnable(data, params, method, methods)
        specs = self_blended_first(data, params, learner, ingested) + ingested.specs
        specs = check_learned_data(learner.history.experiences, specs, learner.root)
        check_no_leak(learner.history.experiences, specs, learner.root)
        new = [s for s in specs if s.key not in learner.learned]
        if not new and not waiting_registration(learner, registered):
            get_run_logger().info("every method of %s is already learned and registered; nothing to train", data)
            mlflow.set_tag("outcome", "nothing new")
            return {"outcome": "nothing new", "run_id": run.info.run_id, "mlflow_url": url}
        results = learn_new_methods(learner, new, params)
        version = register_challenger(learner, results, registered)
        record_dvc_metrics(ws, learner, results, version, params.dvc)
        verdict = promotion_gate(learner, params)
        table = publish_decision(version, results, verdict, learner.history.experiences)
        decision = ask_ops(version, verdict, params, auto_approve, approval_form(table, run.info.run_id), taken)
        outcome = move_aliases(registered, version, decision, verdict["passed"], scored_champion(verdict))
        return {"outcome": outcome, "run_id": run.info.run_id, "mlflow_url": url, "version": version, "results": results,
                "gate": verdict}


def ingest_learnable(data: str, params: Params, method: str | None, methods: list[str] | None) -> Ingested:
    """The dataset ingested (flows.ingest), its DVC versions logged in the run; a dataset with
    methods but none that can be learned is an error, saying why for each."""
    ingested = ingest_dataset(data, params, method=method, methods=methods)
    log_dataset_versions(ingested)
    if not ingested.specs and ingested.layout.startswith("real faces"):
        raise LayoutError(f"{ingested.name} holds real faces only: nothing to learn as a method. Its real faces join "
                          f"the self-blended experience in sbi.real_sets, or serve as real photos of another kind "
                          f"in trust.foreign_reals (data/processed/{ingested.name}/{ingested.name})")
    if not ingested.specs and ingested.left_out:
        raise LayoutError(f"{ingested.name}: no method can be learned: "
                          + "; ".join(f"{m}: {why}" for m, why in ingested.left_out.items()))
    return ingested


def self_blended_first(data: str | list[str], params: Params, learner: Learner, ingested: Ingested) -> list:
    """With `sbi.first`, a learner that has learned nothing yet first learns a self-blended
    experience of this dataset's real faces and those of `sbi.real_sets` (its fakes blended from
    them, dfcl.data.sbi): the detector then catches blending artefacts before any forgery method is
    learned, and learned the FF++ methods better after it
    (benchmarks/results/champion_ffpp_cpu.md)."""
    sbi = params.sbi.method
    if not params.sbi.first or learner.learned or ingested.name == sbi:
        return []
    # This dataset's reals from its raw copy, split as its methods were: a quick run
    # (data.max_per_class) copies only the files it uses and splits those, so the original folder's
    # splits would put some of its methods' validation faces into this experience's training.
    own = [ingested.raw_dir] if isinstance(data, str) else list(data)
    folders = own + list(params.sbi.real_sets)
    blended = ingest_dataset(folders[0] if len(folders) == 1 else folders, params, method=sbi)
    # Their real class is learned now: a set whose reals trained here is no longer unseen.
    seen = ", ".join(dataset_name(f) for f in folders)
    mlflow.set_tag("sbi.real_sets", seen)
    get_run_logger().info("self-blended experience of the real faces of %s (no longer unseen as real faces)", seen)
    log_dataset_versions(blended)
    return blended.specs


def waiting_registration(learner: Learner, registered: str) -> bool:
    """Whether the learner holds experiences no registered version has: a run that crashed after
    learning but before registering; they are registered now, without training them again."""
    return bool(learner.learned) and registered_methods(registered) != [e.key for e in learner.history.experiences]


def learn_new_methods(learner: Learner, new: list, params: Params) -> dict:
    """Each new method learned in turn, its evaluation logged at its step; the last results."""
    log_params(params, TRAINING_SECTIONS + ("gate",))
    # One context per dataset in MLflow: what this run trains on, and what it only evaluates on.
    log_dataset_inputs(new, context="training")
    log_dataset_inputs(learner.history.experiences, context="evaluation")
    # What the model answers on the new methods before it learns them (their AUC before learning).
    learner.evaluate_unlearned(new)
    results = learner.last_results()
    for i, spec in enumerate(tqdm(new, desc="new methods", unit="experience")):
        # The methods this run learns next are known now: each evaluation also tests them.
        results = learn_experience(learner, spec, upcoming=new[i + 1:])
        log_experience_metrics(results, step=len(learner.history.experiences) - 1)
    return results


def approval_form(table: str, run_id: str) -> type[ApprovalDecision]:
    """The input ops answer, described (in `dfcl approve`'s run, and above the Prefect UI's form) by
    the gate's decision table and a link to the MLflow run."""
    return ApprovalDecision.with_initial_data(description=f"{table}\n\n{run_link(run_id)}\n")


def scored_champion(verdict: dict) -> str | None:
    """The champion version the gate compared the challenger with: only over it may it be promoted."""
    return str(verdict["champion"]["version"]) if verdict["champion"] else None


def ask_ops(version: str, verdict: dict, params: Params, auto_approve: bool, form: type[ApprovalDecision],
            taken: str | None) -> ApprovalDecision:
    """Ops' answer on a challenger the gate passed (a regression never reaches ops)."""
    if not verdict["passed"]:
        return ApprovalDecision(approve=False, approver="promotion gate", reason="; ".join(verdict["reasons"]))
    if auto_approve:
        return ApprovalDecision(approve=True, approver="auto-approve", reason="--auto-approve")
    timeout = params.approval.timeout_s
    get_run_logger().info("waiting up to %ss for ops: `dfcl approve` or `dfcl reject --reason ...` "
                          "(or the Prefect UI form) on challenger version %s", timeout, version)
    if on_work_pool():
        return suspend_for_ops(version, form, timeout, scored_champion(verdict), taken)
    try:
        # Checks every 2 s whether ops answered (Prefect's default, 10 s, kept an approved run
        # waiting up to 10 s more); one small request to the API each time.
        return pause_flow_run(wait_for_input=form, timeout=timeout, poll_interval=2)
    except FlowPauseTimeout:
        return ApprovalDecision(approve=False, approver="timeout",
                                reason=f"no answer within {timedelta(seconds=timeout)}")


def on_work_pool() -> bool:
    """Whether this run is a work pool's (`dfcl deploy`): a suspended run is resumed there. (A run
    of `dfcl serve`'s runner, or of `dfcl retrain`, pauses and keeps its process.)"""
    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.work_pool_name)


def suspend_for_ops(version: str, form: type[ApprovalDecision], timeout: float, scored: str | None,
                    taken: str | None) -> ApprovalDecision:
    """Suspend the run until ops answer: its process exits and its worker (and GPU) is free. Once
    answered the pool runs the flow again from the start; it finds this MLflow run by its
    tags (decide_resumed) instead of training again, and this same call then returns the answer.
    No answer within `timeout`: the server fails the run, and nothing is promoted."""
    mlflow.set_tags({"outcome": WAITING, "approval.version": version, "approval.scored_champion": scored or "",
                     "approval.fingerprint": taken or ""})
    try:
        return suspend_flow_run(wait_for_input=form, timeout=int(timeout), key=f"approval-v{version}")
    except Pause:
        mlflow.end_run("SCHEDULED")  # waiting, not failed: the resumed run reopens it
        raise


def decide_resumed(waiting, params: Params) -> dict:
    """The run resumed after ops answered: it trained, registered and gated before it was
    suspended, and its learner state is kept by version; only the alias move is left, recorded
    in the same MLflow run."""
    tags = waiting.data.tags
    version = tags["approval.version"]
    with mlflow.start_run(run_id=waiting.info.run_id):
        decision = suspend_for_ops(version, ApprovalDecision, params.approval.timeout_s,
                                   tags["approval.scored_champion"] or None, tags["approval.fingerprint"] or None)
        get_run_logger().info("resumed: %s by %s", "approved" if decision.approve else "rejected", decision.approver)
        outcome = move_aliases(params.mlflow.registered_model, version, decision, True,
                               tags["approval.scored_champion"] or None)
    return {"outcome": outcome, "run_id": waiting.info.run_id, "version": version}


def move_aliases(registered: str, version: str, decision: ApprovalDecision, passed: bool, scored: str | None) -> str:
    """`champion` to the challenger when approved (only over the champion the gate `scored`), else
    its rejection on record; the outcome, also the run's `outcome` tag."""
    if decision.approve:
        try:
            promote_champion(registered, version, decision.approver, decision.reason, scored)
            outcome = "promoted"
        except StaleDecision:  # the champion moved while ops decided: their yes was about another one
            outcome = "stale decision, re-run the gate"
    else:
        record_rejection(registered, version, decision.approver, decision.reason)
        outcome = "rejected by gate" if not passed else "rejected by ops"
    mlflow.set_tag("outcome", outcome)
    return outcome
