"""FrozenBatchNormStats: batch-norm running statistics kept while the rest trains."""
from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin


class FrozenBatchNormStats(SupervisedPlugin):
    """Batch-norm layers keep their running statistics (eval mode) while the rest trains:
    `from_second` freezes them from the second experience on, else from the start. A new
    method's faces otherwise drag the statistics every earlier method is evaluated with (a
    known source of forgetting); the affine weights still learn."""

    def __init__(self, from_second: bool = True):
        super().__init__()
        self.from_second = from_second

    def before_training_iteration(self, strategy, **_):
        # Every iteration: Avalanche and the validation hooks switch the model back to train().
        if self.from_second and strategy.clock.train_exp_counter == 0:
            return
        for module in strategy.model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training:
                module.eval()
