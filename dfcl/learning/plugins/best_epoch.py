"""BestValidationEpoch: early stopping on the validation AUC of every experience so far."""
from __future__ import annotations

import copy

from avalanche.core import SupervisedPlugin
from torchmetrics.functional.classification import binary_auroc

from dfcl.measure.scoring import validation_scores


class BestValidationEpoch(SupervisedPlugin):
    """Early stopping on validation AUC (the validation faces of every experience so far):
    stops after `patience` epochs without a gain and keeps the best epoch's weights.
    Avalanche's EarlyStoppingPlugin reads periodic evaluations from the evaluator, which would
    feed validation results into the forgetting/BWT metrics, which are keyed by experience id."""

    def __init__(self, patience: int):
        super().__init__()
        self.patience, self.faces = patience, []  # faces: [(images .npy, labels .npy)], set per experience
        self._best = self._best_auc = None
        self._best_epoch = 0

    def before_training_exp(self, strategy, **_):
        self._best, self._best_auc, self._best_epoch = None, None, 0

    def after_training_epoch(self, strategy, **_):
        if not self.faces:
            return
        y, p = validation_scores(strategy.model, self.faces, strategy.device)
        if y.min() == y.max():
            return
        auc, epoch = float(binary_auroc(p, y)), strategy.clock.train_exp_epochs
        if self._best_auc is None or auc > self._best_auc:
            self._best = copy.deepcopy(strategy.model.state_dict())
            self._best_auc, self._best_epoch = auc, epoch
        elif epoch - self._best_epoch >= self.patience:
            strategy.stop_training()

    def state(self) -> tuple[dict | None, dict]:
        """The best epoch so far (its weights, and its AUC and index): what a checkpoint keeps."""
        return self._best, {"best_auc": self._best_auc, "best_epoch": self._best_epoch}

    def restore(self, weights: dict | None, meta: dict) -> None:
        self._best, self._best_auc, self._best_epoch = weights, meta["best_auc"], meta["best_epoch"]

    def after_training_exp(self, strategy, **_):
        if self._best is not None:
            strategy.model.load_state_dict(self._best)
        self._best, self.faces = None, []  # nothing heavy kept between experiences
