"""Synthetic demo data: procedurally drawn faces and three forgery families.

SYNTHETIC DATA, for demos and tests only: it says nothing about real deepfakes. Each method
leaves a different artifact, like the real families it stands for:
  BlendSwap    a face swap: another face's colours blended in with a soft, slightly blurred seam
  GANUpsample  GAN-style upsampling: a 2x2 checkerboard pattern over the face
  MouthWarp    a reenactment-style local warp and smoothing of the mouth and eye region

Run as a DVC stage (see dvc.yaml): python -m dfcl.data.demo_data OUT_DIR
It writes one dataset per method, OUT_DIR/<method>/{train,test}/{real,<method>}/*.jpg (and
<method>/SYNTHETIC.txt, which marks a dataset synthetic for the model card), each
with its own real faces, so the demo can deliver them as three separate arrivals. With
`--masks DIR` it also writes where each fake was forged, DIR/<method>/{train,test}/<method>/*.png
(uint8, 255 = fully forged; the same names as the images), outside the dataset so its layout and
its images stay as they are: what the mask head's benchmark measures against.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from dfcl.data.layouts import SYNTHETIC_MARK


def draw_face(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """A frontal cartoon face on a gradient background; returns the image and its landmarks."""
    s = size
    top, bottom = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
    ramp = np.linspace(0, 1, s)[:, None, None]
    img = (top * (1 - ramp) + bottom * ramp).repeat(s, 1).astype(np.float32)
    cx, cy = s / 2 + rng.uniform(-0.04, 0.04) * s, s / 2 + rng.uniform(-0.03, 0.05) * s
    ax, ay = rng.uniform(0.26, 0.32) * s, rng.uniform(0.34, 0.40) * s
    skin = np.array([rng.uniform(60, 150), rng.uniform(90, 180), rng.uniform(140, 235)])  # BGR
    hair = rng.uniform(10, 90, 3)
    c = lambda x, y: (int(round(x)), int(round(y)))  # noqa: E731
    cv2.ellipse(img, c(cx, cy - 0.12 * s), c(ax * 1.08, ay * 0.9), 0, 180, 360, hair.tolist(), -1)
    cv2.ellipse(img, c(cx, cy), c(ax, ay), 0, 0, 360, skin.tolist(), -1)
    eye_dx, eye_y = rng.uniform(0.10, 0.13) * s, cy - rng.uniform(0.06, 0.10) * s
    iris = rng.uniform(20, 120, 3).tolist()
    eyes = []
    for side in (-1, 1):
        ex = cx + side * eye_dx
        cv2.ellipse(img, c(ex, eye_y), c(0.055 * s, 0.028 * s), 0, 0, 360, (235, 235, 235), -1)
        cv2.circle(img, c(ex, eye_y), max(1, int(0.022 * s)), iris, -1)
        cv2.line(img, c(ex - 0.06 * s, eye_y - 0.06 * s), c(ex + 0.05 * s, eye_y - 0.07 * s), hair.tolist(), max(1, s // 40))
        eyes.append((ex, eye_y))
    nose_y = cy + 0.06 * s
    cv2.line(img, c(cx, eye_y + 0.03 * s), c(cx - 0.02 * s, nose_y), (skin * 0.7).tolist(), max(1, s // 60))
    mouth_y = cy + rng.uniform(0.16, 0.20) * s
    cv2.ellipse(img, c(cx, mouth_y), c(rng.uniform(0.07, 0.10) * s, rng.uniform(0.015, 0.04) * s), 0, 0, 360,
                (rng.uniform(40, 90), rng.uniform(40, 80), rng.uniform(120, 200)), -1)
    shade = rng.uniform(-25, 25) * np.linspace(-1, 1, s)[None, :, None]  # side lighting
    img = img + shade + rng.normal(0, 4, img.shape)
    marks = {"center": (cx, cy), "axes": (ax, ay), "eyes": eyes, "mouth": (cx, mouth_y)}
    return np.clip(img, 0, 255).astype(np.uint8), marks


def face_mask(shape, marks: dict, scale: float = 0.9, blur: float = 0.06) -> np.ndarray:
    s = shape[0]
    mask = np.zeros(shape[:2], np.float32)
    (cx, cy), (ax, ay) = marks["center"], marks["axes"]
    cv2.ellipse(mask, (int(cx), int(cy)), (int(ax * scale), int(ay * scale)), 0, 0, 360, 1.0, -1)
    k = int(blur * s) * 2 + 1
    return cv2.GaussianBlur(mask, (k, k), 0)[..., None]


# Each forgery returns the forged image and its mask (float32 (S, S) in [0, 1]: how much of
# each pixel is the forgery's).

def blend_swap(img, marks, rng, size):
    donor, _ = draw_face(rng, size)
    donor = cv2.GaussianBlur(donor, (3, 3), 0).astype(np.float32)
    donor *= rng.uniform(0.85, 1.15, 3)  # colour mismatch between the two faces
    mask = face_mask(img.shape, marks, scale=rng.uniform(0.75, 0.9))
    out = img.astype(np.float32) * (1 - mask) + donor * mask
    return np.clip(out, 0, 255).astype(np.uint8), mask[..., 0]


def gan_upsample(img, marks, rng, size):
    small = cv2.resize(img, (size // 2, size // 2), interpolation=cv2.INTER_AREA)
    up = cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    checker = ((yy + xx) % 2 * 2 - 1)[..., None].astype(np.float32)
    up += checker * rng.uniform(6, 12)  # transposed-convolution checkerboard
    mask = face_mask(img.shape, marks, scale=1.0, blur=0.02)
    out = img.astype(np.float32) * (1 - mask) + up * mask
    return np.clip(out, 0, 255).astype(np.uint8), mask[..., 0]


def mouth_warp(img, marks, rng, size):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    region = np.zeros((size, size), np.float32)
    (mx, my), (e1, e2) = marks["mouth"], marks["eyes"]
    for (px, py), r in (((mx, my), 0.16), (e1, 0.09), (e2, 0.09)):
        region = np.maximum(region, np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * (r * size) ** 2)))
    amp = rng.uniform(1.5, 3.0)
    map_x = xx + amp * region * np.sin(yy / size * 2 * np.pi * rng.uniform(2, 4))
    map_y = yy + amp * region * np.cos(xx / size * 2 * np.pi * rng.uniform(2, 4))
    warped = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    smooth = cv2.bilateralFilter(warped, 5, 40, 5).astype(np.float32)
    out = img.astype(np.float32) * (1 - region[..., None]) + smooth * region[..., None]
    return np.clip(out, 0, 255).astype(np.uint8), region


FORGERIES = {"BlendSwap": blend_swap, "GANUpsample": gan_upsample, "MouthWarp": mouth_warp}


def generate(out: Path, methods: list[str], train_per_class: int, test_per_class: int, size: int, seed: int,
             masks: Path | None = None) -> None:
    """The demo datasets in `out`; with `masks`, each fake's mask there (see the module's docstring)."""
    unknown = sorted(set(methods) - set(FORGERIES))
    if unknown:
        raise KeyError(f"unknown demo forgeries {unknown}; known: {sorted(FORGERIES)}")
    for m_index, method in enumerate(methods):
        rng = np.random.default_rng([seed, m_index])
        for split, n in (("train", train_per_class), ("test", test_per_class)):
            for cls in ("real", method):
                folder = out / method / split / cls
                folder.mkdir(parents=True, exist_ok=True)
                mask_folder = None if masks is None or cls == "real" else masks / method / split / cls
                if mask_folder is not None:
                    mask_folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    img, marks = draw_face(rng, size)
                    if cls != "real":
                        img, mask = FORGERIES[method](img, marks, rng, size)
                        if mask_folder is not None:
                            cv2.imwrite(str(mask_folder / f"{i:04d}.png"), np.rint(mask * 255).astype(np.uint8))
                    quality = int(rng.integers(80, 96))
                    cv2.imwrite(str(folder / f"{i:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        # Each dataset says it is synthetic, so a model that learned only these can say so (model card).
        (out / method / SYNTHETIC_MARK).write_text("SYNTHETIC demo data: procedurally drawn faces, not real people.\n")
    (out / "README.txt").write_text("SYNTHETIC demo data generated by deepfake-cl (dfcl/data/demo_data.py).\n"
                                    "Procedurally drawn faces, not real people; not real deepfakes.\n")


def main() -> None:
    from dfcl.config import load_params

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--masks", type=Path, metavar="DIR", help="also write each fake's mask under DIR")
    args = parser.parse_args()
    d = load_params(overrides=args.set).demo
    generate(args.out, d.methods, d.train_per_class, d.test_per_class, d.size, d.seed, args.masks)


if __name__ == "__main__":
    main()
