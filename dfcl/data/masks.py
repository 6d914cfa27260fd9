"""Forgery masks as training targets and as something to measure (models/mask.py has the head).

A target mask is float32 (S, S): 0 = untouched, 1 = forged, UNKNOWN (-1) where nothing is known.
A real face's mask is known to be empty. A fake's is its blend mask (self-blended fakes) or its
stored `<split>-mask.npy` row (FF++ mask videos, the fixed SBI fakes of a self-blended
experience), scaled to a peak of 1: the head is to say where a face was forged, not how strongly
(an SBI blend at ratio 0.25 forged the same region as one at 1.0). A fake whose row is empty has
no mask (extraction writes zeros for a fake without a mask video): UNKNOWN, left out of the loss.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

UNKNOWN = -1.0


def target_mask(label: int, size: int, stored: np.ndarray | None = None) -> np.ndarray:
    """The (S, S) float32 target of one face: `stored` is its blend or mask row (uint8 0..255
    or float in [0, 1]), None when there is none."""
    if label == 0:
        return np.zeros((size, size), np.float32)
    if stored is None:
        return np.full((size, size), UNKNOWN, np.float32)
    m = np.asarray(stored, np.float32)
    peak = float(m.max())
    return m / peak if peak > 0 else np.full((size, size), UNKNOWN, np.float32)


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Binary cross-entropy of mask logits (B, 1, h, w) against targets (B, 1, S, S), taken at the
    logits' resolution: each target cell is the mean of the known pixels under it, and a cell
    that is mostly UNKNOWN is left out. None when the batch has no known pixel."""
    known = (target >= 0).float()
    size = logits.shape[-2:]
    share = F.adaptive_avg_pool2d(known, size)
    value = F.adaptive_avg_pool2d(target.float().clamp(min=0) * known, size) / share.clamp(min=1e-6)
    weight = (share > 0.5).float()
    n = weight.sum()
    if n == 0:
        return None
    return F.binary_cross_entropy_with_logits(logits.float(), value, weight=weight, reduction="sum") / n


def mask_quality(probs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray) -> dict:
    """Predicted mask probabilities (N, S, S) against target masks (N, S, S), at pixels whose
    target is known. A pixel is forged when its target is >= 0.5 (of the peak: see target_mask).

    pixel_auc: ROC AUC of the probabilities over all known pixels (NaN with one class only);
    iou: mean over the faces with a forged region of |pred >= 0.5 and forged| / |pred >= 0.5 or forged|;
    faces: faces with a known mask; forged_faces: those with a forged region."""
    from torchmetrics.functional.classification import binary_auroc

    # A numpy array is copied: a read-only one (a memmap, a broadcast prior) cannot back a tensor.
    p, t = (torch.as_tensor(np.array(a, np.float32) if isinstance(a, np.ndarray) else a).float() for a in (probs, targets))
    if p.shape != t.shape:
        raise ValueError(f"predicted masks {tuple(p.shape)} and targets {tuple(t.shape)} differ in shape")
    known = t >= 0
    faces = known.flatten(1).any(1)
    truth, pred = (t >= 0.5) & known, (p >= 0.5) & known
    pixels = truth[known]
    auc = float(binary_auroc(p[known], pixels.long())) if 0 < int(pixels.sum()) < len(pixels) else math.nan
    forged = truth.flatten(1).any(1)
    inter = (truth & pred).flatten(1).sum(1).float()
    union = (truth | pred).flatten(1).sum(1).float()
    iou = float((inter[forged] / union[forged]).mean()) if forged.any() else math.nan
    return {"pixel_auc": auc, "iou": iou, "faces": int(faces.sum()), "forged_faces": int(forged.sum())}
