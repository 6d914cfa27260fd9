"""Self-blended pseudo-fakes (SBI).

After K. Shiohara and T. Yamasaki, "Detecting Deepfakes with Self-Blended Images",
CVPR 2022 (https://arxiv.org/abs/2204.08376): a fake is synthesised from ONE real face by
blending a slightly altered copy of it (the source) back onto another copy (the target)
inside a soft face mask. The result carries only the generic traces of face forgery
(a blending boundary, colour and sharpness mismatch, a small landmark misalignment) and
none of a particular generator's, so a detector trained on such fakes learns cues that
carry over to forgery methods it has never seen.

Everything is cv2/numpy on small crops (a few hundred microseconds a face at 64 px).
Crops are square, face centred (`faces.margin` x the MTCNN box); the blending mask is the convex
hull of the face's 68 dlib landmarks stored at ingest (`<split>-landmarks.npy`, crop pixels), in
one of the paper's four hull variants, else a hull grown from MTCNN's 5 points, else an ellipse.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dfcl.config import AugmentConfig
from dfcl.data.arrays import beside
from dfcl.data.augment import Augmenter
from dfcl.data.datasets import PicklesAsSettings, face_tensor, masked_item
from dfcl.data.landmarks import kind as landmark_kind
from dfcl.data.masks import target_mask

# Paper (dynamic_blend): full-strength blends are the most common, partial ones add variety.
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
RESAMPLE_FACTOR = (1.2, 1.7)  # down-up resampling of the source or target (see _frequency_transform)
# The blend's boundary must lie inside the crop, where the detector can see it: the jaw points are
# pulled toward the nose tip by this share (the cropped faces' chins often lie outside the crop),
# and the whole outline is then kept at least EDGE of the side away from every edge.
JAW_PULL = (0.10, 0.35)
EDGE = 0.07


# --- source-target generator -------------------------------------------------------------

def _colour_transform(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB shift, hue/saturation/value shift, brightness/contrast (paper: albumentations
    RGBShift, HueSaturationValue, RandomBrightnessContrast) on float32 RGB in [0, 1].
    The mismatch of colour statistics between inner face and surroundings is one of the
    two artefacts SBI wants the detector to see."""
    if rng.random() < 0.5:
        x = x + rng.uniform(-20, 20, 3).astype(np.float32) / 255
        np.clip(x, 0, 1, out=x)
    if rng.random() < 0.7:
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)  # float input: H in degrees, S and V in [0, 1]
        h, s, v = cv2.split(hsv)
        h = np.mod(h + rng.uniform(-6, 6), 360).astype(np.float32)
        s = np.clip(s + rng.uniform(-0.1, 0.1), 0, 1).astype(np.float32)
        v = np.clip(v + rng.uniform(-0.1, 0.1), 0, 1).astype(np.float32)
        x = cv2.cvtColor(cv2.merge((h, s, v)), cv2.COLOR_HSV2RGB)
    contrast = 1 + rng.uniform(-0.1, 0.1)
    brightness = rng.uniform(-0.1, 0.1)
    x = x * np.float32(contrast) + np.float32(brightness)
    return np.clip(x, 0, 1, out=x)


