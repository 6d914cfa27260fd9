"""benchmarks/gpu_sbi.sh, the prepared script for the minutes a GPU is lent, in its CPU smoke mode:
the same three steps (pack here, train there, score here) at a toy size, so that it still runs on
the day a GPU is there."""
import json
import os
import subprocess
import sys

import numpy as np

from tests.conftest import REPO, shared_data

SETS = {"Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "dfdc", "flux", "stylegan"}


def test_the_gpu_self_blended_script_packs_trains_and_scores_in_smoke_mode(tmp_path):
    data = shared_data("ffpp-crops").parent
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "DATA": str(data), "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_sbi.sh"), "--smoke"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # What travels: plain arrays (no pickle) of JPEG bytes that decode to the faces' size.
    with np.load(out / "pack" / "ffpp_train.npz", allow_pickle=False) as packed:
        assert packed["landmarks"].shape == (len(packed["y"]), 68, 2) and (packed["y"] == 0).all()
        assert packed["offsets"][-1] == len(packed["jpeg"])
    report = json.loads((out / "gpu_sbi_smoke.json").read_text())
    assert set(report["runs"]) == {"ffpp", "ffpp_lfw"} and not report["failed"]
    for name, run in report["runs"].items():
        assert run["curve"] and SETS | {"select_auc"} <= set(run["curve"][-1]), run["curve"]
        assert run["blends"] > 0 and run["kept_epoch"] >= 1
        for kind in ("kept", "last"):
            assert (out / f"{name}.{kind}.fp16.safetensors").stat().st_size > 1000
    # Scored back here, on the original arrays, by the product's scoring.
    scored = json.loads((out / "scored_here.json").read_text())
    assert set(scored) == {f"{n}.{k}.fp16.safetensors" for n in ("ffpp", "ffpp_lfw") for k in ("kept", "last")}
    assert all(set(row) == SETS for row in scored.values())
    assert "Scored here, on the original arrays" in (out / "gpu_sbi_smoke.md").read_text()
    assert (out / "gpu_sbi_smoke.png").stat().st_size > 1000
