"""PairedBatches and PairSampler: a self-blended experience in batches of whole (real, blend) pairs."""
from __future__ import annotations

import math

import torch
from avalanche.core import SupervisedPlugin


class PairedBatches(SupervisedPlugin):
    """Trains a self-blended experience (dfcl.data.sbi.SelfBlendedPairs) in batches of whole pairs: each
    real face beside its own blend, as the SBI reference's collate does, so that a batch's only
    difference between the classes is the blend. The learner sets `pairs` (the dataset) for such an
    experience; Avalanche's loaders shuffle faces one by one, so this one shuffles pairs. A
    strategy that already replaced the loader (Replay with a full buffer) keeps its own. The order
    of epoch e is a function of `seed`, the experience's index and e alone (not of torch's RNG), so
    an experience resumed from an epoch checkpoint (EpochCheckpoint) draws the pairs it would have."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.pairs, self.seed, self.sampler = None, seed, None

    def before_training_exp(self, strategy, num_workers: int = 0, **_):
        from torch.utils.data import DataLoader

        if self.pairs is None or type(strategy.dataloader).__name__ == "ReplayDataLoader":
            return
        if len(strategy.adapted_dataset) != len(self.pairs):
            raise RuntimeError("PairedBatches: the experience is not the paired dataset it was given")
        self.sampler = PairSampler(len(self.pairs) // 2, strategy.train_mb_size,
                                   self.seed * 1000 + strategy.clock.train_exp_counter)
        # Workers made afresh every epoch (not persistent), so each gets this epoch's `epoch`.
        strategy.dataloader = DataLoader(strategy.adapted_dataset, batch_sampler=self.sampler,
                                         num_workers=num_workers, collate_fn=strategy.adapted_dataset.collate_fn)

    def before_training_epoch(self, strategy, **_):
        if self.pairs is not None:
            self.pairs.epoch = strategy.clock.train_exp_epochs
        if self.sampler is not None:
            self.sampler.epoch = strategy.clock.train_exp_epochs

    def after_training_exp(self, strategy, **_):
        self.pairs = self.sampler = None


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
