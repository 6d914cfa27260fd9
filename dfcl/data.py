"""Face arrays: where extraction writes them (the one place their file layout is spelled), the
video of each face, reading an image, and the torch Dataset over the uint8 arrays."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from dfcl.augment import DEFAULTS, Augmenter

SPLITS = ("train", "val", "test")


def face_arrays(folder: str | Path, splits=SPLITS, masks: bool = False) -> dict[str, Path]:
    """One method's faces on disk: {"train_x": <folder>/train-x.npy (N, S, S, 3) uint8,
    "train_y": train-y.npy (N,) labels, ...}, with "<split>_mask" (N, S, S) when `masks`."""
    kinds = ("x", "y", "mask") if masks else ("x", "y")
    return {f"{s}_{k}": Path(folder) / f"{s}-{k}.npy" for s in splits for k in kinds}


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


# What augment=True meant before dfcl.augment (a flip with p=0.5), for older checkpoints.
LEGACY_AUGMENT = {**{key: 0 for key in DEFAULTS if key.endswith("_p")}, "flip_p": 0.5}


def read_image(path: Path) -> np.ndarray | str:
    """The image as RGB uint8, or the reason it cannot be used."""
    if not path.is_file() or path.stat().st_size == 0:
        return "missing or empty file"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return "unreadable image (corrupt or not an image)"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def face_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 RGB (S, S, 3) -> float (3, S, S) in [0, 1]: what every model takes (each model
    normalises its input itself, see models/normalize.py)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)


def first_of_each_face(faces: np.ndarray) -> np.ndarray:
    """Indices (in order) that keep each distinct face once: FF++ originals, for one, are the
    real class of every method."""
    return np.sort(np.unique(faces.reshape(len(faces), -1), axis=0, return_index=True)[1])


class FaceArrayDataset(Dataset):
    """Faces from a decoded .npy cache (memory-mapped, so epochs never re-decode JPEGs).

    It pickles as the file path, so a strategy checkpoint (e.g. a replay buffer holding a
    subset of it) stays small and points at the DVC-versioned cache instead of copying it.

    `augment`: None/False for none, or the params' `augment:` section (see dfcl.augment),
    applied to the uint8 face before normalisation."""

    def __init__(self, images_path: str | Path, labels_path: str | Path, augment: dict | None = None):
        if augment is not None and augment is not False and not isinstance(augment, dict):
            raise TypeError(f"augment={augment!r} is not accepted: pass the params' augment section "
                            "(augment=params['augment']), or None for no augmentation")
        self.images_path, self.labels_path = str(images_path), str(labels_path)
        self.augment = dict(augment) if isinstance(augment, dict) else None
        self._open()

    def _open(self):
        self.images = np.load(self.images_path, mmap_mode="r")
        self.targets = torch.from_numpy(np.load(self.labels_path)).long().tolist()
        self._augmenter = Augmenter(self.augment) if self.augment is not None else None

    def __getstate__(self):
        return {"images_path": self.images_path, "labels_path": self.labels_path, "augment": self.augment}

    def __setstate__(self, state):
        if isinstance(state.get("augment"), bool):  # pickled before dfcl.augment (checkpoints)
            state = {**state, "augment": dict(LEGACY_AUGMENT) if state["augment"] else None}
        self.__dict__.update(state)
        self._open()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        image = np.array(self.images[i])  # a copy: the memory-mapped cache stays untouched
        if self._augmenter is not None:
            image = self._augmenter(image)
        return face_tensor(image), self.targets[i]
