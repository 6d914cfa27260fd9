"""params.yaml loading with DVC-style `-S key=value` overrides."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

PACKAGED_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


class ConfigError(ValueError):
    pass


def load_params(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """The packaged defaults, under the workspace's params.yaml (when there is one), then
    `section.key=value` overrides; values are parsed as YAML (`1`, `true`, `[a,b]`). A workspace
    made by an older version thus still gets every setting added since."""
    params = yaml.safe_load(PACKAGED_PARAMS.read_text()) or {}
    path = Path(path) if path else Path("params.yaml")
    if path.exists() and path.resolve() != PACKAGED_PARAMS.resolve():
        params = merged(params, yaml.safe_load(path.read_text()) or {})
    return apply_overrides(params, overrides)


def merged(base: dict, over: dict) -> dict:
    """`over` on top of `base`, section by section."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_overrides(params: dict, overrides: Iterable[str]) -> dict:
    params = copy.deepcopy(params)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.epochs=1)")
        key, raw = item.split("=", 1)
        *parents, leaf = key.strip().split(".")
        node = params
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown parameter section {part!r} in {key!r}")
            node = node[part]
        if leaf not in node:
            known = ", ".join(sorted(node))
            raise ConfigError(f"unknown parameter {key!r}; known here: {known}")
        node[leaf] = _parse_value(raw)
    return params


def check_names(params: dict) -> None:
    """Fail before any work on an unknown strategy or model name."""
    # Imported here: the strategies and models pull in torch, and this module stays light.
    from dfcl.learner import STRATEGIES
    from models import list_models, pretrained_tags

    if params["strategy"]["name"] not in STRATEGIES:
        raise ConfigError(f"unknown strategy.name {params['strategy']['name']!r}; choose one of {', '.join(STRATEGIES)}")
    mp = params["model"]
    if mp["name"] not in list_models():
        raise ConfigError(f"unknown model.name {mp['name']!r}; registered: {', '.join(list_models())}")
    if mp["pretrained"] not in ("none", None, *pretrained_tags(mp["name"])):
        raise ConfigError(f"model {mp['name']!r} has no {mp['pretrained']!r} weights; it has: "
                          f"{', '.join(pretrained_tags(mp['name'])) or 'none (use model.pretrained=none)'}")


def _parse_value(raw: str) -> Any:
    if raw == "":
        return None
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:  # YAML 1.1 reads `1e-4` as a string; users mean a number
            return float(value)
        except ValueError:
            pass
    return value


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}, for logging as MLflow params."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
