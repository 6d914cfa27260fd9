"""From params.yaml to an Avalanche strategy: the model from the registry, its optimizer, the
plugins the `train:` settings ask for, and the strategy class with its own `strategy.<name>:`
settings as keyword arguments."""
from __future__ import annotations

import torch
from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
from avalanche.training import EWC, GEM, CWRStar, Cumulative, LwF, Naive, Replay
from avalanche.training.plugins import EvaluationPlugin

from dfcl.config import ConfigError
from dfcl.memory import apply_heap_allocations
from dfcl.scoring import ExperienceAUC
from dfcl.plugins import (BestValidationEpoch, ChannelsLast, ClassBalancedLoss, CudaSpeedups, EpochProgress,
                          FrozenBatchNormStats, LRSchedule, MaskLoss)
from models import create_model
from models.registry import mask_head_models

# The one list of strategy names: `strategy.name` -> Avalanche class, built with the settings
# under `strategy.<name>` in params.yaml. Cumulative (joint retraining on every method so far)
# is the upper bound the others are compared with.
STRATEGIES = {"naive": Naive, "cwr": CWRStar, "replay": Replay, "gem": GEM, "lwf": LwF, "ewc": EWC,
              "cumulative": Cumulative}
SCHEDULES = ("constant", "cosine")
BATCHNORM = ("train", "freeze_after_first", "frozen")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_model(model_params: dict) -> torch.nn.Module:
    """The configured detector from the registry (`model:` in params.yaml)."""
    mp = model_params
    # mask_head only when on: a model without one is recorded (and rebuilt) as before the head existed.
    head = {"mask_head": True} if mp["mask_head"] else {}
    return create_model(mp["name"], width=mp["width"], dropout=mp["dropout"], weights=mp["weights"],
                        pretrained=mp["pretrained"], **head)


def make_optimizer(model: torch.nn.Module, train_params: dict) -> torch.optim.Optimizer:
    """AdamW with two groups: the new layers (the `head`, and a `mask_head`) at train.lr and the
    rest at train.lr x train.backbone_lr_scale, so fine-tuning does not wash out pretrained
    features. Each group carries its `lr_scale` for LRSchedule."""
    new = ("head.", "mask_head.")
    head = [p for n, p in model.named_parameters() if n.startswith(new)]
    body = [p for n, p in model.named_parameters() if not n.startswith(new)]
    scale = train_params["backbone_lr_scale"]
    groups = [{"params": body, "lr": train_params["lr"] * scale, "lr_scale": scale},
              {"params": head, "lr": train_params["lr"], "lr_scale": 1.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=train_params["lr"],
                             weight_decay=train_params["weight_decay"])


def check_choices(params: dict) -> None:
    """One line for a name params.yaml does not know, before any model is built."""
    name, tp = params["strategy"]["name"], params["train"]
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy.name {name!r}; choose one of {', '.join(STRATEGIES)}")
    if tp["schedule"] not in SCHEDULES:
        raise ConfigError(f"train.schedule={tp['schedule']!r}: choose one of {', '.join(SCHEDULES)}")
    if tp["batchnorm"] not in BATCHNORM:
        raise ConfigError(f"train.batchnorm={tp['batchnorm']!r}: choose one of {', '.join(BATCHNORM)}")
    if params["model"]["mask_head"] and not tp["mask_loss_weight"] > 0:
        # An untrained head would show masks it never learned as evidence.
        raise ConfigError("model.mask_head=true needs train.mask_loss_weight > 0")
    if params["model"]["mask_head"] and params["model"]["name"] not in mask_head_models():
        raise ConfigError(f"model.mask_head=true: {params['model']['name']} has no mask head; "
                          f"models with one: {', '.join(mask_head_models())}")


def training_plugins(tp: dict, device: torch.device, mp: dict) -> list:
    """The plugins the `train:` settings (and a `model.mask_head`) ask for."""
    plugins = [EpochProgress()]
    if mp["mask_head"]:
        plugins.append(MaskLoss(tp["mask_loss_weight"], mp["name"]))
    if tp["class_balance"]:
        plugins.append(ClassBalancedLoss())
    if tp["schedule"] == "cosine" or tp["warmup_epochs"] > 0:
        plugins.append(LRSchedule(tp["lr"], cosine=tp["schedule"] == "cosine", warmup_epochs=tp["warmup_epochs"]))
    if tp["batchnorm"] != "train":
        plugins.append(FrozenBatchNormStats(from_second=tp["batchnorm"] == "freeze_after_first"))
    if tp["early_stopping_patience"] > 0:
        plugins.append(BestValidationEpoch(tp["early_stopping_patience"]))
    plugins.append(ChannelsLast())
    if device.type == "cuda":
        plugins.append(CudaSpeedups())
    return plugins


def build_strategy(params: dict):
    """The configured Avalanche strategy around a fresh model from the registry."""
    check_choices(params)
    tp, sp = params["train"], params["strategy"]
    torch.manual_seed(tp["seed"])
    apply_heap_allocations(tp)
    device = pick_device(tp["device"])
    model = make_model(params["model"]).to(memory_format=torch.channels_last)  # see ChannelsLast
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        bwt_metrics(experience=True, stream=True),
        ExperienceAUC(),
        loggers=[],  # results go to MLflow through the flows' tasks
    )
    return STRATEGIES[sp["name"]](
        **sp[sp["name"]], model=model, optimizer=make_optimizer(model, tp), criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=tp["batch_size"], train_epochs=tp["epochs"], eval_mb_size=tp["eval_batch_size"],
        device=device, plugins=training_plugins(tp, device, params["model"]), evaluator=evaluator)
