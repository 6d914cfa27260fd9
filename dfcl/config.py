"""params.yaml, typed: one pydantic model per section (types, ranges, choices, unknown keys
refused with the nearest name), loaded once as `Params` (the packaged defaults, under the
workspace's params.yaml, then DVC-style `-S key=value` overrides). Functions are given the
section they read (`cfg.gate`, `cfg.dvc`); params.yaml says what each key means.

Over 300 lines: the models are the schema of every setting, one line each, and read best in one
place beside the loading that checks them."""
from __future__ import annotations

import copy
import difflib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# The packaged defaults, package data read with importlib.resources (so an installed wheel has
# them): params.yaml, a symlink to the repository's root file (the one DVC and the developers
# edit; building the wheel copies its content in), and dvc.yaml, the template of a new
# workspace's (the demo-data stage). The template is a file of its own: the checkout is a
# workspace too, and every ingest there adds a stage to the root dvc.yaml, which a wheel built
# from that checkout must not hand to the next new workspace.
PACKAGED = resources.files("dfcl") / "defaults"
PACKAGED_PARAMS = PACKAGED / "params.yaml"
# Keys that moved: the flat strategy settings now sit under the strategy they belong to
# (`dfcl migrate` renames them in a workspace's params.yaml).
RENAMED = {"strategy.replay_mem_size": "strategy.replay.mem_size",
           "strategy.gem_patterns_per_exp": "strategy.gem.patterns_per_exp",
           "strategy.gem_memory_strength": "strategy.gem.memory_strength",
           "strategy.cwr_layer_name": "strategy.cwr.cwr_layer_name",
           "strategy.lwf_alpha": "strategy.lwf.alpha", "strategy.lwf_temperature": "strategy.lwf.temperature",
           "strategy.ewc_lambda": "strategy.ewc.ewc_lambda", "strategy.ewc_decay": "strategy.ewc.decay_factor"}

# Keys that went: a workspace's params.yaml made before still loads (the key is ignored), and
# `dfcl migrate` deletes it. Value: where the setting lives now.
REMOVED = {"trust.small_face_drop": "trust.size_bands (a band per face size instead of one floor: docs/detection.md)",
           "detect.image_types": "dfcl/data/images.py (one list of media types for ingest, detect and the API)",
           "detect.video_types": "dfcl/data/images.py (one list of media types for ingest, detect and the API)"}

# What the promotion gate compares (gate.metric); dfcl.measure.gate reads it from here.
GateMetric = Literal["auc", "balanced_accuracy"]
GATE_METRICS = get_args(GateMetric)


class ConfigError(ValueError):
    pass


class Section(BaseModel):
    """A section of params.yaml: every key known (no extras), of its type (strict: an int where a
    float is expected is taken; "1" for an int is not), checked again when a value is set."""
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class DataConfig(Section):
    image_size: int = Field(ge=16)
    real_names: list[str]
    compression: Literal['c23', 'c40', 'raw']
    max_per_class: int = Field(ge=0)
    test_fraction: float = Field(ge=0, le=0.9)
    val_fraction: float = Field(ge=0, le=0.9)
    identity_distance: float = Field(ge=0)
    seed: int


class FacesConfig(Section):
    frames_per_video: int = Field(ge=1)
    max_video_seconds: int = Field(gt=0)
    margin: float = Field(gt=0)
    min_score: float = Field(ge=0, le=1)
    min_face_size: int = Field(ge=1)
    detect_max_side: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    device: str
    detect_in_images: bool
    landmarks: bool


class AugmentConfig(Section):
    enabled: bool
    flip_p: float = Field(ge=0, le=1)
    crop_p: float = Field(ge=0, le=1)
    crop_scale_min: float = Field(ge=0.01, le=1)
    color_p: float = Field(ge=0, le=1)
    color_strength: float
    hue_degrees: int
    sharpen_p: float = Field(ge=0, le=1)
    resample_p: float = Field(ge=0, le=1)
    resample_max: float = Field(ge=1)
    jpeg_p: float = Field(ge=0, le=1)
    jpeg_quality_min: int = Field(ge=1, le=100)
    jpeg_quality_max: int = Field(ge=1, le=100)
    blur_p: float = Field(ge=0, le=1)
    blur_sigma_max: float
    noise_p: float = Field(ge=0, le=1)
    noise_std_max: float
    cutout_p: float = Field(ge=0, le=1)
    cutout_fraction: float


class DemoConfig(Section):
    methods: list[str]
    train_per_class: int
    test_per_class: int
    size: int
    seed: int
    overrides: list[str]


class SbiConfig(Section):
    enabled: bool
    per_real: float
    method: str
    first: bool
    real_sets: list[str]
    max_per_set: int = Field(ge=0)
    epochs: int = Field(ge=0)


