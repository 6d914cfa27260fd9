"""The torch Dataset over the uint8 face arrays that extraction writes (dfcl.data.arrays)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dfcl.config import AugmentConfig
from dfcl.data.arrays import beside
from dfcl.data.augment import Augmenter
from dfcl.data.masks import target_mask


def face_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 RGB (S, S, 3) -> float (3, S, S) in [0, 1]: what every model takes (each model
    normalises its input itself, see models/normalize.py)."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255)  # a writable copy of the memmap


def first_of_each_face(faces: np.ndarray) -> np.ndarray:
    """Indices (in order) that keep each distinct face once: FF++ originals, for one, are the
    real class of every method."""
    return np.sort(np.unique(faces.reshape(len(faces), -1), axis=0, return_index=True)[1])


class PicklesAsSettings:
    """A dataset over memory-mapped arrays that pickles as its settings (`SETTINGS`) and opens its
    files again when unpickled, so a DataLoader worker started by spawn maps the same files
    instead of receiving a copy of them."""

    SETTINGS: tuple[str, ...] = ()

    def __getstate__(self):
        return {k: getattr(self, k) for k in self.SETTINGS}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()


class FaceArrayDataset(PicklesAsSettings, Dataset):
    """Faces from a decoded .npy cache (memory-mapped, so epochs never re-decode JPEGs).

    `augment`: None/False for none, or the params' `augment:` section (see dfcl.data.augment),
    applied to the uint8 face before normalisation.

    `masks`: items are (face, label, mask (1, S, S)) instead of (face, label), the target of a
    model's mask head (dfcl.data.masks.target_mask: a real's is empty, a fake's its row of the
    `<split>-mask.npy` beside the faces, else unknown). Every dataset a strategy sees must agree
    on it: a batch is collated from items of one shape."""

    SETTINGS = ("images_path", "labels_path", "augment", "masks")

    def __init__(self, images_path: str | Path, labels_path: str | Path, augment: AugmentConfig | dict | None = None,
                 masks: bool = False):
        if augment is not None and augment is not False and not isinstance(augment, (AugmentConfig, dict)):
            raise TypeError(f"augment={augment!r} is not accepted: pass the params' augment section "
                            "(augment=params.augment), or None for no augmentation")
        self.images_path, self.labels_path = str(images_path), str(labels_path)
        self.augment = augment if isinstance(augment, (AugmentConfig, dict)) else None
        self.masks = bool(masks)
        self._open()

    def _open(self):
        self.images = np.load(self.images_path, mmap_mode="r")
        self.targets = torch.from_numpy(np.load(self.labels_path)).long().tolist()
        self._augmenter = Augmenter(self.augment) if self.augment is not None else None
        stored = beside(self.images_path, "mask")
        self._masks = np.load(stored, mmap_mode="r") if self.masks and stored.is_file() else None


    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        image = np.array(self.images[i])  # a copy: the memory-mapped cache stays untouched
        if not self.masks:
            if self._augmenter is not None:
                image = self._augmenter(image)
            return face_tensor(image), self.targets[i]
        mask = target_mask(self.targets[i], image.shape[0], None if self._masks is None else self._masks[i])
        return masked_item(image, self.targets[i], mask, self._augmenter)


def masked_item(image: np.ndarray, label: int, mask: np.ndarray, augmenter: Augmenter | None,
                rng: np.random.Generator | None = None):
    """(face, label, mask (1, S, S)) with the mask moved as the augmentation moves the face
    (`rng`: the augmentation's draws, see Augmenter)."""
    if augmenter is not None:
        image, mask = augmenter(image, mask, rng=rng)
    return face_tensor(image), label, torch.from_numpy(np.ascontiguousarray(mask, np.float32))[None]
