"""Shared by the benchmarks: what a benchmark ran on, and faces extracted once per size."""
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "cpu_cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@contextmanager
def scratch_workspace(prefix: str, overrides: list[str], keep: Path | None = None):
    """A temporary workspace made the current one (cwd, DFCL_WORKSPACE, its MLflow and Prefect
    settings): (its folder, params.yaml with `overrides`). Removed afterwards, unless `keep` names
    a new folder to make it in (its registered model then stays to be scored)."""
    repo = Path(__file__).resolve().parents[1]
    if keep is not None:
        keep.mkdir(parents=True)  # an existing workspace would not be a first retraining
    with (nullcontext(str(keep)) if keep is not None else tempfile.TemporaryDirectory(prefix=prefix)) as tmp:
        ws = Path(tmp)
        os.chdir(ws)
        os.environ["DFCL_WORKSPACE"] = str(ws)
        from dfcl.config import load_params
        from dfcl.workspace import Workspace, configure_environment

        configure_environment(Workspace(ws))
        yield ws, load_params(repo / "params.yaml", overrides)


def extract_once(folder: Path, work: Path, params: dict, name: str | None = None) -> dict[str, dict]:
    """Faces of one dataset folder, extracted straight from the folder (dfcl.data.extraction, no DVC
    or Prefect) once per setting of what extraction reads (the DVC stage's params):
    {method: {train_x: path, ...}}. `name`: the dataset's name (default: the folder's)."""
    import hashlib

    from dfcl.data.arrays import face_arrays
    from dfcl.data.extraction import extract_dataset
    from dfcl.data.layouts import dataset_name
    from dfcl.ops.dvc import STAGE_PARAMS, stage_param

    own = dataset_name(folder)
    name = name or own
    settings = hashlib.sha1(json.dumps([stage_param(params, k) for k in STAGE_PARAMS]).encode()).hexdigest()[:10]
    # A folder extracted under another name (a self-blended experience of its reals) gets a place of its own.
    out = work / f"faces-{params.data.image_size}-{settings}" / (name if name == own else f"{own}-as-{name}")
    if not (out / "experiences.json").exists():
        extract_dataset(folder, out, params, name, cache_dir=work / "cache")
    info = json.loads((out / "experiences.json").read_text())
    return {m: {k: str(v) for k, v in face_arrays(out / m).items()}
            for m in info["methods"] if info["experiences"][m]["learnable"]}


def gather_reals(folders: list[Path], out: Path, params: dict) -> Path:
    """The real faces of several datasets in one folder, as the flow's raw copy of a self-blended
    experience holds them (dfcl.data.layouts.real_faces_of: each dataset under its name, with the split
    list that keeps each file's split; `sbi.max_per_set` files of each after the first): made once."""
    import shutil

    from dfcl.data.layouts import REAL_SPLITS, identity_distance, recognise, split_rule

    if (out / REAL_SPLITS).is_file():
        return out
    dp = params.data
    found = recognise(folders, dp.real_names, params.sbi.method, real_only=True, splits=split_rule(dp),
                      max_per_set=params.sbi.max_per_set, identity_distance=identity_distance(dp),
                      cache_dir=out.parent / "identities")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in found.files.path:
        first, _, rest = rel.partition("/")
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(found.roots[first]) / rest, tmp / rel)
    for rel, text in found.written.items():
        (tmp / rel).write_text(text)
    tmp.rename(out)
    return out


def spec(key: str, paths: dict, version: str):
    """An experience of extracted faces ("<dataset>/<method>"), not DVC-versioned: `version` says
    which benchmark made it."""
    from dfcl.data.arrays import ExperienceSpec

    return ExperienceSpec(key=key, dataset=key.split("/")[0], method=key.split("/")[-1], version=version, **paths)


def auc_on(model, device, paths: dict, splits=("test",)) -> float:
    """ROC AUC of the model on the faces of `splits` of one extracted method."""
    import numpy as np
    import torch
    from torchmetrics.functional.classification import binary_auroc

    from dfcl.measure.scoring import fake_probabilities

    x = np.concatenate([np.load(paths[f"{s}_x"], mmap_mode="r") for s in splits])
    y = torch.from_numpy(np.concatenate([np.load(paths[f"{s}_y"]) for s in splits]))
    return float(binary_auroc(fake_probabilities(model, x, device), y))


def resumed_report(stem: Path, tag: str, entries: str) -> dict:
    """The report earlier runs of this tag wrote to `stem`.json (their `entries`, rows or models,
    are kept: a run adds what it lacks), with this machine, this command and today added."""
    path = stem.with_suffix(".json")
    report = json.loads(path.read_text()) if path.exists() else {"tag": tag, entries: {}, "commands": [], "dates": []}
    report["machine"] = machine()
    command = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    report["commands"] = list(dict.fromkeys(report["commands"] + [command]))
    report["dates"] = list(dict.fromkeys(report["dates"] + [time.strftime("%Y-%m-%d")]))
    return report


def learner_arguments(ap) -> None:
    """The arguments of a benchmark that scores a learner's model (trust.py, evidence_regions.py):
    the learner folder, the folder its experiences' paths are relative to, the params it was
    trained with, and folders of faces of sets it never trained on."""
    ap.add_argument("--learner", required=True, type=Path)
    ap.add_argument("--root", type=Path, default=Path("/"), help="the folder its experiences' paths are relative to")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="key=value the learner was trained with")
    ap.add_argument("--unseen", action="append", default=[], help="NAME=FACES[:split,...] of a set never trained on")


def save_results(out: Path, stem: str, report: dict, text: str) -> None:
    """<stem>.json and <stem>.md in out (made if missing), and the markdown on screen."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{stem}.md").write_text(text)
    print(text)


def checked_rows(parser, rows: str, known) -> list[str]:
    """The comma-separated `--rows`, each one of `known` (else the parser's usage error)."""
    wanted = rows.split(",")
    unknown = [r for r in wanted if r not in known]
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; known: {', '.join(known)}")
    return wanted


def made_folders(*folders: str) -> list[Path]:
    """Each folder, absolute and created."""
    paths = [Path(f).resolve() for f in folders]
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
    return paths
