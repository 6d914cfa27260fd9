"""params.yaml loading with DVC-style `-S key=value` overrides."""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml

from dfcl.gate import (
    METRICS as GATE_METRICS,  # the gate's own list: numpy only, no torch
)

PACKAGED_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
# Keys that moved: the flat strategy settings now sit under the strategy they belong to
# (`dfcl migrate` renames them in a workspace's params.yaml).
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
    made by an older version thus still gets every setting added since. The workspace's file
    gets the checks an override gets (a known key, the default's type, not null unless the
    default is); then every value its range (RANGES, CHOICES)."""
    params = yaml.safe_load(PACKAGED_PARAMS.read_text()) or {}
    path = Path(path) if path else Path("params.yaml")
    if path.exists() and path.resolve() != PACKAGED_PARAMS.resolve():
        params = merged(params, yaml.safe_load(path.read_text()) or {}, where=f"{path}: ")
    params = apply_overrides(params, overrides)
    check_ranges(params)
    return params


def merged(base: dict, over: dict, where: str = "", prefix: str = "") -> dict:
    """`over` on top of `base`, section by section; every key of `over` must be one of `base`,
    with a value of its type (`where` says which file, in errors)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        name = f"{prefix}{key}"
        if name in RENAMED:
            raise ConfigError(f"{where}{name} is now {RENAMED[name]}: run `dfcl migrate` once to rename it")
        if key not in out:
            raise ConfigError(f"{where}{_unknown(name, key, out)}")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{name} is a section ({', '.join(sorted(out[key])) or 'empty'}), "
                                  f"not a value ({value!r})")
            out[key] = merged(out[key], value, where, name + ".")
        else:
            try:
                out[key] = _checked(name, value, out[key])
            except ConfigError as e:
                raise ConfigError(f"{where}{e}") from None
    return out


def _unknown(name: str, leaf: str, node: dict) -> str:
    """'unknown parameter ...', with the closest known name when there is one."""
    close = difflib.get_close_matches(leaf, list(node), n=1, cutoff=0.6)
    parent = name.rsplit(".", 1)[0] + "." if "." in name else ""
    hint = f" (did you mean {parent + close[0]!r}?)" if close else ""
    return f"unknown parameter {name!r}{hint}; known here: {', '.join(sorted(node)) or 'none'}"


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
        for i, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                close = difflib.get_close_matches(part, [k for k, v in node.items() if isinstance(v, dict)], n=1)
                raise ConfigError(f"unknown parameter section {part!r} in {key!r}"
                                  + (f" (did you mean {'.'.join(parents[:i] + close)!r}?)" if close else ""))
            node = node[part]
        if leaf not in node:
            raise ConfigError(_unknown(key, leaf, node))
        if isinstance(node[leaf], dict):
            raise ConfigError(f"{key} is a section ({', '.join(sorted(node[leaf])) or 'empty'}): set one of its keys")
        node[leaf] = _checked(key, _parse_value(raw), node[leaf])
    return params


def _checked(key: str, value: Any, default: Any) -> Any:
    """`value` if it has the type of the default (an int where a float is expected is taken as a
    float; a null default takes anything, and only a null default takes null), else a one-line
    error (as nanoGPT's configurator)."""
    if default is None:
        return value
    if value is None:
        raise ConfigError(f"{key} cannot be empty (null): it takes {type(default).__name__} "
                          f"(like its default {default!r})")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        raise ConfigError(f"{key}={value!r} is {type(value).__name__}, but {key} takes "
                          f"{type(default).__name__} (like its default {default!r})")
    return value


def _at_least(low):
    return (lambda v: v >= low), f"at least {low}"


def _above(low):
    return (lambda v: v > low), f"above {low}"


def _within(low, high):
    return (lambda v: low <= v <= high), f"from {low} to {high}"


def _between(low, high):
    return (lambda v: low < v < high), f"between {low} and {high} (exclusive)"


