"""Scoring faces: P(fake) of a model over face arrays, balanced accuracy, video AUC, the decision
threshold chosen on validation faces, and helpers that read the evaluator's results (the
Avalanche metric that fills them: dfcl.learning.evaluation).

Balanced accuracy (the mean of the real and fake recalls) is what accuracy means when the test
sets are two-thirds one class, as FF++'s are. No Avalanche here: detection and the API score
faces without importing it (about 10 s of CPU a process)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_roc


def balanced_accuracy(y: torch.Tensor, p: torch.Tensor, threshold: float) -> float:
    """Mean of the per-class recalls when faces with p >= threshold are called fake."""
    fake = p >= threshold
    recalls = [(fake[y == c] == bool(c)).float().mean() for c in (0, 1) if (y == c).any()]
    return float(sum(recalls) / len(recalls)) if recalls else math.nan


def video_auc(y, p, videos) -> float:
    """AUC over videos, each scored by the mean P(fake) of its faces (as DeepfakeBench does);
    NaN when no video has several faces (then it equals the frame-level AUC) or one class only."""
    if videos is None or len(videos) != len(y) or len(set(videos)) == len(videos):
        return math.nan
    _, video = np.unique(np.asarray(videos), return_inverse=True)
    n = video.max() + 1
    counts = np.bincount(video, minlength=n)
    mean_p = np.bincount(video, weights=np.asarray(p, dtype=float), minlength=n) / counts
    label = np.bincount(video, weights=np.asarray(y, dtype=float), minlength=n) / counts >= 0.5
    if label.all() or not label.any():
        return math.nan
    return float(binary_auroc(torch.from_numpy(mean_p).float(), torch.from_numpy(label).long()))


def calibrate_threshold(y: torch.Tensor, p: torch.Tensor) -> float:
    """The fake-probability cut that maximises balanced accuracy (Youden's J = TPR - FPR) on
    validation faces; 0.5 when they do not hold both classes."""
    y = torch.as_tensor(y).long()
    if len(y) == 0 or y.min() == y.max():
        return 0.5
    fpr, tpr, thresholds = binary_roc(torch.as_tensor(p), y)
    best = int(torch.argmax(tpr - fpr))
    return float(min(max(thresholds[best], 0.0), 1.0))


@torch.no_grad()
def fake_probabilities(model: torch.nn.Module, faces, device: torch.device | str = "cpu",
                       batch_size: int = 256) -> torch.Tensor:
    """P(fake) for uint8 faces (N, H, W, 3), fed as in training (in [0, 1]; the model normalises)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(faces), batch_size):
        x = torch.from_numpy(np.array(faces[start:start + batch_size])).to(device)  # a writable copy of the memmap
        x = x.permute(0, 3, 1, 2).float().div_(255)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x.contiguous(memory_format=torch.channels_last))
        out.append(torch.softmax(logits.float(), 1)[:, 1].cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def validation_scores(model: torch.nn.Module, faces: list[tuple[Path, Path]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and P(fake) of the validation faces [(images .npy, labels .npy), ...]."""
    y = torch.from_numpy(np.concatenate([np.load(labels) for _, labels in faces]))
    p = torch.cat([fake_probabilities(model, np.load(images, mmap_mode="r"), device) for images, _ in faces])
    return y, p


_EXP = re.compile(r"^(?P<metric>[^/]+)/eval_phase/test_stream(/Task\d+)?/Exp(?P<exp>\d+)$")


def per_experience(metrics: dict, metric: str) -> dict[int, float]:
    """{'Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001': 0.8} -> {1: 0.8} for `metric`."""
    out = {}
    for key, value in metrics.items():
        m = _EXP.match(key)
        if m and m["metric"] == metric:
            out[int(m["exp"])] = float(value)
    return out

