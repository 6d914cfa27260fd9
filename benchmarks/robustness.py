"""Robustness of detection for people (issue 28, "The page and the API"), measured against a
live `dfcl api` on 127.0.0.1 and through `dfcl detect`:

1. The bad-input matrix: every case (decompression bombs, 4K and 8K videos, tiny and banner
   images, truncated, zero-length and mislabelled files, FFmpeg scripts named .mp4, a video
   whose container states no length, an upload that stalls, a client that goes away): the
   answer per case, whether the server is healthy after it, and the server's peak memory.
   Then the same files through `dfcl detect` in one command (one row per file, its exit
   status and peak memory).
2. A bounded load run, loopback only: 4 and 16 clients for `--seconds` each, photos and videos
   mixed (one video in four), each client sending one request after the other; requests
   answered, p50/p95 of the answered ones, 503s, other errors, the server's peak memory; then
   16 clients again with a hot swap in the middle (a new version registered and the alias
   moved: the server follows it within api.reload_s).

The detector is params.yaml's architecture at its input size, ImageNet-initialised and
registered in a scratch MLflow registry as champion (as benchmarks/detect.py: weights do not
change any of this). The server runs with `-S api.reload_s=2 -S api.upload_timeout_s=5` (so the
stalled upload and the swap take seconds, not minutes) plus the command's own `-S`.

    python benchmarks/robustness.py [--seconds 60] [--tag cpu] [--data ../shared/data] [-S key=value ...]

Writes benchmarks/results/robustness_<tag>.json and its sections of robustness_<tag>.md (the
file's other sections, e.g. `## Gate cases` from benchmarks/gate_cases.py, are kept).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run as a script: the repo and sibling modules
from common import machine, scratch_workspace  # noqa: E402
from detect import make_media, register_champion  # noqa: E402

DATA = REPO.parent / "shared" / "data"
SERVER_OVERRIDES = ["api.reload_s=2", "api.upload_timeout_s=5"]
# The `dfcl` processes run this checkout's code, not whatever the environment has installed.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}


# -- the bad inputs ---------------------------------------------------------------------------

def png(path: Path, w: int, h: int, bit_depth: int = 8, colour: int = 2, whole: bool = False) -> Path:
    """A PNG declaring w x h: with `whole`, every row present (zeros, so a few hundred KB
    decode to gigabytes: a real bomb); else the header and one small chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if whole:
        row = b"\x00" * (1 + (w * bit_depth + 7) // 8)
        z, parts = zlib.compressobj(9), []
        for _ in range(h):
            parts.append(z.compress(row))
        parts.append(z.flush())
        data = b"".join(parts)
    else:
        data = zlib.compress(b"\x00" * 4096)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, colour, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def video(path: Path, w: int, h: int, frames: int, fps: float = 25) -> Path:
    import cv2
    import numpy as np

    # Flat grey with a moving square: it compresses to little, so an 8K video fits the upload cap
    # and meets the pixel limit, as a real one of a static scene would.
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    frame, side = np.full((h, w, 3), 128, np.uint8), max(h // 8, 1)
    for i in range(frames):
        frame[:] = 128
        x = (i * side // 4) % max(w - side, 1)
        frame[h // 2 - side // 2:h // 2 + side // 2, x:x + side] = 30
        writer.write(frame)
    writer.release()
    return path


def without_duration(src: Path, out: Path) -> Path:
    """The Matroska file with its Duration element voided: a container that states no length."""
    data = bytearray(src.read_bytes())
    at = data.find(b"\x44\x89")
    total = 3 + (data[at + 2] & 0x7F)
    data[at:at + total] = bytes([0xEC, 0x80 | (total - 2)]) + bytes(total - 2)
    out.write_bytes(bytes(data))
    return out


def bad_inputs(media: dict, out: Path) -> dict[str, tuple[Path, str]]:
    """case -> (file, what it is)."""
    import cv2
    import numpy as np

    out.mkdir()
    rng = np.random.default_rng(0)
    cases = {"photo (720p, a face)": (media["photo"], "the baseline"),
             "video (10 s 720p)": (media["video"], "the baseline")}
    for name, (w, h) in {"tiny.png": (39, 39), "banner.png": (2000, 120), "dot.png": (1, 1)}.items():
        cv2.imwrite(str(out / name), rng.integers(0, 255, (h, w, 3), np.uint8))
    cases.update({
        "39x39 image": (out / "tiny.png", "under MTCNN's minimum face size"),
        "2000x120 banner": (out / "banner.png", "640x38 at detection scale"),
        "1x1 image": (out / "dot.png", ""),
        "40000x40000 PNG header": (png(out / "header.png", 40000, 40000), "IHDR + one small chunk"),
        "40000x40000 PNG bomb": (png(out / "bomb.png", 40000, 40000, bit_depth=1, colour=0, whole=True),
                                 "1-bit, every row: decodes to 4.8 GB as BGR"),
        "8000x7000 PNG header": (png(out / "56mp.png", 8000, 7000), "56 MP, just over the limit"),
    })
    photo = media["photo"].read_bytes()
    (out / "truncated.jpg").write_bytes(photo[:len(photo) // 2])
    (out / "empty.jpg").write_bytes(b"")
    (out / "empty.mp4").write_bytes(b"")
    clip = media["video"].read_bytes()
    (out / "truncated.mp4").write_bytes(clip[:20000])
    mkv = video(out / "clip.mkv", 320, 240, 50)
    (out / "video.jpg").write_bytes(mkv.read_bytes())
    (out / "photo.mp4").write_bytes(photo)
    (out / "text.mp4").write_text("not a video\n")
    (out / "concat.mp4").write_text("ffconcat version 1.0\nfile 'clip.mkv'\n")  # relative: FFmpeg's safe mode refuses absolute
    (out / "playlist.mp4").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/x.ts\n#EXT-X-ENDLIST\n")
    (out / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    (out / "notes.txt").write_text("hello\n")
    cases.update({
        "truncated JPEG (half)": (out / "truncated.jpg", ""),
        "truncated MP4 (20 KB)": (out / "truncated.mp4", ""),
        "zero-length .jpg": (out / "empty.jpg", ""),
        "zero-length .mp4": (out / "empty.mp4", ""),
        "MKV named .jpg": (out / "video.jpg", "mislabelled"),
        "JPEG named .mp4": (out / "photo.mp4", "mislabelled"),
        "text named .mp4": (out / "text.mp4", "mislabelled"),
        "ffconcat script named .mp4": (out / "concat.mp4", "would make FFmpeg open another file"),
        "HLS playlist named .mp4": (out / "playlist.mp4", "would make FFmpeg fetch http://"),
        "HEIC photo": (out / "photo.heic", "a type the server does not take"),
        ".txt": (out / "notes.txt", ""),
        "4K video (3840x2160, 2 s)": (video(out / "uhd.mp4", 3840, 2160, 50), "at the limit"),
        "8K video (7680x4320, 1 s)": (video(out / "8k.mp4", 7680, 4320, 25), "over the limit"),
        "130 s video": (video(out / "long.mp4", 64, 48, 130 * 25), "over api.max_video_seconds"),
        "130 s video, length not stated": (without_duration(video(out / "long.mkv", 64, 48, 130 * 25),
                                                            out / "live.mkv"), "counted, up to 120 s at 25 fps"),
    })
    return cases


# -- the server -------------------------------------------------------------------------------

class Server:
    """`dfcl api` in a subprocess on a free port of 127.0.0.1, in the scratch workspace."""

    def __init__(self, ws: Path, overrides: list[str]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "dfcl.cli", "api", "--port", str(self.port)]
        self.log = ws / "api.log"
        self.proc = subprocess.Popen(args + [a for o in SERVER_OVERRIDES + overrides for a in ("-S", o)], cwd=ws, env=ENV,
                                     stdout=open(self.log, "a"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 600
        while not self.healthy():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"dfcl api did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(1)

    def healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/health", timeout=30).status_code == 200
        except httpx.HTTPError:
            return False

    def memory_mb(self, key: str = "VmHWM") -> float:
        """VmHWM: the process's peak resident memory so far; VmRSS: now."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(120)


def post(url: str, path: Path, timeout: float = 600, **query) -> tuple[int, dict]:
    import httpx

    with open(path, "rb") as f:
        r = httpx.post(f"{url}/v1/detect", params=query, files={"file": (path.name, f)}, timeout=timeout)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {"error": r.text[:200]}


def raw_upload(server: Server, send_body: bytes, close: bool) -> str:
    """A multipart upload that declares 1 MB, sends `send_body`, then closes (a client that goes
    away) or waits for the answer (a client that stalls)."""
    boundary = "dfclbench"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"photo.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=120)
    s.sendall((f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {2**20}\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode() + part + send_body)
    if close:
        s.close()
        time.sleep(1)
        return "(closed by the client)"
    try:
        return s.recv(4096).decode(errors="replace").split("\r\n", 1)[0]
    finally:
        s.close()


def matrix(server: Server, cases: dict) -> list[dict]:
    rows = []
    for case, (path, note) in cases.items():
        start = time.perf_counter()
        status, body = post(server.url, path)
        rows.append({"case": case, "note": note, "bytes": path.stat().st_size, "status": status,
                     "answer": body.get("verdict") if status == 200 else body.get("error", "")[:140],
                     "seconds": round(time.perf_counter() - start, 2), "healthy_after": server.healthy(),
                     "server_peak_mb": server.memory_mb()})
        print(rows[-1], flush=True)
    for case, body, close in (("upload stalls after 10 KB", b"\xff\xd8\xff" + bytes(10_000), False),
                              ("client goes away mid-upload", bytes(200_000), True)):
        start = time.perf_counter()
        line = raw_upload(server, body, close)
        status = int(line.split()[1]) if line.startswith("HTTP/") else None
        rows.append({"case": case, "note": "raw socket, 1 MB declared", "bytes": len(body), "status": status,
                     "answer": line, "seconds": round(time.perf_counter() - start, 2), "healthy_after": server.healthy(),
                     "server_peak_mb": server.memory_mb()})
        print(rows[-1], flush=True)
    return rows


def deadline_case(ws: Path, media: dict, quick: Path, overrides: list[str]) -> dict:
    """A server whose detections may take 1 s and run one at a time: the 10 s video runs past it
    (503), and the next request, `quick` (answered in far less than 1 s once it has the slot),
    is answered: the slot came back."""
    server = Server(ws, overrides + ["api.detect_timeout_s=1", "api.max_concurrent=1"])
    try:
        start = time.perf_counter()
        status, body = post(server.url, media["video"])
        late = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        after, answer = post(server.url, quick)
        return {"case": "10 s video, api.detect_timeout_s=1, one slot", "status": status, "answer": body.get("error", "")[:140],
                "seconds": late, "next_request": after, "next_answer": answer.get("error", answer.get("verdict", ""))[:100],
                "next_seconds": round(time.perf_counter() - start, 2), "healthy_after": server.healthy(),
                "server_peak_mb": server.memory_mb()}
    finally:
        server.stop()


def cli_matrix(ws: Path, cases: dict, overrides: list[str]) -> dict:
    """Every file of the matrix through one `dfcl detect` command."""
    files = [str(p) for p, _ in cases.values()]
    out = ws / "detect.json"
    args = [sys.executable, "-m", "dfcl.cli", "detect", *files, "--json", str(out)] + [a for o in overrides for a in ("-S", o)]
    start = time.perf_counter()
    with open(ws / "detect.out", "w+") as said:
        proc = subprocess.Popen(args, cwd=ws, env=ENV, stdout=said, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory
        said.seek(0)
        printed = said.read()
    seconds = time.perf_counter() - start
    peak = usage.ru_maxrss / 1024
    by_file = {r["file"]: r for r in json.loads(out.read_text())["detections"]} if out.exists() else {}
    rows = [{"case": case, "verdict": by_file.get(str(p), {}).get("verdict", "(no row)"),
             "answer": by_file.get(str(p), {}).get("error", "")[:140]} for case, (p, _) in cases.items()]
    return {"exit_status": os.waitstatus_to_exitcode(status), "seconds": round(seconds, 1), "peak_mb": round(peak, 1),
            "rows": rows, "traceback": "Traceback" in printed, "output_tail": printed[-500:]}


# -- the load run -----------------------------------------------------------------------------

def load(server: Server, media: dict, clients: int, seconds: float, swap=None) -> dict:
    """`clients` threads for `seconds`, one video in four; `swap` is called once, half-way."""
    import httpx

    records, stop_at, peak = [], time.monotonic() + seconds, [server.memory_mb("VmRSS")]

    def client(k: int):
        rng = random.Random(k)
        with httpx.Client(timeout=600) as http:
            while time.monotonic() < stop_at:
                kind = "video" if rng.random() < 0.25 else "photo"
                start = time.perf_counter()
                try:
                    with open(media[kind], "rb") as f:
                        r = http.post(f"{server.url}/v1/detect", files={"file": (media[kind].name, f)})
                    status = r.status_code
                    version = r.json().get("model", {}).get("version") if status == 200 else None
                except (httpx.HTTPError, ValueError) as e:
                    status, version = type(e).__name__, None
                records.append({"kind": kind, "status": status, "seconds": time.perf_counter() - start,
                                "version": version, "at": time.monotonic()})

    def sample():
        while time.monotonic() < stop_at + 5:
            peak.append(server.memory_mb("VmRSS"))
            time.sleep(0.5)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)] + [threading.Thread(target=sample)]
    for t in threads:
        t.start()
    swapped_at = None
    if swap is not None:
        time.sleep(seconds / 2)
        swapped_at = time.monotonic()
        swap()
    for t in threads:
        t.join()
    ok = [r["seconds"] for r in records if r["status"] == 200]
    q = statistics.quantiles(ok, n=20) if len(ok) >= 2 else [float("nan")] * 19
    row = {"clients": clients, "seconds": seconds, "requests": len(records), "answered_200": len(ok),
           "photos": sum(r["kind"] == "photo" for r in records), "videos": sum(r["kind"] == "video" for r in records),
           "p50_s": round(statistics.median(ok), 2) if ok else None, "p95_s": round(q[18], 2),
           "busy_503": sum(r["status"] == 503 for r in records),
           "errors": sum(r["status"] not in (200, 503) for r in records),
           "statuses": sorted({str(r["status"]) for r in records}),
           "server_peak_rss_mb": max(peak), "healthy_after": server.healthy()}
    if swap is not None:
        versions = {}
        for r in records:
            if r["version"]:
                versions.setdefault("before" if r["at"] < swapped_at else "after", {}).setdefault(r["version"], 0)
                versions["before" if r["at"] < swapped_at else "after"][r["version"]] += 1
        row["versions"] = versions
    print(row, flush=True)
    return row


# -- the report -------------------------------------------------------------------------------

HEADINGS = ("## The page and the API: bad inputs", "## The same files through `dfcl detect`", "## Load",
            "## Notes on these runs")


def markdown(report: dict, command: str, tag: str) -> str:
    m = report["matrix"]
    fives = sum(1 for r in m if r["status"] == 500) + sum(1 for r in report["load"] if "500" in r["statuses"])
    rows = {r["case"]: r for r in m}
    uhd = rows["4K video (3840x2160, 2 s)"]
    before_uhd = m[m.index(uhd) - 1]["server_peak_mb"]
    lines = [f"# Robustness on {tag.upper()}", "", HEADINGS[0] + " (`POST /v1/detect` on a live `dfcl api`, one request each)", "",
             f"Machine: {report['machine']}. Date: {report['date']}. Detector: {report['model']}. "
             f"Server: `dfcl api` on 127.0.0.1 with `-S {' -S '.join(report['server_overrides'])}`, "
             "everything else params.yaml's defaults (api.max_concurrent 2, api.queue_timeout_s 30, "
             "api.max_image_pixels 50 MP, api.max_video_pixels 4K, api.max_video_seconds 120).", "",
             "Command:", "", f"    {command}", "",
             f"**Answers of 500: {fives}.** The server was healthy after every case: "
             f"{all(r['healthy_after'] for r in m)}.", "",
             "| case | size | status | answer | s | healthy after | server peak MB |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in m:
        lines.append(f"| {r['case']}{' (' + r['note'] + ')' if r['note'] else ''} | {r['bytes'] / 1e6:.2f} MB | "
                     f"{r['status']} | {r['answer']} | {r['seconds']} | {r['healthy_after']} | {r['server_peak_mb']} |")
    d = report["deadline"]
    lines += ["", f"Deadline (a second server, `-S api.detect_timeout_s=1 -S api.max_concurrent=1`): {d['case']}: "
              f"{d['status']} after {d['seconds']} s ({d['answer']}); the next request (the 39x39 image, which needs the "
              f"slot) got {d['next_request']} after {d['next_seconds']} s ({d['next_answer']}); "
              f"healthy after: {d['healthy_after']}.", ""]
    c = report["cli"]
    lines += [HEADINGS[1] + " (one command)", "",
              f"Exit status {c['exit_status']} (1: some files could not be scored), {c['seconds']} s, peak memory "
              f"{c['peak_mb']} MB, a traceback printed: {c['traceback']}. (No stalled or vanishing client here.)", "",
              "| case | verdict | reason |", "| --- | --- | --- |"]
    lines += [f"| {r['case']} | {r['verdict']} | {r['answer']} |" for r in c["rows"]]
    lines += ["", HEADINGS[2] + ", loopback only (photos and videos mixed: one video in four)", "",
              "Each client sends one request after the other for the whole run; p50/p95 are of the answered (200) requests.", "",
              "| clients | s | requests | answered | photos / videos | p50 s | p95 s | 503 busy | other errors | server peak RSS MB | hot swap |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["load"]:
        swap = ("versions answered before: " + json.dumps(r["versions"].get("before", {})) + ", after: "
                + json.dumps(r["versions"].get("after", {}))) if "versions" in r else ""
        lines.append(f"| {r['clients']} | {r['seconds']:.0f} | {r['requests']} | {r['answered_200']} | {r['photos']} / {r['videos']} | "
                     f"{r['p50_s']} | {r['p95_s']} | {r['busy_503']} | {r['errors']} | {r['server_peak_rss_mb']} | {swap} |")
    lines += ["", HEADINGS[3], "",
              f"- On this project's 2-core machine, shared with other sessions' tests and a training: latencies are "
              f"contention-bound (the baseline photo took {rows['photo (720p, a face)']['seconds']} s here; "
              "`detect_cpu.md` has it quiet).",
              "- A 503 comes when both detection slots stay busy for `api.queue_timeout_s` (30 s): none did.",
              "- Hot swap: version 2 is registered and `champion` moved half-way through the run; the requests "
              "answered by version 1 after that moment were in flight, or started before the watcher's next check "
              "(`api.reload_s`) had loaded version 2.",
              f"- Memory: the 4K video took the server's peak from {before_uhd} to {uhd['server_peak_mb']} MB (its 16 "
              "sampled frames are kept at full size for cropping); the bombs and the 8K video cost nothing (refused "
              "from their headers).",
              "- A truncated JPEG decodes partly (OpenCV fills the missing rows) and gets a verdict: an answer, not a "
              "failure. `dfcl detect` has no length limit (`api.max_video_seconds` is the API's) and reads the 130 s "
              "videos whole; it has the same pixel and content checks.",
              "- The stalled upload's 408 comes `api.upload_timeout_s` after its turn ("
              + next((o.split("=", 1)[1] + " s" for o in report["server_overrides"] if o.startswith("api.upload_timeout_s=")),
                     "the default")
              + " here; 120 s by default)."]
    return "\n".join(lines) + "\n"


def write_report(path: Path, text: str) -> None:
    """`text` as the file, keeping the sections other benchmarks write into it (any `## ` heading
    not ours, with what follows it up to the next one)."""
    kept = []
    if path.exists():
        for section in re.split(r"(?m)^(?=## )", path.read_text()):
            if section.startswith("## ") and not section.startswith(HEADINGS):
                kept.append(section.rstrip("\n"))
    path.write_text("\n\n".join([text.rstrip("\n")] + kept) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--seconds", type=float, default=60, help="length of each load run")
    parser.add_argument("-S", "--set", action="append", default=[])
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    with scratch_workspace("dfcl-robustness-", args.set) as (ws, params):
        media = make_media(data, ws)
        cases = bad_inputs(media, ws / "bad")
        register_champion(params)
        server = Server(ws, args.set)
        try:
            post(server.url, media["photo"])  # warm-up: MTCNN and the model loaded
            rows = matrix(server, cases)
            runs = [load(server, media, clients, args.seconds) for clients in (4, 16)]
            runs.append(load(server, media, 16, args.seconds, swap=lambda: register_champion(params)))
        finally:
            server.stop()
        deadline = deadline_case(ws, media, cases["39x39 image"][0], args.set)
        cli = cli_matrix(ws, cases, args.set)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "server_overrides": SERVER_OVERRIDES + args.set,
              "model": f"{params.model.name} at {params.data.image_size} px", "matrix": rows,
              "deadline": deadline, "cli": cli, "load": runs}
    command = "python benchmarks/robustness.py " + " ".join(sys.argv[1:])
    (out / f"robustness_{args.tag}.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report, command, args.tag)
    write_report(out / f"robustness_{args.tag}.md", text)
    print(text)


if __name__ == "__main__":
    main()
