"""The ingest flow on real FF++ videos: layout said, raw and faces versioned with DVC, the
extraction a DVC stage driven by params.yaml, idempotent; and `retrain` on the same folder
ingests and trains with no extra step."""
import subprocess

import mlflow
import yaml
from dvc.repo import Repo

from dfcl.ops.dvc import stage_name
from flows.ingest import ingest_dataset
from flows.retrain import retrain_detector
from tests.conftest import shared_data, small_params

METHODS = ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]


def test_ingest_ffpp_videos_then_retrain_on_the_folder(workspace):
    root = shared_data("ffpp-videos")
    params = small_params("faces.frames_per_video=3", "dvc.git_commit=true")
    first = ingest_dataset(str(root), params)

    assert first.layout == "FaceForensics++ official (c23)"
    assert sorted([s.method for s in first.specs] + list(first.left_out)) == METHODS
    assert all("no train" in why for why in first.left_out.values())  # one fake video per method here
    assert [s.key for s in first.specs] == [f"ffpp-videos/{m}" for m in METHODS if m not in first.left_out]
    assert first.stats["videos"] == 7 and first.stats["frames"] == 21 and first.stats["frames_per_s"] > 0

    # DVC: raw data added, faces produced by a pipeline stage that reads params.yaml
    stage = yaml.safe_load((workspace.root / "dvc.yaml").read_text())["stages"][stage_name("ffpp-videos")]
    assert "faces" in stage["params"] and stage["deps"] == ["data/raw/ffpp-videos"]
    assert "-Sfaces.frames_per_video=3" in stage["cmd"]
    with Repo(str(workspace.root)) as repo:
        assert repo.status() == {} and repo.status(cloud=True) == {}
    log = subprocess.run(["git", "log", "--format=%s"], cwd=workspace.root, capture_output=True, text=True).stdout
    assert "dfcl: raw dataset ffpp-videos" in log and "dfcl: faces of ffpp-videos" in log

    # the same input again: same versions, nothing re-extracted, nothing new committed
    again = ingest_dataset(str(root), params)
    assert (again.raw_version, again.version) == (first.raw_version, first.version)
    assert subprocess.run(["git", "log", "--format=%s"], cwd=workspace.root, capture_output=True, text=True).stdout == log

    # `dvc repro` rebuilds the crops when a param changes (without detecting faces again)
    config = yaml.safe_load((workspace.root / "params.yaml").read_text())
    config["faces"]["margin"] = 1.6
    (workspace.root / "params.yaml").write_text(yaml.safe_dump(config))
    with Repo(str(workspace.root)) as repo:
        assert stage_name("ffpp-videos") in str(repo.status())
        repo.reproduce(stage_name("ffpp-videos"))
        assert repo.status() == {}
    lock = yaml.safe_load((workspace.root / "dvc.lock").read_text())["stages"][stage_name("ffpp-videos")]
    rebuilt = next(o["md5"] for o in lock["outs"] if o["path"] == "data/processed/ffpp-videos")
    assert rebuilt != first.version
    stats = yaml.safe_load((workspace.root / "data/processed/ffpp-videos.stats.json").read_text())
    assert stats["videos_detected"] == 0 and stats["videos_from_cache"] == 7

    # retrain on the FF++ folder: ingests (nothing new to extract) and learns each method
    params = params.replaced(faces={"margin": 1.6})
    outcome = retrain_detector(str(root), params, auto_approve=True)
    # One fake video per method: the learned methods' test splits hold originals only, so the gate
    # cannot score them and refuses (never promotes what it could not check), even auto-approved.
    assert outcome["outcome"] == "rejected by gate"
    assert outcome["results"]["methods"] == [s.key for s in first.specs]
    run = mlflow.get_run(outcome["run_id"])
    assert "only real faces" in run.data.tags["gate"]
    assert run.data.params["data.ffpp-videos.version"] == rebuilt
    assert run.data.params["data.ffpp-videos.raw_version"] == first.raw_version
    assert run.data.params["data.ffpp-videos.layout"] == "FaceForensics++ official (c23)"
