"""benchmarks/gpu_sbi.sh, the prepared script for the minutes a GPU is lent, in its CPU smoke mode:
the same commands at a toy size, so that it still runs on the day a GPU is there."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO, shared_data


def test_the_gpu_self_blended_script_runs_end_to_end_in_smoke_mode(tmp_path):
    data = shared_data("ffpp-crops").parent
    env = {**os.environ, "OUT": str(tmp_path / "out"), "DATA": str(data), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_sbi.sh"), "--smoke"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "generalization_smoke.json").read_text())
    row = report["rows"]["sbi_first"]
    assert "error" not in row, row
    assert row["experiences"] == ["self-blended", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
    assert set(row["unseen_auc"]) == {"dfdc", "flux", "stylegan"} and row["sbi_alone"] is not None
    for name in ("sbi_first", "sbi_first-sbi-alone"):
        assert (tmp_path / "out" / f"{name}.fp16.safetensors").stat().st_size > 1000