def _frequency_transform(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Down-and-up resampling or sharpening, at random (the reference's RandomDownScale or
    Sharpen): a sharpness mismatch, the second artefact, as left by a generator's resampling.
    The reference shrinks its 380-px crops 2x or 4x; the same loss of detail relative to the face
    is a factor of about 1.2-1.7 on this project's 160-px crops (a wider Gaussian blur, as before,
    taught "blurrier inner face = fake", i.e. "sharper photo = real or fake" by dataset)."""
    size = x.shape[0]
    if rng.random() < 0.5:
        small = max(8, round(size / rng.uniform(*RESAMPLE_FACTOR)))
        down = cv2.resize(x, (small, small), interpolation=cv2.INTER_NEAREST)  # as the reference
        return cv2.resize(down, (size, size), interpolation=cv2.INTER_LINEAR)
    alpha, lightness = rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.0)
    # albumentations.Sharpen: identity blended with a Laplacian sharpening kernel
    sharpen = np.array([[-1, -1, -1], [-1, 8 + lightness, -1], [-1, -1, -1]], np.float32)
    identity = np.zeros((3, 3), np.float32)
    identity[1, 1] = 1
    kernel = (1 - alpha) * identity + alpha * sharpen
    return np.clip(cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REFLECT_101), 0, 1)


def _source_affine(size: int, rng: np.random.Generator) -> np.ndarray:
    """2x3 matrix: scale 0.95-1.05 about the centre and a shift of a few % of the side
    (paper: translate x +-3 %, y +-1.5 %, scale 0.95-1/0.95), which misaligns the pasted
    face's landmarks slightly, as a face swap does."""
    scale = rng.uniform(0.95, 1.05)
    tx, ty = rng.uniform(-0.03, 0.03) * size, rng.uniform(-0.015, 0.015) * size
    c = (size - 1) / 2
    return np.array([[scale, 0, c - scale * c + tx], [0, scale, c - scale * c + ty]], np.float32)


# --- blending mask ------------------------------------------------------------------------

def _fill_hulls(mask: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    for pts in parts:
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(pts).astype(np.int32)), 1.0, lineType=cv2.LINE_AA)
    return mask


def _extended_brows(p: np.ndarray) -> np.ndarray:
    """The 68 points with the brows raised by half their height above the eyes: a hull that
    takes in the forehead (Face X-ray / DeepFaceLab's "extended" mask)."""
    p = p.copy()
    ml, mr = (p[36] + p[0]) / 2, (p[16] + p[45]) / 2
    bot_l = np.stack([(p[36] + ml) / 2, p[36], p[37], p[38], p[39]])
    bot_r = np.stack([p[42], p[43], p[44], p[45], (p[45] + mr) / 2])
    p[17:22] += (p[17:22] - bot_l) / 2
    p[22:27] += (p[22:27] - bot_r) / 2
    return p


HULLS = ("facehull", "extended", "inner", "components")


