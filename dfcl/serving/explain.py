"""Evidence for a verdict: Grad-CAM heatmaps of the "fake" class over each scored face (the
`grad-cam` package, on the layer the model registry declares for the architecture), the forged
region the model's mask head predicts (a model with one: models/mask.py), and a video's P(fake)
timeline as a plot. A model without a mask head gives no mask, never a stand-in.

Grad-CAM and the mask head hook the model while it runs, so two explanations on one model must
not overlap: callers that share a model between threads (the API) hold `LOCK`.
"""
from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import torch

from dfcl.serving.detector import Detector

LOCK = threading.Lock()


def heatmaps(detector: Detector, crops: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, S, S) in [0, 1]: where each face's evidence for "fake" lies."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from models import cam_layer

    model = detector.model
    layer = cam_layer(model, detector.info.get("architecture"))
    out = []
    with LOCK, GradCAM(model=model, target_layers=[layer]) as cam:
        for start in range(0, len(crops), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(crops[start:start + batch_size])).permute(0, 3, 1, 2).float() / 255
            out.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * len(x)))
    return np.concatenate(out) if out else np.zeros((0,) + crops.shape[1:3], np.float32)


def masks(detector: Detector, crops: np.ndarray, batch_size: int = 32) -> np.ndarray | None:
    """(N, S, S) in [0, 1]: each pixel's probability of being forged, from the model's mask head;
    None when the model has none."""
    from models.mask import has_mask_head, predict_mask

    model = detector.model
    if not has_mask_head(model):
        return None
    out = []
    with LOCK, torch.no_grad():
        for start in range(0, len(crops), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(crops[start:start + batch_size])).permute(0, 3, 1, 2).float() / 255
            out.append(predict_mask(model, detector.info.get("architecture"), x)[1].numpy())
    return np.concatenate(out) if out else np.zeros((0,) + crops.shape[1:3], np.float32)


def mask_overlay(crop: np.ndarray, mask: np.ndarray, upscale: int = 2) -> np.ndarray:
    """The face tinted red as strongly as the mask says a pixel is forged, outlined where it
    crosses 0.5 (RGB uint8), enlarged as the heatmaps are."""
    size = crop.shape[0] * upscale
    face = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    m = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)[..., None]
    tinted = face * (1 - 0.6 * m) + np.float32([255, 0, 0]) * 0.6 * m
    image = np.clip(tinted, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours((m[..., 0] >= 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.drawContours(image, contours, -1, (255, 255, 0), 1)


def overlay(crop: np.ndarray, heat: np.ndarray, upscale: int = 2) -> np.ndarray:
    """The face with its heatmap blended on (RGB uint8), enlarged so a person can see it."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    image = show_cam_on_image(crop.astype(np.float32) / 255, heat, use_rgb=True, image_weight=0.6)
    size = crop.shape[0] * upscale
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def png_bytes(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def evidence(detector: Detector, result, top_frames: int) -> list[tuple[str, np.ndarray, np.ndarray | None, dict]]:
    """(name, heatmap overlay, predicted-mask overlay or None, the face's row) per face of a
    photo, or per frame of a video that decided its verdict: the `top_frames` most suspicious
    frames of a fake, the least suspicious of a real one, and both ends of an uncertain one."""
    if result.crops is None or not len(result.crops):
        return []
    pick = list(range(len(result.crops)))
    if result.kind == "video":
        by_p = sorted(pick, key=lambda k: -result.faces[k]["p_fake"])
        if result.verdict == "real":
            pick = by_p[::-1][:top_frames]
        elif result.verdict == "uncertain":
            ends = by_p[:(top_frames + 1) // 2] + by_p[::-1][:top_frames // 2]
            pick = list(dict.fromkeys(ends))
        else:
            pick = by_p[:top_frames]
    heat = heatmaps(detector, result.crops[pick])
    forged = masks(detector, result.crops[pick])
    out = []
    for j, (k, h) in enumerate(zip(pick, heat)):
        face = result.faces[k]
        name = f"frame{face['frame']:05d}" if result.kind == "video" else f"face{k}"
        mask = None if forged is None else mask_overlay(result.crops[k], forged[j])
        out.append((name, overlay(result.crops[k], h), mask, face))
    return out


def write_evidence(detector: Detector, result, out_dir: Path, top_frames: int, threshold: float) -> list[Path]:
    """Heatmap overlays as PNG, predicted masks beside them (`<file>_mask_<face>.png`, a model with
    a mask head) and a video's timeline plot under out_dir, named after the file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem, written = Path(result.file).stem, []
    for name, image, mask, face in evidence(detector, result, top_frames):
        path = out_dir / f"{stem}_{name}_p{face['p_fake']:.2f}.png"
        path.write_bytes(png_bytes(image))
        written.append(path)
        if mask is not None:
            path = out_dir / f"{stem}_mask_{name}.png"
            path.write_bytes(png_bytes(mask))
            written.append(path)
    if result.kind == "video" and result.frames:
        path = out_dir / f"{stem}_timeline.png"
        timeline_plot(result.frames, threshold, path, Path(result.file).name)
        written.append(path)
    return written


def timeline_plot(frames: list[dict], threshold: float, path: Path, title: str) -> None:
    from dfcl.measure.plots import plt

    t = [f["time_s"] for f in frames if f["p_fake"] is not None]
    p = [f["p_fake"] for f in frames if f["p_fake"] is not None]
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.plot(t, p, "o-", ms=3)
    ax.axhline(threshold, color="red", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    ax.set(ylim=(0, 1), xlabel="time (s)", ylabel="P(fake)", title=title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
