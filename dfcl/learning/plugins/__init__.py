"""Avalanche plugins of deepfake-cl, one per file and each named for what it does (Avalanche's
own plugins/ layout): the strategy is a stock Avalanche template, these add what it lacks."""
from dfcl.learning.plugins.best_epoch import BestValidationEpoch
from dfcl.learning.plugins.class_balance import ClassBalancedLoss
from dfcl.learning.plugins.epoch_checkpoint import EpochCheckpoint
from dfcl.learning.plugins.frozen_bn import FrozenBatchNormStats
from dfcl.learning.plugins.frozen_stages import FrozenStages
from dfcl.learning.plugins.lr_schedule import LRSchedule
from dfcl.learning.plugins.mask_loss import MaskLoss
from dfcl.learning.plugins.paired_batches import PairedBatches, PairSampler
from dfcl.learning.plugins.progress import EpochProgress
from dfcl.learning.plugins.speedups import ChannelsLast, CudaSpeedups

__all__ = ["EpochProgress", "ChannelsLast", "CudaSpeedups", "ClassBalancedLoss", "LRSchedule", "FrozenBatchNormStats", "FrozenStages", "BestValidationEpoch", "EpochCheckpoint", "PairedBatches", "PairSampler", "MaskLoss"]
