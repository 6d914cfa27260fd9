"""LRSchedule: a per-iteration learning rate within each experience (warm-up, then cosine)."""
from __future__ import annotations

import math

from avalanche.core import SupervisedPlugin


class LRSchedule(SupervisedPlugin):
    """Per-iteration learning rate within each experience: a linear warm-up over the first
    `warmup_epochs` (fractions allowed), then constant or cosine decay to zero at the end of
    the experience; restarts with every experience. Each optimizer group keeps its own scale
    (`lr_scale`: the pretrained backbone learns slower than the new head, see make_optimizer).
    Avalanche's LRSchedulerPlugin steps a torch scheduler per epoch or iteration with one shape for
    the whole run; this one is a pure function of the progress within the experience."""

    def __init__(self, lr: float, cosine: bool = True, warmup_epochs: float = 0.0):
        super().__init__()
        self.lr, self.cosine, self.warmup_epochs = lr, cosine, warmup_epochs

    def factor(self, progress: float) -> float:
        """The share of the base rate `progress` epochs into the experience (from step 0)."""
        warm = min(1.0, (progress + self._step) / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0
        if not self.cosine:
            return warm
        return warm * 0.5 * (1 + math.cos(math.pi * min(progress / max(self._total, 1), 1.0)))

    def before_training_iteration(self, strategy, **_):
        steps = max(len(strategy.dataloader), 1)
        self._total, self._step = strategy.train_epochs, 1 / steps
        progress = strategy.clock.train_exp_epochs + strategy.clock.train_epoch_iterations / steps
        scale = self.factor(progress)
        for group in strategy.optimizer.param_groups:
            group["lr"] = self.lr * group.get("lr_scale", 1.0) * scale
