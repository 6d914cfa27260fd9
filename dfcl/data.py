"""Image datasets: layout discovery, pandas manifests, a decoded uint8 cache and the
torch Dataset that reads it.

Known layouts (a dataset folder is one of):
  * per-method:  {train,test}/{<real>,<Method1>,<Method2>,...}/*.jpg   (e.g. FF++ crops)
  * real-fake:   real/*.jpg + fake/*.jpg  -> one method, named by --method or the folder
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
KNOWN_LAYOUTS = (
    "per-method: {train,test}/{<real>,<Method>...}/*.jpg",
    "real-fake: real/*.jpg + fake/*.jpg",
)


class LayoutError(ValueError):
    pass


@dataclass
class Discovered:
    layout: str
    methods: list[str]          # fake methods, in the order they become experiences
    manifest: pd.DataFrame      # path, split, label (0 real / 1 fake), method, experience


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _stable_order(paths: list[str], seed: int) -> list[str]:
    """A shuffle that depends only on the names and the seed, not on listing order."""
    return sorted(paths, key=lambda p: hashlib.sha1(f"{seed}:{p}".encode()).hexdigest())


def discover(root: str | Path, real_names: list[str], method: str | None = None,
             test_fraction: float = 0.2, seed: int = 0, methods: list[str] | None = None) -> Discovered:
    """Recognise the layout of `root` and list every image with its split, label and method.

    Real images are dealt round-robin to the methods (in a seeded, name-stable order), so every
    experience has real and fake faces and no real image is in two experiences."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder")
    subdirs = {p.name: p for p in root.iterdir() if p.is_dir()}
    real_lower = {n.lower() for n in real_names}
    rows = []
    if {"train", "test"} <= set(subdirs):
        layout = "per-method"
        found = {}
        for split in ("train", "test"):
            for cls in sorted(p for p in subdirs[split].iterdir() if p.is_dir()):
                found.setdefault(cls.name, {})[split] = _images(cls)
        reals = [n for n in found if n.lower() in real_lower]
        if len(reals) != 1:
            raise LayoutError(f"{root}: expected one real-face folder (one of {real_names}) "
                              f"under train/ and test/, found {reals or 'none'}")
        real = reals[0]
        fakes = [n for n in found if n != real]
        if methods:
            unknown = sorted(set(methods) - set(fakes))
            if unknown:
                raise LayoutError(f"{root}: no method folder named {unknown}; it has {fakes}")
            fakes = list(methods)
        if not fakes:
            raise LayoutError(f"{root}: no fake-method folders beside {real!r}")
        for name in [real] + fakes:
            for split in ("train", "test"):
                files = found[name].get(split, [])
                if not files:
                    raise LayoutError(f"{root}: {split}/{name} is empty or missing: every class needs images in train and test")
                label = 0 if name == real else 1
                rows += [(str(p.relative_to(root)), split, label, None if label == 0 else name) for p in files]
    elif {"real", "fake"} <= {n.lower() for n in subdirs}:
        layout = "real-fake"
        name = method or (root.parent.name if root.name.lower() in {"images", "data"} else root.name)
        fakes = [name]
        for cls, label in (("real", 0), ("fake", 1)):
            folder = next(p for n, p in subdirs.items() if n.lower() == cls)
            files = [str(p.relative_to(root)) for p in _images(folder)]
            if not files:
                raise LayoutError(f"{root}: {folder.name}/ holds no images")
            ordered = _stable_order(files, seed)
            n_test = max(1, round(len(ordered) * test_fraction))
            rows += [(p, "test" if i < n_test else "train", label, None if label == 0 else name)
                     for i, p in enumerate(ordered)]
    else:
        raise LayoutError(f"{root}: unknown dataset layout (sub-folders: {sorted(subdirs) or 'none'}). "
                          f"Known layouts: {'; '.join(KNOWN_LAYOUTS)}")

    manifest = pd.DataFrame(rows, columns=["path", "split", "label", "method"])
    manifest["experience"] = manifest["method"]
    for split in ("train", "test"):
        real_rows = manifest[(manifest.label == 0) & (manifest.split == split)]
        ordered = _stable_order(real_rows.path.tolist(), seed)
        owner = {p: fakes[i % len(fakes)] for i, p in enumerate(ordered)}
        manifest.loc[real_rows.index, "experience"] = real_rows.path.map(owner)
    manifest = manifest[manifest.experience.isin(fakes)].reset_index(drop=True)
    return Discovered(layout=layout, methods=fakes, manifest=manifest)


def cap_per_class(manifest: pd.DataFrame, max_per_class: int, seed: int) -> pd.DataFrame:
    """Keep at most `max_per_class` images per (experience, split, label): for quick runs."""
    if not max_per_class:
        return manifest
    keep = []
    for _, group in manifest.groupby(["experience", "split", "label"], sort=False):
        ordered = _stable_order(group.path.tolist(), seed)[:max_per_class]
        keep.append(group[group.path.isin(ordered)])
    return pd.concat(keep).sort_index().reset_index(drop=True)


def _read_face(path: Path, size: int) -> np.ndarray | str:
    """The image as RGB uint8 (size x size), or the reason it cannot be used."""
    if not path.is_file() or path.stat().st_size == 0:
        return "missing or empty file"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return "unreadable image (corrupt or not an image)"
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_images(root: Path, paths: list[str], size: int, workers: int = 4):
    """Decode and resize every image once; returns (uint8 array N x H x W x 3, ok mask, reasons)."""
    # OpenCV releases the GIL while decoding, so threads give real parallelism here.
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda p: _read_face(root / p, size), paths))
    ok = np.array([not isinstance(r, str) for r in results], dtype=bool)
    images = np.stack([r for r in results if not isinstance(r, str)]) if ok.any() else np.zeros((0, size, size, 3), np.uint8)
    reasons = {p: r for p, r in zip(paths, results) if isinstance(r, str)}
    return images, ok, reasons


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
