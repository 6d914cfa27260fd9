import json
import re
import shlex

import yaml
from prefect import get_run_logger, task

from dfcl.config import ConfigError, load_params
from dfcl.workspace import Workspace, put_this_python_on_path
from tasks.version_with_dvc import commit_dvc_files

# The params.yaml entries face extraction reads: changing one makes `dvc repro` rebuild the crops.
STAGE_PARAMS = ["data.image_size", "data.real_names", "data.compression", "data.max_per_class",
                "data.test_fraction", "data.val_fraction", "data.seed", "faces", "sbi.method"]


def stage_name(dataset: str) -> str:
    return "extract_faces_" + re.sub(r"[^A-Za-z0-9_-]", "_", dataset)


def _lookup(params: dict, key: str):
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
            stored = _lookup(on_disk, key)
        except KeyError:
            raise ConfigError(f"{ws.params_file} has no {key!r}: copy that entry from the packaged params.yaml") from None
        wanted = _lookup(params, key)
        if isinstance(wanted, dict):
            out += [f"{key}.{k}={json.dumps(v)}" for k, v in wanted.items() if stored.get(k) != v]
        elif wanted != stored:
            out.append(f"{key}={json.dumps(wanted)}")
    return out


@task(retries=1, retry_delay_seconds=5)
def extract_faces(ws: Workspace, name: str, params: dict) -> str:
    """Face extraction as the DVC stage `extract_faces_<name>` (data/raw/<name> ->
    data/processed/<name>): `dvc repro` runs it only when the raw data or its params changed.
    Pushes the crops to the remote and returns their DVC hash, the dataset's version."""
    from dvc.repo import Repo

    logger = get_run_logger()
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
    version = next(o["md5"] for o in lock["outs"] if o["path"] == out)
    if params["dvc"]["git_commit"]:
        commit_dvc_files(ws, ["dvc.yaml", "dvc.lock"], f"dfcl: faces of {name} ({version[:12]})")
    logger.info("%s: %s; DVC version %s", out, "extracted" if ran else "up to date (stage unchanged)", version)
    return version
