"""The whole served story on the servers a team runs, in the order docs/operations.md gives it
("Servers on PostgreSQL, a worker pool"): PostgreSQL from the machine's binaries (initdb into a
temporary folder, 127.0.0.1, a free port), a Prefect server and an MLflow server on it (MLflow's
artifacts proxied to an S3 server, moto's), the workspace's DVC remote on S3, `dfcl deploy`, a
worker on the pool; a champion; a dataset dropped in data/incoming/ -> a run of the deployment ->
suspended for approval (its worker freed) -> approved through Prefect's API as the UI's form does
-> the same run resumed on the pool, without training again -> `champion` moves -> `dfcl api`
serves it -> `dfcl rollback` -> it serves the one before. One test that starts everything once.
Without PostgreSQL's binaries it skips, and fails under CI=true."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO, SMALL, free_port, stop_group
from tests.test_remotes import CREDENTIALS, keys, new_bucket

BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# The smallest settings of the flow tests, and a gate that lets a one-epoch challenger reach ops.
OVERRIDES = SMALL + ["train.epochs=2", "gate.max_forgetting=1", "gate.max_drop_per_method=1",
                     "gate.max_drop_average=1", "api.reload_s=1", "approval.timeout_s=3600"]


def pg_tool(name: str) -> str:
    found = shutil.which(name) or (str(PG_BIN / name) if (PG_BIN / name).exists() else None)
    if not found:
        message = f"PostgreSQL's {name} is not on PATH (install PostgreSQL 15's server binaries)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def as_postgres_user(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: there, as the `postgres` user (or nobody)."""
    if os.geteuid() != 0:
        return cmd
    import pwd

    user = "postgres"
    try:
        pwd.getpwnam(user)
    except KeyError:
        user = "nobody"
    return ["runuser", "-u", user, "--", *cmd]


def chown_for_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd

        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            entry = pwd.getpwnam("nobody")
        os.chown(path, entry.pw_uid, entry.pw_gid)


