"""Data by its DVC version: a machine that has only the DVC remote's settings and a dataset's
version (the hash the training run logs) checks that version out, so a Dask worker never needs a
path that only the launching machine has."""
from __future__ import annotations

import dataclasses
import fcntl
import re
from pathlib import Path

import yaml

from dfcl.config import ConfigError, DvcConfig
from dfcl.data.arrays import ExperienceSpec

ARRAYS = [f.name for f in dataclasses.fields(ExperienceSpec) if f.name.endswith(("_x", "_y"))]

# Remote options that are credentials. They never travel with a training (its parameters are
# stored by Prefect and shown in its UI): a worker takes its own from its environment
# (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a credentials file), as DVC does; the
# workers of a LocalCluster inherit the launching process's.
SECRET_OPTIONS = re.compile(r"secret|password|passphrase|token|access_key|account_key|connection_string|sas_")


def remote_config(root: Path, dvc: DvcConfig) -> dict:
    """The workspace's DVC remote, the one pushes go to (dfcl.ops.dvc.remote_name), as any machine
    can use it: its URL (a relative folder made absolute) and its options (endpointurl, region,
    profile, ...), credentials left out (SECRET_OPTIONS)."""
    from dvc.repo import Repo

    from dfcl.ops.dvc import remote_name

    with Repo(str(root)) as repo:
        name = remote_name(repo, dvc)
        remotes = repo.config["remote"]
        if name not in remotes:
            raise ConfigError(f"the workspace has no DVC remote {name!r}: add it with `dvc remote add -d {name} URL`")
        return {k: v for k, v in remotes[name].items() if not SECRET_OPTIONS.search(k)}


def check_out(version: str, remote: dict, cache: Path) -> Path:
    """The dataset folder of DVC `version`, pulled from the DVC remote `remote` (remote_config's:
    url and options) into `cache` once (a bare DVC repository: no git, the version written as a
    .dvc file) and reused after. The remote's settings are given to DVC here, never written down."""
    from dvc.repo import Repo

    cache.mkdir(parents=True, exist_ok=True)
    name = version.removesuffix(".dir")
    folder, done = cache / name, cache / f"{name}.done"
    with open(cache / ".lock", "w") as lock:  # workers of one machine share the cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            (cache / ".dvc").mkdir(exist_ok=True)
            (cache / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")
            dvc_file = cache / f"{name}.dvc"
            dvc_file.write_text(yaml.safe_dump({"outs": [{"md5": version, "hash": "md5", "path": name}]}))
            with Repo(str(cache), config={"core": {"remote": "origin"}, "remote": {"origin": remote}}) as repo:
                repo.pull(targets=[str(dvc_file)])
            done.touch()
    return folder


def checked_out(specs: list[ExperienceSpec], remote: dict, cache: Path) -> list[ExperienceSpec]:
    """`specs` with their face arrays read from their DVC versions checked out under `cache`
    (paths relative to `cache`, which becomes the learner's root)."""
    out = []
    for spec in specs:
        folder = check_out(spec.version, remote, cache)
        moved = {}
        for name in ARRAYS:
            path = Path(getattr(spec, name))
            if str(path) not in ("", "."):
                # data/processed/<dataset>/<method>/<file>: the version is the <dataset> folder
                moved[name] = str((folder / path.parent.name / path.name).relative_to(cache))
        out.append(dataclasses.replace(spec, **moved))
    return out
