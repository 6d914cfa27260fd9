"""The forgery-mask head: where in the face the forgery is, beside whether there is one.

A model built with `create_model(name, mask_head=True)` has a submodule `mask_head`: a light
decoder on the feature map the registry declares for Grad-CAM (`cam_layer`, the last one whose
layout still matches the face). The model's forward is unchanged (logits (B, 2) only), so every
Avalanche strategy trains it as any other model; the mask comes from a forward hook on that
layer (`MaskTap`), during training (dfcl.learning.plugins.MaskLoss) and for evidence (`predict_mask`).

Mask values: probabilities that a pixel is forged. Target masks in training and evaluation are
float (1, S, S) in [0, 1], with UNKNOWN (-1) where no mask is known (dfcl.data.masks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import cam_layer


def _up(c_in: int, c_out: int) -> nn.Sequential:
    # GroupNorm, not batch norm: train.batchnorm (frozen or kept statistics) is about the
    # backbone, and a head that starts from scratch should not start from frozen statistics.
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                         nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(8, c_out), nn.ReLU(inplace=True))


class MaskHead(nn.Module):
    """(B, C, h, w) features -> (B, 1, 4h, 4w) mask logits: a 1x1 reduction, two upsample-conv
    blocks, a 1x1 output. At 160 px Lite0's 5x5 map gives 20x20 (1/8 of the face), the small
    CNN's 1/16 map 1/4."""

    def __init__(self, channels: int, width: int = 64):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(channels, width, 1, bias=False), nn.GroupNorm(8, width), nn.ReLU(inplace=True))
        self.up = nn.Sequential(_up(width, width // 2), _up(width // 2, width // 4))
        self.out = nn.Conv2d(width // 4, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(self.reduce(features)))


def feature_channels(layer: nn.Module) -> int:
    """How many channels `layer` outputs: its last convolution's or normalisation's."""
    last = [m for m in layer.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    if not last:
        raise ValueError(f"cannot tell the channels of {type(layer).__name__}")
    return last[-1].out_channels if isinstance(last[-1], nn.Conv2d) else last[-1].num_features


def add_mask_head(model: nn.Module, layer: str) -> nn.Module:
    """`model` with a `mask_head` on the output of its submodule `layer` (a dotted path)."""
    model.mask_head = MaskHead(feature_channels(model.get_submodule(layer)))
    return model


def has_mask_head(model: nn.Module) -> bool:
    return isinstance(getattr(model, "mask_head", None), nn.Module)


class MaskTap:
    """Runs the mask head on the cam_layer's output whenever the model runs forward; the last
    forward's mask logits are in `logits`. Inside autocast the head runs with the backbone's dtype.
    `close()` removes the hook (a hooked model must not be deep-copied or pickled: LwF's copy of
    the model, checkpoints)."""

    def __init__(self, model: nn.Module, name: str | None = None):
        if not has_mask_head(model):
            raise ValueError(f"{type(model).__name__} has no mask head (create_model(..., mask_head=True))")
        self.logits: torch.Tensor | None = None
        self._head = model.mask_head
        self._handle = cam_layer(model, name).register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.logits = self._head(output)

    def close(self) -> None:
        self._handle.remove()
        self.logits = self._head = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def predict_mask(model: nn.Module, name: str | None, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of `model` on x (B, 3, H, W) in [0, 1]: (class logits (B, 2), mask
    probabilities (B, H, W) upsampled to the input size). `name`: the registered architecture."""
    with MaskTap(model, name) as tap:
        logits = model(x)
        mask = tap.logits
    mask = F.interpolate(mask.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits, torch.sigmoid(mask)[:, 0]
