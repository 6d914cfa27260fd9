"""Faces out of frames and images: K evenly spaced frames of a video (OpenCV), the most confident
face of each (facenet-pytorch MTCNN, batched, on the GPU when there is one), a square crop around
it enlarged by `faces.margin`, resized to `data.image_size`; the same box cut from the mask video
when FF++ ships one; dlib's 68 landmarks of each kept face, in crop pixels (dfcl.data.landmarks).
Images are re-framed the same way (`faces.detect_in_images`: MTCNN finds the face again and it is
cropped at the same margin), so training faces and the faces `dfcl detect` cuts from photos and
videos share one geometry; with it off, an image is taken as a face crop and only resized.
A whole dataset goes through dfcl.data.extraction (the DVC stage `extract_faces_<dataset>`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

# Video reading lives beside image reading (dfcl.data.images): one set of checks and limits for every reader.
from dfcl.config import FacesConfig, Params
from dfcl.data.images import frame_indices, read_frames, read_image  # noqa: F401
from dfcl.data.landmarks import LandmarkPredictor, stored, to_crop

log = logging.getLogger("dfcl.data.faces")


@dataclass(frozen=True)
class FaceSettings:
    size: int
    frames_per_video: int
    margin: float
    min_score: float
    min_face_size: int
    detect_max_side: int
    batch_size: int
    device: str
    detect_in_images: bool
    landmarks: bool = True


    @classmethod
    def from_params(cls, params: Params) -> "FaceSettings":
        """The faces section at the model's input size (data.image_size)."""
        f = params.faces
        return cls(size=params.data.image_size, frames_per_video=f.frames_per_video, margin=f.margin,
                   min_score=f.min_score, min_face_size=f.min_face_size, detect_max_side=f.detect_max_side,
                   batch_size=f.batch_size, device=f.device, detect_in_images=f.detect_in_images,
                   landmarks=f.landmarks)

    def searchable(self, h: int, w: int) -> bool:
        """Can MTCNN look for faces in an h x w frame? Its image pyramid needs the short side, at
        detection scale, to be at least min_face_size (below it, it raises on an empty pyramid)."""
        scale = min(1.0, self.detect_max_side / max(h, w, 1))
        return min(round(h * scale), round(w * scale)) >= self.min_face_size

    def detection_key(self) -> str:
        """What MTCNN's output depends on; margin, size and min_score only change the crops."""
        relevant = [self.frames_per_video, self.min_face_size, self.detect_max_side]
        return hashlib.sha1(json.dumps(relevant).encode()).hexdigest()[:12]


def framing_of(faces: FacesConfig) -> dict:
    """The face geometry a model is trained on, recorded with it (registered metadata `framing`)
    so that detection cuts faces as training did: the crop's margin around the MTCNN box, and
    whether images were re-framed that way too or taken whole as crops."""
    return {"margin": float(faces.margin), "images": "reframed" if faces.detect_in_images else "whole"}


@dataclass
class FileFaces:
    """The faces found in one file. Arrays hold kept faces only; `skipped` lists the rest."""
    n_frames: int
    frames: np.ndarray           # (N,) frame index of each kept face
    boxes: np.ndarray            # (N, 4) x1 y1 x2 y2 in frame pixels
    landmarks: np.ndarray        # (N, 10) MTCNN's eyes, nose, mouth corners as x,y pairs, frame pixels
    scores: np.ndarray           # (N,) MTCNN probability (NaN for images taken as crops)
    crops: np.ndarray            # (N, S, S, 3) uint8 RGB
    masks: np.ndarray | None     # (N, S, S) uint8, when a mask video exists
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (frame or -1 for the file, reason)
    points: np.ndarray | None = None  # (N, 68, 2) crop pixels, dfcl.data.landmarks.stored rows; None: not predicted
    shape: tuple[int, int] | None = None  # (h, w) of the frames or image the boxes are in; None: unknown

    @classmethod
    def empty(cls, size: int, reason: str, n_frames: int = 0, skipped=None) -> "FileFaces":
        return cls(n_frames, np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros((0, 10), np.float32),
                   np.zeros(0, np.float32), np.zeros((0, size, size, 3), np.uint8), None,
                   skipped if skipped is not None else [(-1, reason)])


Detection = tuple  # (box[4], landmarks[10], score) in frame pixels, or None when no face


