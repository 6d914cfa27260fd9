"""Real remotes: the DVC remote and MLflow's artifacts on an S3-protocol server, moto's server
mode on 127.0.0.1 (as DVC's own test suite uses it), reached through dvc-s3 and boto3 exactly as
an S3 bucket (or MinIO, Ceph) would be. Credentials come from the environment, as on a real
machine. Without moto the tests skip, and fail under CI=true."""
import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest
import torch

from dfcl.ops.runners import training_data
from dfcl.workspace import ensure_workspace
from tests.conftest import free_port, small_params

BIN = Path(sys.executable).parent
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> str:
    """moto's S3 server on a free port of 127.0.0.1, with credentials in the environment: its URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        message = f"moto[server] is missing ({e}): install the test extra (requirements.lock)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    empty = tmp_path_factory.mktemp("aws") / "empty"
    empty.write_text("")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CREDENTIALS.items():
            mp.setenv(key, value)
        mp.setenv("AWS_CONFIG_FILE", str(empty))  # no profile of the machine's user gets in the way
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        yield f"http://127.0.0.1:{port}"
    server.stop()


def client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def new_bucket(endpoint: str) -> str:
    name = f"dfcl-{uuid.uuid4().hex[:12]}"
    client(endpoint).create_bucket(Bucket=name)
    return name


def keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    pages = client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def shell(*cmd, cwd: Path) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, text=True, capture_output=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "DFCL_WORKSPACE"})
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc.stdout


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_data_pushed_to_the_default_s3_remote_is_pulled_in_a_clone_and_trained_on(workspace, demo_data, s3, tmp_path):
    from dfcl.learning.learner import train_sequence
    from dfcl.ops.versions import checked_out
    from flows.ingest import ingest_dataset

    bucket = new_bucket(s3)
    params = small_params("dvc.git_commit=true")
    ensure_workspace(workspace, params.dvc)  # git + DVC, its remote `local` the default
    # What docs/operations.md tells ops to do: an S3 remote as the default, its endpoint, and
    # (in the uncommitted .dvc/config.local) its keys, which must never reach a worker's parameters.
    root = workspace.root
    shell(BIN / "dvc", "remote", "add", "-d", "store", f"s3://{bucket}/dvc", cwd=root)
    shell(BIN / "dvc", "remote", "modify", "store", "endpointurl", s3, cwd=root)
    for option in ("access_key_id", "secret_access_key"):
        shell(BIN / "dvc", "remote", "modify", "--local", "store", option, CREDENTIALS[f"AWS_{option.upper()}"], cwd=root)
    assert shell(BIN / "dvc", "remote", "default", cwd=root).strip() == "store"
    shell("git", "add", ".dvc/config", cwd=root)
    shell("git", "commit", "-q", "-m", "the team's S3 remote", cwd=root)

    ingested = ingest_dataset(str(demo_data / "BlendSwap"), params)

    # Raw data and faces went to the default remote, the bucket; nothing to the local folder.
    stored = keys(s3, bucket, "dvc/")
    for version in (ingested.raw_version, ingested.version):
        assert f"dvc/files/md5/{version[:2]}/{version[2:]}" in stored, (version, stored[:5])
    assert not (root / "data" / "remote").exists(), "pushed to the params' remote `local`, not the default"

    # A second clone pulls the same version from the bucket and trains on it.
    clone = tmp_path / "clone"
    shell("git", "clone", "-q", root, clone, cwd=tmp_path)
    shell(BIN / "dvc", "pull", "-q", cwd=clone)
    faces = Path("data") / "processed" / "BlendSwap"
    assert digests(clone / faces) == digests(root / faces) and digests(root / faces)
    learner, report = train_sequence(ingested.specs, params, clone / "learner", clone)
    assert [key for key, _ in learner.history.columns] == [spec.key for spec in ingested.specs]
    assert 0.0 <= report["avg_auc"] <= 1.0

    # A Dask worker gets the remote's url and options, not its credentials (those are in the
    # worker's environment), and checks the version out from the bucket with them alone.
    data = training_data(params.compare.model_copy(update={"runner": "dask", "worker_data": str(tmp_path / "worker"),
                                                           "dask_threads_per_worker": 1}), params, root)
    remote = data["remote"]
    assert remote["url"] == f"s3://{bucket}/dvc" and remote["endpointurl"] == s3
    assert not [k for k in remote if "secret" in k or "key" in k], remote
    specs = checked_out(ingested.specs, remote, Path(data["cache"]))
    version = ingested.version.removesuffix(".dir")
    assert digests(Path(data["cache"]) / version) == digests(root / faces)
    assert all((Path(data["cache"]) / spec.train_x).is_file() for spec in specs)


def test_mlflow_artifacts_of_a_logged_detector_land_in_the_s3_bucket(workspace, s3, monkeypatch):
    from dfcl.ops.tracking import log_detector
    from dfcl.serving.detector import load_mlflow_detector
    from dfcl.workspace import use_mlflow_experiment
    from models import create_model

    bucket = new_bucket(s3)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3)
    # The documented command: the experiment made with its artifact location before the first run.
    shell(BIN / "mlflow", "experiments", "create", "--experiment-name", "deepfake-cl",
          "--artifact-location", f"s3://{bucket}/mlflow", cwd=workspace.root)
    experiment_id = use_mlflow_experiment(workspace, "deepfake-cl")
    assert mlflow.get_experiment(experiment_id).artifact_location == f"s3://{bucket}/mlflow"

    model = create_model("small_cnn", width=4).eval()
    with mlflow.start_run():
        log_detector(model, 16, 0.5, {}, "deepfake-detector")
    stored = keys(s3, bucket, "mlflow/")
    assert [k for k in stored if k.endswith("/MLmodel")], stored
    assert [k for k in stored if k.endswith("/code/models/pyfunc.py")], "the models/ code is in the bucket"
    assert not list((workspace.root / "mlruns").rglob("MLmodel")), "nothing logged to the local mlruns/"
    detector = load_mlflow_detector("models:/deepfake-detector/1")  # downloaded from the bucket
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(detector.model(x), model(x), atol=1e-6)  # to rounding: the Detector runs channels_last


def test_pushes_go_to_the_default_remote_else_to_dvc_remote_name(workspace):
    from dvc.repo import Repo

    from dfcl.ops.dvc import remote_name
    from dfcl.ops.versions import remote_config

    params = small_params()
    ensure_workspace(workspace, params.dvc)
    root = workspace.root

    def named() -> str:
        with Repo(str(root)) as repo:
            return remote_name(repo, params.dvc)

    assert named() == "local"  # a new workspace's default
    shell(BIN / "dvc", "remote", "add", "-d", "team", "s3://bucket/team", cwd=root)  # (nothing connects here)
    shell(BIN / "dvc", "remote", "modify", "team", "region", "eu-west-1", cwd=root)
    shell(BIN / "dvc", "remote", "modify", "--local", "team", "secret_access_key", "hunter2", cwd=root)
    assert named() == "team"
    remote = remote_config(root, params.dvc)
    assert remote["url"] == "s3://bucket/team" and remote["region"] == "eu-west-1", remote
    assert "hunter2" not in str(remote), remote
    shell(BIN / "dvc", "remote", "default", "--unset", cwd=root)
    assert named() == "local" and remote_config(root, params.dvc)["url"] == str(root / "data" / "remote")
