"""Face-extraction throughput on FF++ videos: frames/s end to end (decode + MTCNN + crop), and
the two halves apart, with a cold detection cache, then again with a warm one.

    python benchmarks/face_extraction.py [--videos ../shared/data/ffpp-videos] [--device auto]
        [-S faces.frames_per_video=16 ...] [--out benchmarks/results]

Writes face_extraction_<device>.json beside a Markdown summary, with the machine it ran on.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # run as a script: its sibling module
from common import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", default=str(REPO.parent / "shared" / "data" / "ffpp-videos"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("-S", "--set", action="append", default=[])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()

    from dfcl.config import load_params
    from dfcl.data.extraction import extract_dataset
    from dfcl.data.faces import FaceDetector, FaceSettings, read_frames
    from dfcl.data.layouts import recognise

    params = load_params(REPO / "params.yaml", [f"faces.device={args.device}", *args.set])
    s = FaceSettings.from_params(params)
    videos = sorted(set(recognise(args.videos, params.data.real_names, "bench").files.path))

    # The halves apart: OpenCV decoding of the sampled frames, then MTCNN on them.
    start = time.perf_counter()
    decoded = [read_frames(Path(args.videos) / v, s.frames_per_video)[0] for v in videos]
    decode_s = time.perf_counter() - start
    n_frames = sum(len(d) for d in decoded)
    detector = FaceDetector(s)
    detector.detect(list(decoded[0].values())[:2])  # warm-up (CUDA context, first-call allocations)
    start = time.perf_counter()
    for frames in decoded:
        detector.detect([frames[i] for i in sorted(frames)])
    detect_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for label in ("cold cache", "warm cache"):
            start = time.perf_counter()
            stats = extract_dataset(args.videos, Path(tmp) / "out", params, "bench", cache_dir=Path(tmp) / "cache")
            runs[label] = {"wall_s": round(time.perf_counter() - start, 2), **stats}

    device = str(detector.device)
    result = {"videos": len(videos), "frames_per_video": s.frames_per_video, "sampled_frames": n_frames,
              "detect_max_side": s.detect_max_side, "batch_size": s.batch_size, "device": device,
              "decode_frames_per_s": round(n_frames / decode_s, 2),
              "detect_frames_per_s": round(n_frames / detect_s, 2),
              "end_to_end": runs, "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"face_extraction_{'gpu' if device.startswith('cuda') else 'cpu'}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
