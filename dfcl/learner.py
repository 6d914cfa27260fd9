"""The continual learner: an Avalanche strategy over a growing list of experiences, whose
whole state (weights, optimizer, replay buffer / GEM memories / CWR* consolidated weights,
clock and evaluator history) persists between runs with Avalanche's checkpointing."""
from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import _make_taskaware_classification_dataset
from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
from avalanche.training import EWC, GEM, CWRStar, Cumulative, LwF, Naive, Replay
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from torch.utils.data import ConcatDataset
from torchmetrics.functional.classification import binary_auroc

from dfcl import pinning
from dfcl.data import FaceArrayDataset
from dfcl.faces import face_videos
from dfcl.metrics import ExperienceAUC, calibrate_threshold, fake_probabilities, per_experience, stream_value
from dfcl.progress import EpochProgress
from dfcl.sbi import SelfBlendedFakes
from models import create_model

# Strategy name in params.yaml -> Avalanche strategy built from its `strategy:` settings.
STRATEGIES = {
    "naive": lambda sp, common: Naive(**common),
    "cwr": lambda sp, common: CWRStar(cwr_layer_name=sp["cwr_layer_name"], **common),
    "replay": lambda sp, common: Replay(mem_size=sp["replay_mem_size"], **common),
    "gem": lambda sp, common: GEM(patterns_per_exp=sp["gem_patterns_per_exp"],
                                  memory_strength=sp["gem_memory_strength"], **common),
    "lwf": lambda sp, common: LwF(alpha=sp["lwf_alpha"], temperature=sp["lwf_temperature"], **common),
    "ewc": lambda sp, common: EWC(ewc_lambda=sp["ewc_lambda"], mode="online", decay_factor=sp["ewc_decay"], **common),
    # Joint retraining on every method so far: the upper bound the others are compared with.
    "cumulative": lambda sp, common: Cumulative(**common),
}


@dataclass
class ExperienceSpec:
    """One learned (or to-be-learned) method: where its decoded train/test faces live."""
    key: str          # "<dataset>/<method>"
    dataset: str
    method: str
    version: str      # DVC hash of the processed dataset it came from
    train_x: str
    train_y: str
    test_x: str
    test_y: str
    val_x: str = ""   # validation faces (threshold, early stopping); "" for data extracted without
    val_y: str = ""
    digest: str = ""  # once learned: SHA-256 of its pinned arrays (dfcl.pinning), and their sizes
    faces: dict = field(default_factory=dict)


@dataclass
class History:
    experiences: list[ExperienceSpec] = field(default_factory=list)
    accuracy_matrix: list[list[float]] = field(default_factory=list)
    auc_matrix: list[list[float]] = field(default_factory=list)
    balanced_accuracy_matrix: list[list[float]] = field(default_factory=list)
    video_auc_matrix: list[list[float]] = field(default_factory=list)  # NaN: one face per video
    threshold: float = 0.5   # P(fake) cut chosen on validation faces after the latest experience
    identity: dict = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ChannelsLast(SupervisedPlugin):
    """Batches in channels_last memory layout, as the model is (see build_strategy): faster
    convolutions on CPU (measured 1.4x for EfficientNet-Lite0 at 128 px) and on CUDA."""

    def _to_channels_last(self, strategy, **_):
        strategy.mbatch[0] = strategy.mbatch[0].contiguous(memory_format=torch.channels_last)

    before_forward = before_eval_forward = _to_channels_last


class CudaSpeedups(SupervisedPlugin):
    """bf16 autocast on CUDA. Avalanche's templates have no AMP switch, so this plugin wraps
    the forward passes; bf16 needs no gradient scaler."""

    def __init__(self):
        super().__init__()
        self._ctx = None

    def _enter(self, strategy, **_):
        self._ctx = torch.autocast("cuda", dtype=torch.bfloat16)
        self._ctx.__enter__()

    def _exit(self, strategy, **_):
        self._ctx.__exit__(None, None, None)
        self._ctx = None  # keeps the plugin picklable for the checkpoint
        strategy.mb_output = strategy.mb_output.float()

    before_forward = before_eval_forward = _enter
    after_forward = after_eval_forward = _exit


