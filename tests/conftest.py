"""Test setup: every test gets its own workspace (git + DVC repo, sqlite MLflow); Prefect
runs on its temporary local API with a home of its own for the session."""
import atexit
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Before prefect/mlflow are imported anywhere.
_PREFECT_HOME = tempfile.mkdtemp(prefix="dfcl-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)  # after the API's own atexit stop
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "true"
# A generous start-up timeout: on a busy 2-core machine the server can take over 30 s.
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "300"
# Torch's OpenMP threads sleep instead of spinning while they wait for work: on a 2-core machine
# busier than its cores (the suite runs `dfcl` processes and Prefect's API beside each other) the
# spinning threads take the cores from the ones with work, and small models train 4-30x slower.
# (Quiet, a single-image forward pass is ~30% slower this way, so dfcl keeps OpenMP's default.)
# Read when torch loads, so set before any import of it; every `dfcl` the tests start inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    """Flows run on Prefect's temporary local API, which Prefect starts on first use (tests that
    run no flow never wait for it), with a home of its own for the session; stopped here, before
    pytest closes its output streams (otherwise its shutdown log line hits a closed file)."""
    yield
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    # Logs and events still queued go to the API while it runs: left for the exit, they would
    # be retried against the stopped server for over a minute.
    APILogWorker.drain_all()
    EventsWorker.drain_all()
    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()


@pytest.fixture(autouse=True)
def _no_logging_into_closed_streams():
    """A library logger set up during a test whose output pytest captured (DVC's handler, made on
    DVC's first use in the process) keeps that captured stream, which pytest closes after the test;
    the next test of the process that logs through it fails ("I/O operation on closed file").
    Such handlers are pointed at the real stderr after each test."""
    yield
    loggers = [logging.getLogger()] + [g for g in logging.Logger.manager.loggerDict.values() if isinstance(g, logging.Logger)]
    for handler in {h for g in loggers for h in g.handlers}:
        stream = getattr(handler, "stream", None)
        if stream is not None and getattr(stream, "closed", False):
            handler.stream = sys.__stderr__  # (setStream would flush the closed one first)


def shared_data(name: str) -> Path:
    """A folder of ../shared/data; missing data fails under CI and skips elsewhere."""
    path = SHARED_DATA / name
    if not path.is_dir():
        message = f"real test data missing: {path} (see ../shared/data/README.md)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow database with its tables made and no experiment: what a new one is once MLflow
    has migrated it (about 2 s), done once here. MLflow makes the Default experiment, in the
    workspace's mlruns/, when it first opens a copy."""
    import sqlite3

    import mlflow

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    mlflow.search_experiments()
    mlflow.set_tracking_uri(None)
    with sqlite3.connect(db) as connection:
        connection.execute("DELETE FROM experiment_tags")
        connection.execute("DELETE FROM experiments")
    connection.close()
    return db


@pytest.fixture
def workspace(tmp_path, monkeypatch, empty_mlflow_db):
    """A fresh deepfake-cl workspace as the current folder."""
    import shutil

    import mlflow

    from dfcl.workspace import Workspace

    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DFCL_WORKSPACE", str(tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("Default")  # forget an experiment id made active by an earlier test
    ws = Workspace(tmp_path)
    yield ws
    if mlflow.active_run():
        mlflow.end_run()


# Defaults shrunk for tests: tiny images, one epoch, the small CNN from scratch with one constant
# learning rate (tests of the pretrained detector ask for it). The synthetic faces are taken whole
# (MTCNN and dlib's landmarks are for real faces; their tests ask for them). A one-epoch model
# can be near chance: the first champion's AUC floor (gate.min_auc) is off here, tested in test_gate.
# The flow tests' small models: one epoch of a tiny CNN on whole 32-px images, augmented as before
# issue 35 (no sharpening or resampling, JPEG 60-95), so that their few faces train as the tests expect.
SMALL = ["gate.min_auc=0.0", "augment.sharpen_p=0", "augment.resample_p=0", "augment.jpeg_quality_min=60",
         "augment.jpeg_quality_max=95", "faces.detect_in_images=false", "faces.landmarks=false", "data.identity_distance=0", "sbi.first=false", "sbi.epochs=0", "data.image_size=32", "train.epochs=1", "train.batch_size=32", "model.name=small_cnn", "model.width=8",
         "model.pretrained=none", "train.schedule=constant", "train.warmup_epochs=0", "train.backbone_lr_scale=1.0",
         "strategy.replay.mem_size=40", "strategy.der.mem_size=40", "strategy.sur_lid.mem_size=40",
         "strategy.dfil.mem_size=40", "strategy.gem.patterns_per_exp=16"]


# The files that take minutes, slowest first (measured: `make test` prints the slowest tests).
# Handed out first (the Makefile's --no-loadscope-reorder keeps this order), the two workers end
# together: in xdist's own order (files with most tests first) the PostgreSQL story came last and
# one worker ended 160 s before the other (measured, durations summed per worker).
SLOW_FILES = ["test_serve.py", "test_postgres_story.py", "test_pinning.py", "test_pipeline.py", "test_api.py",
              "test_install.py", "test_ops.py", "test_compare.py", "test_trust.py", "test_learner.py", "test_cli.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


def small_params(*overrides: str):
    from dfcl.config import load_params

    return load_params(REPO / "params.yaml", SMALL + list(overrides))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The synthetic sequence, small: three methods, 24 faces per class and split."""
    from dfcl.data.demo_data import generate

    out = tmp_path_factory.mktemp("demo")
    generate(out, ["BlendSwap", "GANUpsample", "MouthWarp"], train_per_class=24, test_per_class=12, size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def prefect_api_url() -> str:
    """The session's temporary Prefect API (the one the tests' own flows use), for `dfcl`
    processes: each would otherwise start a temporary API of its own, ~15 s of CPU."""
    from dfcl.ops.runners import prefect_api_url

    return prefect_api_url()


def run_dfcl(args: list[str], cwd: Path, api: str | None = None, **kwargs):
    """`dfcl ...` in a subprocess with the workspace's own MLflow db, and its own Prefect home
    and temporary API, or the Prefect API at `api`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    if api:
        env["PREFECT_API_URL"] = api
    env["DFCL_WORKSPACE"] = str(cwd)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.Popen([sys.executable, "-m", "dfcl.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, sig: int) -> None:
    """Stop a process started in a session of its own (start_new_session) and all it started:
    `sig`, then SIGKILL after 30 s."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def champion_root(tmp_path_factory, demo_data) -> Path:
    """A workspace whose champion (version 1) is the small CNN trained on the first demo
    method through the real retraining flow, auto-approved. Shared: tests that move its
    aliases put them back."""
    import mlflow

    from flows.retrain import retrain_detector

    root = tmp_path_factory.mktemp("champion")
    with pytest.MonkeyPatch.context() as mp:
        _use_workspace(mp, root)
        outcome = retrain_detector(str(demo_data / "BlendSwap"), small_params("train.epochs=2"), auto_approve=True)
        assert outcome["outcome"] == "promoted", outcome
        mlflow.set_tracking_uri(None)
    return root


@pytest.fixture
def champion(champion_root, monkeypatch) -> Path:
    """The shared champion workspace as the current one."""
    _use_workspace(monkeypatch, champion_root)
    return champion_root


def _use_workspace(mp: pytest.MonkeyPatch, root: Path) -> None:
    import mlflow

    mp.chdir(root)
    mp.setenv("DFCL_WORKSPACE", str(root))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """Real files to detect on (from ../shared/data), and broken ones."""
    import cv2
    import numpy as np

    out = tmp_path_factory.mktemp("media")
    ffpp, dfdc, stylegan = shared_data("ffpp-videos"), shared_data("dfdc-crops"), shared_data("stylegan-faces")
    video = next((ffpp / "manipulated_sequences" / "Deepfakes" / "c23" / "videos").glob("*.mp4"))
    fake = sorted((dfdc / "fake").glob("*.jpg"))[0]
    files = {"video": video, "dfdc_real": sorted((dfdc / "real").glob("*.jpg"))[0], "dfdc_fake": fake,
             "stylegan": sorted((stylegan / "images" / "fake").glob("*.jpg"))[0]}
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 30)
    ok, frame = cap.read()
    cap.release()
    assert ok
    files["photo"] = out / "frame.jpg"  # a whole video frame: a photo with a face somewhere in it
    cv2.imwrite(str(files["photo"]), frame)
    files["noface"] = out / "noise.png"
    cv2.imwrite(str(files["noface"]), (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8))
    files["text_mp4"] = out / "notes.mp4"
    files["text_mp4"].write_text("not a video\n")
    files["empty"] = out / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["truncated"] = out / "truncated.mp4"
    files["truncated"].write_bytes(video.read_bytes()[:20000])
    files["truncated_jpeg"] = out / "cut.jpg"  # the photo cut off halfway: a decoder would grey the rest and go on
    files["truncated_jpeg"].write_bytes(files["photo"].read_bytes()[:files["photo"].stat().st_size // 2])
    files["unsupported"] = out / "notes.txt"
    files["unsupported"].write_text("hello\n")
    return files
