"""The retraining story: a new forgery dataset arrives -> versioned with DVC -> new Avalanche
experience(s) -> evaluated on every method so far -> MLflow run + `challenger` -> gate ->
ops approval -> `champion`."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.flow_runs import FlowPauseTimeout, pause_flow_run
from prefect.input import RunInput
from tqdm.auto import tqdm

from dfcl.config import flatten
from dfcl.learner import ExperienceSpec, Learner
from dfcl.workspace import Workspace, ensure_dvc_repo, use_mlflow_experiment
from tasks.copy_raw_dataset import copy_raw_dataset
from tasks.decode_faces import decode_faces
from tasks.discover_dataset import discover_dataset
from tasks.learn_experience import learn_experience
from tasks.log_experience_metrics import log_experience_metrics
from tasks.promote_champion import promote_champion, record_rejection
from tasks.promotion_gate import promotion_gate
from tasks.register_challenger import register_challenger
from tasks.version_with_dvc import version_with_dvc


class ApprovalDecision(RunInput):
    """What ops answer through `dfcl approve/reject` or the Prefect UI form."""
    approve: bool
    approver: str = "unknown"
    reason: str = ""


def dataset_name(path: str, method: str | None) -> str:
    p = Path(path).resolve()
    return method or (p.parent.name if p.name.lower() in {"images", "data"} else p.name)


def ingest(ws: Workspace, data: str, params: dict, method: str | None = None,
           methods: list[str] | None = None) -> list[ExperienceSpec]:
    """Discover, copy, version (raw and processed) and decode a dataset; one spec per method."""
    name = dataset_name(data, method)
    found = discover_dataset(data, params, method=method, methods=methods)
    raw_dir = copy_raw_dataset(ws, data, name, found.manifest.path.tolist())
    raw_version = version_with_dvc(ws, raw_dir, params, f"dfcl: raw dataset {name}")
    size = params["data"]["image_size"]
    processed = decode_faces(ws, raw_dir, name, found.manifest, size, raw_version)
    version = version_with_dvc(ws, processed, params, f"dfcl: processed dataset {name}")
    mlflow.log_params({f"data.{name}.raw_version": raw_version, f"data.{name}.version": version})
    rel = processed.relative_to(ws.root) / f"{size}px"
    return [ExperienceSpec(key=m if m == name else f"{name}/{m}", dataset=name, method=m, version=version,
                           train_x=str(rel / f"{m}-train-x.npy"), train_y=str(rel / f"{m}-train-y.npy"),
                           test_x=str(rel / f"{m}-test-x.npy"), test_y=str(rel / f"{m}-test-y.npy"))
            for m in found.methods]


def decision_table(version: str, challenger: dict, verdict: dict) -> str:
    """Markdown for ops: challenger vs champion per method, and the gate's verdict."""
    champion = verdict["champion"]
    name = f"champion v{champion['version']}" if champion else "champion (none yet)"
    lines = [f"## Challenger v{version} vs {name}", "",
             "| method | challenger acc | challenger AUC | champion acc | champion AUC |", "| --- | --- | --- | --- | --- |"]
    for key in challenger["methods"]:
        theirs = (f"{champion['accuracy'][key]:.3f} | {champion['auc'][key]:.3f}" if champion else "- | -")
        lines.append(f"| {key} | {challenger['accuracy'][key]:.3f} | {challenger['auc'][key]:.3f} | {theirs} |")
    lines += ["", f"Average accuracy {challenger['avg_accuracy']:.3f}, average AUC {challenger['avg_auc']:.3f}, "
                  f"forgetting {challenger['forgetting']:.3f}, BWT {challenger['bwt']:.3f}.",
              f"Gate: {'passed' if verdict['passed'] else 'failed: ' + '; '.join(verdict['reasons'])}."]
    return "\n".join(lines)


def ask_ops(version: str, verdict: dict, params: dict, auto_approve: bool) -> ApprovalDecision:
    logger = get_run_logger()
    if auto_approve:
        return ApprovalDecision(approve=True, approver="auto-approve", reason="--auto-approve")
    timeout = params["approval"]["timeout_s"]
    logger.info("waiting up to %ss for ops: `dfcl approve` or `dfcl reject --reason ...` "
                "(or the Prefect UI form) on challenger version %s", timeout, version)
    try:
        return pause_flow_run(wait_for_input=ApprovalDecision, timeout=timeout)
    except FlowPauseTimeout:
        return ApprovalDecision(approve=False, approver="timeout",
                                reason=f"no answer within {timedelta(seconds=timeout)}")


@flow(name="retrain-detector", log_prints=True)
def retrain_detector(data: str, params: dict, method: str | None = None, methods: list[str] | None = None,
                     auto_approve: bool = False, fresh: bool = False) -> dict:
    logger = get_run_logger()
    ws = Workspace.here()
    ensure_dvc_repo(ws, params["dvc"]["remote_name"], params["dvc"]["remote_url"])
    use_mlflow_experiment(ws, params["mlflow"]["experiment"])
    with mlflow.start_run(run_name=f"retrain {dataset_name(data, method)}") as run:
        specs = ingest(ws, data, params, method=method, methods=methods)
        learner = Learner(ws.learner, params, ws.root) if fresh else Learner.load(ws.learner, params, ws.root)
        new = [s for s in specs if s.key not in learner.learned]
        if not new:
            logger.info("every method of %s is already learned; nothing to train", data)
            mlflow.set_tag("outcome", "nothing new")
            return {"outcome": "nothing new", "run_id": run.info.run_id}
        mlflow.log_params(flatten({k: params[k] for k in ("model", "strategy", "train", "data")}))
        for spec in tqdm(new, desc="new methods", unit="experience"):
            results = learn_experience(learner, spec)
            log_experience_metrics(results, step=len(learner.history.experiences) - 1)
        registered = params["mlflow"]["registered_model"]
        version = register_challenger(learner, results, registered)
        verdict = promotion_gate(learner, results, params)
        mlflow.set_tag("gate", "passed" if verdict["passed"] else "failed: " + "; ".join(verdict["reasons"]))
        summary = decision_table(version, results, verdict)
        create_markdown_artifact(summary, key="promotion-decision", description="what ops decide on")
        mlflow.log_text(summary, "promotion_decision.md")
        if verdict["passed"]:
            decision = ask_ops(version, verdict, params, auto_approve)
        else:  # a regression never reaches ops
            decision = ApprovalDecision(approve=False, approver="promotion gate", reason="; ".join(verdict["reasons"]))
        if decision.approve:
            promote_champion(registered, version, decision.approver, decision.reason)
            result = "promoted"
        else:
            record_rejection(registered, version, decision.approver, decision.reason)
            result = "rejected by gate" if not verdict["passed"] else "rejected by ops"
        mlflow.set_tag("outcome", result)
        return {"outcome": result, "run_id": run.info.run_id, "version": version, "results": results, "gate": verdict}
