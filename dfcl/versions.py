"""Data by its DVC version: a machine that has only the DVC remote's URL and a dataset's version
(the hash the training run logs) checks that version out, so a Dask worker never needs a path
that only the launching machine has."""
from __future__ import annotations

import dataclasses
import fcntl
import os
from pathlib import Path

import yaml

from dfcl.experience import ExperienceSpec

ARRAYS = [f.name for f in dataclasses.fields(ExperienceSpec) if f.name.endswith(("_x", "_y"))]


def remote_url(params: dict, root: Path) -> str:
    """The workspace's DVC remote as a URL any machine can use (a relative folder made absolute)."""
    url = params["dvc"]["remote_url"]
    return url if "://" in url or os.path.isabs(url) else str((root / url).resolve())


def check_out(version: str, url: str, cache: Path) -> Path:
    """The dataset folder of DVC `version`, pulled from the remote at `url` into `cache` once (a
    bare DVC repository: no git, the version written as a .dvc file) and reused after."""
    from dvc.repo import Repo

    cache.mkdir(parents=True, exist_ok=True)
    name = version.removesuffix(".dir")
    folder, done = cache / name, cache / f"{name}.done"
    with open(cache / ".lock", "w") as lock:  # workers of one machine share the cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            (cache / ".dvc").mkdir(exist_ok=True)
            (cache / ".dvc" / "config").write_text(
                f"[core]\n    remote = origin\n    no_scm = True\n['remote \"origin\"']\n    url = {url}\n")
            dvc_file = cache / f"{name}.dvc"
            dvc_file.write_text(yaml.safe_dump({"outs": [{"md5": version, "hash": "md5", "path": name}]}))
            with Repo(str(cache)) as repo:
                repo.pull(targets=[str(dvc_file)])
            done.touch()
    return folder


def checked_out(specs: list[ExperienceSpec], url: str, cache: Path) -> list[ExperienceSpec]:
    """`specs` with their face arrays read from their DVC versions checked out under `cache`
    (paths relative to `cache`, which becomes the learner's root)."""
    out = []
    for spec in specs:
        folder = check_out(spec.version, url, cache)
        moved = {}
        for name in ARRAYS:
            path = Path(getattr(spec, name))
            if str(path) not in ("", "."):
                # data/processed/<dataset>/<method>/<file>: the version is the <dataset> folder
                moved[name] = str((folder / path.parent.name / path.name).relative_to(cache))
        out.append(dataclasses.replace(spec, **moved))
    return out
