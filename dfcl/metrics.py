"""ROC AUC as an Avalanche plugin metric, and helpers that read the evaluator's results.

Avalanche ships accuracy, forgetting and BWT but no AUC; this metric collects the fake-class
probability of every eval minibatch and scores the experience with torchmetrics."""
from __future__ import annotations

import math
import re

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name
from torchmetrics.functional.classification import binary_auroc


class ExperienceAUC(PluginMetric[float]):
    def __init__(self):
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self._scores, self._targets = [], []

    def result(self) -> float:
        if not self._targets:
            return math.nan
        y = torch.cat(self._targets)
        if y.min() == y.max():  # AUC is undefined with one class only
            return math.nan
        return float(binary_auroc(torch.cat(self._scores), y))

    def before_eval_exp(self, strategy) -> None:
        self.reset()

    def after_eval_iteration(self, strategy) -> None:
        self._scores.append(torch.softmax(strategy.mb_output.detach().float(), 1)[:, 1].cpu())
        self._targets.append(strategy.mb_y.detach().cpu())

    def after_eval_exp(self, strategy):
        name = get_metric_name(self, strategy, add_experience=True)
        return [MetricValue(self, name, self.result(), strategy.clock.train_iterations)]

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


def stream_value(metrics: dict, metric: str) -> float:
    for key, value in metrics.items():
        if key.startswith(f"{metric}/eval_phase/test_stream"):
            return float(value)
    return math.nan

