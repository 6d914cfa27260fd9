"""Two-stream detector: the small CNN on the RGB crop beside one on the crop's frequency spectrum.

Forgeries leave traces that are easier to see in the spectrum than in pixels: the checkerboard
of transposed-convolution upsampling, the smoothing of a blended region, re-compression grids
(Durall et al., CVPR 2020; Qian et al., F3-Net, ECCV 2020). The spectrum stream sees the
log-magnitude of each colour channel's 2-D FFT, centred, so it does not depend on where in
the crop an artefact sits. Both streams are pooled, concatenated and classified by one `head`.
"""
import torch
from torch import nn

from models.normalize import SIMPLE_MEAN, SIMPLE_STD, normalize
from models.registry import register_model
from models.small_cnn import conv_features


def log_spectrum(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images -> (B, C, H, W) centred log-magnitude spectra, per image and channel.

    Computed in float32 outside autocast: half-precision FFTs on CUDA need power-of-two sizes
    and lose the small high-frequency magnitudes this stream is for."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        x = x - x.mean(dim=(-2, -1), keepdim=True)  # drop the DC term, which only says how bright
        spectrum = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
        return torch.log1p(spectrum.abs())


class SpectrumCNN(nn.Module):
    MEAN, STD = SIMPLE_MEAN, SIMPLE_STD

    def __init__(self, num_classes: int = 2, width: int = 32, dropout: float = 0.2):
        super().__init__()
        self.rgb, channels = conv_features(width)
        # Batch norm first: log spectra are on a very different scale from [0, 1] pixels.
        self.spectrum = nn.Sequential(nn.BatchNorm2d(3), conv_features(width)[0])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * channels, num_classes)

    def forward(self, x):
        x = normalize(x, self.MEAN, self.STD)
        rgb = self.pool(self.rgb(x)).flatten(1)
        freq = self.pool(self.spectrum(log_spectrum(x))).flatten(1)
        return self.head(self.dropout(torch.cat([rgb, freq.to(rgb.dtype)], dim=1)))


@register_model(cam_layer="rgb")  # the RGB stream: the spectrum's map has no spatial layout
def small_cnn_fft(num_classes: int = 2, width: int = 32, dropout: float = 0.2, **_) -> nn.Module:
    return SpectrumCNN(num_classes=num_classes, width=width, dropout=dropout)
