"""FrozenStages: the backbone's stem and first stages keep their pretrained weights while the rest trains."""
from __future__ import annotations

from avalanche.core import SupervisedPlugin
from timm.models import group_modules
from torch import nn


def first_groups(model: nn.Module, groups: int) -> list[nn.Module]:
    """The modules of the first `groups` of the backbone's coarse parameter groups, as timm's
    `group_matcher` defines them for its layer-wise learning-rate decay (group 0 = the stem, then
    one per stage), so the setting means the same for every timm backbone."""
    backbone = getattr(model, "backbone", None)
    if not hasattr(backbone, "group_matcher"):
        raise ValueError(f"train.frozen_stages={groups} needs a timm backbone (`model.backbone` with "
                         f"group_matcher); {type(model).__name__} has none: set train.frozen_stages: 0")
    by_group = group_modules(backbone, backbone.group_matcher(coarse=True))
    return [backbone.get_submodule(name) for g in sorted(by_group)[:groups] for name in by_group[g]]


class FrozenStages(SupervisedPlugin):
    """No gradient reaches the stem and first stages (`groups` of timm's coarse groups), and their
    batch-norm statistics stay: low-level filters of ImageNet serve any face, and a step that does
    not backpropagate through the high-resolution early layers is cheaper on a CPU
    (benchmarks/results/train_speed_cpu.md).

    Not timm.utils.freeze: it swaps BatchNorm2d for FrozenBatchNorm2d, which changes the model's
    modules and so the learners and registered models saved before; this keeps the model as built."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups
        self.frozen: list[nn.Module] = []

    def before_training_exp(self, strategy, **_):
        self.frozen = first_groups(strategy.model, self.groups)
        for module in self.frozen:
            module.requires_grad_(False)

    def before_training_iteration(self, strategy, **_):
        # Every iteration: Avalanche and the validation hooks switch the model back to train().
        for module in self.frozen:
            module.eval()

    def after_training_exp(self, strategy, **_):
        # Gradients again for what comes after training (Grad-CAM, other strategies' importance).
        for module in self.frozen:
            module.requires_grad_(True)
        self.frozen = []
