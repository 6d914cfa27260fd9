"""The wheel works: built from the source, installed non-editable into a fresh virtual
environment, `dfcl --version`, `dfcl demo` (the whole story, on its own temporary services) and
`dfcl detect` run there from a folder outside the repository, with the packaged defaults
(params.yaml, the workspace's dvc.yaml, the web page) read from the installed package, and a
workspace's own params.yaml winning over them.

Installing torch and the rest again would take most of CI's time, so the fresh environment sees
the project environment's third-party packages through a .pth line naming its site-packages. A
folder added by a .pth line is not itself scanned for .pth files, so the project's editable
install of dfcl (a finder started by its own .pth file) stays off: `import dfcl` there can only
find the wheel, which the test checks."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

# What the wheel is built from (pyproject's packages and their package data); copied out of the
# source tree so that the build's build/ and *.egg-info folders never land in it.
SOURCES = ["pyproject.toml", "params.yaml", "dvc.yaml", "dfcl", "flows", "tasks", "models"]


def run(cmd: list, cwd: Path, env: dict, timeout: float) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, text=True, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (--no-deps); its python."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            # symlinks=True: dfcl/defaults/params.yaml stays a link to the copied root params.yaml
            shutil.copytree(REPO / name, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(REPO / name, src / name)
    # As `make demo` leaves a checkout: its ingests added stages to the root dvc.yaml, which must
    # not reach a new workspace through the wheel.
    stages = yaml.safe_load((src / "dvc.yaml").read_text())
    stages["stages"]["extract_faces_FromTheCheckout"] = {"cmd": "true"}
    (src / "dvc.yaml").write_text(yaml.safe_dump(stages))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    dist = tmp / "dist"
    # No build isolation: setuptools from this environment, nothing downloaded.
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src],
        tmp, env, 300)
    wheel, = dist.glob("deepfake_cl-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env, 120)
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env, 60).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "project_site_packages.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], tmp, env, 300)
    return python


def fresh_env(python: Path, **extra) -> dict:
    """The environment of a process of the fresh venv: its bin first, nothing of the source tree."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("PREFECT_", "MLFLOW_", "DFCL_"))}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    return env | extra


