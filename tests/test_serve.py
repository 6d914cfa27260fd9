"""`dfcl serve` against a real Prefect server on 127.0.0.1 (started and stopped here): a new
dataset in data/incoming/ triggers a run, a second one waits its turn, ops approve through
the CLI, an already-trained dataset triggers nothing, and the champion's history shows it all;
SIGTERM and SIGINT stop it cleanly."""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.conftest import free_port, stop_group
from tests.test_pipeline import TINY

BIN = Path(sys.executable).parent


def stop(proc: subprocess.Popen) -> None:
    stop_group(proc, signal.SIGINT)  # as Ctrl-C stops `dfcl serve`


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """One server for the module (it takes a minute of CPU to start); each test's runs are told
    apart by their workspace."""
    tmp_path = tmp_path_factory.mktemp("prefect-server")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-server"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    import httpx

    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        time.sleep(1)
    else:
        stop(proc)
        pytest.fail("the Prefect server did not start")
    yield api, env
    stop(proc)
    log.close()


def flow_runs(api: str, ws: Path):
    """The runs of retrain-detector/triggered on datasets of the workspace `ws`."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name={"any_": ["triggered"]}))
    return [r for r in runs if str(r.parameters["data"]).startswith(str(ws))]


def wait_for(condition, what: str, serve_log: Path, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(2)
    pytest.fail(f"timed out waiting for {what}\n{serve_log.read_text()[-5000:]}")


def deployment_paused(api: str, name: str) -> bool:
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name).paused


def start_serve(ws: Path, env: dict, serve_log: Path) -> subprocess.Popen:
    """`dfcl serve` checking data/incoming/ every 2 s, once it says it is serving."""
    with open(serve_log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dfcl.cli", "serve", "-S", "flow.serve.poll_s=2",
                                 "-S", "faces.detect_in_images=false", *TINY],
                                cwd=ws, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "serving retrain-detector/triggered" in serve_log.read_text() or proc.poll() is not None,
                 "dfcl serve", serve_log)
        assert proc.poll() is None, serve_log.read_text()[-3000:]
    except BaseException:  # pytest.fail included
        stop(proc)
        raise
    return proc


def serve_env(env: dict, api: str, ws: Path) -> dict:
    return {**env, "PREFECT_API_URL": api, "DFCL_WORKSPACE": str(ws), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}


def states(api, ws):
    return {str(r.parameters["data"]).rsplit("/", 1)[-1]: (r.state.name if r.state else None, r.name)
            for r in flow_runs(api, ws)}


def test_serve_triggers_queues_and_waits_for_ops_on_a_real_prefect_server(tmp_path, prefect_server, demo_data):
    api, env = prefect_server
    ws = tmp_path / "ws"
    ws.mkdir()
    env = serve_env(env, api, ws)
    serve_log = tmp_path / "serve.log"
    serve = start_serve(ws, env, serve_log)
    try:
        incoming = ws / "data" / "incoming"
        shutil.copytree(demo_data / "BlendSwap", incoming / "BlendSwap")
        (incoming / "BlendSwap" / "READY").touch()  # the copy is complete
        wait_for(lambda: states(api, ws).get("BlendSwap", ("",))[0] == "Paused", "the first run to pause", serve_log)

        # a second new method while the first waits for ops: it is queued, not trained
        shutil.copytree(demo_data / "GANUpsample", incoming / "GANUpsample")
        (incoming / "GANUpsample" / "READY").touch()
        wait_for(lambda: "GANUpsample" in states(api, ws), "the second run to be created", serve_log)
        time.sleep(10)
        mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
        client = MlflowClient()
        assert len(client.search_model_versions("name='deepfake-detector'")) == 1, "two retrainings at once"

        def decide(run_name, *args):
            proc = subprocess.run([sys.executable, "-m", "dfcl.cli", *args, run_name, "--by", "alice"], cwd=ws,
                                  env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

        decide(states(api, ws)["BlendSwap"][1], "approve", "--reason", "looks right")
        wait_for(lambda: states(api, ws).get("GANUpsample", ("",))[0] == "Paused", "the second run to pause", serve_log)
        assert states(api, ws)["BlendSwap"][0] == "Completed"
        decide(states(api, ws)["GANUpsample"][1], "reject", "--reason", "not this week")
        wait_for(lambda: states(api, ws)["GANUpsample"][0] == "Completed", "the second run to finish", serve_log)

        time.sleep(8)  # several polls: trained datasets start nothing new
        assert len(flow_runs(api, ws)) == 2
        assert client.get_model_version_by_alias("deepfake-detector", "champion").version == 1
        rejected = client.get_model_version_by_alias("deepfake-detector", "challenger")
        assert (str(rejected.version), rejected.tags["rejected_by"], rejected.tags["rejection_reason"]) == \
            ("2", "alice", "not this week")
        assert client.get_run(rejected.run_id).data.tags["outcome"] == "rejected by ops"  # what `dfcl retrain` prints
        history = subprocess.run([sys.executable, "-m", "dfcl.cli", "history"], cwd=ws, env=env,
                                 capture_output=True, text=True, timeout=300).stdout
        assert "promote" in history and "reject" in history and "not this week" in history
    finally:
        stop(serve)


def test_sigterm_and_sigint_stop_serve_cleanly_and_the_run_they_cancel_is_queued_again(tmp_path, prefect_server,
                                                                                      demo_data):
    """As systemd and containers stop a service (SIGTERM to its main process) and as Ctrl-C
    does: the run in flight is cancelled and marked so, never left "Running"; the schedule is
    paused; the process says why it stopped and exits 0; the next `dfcl serve` queues the
    cancelled run's dataset again."""
    api, env = prefect_server
    ws = tmp_path / "ws"
    shutil.copytree(demo_data / "BlendSwap", ws / "data" / "incoming" / "BlendSwap")
    (ws / "data" / "incoming" / "BlendSwap" / "READY").touch()
    env = serve_env(env, api, ws)
    for n, sig in enumerate((signal.SIGTERM, signal.SIGINT), 1):
        serve_log = tmp_path / f"serve-{sig.name}.log"
        serve = start_serve(ws, env, serve_log)
        try:
            assert not deployment_paused(api, "retrain-incoming/scheduled")
            wait_for(lambda: len(flow_runs(api, ws)) == n and "Running" in [r.state.name for r in flow_runs(api, ws)],
                     f"run {n} to start", serve_log)
            os.kill(serve.pid, sig)
            assert serve.wait(300) == 0, serve_log.read_text()[-5000:]
        finally:
            stop(serve)
            with contextlib.suppress(ProcessLookupError):  # what the cancelled run left, e.g. its DVC stage
                os.killpg(serve.pid, signal.SIGKILL)
        said = serve_log.read_text()
        assert f"dfcl serve: stopped ({sig.name})" in said.splitlines(), said[-5000:]
        # A traceback of the serving process would run through dfcl's code. (The output of the
        # cancelled run's process comes here too; it may print a traceback of its own.)
        assert "dfcl/cli.py" not in said and "flows/serve.py" not in said, said[-5000:]
        assert [r.state.name for r in flow_runs(api, ws)] == ["Cancelled"] * n
        assert deployment_paused(api, "retrain-incoming/scheduled")
