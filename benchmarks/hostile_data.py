"""Datasets from strangers and concurrent writers (issue 39), measured through the real commands:

1. The hostile-dataset matrix: DFDC-layout datasets whose metadata names `../../` and absolute
   paths, real/fake folders with symlinks out of and inside the root, a symlink loop, a 0-byte
   video, an AVI whose header says 64x48 and whose frames decode at 1600x1200 (the pixel cap set
   below them), a stream whose header states 6 hours, a codec outside the allow-list; each
   through `dfcl ingest` and through the incoming trigger's recogniser. Per case: the outcome,
   the skip lines, whether anything was written outside `data/` (a secret beside the dataset is
   checked for copies and changes), and whether the workspace still ingests a clean dataset.
2. Concurrency: two processes marking the trigger ledger, a promotion racing a rollback, two
   ingests at once; each with its invariant checked (the ledger parses and lost no mark; the
   alias history is numbered without gaps and `champion` is the version the gate scored, or
   nothing moved; the second ingest waits for the workspace lock, then finds the same version).

    python benchmarks/hostile_data.py [--tag cpu]

Writes benchmarks/results/hostile_data_<tag>.json and .md.
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run as a script: the repo and sibling modules
# The `dfcl` processes run this checkout's code, not whatever the environment has installed.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}


# -- hand-made videos -------------------------------------------------------------------------

def _chunk(tag: bytes, data: bytes) -> bytes:
    return tag + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def _list(kind: bytes, body: bytes) -> bytes:
    return _chunk(b"LIST", kind + body)


def mjpeg_avi(path: Path, jpegs: list[bytes], declared=(64, 48), fps: int = 25, total_frames: int | None = None,
              fourcc: bytes = b"MJPG") -> Path:
    """An AVI of the given JPEG frames whose header says `declared` (width, height) and
    `total_frames` (default: as many as there are): what the header states is the writer's
    choice, whatever the frames hold."""
    w, h = declared
    n = total_frames or len(jpegs)
    avih = struct.pack("<14I", int(1e6 / fps), 0, 0, 0x10, n, 0, 1, 0, w, h, 0, 0, 0, 0)
    strh = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"vids", fourcc, 0, 0, 0, 0, 1, fps, 0, n, 0, 0xFFFFFFFF, 0, 0, 0, w, h)
    strf = struct.pack("<IiiHH4sIiiII", 40, w, h, 1, 24, fourcc, w * h * 3, 0, 0, 0, 0)
    hdrl = _list(b"hdrl", _chunk(b"avih", avih) + _list(b"strl", _chunk(b"strh", strh) + _chunk(b"strf", strf)))
    movi, index, offset = b"", b"", 4
    for j in jpegs:
        c = _chunk(b"00dc", j)
        index += struct.pack("<4sIII", b"00dc", 0x10, offset, len(j))
        movi += c
        offset += len(c)
    body = b"AVI " + hdrl + _list(b"movi", movi) + _chunk(b"idx1", index)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def jpeg(w: int, h: int, seed: int = 0) -> bytes:
    import cv2
    import numpy as np

    image = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def other_codec_avi(path: Path, fourcc: str = "HFYU") -> Path:
    """A small valid AVI in a codec outside the allow-list (HuffYUV: lossless, never a face video's)."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    return path


# -- the hostile-dataset matrix ---------------------------------------------------------------

OVERRIDES = ["faces.detect_in_images=false", "faces.landmarks=false", "sbi.first=false", "data.image_size=32",
             "dvc.push=false", "api.max_video_pixels=20000"]  # the cap between the liar's 64x48 header and its frames
SET = [a for o in OVERRIDES for a in ("-S", o)]
SECRET = b"issue-39 secret: never copied\n"


def clean_dataset(folder: Path, images: Path) -> Path:
    """real/ and fake/ of a few demo faces: what every case adds its hostile file to."""
    import shutil

    for cls, src in (("real", images / "train" / "real"), ("fake", images / "train" / "BlendSwap")):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted(src.glob("*.jpg"))[:4]:
            shutil.copy(f, folder / cls / f.name)
    return folder


def dfdc_dataset(folder: Path, images: Path, key: str) -> Path:
    """A DFDC layout of images whose metadata also lists `key`."""
    import json
    import shutil

    real, fake = sorted((images / "train" / "real").glob("*.jpg")), sorted((images / "train" / "BlendSwap").glob("*.jpg"))
    (folder / "part0").mkdir(parents=True)
    meta = {}
    for i, (r, f) in enumerate(zip(real[:3], fake[:3])):
        shutil.copy(r, folder / "part0" / f"r{i}.jpg")
        shutil.copy(f, folder / "part0" / f"f{i}.jpg")
        meta |= {f"r{i}.jpg": {"label": "REAL"}, f"f{i}.jpg": {"label": "FAKE", "original": f"r{i}.jpg"}}
    meta[key] = {"label": "FAKE", "original": "r0.jpg"}
    (folder / "part0" / "metadata.json").write_text(json.dumps(meta))
    return folder


def hostile_cases(base: Path, images: Path, secret: Path) -> dict[str, tuple[str, Path]]:
    """{case: (what it is, its dataset folder)}, all under base/incoming/."""
    inc, cases = base / "incoming", {}

    def case(name, what):
        folder = clean_dataset(inc / name, images)
        cases[name] = (what, folder)
        return folder

    cases["traversal-key"] = ("DFDC key `../../../secret/key.txt`",
                              dfdc_dataset(inc / "traversal-key", images, "../../../secret/key.txt"))
    cases["absolute-key"] = ("DFDC key: the secret's absolute path", dfdc_dataset(inc / "absolute-key", images, str(secret)))
    (case("symlink-out", "fake/x.avi -> the secret, outside the dataset") / "fake" / "x.avi").symlink_to(secret)
    (case("symlink-in", "fake/in.jpg -> ../real/<a real face>: inside the root") / "fake" / "in.jpg").symlink_to(
        sorted((inc / "symlink-in" / "real").glob("*.jpg"))[0])
    loop = case("symlink-loop", "fake/loop.avi -> itself") / "fake" / "loop.avi"
    loop.symlink_to(loop)
    (case("empty-video", "fake/empty.mp4 of 0 bytes") / "fake" / "empty.mp4").write_bytes(b"")
    mjpeg_avi(case("frames-over-cap", "AVI header 64x48, frames decode at 1600x1200 (cap 20000 px)") / "fake" / "liar.avi",
              [jpeg(1600, 1200, i) for i in range(3)])
    mjpeg_avi(case("six-hour-header", "AVI header: 540000 frames at 25 fps (6 h), 3 frames in it") / "fake" / "long.avi",
              [jpeg(64, 48)] * 3, total_frames=6 * 3600 * 25)
    other_codec_avi(case("unknown-codec", "a valid HuffYUV AVI (codec outside the allow-list)") / "fake" / "huffyuv.avi")
    return cases


def _outside_data(ws: Path) -> set[str]:
    """Files of the workspace outside data/ and the services' own state."""
    own = {"data", "mlruns", ".dfcl", ".dvc", ".git", ".prefect", "mlflow.db", "dvc.yaml", "dvc.lock", "params.yaml",
           ".gitignore", ".dvcignore"}
    return {p.relative_to(ws).as_posix() for p in ws.rglob("*")
            if p.is_file() and p.relative_to(ws).parts[0] not in own}


def _holds_secret(ws: Path) -> list[str]:
    return [p.relative_to(ws).as_posix() for p in ws.rglob("*")
            if p.is_file() and not p.is_symlink() and p.stat().st_size < 10_000_000 and SECRET in p.read_bytes()]


def run_matrix(ws: Path, base: Path) -> list[dict]:
    import contextlib
    import io

    import pandas as pd

    from dfcl.cli import main
    from dfcl.data.demo_data import generate
    from dfcl.data.layouts import LayoutError, recognise
    from dfcl.ops.triggers import dataset_folders

    images = base / "demo"
    generate(images, ["BlendSwap"], train_per_class=6, test_per_class=2, size=32, seed=0)
    images = images / "BlendSwap"
    secret = base / "secret" / "key.txt"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(SECRET)
    cases = hostile_cases(base, images, secret)
    seen_by_trigger = {p.name for p in dataset_folders(base / "incoming", ["real"])}
    rows = []
    for name, (what, folder) in cases.items():
        before, t = _outside_data(ws), time.perf_counter()
        try:
            notes = recognise(folder, ["real"], name).notes
        except LayoutError as e:
            notes = [f"layout error: {e}"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            status = main(["ingest", str(folder), *SET])
        skipped_csv = ws / "data" / "processed" / name / "skipped.csv"
        skipped = pd.read_csv(skipped_csv, keep_default_na=False) if skipped_csv.is_file() else pd.DataFrame()
        skips = [f"{r.source}: {r.skipped}" for r in skipped.itertuples()] if len(skipped) else []
        rows.append({"case": name, "what": what, "exit": status, "seconds": round(time.perf_counter() - t, 1),
                     "trigger_sees_it": name in seen_by_trigger, "refused_by_layout": notes, "skipped_by_extraction": skips,
                     "raw_files": sorted(p.relative_to(ws / "data" / "raw" / name).as_posix()
                                         for p in (ws / "data" / "raw" / name).rglob("*")
                                         if p.is_file() and not re.fullmatch(r"\d{4}\.jpg|[rf]\d\.jpg", p.name)),
                     "written_outside_data": sorted(_outside_data(ws) - before),
                     "secret_copied_to": _holds_secret(ws), "secret_unchanged": secret.read_bytes() == SECRET,
                     "error": out.getvalue().strip().splitlines()[-1] if status else ""})
        print(f"{name}: exit {status}, refused {notes}, skipped {skips}", flush=True)
    clean = clean_dataset(base / "incoming" / "clean-after", images)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rows.append({"case": "clean-after", "what": "a clean dataset, after all of the above", "exit": main(["ingest", str(clean), *SET])})
    return rows


# -- concurrency ------------------------------------------------------------------------------

LEDGER_WRITER = """
import sys
from pathlib import Path
from dfcl.ops.triggers import Ledger
ledger, who, n = Ledger(Path(sys.argv[1])), sys.argv[2], int(sys.argv[3])
for i in range(n):
    ledger.mark(Path(f"/incoming/{who}-{i}"), "queued", f"fp-{i}", flow_run=who)
"""


def ledger_writers(base: Path, n: int = 300) -> dict:
    from dfcl.ops.triggers import Ledger

    path, t = base / "ledger" / "triggers.json", time.perf_counter()
    path.parent.mkdir()
    writers = [subprocess.Popen([sys.executable, "-c", LEDGER_WRITER, str(path), who, str(n)], env=ENV,
                                stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    errors = [w.communicate()[1] for w in writers]
    entries = Ledger(path).entries
    return {"case": "ledger writers", "what": f"2 processes x {n} marks of triggers.json",
            "seconds": round(time.perf_counter() - t, 1), "failed_writers": sum(w.returncode != 0 for w in writers),
            "decode_errors": sum(e.count("JSONDecodeError") for e in errors),
            "invariant": f"{len(entries)} of {2 * n} marks kept, file parses",
            "held": len(entries) == 2 * n}


def promotion_races_rollback(rounds: int = 4) -> dict:
    import threading

    import mlflow
    import torch
    from mlflow import MlflowClient

    from dfcl.ops import registry

    name, t = "race-detector", time.perf_counter()

    def register() -> str:
        with mlflow.start_run():
            info = mlflow.pytorch.log_model(torch.nn.Linear(2, 2), name="model", serialization_format="pickle",
                                            registered_model_name=name, pip_requirements=["torch"])
        return str(info.registered_model_version)

    v1, v2 = register(), register()
    registry.promote(name, v1, "bench", "first", None)
    registry.promote(name, v2, "bench", "second", v1)
    outcomes, broken = [], []
    for _ in range(rounds):
        scored = str(MlflowClient().get_model_version_by_alias(name, "champion").version)
        challenger, errors = register(), []

        def run(fn, *args):
            try:
                fn(*args)
            except registry.OpsError as e:
                errors.append(type(e).__name__)

        threads = [threading.Thread(target=run, args=(registry.promote, name, challenger, "ops", "approved", scored)),
                   threading.Thread(target=run, args=(registry.rollback_champion, name, "ops", "false alarms"))]
        if len(outcomes) % 2:  # either may reach the alias lock first
            threads.reverse()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        events = registry.alias_events(name)
        champion = str(MlflowClient().get_model_version_by_alias(name, "champion").version)
        promoted = [e for e in events if e["action"] == "promote" and e["version"] == challenger]
        ok = ([e["n"] for e in events] == list(range(1, len(events) + 1)) and registry.champion_stack(events)[-1] == champion
              and all(e["previous"] == scored for e in promoted) and not registry.inconsistencies(name))
        outcomes.append("promoted, then rolled back" if promoted else f"rolled back; promotion refused ({', '.join(errors)})")
        broken += [] if ok else [len(events)]
        if len(registry.champion_stack(events)) < 2:  # keep a champion to roll back to
            registry.promote(name, register(), "bench", "refill", champion)
    return {"case": "promotion vs rollback", "what": f"{rounds} rounds: an approval (CAS on the scored champion) and a "
            "rollback in two threads", "seconds": round(time.perf_counter() - t, 1), "outcomes": outcomes,
            "invariant": "events numbered without gaps, champion = history's last, a promotion only over the "
                         "version it was scored against, dfcl history consistent", "held": not broken}


def two_ingests(ws: Path, base: Path, api: str) -> dict:
    from dfcl.data.demo_data import generate

    images = base / "demo2"
    generate(images, ["BlendSwap"], train_per_class=6, test_per_class=2, size=32, seed=1)
    images = images / "BlendSwap"
    data, t = clean_dataset(base / "twice", images), time.perf_counter()
    args = [sys.executable, "-m", "dfcl.cli", "ingest", str(data), "-S", "flow.lock_wait_s=600", *SET]
    env = {**ENV, "PREFECT_API_URL": api, "DFCL_WORKSPACE": str(ws)}
    procs = [subprocess.Popen(args, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate()[0] for p in procs]
    versions = [re.search(r"faces version (\S+)", o) for o in outs]
    waited = sum("waiting up to" in o for o in outs)
    held = all(p.returncode == 0 for p in procs) and waited == 1 and len({v.group(1) for v in versions if v}) == 1
    return {"case": "two ingests", "what": "two `dfcl ingest` of one dataset at once", "seconds": round(time.perf_counter() - t, 1),
            "exits": [p.returncode for p in procs], "waited_for_the_lock": waited,
            "invariant": "one waits for the workspace lock, both succeed with the same faces version", "held": held,
            "tail": [o.strip().splitlines()[-1] if o.strip() else "" for o in outs]}


# -- report -----------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    def cell(items):
        return "<br>".join(str(i).replace("|", "\\|") for i in items) if items else "none"

    lines = ["# Datasets from strangers and concurrent writers (issue 39)", "",
             f"Generated by `{report['command']}` on {report['machine']['platform']}, "
             f"{report['machine']['cpu_cores']} cores, {report['date']}.", "",
             "## Hostile datasets through `dfcl ingest`", "",
             "Each dataset is a real/ + fake/ (or DFDC) folder of a few demo faces plus the hostile item, ingested "
             f"with `-S {' -S '.join(OVERRIDES)}`. A secret file sits beside the datasets; its bytes are searched for "
             "in the whole workspace after each case.", "",
             "| case | what | exit | trigger sees it | refused by the layout | skipped by extraction | raw copy (beside the clean faces) | "
             "written outside data/ | secret copied | s |", "|" + " --- |" * 10]
    for r in report["matrix"]:
        if r["case"] == "clean-after":
            continue
        lines.append(f"| {r['case']} | {r['what']} | {r['exit']} | {'yes' if r['trigger_sees_it'] else 'no'} | "
                     f"{cell(r['refused_by_layout'])} | {cell(r['skipped_by_extraction'])} | {cell(r['raw_files'])} | "
                     f"{cell(r['written_outside_data'])} | {cell(r['secret_copied_to'])}"
                     f"{'' if r['secret_unchanged'] else ' (secret changed!)'} | {r['seconds']} |")
    after = report["matrix"][-1]
    lines += ["", f"Afterwards a clean dataset ingests in the same workspace: exit {after['exit']}.", "",
              "The lying AVI is refused when it is opened: OpenCV's FFmpeg reader decodes the first frame to report "
              "the size, so its 1600x1200 shows there, not the header's 64x48; a frame decoded larger later is "
              "refused by the frame check in `read_frames` (tests/test_robustness.py). Times are wall-clock on the "
              "2-core machine beside other work: the first ingest also starts Prefect's temporary API.", "",
              "## Concurrency", "", "| case | what | invariant | held | detail | s |", "| --- | --- | --- | --- | --- | --- |"]
    for r in report["concurrency"]:
        detail = {k: v for k, v in r.items() if k not in ("case", "what", "invariant", "held", "seconds")}
        lines.append(f"| {r['case']} | {r['what']} | {r['invariant']} | {'yes' if r['held'] else '**no**'} | "
                     f"{cell(f'{k}: {v}' for k, v in detail.items())} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import argparse
    import datetime
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()
    from common import machine, save_results, scratch_workspace

    from dfcl.ops.runners import prefect_api_url

    with scratch_workspace("dfcl-hostile-", OVERRIDES) as (ws, _), tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        report = {"command": f"python benchmarks/hostile_data.py --tag {args.tag}", "machine": machine(),
                  "date": datetime.date.today().isoformat()}
        report["matrix"] = run_matrix(ws, base)
        report["concurrency"] = [ledger_writers(base), promotion_races_rollback(),
                                 two_ingests(ws, base, prefect_api_url())]
    save_results(REPO / "benchmarks" / "results", f"hostile_data_{args.tag}", report, markdown(report))


if __name__ == "__main__":
    main()
