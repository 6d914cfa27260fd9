"""MaskLoss: trains a model's mask head (models/mask.py) beside its classifier."""
from __future__ import annotations

from avalanche.core import SupervisedPlugin


class MaskLoss(SupervisedPlugin):
    """Trains a model's mask head (models/mask.py) beside its classifier: `weight` x the
    binary cross-entropy of the mask it predicts against each batch's known masks
    (dfcl.data.masks.mask_loss; unknown pixels and faces count for nothing) is added to the loss.
    The forward stays logits only, so the strategy needs no change: a hook on the model's
    cam_layer runs the head during each experience's training (removed after it, so LwF's copy of
    the model does not carry it). Batches are (x, y, mask, task):
    the learner's datasets give masks when the model has a mask head."""

    def __init__(self, weight: float, architecture: str):
        super().__init__()
        self.weight, self.architecture = weight, architecture
        self._tap = None

    def before_training_exp(self, strategy, **_):
        from models.mask import MaskTap

        self._tap = MaskTap(strategy.model, self.architecture)

    def before_backward(self, strategy, **_):
        from dfcl.data.masks import mask_loss

        if len(strategy.mbatch) < 4:
            raise RuntimeError("MaskLoss needs batches of (x, y, mask, task): datasets made with masks=True")
        loss = mask_loss(self._tap.logits, strategy.mbatch[2])
        if loss is not None:
            strategy.loss = strategy.loss + self.weight * loss

    def after_training_exp(self, strategy, **_):
        if self._tap is not None:
            self._tap.close()
            self._tap = None