def run(cmd: list, env: dict | None = None, cwd: Path | None = None, timeout: float = 300) -> str:
    proc = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def start(cmd: list, env: dict, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([str(c) for c in cmd], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    stop_group(proc, signal.SIGTERM)


def wait_for(condition, what: str, logs: list[Path], timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in logs if p.exists())
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster of its own (trust on 127.0.0.1 only) with the databases `prefect` and
    `mlflow`: its port."""
    initdb, pg_ctl = pg_tool("initdb"), pg_tool("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="dfcl-pg-"))
    chown_for_postgres(root)
    data, port = root / "data", free_port()
    run(as_postgres_user([initdb, "-D", data, "-U", "dfcl", "--auth=trust", "-E", "UTF8", "--no-sync"]))
    run(as_postgres_user([pg_ctl, "-D", data, "-l", root / "postgres.log", "-w", "-t", "120", "start", "-o",
                          f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off"]))
    try:
        for database in ("prefect", "mlflow"):
            run([pg_tool("createdb"), database, "-h", "127.0.0.1", "-p", port, "-U", "dfcl"])
        yield port
    finally:
        run(as_postgres_user([pg_ctl, "-D", data, "-m", "fast", "stop"]))
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server (as tests.test_remotes.s3), the credentials only in the environments given."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_servers_on_postgresql_a_worker_pool_and_the_whole_approval_story(postgres, s3_server, demo_data, tmp_path,
                                                                         monkeypatch):
    logs = tmp_path / "logs"
    logs.mkdir()
    empty = tmp_path / "empty"
    empty.write_text("")
    s3 = {**CREDENTIALS, "AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty)}
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    bucket = new_bucket(s3_server)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))}
    base["PATH"] = f"{BIN}{os.pathsep}{base.get('PATH', '')}"
    prefect_port, mlflow_port, api_port = free_port(), free_port(), free_port()
    api, tracking = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"
    procs: list[subprocess.Popen] = []
    try:
        # The servers, as docs/operations.md starts them.
        procs.append(start([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", prefect_port],
                           {**base, "PREFECT_HOME": str(tmp_path / "prefect-server"),
                            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                            "PREFECT_API_DATABASE_CONNECTION_URL":
                                f"postgresql+asyncpg://dfcl@127.0.0.1:{postgres}/prefect"}, logs / "prefect.log"))
        procs.append(start([BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", mlflow_port, "--workers", "1",
                            "--backend-store-uri", f"postgresql+psycopg://dfcl@127.0.0.1:{postgres}/mlflow",
                            "--artifacts-destination", f"s3://{bucket}/mlflow"],
                           {**base, **s3, "MLFLOW_S3_ENDPOINT_URL": s3_server, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                           logs / "mlflow.log"))
        wait_for(lambda: answers(f"{api}/health") and answers(f"{tracking}/health"), "the Prefect and MLflow servers",
                 [logs / "prefect.log", logs / "mlflow.log"], timeout=400)

        # The workspace: its params, the team's servers, its DVC remote on S3. Clients need no S3
        # keys for MLflow (the server proxies artifacts); DVC does (its own in .dvc/config.local).
        ws = tmp_path / "ws"
        ws.mkdir()
        (ws / "params.yaml").write_text(yaml.safe_dump(with_overrides(yaml.safe_load((REPO / "params.yaml").read_text()),
                                                                      OVERRIDES)))
        env = {**base, "PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": tracking, "DFCL_WORKSPACE": str(ws),
               "PREFECT_HOME": str(tmp_path / "prefect-client"), "PREFECT_WORKER_QUERY_SECONDS": "2",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GIT_PYTHON_REFRESH": "quiet"}
        said = run([BIN / "dfcl", "deploy", "--pool", "dfcl"], env, ws)
        assert "retrain-detector/triggered and retrain-incoming/scheduled on work pool 'dfcl'" in said, said
        run([BIN / "dvc", "remote", "add", "-d", "store", f"s3://{bucket}/dvc"], env, ws)
        run([BIN / "dvc", "remote", "modify", "store", "endpointurl", s3_server], env, ws)
        for option in ("access_key_id", "secret_access_key"):
            run([BIN / "dvc", "remote", "modify", "--local", "store", option, CREDENTIALS[f"AWS_{option.upper()}"]],
                env, ws)

        # A champion (version 1), trained here by `dfcl retrain`: the server's concurrency limit, not a flock.
        said = run([BIN / "dfcl", "retrain", demo_data / "BlendSwap", "--auto-approve"], env, ws, timeout=600)
        assert "promoted" in said, said[-3000:]
        procs.append(start([BIN / "dfcl", "api", "--port", api_port], env, logs / "api.log", ws))
        procs.append(start([BIN / "prefect", "worker", "start", "--pool", "dfcl"], env, logs / "worker.log", ws))
        served = f"http://127.0.0.1:{api_port}"
        every_log = [logs / n for n in ("worker.log", "api.log", "prefect.log", "mlflow.log")]
        wait_for(lambda: model_version(served) == "1", "dfcl api to serve version 1", every_log)

        # A new dataset: the watch (its cron, or run now) queues a run of retrain-detector/triggered on the pool.
        incoming = ws / "data" / "incoming"
        shutil.copytree(demo_data / "GANUpsample", incoming / "GANUpsample")
        (incoming / "GANUpsample" / "READY").touch()
        run([BIN / "prefect", "deployment", "run", "retrain-incoming/scheduled"], env, ws)
        run_id = wait_for(lambda: triggered_run(api, "Suspended"), "the retraining run to be suspended for ops",
                          every_log, timeout=600)

        # Suspended: its process is gone (the worker is free; its MLflow run waits, not failed), and
        # the form says what ops decide on.
        assert [r["info"]["status"] for r in search_runs(tracking, run_id)] == ["SCHEDULED"]
        with httpx.Client(base_url=api, timeout=30) as prefect:
            description = prefect.get(f"/flow_runs/{run_id}/input/suspended-approval-v2-description").json()
            schema = prefect.get(f"/flow_runs/{run_id}/input/suspended-approval-v2-schema").json()
            assert "Challenger v2 vs champion v1" in description, description
            assert f"{tracking}/#/experiments/" in description, description
            assert {"approve", "approver", "reason"} <= set(schema["properties"])
            assert all(field.get("description") for field in schema["properties"].values()), schema
            # Ops approve in the UI: its form posts the answer to the run's resume endpoint.
            r = prefect.post(f"/flow_runs/{run_id}/resume",
                             json={"run_input": {"approve": True, "approver": "alice", "reason": "looks right"}})
            assert r.status_code < 300 and r.json()["status"] == "ACCEPT", r.text
        wait_for(lambda: triggered_run(api, "Completed"), "the resumed run to finish", every_log, timeout=600)
        wait_for(lambda: model_version(served) == "2", "dfcl api to serve version 2", every_log)

        history = run([BIN / "dfcl", "history"], env, ws)
        assert "champion = version 2" in history and "alice" in history and "looks right" in history, history
        mlflow_runs = search_runs(tracking, run_id)
        assert len(mlflow_runs) == 1, "the resumed run trained again"
        tags = {t["key"]: t["value"] for t in mlflow_runs[0]["data"]["tags"]}
        assert (mlflow_runs[0]["info"]["status"], tags["outcome"]) == ("FINISHED", "promoted")

        said = run([BIN / "dfcl", "rollback", "--by", "ops", "--reason", "false alarms"], env, ws)
        assert "rolled back from version 2 to version 1" in said, said
        wait_for(lambda: model_version(served) == "1", "dfcl api to serve version 1 again", every_log)
        stored = keys(s3_server, bucket)
        assert [k for k in stored if k.startswith("mlflow/") and k.endswith("/MLmodel")], stored[:20]
        assert [k for k in stored if k.startswith("dvc/files/md5/")], stored[:20]
    finally:
        for proc in reversed(procs):
            stop(proc)


def with_overrides(out: dict, overrides: list[str]) -> dict:
    """A whole params.yaml (DVC's stages read their keys from it) with `a.b=v` overrides set in it."""
    for item in overrides:
        key, value = item.split("=", 1)
        *sections, last = key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = yaml.safe_load(value)
    return out


def model_version(url: str) -> str | None:
    try:
        return httpx.get(f"{url}/v1/model", timeout=5).json().get("version")
    except (httpx.HTTPError, ValueError):
        return None


def triggered_run(api: str, state: str) -> str | None:
    """The id of the one run of retrain-detector/triggered when it is in `state`."""
    runs = httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"name": {"any_": ["triggered"]}}},
                      timeout=30).json()
    assert len(runs) <= 1, [(r["name"], r["state"]["name"]) for r in runs]
    assert not runs or runs[0]["state"]["type"] not in ("FAILED", "CRASHED"), runs[0]["state"]
    return runs[0]["id"] if runs and runs[0]["state"]["name"] == state else None


def search_runs(tracking: str, flow_run_id: str) -> list[dict]:
    experiments = httpx.post(f"{tracking}/api/2.0/mlflow/experiments/search", json={"max_results": 100},
                             timeout=30).json()["experiments"]
    found = httpx.post(f"{tracking}/api/2.0/mlflow/runs/search", timeout=30, json={
        "experiment_ids": [e["experiment_id"] for e in experiments],
        "filter": f"tags.`prefect.flow_run_id` = '{flow_run_id}'"}).json()
    return found.get("runs", [])
