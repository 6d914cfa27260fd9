"""From params.yaml to an Avalanche strategy: the model from the registry, its optimizer, the
plugins the `train:` settings ask for, and the strategy with its own `strategy.<name>:` settings:
an Avalanche class taking them as keyword arguments, or (the deepfake-specific ones, from
dfcl.learning.continual) Avalanche's Naive template plus the plugins that make the method."""
from __future__ import annotations

import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import DER, EWC, GEM, Cumulative, CWRStar, LwF, Naive, Replay
from avalanche.training.plugins import EvaluationPlugin

from dfcl.config import ModelConfig, Params, TrainConfig
from dfcl.learning.continual.dfil import ContrastiveDistillation
from dfcl.learning.continual.selection import (
    CentralHardSelection,
    SparseUniformSelection,
    make_replay_plugin,
)
from dfcl.learning.evaluation import ExperienceAUC
from dfcl.learning.memory import apply_heap_allocations
from dfcl.learning.plugins import (
    BestValidationEpoch,
    ChannelsLast,
    ClassBalancedLoss,
    CudaSpeedups,
    EpochCheckpoint,
    EpochProgress,
    FrozenBatchNormStats,
    FrozenStages,
    LRSchedule,
    MaskLoss,
    PairedBatches,
)
from models import create_model


def sur_lid(mem_size: int, bins: int, views: int, noise: float, seed: int = 0) -> tuple[type, dict, list]:
    """Replay whose buffer is SUR-LID's sparse uniform selection (dfcl.learning.continual.selection)."""
    return Naive, {}, [make_replay_plugin(mem_size, SparseUniformSelection(bins=bins, views=views, noise=noise,
                                                                           seed=seed))]


def dfil(mem_size: int, selection: str, contrastive_weight: float, temperature: float, feature_weight: float,
         logit_weight: float, kd_temperature: float, seed: int = 0) -> tuple[type, dict, list]:
    """DFIL (dfcl.learning.continual.dfil): replay chosen by `selection` plus supervised contrastive,
    feature and logit distillation; a weight of 0 drops its term (the ablation's rows)."""
    chosen = {"central_hard": CentralHardSelection(), "sparse_uniform": SparseUniformSelection(seed=seed)}[selection]
    return Naive, {}, [make_replay_plugin(mem_size, chosen),
                       ContrastiveDistillation(contrastive_weight, temperature, feature_weight, logit_weight,
                                               kd_temperature)]


# `strategy.name` -> what builds it with the settings under `strategy.<name>` in params.yaml (whose
# sections are the list of names dfcl.config checks against): an Avalanche class, or a function
# giving (Avalanche template, its arguments, the plugins of the method). Cumulative (joint
# retraining on every method so far) is the upper bound the others are compared with; DER is
# DER++ when its beta > 0.
STRATEGIES = {"naive": Naive, "cwr": CWRStar, "replay": Replay, "gem": GEM, "lwf": LwF, "ewc": EWC,
              "cumulative": Cumulative, "der": DER, "sur_lid": sur_lid, "dfil": dfil}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_model(model_params: ModelConfig) -> torch.nn.Module:
    """The configured detector from the registry (`model:` in params.yaml)."""
    mp = model_params
    # mask_head only when on: a model without one is recorded (and rebuilt) as before the head existed.
    head = {"mask_head": True} if mp.mask_head else {}
    return create_model(mp.name, width=mp.width, dropout=mp.dropout, weights=mp.weights,
                        pretrained=mp.pretrained, **head)


def make_optimizer(model: torch.nn.Module, train_params: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with two groups: the new layers (the `head`, and a `mask_head`) at train.lr and the
    rest at train.lr x train.backbone_lr_scale, so fine-tuning does not wash out pretrained
    features. Each group carries its `lr_scale` for LRSchedule."""
    new = ("head.", "mask_head.")
    head = [p for n, p in model.named_parameters() if n.startswith(new)]
    body = [p for n, p in model.named_parameters() if not n.startswith(new)]
    scale = train_params.backbone_lr_scale
    groups = [{"params": body, "lr": train_params.lr * scale, "lr_scale": scale},
              {"params": head, "lr": train_params.lr, "lr_scale": 1.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=train_params.lr,
                             weight_decay=train_params.weight_decay)


def training_plugins(tp: TrainConfig, device: torch.device, mp: ModelConfig) -> list:
    """The plugins the `train:` settings (and a `model.mask_head`) ask for."""
    plugins = [EpochProgress()]
    if mp.mask_head:
        plugins.append(MaskLoss(tp.mask_loss_weight, mp.name))
    if tp.class_balance:
        plugins.append(ClassBalancedLoss())
    if tp.schedule == "cosine" or tp.warmup_epochs > 0:
        plugins.append(LRSchedule(tp.lr, cosine=tp.schedule == "cosine", warmup_epochs=tp.warmup_epochs))
    if tp.batchnorm != "train":
        plugins.append(FrozenBatchNormStats(from_second=tp.batchnorm == "freeze_after_first"))
    if tp.frozen_stages > 0:
        plugins.append(FrozenStages(tp.frozen_stages))
    if tp.early_stopping_patience > 0:
        plugins.append(BestValidationEpoch(tp.early_stopping_patience))
    plugins.append(EpochCheckpoint())  # after early stopping: it keeps that plugin's best epoch too
    plugins.append(ChannelsLast())
    if device.type == "cuda":
        plugins.append(CudaSpeedups())
    return plugins


def build_strategy(params: Params):
    """The configured Avalanche strategy around a fresh model from the registry."""
    tp, sp = params.train, params.strategy
    torch.manual_seed(tp.seed)
    apply_heap_allocations(tp)
    device = pick_device(tp.device)
    model = make_model(params.model).to(memory_format=torch.channels_last)  # see ChannelsLast
    # Forgetting and BWT come from the learner's saved matrices (dfcl.measure.metrics), which span runs;
    # Avalanche's forgetting metrics would only know the experiences of this process.
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        ExperienceAUC(),
        loggers=[],  # results go to MLflow through the flows' tasks
    )
    build, settings = STRATEGIES[sp.name], sp.settings()
    template, settings, method_plugins = (build, settings, []) if isinstance(build, type) else build(
        **settings, seed=tp.seed)
    # The method's own plugins after the training ones, as Avalanche's Replay appends its ReplayPlugin.
    return template(
        **settings, model=model, optimizer=make_optimizer(model, tp), criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=tp.batch_size, train_epochs=tp.epochs, eval_mb_size=tp.eval_batch_size,
        device=device, plugins=training_plugins(tp, device, params.model) + method_plugins + [PairedBatches(tp.seed)],
        evaluator=evaluator)
