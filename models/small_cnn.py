"""A small, fast CNN for CPU runs: conv blocks with batch norm, global pooling, linear head."""
from torch import nn

from models.mask import add_mask_head
from models.normalize import SIMPLE_MEAN, SIMPLE_STD, normalize
from models.registry import register_model

CAM_LAYER = "features"  # the last conv block's output: Grad-CAM's layer and the mask head's input


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def conv_features(width: int, depth: int = 4) -> tuple[nn.Sequential, int]:
    """The conv blocks (each halves the size) and how many channels they end with."""
    channels = [3] + [width * 2**min(i, 3) for i in range(depth)]
    return nn.Sequential(*[_block(a, b) for a, b in zip(channels, channels[1:])]), channels[-1]


class SmallCNN(nn.Module):
    MEAN, STD = SIMPLE_MEAN, SIMPLE_STD

    def __init__(self, num_classes: int = 2, width: int = 32, depth: int = 4, dropout: float = 0.2):
        super().__init__()
        self.features, channels = conv_features(width, depth)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.pool(self.features(normalize(x, self.MEAN, self.STD))).flatten(1)
        return self.head(self.dropout(x))


@register_model(cam_layer=CAM_LAYER)
def small_cnn(num_classes: int = 2, width: int = 32, dropout: float = 0.2, mask_head: bool = False, **_) -> nn.Module:
    model = SmallCNN(num_classes=num_classes, width=width, depth=4, dropout=dropout)
    if mask_head:
        add_mask_head(model, CAM_LAYER)
    return model
