"""Input normalisation inside the model: every model takes [0, 1] images, so no caller needs to
know which statistics a model was trained with (ImageNet's for pretrained backbones)."""
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What the from-scratch models were always trained with: [0, 1] -> about [-2, 2].
SIMPLE_MEAN, SIMPLE_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    # Constants, not buffers: checkpoints and pickled models from before this existed still load.
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
