"""Where a deepfake-cl project keeps its state, and the embedded defaults for its services.

A workspace is a folder (by default the current one) holding params.yaml, data/ (DVC-tracked
raw and processed datasets, the learner's state), mlflow.db + mlruns/ and .prefect/.
Every service default can be replaced by the usual environment variable:
  PREFECT_API_URL       a Prefect server instead of the temporary local API
  MLFLOW_TRACKING_URI   an MLflow server instead of sqlite:///mlflow.db
  dvc.remote_url        (params.yaml) a new workspace's DVC remote instead of the local folder;
                        `dvc remote add -d` makes any other the default, which pushes go to
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dfcl.config import DvcConfig


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def here(cls) -> "Workspace":
        return cls(Path(os.environ.get("DFCL_WORKSPACE", ".")).resolve())

    @property
    def face_cache(self) -> Path:
        """MTCNN detections per video content and detection settings (dfcl.data.extraction)."""
        return self.root / "data" / "cache" / "faces"

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed"

    @property
    def learner(self) -> Path:
        return self.root / "data" / "learner"

    @property
    def incoming(self) -> Path:
        return self.root / "data" / "incoming"

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def log_file(self) -> Path:
        """`dfcl`'s log, tracebacks included (the console shows errors as one line)."""
        return self.root / ".dfcl" / "logs" / "dfcl.log"


def configure_environment(ws: Workspace) -> None:
    """Embedded defaults; must run before prefect or mlflow are imported. Variables the user
    already set win."""
    os.environ.setdefault("PREFECT_HOME", str(ws.root / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary API of a second process (e.g. `dfcl approve` beside a paused run) can be
    # slow to start on a busy 2-core machine; 20 s is Prefect's default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    if not os.environ.get("MLFLOW_TRACKING_URI"):  # set but empty is unset too: MLflow would pick its own default
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws.root / 'mlflow.db'}"
    # `dfcl serve` looks for runs to start (a triggered one, the next in line) every 2 s instead
    # of Prefect's 10 s: one small request to the API each time.
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "2")
    # MLflow looks for git to tag runs with a commit; a workspace need not be one.
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def put_this_python_on_path() -> None:
    """DVC stages run `python`/`dfcl` in a subprocess: make them this environment's."""
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def ensure_dvc_repo(ws: Workspace, remote_name: str, remote_url: str) -> None:
    """Make the workspace a git + DVC repository with a default remote, once (idempotent)."""
    # Whether DVC's files are committed is params' dvc.git_commit, not the user's job: no
    # "To track the changes with git, run: ..." hints.
    for hint in ("dvc.repo.scm_context", "dvc.repo.init"):
        logging.getLogger(hint).setLevel(logging.WARNING)
    if not (ws.root / ".git").exists():
        subprocess.run(["git", "init", "-q", str(ws.root)], check=True)
    from dvc.repo import Repo

    if not (ws.root / ".dvc").exists():
        Repo.init(str(ws.root))
        # the face-detection cache is rebuilt from the data, never versioned
        with open(ws.root / ".gitignore", "a") as f:
            f.write("/data/cache/\n")
    repo = Repo(str(ws.root))
    with repo.config.edit() as conf:
        remotes = conf.setdefault("remote", {})
        if remote_name not in remotes:
            # DVC reads a relative path here as relative to the current folder and stores it
            # relative to .dvc/, so the workspace stays movable.
            url = remote_url if "://" in remote_url or os.path.isabs(remote_url) else os.path.relpath(ws.root / remote_url)
            remotes[remote_name] = {"url": url}
        conf.setdefault("core", {}).setdefault("remote", remote_name)
    repo.close()


def ensure_workspace(ws: Workspace, dvc: DvcConfig, files=("params.yaml",)) -> None:
    """A new workspace gets git, DVC and copies of the packaged `files` (params.yaml...) it lacks."""
    from dfcl.config import PACKAGED

    for name in files:
        target = ws.root / name
        if not target.exists():
            target.write_text((PACKAGED / name).read_text())
    ensure_dvc_repo(ws, dvc.remote_name, dvc.remote_url)


def use_mlflow_experiment(ws: Workspace, name: str) -> str:
    """Select (create if needed) an MLflow experiment whose artifacts go to the workspace's
    mlruns/ folder when tracking locally; a tracking server keeps its own artifact root."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        local = mlflow.get_tracking_uri().startswith("sqlite:")
        mlflow.create_experiment(name, artifact_location=ws.mlruns.as_uri() + f"/{name}" if local else None)
    experiment = mlflow.set_experiment(name)
    if "mlflow.experimentKind" not in experiment.tags:
        # The UI then opens it as a model-training experiment, not in its GenAI view.
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, "mlflow.experimentKind",
                                                 "custom_model_development")
    return experiment.experiment_id
