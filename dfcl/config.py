"""params.yaml loading with DVC-style `-S key=value` overrides."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Iterable

import yaml

PACKAGED_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
# Keys that moved: the flat strategy settings now sit under the strategy they belong to.
RENAMED = {"strategy.replay_mem_size": "strategy.replay.mem_size",
           "strategy.gem_patterns_per_exp": "strategy.gem.patterns_per_exp",
           "strategy.gem_memory_strength": "strategy.gem.memory_strength",
           "strategy.cwr_layer_name": "strategy.cwr.cwr_layer_name",
           "strategy.lwf_alpha": "strategy.lwf.alpha", "strategy.lwf_temperature": "strategy.lwf.temperature",
           "strategy.ewc_lambda": "strategy.ewc.ewc_lambda", "strategy.ewc_decay": "strategy.ewc.decay_factor"}


class ConfigError(ValueError):
    pass


def load_params(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict:
    """The packaged defaults, under the workspace's params.yaml (when there is one), then
    `section.key=value` overrides; values are parsed as YAML (`1`, `true`, `[a,b]`). A workspace
    made by an older version thus still gets every setting added since."""
    params = yaml.safe_load(PACKAGED_PARAMS.read_text()) or {}
    path = Path(path) if path else Path("params.yaml")
    if path.exists() and path.resolve() != PACKAGED_PARAMS.resolve():
        params = merged(params, moved_keys_renamed(yaml.safe_load(path.read_text()) or {}, path))
    return apply_overrides(params, overrides)


def moved_keys_renamed(params: dict, path: Path) -> dict:
    """A workspace's params.yaml written before keys moved (see RENAMED) keeps its values, under
    the new names; a warning says which."""
    for old, new in RENAMED.items():
        section, leaf = old.split(".")
        if leaf in params.get(section, {}):
            value = params[section].pop(leaf)
            node = params
            for part in new.split(".")[:-1]:
                node = node.setdefault(part, {})
            node[new.rsplit(".", 1)[1]] = value
            warnings.warn(f"{path}: {old} is now {new}; please rename it there", stacklevel=2)
    return params


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
        key = key.strip()
        if key in RENAMED:
            raise ConfigError(f"{key} is now {RENAMED[key]} (strategy settings sit under their strategy)")
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown parameter section {part!r} in {key!r}")
            node = node[part]
        if leaf not in node:
            known = ", ".join(sorted(node))
            raise ConfigError(f"unknown parameter {key!r}; known here: {known}")
        node[leaf] = _checked(key, _parse_value(raw), node[leaf])
    return params


def _checked(key: str, value: Any, default: Any) -> Any:
    """`value` if it has the type of the default (an int where a float is expected is taken as a
    float; a null default takes anything), else a one-line error (as nanoGPT's configurator)."""
    if default is None or value is None:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        raise ConfigError(f"{key}={value!r} is {type(value).__name__}, but {key} takes "
                          f"{type(default).__name__} (like its default {default!r})")
    return value


def check_names(params: dict) -> None:
    """Fail before any work on an unknown strategy or model name."""
    # Imported here: the strategies and models pull in torch, and this module stays light.
    from dfcl.strategies import STRATEGIES
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
