"""The model registry, as in timm: `@register_model` on a builder, `create_model(name)` to build.

Contract for every registered model: it takes images in [0, 1] (B, 3, H, W) and normalises
them itself (so training, evaluation and detection feed the same input whatever the model
learned on), returns logits (B, 2) with class 1 = fake, and names its classifier layer `head`
(CWR* consolidates it), and declares the layer Grad-CAM explains (`cam_layer`: the last
convolutional feature map, whose spatial layout still matches the face). Pretrained weights are loaded here, in one place, from files that
ship inside installed packages: nothing is ever downloaded.

A model built with `mask_head=True` (a builder that takes that argument: efficientnet_lite0/1/2,
small_cnn) also has a submodule `mask_head` (models/mask.py): a light decoder on the `cam_layer`
feature map giving mask logits (B, 1, h, w). Its forward still returns the logits (B, 2) only,
so every strategy trains it unchanged; `models.mask.predict_mask` hooks the layer to get the mask."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

import torch
from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
# name -> {tag: loader(model)}: the pretrained weights a model can start from (e.g. "imagenet").
_PRETRAINED: dict[str, dict[str, Callable[[nn.Module], None]]] = {}
_CAM_LAYERS: dict[str, str] = {}  # name -> dotted path of the module Grad-CAM hooks
# name -> checkpoint_filter(state, model): a family's way of reading a user's weights file into the
# detector's names (as timm's build_model_with_cfg takes a checkpoint_filter_fn per family).
_FILTERS: dict[str, Callable[[dict, nn.Module], dict]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *,
                   pretrained: dict[str, Callable[[nn.Module], None]] | None = None, cam_layer: str = "features",
                   checkpoint_filter: Callable[[dict, nn.Module], dict] | None = None):
    """`@register_model`, or `@register_model(pretrained={"imagenet": loader}, cam_layer="backbone.bn2")`."""
    def add(builder):
        _MODELS[builder.__name__] = builder
        _PRETRAINED[builder.__name__] = dict(pretrained or {})
        _CAM_LAYERS[builder.__name__] = cam_layer
        if checkpoint_filter:
            _FILTERS[builder.__name__] = checkpoint_filter
        return builder

    return add(fn) if fn is not None else add


def list_models() -> list[str]:
    return sorted(_MODELS)


def pretrained_tags(name: str) -> list[str]:
    """Which pretrained weights `name` can start from ([] = trained from scratch only)."""
    return sorted(_PRETRAINED.get(name, {}))


def mask_head_models() -> list[str]:
    """The models whose builder takes `mask_head`."""
    return sorted(n for n, b in _MODELS.items() if "mask_head" in inspect.signature(b).parameters)


def cam_layer(model: nn.Module, name: str | None = None) -> nn.Module:
    """The module whose activations Grad-CAM weighs: the one registered for `name` (by default
    the name create_model recorded), or, for a model of unknown name (a user's file), its last
    convolution before any mask head."""
    name = name or (getattr(model, "created_as", None) or {}).get("name")
    if name in _CAM_LAYERS:
        return model.get_submodule(_CAM_LAYERS[name])
    convs = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not n.startswith("mask_head.")]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution to explain")
    return convs[-1]


def create_model(name: str, *, num_classes: int = 2, pretrained: str = "none", weights: str | None = None,
                 **kwargs) -> nn.Module:
    """Build a registered model. `pretrained` names packaged weights (`dfcl models` lists them);
    `weights` is the user's own local file, loaded here after the packaged weights (through the
    family's `checkpoint_filter` where it registered one)."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    if weights and not Path(weights).is_file():
        raise FileNotFoundError(f"model.weights={weights!r} is not a file")
    pretrained = pretrained or "none"
    if pretrained != "none" and pretrained not in _PRETRAINED[name]:
        have = ", ".join(pretrained_tags(name)) or "none (it trains from scratch)"
        raise ValueError(f"model {name!r} has no {pretrained!r} weights; it has: {have}")
    if kwargs.get("mask_head") and name not in mask_head_models():
        raise ValueError(f"model {name!r} has no mask head (model.mask_head); models with one: "
                         f"{', '.join(mask_head_models())}")
    model = _MODELS[name](num_classes=num_classes, **kwargs)
    if pretrained != "none":
        _PRETRAINED[name][pretrained](model)
    if weights:
        load_weights_file(model, weights, _FILTERS.get(name))
    # What rebuilds this network around a saved state dict (models/pyfunc.py): not the weights it
    # started from, which the state dict replaces.
    model.created_as = {"name": name, "arguments": {"num_classes": num_classes, **kwargs}}
    return model


def load_weights_file(model: nn.Module, path: str, checkpoint_filter=None) -> nn.Module:
    """A user's own state dict (`model.weights`) into `model`, strictly, except that a file of
    the same detector without a mask head may leave `mask_head` out: the head then starts from
    scratch, as on pretrained weights. Tensors only (safetensors, or `weights_only`): never
    unpickled. Half-precision files (benchmarks/gpu_sbi.py's) load into the model's float32."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint_filter:
        state = checkpoint_filter(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("mask_head.")]
    if missing or unexpected:
        raise RuntimeError(f"{path} does not fit {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
