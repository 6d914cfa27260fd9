"""No test face trains: every face a learner trains on is compared, by content, with every face
any experience validates or tests on.

File names cannot tell (the same real face is dealt to several methods, re-ingested under another
dataset's name, or copied into a self-blended experience), so each face row is hashed as the
model sees it: the uint8 pixels of its crop. A number measured on a face the model trained on is
wrong however good it looks, so a retraining with any such face stops before it trains.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np

HELD_OUT = ("val", "test")


class DataLeakError(RuntimeError):
    """A face is in a training split and in a validation or test split."""


def face_hashes(images: Path) -> list[bytes]:
    """One 128-bit BLAKE2b digest per face row of a `<split>-x.npy` array (memory-mapped)."""
    x = np.load(images, mmap_mode="r")
    return [hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).digest() for row in x]


def find_leaks(experiences, root: Path) -> list[str]:
    """One line per (training experience, held-out experience and split) that share faces:
    how many faces of that held-out split are pixel for pixel training faces."""
    trained: dict[bytes, str] = {}
    for e in experiences:
        for h in face_hashes(Path(root) / e.train_x):
            trained.setdefault(h, e.key)
    shared: dict[tuple[str, str, str], int] = defaultdict(int)
    totals: dict[tuple[str, str], int] = {}
    for e in experiences:
        for split in HELD_OUT:
            path = getattr(e, f"{split}_x")
            if not path or not (Path(root) / path).is_file():
                continue
            hashes = face_hashes(Path(root) / path)
            totals[(e.key, split)] = len(hashes)
            for h in hashes:
                if h in trained:
                    shared[(trained[h], e.key, split)] += 1
    return [f"{n} of the {totals[(held, split)]} {split} faces of {held} are training faces of {train}"
            for (train, held, split), n in sorted(shared.items())]


def check_no_leak(experiences, root: Path) -> None:
    """Raise DataLeakError when any training face is also a validation or test face."""
    leaks = find_leaks(experiences, root)
    if leaks:
        raise DataLeakError("test faces would train (by content hash): " + "; ".join(leaks)
                            + ". Fix the splits (docs/datasets.md, splits) before training")
