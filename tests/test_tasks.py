"""Unit tests of the ingest tasks: copy, DVC versioning, the extraction stage's params."""
import shutil
import subprocess

from dfcl.data.layouts import recognise
from dfcl.ops.dvc import overrides_for_stage
from dfcl.workspace import ensure_dvc_repo, ensure_workspace
from tasks.copy_raw_dataset import copy_raw_dataset
from tasks.version_with_dvc import version_with_dvc
from tests.conftest import small_params


def test_copy_and_version_are_idempotent_and_lose_nothing(workspace, demo_data):
    params = small_params("dvc.git_commit=true")
    ensure_dvc_repo(workspace, "local", "data/remote")
    source = workspace.root / "incoming" / "blend"
    shutil.copytree(demo_data / "BlendSwap", source)
    (source / "train" / "real" / "zz-corrupt.jpg").write_bytes(b"\xff\xd8 broken")
    files = recognise(source, ["real"], "blend").all_paths()

    raw = copy_raw_dataset(workspace, str(source), "blend", files)
    assert sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*.jpg")) == files
    v1 = version_with_dvc(workspace, raw, params, "raw blend")
    assert copy_raw_dataset(workspace, str(source), "blend", files) == raw
    assert version_with_dvc(workspace, raw, params, "raw blend") == v1, "same content, same version"
    log = subprocess.run(["git", "log", "--format=%s"], cwd=workspace.root, capture_output=True, text=True).stdout
    assert log.count("raw blend") == 1, "an unchanged version must not be committed again"
    assert (workspace.root / "data" / "remote").is_dir(), "nothing pushed to the local remote"

    # a file changed in place (same name, same size) is copied again: a new version
    changed = source / "train" / "real" / "0000.jpg"
    data = bytearray(changed.read_bytes())
    data[-3] ^= 0xFF
    changed.write_bytes(bytes(data))
    copy_raw_dataset(workspace, str(source), "blend", files)
    assert (raw / "train" / "real" / "0000.jpg").read_bytes() == bytes(data)
    v2 = version_with_dvc(workspace, raw, params, "raw blend")
    assert v2 != v1

    # a new file is a new version too; nothing stored before is lost
    shutil.copy(source / "train" / "real" / "0001.jpg", source / "train" / "real" / "0001-copy.jpg")
    copy_raw_dataset(workspace, str(source), "blend", files + ["train/real/0001-copy.jpg"])
    assert version_with_dvc(workspace, raw, params, "raw blend") not in (v1, v2)
    assert (raw / "train" / "real" / "zz-corrupt.jpg").exists()


def test_stage_command_carries_the_params_that_differ_from_params_yaml(workspace):
    params = small_params("faces.frames_per_video=3", "data.real_names=[real, pristine]")
    ensure_workspace(workspace, params.dvc)
    got = overrides_for_stage(params, workspace)
    assert "faces.frames_per_video=3" in got and "data.image_size=32" in got
    assert 'data.real_names=["real", "pristine"]' in got
    assert not any(o.startswith(("train.", "model.", "faces.margin")) for o in got), "only what the stage reads"


def test_copy_refuses_a_file_that_became_a_link_out_of_the_dataset(workspace, tmp_path):
    import pytest

    from dfcl.data.layouts import LayoutError

    source = tmp_path / "ds"
    (source / "fake").mkdir(parents=True)
    (source / "fake" / "x.avi").write_bytes(b"x")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    files = ["fake/x.avi"]
    (source / "fake" / "x.avi").unlink()  # swapped for a link after it was listed
    (source / "fake" / "x.avi").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(LayoutError, match="symlink out"):
        copy_raw_dataset(workspace, str(source), "ds", files)
    assert not (workspace.raw / "ds" / "fake" / "x.avi").exists()
    with pytest.raises(LayoutError, match="parent folder"):
        copy_raw_dataset(workspace, str(source), "ds", ["../secret.txt"])


def test_the_extraction_stage_is_made_in_the_workspace_whatever_the_current_folder(workspace, demo_data, tmp_path_factory,
                                                                                  monkeypatch):
    """`DFCL_WORKSPACE=... dfcl retrain` from another folder: DVC resolves a stage's paths against
    the current folder, so the stage must still land in the workspace's dvc.yaml."""
    from dfcl.ops.dvc import reproduce_extraction

    params = small_params()
    ensure_workspace(workspace, params.dvc)
    shutil.copytree(demo_data / "BlendSwap", workspace.root / "data" / "raw" / "blend")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    ran, version = reproduce_extraction(workspace, "blend", params)
    assert ran and version and "extract_faces_blend" in (workspace.root / "dvc.yaml").read_text()
    assert not (elsewhere / "dvc.yaml").exists() and (workspace.root / "data" / "processed" / "blend").is_dir()
