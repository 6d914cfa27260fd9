"""Face arrays on disk: the one place their file layout is spelled, and the video each face came
from. No torch here: face extraction runs without it."""
from __future__ import annotations

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
    or forgery masks, "landmarks" (N, 68, 2) float32 crop pixels (dfcl.landmarks.stored rows)."""
    images = Path(images)
    return images.with_name(images.name.rsplit("-", 1)[0] + f"-{kind}.npy")


def face_videos(images: str | Path) -> np.ndarray | None:
    """The source video (file) of every face of `<method>/<split>-x.npy`, in array order, from
    the manifest beside it; None when there is no manifest (faces not from dfcl.extraction)."""
    images = Path(images)
    manifest = images.parent / "manifest.csv"
    if not manifest.is_file():
        return None
    split = images.name.split("-")[0]
    rows = pd.read_csv(manifest, usecols=["split", "index", "source"], keep_default_na=False)
    rows = rows[(rows["split"] == split) & (rows["index"] >= 0)].sort_values("index")
    return rows["source"].to_numpy(str)
