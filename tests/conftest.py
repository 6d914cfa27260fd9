"""Test setup: every test gets its own workspace (git + DVC repo, sqlite MLflow); Prefect
runs on its temporary local API with a home of its own for the session."""
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Before prefect/mlflow are imported anywhere.
_PREFECT_HOME = tempfile.mkdtemp(prefix="dfcl-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    """In-process flows share one temporary Prefect API, stopped before pytest closes its
    output streams (otherwise its shutdown log line hits a closed file)."""
    from prefect.testing.utilities import prefect_test_harness

    # A generous start-up timeout: on a busy 2-core machine the server can take over 30 s.
    with prefect_test_harness(server_startup_timeout=300):
        yield


def shared_data(name: str) -> Path:
    """A folder of ../shared/data; missing data fails under CI and skips elsewhere."""
    path = SHARED_DATA / name
    if not path.is_dir():
        message = f"real test data missing: {path} (see ../shared/data/README.md)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh deepfake-cl workspace as the current folder."""
    import mlflow

    from dfcl.workspace import Workspace

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


def small_params(*overrides: str) -> dict:
    """Defaults shrunk for tests: tiny images, one epoch, the small CNN from scratch with one
    constant learning rate (tests of the pretrained detector ask for it)."""
    from dfcl.config import load_params

    base = ["data.image_size=32", "train.epochs=1", "train.batch_size=32", "model.name=small_cnn", "model.width=8",
            "model.pretrained=none", "train.schedule=constant", "train.warmup_epochs=0", "train.backbone_lr_scale=1.0",
            "strategy.replay_mem_size=40", "strategy.gem_patterns_per_exp=16"]
    return load_params(REPO / "params.yaml", base + list(overrides))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The synthetic sequence, small: three methods, 24 faces per class and split."""
    from tasks.generate_demo_data import generate

    out = tmp_path_factory.mktemp("demo")
    generate(out, ["BlendSwap", "GANUpsample", "MouthWarp"], train_per_class=24, test_per_class=12, size=32, seed=0)
    return out


def run_dfcl(args: list[str], cwd: Path, **kwargs):
    """`dfcl ...` in a subprocess with the workspace's own Prefect home and MLflow db."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["DFCL_WORKSPACE"] = str(cwd)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.Popen([sys.executable, "-m", "dfcl.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)
