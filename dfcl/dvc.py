"""DVC as the pipeline uses it: a folder versioned by `dvc add` (its version is the hash DVC
records), the face-extraction stage `extract_faces_<dataset>` with the params it reads, both
pushed to the remote, and DVC's metadata files committed to git."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import yaml

from dfcl.config import ConfigError, load_params
from dfcl.workspace import Workspace, put_this_python_on_path

# The params.yaml entries face extraction reads: changing one makes `dvc repro` rebuild the crops.
STAGE_PARAMS = ["data.image_size", "data.real_names", "data.compression", "data.max_per_class",
                "data.test_fraction", "data.val_fraction", "data.seed", "faces", "sbi.method", "api.max_video_pixels"]


def stage_name(dataset: str) -> str:
    return "extract_faces_" + re.sub(r"[^A-Za-z0-9_-]", "_", dataset)


def stage_param(params: dict, key: str):
    """The value of a dotted key ("data.image_size") in params."""
    node = params
    for part in key.split("."):
        node = node[part]
    return node


def overrides_for_stage(params: dict, ws: Workspace) -> list[str]:
    """The `-S key=value` that turn the workspace's params.yaml into the params this run uses,
    for the keys the stage reads. They go into the stage's command, so `dvc repro` later
    rebuilds exactly the same crops."""
    on_disk = load_params(ws.params_file)
    out = []
    for key in STAGE_PARAMS:
        try:
            stored = stage_param(on_disk, key)
        except KeyError:
            raise ConfigError(f"{ws.params_file} has no {key!r}: copy that entry from the packaged params.yaml") from None
        wanted = stage_param(params, key)
        if isinstance(wanted, dict):
            out += [f"{key}.{k}={json.dumps(v)}" for k, v in wanted.items() if stored.get(k) != v]
        elif wanted != stored:
            out.append(f"{key}={json.dumps(wanted)}")
    return out


def reproduce_extraction(ws: Workspace, name: str, params: dict) -> tuple[bool, str]:
    """Add (or update) the stage extract_faces_<name> (data/raw/<name> -> data/processed/<name>)
    and `dvc repro` it: it runs only when the raw data or its params changed. Pushes the crops
    when `dvc.push`. Returns (whether it ran, the crops' DVC hash: the dataset's version)."""
    from dvc.repo import Repo

    stage = stage_name(name)
    raw, out, stats = f"data/raw/{name}", f"data/processed/{name}", f"data/processed/{name}.stats.json"
    cmd = shlex.join(["dfcl", "extract-faces", raw, out, "--name", name, "--stats", stats,
                      *[f"-S{o}" for o in overrides_for_stage(params, ws)]])
    put_this_python_on_path()
    (ws.root / out).parent.mkdir(parents=True, exist_ok=True)  # DVC writes its .gitignore there
    with Repo(str(ws.root)) as repo:
        repo.stage.add(name=stage, cmd=cmd, deps=[raw], params=STAGE_PARAMS, outs_persist=[out],
                       metrics_no_cache=[stats], force=True)
        ran = repo.reproduce(stage)
        if params["dvc"]["push"]:
            repo.push(targets=[out], remote=params["dvc"]["remote_name"])
    lock = yaml.safe_load((ws.root / "dvc.lock").read_text())["stages"][stage]
    return bool(ran), next(o["md5"] for o in lock["outs"] if o["path"] == out)


def add_folder(ws: Workspace, folder: Path, params: dict) -> tuple[Path, int | None]:
    """`dvc add` a folder of the workspace and push it when `dvc.push`: (its .dvc file, how many
    files were pushed, None when not pushed). Unchanged content pushes nothing."""
    from dvc.repo import Repo

    rel = Path(folder).resolve().relative_to(ws.root)
    pushed = None
    with Repo(str(ws.root)) as repo:
        repo.add(str(rel))
        if params["dvc"]["push"]:
            pushed = repo.push(targets=[str(rel)], remote=params["dvc"]["remote_name"])
    return ws.root / f"{rel}.dvc", pushed


def dvc_hash(dvc_file: Path) -> str:
    """The content hash DVC recorded for a tracked folder: its version."""
    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def commit_dvc_files(root: Path, paths: list[str], message: str) -> None:
    """git-commit DVC's metadata files (.dvc, dvc.yaml, dvc.lock, .gitignore) when they changed."""
    subprocess.run(["git", "add", *paths], cwd=root, check=True)
    staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *paths], cwd=root)
    if staged.returncode:  # something new to commit
        subprocess.run(["git", "commit", "-q", "-m", message, "--", *paths], cwd=root, check=True)
