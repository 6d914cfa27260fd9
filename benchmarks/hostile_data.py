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

import struct
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # run as a script: the repo and sibling modules


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
