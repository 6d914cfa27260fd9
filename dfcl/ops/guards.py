"""The guards a retraining runs under: one retraining (or ingest, or sweep) at a time per
workspace (a flock; on a Prefect server, whose workers may be on several hosts, its global
concurrency limit), and a check that MLflow and the DVC remote answer before anything changes. The errors
ops see (`OpsError` and its kinds) are defined here."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from dfcl.config import DvcConfig


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


RETRAIN_LIMIT = "dfcl-retrain"  # the Prefect global concurrency limit of retraining runs (limit 1)


def prefect_server() -> str | None:
    """The Prefect server this process talks to (PREFECT_API_URL, or a profile's), None for the
    temporary local API."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


@contextmanager
def one_retraining(root: Path, wait_s: float, holder: str, log=print):
    """One retraining run at a time: on a Prefect server, its global concurrency limit
    `dfcl-retrain` (made with limit 1 if missing), which holds across the hosts of a work pool's
    workers; else the workspace's flock (retrain_lock). A slot is leased: a crashed holder's
    lease runs out and frees it."""
    if not prefect_server():
        with retrain_lock(Path(root) / "data" / "retrain.lock", wait_s, holder, log):
            yield
        return
    from prefect.concurrency.sync import concurrency

    ensure_retrain_limit()
    if wait_s > 0:
        log(f"taking the slot of Prefect's concurrency limit {RETRAIN_LIMIT} (waiting up to {wait_s:.0f} s)")
    try:
        # Prefect's wait of 0 s times out before it asks the server at all: 10 s is "at once" here.
        with concurrency(RETRAIN_LIMIT, timeout_seconds=max(wait_s, 10.0), strict=True):
            yield
    except TimeoutError:
        raise Busy(f"another retraining run holds Prefect's concurrency limit {RETRAIN_LIMIT} (see its slots in "
                   "the Prefect UI, Concurrency); one runs at a time. Wait for it, or queue with "
                   "-S flow.lock_wait_s=SECONDS") from None


def ensure_retrain_limit() -> None:
    """The global concurrency limit of retraining runs on this Prefect server, limit 1, made if missing."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(RETRAIN_LIMIT)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=RETRAIN_LIMIT, limit=1))
            except ObjectAlreadyExists:  # made by another run just now
                pass


def workspace_lock(root: Path, wait_s: float, holder: str, log=print):
    """The retraining lock, also held by every other command that writes the workspace's data
    (`dfcl ingest`, `dfcl compare`): two of them at once would copy, version and extract into
    the same folders and DVC files."""
    return retrain_lock(Path(root) / "data" / "retrain.lock", wait_s, holder, log)


def check_services(dvc: DvcConfig, root: Path) -> None:
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
    if dvc.push:
        from dvc.repo import Repo

        from dfcl.ops.dvc import remote_name

        name = dvc.remote_name
        try:
            with Repo(str(root)) as repo:
                name = remote_name(repo, dvc)
                remote = repo.cloud.get_remote(name)
                remote.fs.makedirs(remote.path, exist_ok=True)
                # An object store has no folders: a new remote's empty prefix does not exist, its bucket does.
                bucket = remote.path.split("/")[0] if not remote.path.startswith("/") else remote.path
                if not remote.fs.exists(remote.path) and not remote.fs.exists(bucket):
                    raise FileNotFoundError(remote.path)
        except Exception as e:
            problems.append(f"DVC remote {name!r} is unreachable ({type(e).__name__}: {str(e)[:200]}); "
                            f"fix it with `dvc remote modify {name} url ...` or run with -S dvc.push=false")
    if problems:
        raise ServiceUnavailable("; ".join(problems))
