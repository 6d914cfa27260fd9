from pathlib import Path

from prefect import get_run_logger, task

from dfcl.config import Params
from dfcl.ops import dvc
from dfcl.workspace import Workspace


@task(retries=2, retry_delay_seconds=5)
def version_with_dvc(ws: Workspace, folder: Path, params: Params, message: str) -> str:
    """`dvc add` a folder, push it to the remote, optionally git-commit its .dvc file; returns
    the DVC hash. Unchanged content gives the same hash and pushes nothing."""
    logger = get_run_logger()
    dvc_file, pushed, remote = dvc.add_folder(ws, folder, params)
    rel = dvc_file.relative_to(ws.root).with_suffix("")
    if pushed is not None:
        logger.info("dvc push %s: %d file(s) sent to remote %r", rel, pushed, remote)
    version = dvc.dvc_hash(dvc_file)
    if params.dvc.git_commit:
        dvc.commit_dvc_files(ws.root, [str(dvc_file.relative_to(ws.root)), str(rel.parent / ".gitignore")],
                             f"{message} ({version[:12]})")
    logger.info("%s is DVC version %s", rel, version)
    return version