def test_the_wheel_installs_with_its_package_data_and_the_installed_copy_runs(installed, tmp_path):
    site = Path(run([installed, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    tmp_path, fresh_env(installed), 60).strip())
    where = json.loads(run([installed, "-c", """if True:
        import json, dfcl, flows, tasks, models
        from dfcl.config import PACKAGED, PACKAGED_PARAMS
        from dfcl.serving.api import WEB
        from dfcl.ops.tracking import MODELS_DIR
        print(json.dumps({"dfcl": dfcl.__file__, "flows": flows.__file__, "tasks": tasks.__file__,
                          "models": models.__file__, "params": str(PACKAGED_PARAMS), "web": str(WEB),
                          "models_dir": str(MODELS_DIR), "params_text": PACKAGED_PARAMS.read_text(),
                          "dvc_text": (PACKAGED / "dvc.yaml").read_text(),
                          "page": (WEB / "index.html").is_file()}))"""], tmp_path, fresh_env(installed), 300))
    for key in ("dfcl", "flows", "tasks", "models", "params", "web", "models_dir"):
        assert Path(where[key]).resolve().is_relative_to(site.resolve()), f"{key} from {where[key]}, not the wheel"
    assert not Path(where["params"]).is_symlink(), "the wheel holds params.yaml itself, not a link"
    assert where["params_text"] == (REPO / "params.yaml").read_text()
    assert where["dvc_text"] == (REPO / "dfcl" / "defaults" / "dvc.yaml").read_text()
    assert where["page"]

    version = run([installed.parent / "dfcl", "--version"], tmp_path, fresh_env(installed), 120)
    from importlib.metadata import version as installed_version

    assert version.startswith(f"deepfake-cl {installed_version('deepfake-cl')} (")
    assert Path(version.split("(", 1)[1].rsplit(")", 1)[0]).resolve() == (site / "dfcl").resolve()


def test_dfcl_demo_runs_the_whole_story_from_the_wheel_outside_the_repository(installed, tmp_path):
    """`dfcl demo` as a new user runs it: from the installed wheel, in a folder of its own, on the
    embedded defaults (Prefect's temporary local API, MLflow on sqlite, a DVC folder remote)."""
    import cv2
    import mlflow
    from mlflow import MlflowClient

    from tests.test_pipeline import TINY

    ws = tmp_path / "ws"
    ws.mkdir()
    assert not ws.resolve().is_relative_to(REPO)
    # The workspace's own params.yaml wins over the packaged one (160 faces per class at 64 px).
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["demo"].update(train_per_class=24, test_per_class=12, size=32)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    env = fresh_env(installed)  # no PREFECT_API_URL: the run starts its own temporary API
    # One epoch of a width-8 CNN learns the drawn forgeries only roughly: the test is the story, not
    # the gate's margins, which test_gate covers.
    out = run([installed.parent / "dfcl", "demo", *TINY, "-S", "gate.max_point_drop=1", "-S", "gate.max_forgetting=1"],
              ws, env, 900)
    assert "outcome: promoted" in out, out[-4000:]
    demo = ws / "data/incoming/demo"
    assert demo.joinpath("README.txt").read_text().startswith("SYNTHETIC")
    reals = sorted((demo / "BlendSwap" / "train" / "real").glob("*.jpg"))
    assert len(reals) == 24 and cv2.imread(str(reals[0])).shape[:2] == (32, 32)
    # The template's demo stage and the extraction stage each method added.
    assert set(yaml.safe_load((ws / "dvc.yaml").read_text())["stages"]) == \
        {"demo_data", "extract_faces_BlendSwap", "extract_faces_GANUpsample", "extract_faces_MouthWarp"}
    # A registered detector ships the installed models/ package as its code.
    code = [p for p in (ws / "mlruns").rglob("pyfunc.py") if p.parent.name == "models" and p.parent.parent.name == "code"]
    assert code, "the registered model has no models/ code"
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    champion = MlflowClient().get_model_version_by_alias("deepfake-detector", "champion")
    mlflow.set_tracking_uri(None)
    assert str(champion.version) == "3"  # one version per arriving method
    assert champion.tags["methods"] == "BlendSwap,GANUpsample,MouthWarp"

    # The demo's data is marked synthetic, and so is every answer of a model that learned only it.
    assert (demo / "BlendSwap" / "SYNTHETIC.txt").is_file()
    face = next((demo / "BlendSwap" / "test" / "real").glob("*.jpg"))
    out = run([installed.parent / "dfcl", "detect", "--crop", face, "--json", tmp_path / "answer.json"], ws, env, 300)
    assert "warning: this model learned only synthetic demo faces" in out
    answer = json.loads((tmp_path / "answer.json").read_text())
    assert answer["model"]["synthetic_only"] is True
    assert all(entry["synthetic"] for entry in answer["model"]["learned"])
    assert "learned only synthetic demo faces" in answer["detections"][0]["reason"]


def test_the_workspace_template_is_its_own_file_with_the_root_demo_stage():
    template = REPO / "dfcl" / "defaults" / "dvc.yaml"
    assert not template.is_symlink(), "a link would hand the checkout's ingest stages to new workspaces"
    stages = yaml.safe_load(template.read_text())["stages"]
    assert list(stages) == ["demo_data"]
    assert stages["demo_data"] == yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["demo_data"]


def test_facenet_pytorch_is_a_dependency_and_its_overrides_are_the_locked_versions():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "facenet-pytorch==2.6.0" in project["project"]["dependencies"]
    locked = {line.split("==")[0].lower(): line.strip() for line in (REPO / "requirements.lock").read_text().splitlines()
              if "==" in line and not line.startswith((" ", "#"))}
    assert locked["facenet-pytorch"] == "facenet-pytorch==2.6.0"
    overrides = project["tool"]["uv"]["override-dependencies"]
    assert {o.split("==")[0].lower() for o in overrides} == {"torch", "torchvision", "numpy", "pillow"}
    for override in overrides:  # an override that drifted from the lock would install another version
        assert locked[override.split("==")[0].lower()].lower() == override.lower(), override