# Values a setting can take, where its type alone allows nonsense (a 0 that divides, hangs or
# rejects everything). Keys a params dict lacks are skipped; every `augment.*_p` is a probability.
RANGES = {
    "data.image_size": _at_least(16), "data.max_per_class": _at_least(0),
    "data.test_fraction": _within(0, 0.9), "data.val_fraction": _within(0, 0.9),
    "faces.frames_per_video": _at_least(1), "faces.max_video_seconds": _above(0), "faces.margin": _above(0), "faces.min_score": _within(0, 1),
    "faces.min_face_size": _at_least(1), "faces.detect_max_side": _at_least(1), "faces.batch_size": _at_least(1),
    "augment.crop_scale_min": _within(0.01, 1), "augment.jpeg_quality_min": _within(1, 100),
    "augment.jpeg_quality_max": _within(1, 100), "augment.resample_max": _at_least(1),
    "sbi.epochs": _at_least(0), "sbi.max_per_set": _at_least(0),
    "train.epochs": _at_least(1), "train.batch_size": _at_least(1), "train.eval_batch_size": _at_least(1),
    "train.lr": _at_least(0), "train.backbone_lr_scale": _at_least(0), "train.warmup_epochs": _at_least(0),
    "train.weight_decay": _at_least(0), "train.early_stopping_patience": _at_least(0),
    "train.num_workers": _at_least(0),
    "strategy.replay.mem_size": _at_least(1), "strategy.gem.patterns_per_exp": _at_least(1),
    "strategy.gem.memory_strength": _at_least(0), "strategy.lwf.alpha": _at_least(0),
    "strategy.lwf.temperature": _above(0), "strategy.ewc.ewc_lambda": _at_least(0),
    "strategy.ewc.decay_factor": _within(0, 1), "strategy.der.mem_size": _at_least(1),
    "strategy.der.alpha": _at_least(0), "strategy.der.beta": _at_least(0), "strategy.sur_lid.mem_size": _at_least(1),
    "strategy.sur_lid.bins": _at_least(1), "strategy.sur_lid.views": _at_least(0), "strategy.sur_lid.noise": _at_least(0),
    "strategy.dfil.mem_size": _at_least(1), "strategy.dfil.contrastive_weight": _at_least(0),
    "strategy.dfil.temperature": _above(0), "strategy.dfil.feature_weight": _at_least(0),
    "strategy.dfil.logit_weight": _at_least(0), "strategy.dfil.kd_temperature": _above(0),
    "compare.dask_workers": _at_least(1), "compare.dask_threads_per_worker": _at_least(1),
    "compare.retries": _at_least(0),
    "gate.max_drop_per_method": _at_least(0), "gate.max_drop_average": _at_least(0),
    "gate.confidence": _between(0, 1), "gate.max_drop_self_blended": _at_least(0), "gate.bootstrap": _at_least(1), "gate.max_forgetting": _at_least(0),
    "gate.max_point_drop": _at_least(0), "gate.min_auc": _within(0, 1),
    "approval.timeout_s": _above(0),
    "flow.serve.poll_s": _at_least(0), "flow.serve.queue_wait_s": _at_least(0), "flow.serve.quiet_s": _at_least(0),
    "flow.serve.max_attempts": _at_least(1), "flow.serve.retry_backoff_s": _at_least(0),
    "flow.lock_wait_s": _at_least(0), "flow.keep_learner_versions": _at_least(1),
    "trust.precision": _between(0.5, 1), "trust.novelty_quantile": _between(0, 1),
    "trust.components": _at_least(1), "trust.novelty_k": _at_least(1), "trust.novelty_reference": _at_least(1), "trust.fit_faces": _at_least(1), "trust.video_disagreement": _between(0, 1),
    "trust.keep": _within(0, 1),
    "detect.crop_min_fill": _within(0, 1), "detect.confident_fake": _within(0, 1),
    "detect.confident_fake_share": _within(0, 1), "detect.confident_real": _within(0, 1),
    "detect.confident_real_share": _within(0, 1), "detect.explain_top_frames": _at_least(0),
    "api.port": _within(0, 65535), "api.reload_s": _above(0), "api.max_upload_mb": _above(0),
    "api.max_video_seconds": _above(0), "api.max_concurrent": _at_least(1), "api.queue_timeout_s": _at_least(0),
}
CHOICES = {"gate.metric": GATE_METRICS, "detect.crop": ("auto", "always", "never"),
           "strategy.dfil.selection": ("sparse_uniform", "central_hard"),
           "train.schedule": ("constant", "cosine"), "train.batchnorm": ("train", "freeze_after_first", "frozen"),
           "detect.aggregate": ("mean", "confident"), "compare.runner": ("local", "dask"),
           "data.compression": ("c23", "c40", "raw")}


def strategy_names(params: dict) -> list[str]:
    """The strategies there are: each has its `strategy.<name>:` section of settings in params.yaml
    (dfcl.strategies builds each from its section)."""
    return [k for k, v in params["strategy"].items() if isinstance(v, dict)]


def check_ranges(params: dict) -> None:
    """A one-line error for the first value out of its range (RANGES) or choices (CHOICES), an
    unknown strategy name, or settings that contradict each other."""
    flat = flatten(params)
    for key, value in flat.items():
        if key.startswith("augment.") and key.endswith("_p"):
            rule = _within(0, 1)
        else:
            rule = RANGES.get(key)
        if rule and isinstance(value, (int, float)) and not isinstance(value, bool) and not rule[0](value):
            raise ConfigError(f"{key}={value!r} is out of range: it must be {rule[1]}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{key}={value!r}: choose one of {', '.join(CHOICES[key])}")
    if "strategy" in params:
        check_strategy_name(params["strategy"]["name"], params)
    if params.get("model", {}).get("mask_head") and not params["train"]["mask_loss_weight"] > 0:
        # An untrained head would show masks it never learned as evidence.
        raise ConfigError("model.mask_head=true needs train.mask_loss_weight > 0")
    if params.get("model", {}).get("mask_head") and params.get("strategy", {}).get("name") == "der":
        # Avalanche's DER unpacks batches as (x, y, task): the mask head's (x, y, mask, task) do not fit.
        raise ConfigError("strategy.name=der cannot train a mask head (model.mask_head=true): Avalanche's DER "
                          "takes batches without masks")


def check_strategy_name(name: str, params: dict) -> None:
    if name not in strategy_names(params):
        raise ConfigError(f"unknown strategy.name {name!r}; choose one of {', '.join(strategy_names(params))}")


def check_names(params: dict) -> None:
    """Fail before any work on a model name (or its weights, or a mask head) the model registry
    does not have. Apart from check_ranges: the registry is filled by importing the models (torch)."""
    from models import list_models, mask_head_models, pretrained_tags

    mp = params["model"]
    if mp["name"] not in list_models():
        raise ConfigError(f"unknown model.name {mp['name']!r}; registered: {', '.join(list_models())}")
    if mp["pretrained"] not in ("none", None, *pretrained_tags(mp["name"])):
        raise ConfigError(f"model {mp['name']!r} has no {mp['pretrained']!r} weights; it has: "
                          f"{', '.join(pretrained_tags(mp['name'])) or 'none (use model.pretrained=none)'}")
    if mp["mask_head"] and mp["name"] not in mask_head_models():
        raise ConfigError(f"model.mask_head=true: {mp['name']} has no mask head; "
                          f"models with one: {', '.join(mask_head_models())}")


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