class ModelConfig(Section):
    name: str
    pretrained: str
    width: int
    dropout: float
    weights: str | None
    mask_head: bool


class NaiveSettings(Section):
    pass


class CwrSettings(Section):
    cwr_layer_name: str


class ReplaySettings(Section):
    mem_size: int = Field(ge=1)


class GemSettings(Section):
    patterns_per_exp: int = Field(ge=1)
    memory_strength: float = Field(ge=0)


class LwfSettings(Section):
    alpha: float = Field(ge=0)
    temperature: float = Field(gt=0)


class EwcSettings(Section):
    mode: str
    ewc_lambda: float = Field(ge=0)
    decay_factor: float = Field(ge=0, le=1)


class CumulativeSettings(Section):
    pass


class DerSettings(Section):
    mem_size: int = Field(ge=1)
    alpha: float = Field(ge=0)
    beta: float = Field(ge=0)


class SurLidSettings(Section):
    mem_size: int = Field(ge=1)
    bins: int = Field(ge=1)
    views: int = Field(ge=0)
    noise: float = Field(ge=0)


class DfilSettings(Section):
    mem_size: int = Field(ge=1)
    selection: Literal['sparse_uniform', 'central_hard']
    contrastive_weight: float = Field(ge=0)
    temperature: float = Field(gt=0)
    feature_weight: float = Field(ge=0)
    logit_weight: float = Field(ge=0)
    kd_temperature: float = Field(gt=0)


class StrategyConfig(Section):
    """`name` picks the strategy; each strategy has a section of its Avalanche class's own
    arguments (dfcl.learning.strategies builds it from that section)."""
    name: str
    naive: NaiveSettings
    cwr: CwrSettings
    replay: ReplaySettings
    gem: GemSettings
    lwf: LwfSettings
    ewc: EwcSettings
    cumulative: CumulativeSettings
    der: DerSettings
    sur_lid: SurLidSettings
    dfil: DfilSettings

    def names(self) -> list[str]:
        """The strategies there are: one per settings section."""
        return [k for k, v in self if isinstance(v, Section)]

    def settings(self, name: str | None = None) -> dict:
        """The chosen (or the named) strategy's settings, as its Avalanche class's arguments."""
        return getattr(self, name or self.name).model_dump()


class CompareConfig(Section):
    seeds: list[int]
    runner: Literal['local', 'dask']
    dask_address: str | None
    dask_workers: int = Field(ge=1)
    dask_threads_per_worker: int = Field(ge=1)
    worker_data: str | None
    retries: int = Field(ge=0)