def inside_crop(p: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The 68 points with the jaw (0-16) pulled toward the nose tip (30) by a random 10-35 %, then
    all points drawn toward the nose tip as far as needed to keep the outline EDGE x size away
    from every edge of the crop: a blend's boundary is then always in the picture."""
    p = p.astype(np.float32).copy()
    nose = p[30].copy()
    p[:17] += (nose - p[:17]) * np.float32(rng.uniform(*JAW_PULL))
    low, high = EDGE * size, (1 - EDGE) * size
    if not (low <= nose[0] <= high and low <= nose[1] <= high):
        nose = np.clip(nose, low, high)
    d = p - nose
    with np.errstate(divide="ignore", invalid="ignore"):  # a point on the nose needs no shrinking
        room = np.where(d > 0, (high - nose) / d, np.where(d < 0, (low - nose) / d, np.inf))
    return nose + d * np.float32(min(1.0, float(room.min())))


def _landmark_mask(p: np.ndarray, size: int, rng: np.random.Generator, variant: str | None = None) -> np.ndarray:
    """One of four blending regions of the 68 landmarks, at random: the hull of every point
    (the reference's facehull), the extended hull with the forehead (its "extended"), the inner
    face without the jaw line (brows, eyes, nose, mouth), and separate facial components (eyes
    with brows, nose, mouth). The reference's other two (DeepFaceLab's full face, and a union of
    jaw-to-brow components) cover the same region as the plain hull (IoU 1.00 here), so the last
    two replace them: boundaries inside the face, not only along its outline."""
    mask = np.zeros((size, size), np.float32)
    variant = variant or HULLS[int(rng.integers(len(HULLS)))]
    p = inside_crop(_extended_brows(p) if variant == "extended" else p, size, rng)
    if variant in ("facehull", "extended"):
        parts = [p]
    elif variant == "inner":
        parts = [p[17:68]]
    elif variant == "components":
        parts = [np.concatenate([p[17:22], p[36:42]]), np.concatenate([p[22:27], p[42:48]]), p[27:36], p[48:68]]
    else:
        raise ValueError(f"unknown hull {variant!r}; one of {', '.join(HULLS)}")
    return _fill_hulls(mask, parts)


def _five_point_polygon(pts: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """5 MTCNN points (eyes, nose, mouth corners) only span the inner face, so they are grown to
    a face-sized ellipse along the eye line: cheeks about one inter-ocular distance out, forehead
    above the eyes, chin below the mouth. Used where dlib found no 68 landmarks."""
    eyes, mouth = pts[:2].mean(0), pts[3:].mean(0)
    d = pts[1] - pts[0]
    iod = max(float(np.hypot(*d)), 0.1 * size)
    angle = math.degrees(math.atan2(d[1], d[0]))
    em = max(float(np.hypot(*(mouth - eyes))), 0.1 * size)
    axis = (mouth - eyes) / em  # points down the face
    top = eyes - axis * em * rng.uniform(0.5, 1.0)
    bottom = mouth + axis * em * rng.uniform(0.7, 0.9)
    centre = (top + bottom) / 2
    semi_h = float(np.hypot(*(bottom - top))) / 2
    semi_w = iod * rng.uniform(1.0, 1.25)
    cx, cy = (round(float(v)) for v in centre)
    ellipse = cv2.ellipse2Poly((cx, cy), (round(semi_w), round(semi_h)), round(angle), 0, 360, 15)
    return np.concatenate([pts, ellipse.astype(np.float32)])


def _base_mask(size: int, rng: np.random.Generator, landmarks: np.ndarray | None) -> np.ndarray:
    """The blending region before deformation: from 68 landmarks, 5 points, or (none known) an
    ellipse where a centred face's inner region is."""
    pts = None if landmarks is None else np.asarray(landmarks, np.float32).reshape(-1, 2)
    if pts is not None and len(pts) == 68 and landmark_kind(pts) != "68":
        pts = pts[:5] if landmark_kind(pts) == "5" else None  # a stored row without 68 points
    if pts is not None:
        if len(pts) < 3:
            raise ValueError(f"landmarks need at least 3 (x, y) points, got {len(pts)}")
        if len(pts) == 68:
            return _landmark_mask(pts, size, rng)
        if len(pts) == 5:
            pts = _five_point_polygon(pts, size, rng)
        return _fill_hulls(np.zeros((size, size), np.float32), [pts])
    mask = np.zeros((size, size), np.float32)
    # The crop is centred on the face box, and the face's visual centre (nose) sits a little
    # below the box centre.
    shift = 4  # sub-pixel precision for cv2.ellipse
    cx, cy = size * rng.uniform(0.47, 0.53), size * rng.uniform(0.52, 0.57)
    ax, ay = size * rng.uniform(0.25, 0.34), size * rng.uniform(0.30, 0.42)
    cv2.ellipse(mask, (int(cx * 16), int(cy * 16)), (int(ax * 16), int(ay * 16)),
                rng.uniform(-10, 10), 0, 360, 1.0, -1, cv2.LINE_AA, shift)
    return mask


def _warp_mask(mask: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask moved with the source (same affine m, as in the paper, so the pasted region
    follows the shifted face), then smoothly deformed at random (paper: ElasticTransform on
    the mask) so the boundary is not always a clean convex shape. One remap does both: a
    coarse 4x4 displacement grid, upsampled bicubically, gives a smooth field at a fraction
    of the cost of blurring per-pixel noise."""
    size = mask.shape[0]
    d = cv2.resize(rng.normal(0, 0.03 * size, (4, 4, 2)).astype(np.float32), (size, size),
                   interpolation=cv2.INTER_CUBIC)
    grid = np.arange(size, dtype=np.float32)
    x, y = grid[None, :] + d[:, :, 0], grid[:, None] + d[:, :, 1]
    inv = cv2.invertAffineTransform(m)  # output pixel -> mask pixel
    map_x = inv[0, 0] * x + inv[0, 1] * y + inv[0, 2]
    map_y = inv[1, 0] * x + inv[1, 1] * y + inv[1, 2]
    return cv2.remap(mask, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _soften(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random erosion/dilation, then a Gaussian blur of random width (paper: get_blend_mask),
    so the blending boundary varies from sharp to very soft; peak normalised to 1."""
    size = mask.shape[0]
    r = rng.random()
    if r < 2 / 3:
        k = 2 * int(rng.integers(1, max(2, size // 21) + 1)) + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        mask = cv2.erode(mask, kernel) if r < 1 / 3 else cv2.dilate(mask, kernel)
    kmax = max(5, round(size * 0.15) | 1)
    k = 2 * int(rng.integers(1, kmax // 2 + 1)) + 1  # odd, 3..kmax
    mask = cv2.GaussianBlur(mask, (k, k), k * rng.uniform(0.2, 0.5))
    peak = float(mask.max())
    return mask / peak if peak > 0 else mask


def photo_region(face: np.ndarray, black: int = 3) -> np.ndarray:
    """True where the crop shows the photo: False on whole rows and columns of black padding at
    its edges (crops cut before dfcl.data.faces kept them inside the picture have such strips)."""
    dark = face.max(axis=2) <= black
    rows, cols = dark.all(axis=1), dark.all(axis=0)
    keep = np.ones(dark.shape, bool)
    for line, axis in ((rows, 0), (cols, 1)):
        n = len(line)
        lead = int(np.argmin(line)) if not line.all() else n
        trail = int(np.argmin(line[::-1])) if not line.all() else n
        if axis == 0:
            keep[:lead] = keep[n - trail:] = False
        else:
            keep[:, :lead] = keep[:, n - trail:] = False
    return keep


def self_blend(face: np.ndarray, rng: np.random.Generator, landmarks: np.ndarray | None = None,
               return_parts: bool = False, whole: bool = False):
    """A self-blended fake of one real face.

    face: uint8 RGB (S, S, 3). landmarks: optional (K, 2) pixel (x, y) points in the crop
    (5 MTCNN points or a dense set). Returns (fake uint8 (S, S, 3), mask float32 (S, S) in
    [0, 1]); with return_parts=True also the float32 [0, 255] source and target it blended,
    so that fake == round(mask * source + (1 - mask) * target). `whole`: the control without a
    seam (benchmarks/shortcuts.py): the mask covers the whole crop, so the fake is the same
    colour and sharpness change of the whole face, with no blending boundary anywhere."""
    if face.ndim != 3 or face.shape[2] != 3 or face.shape[0] != face.shape[1]:
        raise ValueError(f"face must be a square RGB array (S, S, 3), got shape {face.shape}")
    size = face.shape[0]
    x = face.astype(np.float32) * np.float32(1 / 255)
    source, target = x, x.copy()
    # (a)+(b) on one copy, chosen at random: the altered region is then sometimes the
    # inner face and sometimes its surroundings, so neither look is a shortcut to "fake".
    if whole or rng.random() < 0.5:  # (the control shows the altered copy everywhere)
        source = _frequency_transform(_colour_transform(source, rng), rng)
    else:
        target = _frequency_transform(_colour_transform(target, rng), rng)
    # (c) the source (and the region it is pasted into) is slightly rescaled and shifted;
    # reflection padding fills the border the shift uncovers.
    m = _source_affine(size, rng)
    source = cv2.warpAffine(source, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if whole:
        mask = np.ones((size, size), np.float32)
    else:
        mask = _soften(_warp_mask(_base_mask(size, rng, landmarks), m, rng), rng)
        mask *= np.float32(BLEND_RATIOS[int(rng.integers(len(BLEND_RATIOS)))])
    np.clip(mask, 0, 1, out=mask)
    source *= 255
    target *= 255
    padding = ~photo_region(face)
    if padding.any():  # faces cut before crops stayed inside the picture: their black strips stay as they are
        mask[padding] = 0
        target[padding] = face[padding]
    m3 = mask[:, :, None]
    fake = np.clip(np.rint(m3 * source + (1 - m3) * target), 0, 255).astype(np.uint8)
    if return_parts:
        return fake, mask, source, target
    return fake, mask


# --- datasets -----------------------------------------------------------------------------

def open_faces(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A face folder's images (memory-mapped), labels and 68 landmarks (None for faces ingested
    before landmarks were kept)."""
    points = beside(images_path, "landmarks")
    return (np.load(images_path, mmap_mode="r"), np.load(labels_path),
            np.load(points) if points.is_file() else None)


class SelfBlendedFakes(PicklesAsSettings, Dataset):
    """SBI fakes (label 1) made on the fly from the REAL rows (label 0) of a face-array file.

    Item i blends real face number i % n_real with its own RNG, seeded from (seed, i, a
    draw of torch's global RNG): fakes differ between epochs (more variety for free) yet a
    run is reproducible under torch.manual_seed (DataLoader workers seed torch per worker).
    In [0, 1] like FaceArrayDataset; pickles as paths and settings only. `masks`: items are
    (fake, 1, mask (1, S, S)), the blend mask it was made with (FaceArrayDataset's `masks`)."""

    SETTINGS = ("images_path", "labels_path", "augment", "per_real", "seed", "masks")

    def __init__(self, images_path: str | Path, labels_path: str | Path, augment: AugmentConfig | dict | None = None,
                 per_real: float = 1.0, seed: int = 0, masks: bool = False):
        self.images_path, self.labels_path = str(images_path), str(labels_path)
        self.augment, self.per_real, self.seed, self.masks = augment, float(per_real), int(seed), bool(masks)
        self._open()

    def _open(self):
        self.images, labels, self.landmarks = open_faces(self.images_path, self.labels_path)
        self.real_rows = np.flatnonzero(labels == 0)
        n = round(self.per_real * len(self.real_rows)) if len(self.real_rows) else 0
        self.targets = [1] * n
        self._augmenter = Augmenter(self.augment) if self.augment else None


    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i, int(torch.randint(0, 2**31 - 1, ()))])
        row = self.real_rows[i % len(self.real_rows)]
        face = np.array(self.images[row])
        fake, mask = self_blend(face, rng, None if self.landmarks is None else self.landmarks[row])
        if self.masks:
            return masked_item(fake, 1, target_mask(1, len(mask), mask), self._augmenter)
        if self._augmenter is not None:
            # Augmenter: uint8 RGB (S, S, 3) in, same out
            fake = np.ascontiguousarray(self._augmenter(fake), dtype=np.uint8)
        return face_tensor(fake), 1


class SelfBlendedPairs(PicklesAsSettings, Dataset):
    """A self-blended experience's training faces as pairs (the reference's collate): item 2k is
    real face k, item 2k+1 a fresh blend of it, both under the SAME post-blend augmentation
    (flip, crop, colour, sharpening, resampling, JPEG...), so that nothing but the blend tells
    them apart. PairedBatches keeps each pair in one batch. The blend and augmentation draws come
    from (seed, k, epoch): new every epoch (`epoch`, set by PairedBatches), reproducible."""

    SETTINGS = ("images_path", "labels_path", "augment", "seed", "masks", "epoch")

    def __init__(self, images_path: str | Path, labels_path: str | Path, augment: AugmentConfig | dict | None = None,
                 seed: int = 0, masks: bool = False):
        self.images_path, self.labels_path = str(images_path), str(labels_path)
        self.augment, self.seed, self.masks, self.epoch = augment, int(seed), bool(masks), 0
        self._open()

    def _open(self):
        self.images, labels, self.landmarks = open_faces(self.images_path, self.labels_path)
        if (labels != 0).any():
            raise ValueError(f"{self.images_path}: a self-blended experience trains on real faces only")
        self.targets = [0, 1] * len(labels)
        self._augmenter = Augmenter(self.augment) if self.augment else None

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        k, label = divmod(i, 2)
        face = np.array(self.images[k])
        mask = np.zeros(face.shape[:2], np.float32)
        if label:
            blend = np.random.default_rng([self.seed, k, self.epoch, 1])
            face, mask = self_blend(face, blend, None if self.landmarks is None else self.landmarks[k])
        post = np.random.default_rng([self.seed, k, self.epoch, 2])  # the pair's shared augmentation
        if self.masks:
            return masked_item(face, label, target_mask(label, len(mask), mask if label else None), self._augmenter, post)
        if self._augmenter is not None:
            face = np.ascontiguousarray(self._augmenter(face, rng=post), dtype=np.uint8)
        return face_tensor(face), label
