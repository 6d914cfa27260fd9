"""timm backbones trained from scratch (or from a local weights file), with a `head` layer."""
import timm
from torch import nn

from models.normalize import SIMPLE_MEAN, SIMPLE_STD, normalize
from models.registry import register_model


class TimmDetector(nn.Module):
    # From scratch, as these are trained here; fine-tuning from a user's weights file adapts.
    MEAN, STD = SIMPLE_MEAN, SIMPLE_STD

    def __init__(self, arch: str, num_classes: int = 2, dropout: float = 0.2, weights: str | None = None):
        super().__init__()
        # A weights file goes through timm's own pretrained loader (it drops the ImageNet
        # classifier and adapts input convs); without one nothing is loaded, never from a hub.
        overlay = {"file": weights} if weights else None
        self.backbone = timm.create_model(arch, pretrained=bool(weights), pretrained_cfg_overlay=overlay, num_classes=0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, x):
        return self.head(self.dropout(self.backbone(normalize(x, self.MEAN, self.STD))))


def _register(name: str, arch: str, cam: str):
    def build(num_classes: int = 2, dropout: float = 0.2, weights=None, **_) -> nn.Module:
        return TimmDetector(arch, num_classes=num_classes, dropout=dropout, weights=weights)

    build.__name__ = name
    register_model(build, cam_layer=f"backbone.{cam}")


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
