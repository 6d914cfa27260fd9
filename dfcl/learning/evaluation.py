"""ROC AUC and balanced accuracy as an Avalanche plugin metric.

Avalanche ships accuracy, forgetting and BWT but no AUC or balanced accuracy; this metric
collects the fake-class probability of every eval minibatch and scores the experience with
torchmetrics (dfcl.measure.scoring holds the scoring itself, free of Avalanche)."""
from __future__ import annotations

import math

import numpy as np
import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name
from torchmetrics.functional.classification import binary_auroc

from dfcl.measure.scoring import balanced_accuracy, video_auc


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
