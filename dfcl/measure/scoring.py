"""ROC AUC and balanced accuracy as an Avalanche plugin metric, the decision threshold chosen
on validation faces, and helpers that read the evaluator's results.

Avalanche ships accuracy, forgetting and BWT but no AUC or balanced accuracy; this metric
collects the fake-class probability of every eval minibatch and scores the experience with
torchmetrics. Balanced accuracy (the mean of the real and fake recalls) is what accuracy means
when the test sets are two-thirds one class, as FF++'s are."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name
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


class ExperienceAUC(PluginMetric[float]):
    """AUC_Exp, BalAcc_Exp at `threshold` (the learner sets it after calibrating), and
    VideoAUC_Exp when `videos` (experience id -> video of each test face, in order) says
    several faces come from one video. `kept` holds each evaluated experience's labels, P(fake)
    and penultimate features (the input of `model.head`; None without one), so that the trust fit
    reads the evaluation's scores instead of scoring the same test faces again."""

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold
        self.videos: dict[int, np.ndarray] = {}
        self.kept: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        self._hook = None
        self.reset()

    def reset(self) -> None:
        self._scores, self._targets, self._features = [], [], []

    def result(self) -> float:
        if not self._targets:
            return math.nan
        y = torch.cat(self._targets)
        if y.min() == y.max():  # AUC is undefined with one class only
            return math.nan
        return float(binary_auroc(torch.cat(self._scores), y))

    def before_eval_exp(self, strategy) -> None:
        self.reset()
        head = getattr(strategy.model, "head", None)
        if isinstance(head, torch.nn.Module):
            self._hook = head.register_forward_hook(
                lambda m, args, out: self._features.append(args[0].detach().float().flatten(1).cpu()))

    def after_eval_iteration(self, strategy) -> None:
        self._scores.append(torch.softmax(strategy.mb_output.detach().float(), 1)[:, 1].cpu())
        self._targets.append(strategy.mb_y.detach().cpu())

    def balanced_accuracy(self) -> float:
        if not self._targets:
            return math.nan
        return balanced_accuracy(torch.cat(self._targets), torch.cat(self._scores), self.threshold)

    def video_auc(self, experience: int) -> float:
        videos = self.videos.get(experience)
        if not self._targets or videos is None:
            return math.nan
        return video_auc(torch.cat(self._targets).numpy(), torch.cat(self._scores).numpy(), videos)

    def after_eval_exp(self, strategy):
        step = strategy.clock.train_iterations
        exp = strategy.experience.current_experience
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._targets:
            features = torch.cat(self._features).numpy() if self._features else None
            self.kept[exp] = (torch.cat(self._targets).numpy(), torch.cat(self._scores).numpy(), features)
        return [MetricValue(self, get_metric_name(self, strategy, add_experience=True), self.result(), step),
                MetricValue(self, get_metric_name("BalAcc_Exp", strategy, add_experience=True),
                            self.balanced_accuracy(), step),
                MetricValue(self, get_metric_name("VideoAUC_Exp", strategy, add_experience=True),
                            self.video_auc(exp), step)]

    def __str__(self):
        return "AUC_Exp"


_EXP = re.compile(r"^(?P<metric>[^/]+)/eval_phase/test_stream(/Task\d+)?/Exp(?P<exp>\d+)$")


def per_experience(metrics: dict, metric: str) -> dict[int, float]:
    """{'Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001': 0.8} -> {1: 0.8} for `metric`."""
    out = {}
    for key, value in metrics.items():
        m = _EXP.match(key)
        if m and m["metric"] == metric:
            out[int(m["exp"])] = float(value)
    return out