def validation_scores(model: torch.nn.Module, faces: list[tuple[Path, Path]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and P(fake) of the validation faces [(images .npy, labels .npy), ...]."""
    y = torch.from_numpy(np.concatenate([np.load(labels) for _, labels in faces]))
    p = torch.cat([fake_probabilities(model, np.load(images, mmap_mode="r"), device) for images, _ in faces])
    return y, p


class ClassBalancedLoss(SupervisedPlugin):
    """Weights the cross-entropy by the inverse class frequency of the data being learned, so a
    fake-heavy (or real-heavy) experience does not push every decision to one class. Avalanche
    has no class-weighting plugin. The weights follow the mix actually trained on: with Replay
    every batch is half new data, half buffer, so the buffer's classes count for that half."""

    def after_train_dataset_adaptation(self, strategy, **_):
        share = _class_shares(strategy.adapted_dataset.targets)
        replay = next((p for p in strategy.plugins if isinstance(p, ReplayPlugin)), None)
        if replay is not None and len(replay.storage_policy.buffer):
            new, mem = replay.batch_size or strategy.train_mb_size, replay.batch_size_mem or strategy.train_mb_size
            share = (new * share + mem * _class_shares(replay.storage_policy.buffer.targets)) / (new + mem)
        weights = (1 / (len(share) * share.clamp(min=1e-6))).float()
        strategy._criterion = torch.nn.CrossEntropyLoss(weight=weights.to(strategy.device))


def _class_shares(targets) -> torch.Tensor:
    counts = torch.bincount(torch.as_tensor(list(targets)), minlength=2).double()
    return counts / counts.sum()


class LRSchedule(SupervisedPlugin):
    """Per-iteration learning rate within each experience: a linear warm-up over the first
    `warmup_epochs` (fractions allowed), then constant or cosine decay to zero at the end of
    the experience; restarts with every experience. Each optimizer group keeps its own scale
    (`lr_scale`: the pretrained backbone learns slower than the new head, see make_optimizer).
    Avalanche's LRSchedulerPlugin holds a torch scheduler that holds the optimizer, which the
    checkpoint cannot pickle (see Learner.save); this keeps only numbers."""

    # Class-level defaults: plugins pickled in checkpoints before warm-up existed lack them.
    warmup_epochs = 0.0
    cosine = True

    def __init__(self, lr: float, cosine: bool = True, warmup_epochs: float = 0.0):
        super().__init__()
        self.lr, self.cosine, self.warmup_epochs = lr, cosine, warmup_epochs

    def factor(self, progress: float) -> float:
        """The share of the base rate `progress` epochs into the experience (from step 0)."""
        warm = min(1.0, (progress + self._step) / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0
        if not self.cosine:
            return warm
        return warm * 0.5 * (1 + math.cos(math.pi * min(progress / max(self._total, 1), 1.0)))

    def before_training_iteration(self, strategy, **_):
        steps = max(len(strategy.dataloader), 1)
        self._total, self._step = strategy.train_epochs, 1 / steps
        progress = strategy.clock.train_exp_epochs + strategy.clock.train_epoch_iterations / steps
        scale = self.factor(progress)
        for group in strategy.optimizer.param_groups:
            group["lr"] = self.lr * group.get("lr_scale", 1.0) * scale


CosineEpochs = LRSchedule  # the name checkpoints from before warm-up pickled


class FrozenBatchNormStats(SupervisedPlugin):
    """Batch-norm layers keep their running statistics (eval mode) while the rest trains:
    `after_first` freezes them from the second experience on, else from the start. A new
    method's faces otherwise drag the statistics every earlier method is evaluated with (a
    known source of forgetting); the affine weights still learn."""

    def __init__(self, after_first: bool = True):
        super().__init__()
        self.after_first = after_first

    def before_training_iteration(self, strategy, **_):
        # Every iteration: Avalanche and the validation hooks switch the model back to train().
        if self.after_first and strategy.clock.train_exp_counter == 0:
            return
        for module in strategy.model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training:
                module.eval()


class BestValidationEpoch(SupervisedPlugin):
    """Early stopping on validation AUC (the validation faces of every experience so far):
    stops after `patience` epochs without a gain and keeps the best epoch's weights.
    Avalanche's EarlyStoppingPlugin reads periodic evaluations from the evaluator, which would
    feed validation results into the forgetting/BWT metrics, which are keyed by experience id."""

    def __init__(self, patience: int):
        super().__init__()
        self.patience, self.faces = patience, []  # faces: [(images .npy, labels .npy)], set per experience
        self._best = self._best_auc = None
        self._best_epoch = 0

    def before_training_exp(self, strategy, **_):
        self._best, self._best_auc, self._best_epoch = None, None, 0

    def after_training_epoch(self, strategy, **_):
        if not self.faces:
            return
        y, p = validation_scores(strategy.model, self.faces, strategy.device)
        if y.min() == y.max():
            return
        auc, epoch = float(binary_auroc(p, y)), strategy.clock.train_exp_epochs
        if self._best_auc is None or auc > self._best_auc:
            self._best = copy.deepcopy(strategy.model.state_dict())
            self._best_auc, self._best_epoch = auc, epoch
        elif epoch - self._best_epoch >= self.patience:
            strategy.stop_training()

    def after_training_exp(self, strategy, **_):
        if self._best is not None:
            strategy.model.load_state_dict(self._best)
        self._best, self.faces = None, []  # nothing heavy or path-bound goes into the checkpoint


def identity_of(params: dict) -> dict:
    """What must match for a saved learner to be continued instead of refused."""
    return {"model": params["model"], "strategy": params["strategy"]["name"],
            "data.image_size": params["data"]["image_size"]}


def make_model(model_params: dict) -> torch.nn.Module:
    """The configured detector from the registry (`model:` in params.yaml)."""
    mp = model_params
    return create_model(mp["name"], width=mp["width"], dropout=mp["dropout"], weights=mp["weights"],
                        pretrained=mp["pretrained"])


def make_optimizer(model: torch.nn.Module, train_params: dict) -> torch.optim.Optimizer:
    """AdamW with two groups: the `head` at train.lr and everything before it at
    train.lr x train.backbone_lr_scale, so fine-tuning does not wash out pretrained features.
    Each group carries its `lr_scale` for LRSchedule."""
    head = [p for n, p in model.named_parameters() if n.startswith("head.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    scale = train_params["backbone_lr_scale"]
    groups = [{"params": body, "lr": train_params["lr"] * scale, "lr_scale": scale},
              {"params": head, "lr": train_params["lr"], "lr_scale": 1.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=train_params["lr"],
                             weight_decay=train_params["weight_decay"])


def build_strategy(params: dict):
    """The configured Avalanche strategy around a fresh model from the registry."""
    tp, sp, mp = params["train"], params["strategy"], params["model"]
    if tp["schedule"] not in ("constant", "cosine"):
        raise ValueError(f"train.schedule={tp['schedule']!r}: choose constant or cosine")
    if tp["batchnorm"] not in ("train", "freeze_after_first", "frozen"):
        raise ValueError(f"train.batchnorm={tp['batchnorm']!r}: choose train, freeze_after_first or frozen")
    torch.manual_seed(tp["seed"])
    device = pick_device(tp["device"])
    model = make_model(mp)
    plugins = [EpochProgress()]
    if tp.get("class_balance", False):
        plugins.append(ClassBalancedLoss())
    if tp["schedule"] == "cosine" or tp["warmup_epochs"] > 0:
        plugins.append(LRSchedule(tp["lr"], cosine=tp["schedule"] == "cosine", warmup_epochs=tp["warmup_epochs"]))
    if tp["batchnorm"] != "train":
        plugins.append(FrozenBatchNormStats(after_first=tp["batchnorm"] == "freeze_after_first"))
    if tp.get("early_stopping_patience", 0) > 0:
        plugins.append(BestValidationEpoch(tp["early_stopping_patience"]))
    model = model.to(memory_format=torch.channels_last)
    plugins.append(ChannelsLast())
    if device.type == "cuda":
        plugins.append(CudaSpeedups())
    optimizer = make_optimizer(model, tp)
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        bwt_metrics(experience=True, stream=True),
        ExperienceAUC(),
        loggers=[],  # results go to MLflow through the flow's tasks
    )
    common = dict(model=model, optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(),
                  train_mb_size=tp["batch_size"], train_epochs=tp["epochs"],
                  eval_mb_size=tp["eval_batch_size"], device=device, plugins=plugins, evaluator=evaluator)
    if sp["name"] not in STRATEGIES:
        raise KeyError(f"unknown strategy {sp['name']!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[sp["name"]](sp, common)


class Learner:
    """A strategy plus the list of experiences it has learned, saved under `folder`."""

    CHECKPOINT = "strategy.ckpt"
    OPTIMIZER = "optimizer.pt"
    HISTORY = "history.json"
    CURRENT = "CURRENT"   # names the state folder in use; replaced atomically after a save
    EXPERIENCES = "experiences"  # the learned methods' pinned faces (dfcl.pinning)

    def __init__(self, folder: Path, params: dict, root: Path):
        self.folder, self.params, self.root = Path(folder), params, Path(root)
        self.strategy = build_strategy(params)
        self.history = History(identity=identity_of(params))

    # -- persistence ---------------------------------------------------------------
    def _state(self) -> Path | None:
        pointer = self.folder / self.CURRENT
        return self.folder / pointer.read_text().strip() if pointer.exists() else None

    @classmethod
    def load(cls, folder: Path, params: dict, root: Path) -> "Learner":
        learner = cls(folder, params, root)
        state = learner._state()
        if state is None:
            return learner
        data = json.loads((state / cls.HISTORY).read_text())
        saved = data.get("identity", {})
        if isinstance(saved.get("model"), dict):  # learners from before pretrained weights existed
            saved["model"].setdefault("pretrained", "none")
        if saved != learner.history.identity:
            raise ValueError(
                f"the learner in {folder} was trained with {saved}, but params ask for "
                f"{learner.history.identity}; restore those params or start over with --fresh")
        experiences = [ExperienceSpec(**e) for e in data["experiences"]]
        for spec in experiences:  # before the checkpoint's datasets open them
            pinning.check(spec, learner.root)
        learner.history = History(
            experiences=experiences,
            accuracy_matrix=data["accuracy_matrix"], auc_matrix=data["auc_matrix"],
            balanced_accuracy_matrix=data.get("balanced_accuracy_matrix", []),
            video_auc_matrix=data.get("video_auc_matrix", []),
            threshold=data.get("threshold", 0.5), identity=saved)
        device = pick_device(params["train"]["device"])
        learner.strategy, done = maybe_load_checkpoint(learner.strategy, str(state / cls.CHECKPOINT),
                                                       map_location=device)
        # The optimizer is saved apart (see save()); re-bind it to the restored model.
        strategy = learner.strategy
        strategy.optimizer = make_optimizer(strategy.model, params["train"])
        saved_optimizer = torch.load(state / cls.OPTIMIZER, map_location=device)
        if len(saved_optimizer["param_groups"]) != len(strategy.optimizer.param_groups):
            # Saved before the backbone/head groups: one group for every parameter, as then.
            strategy.optimizer = torch.optim.AdamW(strategy.model.parameters(), lr=params["train"]["lr"],
                                                   weight_decay=params["train"]["weight_decay"])
        strategy.optimizer.load_state_dict(saved_optimizer)
        if done != len(learner.history.experiences):
            raise RuntimeError(f"{state}: checkpoint has {done} experiences, history has "
                               f"{len(learner.history.experiences)}; the learner folder is inconsistent")
        return learner

    def save(self) -> None:
        """Write checkpoint, optimizer and history into a new state folder, then point CURRENT
        at it with one atomic rename: a crash or kill at any moment leaves the previous state
        whole, and the next run resumes from the last finished experience."""
        state = self.folder / f"state-{len(self.history.experiences):04d}-{time.time_ns()}"
        state.mkdir(parents=True)
        # dill cannot pickle torch 2.15's optimizers (a typing sentinel), so the optimizer
        # goes through its own state_dict.
        save_checkpoint(self.strategy, str(state / self.CHECKPOINT), exclude=["optimizer"])
        torch.save(self.strategy.optimizer.state_dict(), state / self.OPTIMIZER)
        (state / self.HISTORY).write_text(json.dumps(asdict(self.history), indent=1))
        tmp = self.folder / (self.CURRENT + ".tmp")
        tmp.write_text(state.name + "\n")
        tmp.replace(self.folder / self.CURRENT)
        for old in self.folder.glob("state-*"):  # earlier states, and any a crash left half-written
            if old != state:
                shutil.rmtree(old, ignore_errors=True)

    # -- continual learning ----------------------------------------------------------
    @property
    def learned(self) -> set[str]:
        return {e.key for e in self.history.experiences}

    def _dataset(self, images: str, labels: str, train: bool):
        augment = self.params.get("augment") if train else None
        faces = FaceArrayDataset(self.root / images, self.root / labels, augment=augment)
        sbi = self.params.get("sbi", {})
        if train and sbi.get("enabled"):  # extra fakes blended from this experience's own real faces
            blended = SelfBlendedFakes(self.root / images, self.root / labels, augment=augment,
                                       per_real=sbi["per_real"], seed=self.params["train"]["seed"])
            faces = ConcatDataset([faces, blended])
            faces.targets = faces.datasets[0].targets + blended.targets
        # Domain-incremental: one task (label 0) for all experiences; the name is public
        # (in the module's __all__) despite the underscore.
        return _make_taskaware_classification_dataset(faces, task_labels=0, targets=faces.targets)

    def benchmark(self, experiences: list[ExperienceSpec]):
        # Experience ids must stay stable across runs (GEM memories and the forgetting metrics
        # are keyed by them), so the benchmark always lists every experience from the first.
        return benchmark_from_datasets(
            train=[self._dataset(e.train_x, e.train_y, train=True) for e in experiences],
            test=[self._dataset(e.test_x, e.test_y, train=False) for e in experiences])

    def _validation_faces(self, experiences: list[ExperienceSpec]) -> list[tuple[Path, Path]]:
        return [(self.root / e.val_x, self.root / e.val_y) for e in experiences
                if e.val_x and (self.root / e.val_x).is_file()]

    def _plugin(self, kind):
        return next((p for p in self.strategy.plugins if isinstance(p, kind)), None)

    def _scores_metric(self) -> ExperienceAUC:
        return next(m for m in self.strategy.evaluator.metrics if isinstance(m, ExperienceAUC))

    def calibrate(self, experiences: list[ExperienceSpec]) -> float:
        """Choose the decision threshold on the validation faces of every experience so far."""
        faces = self._validation_faces(experiences)
        if not faces:
            return 0.5
        return calibrate_threshold(*validation_scores(self.strategy.model, faces, self.strategy.device))

    def learn(self, spec: ExperienceSpec) -> dict:
        """Train on one new experience, then evaluate on every experience seen so far."""
        if spec.key in self.learned:
            raise ValueError(f"{spec.key} is already learned")
        # From now on the learner reads this method's faces only from its pinned copy.
        spec = pinning.pin(spec, self.root, self.folder / self.EXPERIENCES)
        experiences = self.history.experiences + [spec]
        bench = self.benchmark(experiences)
        index = len(experiences) - 1
        stopper = self._plugin(BestValidationEpoch)
        if stopper:
            stopper.faces = self._validation_faces(experiences)
        self.strategy.train(bench.train_stream[index], num_workers=self.params["train"]["num_workers"],
                            persistent_workers=self.params["train"]["num_workers"] > 0)
        self.history.experiences.append(spec)
        self.history.threshold = self.calibrate(experiences)
        return self._evaluate(bench)

    def last_results(self) -> dict:
        """The latest evaluation, from the saved matrices; forgetting as Avalanche's
        StreamForgetting defines it (accuracy right after learning a method minus now)."""
        h = self.history
        acc, auc = h.accuracy_matrix, h.auc_matrix
        if not acc:
            return {}
        n = len(acc)
        drops = [acc[i][i] - acc[-1][i] for i in range(n - 1)]
        forgetting = sum(drops) / len(drops) if drops else 0.0
        bal = h.balanced_accuracy_matrix[-1] if h.balanced_accuracy_matrix else None
        vid = h.video_auc_matrix[-1] if h.video_auc_matrix else None
        return summarize(h.experiences, acc[-1], auc[-1], forgetting=forgetting, bwt=-forgetting,
                         row_bal=bal, threshold=h.threshold, row_video_auc=vid)

    def _evaluate(self, bench) -> dict:
        """Evaluate on every learned experience and append the row to the matrices."""
        n = len(self.history.experiences)
        scores = self._scores_metric()
        scores.threshold = self.history.threshold
        scores.videos = self.test_videos(self.history.experiences)
        metrics = self.strategy.eval(bench.test_stream[:n])
        scores.videos = {}  # nothing path-bound goes into the checkpoint
        acc = per_experience(metrics, "Top1_Acc_Exp")
        auc = per_experience(metrics, "AUC_Exp")
        bal = per_experience(metrics, "BalAcc_Exp")
        vid = per_experience(metrics, "VideoAUC_Exp")
        row_acc, row_auc, row_bal, row_vid = ([m.get(i, math.nan) for i in range(n)] for m in (acc, auc, bal, vid))
        self.history.accuracy_matrix.append(row_acc)
        self.history.auc_matrix.append(row_auc)
        self.history.balanced_accuracy_matrix.append(row_bal)
        self.history.video_auc_matrix.append(row_vid)
        forgetting = stream_value(metrics, "StreamForgetting")
        bwt = stream_value(metrics, "StreamBWT")
        return summarize(self.history.experiences, row_acc, row_auc,
                         forgetting=0.0 if math.isnan(forgetting) else forgetting,
                         bwt=0.0 if math.isnan(bwt) else bwt, row_bal=row_bal, threshold=self.history.threshold,
                         row_video_auc=row_vid)

    def test_videos(self, experiences: list[ExperienceSpec]) -> dict[int, np.ndarray]:
        """Experience index -> the video of each test face, where the manifest tells."""
        found = {i: face_videos(self.root / e.test_x) for i, e in enumerate(experiences)}
        return {i: v for i, v in found.items() if v is not None}


def _mean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summarize(experiences: list[ExperienceSpec], row_acc: list[float], row_auc: list[float],
              forgetting: float = math.nan, bwt: float = math.nan, row_bal: list[float] | None = None,
              threshold: float = 0.5, row_video_auc: list[float] | None = None) -> dict:
    keys = [e.key for e in experiences]
    out = {
        "methods": keys,
        "accuracy": dict(zip(keys, row_acc)),
        "auc": dict(zip(keys, row_auc)),
        "avg_accuracy": sum(row_acc) / len(row_acc),
        "avg_auc": _mean(row_auc),
        "forgetting": forgetting,
        "bwt": bwt,
        "threshold": threshold,
    }
    if row_bal is not None:
        out["balanced_accuracy"] = dict(zip(keys, row_bal))
        out["avg_balanced_accuracy"] = _mean(row_bal)
    if row_video_auc is not None and any(not math.isnan(v) for v in row_video_auc):
        # Video level (mean P(fake) of a video's faces) where methods have several faces per video.
        out["video_auc"] = {k: v for k, v in zip(keys, row_video_auc) if not math.isnan(v)}
        out["avg_video_auc"] = _mean(row_video_auc)
    return out


def strategy_report(learner: Learner, results: dict, seconds: float) -> dict:
    """One strategy's whole run, as `dfcl compare` and the benchmarks report it."""
    h = learner.history
    return {"accuracy_matrix": h.accuracy_matrix, "auc_matrix": h.auc_matrix,
            "balanced_accuracy_matrix": h.balanced_accuracy_matrix, "video_auc_matrix": h.video_auc_matrix,
            "avg_accuracy": results["avg_accuracy"], "avg_video_auc": results.get("avg_video_auc"),
            "avg_balanced_accuracy": results.get("avg_balanced_accuracy"), "threshold": results["threshold"],
            "forgetting": results["forgetting"], "bwt": results["bwt"], "train_seconds": seconds}


def score_model(model: torch.nn.Module, learner: Learner) -> dict:
    """Accuracy and AUC of any detector (e.g. the champion) on the learner's test sets,
    through the same Avalanche evaluation as the learner itself."""
    tp = learner.params["train"]
    device = pick_device(tp["device"])
    scores = ExperienceAUC()
    experiences = learner.history.experiences
    scores.videos = learner.test_videos(experiences)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), scores, loggers=[])
    judge = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                  eval_mb_size=tp["eval_batch_size"], device=device, evaluator=evaluator)
    metrics = judge.eval(learner.benchmark(experiences).test_stream)
    acc, auc = per_experience(metrics, "Top1_Acc_Exp"), per_experience(metrics, "AUC_Exp")
    bal, vid = per_experience(metrics, "BalAcc_Exp"), per_experience(metrics, "VideoAUC_Exp")
    n = len(experiences)
    return summarize(experiences, [acc[i] for i in range(n)], [auc[i] for i in range(n)],
                     row_bal=[bal[i] for i in range(n)], row_video_auc=[vid.get(i, math.nan) for i in range(n)])
