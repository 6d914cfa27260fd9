"""Operations helpers: one retraining at a time, durable writes (fsync, rename), service checks
before any work, the champion alias's history (promote as a compare-and-set, reject, rollback)
kept as MLflow registered-model tags with its repair after a crash mid-move, and ops' answer to a
run paused for approval.

Over 300 lines: the alias's moves, their history and its repair share one lock and one
numbering of events, and are read together; the locks and durable writes they rest on sit here."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path


class OpsError(RuntimeError):
    """An operation that cannot go ahead; the message says why and what to do."""


class Busy(OpsError):
    """Another retraining run holds the workspace."""


class ServiceUnavailable(OpsError):
    """MLflow or the DVC remote cannot be reached: the run stops before it changes anything."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextmanager
def exclusive_flock(path: Path, wait_s: float, refusal, on_wait=None, poll_s: float = 2.0):
    """An exclusive flock on `path`, waited for up to `wait_s` seconds, then `Busy(refusal())`.
    The kernel drops it when the holding process ends, however it ends, so a crash or kill never
    leaves the lock held. `on_wait()` runs once when the lock is found taken. Yields the fd."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline, waited = time.monotonic() + wait_s, False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    waited = True
                    if on_wait:
                        on_wait()
                if time.monotonic() >= deadline:
                    raise Busy(refusal()) from None
                time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.05)))
        yield fd
    finally:
        os.close(fd)  # closing releases the flock


# -- crash safety -----------------------------------------------------------------------
# A rename is atomic, but without fsync the file it moves in may still be empty on disk after a
# power cut: the new name then points at nothing. So data first, then the rename, then the folder.

def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Every file under `folder`, and the folders, on disk (before `folder` is renamed into use)."""
    for path in sorted(Path(folder).rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)


def write_atomic(path: Path, text: str) -> None:
    """`path` holds either its old content or all of `text`, even after a kill or power cut: a
    temporary file of a name no other writer uses, fsync, rename, fsync of the folder."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def retrain_lock(path: Path, wait_s: float, holder: str, log=print):
    """One retraining run at a time (exclusive_flock); the file only says who holds it. A second
    run waits up to `wait_s` seconds (queues), then is refused."""
    def who() -> str:
        return Path(path).read_text().strip() or "another process"

    def waiting() -> None:
        if wait_s > 0:
            log(f"waiting up to {wait_s:.0f} s for the retraining run before this one ({who()})")

    def refusal() -> str:
        return (f"another retraining run is in progress ({who()}); one runs at a time per workspace. Wait "
                f"for it (or ask ops to answer its approval), or queue with -S flow.lock_wait_s=SECONDS")

    with exclusive_flock(Path(path), wait_s, refusal, waiting) as fd:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"holder": holder, "pid": os.getpid(), "host": socket.gethostname(),
                                 "since": now()}).encode())
        yield


def workspace_lock(root: Path, wait_s: float, holder: str, log=print):
    """The retraining lock, also held by every other command that writes the workspace's data
    (`dfcl ingest`, `dfcl compare`): two of them at once would copy, version and extract into
    the same folders and DVC files."""
    return retrain_lock(Path(root) / "data" / "retrain.lock", wait_s, holder, log)


def check_services(params: dict, root: Path) -> None:
    """Fail fast, before data is copied or aliases move, when MLflow or the DVC remote is not
    reachable; say what to fix."""
    import mlflow

    problems = []
    uri = mlflow.get_tracking_uri()
    try:
        if uri.startswith(("http://", "https://")):
            import requests

            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        else:
            mlflow.MlflowClient().search_experiments(max_results=1)
    except Exception as e:  # any failure here means the same thing to ops
        problems.append(f"MLflow tracking at {uri} is unreachable ({type(e).__name__}: {str(e)[:200]}); "
                        "start the server or point MLFLOW_TRACKING_URI at a running one")
    if params["dvc"]["push"]:
        from dvc.repo import Repo

        name = params["dvc"]["remote_name"]
        try:
            with Repo(str(root)) as repo:
                remote = repo.cloud.get_remote(name)
                remote.fs.makedirs(remote.path, exist_ok=True)
                if not remote.fs.exists(remote.path):
                    raise FileNotFoundError(remote.path)
        except Exception as e:
            problems.append(f"DVC remote {name!r} is unreachable ({type(e).__name__}: {str(e)[:200]}); "
                            f"fix it with `dvc remote modify {name} url ...` or run with -S dvc.push=false")
    if problems:
        raise ServiceUnavailable("; ".join(problems))


# -- alias history ----------------------------------------------------------------------
# MLflow keeps only where an alias points now, not where it pointed before; rollback and
# `dfcl history` need the sequence, so every move is also written as a registered-model tag
# `alias_event.<n>` (a JSON record), which any MLflow client can read. MLflow has no
# compare-and-set, so a move, the look at where the alias points and the event's number are one
# step under a flock of the workspace (data/alias.lock): a promotion and a rollback at the same
# moment get events n and n+1, and neither moves the alias from under the other.

EVENT_PREFIX = "alias_event."
ALIAS_LOCK_WAIT_S = 60  # each holder makes a few registry calls; longer means a hung one


@contextmanager
def alias_lock(root: Path | None = None, wait_s: float = ALIAS_LOCK_WAIT_S):
    """Moves of the aliases and their history, one at a time per workspace. Not the retraining
    lock: a run holds that while it waits (up to a day) for ops, and rollback must not wait."""
    from dfcl.workspace import Workspace

    path = (root or Workspace.here().root) / "data" / "alias.lock"
    with exclusive_flock(path, wait_s, lambda: f"another promotion, rejection or rollback has held {path} for "
                         f"over {wait_s:.0f} s; try again", poll_s=0.05):
        yield


def alias_events(registered_model: str) -> list[dict]:
    from mlflow import MlflowClient

    tags = MlflowClient().get_registered_model(registered_model).tags
    events = [json.loads(v) for k, v in tags.items() if k.startswith(EVENT_PREFIX)]
    return sorted(events, key=lambda e: e["n"])


def alias_history(registered_model: str) -> tuple[dict[str, str], list[dict]]:
    """Where each alias of the model points now, and every recorded move (alias_events)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        aliases = MlflowClient().get_registered_model(registered_model).aliases
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise OpsError(f"no registered model {registered_model!r} yet: nothing has been trained here") from None
    return aliases, alias_events(registered_model)


