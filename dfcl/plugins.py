"""Avalanche plugins of deepfake-cl, each a small class named for what it does (Avalanche's
own plugins/ layout): the strategy is a stock Avalanche template, these add what it lacks."""
from __future__ import annotations

import copy
import math

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import ReplayPlugin
from torchmetrics.functional.classification import binary_auroc
from tqdm.auto import tqdm

from dfcl.scoring import validation_scores


class EpochProgress(SupervisedPlugin):
    """A tqdm bar over each training epoch with the running loss (Avalanche's InteractiveLogger
    also prints every metric)."""

    def __init__(self):
        super().__init__()
        self.bar = None

    def before_training_epoch(self, strategy, **_):
        epochs = strategy.train_epochs
        self.bar = tqdm(total=len(strategy.dataloader), leave=False, unit="batch",
                        desc=f"experience {strategy.experience.current_experience} "
                             f"epoch {strategy.clock.train_exp_epochs + 1}/{epochs}")

    def after_training_iteration(self, strategy, **_):
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{strategy.loss.item():.3f}", refresh=False)

    def after_training_epoch(self, strategy, **_):
        self.bar.close()
        self.bar = None


class ChannelsLast(SupervisedPlugin):
    """Batches in channels_last memory layout, as the model is (see build_strategy): faster
    convolutions on CPU (measured 1.4x for EfficientNet-Lite0 at 128 px) and on CUDA."""

    def _to_channels_last(self, strategy, **_):
        strategy.mbatch[0] = strategy.mbatch[0].contiguous(memory_format=torch.channels_last)

    before_forward = before_eval_forward = _to_channels_last


class CudaSpeedups(SupervisedPlugin):
    """bf16 autocast on CUDA. Avalanche's templates have no AMP switch, so this plugin wraps
    the forward passes; bf16 needs no gradient scaler."""

    def __init__(self):
        super().__init__()
        self._ctx = None

    def _enter(self, strategy, **_):
        self._ctx = torch.autocast("cuda", dtype=torch.bfloat16)
        self._ctx.__enter__()

    def _exit(self, strategy, **_):
        self._ctx.__exit__(None, None, None)
        self._ctx = None
        strategy.mb_output = strategy.mb_output.float()

    before_forward = before_eval_forward = _enter
    after_forward = after_eval_forward = _exit


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

    def after_training_exp(self, strategy, **_):
        if self._best is not None:
            strategy.model.load_state_dict(self._best)
        self._best, self.faces = None, []  # nothing heavy kept between experiences


class PairedBatches(SupervisedPlugin):
    """Trains a self-blended experience (dfcl.sbi.SelfBlendedPairs) in batches of whole pairs: each
    real face beside its own blend, as the SBI reference's collate does, so that a batch's only
    difference between the classes is the blend. The learner sets `pairs` (the dataset) for such an
    experience; Avalanche's loaders shuffle faces one by one, so this one shuffles pairs. A
    strategy that already replaced the loader (Replay with a full buffer) keeps its own."""

    def __init__(self):
        super().__init__()
        self.pairs = None

    def before_training_exp(self, strategy, num_workers: int = 0, **_):
        from torch.utils.data import DataLoader

        if self.pairs is None or type(strategy.dataloader).__name__ == "ReplayDataLoader":
            return
        if len(strategy.adapted_dataset) != len(self.pairs):
            raise RuntimeError("PairedBatches: the experience is not the paired dataset it was given")
        # Workers made afresh every epoch (not persistent), so each gets this epoch's `epoch`.
        strategy.dataloader = DataLoader(
            strategy.adapted_dataset, batch_sampler=PairSampler(len(self.pairs) // 2, strategy.train_mb_size,
                                                                int(torch.randint(0, 2**31 - 1, ()))),
            num_workers=num_workers, collate_fn=strategy.adapted_dataset.collate_fn)

    def before_training_epoch(self, strategy, **_):
        if self.pairs is not None:
            self.pairs.epoch = strategy.clock.train_exp_epochs

    def after_training_exp(self, strategy, **_):
        self.pairs = None


class PairSampler(torch.utils.data.Sampler):
    """Batches of indices [2k, 2k+1, ...] over pairs in a new seeded order every epoch; a batch of
    `batch_size` faces holds batch_size // 2 whole pairs (at least one)."""

    def __init__(self, n_pairs: int, batch_size: int, seed: int):
        self.n_pairs, self.per_batch, self.seed, self.epoch = n_pairs, max(1, batch_size // 2), seed, 0

    def __len__(self):
        return math.ceil(self.n_pairs / self.per_batch)

    def __iter__(self):
        order = torch.randperm(self.n_pairs, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        self.epoch += 1
        for start in range(0, self.n_pairs, self.per_batch):
            yield [i for k in order[start:start + self.per_batch] for i in (2 * k, 2 * k + 1)]


class MaskLoss(SupervisedPlugin):
    """Trains a model's mask head (models/mask.py) beside its classifier: `weight` x the
    binary cross-entropy of the mask it predicts against each batch's known masks
    (dfcl.masks.mask_loss; unknown pixels and faces count for nothing) is added to the loss.
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
        from dfcl.masks import mask_loss

        if len(strategy.mbatch) < 4:
            raise RuntimeError("MaskLoss needs batches of (x, y, mask, task): datasets made with masks=True")
        loss = mask_loss(self._tap.logits, strategy.mbatch[2])
        if loss is not None:
            strategy.loss = strategy.loss + self.weight * loss

    def after_training_exp(self, strategy, **_):
        if self._tap is not None:
            self._tap.close()
            self._tap = None

