"""ClassBalancedLoss: cross-entropy weighted by the inverse class frequency of the data learned."""
from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import ReplayPlugin


class ClassBalancedLoss(SupervisedPlugin):
    """Weights the cross-entropy by the inverse class frequency of the data being learned, so a
    fake-heavy (or real-heavy) experience does not push every decision to one class. Avalanche
    has no class-weighting plugin. The weights follow the mix actually trained on: with Replay
    every batch is half new data, half buffer, so the buffer's classes count for that half."""

    def after_train_dataset_adaptation(self, strategy, **_):
        share = _class_shares(strategy.adapted_dataset.targets)
        replay = next((p for p in strategy.plugins if isinstance(p, ReplayPlugin)), None)
        if replay is not None and len(replay.storage_policy.buffer):
            new, mem = replay.batch_size or strategy.train_mb_size, replay.batch_size_mem or strategy.train_mb_size
            share = (new * share + mem * _class_shares(replay.storage_policy.buffer.targets)) / (new + mem)
        weights = (1 / (len(share) * share.clamp(min=1e-6))).float()
        strategy._criterion = torch.nn.CrossEntropyLoss(weight=weights.to(strategy.device))


def _class_shares(targets) -> torch.Tensor:
    counts = torch.bincount(torch.as_tensor(list(targets)), minlength=2).double()
    return counts / counts.sum()
