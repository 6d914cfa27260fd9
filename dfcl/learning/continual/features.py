"""The pooled features the continual methods here work on: the input of the model's `head`.

Every detector in models/ ends in an `nn.Linear` named `head` (see models/__init__.py), so its
input is the penultimate, pooled feature vector of any architecture, without knowing the
backbone's layer names. Note that in train mode it is taken after the model's dropout.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class HeadTap:
    """Keeps the input of `model.head` from the model's last forward pass in `features`.

    A forward pre-hook does this; `close()` removes it. Close the tap before the model is
    deep-copied or pickled (a teacher copy, a checkpoint), or the hook travels with it.
    Usable as a context manager.
    """

    def __init__(self, model: nn.Module):
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear):
            raise ValueError(f"{type(model).__name__} has no nn.Linear `head` to take features from")
        self.features: torch.Tensor | None = None
        self._handle = head.register_forward_pre_hook(self._keep)

    def _keep(self, module, inputs):
        self.features = inputs[0]

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle, self.features = None, None

    def __enter__(self) -> "HeadTap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
          "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in eval mode without gradients, and without the forward hooks the
    live model has (this package's taps, MaskLoss's): a frozen teacher must not run them, and
    their owners need not be copyable. The hooks are set aside during the copy, then restored."""
    aside = {}
    for module in model.modules():
        for name in _HOOKS:
            if hasattr(module, name):
                aside[module, name] = getattr(module, name)
                setattr(module, name, type(aside[module, name])())
    try:
        teacher = copy.deepcopy(model)
    finally:
        for (module, name), hooks in aside.items():
            setattr(module, name, hooks)
    return teacher.eval().requires_grad_(False)
