"""deepfake-cl: keep one deepfake detector current with continual learning."""
import os
import sys

# FFmpeg (inside OpenCV) prints its own complaints about broken videos to stderr; every such
# file already gets a row with the reason in our skip reports and detection results.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

# Torch's threads own the cores. OpenBLAS (inside numpy and scipy) keeps its idle threads spinning
# after each call, and those spins took the cores from the torch work that followed: after one
# trust computation (a few small matrix products) a photo's MTCNN and classifier ran 2x slower
# on 2 cores (benchmarks/results/detect_batched_cpu.md). Our numpy/scipy matrices are small: one
# thread. Set for the libraries loaded from now on (the variable) and for a numpy a script
# imported before us (threadpoolctl); OPENBLAS_NUM_THREADS set by the user wins.
if not os.environ.get("OPENBLAS_NUM_THREADS"):
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    if "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
