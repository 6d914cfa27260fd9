"""Forensic data augmentation of decoded RGB uint8 face crops (the `augment:` params section).

Cheap cv2/numpy ops, run on the CPU in DataLoader workers, in this order:

- horizontal flip and random resized crop: faces are not always centred or framed alike;
- colour jitter (brightness, contrast, saturation, hue): capture and grading differ between
  sources, and the detector should not key on one dataset's colour cast;
- JPEG re-compression, Gaussian blur, Gaussian noise: real and fake videos go through
  different codecs and rescaling, so without these the detector can learn compression or
  sharpness traces instead of forgery artefacts, and fails on re-encoded uploads;
- cut-out: hides one region, so the detector cannot rely on a single spot (e.g. the mouth
  or a blending seam) and has to use evidence from the whole face.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import yaml

from dfcl.config import AugmentConfig, packaged_params
from dfcl.data.masks import UNKNOWN

LUMA = np.float32([0.299, 0.587, 0.114])  # ITU-R 601 weights of R, G, B in grey


class Augmenter:
    """`Augmenter(settings)(image)`: an RGB uint8 HxWx3 image -> an augmented one of the same shape.

    It holds only its settings, so it pickles into DataLoader workers and checkpoints."""

    def __init__(self, settings: AugmentConfig | dict | None = None):
        """`settings`: the `augment` section, or a dict of some of its keys over params.yaml's
        values (a typo is refused: it would otherwise silently leave an op at its default)."""
        if not isinstance(settings, AugmentConfig):
            defaults = packaged_params().augment.model_dump()
            unknown = set(settings or {}) - set(defaults)
            if unknown:
                raise ValueError(f"unknown augment settings {sorted(unknown)}; known: {sorted(defaults)}")
            settings = AugmentConfig.model_validate({**defaults, **(settings or {})})
        self.settings = settings

    def __repr__(self):
        return f"Augmenter({self.settings})"

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None, rng: np.random.Generator | None = None):
        """With a target `mask` (float32 H x W, dfcl.data.masks), (image, mask): the flip and crop move
        the mask with the face, and the cut-out region becomes unknown (what it hides cannot be
        located). The draws are the same with or without a mask. `rng`: the draws to use (the
        same for a real face and its self-blended fake, dfcl.data.sbi.SelfBlendedPairs)."""
        s = self.settings
        if not s.enabled:
            return image if mask is None else (image, mask)
        # A fresh generator per call, seeded from torch: each DataLoader worker has its own
        # torch seed (so workers differ), and torch.manual_seed makes runs reproducible. A
        # generator kept on the instance would be copied identically into every forked worker.
        if rng is None:
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        out = image
        if rng.random() < s.flip_p:
            out = cv2.flip(out, 1)  # 1 = around the vertical axis
            mask = None if mask is None else cv2.flip(mask, 1)
        if rng.random() < s.crop_p:
            box = _crop_box(out.shape[:2], rng, s.crop_scale_min)
            out, mask = _resized(out, box), None if mask is None else _resized(mask, box)
        if rng.random() < s.color_p:
            out = _color_jitter(out, rng, s.color_strength, s.hue_degrees)
        # Sharpening and down-up resampling of every face, real or fake: without them a sharper
        # (or softer) photo than the training reals reads as forged (benchmarks/shortcuts.py).
        # (An op switched off draws nothing: the draws of the others stay as they were.)
        if s.sharpen_p and rng.random() < s.sharpen_p:
            out = _sharpen(out, rng.uniform(0.1, 0.5))
        if s.resample_p and rng.random() < s.resample_p:
            out = _resample(out, rng.uniform(1.0, s.resample_max))
        if rng.random() < s.jpeg_p:
            out = _jpeg(out, int(rng.integers(s.jpeg_quality_min, s.jpeg_quality_max, endpoint=True)))
        if rng.random() < s.blur_p:
            out = cv2.GaussianBlur(np.ascontiguousarray(out), (0, 0), rng.uniform(0.1, s.blur_sigma_max))
        if rng.random() < s.noise_p:
            noise = rng.standard_normal(out.shape, dtype=np.float32) * rng.uniform(0.0, s.noise_std_max)
            out = np.clip(out + noise, 0, 255).round().astype(np.uint8)  # float32 throughout: half the cost
        if rng.random() < s.cutout_p:
            out, where = _cutout(out, rng, s.cutout_fraction)
            if mask is not None:
                mask = mask.copy()
                mask[where] = UNKNOWN
        return out if mask is None else (out, mask)


def _crop_box(shape: tuple[int, int], rng: np.random.Generator, scale_min: float) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of a crop of area fraction in [scale_min, 1] and aspect ratio in
    [3/4, 4/3]; None to keep the whole image."""
    h, w = shape
    for _ in range(10):  # as torchvision: retry draws whose box does not fit, then keep the whole image
        area = h * w * rng.uniform(scale_min, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))  # log-uniform: 3/4 and 4/3 equally likely
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    return None


