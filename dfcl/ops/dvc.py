"""DVC as the pipeline uses it: a folder versioned by `dvc add` (its version is the hash DVC
records), the face-extraction stage `extract_faces_<dataset>` with the params it reads, both
pushed to the remote, a retraining's figures as DVC metrics and plots, and DVC's metadata files
committed to git."""
from __future__ import annotations

import contextlib
import json
import math
import re
import shlex
import subprocess
from pathlib import Path

import yaml

from dfcl.config import ConfigError, DvcConfig, Params, load_params
from dfcl.files import write_atomic
from dfcl.measure.metrics import MATRICES, summary_values
from dfcl.measure.plots import matrix_frame
from dfcl.workspace import Workspace, put_this_python_on_path

# The latest retraining's figures, in the workspace, where `dvc metrics` and `dvc plots` find them.
METRICS_FILE = "metrics/retrain.json"
PLOTS_DIR = "plots"

# The params.yaml entries face extraction reads: changing one makes `dvc repro` rebuild the crops.
STAGE_PARAMS = ["data.image_size", "data.real_names", "data.compression", "data.max_per_class",
                "data.test_fraction", "data.val_fraction", "data.seed", "faces", "sbi.method", "api.max_video_pixels"]


def remote_name(repo, dvc: DvcConfig) -> str:
    """The remote pushes go to, as `dvc push` picks it: the workspace's default DVC remote (what
    `dvc remote default` says; `dvc remote add -d` sets it, and a new workspace's is
    dvc.remote_name), else dvc.remote_name. `repo`: a dvc.repo.Repo of the workspace."""
    return repo.config["core"].get("remote") or dvc.remote_name


def stage_name(dataset: str) -> str:
    return "extract_faces_" + re.sub(r"[^A-Za-z0-9_-]", "_", dataset)


def stage_param(params: Params, key: str):
    """The value of a dotted key ("data.image_size") in params, as plain data (a section: a dict)."""
    node = params.model_dump()
    for part in key.split("."):
        node = node[part]
    return node


def overrides_for_stage(params: Params, ws: Workspace) -> list[str]:
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


def reproduce_extraction(ws: Workspace, name: str, params: Params) -> tuple[bool, str]:
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
    # DVC's API resolves a stage's dvc.yaml and working folder against the current folder, not
    # the repo's: a run started elsewhere (DFCL_WORKSPACE set) would put the stage outside it.
    with contextlib.chdir(ws.root), Repo(str(ws.root)) as repo:
        repo.stage.add(name=stage, cmd=cmd, deps=[raw], params=STAGE_PARAMS, outs_persist=[out],
                       metrics_no_cache=[stats], force=True)
        ran = repo.reproduce(stage)
        if params.dvc.push:
            repo.push(targets=[out], remote=remote_name(repo, params.dvc))
    lock = yaml.safe_load((ws.root / "dvc.lock").read_text())["stages"][stage]
    return bool(ran), next(o["md5"] for o in lock["outs"] if o["path"] == out)


def add_folder(ws: Workspace, folder: Path, params: Params) -> tuple[Path, int | None, str]:
    """`dvc add` a folder of the workspace and push it when `dvc.push`: (its .dvc file, how many
    files were pushed, None when not pushed, the remote pushed to). Unchanged content pushes nothing."""
    from dvc.repo import Repo

    rel = Path(folder).resolve().relative_to(ws.root)
    pushed = None
    with contextlib.chdir(ws.root), Repo(str(ws.root)) as repo:
        repo.add(str(rel))
        remote = remote_name(repo, params.dvc)
        if params.dvc.push:
            pushed = repo.push(targets=[str(rel)], remote=remote)
    return ws.root / f"{rel}.dvc", pushed, remote


def dvc_hash(dvc_file: Path) -> str:
    """The content hash DVC recorded for a tracked folder: its version."""
    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def commit_dvc_files(root: Path, paths: list[str], message: str) -> None:
    """git-commit DVC's metadata files (.dvc, dvc.yaml, dvc.lock, .gitignore) when they changed."""
    subprocess.run(["git", "add", *paths], cwd=root, check=True)
    staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *paths], cwd=root)
    if staged.returncode:  # something new to commit
        subprocess.run(["git", "commit", "-q", "-m", message, "--", *paths], cwd=root, check=True)


def write_training_metrics(ws: Workspace, history, results: dict) -> list[str]:
    """The latest retraining's figures where DVC compares them between versions of the workspace
    (`dvc metrics diff`, `dvc plots diff REV`): METRICS_FILE holds each summary of SUMMARIES
    and each per-method value of MATRICES; plots/<matrix>.csv each matrix of the learner's
    `history` with a measured cell, a row per evaluation (`experience`: after which one) and a
    column per method, drawn as a line per method over the experiences. Both are declared in
    dvc.yaml's top-level `metrics` and `plots` (other entries there are kept). Returns the files
    written, relative to the workspace, dvc.yaml included."""
    from dvc.utils.serialize import modify_yaml

    figures = summary_values(results) | {m.name: results[m.name] for m in MATRICES if m.name in results}
    written = {METRICS_FILE: json.dumps(figures, indent=1) + "\n"}
    methods = [key for key, _ in history.columns]
    plots = []
    for m in MATRICES:
        matrix = getattr(history, m.history)
        if all(math.isnan(v) for row in matrix for v in row):  # NaN everywhere (video AUC of single frames)
            continue
        frame = matrix_frame(matrix, methods)
        frame.insert(0, "experience", range(len(frame)))
        path = f"{PLOTS_DIR}/{m.history}.csv"
        written[path] = frame.to_csv(index_label="after")
        plots.append({path: {"x": "experience", "y": list(methods), "title": f"{m.label} of each method after each experience",
                             "x_label": "experience", "y_label": m.label}})
    for path, text in written.items():
        (ws.root / path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(ws.root / path, text)
    ours = {METRICS_FILE} | {f"{PLOTS_DIR}/{m.history}.csv" for m in MATRICES}
    with modify_yaml(ws.root / "dvc.yaml") as dvc_yaml:
        dvc_yaml["metrics"] = [e for e in dvc_yaml.get("metrics", []) if e not in ours] + [METRICS_FILE]
        kept = [e for e in dvc_yaml.get("plots", []) if not (set([e] if isinstance(e, str) else e) & ours)]
        dvc_yaml["plots"] = kept + plots
    return [*written, "dvc.yaml"]
