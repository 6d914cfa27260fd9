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
    """Read params.yaml (the workspace's if present, else the packaged defaults) and
    apply `section.key=value` overrides; values are parsed as YAML (`1`, `true`, `[a,b]`)."""
    path = Path(path) if path else Path("params.yaml")
    if not path.exists():
        path = PACKAGED_PARAMS
    params = yaml.safe_load(path.read_text()) or {}
    return apply_overrides(params, overrides)


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
