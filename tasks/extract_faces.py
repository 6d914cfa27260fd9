from prefect import get_run_logger, task

from dfcl.config import Params
from dfcl.ops import dvc
from dfcl.workspace import Workspace


@task(retries=1, retry_delay_seconds=5)
def extract_faces(ws: Workspace, name: str, params: Params) -> str:
    """Face extraction as the DVC stage `extract_faces_<name>` (data/raw/<name> ->
    data/processed/<name>): `dvc repro` runs it only when the raw data or its params changed.
    Pushes the crops to the remote and returns their DVC hash, the dataset's version."""
    ran, version = dvc.reproduce_extraction(ws, name, params)
    if params.dvc.git_commit:
        dvc.commit_dvc_files(ws.root, ["dvc.yaml", "dvc.lock"], f"dfcl: faces of {name} ({version[:12]})")
    get_run_logger().info("data/processed/%s: %s; DVC version %s", name,
                          "extracted" if ran else "up to date (stage unchanged)", version)
    return version
