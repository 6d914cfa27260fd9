"""What `train.heap_allocations` (dfcl/learning/memory.py) is worth: the pipeline's learner on the first
two FF++ methods (Replay, 1 epoch each, evaluations included), once with glibc's default
allocation and once with the setting, each in a fresh process.

    python benchmarks/allocator.py WORKSPACE

WORKSPACE: one where `dfcl ingest ../shared/data/ffpp-crops` ran with params.yaml's image size
(its data/processed/ffpp-crops/<method>/ arrays are read; nothing in it is changed).
Prints one line per setting: wall, user and system seconds, peak memory.
"""
from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(workspace: str, heap: str) -> str:
    sys.path.insert(0, str(REPO))
    from dfcl.config import apply_overrides, load_params
    from dfcl.data.arrays import ExperienceSpec, face_arrays
    from dfcl.learning.learner import Learner

    params = apply_overrides(load_params(), [f"train.heap_allocations={heap}", "train.epochs=1"])
    specs = [ExperienceSpec(key=f"ffpp-crops/{m}", dataset="ffpp-crops", method=m, version="-",
                            **{k: str(v) for k, v in face_arrays(Path(workspace) / "data/processed/ffpp-crops" / m).items()})
             for m in ("Deepfakes", "Face2Face")]
    with tempfile.TemporaryDirectory() as tmp:
        learner = Learner(Path(tmp) / "learner", params, workspace)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for spec in specs:
            learner.learn(spec)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return (f"heap_allocations={heap}: {t1 - t0:.0f} s wall, user {r1.ru_utime - r0.ru_utime:.0f} s, "
            f"system {r1.ru_stime - r0.ru_stime:.0f} s, peak memory {r1.ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    if len(sys.argv) == 3:  # the child: one setting
        print(run_once(sys.argv[1], sys.argv[2]))
    else:
        for heap in ("false", "true"):
            out = subprocess.run([sys.executable, __file__, sys.argv[1], heap], capture_output=True, text=True, check=True)
            print(out.stdout.strip().splitlines()[-1])
