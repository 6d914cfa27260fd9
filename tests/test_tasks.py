"""Unit tests of the ingest tasks: copy, DVC versioning, decoding with a skip report."""
import shutil
import subprocess

import numpy as np
import pandas as pd

from dfcl.data import discover
from dfcl.workspace import ensure_dvc_repo
from tasks.copy_raw_dataset import copy_raw_dataset
from tasks.decode_faces import decode_faces
from tasks.version_with_dvc import version_with_dvc
from tests.conftest import small_params


def test_copy_version_and_decode_are_idempotent_and_report_bad_files(workspace, demo_data):
    params = small_params("dvc.git_commit=true")
    ensure_dvc_repo(workspace, "local", "data/remote")
    source = workspace.root / "incoming" / "blend"
    shutil.copytree(demo_data / "BlendSwap", source)
    (source / "train" / "real" / "zz-corrupt.jpg").write_bytes(b"\xff\xd8 broken")
    found = discover(source, ["real"])
    files = found.manifest.path.tolist()

    raw = copy_raw_dataset(workspace, str(source), "blend", files)
    assert sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*.jpg")) == sorted(files)
    v1 = version_with_dvc(workspace, raw, params, "raw blend")
    assert copy_raw_dataset(workspace, str(source), "blend", files) == raw
    assert version_with_dvc(workspace, raw, params, "raw blend") == v1, "same content, same version"
    log = subprocess.run(["git", "log", "--format=%s"], cwd=workspace.root, capture_output=True, text=True).stdout
    assert log.count("raw blend") == 1, "an unchanged version must not be committed again"
    assert (workspace.root / "data" / "remote").is_dir(), "nothing pushed to the local remote"

    processed = decode_faces(workspace, raw, "blend", found.manifest, 32, v1)
    manifest = pd.read_csv(processed / "manifest.csv", keep_default_na=False)
    bad = manifest[manifest.skipped != ""]
    assert bad.path.tolist() == ["train/real/zz-corrupt.jpg"]
    assert "unreadable" in bad.skipped.iloc[0]
    x = np.load(processed / "32px" / "BlendSwap-train-x.npy")
    y = np.load(processed / "32px" / "BlendSwap-train-y.npy")
    assert x.shape == (48, 32, 32, 3) and sorted(set(y)) == [0, 1]  # 24 real + 24 fake kept
    before = (processed / "32px" / "BlendSwap-train-x.npy").stat().st_mtime_ns
    decode_faces(workspace, raw, "blend", found.manifest, 32, v1)
    assert (processed / "32px" / "BlendSwap-train-x.npy").stat().st_mtime_ns == before, "re-decoded unchanged data"
    decode_faces(workspace, raw, "blend", found.manifest, 32, "another-raw-version")
    assert (processed / "32px" / "BlendSwap-train-x.npy").stat().st_mtime_ns != before, "stale cache kept"

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