def _record(registered_model: str, action: str, version: str | None, by: str, reason: str,
            previous: str | None = None) -> dict:
    """Write the next event (caller holds alias_lock). Any error reading the history raises:
    numbering from a history that failed to load would overwrite event 1."""
    from mlflow import MlflowClient

    client = MlflowClient()
    tags = client.get_registered_model(registered_model).tags
    numbers = [int(k[len(EVENT_PREFIX):]) for k in tags if k.startswith(EVENT_PREFIX) and k[len(EVENT_PREFIX):].isdigit()]
    n = max(numbers, default=0) + 1  # not len + 1: a deleted event would make it reuse a number
    key = f"{EVENT_PREFIX}{n:05d}"
    if key in tags:  # by construction impossible; the guard is what "never overwrite" rests on
        raise OpsError(f"{registered_model}: event {key} exists already; not overwriting it")
    event = {"n": n, "at": now(), "action": action, "version": version, "previous": previous, "by": by,
             "reason": reason}
    client.set_registered_model_tag(registered_model, key, json.dumps(event))
    return event


class StaleDecision(OpsError):
    """The champion moved (a rollback, another promotion) after the gate compared against it."""


def promote(registered_model: str, version: str, by: str, reason: str, scored: str | None) -> dict:
    """Point `champion` at `version` and record it, with the version it replaced: a
    compare-and-set against `scored`, the champion the gate compared the challenger with (None:
    there was none). A run waits up to a day for ops; a rollback in that wait would otherwise let
    the approval replace a version the challenger was never compared with."""
    from mlflow import MlflowClient

    from dfcl.mlflow_registry import champion_version

    with alias_lock():
        before = champion_version(registered_model)
        now_points = str(before.version) if before else None
        if now_points != (str(scored) if scored is not None else None):
            raise StaleDecision(
                f"stale decision, re-run the gate: the gate compared version {version} with "
                f"{f'champion version {scored}' if scored else 'no champion'}, but champion is now "
                f"{f'version {now_points}' if now_points else 'unset'}; nothing moved")
        MlflowClient().set_registered_model_alias(registered_model, "champion", version)
        return _record(registered_model, "promote", version, by, reason, previous=now_points)


def record_rejection(registered_model: str, version: str, by: str, reason: str) -> dict:
    with alias_lock():
        return _record(registered_model, "reject", version, by, reason)


def champion_stack(events: list[dict]) -> list[str]:
    """The champions in order, as promotions push and rollbacks pop them."""
    stack: list[str] = []
    for e in events:
        if e["action"] == "promote":
            stack.append(e["version"])
        elif e["action"] == "rollback" and stack:
            stack.pop()
    return stack


