"""68-point facial landmarks (dlib's shape predictor) for the faces MTCNN found.

SBI blends inside the convex hull of a face's 68 landmarks (jaw, brows, nose, eyes, mouth);
MTCNN gives only 5 points (eyes, nose, mouth corners), which span the inner face. The predictor
file ships inside the registry package `face-recognition-models` (trained on iBUG 300-W: see the
docs/datasets.md, licence note), and dlib comes prebuilt (`dlib-bin`): nothing is downloaded. About 3 ms a
face on a CPU core. Points are stored per face in crop pixels (`<split>-landmarks.npy`, see
dfcl.data.arrays); detection and evaluation never need them.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

N_POINTS = 68


def predictor_file() -> Path:
    """The 68-point model inside face-recognition-models. Found without importing the package:
    its __init__ imports pkg_resources, which current setuptools no longer ships."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face-recognition-models is not installed (it holds dlib's 68-point predictor)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from face-recognition-models")
    return path


class LandmarkPredictor:
    """dlib's 68-point shape predictor, fitted inside a face box found by MTCNN."""

    def __init__(self):
        import dlib

        self._dlib = dlib
        self._predict = dlib.shape_predictor(str(predictor_file()))

    def __call__(self, image: np.ndarray, box) -> np.ndarray | None:
        """(68, 2) float32 (x, y) in image pixels, or None when the fit is not a face: dlib always
        returns 68 points, so a fit whose points do not lie around the box (a profile, an occluded
        or cut-off face) is refused rather than stored as a wrong hull."""
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (np.isfinite([x1, y1, x2, y2]).all() and x2 > x1 and y2 > y1):
            return None
        rect = self._dlib.rectangle(int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2)))
        shape = self._predict(np.ascontiguousarray(image, dtype=np.uint8), rect)
        points = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
        return points if plausible(points, (x1, y1, x2, y2)) else None


def plausible(points: np.ndarray, box) -> bool:
    """The 68 points span a good part of the box and are centred inside it."""
    if points.shape != (N_POINTS, 2) or not np.isfinite(points).all():
        return False
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    (px1, py1), (px2, py2) = points.min(0), points.max(0)
    cx, cy = (px1 + px2) / 2, (py1 + py2) / 2
    return (px2 - px1 >= 0.4 * w and py2 - py1 >= 0.4 * h
            and x1 <= cx <= x2 and y1 <= cy <= y2)


def to_crop(points: np.ndarray, square: tuple[int, int, int], size: int) -> np.ndarray:
    """Image-pixel points -> pixels of the size x size crop of the square (left, top, side)."""
    left, top, side = square
    return ((np.asarray(points, np.float32) - np.float32([left, top])) * np.float32(size / side)).astype(np.float32)


def stored(points68: np.ndarray | None, points5: np.ndarray | None) -> np.ndarray:
    """One face's row of `<split>-landmarks.npy`: the 68 points in crop pixels, or, where the
    predictor refused the face, MTCNN's 5 points in rows 0-4 and NaN in the rest (all NaN when
    neither is known, e.g. an image taken whole as a crop)."""
    out = np.full((N_POINTS, 2), np.nan, np.float32)
    if points68 is not None:
        out[:] = points68
    elif points5 is not None and np.isfinite(points5).all():
        out[:5] = np.asarray(points5, np.float32).reshape(5, 2)
    return out


def kind(row: np.ndarray) -> str:
    """'68', '5' or 'none': which points a stored row holds."""
    if np.isfinite(row).all():
        return "68"
    return "5" if np.isfinite(row[:5]).all() else "none"