def save_detections(path: Path, found: dict[int, Detection | None]) -> None:
    """A video's detections as JSON (a few KB), written atomically so a crash leaves no half entry.
    Frame counts and read problems are not kept: the frames are decoded again anyway."""
    entry = {"faces": {str(i): None if d is None else [np.asarray(d[0]).tolist(), np.asarray(d[1]).tolist(), d[2]]
                       for i, d in found.items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, path)


def load_detections(path: Path) -> dict[int, Detection | None]:
    faces = json.loads(path.read_text())["faces"]
    return {int(i): None if d is None else (np.array(d[0]), np.array(d[1]), d[2]) for i, d in faces.items()}


def inside_share(box, h: int, w: int) -> float:
    """The share of the face box's area (MTCNN's, x1 y1 x2 y2) inside an h x w picture: 1 for a face
    wholly in it; tight face crops (FF++'s, DFDC's) have boxes running off the picture."""
    x1, y1, x2, y2 = (float(v) for v in box)
    area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
    if area <= 0:
        return 0.0
    return max(min(x2, w) - max(x1, 0.0), 0.0) * max(min(y2, h) - max(y1, 0.0), 0.0) / area


def square_of(box, margin: float, shape: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(left, top, side) of the square around the box's centre, `margin` times its longer side.

    With the image's `shape` (h, w), the square is kept inside the picture: moved in where it
    would leave it, and no larger than the picture's shorter side. Black padding where a face sits
    near an edge differs between datasets and between their reals and fakes (and a blend's colour
    shift changes it only in fakes), a shortcut a detector learns instead of forgery; a face a few
    pixels off-centre is not."""
    x1, y1, x2, y2 = box
    side = max(int(round(max(x2 - x1, y2 - y1) * margin)), 1)
    if shape is not None:
        side = min(side, *shape[:2])
    left, top = int(round((x1 + x2) / 2 - side / 2)), int(round((y1 + y2) / 2 - side / 2))
    if shape is not None:
        h, w = shape[:2]
        left, top = min(max(left, 0), w - side), min(max(top, 0), h - side)
    return left, top, side


def crop_square(image: np.ndarray, box, margin: float, size: int) -> np.ndarray:
    """The square of `square_of`, kept inside the picture, resized to size x size."""
    left, top, side = square_of(box, margin, image.shape)
    out = image[top:top + side, left:left + side]
    return cv2.resize(np.ascontiguousarray(out), (size, size),
                      interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


class FaceDetector:
    """facenet-pytorch MTCNN (its weights ship inside the package: nothing is downloaded)."""

    def __init__(self, settings: FaceSettings):
        import torch
        from facenet_pytorch import MTCNN

        name = settings.device
        self.device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                                   ("cpu" if name == "auto" else name))
        self.settings = settings
        self.mtcnn = MTCNN(keep_all=True, min_face_size=settings.min_face_size, device=self.device)

    def detect(self, frames: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, float] | None]:
        """The most confident face per frame as (box, landmarks, score) in frame pixels, or None.
        Frames of one video share a size, so they go to MTCNN in batches."""
        return [faces[0] if faces else None for faces in self.detect_all(frames)]

    def detect_all(self, frames: list[np.ndarray]) -> list[list[tuple[np.ndarray, np.ndarray, float]]]:
        """Every face of each frame as (box, landmarks, score) in frame pixels, most confident first."""
        if not frames:
            return []
        h, w = frames[0].shape[:2]
        if not self.settings.searchable(h, w):  # a thumbnail or a banner: no face of min_face_size fits
            return [[] for _ in frames]
        scale = min(1.0, self.settings.detect_max_side / max(h, w))  # detection cost grows with pixels
        small = [cv2.resize(f, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
                 if scale < 1 else f for f in frames]
        results = []
        bs = self.settings.batch_size
        for start in range(0, len(small), bs):
            boxes, probs, points = self.mtcnn.detect(np.stack(small[start:start + bs]), landmarks=True)
            for b, p, lm in zip(boxes, probs, points):
                if b is None or len(b) == 0:
                    results.append([])
                    continue
                order = np.argsort(-np.asarray(p, dtype=float))
                results.append([(np.asarray(b[k], float) / scale, np.asarray(lm[k], float).reshape(-1) / scale,
                                 float(p[k])) for k in order])
        return results


def _mask_like(mask: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """The mask frame as one channel at the video frame's size (boxes are in frame pixels)."""
    gray = cv2.cvtColor(mask, cv2.COLOR_RGB2GRAY)
    h, w = frame.shape[:2]
    return gray if gray.shape == (h, w) else cv2.resize(gray, (w, h), interpolation=cv2.INTER_NEAREST)


def crop_points(image: np.ndarray, box, points5, s: FaceSettings, predictor: LandmarkPredictor | None) -> np.ndarray:
    """One face's stored landmark row (dfcl.data.landmarks.stored) in the pixels of its crop."""
    square = square_of(box, s.margin, image.shape)
    fitted = predictor(image, box) if predictor is not None else None
    five = None if points5 is None else np.asarray(points5, np.float32).reshape(5, 2)
    return stored(None if fitted is None else to_crop(fitted, square, s.size),
                  None if five is None else to_crop(five, square, s.size))


def faces_in_video(frames: dict[int, np.ndarray], n: int, problem: str | None,
                   found: dict[int, Detection | None], mask_path: Path | None, s: FaceSettings,
                   predictor: LandmarkPredictor | None = None) -> FileFaces:
    """Crops (and mask crops, and 68 landmarks) of the most confident face of each sampled frame."""
    if not frames:
        return FileFaces.empty(s.size, problem, n)
    skipped = [(-1, problem)] if problem else []
    masks_src = {}
    if mask_path is not None:
        masks_src, _, mask_problem = read_frames(mask_path, s.frames_per_video)
        if mask_problem and not masks_src:
            skipped.append((-1, f"mask video unusable: {mask_problem}"))
    keep = []
    for i in sorted(frames):
        det = found.get(i)
        if det is None:
            skipped.append((i, "no face found"))
        elif det[2] < s.min_score:
            skipped.append((i, f"face score {det[2]:.3f} below faces.min_score {s.min_score}"))
        else:
            keep.append((i, det))
    if not keep:
        return FileFaces.empty(s.size, "", n, skipped + [(-1, "no face in any sampled frame")])
    crops = [crop_square(frames[i], d[0], s.margin, s.size) for i, d in keep]
    masks = None
    if masks_src:
        masks = np.stack([crop_square(_mask_like(masks_src[i], frames[i]), d[0], s.margin, s.size)
                          if i in masks_src else np.zeros((s.size, s.size), np.uint8) for i, d in keep])
    points = np.stack([crop_points(frames[i], d[0], d[1], s, predictor) for i, d in keep]) if s.landmarks else None
    return FileFaces(n, np.array([i for i, _ in keep]), np.stack([d[0] for _, d in keep]).astype(np.float32),
                     np.stack([d[1] for _, d in keep]).astype(np.float32),
                     np.array([d[2] for _, d in keep], np.float32), np.stack(crops), masks, skipped, points,
                     frames[keep[0][0]].shape[:2])


def faces_in_image(path: Path, s: FaceSettings, detector: FaceDetector | None,
                   predictor: LandmarkPredictor | None = None) -> FileFaces:
    image = read_image(path)
    if isinstance(image, str):
        return FileFaces.empty(s.size, image)
    return face_of_image(image, detector.detect([image])[0] if detector else None, s, predictor, whole=detector is None)


def face_of_image(image: np.ndarray, det: Detection | None, s: FaceSettings, predictor: LandmarkPredictor | None,
                  whole: bool = False) -> FileFaces:
    """An image's face: `whole`, the image taken as a face crop (only resized, landmarks fitted in
    it); else the detection `det` re-framed at `faces.margin` like a face found in a video."""
    h, w = image.shape[:2]
    if whole:
        crop = cv2.resize(image, (s.size, s.size), interpolation=cv2.INTER_AREA)
        fitted = predictor(image, (0, 0, w, h)) if predictor is not None else None
        points = stored(None if fitted is None else fitted * np.float32([s.size / w, s.size / h]), None)
        return FileFaces(1, np.zeros(1, np.int64), np.array([[0, 0, w, h]], np.float32),
                         np.full((1, 10), np.nan, np.float32), np.full(1, np.nan, np.float32), crop[None], None,
                         points=points[None] if s.landmarks else None, shape=(h, w))
    if det is None or det[2] < s.min_score:
        return FileFaces.empty(s.size, "no face found" if det is None else f"face score {det[2]:.3f} below faces.min_score")
    points = crop_points(image, det[0], det[1], s, predictor)[None] if s.landmarks else None
    return FileFaces(1, np.zeros(1, np.int64), det[0][None].astype(np.float32), det[1][None].astype(np.float32),
                     np.array([det[2]], np.float32), crop_square(image, det[0], s.margin, s.size)[None], None,
                     points=points, shape=(h, w))


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prefetched(fn, items, depth: int = 2):
    """fn(item) for each item, computed `depth` ahead in a thread: OpenCV decodes the next
    videos (it releases the GIL) while MTCNN works on the current one. Bounded, unlike
    Executor.map, so a long dataset never sits in memory as decoded frames."""
    with ThreadPoolExecutor(1) as pool:
        pending = deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > depth:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
