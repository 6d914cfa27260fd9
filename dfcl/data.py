"""Face arrays: reading an image, and the torch Dataset
over the uint8 arrays that face extraction writes (see dfcl.faces)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset


def read_image(path: Path) -> np.ndarray | str:
    """The image as RGB uint8, or the reason it cannot be used."""
    if not path.is_file() or path.stat().st_size == 0:
        return "missing or empty file"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return "unreadable image (corrupt or not an image)"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class FaceArrayDataset(Dataset):
    """Faces from a decoded .npy cache (memory-mapped, so epochs never re-decode JPEGs).

    It pickles as the file path, so a strategy checkpoint (e.g. a replay buffer holding a
    subset of it) stays small and points at the DVC-versioned cache instead of copying it."""

    MEAN = 0.5
    STD = 0.25

    def __init__(self, images_path: str | Path, labels_path: str | Path, augment: bool = False):
        self.images_path, self.labels_path, self.augment = str(images_path), str(labels_path), augment
        self._open()

    def _open(self):
        self.images = np.load(self.images_path, mmap_mode="r")
        self.targets = torch.from_numpy(np.load(self.labels_path)).long().tolist()

    def __getstate__(self):
        return {"images_path": self.images_path, "labels_path": self.labels_path, "augment": self.augment}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        x = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1).float().div_(255)
        if self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (x - self.MEAN) / self.STD, self.targets[i]
