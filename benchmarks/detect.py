"""Detection speed: what a person waits for, on the real-data detector (params.yaml's model).

1. `dfcl detect --crop` on a folder of DFDC face crops: face crops per second.
2. `dfcl detect` on a 10 s 720p video (an FF++ video, upscaled and cut to 10 s): video seconds
   per second, with the share of decoding, face detection (MTCNN) and classification.
3. `dfcl detect` on a 720p photo (a frame of that video): seconds per photo, same shares.
4. The API (`dfcl api`, a subprocess on 127.0.0.1): latency p50/p95 and throughput for the photo
   and the video with 1 and 4 concurrent clients, each a bounded loop of requests.

The detector is params.yaml's architecture at its input size, registered in a scratch MLflow
registry as champion; its weights do not change speed, so it is the ImageNet-initialised
network, not a trained one (no training needed to measure). It is registered with a trust
state of the champion's sizes (dfcl.measure.trust: calibration, band, a `trust.components`-dimensional
feature space of five classes, fit on random features, and as many real photos from elsewhere), so
every answer pays for calibration, novelty, attribution and abstention as a trained champion's does.

    python benchmarks/detect.py [--crops 200] [--requests 12] [--tag cpu] [-S key=value ...]

Writes benchmarks/results/detect_<tag>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run as a script: the repo and sibling modules
from common import machine, save_results, scratch_workspace  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def make_media(data: Path, out: Path) -> dict[str, Path]:
    """A 10 s 720p video and a 720p photo from an FF++ video; a folder of DFDC crops."""
    import cv2

    src = next((data / "ffpp-videos" / "manipulated_sequences" / "Deepfakes" / "c23" / "videos").glob("*.mp4"))
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25
    video = out / "clip_720p_10s.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), fps, (1280, 720))
    for i in range(int(10 * fps)):
        ok, frame = cap.read()
        if not ok:
            break
        frame = cv2.resize(frame, (1280, 720), interpolation=cv2.INTER_LINEAR)
        writer.write(frame)
        if i == int(5 * fps):
            cv2.imwrite(str(out / "photo_720p.jpg"), frame)
    writer.release()
    cap.release()
    return {"video": video, "photo": out / "photo_720p.jpg", "source": src}


def crops_folder(data: Path, out: Path, n: int) -> Path:
    folder = out / "crops"
    folder.mkdir()
    for i, f in enumerate(sorted((data / "dfdc-crops" / "fake").glob("*.jpg"))[:n]):
        (folder / f"{i:04d}.jpg").write_bytes(f.read_bytes())
    return folder


def register_champion(params: dict) -> None:
    import mlflow
    import numpy as np
    from mlflow import MlflowClient

    from dfcl.measure.trust import Calibration, Trust, fit_feature_space, unit_rows
    from dfcl.ops.tracking import log_detector
    from models import create_model

    mp = params.model
    model = create_model(mp.name, pretrained=mp.pretrained).eval()
    name = params.mlflow.registered_model
    rng = np.random.default_rng(0)
    classes = ["real", "a/A", "a/B", "a/C", "a/D"]
    features = rng.normal(size=(1000, model.head.in_features))
    space = fit_feature_space(features, np.arange(1000) % len(classes), classes, params.trust.components,
                              params.trust.novelty_reference)
    # real photos from elsewhere (trust.foreign_reals) at the size the learner keeps, and finite cuts,
    # so every answer also pays for the familiarity and elsewhere rules
    space.foreign = unit_rows(rng.normal(size=(params.trust.novelty_reference, model.head.in_features)))
    trust = Trust(Calibration(1.1, -0.1), 0.5, (0.3, 0.7), 0.95, 10.0, space, unfamiliar=(1.0, 1.0),
                  elsewhere=0.0, foreign=["benchmark reals"])
    with mlflow.start_run(run_name="benchmark detector"):
        info = log_detector(model, params.data.image_size, 0.5, {"architecture": mp.name, "methods": []}, name,
                            trust=trust)
    MlflowClient().set_registered_model_alias(name, "champion", info.registered_model_version)


STAGES = ("decode", "faces", "classify", "trust")  # trust: calibration, novelty, attribution, abstention


def share_text(shares: dict) -> str:
    return " / ".join(f"{shares.get(k, 0.0):.0%}" for k in STAGES)


def shares(timings: list[dict]) -> dict:
    total = {k: sum(t.get(k, 0.0) for t in timings) for k in STAGES}
    whole = sum(total.values()) or 1.0
    return {k: round(v / whole, 3) for k, v in total.items()}


def bare_forward(model, files: list[Path], size: int, batch: int) -> float:
    """Faces per second of the bare model on the same faces, already decoded and resized: the
    forward pass alone (no_grad, channels_last input, torch's threads as set), in batches of `batch`.
    What `dfcl detect` is measured against (issue 40): absolute figures move 2-3x between
    machines of one kind, a ratio measured in the same run does not."""
    import cv2
    import numpy as np
    import torch

    faces = np.stack([cv2.resize(cv2.imread(str(f))[:, :, ::-1], (size, size), interpolation=cv2.INTER_AREA)
                      for f in files])
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div(255).contiguous(memory_format=torch.channels_last)
    model = model.eval()  # left in the layout the Detector holds it in: the bare pass must not fix what dfcl does not
    with torch.no_grad():
        model(x[:batch])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
        return len(x) / (time.perf_counter() - start)


def cli_speed(params: dict, media: dict, crops: Path, ws: Path) -> dict:
    """The library `dfcl detect` calls, timed per stage (model loading excluded: once per command),
    and the bare model on the same faces in the same run (the ratios)."""
    from dfcl.serving.detect import FaceScorer, detect_files, expand
    from dfcl.serving.detector import load_detector

    detector = load_detector(f"models:/{params.mlflow.registered_model}@champion", params, ws)
    scorer = FaceScorer(detector, params)
    scorer.detect(media["photo"])  # warm-up: MTCNN and the model loaded, first-call allocations done
    files = expand([str(crops)])
    bare_batched = bare_forward(detector.model, files, detector.image_size, params.detect.batch_size)
    bare_one = bare_forward(detector.model, files, detector.image_size, 1)
    start = time.perf_counter()
    results = [scorer.detect(f, "always") for f in files]  # one file at a time: the path before issue 40
    one_s = time.perf_counter() - start
    start = time.perf_counter()
    detect_files(scorer, [str(crops)], crop="always", progress=False)  # what `dfcl detect FOLDER --crop` runs
    crop_s = time.perf_counter() - start
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        r = scorer.detect(media["video"])
        runs.append((time.perf_counter() - start, r))
    video_s = statistics.median(t for t, _ in runs)
    video = runs[0][1]
    photo_runs = []
    for _ in range(5):
        start = time.perf_counter()
        r = scorer.detect(media["photo"])
        photo_runs.append((time.perf_counter() - start, r))
    photo_s = statistics.median(t for t, _ in photo_runs)
    mtcnn_s = statistics.median(r.timings["faces"] for _, r in photo_runs)
    n_faces = len(photo_runs[0][1].faces)
    return {
        "crops": {"files": len(files), "seconds": round(crop_s, 2), "crops_per_s": round(len(files) / crop_s, 1),
                  "bare_batched_per_s": round(bare_batched, 1), "bare_one_per_s": round(bare_one, 1),
                  "ratio_to_bare_batched": round(len(files) / crop_s / bare_batched, 2),
                  "one_file_at_a_time_per_s": round(len(files) / one_s, 1),
                  "one_file_at_a_time_ratio": round(len(files) / one_s / bare_batched, 2),
                  "batch_size": params.detect.batch_size, "workers": params.detect.workers,
                  "shares": shares([r.timings for r in results])},
        "video": {"seconds_long": video.video["seconds"], "size": f"{video.video['width']}x{video.video['height']}",
                  "frames_scored": len(video.faces), "frames_sampled": len(video.frames),
                  "seconds": round(video_s, 2), "video_s_per_s": round(video.video["seconds"] / video_s, 2),
                  "shares": shares([r.timings for _, r in runs])},
        "photo": {"seconds": round(photo_s, 3), "faces": n_faces, "mtcnn_s": round(mtcnn_s, 3),
                  # bare: MTCNN's time in the same runs plus the bare model's batch-1 pass per face
                  "ratio_to_bare": round((mtcnn_s + n_faces / bare_one) / photo_s, 2),
                  "shares": shares([r.timings for _, r in photo_runs])},
    }


def api_latency(url: str, path: Path, clients: int, requests: int) -> dict:
    """`clients` threads, each sending `requests` uploads of `path` one after the other."""
    import httpx

    latencies, errors = [], []

    def client():
        with httpx.Client(timeout=600) as http:
            for _ in range(requests):
                start = time.perf_counter()
                with open(path, "rb") as f:
                    r = http.post(f"{url}/v1/detect", files={"file": (path.name, f)})
                latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    errors.append(r.text[:200])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=20)
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "p50_s": round(statistics.median(latencies), 3),
            "p95_s": round(q[18], 3), "throughput_per_s": round(len(latencies) / wall, 2)}


def api_speed(ws: Path, media: dict, requests: int, overrides: list[str]) -> list[dict]:
    import socket

    import httpx

    with socket.socket() as s:  # a free port of 127.0.0.1
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "-m", "dfcl.cli", "api", "--port", str(port)] + [a for o in overrides for a in ("-S", o)]
    log = open(ws / "api.log", "w")
    proc = subprocess.Popen(args, cwd=ws, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        api_latency(url, media["photo"], 1, 2)  # warm-up
        rows = []
        for kind in ("photo", "video"):
            for clients in (1, 4):
                n = requests if kind == "photo" else max(2, requests // 4)
                rows.append({"input": kind, **api_latency(url, media[kind], clients, n)})
                print(rows[-1], flush=True)
        return rows
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def markdown(report: dict, command: str, tag: str) -> str:
    c, v, p = report["cli"]["crops"], report["cli"]["video"], report["cli"]["photo"]
    t = report["targets"]
    lines = [f"# Detection speed ({tag})", "",
             f"Machine: {report['machine']}. Date: {report['date']}. Detector: {report['model']}.", "",
             "Command:", "", f"    {command}", "",
             "`dfcl detect` (the library it calls; model loading once per command, excluded):", "",
             "| input | result | time shares (decode / faces / classify / trust) |", "| --- | --- | --- |",
             f"| {c['files']} DFDC face crops (`--crop`, a folder: batches of {c['batch_size']} across files, "
             f"{c['workers']} reading threads) | **{c['crops_per_s']} crops/s**, {c['ratio_to_bare_batched']}x the bare "
             f"model's batched {c['bare_batched_per_s']}/s (one file at a time: {c['one_file_at_a_time_per_s']}/s, "
             f"{c['one_file_at_a_time_ratio']}x; bare batch-1 {c['bare_one_per_s']}/s) | "
             f"{share_text(c['shares'])} (one at a time) |",
             f"| {v['seconds_long']} s {v['size']} video, {v['frames_sampled']} frames | **{v['seconds']} s** "
             f"({v['video_s_per_s']} video-s/s) | {share_text(v['shares'])} |",
             f"| 720p photo, {p['faces']} face(s) | **{p['seconds']} s**, {p.get('ratio_to_bare', '-')}x bare "
             f"(MTCNN {p.get('mtcnn_s', '-')} s + the bare model's batch-1 pass) | "
             f"{share_text(p['shares'])} |", "",
             "API (`dfcl api` on 127.0.0.1; each client sends its requests one after the other):", "",
             "| input | clients | requests | p50 s | p95 s | throughput /s | errors |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["api"]:
        lines.append(f"| {r['input']} | {r['clients']} | {r['requests']} | {r['p50_s']} | {r['p95_s']} | {r['throughput_per_s']} | {r['errors']} |")
    lines += ["", "Targets:", "",
              f"- a folder of crops >= 0.8x the bare batched forward pass: {c['ratio_to_bare_batched']}x "
              f"({'met' if c['ratio_to_bare_batched'] >= 0.8 else 'missed'})",
              f"- a photo >= 0.7x bare batch-1 plus MTCNN: {p['ratio_to_bare']}x ({'met' if p['ratio_to_bare'] >= 0.7 else 'missed'})",
              f"- face crops/s >= 25: {c['crops_per_s']} ({'met' if t['crops'] else 'missed'})",
              f"- 10 s 720p video with 16 frames <= 5 s: {v['seconds']} s ({'met' if t['video'] else 'missed'})",
              f"- photo p95 < 0.5 s with 4 clients: {t['photo_p95_4']} s ({'met' if t['photo'] else 'missed'})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--crops", type=int, default=200)
    parser.add_argument("--requests", type=int, default=12, help="photo requests per client (videos: a quarter)")
    parser.add_argument("-S", "--set", action="append", default=[])
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    with scratch_workspace("dfcl-detect-bench-", args.set) as (ws, params):
        media = make_media(data, ws)
        crops = crops_folder(data, ws, args.crops)
        register_champion(params)
        cli = cli_speed(params, media, crops, ws)
        print(json.dumps(cli), flush=True)
        api = api_speed(ws, media, args.requests, args.set)
    photo4 = next(r["p95_s"] for r in api if r["input"] == "photo" and r["clients"] == 4)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "model": f"{params.model.name} at {params.data.image_size} px", "cli": cli, "api": api,
              "targets": {"crops": cli["crops"]["crops_per_s"] >= 25, "video": cli["video"]["seconds"] <= 5,
                          "photo": photo4 < 0.5, "photo_p95_4": photo4}}
    command = "python benchmarks/detect.py " + " ".join(sys.argv[1:])
    save_results(out, f"detect_{args.tag}", report, markdown(report, command, args.tag))


if __name__ == "__main__":
    main()