class TrainConfig(Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    eval_batch_size: int = Field(ge=1)
    eval_upcoming: bool
    lr: float = Field(ge=0)
    backbone_lr_scale: float = Field(ge=0)
    warmup_epochs: float = Field(ge=0)
    weight_decay: float = Field(ge=0)
    schedule: Literal['constant', 'cosine']
    batchnorm: Literal['train', 'freeze_after_first', 'frozen']
    frozen_stages: int = Field(ge=0)
    early_stopping_patience: int = Field(ge=0)
    class_balance: bool
    mask_loss_weight: float
    device: str
    num_workers: int = Field(ge=0)
    heap_allocations: bool
    seed: int


class GateConfig(Section):
    metric: GateMetric
    max_drop_per_method: float = Field(ge=0)
    max_drop_average: float = Field(ge=0)
    max_drop_self_blended: float = Field(ge=0)
    max_point_drop: float = Field(ge=0)
    min_auc: float = Field(ge=0, le=1)
    confidence: float = Field(gt=0, lt=1)
    bootstrap: int = Field(ge=1)
    seed: int
    max_forgetting: float = Field(ge=0)
    trust_pickle: bool


class ApprovalConfig(Section):
    timeout_s: int = Field(gt=0)


class ServeConfig(Section):
    cron: str
    timezone: str
    poll_s: int = Field(ge=0)
    queue_wait_s: int = Field(ge=0)
    quiet_s: int = Field(ge=0)
    max_attempts: int = Field(ge=1)
    retry_backoff_s: int = Field(ge=0)


class FlowConfig(Section):
    serve: ServeConfig
    lock_wait_s: int = Field(ge=0)
    keep_learner_versions: int = Field(ge=1)


class TrustConfig(Section):
    precision: float = Field(gt=0.5, lt=1)
    novelty_quantile: float = Field(gt=0, lt=1)
    novelty_k: int = Field(ge=1)
    novelty_reference: int = Field(ge=1)
    components: int = Field(ge=1)
    fit_faces: int = Field(ge=1)
    video_disagreement: float = Field(gt=0, lt=1)
    keep: float = Field(ge=0, le=1)
    flip: bool
    views_cost: float = Field(ge=0, lt=1)
    size_bands: bool
    size_min_answers: int = Field(ge=1)
    small_face_faces: int = Field(ge=1)
    edge_quantile: float = Field(ge=0, lt=1)
    unseen_sets: list[str]
    foreign_reals: list[str]
    foreign_keep: float = Field(gt=0, le=1)
    sharp_keep: float = Field(gt=0, le=1)


class DetectConfig(Section):
    crop: Literal['auto', 'always', 'never']
    crop_min_fill: float = Field(ge=0, le=1)
    aggregate: Literal['mean', 'confident']
    confident_fake: float = Field(ge=0, le=1)
    confident_fake_share: float = Field(ge=0, le=1)
    confident_real: float = Field(ge=0, le=1)
    confident_real_share: float = Field(ge=0, le=1)
    explain_top_frames: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    workers: int = Field(ge=1)


class ApiConfig(Section):
    host: str
    port: int = Field(ge=0, le=65535)
    alias: str
    reload_s: int = Field(gt=0)
    max_upload_mb: int = Field(gt=0)
    max_image_pixels: int
    max_video_pixels: int
    max_video_seconds: int = Field(gt=0)
    allowed_types: list[str]
    max_concurrent: int = Field(ge=1)
    queue_timeout_s: int = Field(ge=0)
    upload_timeout_s: int
    detect_timeout_s: int
    max_connections: int
    token_env: str | None
    allowed_hosts: list[str]
    trust_pickle: bool


class MlflowConfig(Section):
    experiment: str
    compare_experiment: str
    registered_model: str


class DvcConfig(Section):
    remote_name: str
    remote_url: str
    push: bool
    git_commit: bool


class Params(Section):
    data: DataConfig
    faces: FacesConfig
    augment: AugmentConfig
    demo: DemoConfig
    sbi: SbiConfig
    model: ModelConfig
    strategy: StrategyConfig
    compare: CompareConfig
    train: TrainConfig
    gate: GateConfig
    approval: ApprovalConfig
    flow: FlowConfig
    trust: TrustConfig
    detect: DetectConfig
    api: ApiConfig
    mlflow: MlflowConfig
    dvc: DvcConfig


    def replaced(self, **sections: dict) -> "Params":
        """A copy with some sections' values changed, checked as loading checks them:
        `params.replaced(faces={"margin": 1.1})`."""
        data = self.model_dump()
        for name, values in sections.items():
            data[name] = {**data[name], **values}
        return validated(data)

    @model_validator(mode="after")
    def _consistent(self) -> "Params":
        names = self.strategy.names()
        if self.strategy.name not in names:
            raise ValueError(f"unknown strategy.name {self.strategy.name!r}; choose one of {', '.join(names)}")
        if self.model.mask_head and not self.train.mask_loss_weight > 0:
            # An untrained head would show masks it never learned as evidence.
            raise ValueError("model.mask_head=true needs train.mask_loss_weight > 0")
        if self.model.mask_head and self.strategy.name == "der":
            # Avalanche's DER unpacks batches as (x, y, task): the mask head's (x, y, mask, task) do not fit.
            raise ValueError("strategy.name=der cannot train a mask head (model.mask_head=true): Avalanche's DER "
                             "takes batches without masks")
        return self


def load_params(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Params:
    """The packaged defaults, under the workspace's params.yaml (when there is one), then
    `section.key=value` overrides; values are parsed as YAML (`1`, `true`, `[a,b]`). A workspace
    made by an older version thus still gets every setting added since. The workspace's file
    gets the checks an override gets: a known key, then the section models' types and ranges."""
    packaged = PACKAGED_PARAMS.read_text()
    params = yaml.safe_load(packaged) or {}
    path = Path(path) if path else Path("params.yaml")
    where = ""
    if path.exists() and path.read_text() != packaged:  # (the packaged file itself adds nothing)
        params = merged(params, yaml.safe_load(path.read_text()) or {}, where=f"{path}: ")
        where = f"{path}: " if not overrides else ""
    return validated(apply_overrides(params, overrides), where)


@lru_cache(maxsize=1)
def packaged_params() -> Params:
    """The packaged defaults alone: for readers not handed any (a default Augmenter, pixel limits)."""
    return validated(yaml.safe_load(PACKAGED_PARAMS.read_text()))


def validated(params: dict, where: str = "") -> Params:
    """`params` as a Params, or a one-line ConfigError naming the key, its value and what it takes."""
    try:
        return Params.model_validate(params)
    except ValidationError as e:
        raise ConfigError(where + _one_line(e.errors()[0], params)) from None


_TAKES = {"int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str", "list_type": "list",
          "int_parsing": "int", "float_parsing": "float"}


def _one_line(error: dict, params: dict) -> str:
    """Pydantic's first error in this project's words (as nanoGPT's configurator says them)."""
    model, parts = Params, []
    for part in error["loc"]:  # a union member's type name may follow the field's
        if isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            parts.append(part)
            model = model.model_fields[part].annotation
    key, field = ".".join(map(str, parts)), _field(parts)
    value, kind = error.get("input"), error["type"]
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if field is not None and field.annotation is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if value is None and kind in _TAKES | {"literal_error": ""}:
        return f"{key} cannot be empty (null): it takes {_TAKES.get(kind, 'one of its choices')}"
    if kind in _TAKES:
        return f"{key}={value!r} is {type(value).__name__}, but {key} takes {_TAKES[kind]}"
    if kind == "literal_error":
        return f"{key}={value!r}: choose one of {', '.join(get_args(field.annotation))}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{key}={value!r} is out of range: it must be {_range(field)}"
    if kind == "model_type":
        return f"{key} is a section: set one of its keys"
    return f"{key}: {error['msg']}"


def _field(parts: list[str]):
    model, field = Params, None
    for part in parts:
        field = model.model_fields[part]
        model = field.annotation
    return field


def _range(field) -> str:
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
    low = ("ge", bounds["ge"]) if "ge" in bounds else ("gt", bounds["gt"]) if "gt" in bounds else None
    high = ("le", bounds["le"]) if "le" in bounds else ("lt", bounds["lt"]) if "lt" in bounds else None
    if low and high:
        return (f"from {low[1]} to {high[1]}" if low[0] == "ge" and high[0] == "le"
                else f"between {low[1]} and {high[1]} (exclusive)")
    if low:
        return f"at least {low[1]}" if low[0] == "ge" else f"above {low[1]}"
    return f"at most {high[1]}" if high[0] == "le" else f"below {high[1]}"


def merged(base: dict, over: dict, where: str = "", prefix: str = "") -> dict:
    """`over` on top of `base`, section by section; every key of `over` must be one of `base`
    (`where` says which file, in errors). Types and ranges: the sections' models (Params)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        name = f"{prefix}{key}"
        if name in RENAMED:
            raise ConfigError(f"{where}{name} is now {RENAMED[name]}: run `dfcl migrate` once to rename it")
        if name in REMOVED and key not in out:
            continue
        if key not in out:
            raise ConfigError(f"{where}{_unknown(name, key, out)}")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{name} is a section ({', '.join(sorted(out[key])) or 'empty'}), "
                                  f"not a value ({value!r})")
            out[key] = merged(out[key], value, where, name + ".")
        elif isinstance(value, dict):
            raise ConfigError(f"{where}{name} is a value, not a section")
        else:
            out[key] = value
    return out


def _unknown(name: str, leaf: str, node: dict) -> str:
    """'unknown parameter ...', with the closest known name when there is one."""
    close = difflib.get_close_matches(leaf, list(node), n=1, cutoff=0.6)
    parent = name.rsplit(".", 1)[0] + "." if "." in name else ""
    hint = f" (did you mean {parent + close[0]!r}?)" if close else ""
    return f"unknown parameter {name!r}{hint}; known here: {', '.join(sorted(node)) or 'none'}"


def apply_overrides(params: dict | Params, overrides: Iterable[str]) -> dict | Params:
    """`section.key=value` items over `params`: a dict (checked for known keys only), or a
    Params (then checked in full, as loading checks it, and a Params again)."""
    if isinstance(params, Params):
        return validated(apply_overrides(params.model_dump(), overrides))
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
        node[leaf] = _parse_value(raw)
    return params


def check_names(model: ModelConfig) -> None:
    """Fail before any work on a model name (or its weights, or a mask head) the model registry
    does not have. Apart from Params' own checks: the registry is filled by importing the models
    (torch)."""
    from models import list_models, mask_head_models, pretrained_tags

    if model.name not in list_models():
        raise ConfigError(f"unknown model.name {model.name!r}; registered: {', '.join(list_models())}")
    if model.pretrained not in ("none", *pretrained_tags(model.name)):
        raise ConfigError(f"model {model.name!r} has no {model.pretrained!r} weights; it has: "
                          f"{', '.join(pretrained_tags(model.name)) or 'none (use model.pretrained=none)'}")
    if model.mask_head and model.name not in mask_head_models():
        raise ConfigError(f"model.mask_head=true: {model.name} has no mask head; "
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


def flatten(params: dict | BaseModel, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}, for logging as MLflow params."""
    if isinstance(params, BaseModel):
        params = params.model_dump()
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