def rollback_champion(registered_model: str, by: str, reason: str) -> tuple[str, str]:
    """Point `champion` back at the version that held it before the current one. Refused when the
    alias does not point where the history says (moved by hand, or by another tool): which
    "previous" was meant is then unknown."""
    from mlflow import MlflowClient

    from dfcl.mlflow_registry import champion_version

    with alias_lock():
        stack = champion_stack(alias_events(registered_model))
        if len(stack) < 2:
            raise OpsError(f"{registered_model}: no earlier champion to roll back to "
                           f"(champions so far: {stack or 'none'})")
        current, previous = stack[-1], stack[-2]
        points = champion_version(registered_model)
        if points is None or str(points.version) != current:
            raise OpsError(f"{registered_model}: champion points at {f'version {points.version}' if points else 'nothing'}, "
                           f"but its history's last champion is version {current}: the alias was moved outside dfcl, or a move was "
                           f"interrupted. Record where it points with `dfcl repair`, or point it back at version {current}, "
                           "before rolling back")
        client = MlflowClient()
        client.set_registered_model_alias(registered_model, "champion", previous)
        client.set_model_version_tag(registered_model, current, "rolled_back_at", now())
        client.set_model_version_tag(registered_model, current, "rolled_back_by", by)
        client.set_model_version_tag(registered_model, current, "rollback_reason", reason)
        _record(registered_model, "rollback", previous, by, reason, previous=current)
    return current, previous


# -- interrupted moves -------------------------------------------------------------------
# A move is three writes to the registry (the alias, the history event, the version's tags),
# and a kill can fall between them. The history is then told apart from the alias: `dfcl
# history` says what disagrees, and `dfcl repair` completes the move the alias shows.

def inconsistencies(registered_model: str) -> list[str]:
    """What an interrupted promotion or rollback left behind, one line each; [] when none."""
    from mlflow import MlflowClient

    aliases, events = alias_history(registered_model)
    stack, points, found = champion_stack(events), aliases.get("champion"), []
    points = str(points) if points is not None else None
    last = stack[-1] if stack else None
    if points != last:
        found.append(f"champion points at {f'version {points}' if points else 'nothing'}, but the history's last "
                     f"champion is {f'version {last}' if last else 'none'}: a promotion or rollback was interrupted "
                     "(or the alias moved outside dfcl); `dfcl repair` records the move the alias shows")
    client = MlflowClient()
    moves = [e for e in events if e["action"] in ("promote", "rollback")]
    if moves:
        e = moves[-1]
        version, tag = (e["version"], "promoted_by") if e["action"] == "promote" else (e["previous"], "rolled_back_by")
        if version and tag not in client.get_model_version(registered_model, version).tags:
            found.append(f"event {e['n']} ({e['action']} by {e['by']}) has no {tag} tag on version {version}: "
                         "interrupted before its tags; `dfcl repair` writes them")
    return found


def repair(registered_model: str, by: str) -> list[str]:
    """Make the history and the tags agree with where `champion` points (the move that was under
    way when a process died): the missing event (a rollback when the alias is on the champion
    before the history's last, else a promotion), then the missing tags. Returns what it did."""
    from mlflow import MlflowClient

    done, client = [], MlflowClient()
    with alias_lock():
        aliases, events = alias_history(registered_model)
        stack, points = champion_stack(events), aliases.get("champion")
        points = str(points) if points is not None else None
        last = stack[-1] if stack else None
        if points is not None and points != last:
            action = "rollback" if len(stack) >= 2 and stack[-2] == points else "promote"
            _record(registered_model, action, points, by, "recorded by dfcl repair: the alias had moved, its event was "
                    "missing", previous=last)
            done.append(f"recorded the {action} to version {points} (from {f'version {last}' if last else 'none'})")
        moves = [e for e in alias_events(registered_model) if e["action"] in ("promote", "rollback")]
        if moves:
            e = moves[-1]
            if e["action"] == "promote":
                version, tags = e["version"], {"promoted_by": e["by"], "promoted_at": e["at"],
                                               "promotion_reason": e["reason"]}
            else:
                version, tags = e["previous"], {"rolled_back_by": e["by"], "rolled_back_at": e["at"],
                                                "rollback_reason": e["reason"]}
            have = client.get_model_version(registered_model, version).tags if version else {}
            missing = {k: v for k, v in tags.items() if k not in have}
            for key, value in missing.items():
                client.set_model_version_tag(registered_model, version, key, value)
            if missing:
                done.append(f"tagged version {version} with {', '.join(missing)} from event {e['n']}")
    return done


# -- approval ---------------------------------------------------------------------------

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
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))),
            sort=FlowRunSort.START_TIME_DESC)
        if not paused:
            raise OpsError("no paused retraining run is waiting for approval")
        return paused[0]
