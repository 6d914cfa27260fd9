from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, *, num_classes: int = 2, weights: str | None = None, **kwargs) -> nn.Module:
    """Build a registered model. `weights` is an optional local file (never a hub download);
    each family loads it its own way."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    if weights and not Path(weights).is_file():
        raise FileNotFoundError(f"model.weights={weights!r} is not a file")
    return _MODELS[name](num_classes=num_classes, weights=weights, **kwargs)