def _resized(image: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """The box of the image, resized back to the image's size."""
    if box is None:
        return image
    top, left, ch, cw = box
    h, w = image.shape[:2]
    crop = np.ascontiguousarray(image[top:top + ch, left:left + cw])
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)


def _color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float, hue_degrees: float) -> np.ndarray:
    x = image.astype(np.float32) / 255
    x *= rng.uniform(1 - strength, 1 + strength)  # brightness
    mean = (x @ LUMA).mean()
    x = (x - mean) * rng.uniform(1 - strength, 1 + strength) + mean  # contrast, around the mean grey
    # Saturation, around each pixel's grey: s*x + (1-s)*grey, as one 3x3 matrix (4x faster
    # than broadcasting the grey over the channels).
    sat = rng.uniform(1 - strength, 1 + strength)
    x = np.clip(x @ (sat * np.eye(3, dtype=np.float32) + (1 - sat) * LUMA[:, None]), 0, 1)
    if hue_degrees:
        # Float HSV keeps the hue in degrees (0..360); uint8 HSV would quantise it to 2° steps.
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
        hue = hsv[..., 0]  # a view: edits go into hsv
        hue += rng.uniform(-hue_degrees, hue_degrees)
        hue[hue < 0] += 360  # wrap (HSV2RGB mishandles negative hues; masks are 3x faster than %)
        hue[hue >= 360] -= 360
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return np.clip(x * 255, 0, 255).round().astype(np.uint8)


def _sharpen(image: np.ndarray, alpha: float) -> np.ndarray:
    """Unsharp-style sharpening: identity blended with a 3x3 Laplacian kernel by `alpha`."""
    kernel = np.full((3, 3), -alpha, np.float32)
    kernel[1, 1] = 1 + 8 * alpha
    return cv2.filter2D(np.ascontiguousarray(image), -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def _resample(image: np.ndarray, factor: float) -> np.ndarray:
    """Shrunk by `factor` and enlarged back: the detail a resized or re-encoded video loses."""
    h, w = image.shape[:2]
    small = cv2.resize(np.ascontiguousarray(image), (max(1, round(w / factor)), max(1, round(h / factor))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode as JPEG at `quality`; cv2 works in BGR, so convert both ways."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _cutout(image: np.ndarray, rng: np.random.Generator, fraction: float) -> tuple[np.ndarray, tuple[slice, slice]]:
    """One rectangle of fraction x the sides, at a random place, filled with the mean colour or
    black; and where it is."""
    h, w = image.shape[:2]
    ch, cw = max(1, round(fraction * h)), max(1, round(fraction * w))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    fill = image.reshape(-1, image.shape[2]).mean(0).round() if rng.random() < 0.5 else 0
    out = image.copy()  # never write into the caller's array (it may be the memory-mapped cache)
    where = np.s_[top:top + ch, left:left + cw]
    out[where] = fill
    return out, where
