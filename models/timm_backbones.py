"""timm backbones trained from scratch (or from a local weights file), with a `head` layer."""
from __future__ import annotations

import timm
from torch import nn

from models.normalize import SIMPLE_MEAN, SIMPLE_STD, normalize
from models.registry import register_model


class TimmDetector(nn.Module):
    # From scratch, as these are trained here; fine-tuning from a user's weights file adapts.
    MEAN, STD = SIMPLE_MEAN, SIMPLE_STD

    def __init__(self, arch: str, num_classes: int = 2, dropout: float = 0.2):
        super().__init__()
        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0)  # never from a hub
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, x):
        return self.head(self.dropout(self.backbone(normalize(x, self.MEAN, self.STD))))


def backbone_checkpoint(state: dict, model: TimmDetector) -> dict:
    """A user's weights file for a timm detector: a state dict of this detector as it is, or of the
    plain timm network (an ImageNet checkpoint), whose classifier is dropped and whose tensors go
    to `backbone`; the detector's own `head` then starts as built."""
    if any(k.startswith("backbone.") for k in state):
        return state
    classifier = model.backbone.pretrained_cfg.get("classifier") or ""
    drop = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier) if c)
    own_head = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
    return {**{f"backbone.{k}": v for k, v in state.items() if not (drop and k.startswith(drop))}, **own_head}


def _register(name: str, arch: str, cam: str):
    def build(num_classes: int = 2, dropout: float = 0.2, **_) -> nn.Module:
        return TimmDetector(arch, num_classes=num_classes, dropout=dropout)

    build.__name__ = name
    register_model(build, cam_layer=f"backbone.{cam}", checkpoint_filter=backbone_checkpoint)


# name -> (timm architecture, its last feature-map module, which Grad-CAM explains)
for _name, (_arch, _cam) in {
    "efficientnet_b0": ("efficientnet_b0", "bn2"),
    "efficientnet_b4": ("efficientnet_b4", "bn2"),
    "xception": ("legacy_xception", "bn4"),
    "resnet18": ("resnet18", "layer4"),
    "resnet50": ("resnet50", "layer4"),
    "densenet121": ("densenet121", "features"),
}.items():
    _register(_name, _arch, _cam)
