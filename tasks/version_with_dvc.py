import subprocess
from pathlib import Path

from prefect import get_run_logger, task

from dfcl.workspace import Workspace


def dvc_hash(dvc_file: Path) -> str:
    """The content hash DVC recorded for a tracked folder: its version."""
    import yaml

    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def commit_dvc_files(ws: Workspace, paths: list[str], message: str) -> None:
    """git-commit DVC's metadata files (.dvc, dvc.yaml, dvc.lock, .gitignore) when they changed."""
    subprocess.run(["git", "add", *paths], cwd=ws.root, check=True)
    staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *paths], cwd=ws.root)
    if staged.returncode:  # something new to commit
        subprocess.run(["git", "commit", "-q", "-m", message, "--", *paths], cwd=ws.root, check=True)


@task(retries=2, retry_delay_seconds=5)
def version_with_dvc(ws: Workspace, folder: Path, params: dict, message: str) -> str:
    """`dvc add` a folder, push it to the remote, optionally git-commit its .dvc file; returns
    the DVC hash. Unchanged content gives the same hash and pushes nothing."""
    from dvc.repo import Repo

    logger = get_run_logger()
    rel = Path(folder).resolve().relative_to(ws.root)
    with Repo(str(ws.root)) as repo:
        repo.add(str(rel))
        if params["dvc"]["push"]:
            pushed = repo.push(targets=[str(rel)], remote=params["dvc"]["remote_name"])
            logger.info("dvc push %s: %d file(s) sent to remote %r", rel, pushed, params["dvc"]["remote_name"])
    dvc_file = ws.root / f"{rel}.dvc"
    version = dvc_hash(dvc_file)
    if params["dvc"]["git_commit"]:
        commit_dvc_files(ws, [str(dvc_file.relative_to(ws.root)), str(rel.parent / ".gitignore")],
                         f"{message} ({version[:12]})")
    logger.info("%s is DVC version %s", rel, version)
    return version
