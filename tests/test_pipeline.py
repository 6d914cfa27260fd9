"""End to end through the real services: Prefect (temporary local API), DVC (local remote),
MLflow (sqlite), with `dfcl` run as users run it, in subprocesses."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import run_dfcl, shared_data, stop_group

# The synthetic faces are taken whole (MTCNN re-framing and dlib's landmarks are for photos).
TINY = ["-S", "data.image_size=32", "-S", "train.epochs=1", "-S", "model.width=8",
        "-S", "strategy.replay.mem_size=40", "-S", "faces.detect_in_images=false", "-S", "faces.landmarks=false",
        "-S", "sbi.first=false", "-S", "gate.min_auc=0.0"]  # one epoch of a tiny model: no first-champion floor


def processed_version(ws: Path, name: str) -> str:
    """The DVC hash of a dataset's faces, from the extraction stage's entry in dvc.lock."""
    outs = yaml.safe_load((ws / "dvc.lock").read_text())["stages"][f"extract_faces_{name}"]["outs"]
    return next(o["md5"] for o in outs if o["path"] == f"data/processed/{name}")


def read_along(proc) -> list[str]:
    """The lines `proc` has printed so far, read by a thread as they come (see finish)."""
    if not hasattr(proc, "lines"):
        proc.lines = []

        def read():
            for line in proc.stdout:
                proc.lines.append(line)

        proc.reader = threading.Thread(target=read, daemon=True)
        proc.reader.start()
    return proc.lines


def finish(proc, timeout: float) -> str:
    """The whole output of a process whose lines read_along reads, once it has ended."""
    proc.wait(timeout)
    proc.reader.join(timeout)
    return "".join(proc.lines)


def approve_when_paused(proc, ws: Path, api: str | None, verb: str, *extra: str, timeout: float = 600) -> str:
    """`dfcl approve|reject` once the retraining run says it waits for ops, again until the run
    is paused and accepts it. (Each try is a process of its own: trying before the run waits
    would only take the CPU from its training.)"""
    deadline = time.time() + timeout
    lines = read_along(proc)
    while not any("for ops" in line for line in lines):
        if proc.poll() is not None:
            pytest.fail(f"retrain ended before pausing:\n{finish(proc, 60)[-4000:]}")
        if time.time() > deadline:
            pytest.fail(f"retrain never said it waits for ops:\n{''.join(lines)[-4000:]}")
        time.sleep(1)
    while time.time() < deadline:
        decide = run_dfcl([verb, "--by", "alice", *extra], ws, api)
        out, _ = decide.communicate(timeout=300)
        if decide.returncode == 0:
            return out
        assert "no paused retraining run" in out, out
        if proc.poll() is not None:
            pytest.fail(f"retrain ended before pausing:\n{finish(proc, 60)[-4000:]}")
        time.sleep(2)
    pytest.fail("retrain never paused for approval")


def test_ctrl_c_while_waiting_for_ops_ends_the_run_as_interrupted(tmp_path, demo_data):
    """Ctrl-C in the terminal (SIGINT to the whole foreground process group) while `dfcl retrain`
    waits for ops on Prefect's temporary API: the run is recorded as crashed, dfcl says it was
    interrupted, and the API ends with it. (Started in dfcl's group, the API died first, and the
    flow retried it for minutes, then failed with "ConnectError: Connection refused".)"""
    proc = run_dfcl(["retrain", str(demo_data / "BlendSwap"), "-S", "model.name=small_cnn", "-S", "model.pretrained=none",
                     *TINY], tmp_path, start_new_session=True,  # a terminal's job: its own group, Ctrl-C not ignored
                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = read_along(proc)
        deadline = time.time() + 600
        while not any("Pausing flow" in line for line in lines):
            assert proc.poll() is None and time.time() < deadline, "".join(lines)[-3000:]
            time.sleep(1)

        os.killpg(proc.pid, signal.SIGINT)
        out = finish(proc, 120)
    finally:
        stop_group(proc, signal.SIGKILL)  # whatever is left of it when this test fails

    assert proc.returncode == 130 and "dfcl: interrupted" in out, out[-3000:]
    assert "Finished in state Crashed('Execution was aborted by an interrupt signal.')" in out
    assert "ConnectError" not in out and "Error logging to API" not in out
    port = int(re.search(r"Starting temporary server on http://127.0.0.1:(\d+)", out).group(1))
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_retrain_on_ffpp_crops_versions_logs_registers_and_promotes_on_approval(tmp_path, prefect_api_url):
    data = shared_data("ffpp-crops")
    ws = tmp_path
    args = ["retrain", str(data), "--methods", "Deepfakes,FaceSwap", "-S", "data.max_per_class=60",
            "-S", "dvc.git_commit=true", "-S", "approval.timeout_s=600", *TINY]
    proc = run_dfcl(args, ws, prefect_api_url)
    said = approve_when_paused(proc, ws, prefect_api_url, "approve", "--reason", "numbers look right")
    assert "approved flow run" in said
    out = finish(proc, timeout=300)
    assert proc.returncode == 0, out[-4000:]
    assert "outcome: promoted" in out

    # DVC: raw and processed data tracked, committed to git, cache and remote in sync
    from dvc.repo import Repo

    assert (ws / "data" / "raw" / "ffpp-crops.dvc").is_file()
    log = subprocess.run(["git", "log", "--format=%s"], cwd=ws, capture_output=True, text=True).stdout
    assert "dfcl: raw dataset ffpp-crops" in log and "dfcl: faces of ffpp-crops" in log
    assert "dfcl: metrics of model version 1" in log  # the figures beside the data versions they came from
    dirty = subprocess.run(["git", "status", "--porcelain", "data", "dvc.yaml", "dvc.lock", "metrics", "plots"], cwd=ws,
                           capture_output=True, text=True).stdout
    assert ".dvc" not in dirty and "dvc." not in dirty and "metrics" not in dirty and "plots" not in dirty, dirty
    with Repo(str(ws)) as repo:
        assert repo.status() == {}, "dvc status is not clean"
        assert repo.status(cloud=True) == {}, "the DVC remote lacks data"
    version = processed_version(ws, "ffpp-crops")

    # MLflow: one run with per-method metrics at step = experience index, the DVC version,
    # the matrices, and the registered model with both aliases
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    client = MlflowClient()
    runs = mlflow.search_runs(experiment_names=["deepfake-cl"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["data.ffpp-crops.version"] == version
    assert run.data.params["strategy.name"] == "replay"
    assert run.data.params["faces.detect_in_images"] == "False" and run.data.params["gate.min_auc"] == "0.0"
    # The MLflow run and the flow run point at each other; the console's link opens the run in the
    # MLflow UI's "Model training" view.
    flow_run_id = run.data.tags["prefect.flow_run_id"]
    assert run.data.tags["prefect.flow_run_url"] == f"{prefect_api_url.removesuffix('/api')}/flow-runs/flow-run/{flow_run_id}"
    assert (f"MLflow run: http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
            "?workflowType=machine_learning") in out
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "acc/ffpp-crops/Deepfakes")]
    assert steps == [0, 1]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "auc/ffpp-crops/FaceSwap")] == [1]
    for key in ("avg_accuracy", "avg_balanced_accuracy", "avg_auc", "forgetting", "auc_forgetting", "bwt", "threshold"):
        assert key in run.data.metrics
    assert "balanced_acc/ffpp-crops/FaceSwap" in run.data.metrics
    # Forward transfer: FaceSwap, known from the ingest, was tested after Deepfakes, before it was learned.
    assert [m.step for m in client.get_metric_history(run.info.run_id, "auc_before/ffpp-crops/FaceSwap")] == [1]
    assert run.data.metrics["auc_forward_transfer"] == pytest.approx(run.data.metrics["auc_before/ffpp-crops/FaceSwap"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/accuracy_matrix.csv", "evaluation/accuracy_matrix.png"} <= artifacts
    decision = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/promotion_decision.md")
    assert "Challenger v1 vs champion (none yet)" in decision and "| ffpp-crops/FaceSwap |" in decision
    challenger = client.get_model_version_by_alias("deepfake-detector", "challenger")
    champion = client.get_model_version_by_alias("deepfake-detector", "champion")
    assert str(challenger.version) == str(champion.version) == "1"
    assert champion.tags["promoted_by"] == "alice" and champion.tags["promotion_reason"] == "numbers look right"
    assert client.get_run(run.info.run_id).data.tags["promoted_by"] == "alice"

    # The champion serves detections
    image = next((data / "test" / "Deepfakes").glob("*.jpg"))
    detect = run_dfcl(["detect", str(image), "--json", str(ws / "detect.json"), *TINY], ws, prefect_api_url)
    out, _ = detect.communicate(timeout=180)
    assert detect.returncode == 0, out
    assert "version 1, alias champion" in out and "Add type hints" not in out
    row = json.loads((ws / "detect.json").read_text())["detections"][0]
    assert row["model"]["version"] == "1" and 0 <= row["p_fake"] <= 1 and row["verdict"] in ("fake", "real", "uncertain")

    # Re-running the same data is idempotent: same version, no new experience, no new commit
    again = run_dfcl(args, ws, prefect_api_url)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    assert "outcome: nothing new" in out
    assert subprocess.run(["git", "log", "--format=%s"], cwd=ws, capture_output=True, text=True).stdout == log
    assert processed_version(ws, "ffpp-crops") == version

    # Next month a different method arrives as real/ + fake/ folders: the same learner
    # continues (experience 2) and is evaluated on all three methods.
    stylegan = shared_data("stylegan-faces") / "images"
    later = run_dfcl(["retrain", str(stylegan), "--auto-approve", "-S", "data.max_per_class=40",
                      "-S", "gate.max_drop_per_method=1", "-S", "gate.max_drop_average=1", "-S", "gate.max_forgetting=1",
                      *TINY], ws, prefect_api_url)
    out, _ = later.communicate(timeout=300)
    assert later.returncode == 0, out[-3000:]
    assert "outcome: promoted" in out
    newest = mlflow.search_runs(experiment_names=["deepfake-cl"], order_by=["start_time DESC"], output_format="list")[0]
    history = client.get_metric_history(newest.info.run_id, "acc/ffpp-crops/Deepfakes")
    assert [m.step for m in history] == [2]
    assert [m.step for m in client.get_metric_history(newest.info.run_id, "auc/stylegan-faces")] == [2]
    assert str(client.get_model_version_by_alias("deepfake-detector", "champion").version) == "2"
    # Not committed this time (dvc.git_commit off): DVC compares the workspace's figures with version 1's.
    diff = subprocess.run([sys.executable, "-m", "dvc", "metrics", "diff", "--json"], cwd=ws, capture_output=True,
                          text=True, check=True)
    avg_auc = json.loads(diff.stdout)["metrics/retrain.json"]["avg_auc"]
    assert avg_auc["old"] == pytest.approx(run.data.metrics["avg_auc"])
    assert avg_auc["new"] == pytest.approx(newest.data.metrics["avg_auc"])
    decision = mlflow.artifacts.load_text(f"runs:/{newest.info.run_id}/promotion_decision.md")
    assert "Challenger v2 vs champion v1" in decision and "| stylegan-faces |" in decision
