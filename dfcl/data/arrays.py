"""Face arrays on disk: the one place their file layout is spelled, the video each face came
from, and `ExperienceSpec`, one forgery method's faces as the learner sees them. No torch here:
face extraction runs without it, and the flows, the gate and the tables pass specs around
without loading torch or Avalanche."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def face_arrays(folder: str | Path, splits=SPLITS, masks: bool = False) -> dict[str, Path]:
    """One method's faces on disk: {"train_x": <folder>/train-x.npy (N, S, S, 3) uint8,
    "train_y": train-y.npy (N,) labels, ...}, with "<split>_mask" (N, S, S) when `masks`."""
    kinds = ("x", "y", "mask") if masks else ("x", "y")
    return {f"{s}_{k}": Path(folder) / f"{s}-{k}.npy" for s in splits for k in kinds}


def beside(images: str | Path, kind: str) -> Path:
    """The array of `kind` that goes with `<split>-x.npy`: "y" labels, "mask" (N, S, S) uint8 blend
    or forgery masks, "landmarks" (N, 68, 2) float32 crop pixels (dfcl.data.landmarks.stored rows)."""
    images = Path(images)
    return images.with_name(images.name.rsplit("-", 1)[0] + f"-{kind}.npy")


def manifest_column(images: str | Path, column: str) -> pd.Series | None:
    """One column of the manifest beside `<method>/<split>-x.npy`, for that split's faces in array
    order, as text ("" where a row left it empty); None when there is no manifest (faces not from
    dfcl.data.extraction) or it lacks the column (faces extracted before it was recorded)."""
    images = Path(images)
    manifest = images.parent / "manifest.csv"
    if not manifest.is_file():
        return None
    rows = pd.read_csv(manifest, usecols=lambda c: c in ("split", "index", column), keep_default_na=False)
    if column not in rows.columns:
        return None
    split = images.name.split("-")[0]
    return rows[(rows["split"] == split) & (rows["index"] >= 0)].sort_values("index")[column]


def face_videos(images: str | Path) -> np.ndarray | None:
    """The source video (file) of every face of `<method>/<split>-x.npy`, in array order."""
    sources = manifest_column(images, "source")
    return None if sources is None else sources.to_numpy(str)


def face_inside(images: str | Path) -> np.ndarray | None:
    """The share of each face's box inside its picture (the manifest's `inside`), in array order;
    NaN for a face whose picture size was not known."""
    inside = manifest_column(images, "inside")
    return None if inside is None else pd.to_numeric(inside, errors="coerce").to_numpy(float)


@dataclass
class ExperienceSpec:
    """One learned (or to-be-learned) method: where its decoded train/test faces live."""
    key: str          # "<dataset>/<method>"
    dataset: str
    method: str
    version: str      # DVC hash of the processed dataset it came from
    train_x: str
    train_y: str
    test_x: str
    test_y: str
    val_x: str = ""   # validation faces (threshold, early stopping); "" for data extracted without
    val_y: str = ""
    digest: str = ""  # once learned: SHA-256 of its pinned arrays (dfcl.learning.pinning), and their sizes
    faces: dict = field(default_factory=dict)
    learned_at: str = ""  # once learned: when (UTC, ISO 8601), for the model card
    synthetic: bool = False  # drawn, not photographed (the demo's data): for the model card
