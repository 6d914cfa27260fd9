"""The continual learner: an Avalanche strategy over a growing list of experiences, whose
whole state (weights, optimizer, replay buffer / GEM memories / CWR* consolidated weights,
clock and evaluation history) persists between runs as plain data (dfcl.learning.learner_state): the
strategy is built from each run's params and given its memories back.

Over 300 lines: one class holds the learner's life (load, learn, evaluate, save), whose steps
share its history and strategy; the state's format and the metrics' math live apart
(dfcl.learning.learner_state, dfcl.measure.metrics)."""
from __future__ import annotations

import functools
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import _make_taskaware_classification_dataset
from avalanche.evaluation.metrics import ExperienceForwardTransfer
from torch.utils.data import ConcatDataset

from dfcl.config import ConfigError, Params
from dfcl.data.arrays import ExperienceSpec, beside, face_videos
from dfcl.data.datasets import FaceArrayDataset
from dfcl.data.sbi import SelfBlendedFakes, SelfBlendedPairs
from dfcl.files import fsync_tree, write_atomic
from dfcl.learning import learner_state, pinning
from dfcl.learning.evaluation import ExperienceAUC
from dfcl.learning.plugins import (
    BestValidationEpoch,
    EpochCheckpoint,
    EpochProgress,
    PairedBatches,
)
from dfcl.learning.strategies import build_strategy, pick_device
from dfcl.measure.metrics import (
    MATRICES,
    matrix_forgetting,
    matrix_forward_transfer,
    strategy_report,
    summarize,
    values_before_learning,
)
from dfcl.measure.scoring import (
    calibrate_threshold,
    per_experience,
)
from dfcl.measure.trust import (
    TRUST_FILE,
    Scored,
    Trust,
    fit_trust,
    scores_and_features,
    sharpness,
)


@dataclass
class History:
    experiences: list[ExperienceSpec] = field(default_factory=list)
    # One matrix per metric of dfcl.measure.metrics.MATRICES, under its `history` name.
    accuracy_matrix: list[list[float]] = field(default_factory=list)
    auc_matrix: list[list[float]] = field(default_factory=list)
    balanced_accuracy_matrix: list[list[float]] = field(default_factory=list)
    video_auc_matrix: list[list[float]] = field(default_factory=list)  # NaN: one face per video
    # [key, DVC version] of each matrix column: the learned experiences in order, then methods
    # evaluated before they were learned (row i's cells after i: the upper triangle). NaN or
    # missing: a method not known at that time.
    columns: list[list[str]] = field(default_factory=list)
    threshold: float = 0.5   # P(fake) cut chosen on validation faces after the latest experience
    identity: dict = field(default_factory=dict)


def identity_of(params: Params) -> dict:
    """What must match for a saved learner to be continued instead of refused."""
    return {"model": params.model.model_dump(), "strategy": params.strategy.name,
            "data.image_size": params.data.image_size}


def identity_mismatch(folder: Path, saved: dict, wanted: dict) -> str:
    """Why a saved learner cannot be continued with these params, naming the settings that
    differ as the `-S` overrides that would continue it."""
    def flat(identity: dict) -> dict:
        out = {}
        for key, value in identity.items():
            key = "strategy.name" if key == "strategy" else key  # identity_of's one short name
            out |= {f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value}
        return out

    def shown(value) -> str:
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    before, now = flat(saved), flat(wanted)
    keys = [k for k in dict.fromkeys([*before, *now]) if before.get(k) != now.get(k)]
    return (f"the learner in {folder} was trained with {', '.join(f'{k}={shown(before.get(k))}' for k in keys)} "
            f"where params ask for {', '.join(f'{k}={shown(now.get(k))}' for k in keys)}: continue it with "
            f"`{' '.join(f'-S {k}={shown(before.get(k))}' for k in keys)}`, or start over with --fresh")


class Learner:
    """A strategy plus the list of experiences it has learned, saved under `folder`."""

    HISTORY = "history.json"
    CURRENT = "CURRENT"   # names the state folder in use; replaced atomically after a save
    EXPERIENCES = "experiences"  # the learned methods' pinned faces (dfcl.learning.pinning)
    EPOCH_CHECKPOINT = "epoch-checkpoint"  # the experience being learned, after its last finished epoch

    def __init__(self, folder: Path, params: Params, root: Path):
        self.folder, self.params, self.root = Path(folder), params, Path(root)
        self.strategy = build_strategy(params)
        self.history = History(identity=identity_of(params))
        self.trust: Trust | None = None  # calibration, band, feature space (dfcl.measure.trust): fit for the model a run ends with
        self._pairs: dict[str, SelfBlendedPairs] = {}  # training faces path -> a self-blended experience's pairs

    # -- persistence ---------------------------------------------------------------
    def _state(self) -> Path | None:
        pointer = self.folder / self.CURRENT
        return self.folder / pointer.read_text().strip() if pointer.exists() else None

    @classmethod
    def load(cls, folder: Path, params: Params, root: Path) -> "Learner":
        """The learner saved in `folder`, its strategy built from these params (so this run's
        settings apply: epochs, plugins, a strategy's own settings) and given back its weights,
        optimizer state and memories."""
        learner = cls(folder, params, root)
        state = learner._state()
        if state is None:
            return learner
        if (state / learner_state.OLD_CHECKPOINT).is_file():
            raise ConfigError(f"{folder} holds a learner saved in the old pickled format: run "
                              f"`dfcl migrate --learner {folder}` once to convert it")
        data = json.loads((state / cls.HISTORY).read_text())
        saved = data["identity"]
        if saved != learner.history.identity:
            raise ConfigError(identity_mismatch(folder, saved, learner.history.identity))
        experiences = [ExperienceSpec(**e) for e in data["experiences"]]
        for spec in experiences:  # before their datasets are opened
            pinning.check(spec, learner.root)
        learner.history = History(**{**data, "experiences": experiences})
        if (state / TRUST_FILE).is_file():
            learner.trust = Trust.load(state / TRUST_FILE)
        strategy = learner.strategy
        device = pick_device(params.train.device)
        # The learned experiences' training faces, opened only for a strategy whose memory names them.
        train = functools.cache(lambda: [e.dataset for e in learner.benchmark(experiences).train_stream]
                                if experiences else [])
        learner_state.load_state(strategy, state, train, device)
        try:
            learner_state.load_optimizer(strategy, state, device)
        except ValueError as e:  # another parameter grouping (train.backbone_lr_scale on or off)
            raise ConfigError(f"{state}: the saved optimizer does not fit this model's parameter groups ({e}); "
                              "start over with --fresh") from None
        if strategy.clock.train_exp_counter != len(experiences):
            raise RuntimeError(f"{state}: the state has {strategy.clock.train_exp_counter} experiences, history has "
                               f"{len(experiences)}; the learner folder is inconsistent")
        return learner

    def save(self) -> None:
        """Write the state (dfcl.learning.learner_state) and history into a new state folder, then point
        CURRENT at it with one atomic rename: a crash or kill at any moment leaves the previous
        state whole, and the next run resumes from the last finished experience."""
        state = self.folder / f"state-{len(self.history.experiences):04d}-{time.time_ns()}"
        state.mkdir(parents=True)
        learner_state.save_state(self.strategy, state)
        (state / self.HISTORY).write_text(json.dumps(asdict(self.history), indent=1))
        if self.trust is not None:
            self.trust.save(state / TRUST_FILE)
        fsync_tree(state)  # on disk before CURRENT names it: after a power cut, never a name of empty files
        write_atomic(self.folder / self.CURRENT, state.name + "\n")
        self._plugin(EpochCheckpoint).discard()  # its experience is in the state now
        for old in self.folder.glob("state-*"):  # earlier states, and any a crash left half-written
            if old != state:
                shutil.rmtree(old, ignore_errors=True)

    # -- continual learning ----------------------------------------------------------
    @property
    def learned(self) -> set[str]:
        return {e.key for e in self.history.experiences}

    def _dataset(self, images: str, labels: str, train: bool):
        augment = self.params.augment if train else None
        masks = self.params.model.mask_head  # items carry target masks for MaskLoss (train and test alike)
        faces = FaceArrayDataset(self.root / images, self.root / labels, augment=augment, masks=masks)
        sbi = self.params.sbi
        # Training faces without a fake are a self-blended experience (extraction refuses any other
        # such method): each real face beside a fresh blend of it, the pair in one batch.
        if train and 1 not in faces.targets:
            faces = self._pairs[images] = SelfBlendedPairs(self.root / images, self.root / labels, augment=augment,
                                                           seed=self.params.train.seed, masks=masks)
        elif train and sbi.enabled:  # extra fakes blended from this experience's own real faces
            blended = SelfBlendedFakes(self.root / images, self.root / labels, augment=augment,
                                       per_real=sbi.per_real, seed=self.params.train.seed, masks=masks)
            faces = ConcatDataset([faces, blended])
            faces.targets = faces.datasets[0].targets + blended.targets
        # Domain-incremental: one task (label 0) for all experiences; the name is public
        # (in the module's __all__) despite the underscore.
        return _make_taskaware_classification_dataset(faces, task_labels=0, targets=faces.targets)

    def benchmark(self, experiences: list[ExperienceSpec]):
        # Experience ids must stay stable across runs (GEM memories and the forgetting metrics
        # are keyed by them), so the benchmark always lists every experience from the first.
        # Each training face carries a key (experience, index) by which a saved buffer names it.
        train = [self._dataset(e.train_x, e.train_y, train=True) for e in experiences]
        train = [d.update_data_attribute(learner_state.SAMPLE_KEY, learner_state.sample_keys(i, len(d)))
                 for i, d in enumerate(train)]
        return benchmark_from_datasets(
            train=train,
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
        return self._calibrated(self._validation_scored(experiences))

    @staticmethod
    def _calibrated(scored: list[Scored]) -> float:
        if not scored:
            return 0.5
        return calibrate_threshold(torch.from_numpy(np.concatenate([s.y for s in scored])),
                                   torch.from_numpy(np.concatenate([s.p for s in scored])))

    def _validation_scored(self, experiences: list[ExperienceSpec]) -> list[Scored]:
        """The validation faces of every experience so far, scored once for the threshold and the trust fit."""
        def faces(e):
            return np.load(self.root / e.val_x, mmap_mode="r")

        return [Scored(e.key, np.load(self.root / e.val_y), *scores_and_features(self.strategy.model, faces(e),
                                                                                  self.strategy.device),
                       sharp=sharpness(faces(e)))
                for e in experiences if e.val_x and (self.root / e.val_x).is_file()]

    def learn(self, spec: ExperienceSpec, upcoming: list[ExperienceSpec] = ()) -> dict:
        """Train on one new experience, then evaluate on every experience seen so far and, with
        train.eval_upcoming, on `upcoming`: methods known but not learned yet, in the order they
        will be learned (their cells are the upper triangle of the matrices: forward transfer).
        With nothing `upcoming` (the run's last experience) the trust is fit as well; before that
        the learner holds none (`trust` None).
        The results hold `speed`: this training's seconds and images (all it trained on, and the
        new experience's faces times the epochs run), and the seconds after it (`eval_seconds`:
        the threshold's calibration, the trust fit and its measurement, the evaluation, each also
        apart)."""
        if spec.key in self.learned:
            raise ValueError(f"{spec.key} is already learned")
        # From now on the learner reads this method's faces only from its pinned copy.
        spec = pinning.pin(spec, self.root, self.folder / self.EXPERIENCES)
        experiences = self.history.experiences + [spec]
        ahead = []
        if self.params.train.eval_upcoming:
            ahead = [e for e in upcoming if e.key not in {x.key for x in experiences}]
        self._align_columns(experiences + ahead)
        # Upcoming methods get the experience ids they will be learned with (benchmark()).
        bench = self.benchmark(experiences + ahead)
        index = len(experiences) - 1
        stopper = self._plugin(BestValidationEpoch)
        if stopper:
            stopper.faces = self._validation_faces(experiences)
        pairs = self._pairs.get(spec.train_x)
        self._plugin(PairedBatches).pairs = pairs
        checkpoint = self._plugin(EpochCheckpoint)
        checkpoint.folder, checkpoint.key = self.folder / self.EPOCH_CHECKPOINT, spec.key
        checkpoint.base = self._state().name if self._state() else ""
        # A self-blended experience may take more epochs (sbi.epochs) than a forgery method's.
        epochs = self.params.sbi.epochs if pairs is not None and self.params.sbi.epochs else None
        default_epochs, self.strategy.train_epochs = self.strategy.train_epochs, epochs or self.strategy.train_epochs
        start = time.perf_counter()
        try:
            self.strategy.train(bench.train_stream[index], num_workers=self.params.train.num_workers,
                                persistent_workers=self.params.train.num_workers > 0 and pairs is None)
        finally:
            self.strategy.train_epochs = default_epochs
        trained = time.perf_counter() - start
        # The epochs this call ran: a resumed experience runs only those left, early stopping may end sooner.
        new_images = len(bench.train_stream[index].dataset) * (self.strategy.clock.train_exp_epochs - checkpoint.resumed_at)
        images = self._plugin(EpochProgress).images  # with the replayed ones
        spec.learned_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.history.experiences.append(spec)
        self.trust = None  # the weights it was fit for are gone
        marks = [time.perf_counter()]
        val = self._validation_scored(experiences)
        self.history.threshold = self._calibrated(val)
        marks.append(time.perf_counter())
        results = self._evaluate(bench, ahead)
        marks.append(time.perf_counter())
        # Trust is fit for the model a retraining ends with (the one registered and served): an
        # experience with more to learn after it in this run leaves none, since a trust fit for
        # weights that change next would be stale. From the scores the threshold and the evaluation
        # just took, as long as they are what the trust fit would compute (no flip averaging).
        if not upcoming:
            shared = {}
            if not self.params.trust.flip:
                kept = self._scores_metric().kept
                shared = {"val": val, "test": [Scored(e.key, *kept[i],
                                                      sharp=sharpness(np.load(self.root / e.test_x, mmap_mode="r")))
                                               for i, e in enumerate(experiences)]}
            self.trust = self.fit_trust(experiences, scored=shared)
            results |= self.trust_results()
        marks.append(time.perf_counter())
        calibrate_s, evaluate_s, trust_s = (b - a for a, b in zip(marks, marks[1:]))
        results["speed"] = {"train_seconds": trained, "train_images": float(images), "new_images": float(new_images),
                            "eval_seconds": marks[-1] - start - trained, "calibrate_seconds": calibrate_s,
                            "trust_seconds": trust_s, "evaluate_seconds": evaluate_s}
        return results

    def fit_trust(self, experiences: list[ExperienceSpec], scored: dict[str, list[Scored]] | None = None) -> Trust:
        """Calibration, the uncertain band and the feature space of everything learned (dfcl.measure.trust);
        `scored`: splits already scored (dfcl.measure.trust.score_experiences)."""
        with self._rng_kept():
            return fit_trust(self.strategy.model, self.trust_splits(experiences), self.history.threshold,
                             self.params.trust, self.strategy.device, self.params.train.seed,
                             self.unseen_sets(experiences), scored=scored, foreign=self.foreign_reals(experiences))

    def trust_splits(self, experiences: list[ExperienceSpec]) -> list[tuple[str, dict[str, tuple[Path, Path]]]]:
        """[(key, {"train"|"val"|"test": (images, labels)})]: what dfcl.measure.trust fits and measures on."""
        splits = []
        for e in experiences:
            paths = {"train": (e.train_x, e.train_y), "val": (e.val_x, e.val_y), "test": (e.test_x, e.test_y)}
            splits.append((e.key, {k: (self.root / x, self.root / y) for k, (x, y) in paths.items()
                                   if x and (self.root / x).is_file()}))
        return splits

    def unseen_sets(self, experiences: list[ExperienceSpec]) -> list[tuple[str, tuple[Path, Path]]]:
        """`trust.unseen_sets`: test faces of sets never trained on, (name, (images, labels)). A
        folder with any test face of an experience this model learned (any split, by content:
        dfcl.data.leaks) is refused: its figures would not be of the unseen."""
        from dfcl.data.leaks import face_hashes

        out, trained = [], None
        for folder in self.params.trust.unseen_sets:
            path = self.root / folder
            if not (path / "test-x.npy").is_file():
                raise ConfigError(f"trust.unseen_sets: {folder} holds no test-x.npy (extracted faces: "
                                  "data/processed/<dataset>/<method>)")
            if trained is None:
                trained = {h for e in experiences for x in (e.train_x, e.val_x, e.test_x) if x
                           for h in face_hashes(self.root / x)}
            shared = sum(h in trained for h in face_hashes(path / "test-x.npy"))
            if shared:
                raise ConfigError(f"trust.unseen_sets: {shared} test faces of {folder} are faces of a set this "
                                  "model learned; list only sets it never trained on")
            out.append(("/".join(path.parts[-2:]), (path / "test-x.npy", path / "test-y.npy")))
        return out

    def foreign_reals(self, experiences: list[ExperienceSpec]) -> list[tuple[str, np.ndarray]]:
        """`trust.foreign_reals`: (name, real faces) of each folder, every split's reals, at most
        `trust.novelty_reference` of them all (a seeded draw). A face this model learned, or one of
        `trust.unseen_sets` (measured as never seen), is refused by content: the rule would then
        measure itself."""
        from dfcl.data.leaks import face_hashes

        folders = self.params.trust.foreign_reals
        if not folders:
            return []
        taken = {h for e in experiences for x in (e.train_x, e.val_x, e.test_x) if x for h in face_hashes(self.root / x)}
        taken |= {h for folder in self.params.trust.unseen_sets for h in face_hashes(self.root / folder / "test-x.npy")}
        found = []  # (name, images path, row) of every real face
        for folder in folders:
            path = self.root / folder
            splits = [path / f"{s}-x.npy" for s in ("train", "val", "test") if (path / f"{s}-x.npy").is_file()]
            if not splits:
                raise ConfigError(f"trust.foreign_reals: {folder} holds no extracted faces "
                                  "(data/processed/<dataset>/<method>/<split>-x.npy)")
            for x in splits:
                hashes, y = face_hashes(x), np.load(beside(x, "y"))
                if shared := sum(h in taken for h, label in zip(hashes, y) if label == 0):
                    raise ConfigError(f"trust.foreign_reals: {shared} real faces of {folder} are faces this model "
                                      "learned or measures as unseen (trust.unseen_sets); list only sets kept apart")
                found += [("/".join(path.parts[-2:]), x, i) for i in np.flatnonzero(y == 0)]
        if not found:
            raise ConfigError(f"trust.foreign_reals: no real faces in {', '.join(folders)}")
        rows = np.random.default_rng(self.params.train.seed).permutation(len(found))[:self.params.trust.novelty_reference]
        out = {}
        for name, x, i in sorted(found[j] for j in rows):
            out.setdefault((name, x), []).append(i)
        faces: dict[str, list[np.ndarray]] = {}
        for (name, x), idx in out.items():
            faces.setdefault(name, []).append(np.asarray(np.load(x, mmap_mode="r")[idx]))
        return [(name, np.concatenate(f)) for name, f in faces.items()]

    def trust_results(self) -> dict:
        """What the trust fit measured (dfcl.measure.trust.measured) and its settings, for results and MLflow."""
        return {"trust": self.trust.summary()} if self.trust is not None else {}

    def _align_columns(self, plan: list[ExperienceSpec]) -> None:
        """A cell measured before its method was learned keeps its column only while that column
        still means the same method and data: a run that stopped half-way may be followed by
        another dataset's methods. From the first column that differs on, later cells go."""
        h = self.history
        wanted = [[e.key, e.version] for e in plan]
        start = len(h.experiences)  # learned columns never differ: only upcoming ones can
        differ = next((j for j in range(start, min(len(h.columns), len(wanted))) if list(h.columns[j]) != wanted[j]),
                      None)
        if differ is not None:
            for m in MATRICES:
                for row in getattr(h, m.history):
                    del row[differ:]
            del h.columns[differ:]
        if len(wanted) > len(h.columns):
            h.columns = wanted

    def _rng_kept(self):
        """Evaluations beyond the learned methods must not change what is learned: DataLoaders
        draw their seeds from torch's RNG, so its state is put back afterwards."""
        device = self.strategy.device
        return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])

    def track_forward_transfer(self, specs: list[ExperienceSpec]) -> None:
        """Avalanche's forward transfer (accuracy on a method just before it is learned minus the
        model's at initialisation), where the whole sequence is known before training (benchmarks,
        `dfcl compare`): it needs every method evaluated once on the untrained model. Not in the
        pipeline: a method ingested months later has no initial value (Avalanche's metric fails)."""
        metric = ExperienceForwardTransfer()
        self.strategy.evaluator.metrics.append(metric)
        bench = self.benchmark(specs)
        # Avalanche asserts periodic evaluation is on at the first evaluation, its way of getting
        # the initial values; this explicit evaluation before training is that one.
        every, self.strategy.eval_every = self.strategy.eval_every, 0
        try:
            with self._rng_kept():
                self.strategy.eval(bench.test_stream)
        finally:
            self.strategy.eval_every = every

    def _accuracy_forward_transfer(self) -> float:
        """Mean of Avalanche's per-experience forward transfer over the learned methods; NaN when
        it is not tracked (track_forward_transfer) or no method after the first is learned."""
        metric = next((m for m in self.strategy.evaluator.metrics if isinstance(m, ExperienceForwardTransfer)), None)
        if metric is None:
            return math.nan
        n = len(self.history.experiences)
        values = [v for k, v in metric.result().items() if 0 < k < n]
        return sum(values) / len(values) if values else math.nan

    def last_results(self) -> dict:
        """The latest evaluation, from the saved matrices; forgetting as Avalanche's
        StreamForgetting defines it (accuracy right after learning a method minus now)."""
        h = self.history
        acc, auc = h.accuracy_matrix, h.auc_matrix
        if not acc:
            return {}
        forgetting = matrix_forgetting(acc)
        bal = h.balanced_accuracy_matrix[-1] if h.balanced_accuracy_matrix else None
        vid = h.video_auc_matrix[-1] if h.video_auc_matrix else None
        return (summarize(h.experiences, acc[-1], auc[-1], forgetting=forgetting, bwt=-forgetting,
                          row_bal=bal, threshold=h.threshold, row_video_auc=vid)
                | self.metric_forgetting() | self.forward_transfer() | self.trust_results())

    def _evaluate(self, bench, ahead: list[ExperienceSpec] = ()) -> dict:
        """Evaluate on every learned experience, then on the upcoming ones (`ahead`, after them in
        `bench`), and append the row to the matrices."""
        n, m = len(self.history.experiences), len(self.history.experiences) + len(ahead)
        scores = self._scores_metric()
        scores.threshold, scores.kept = self.history.threshold, {}
        scores.videos = self.test_videos(self.history.experiences + list(ahead))
        metrics = self.strategy.eval(bench.test_stream[:n])
        cells = {m.cell: {k: v for k, v in per_experience(metrics, m.cell).items() if k < n} for m in MATRICES}
        if ahead:
            # A call of its own: the per-experience figures of `metrics` for later ids are stale
            # ones of earlier evaluations, hence k < n above.
            with self._rng_kept():
                later = self.strategy.eval(bench.test_stream[n:m])
            for metric in MATRICES:
                cells[metric.cell] |= {k: v for k, v in per_experience(later, metric.cell).items() if n <= k < m}
        scores.videos = {}  # each evaluation sets its own
        for metric in MATRICES:
            getattr(self.history, metric.history).append([cells[metric.cell].get(i, math.nan) for i in range(m)])
        return self.last_results()

    def evaluate_unlearned(self, specs: list[ExperienceSpec]) -> None:
        """The model as it stands, tested on methods it has not learned (a dataset that just
        arrived), into the latest row of the matrices: each one's AUC before it is learned, which is
        what the detector answered on it in between. Without it, the first method of a later
        dataset had no such figure (its row was measured before the method was known)."""
        ahead = [e for e in specs if e.key not in self.learned]
        if not self.history.experiences or not ahead or not self.params.train.eval_upcoming:
            return
        n = len(self.history.experiences)
        self._align_columns(self.history.experiences + ahead)
        bench = self.benchmark(self.history.experiences + ahead)
        scores = self._scores_metric()
        scores.threshold, scores.videos = self.history.threshold, self.test_videos(self.history.experiences + ahead)
        with self._rng_kept():
            later = self.strategy.eval(bench.test_stream[n:])
        scores.videos = {}
        for metric in MATRICES:
            row, cells = getattr(self.history, metric.history)[-1], per_experience(later, metric.cell)
            row[n:] = [cells.get(k, math.nan) for k in range(n, n + len(ahead))]

    def metric_forgetting(self) -> dict:
        """Forgetting in AUC and balanced accuracy, beside Avalanche's accuracy forgetting."""
        h = self.history
        return {"auc_forgetting": matrix_forgetting(h.auc_matrix),
                "balanced_accuracy_forgetting": matrix_forgetting(h.balanced_accuracy_matrix)}

    def forward_transfer(self) -> dict:
        """Each learned method's AUC just before it was learned (`auc_before`), their mean
        (`auc_forward_transfer`, dfcl.measure.metrics.matrix_forward_transfer), and Avalanche's accuracy
        forward transfer (`forward_transfer`) where it is tracked."""
        h = self.history
        out = {"auc_forward_transfer": matrix_forward_transfer(h.auc_matrix),
               "auc_before": values_before_learning(h.auc_matrix, [e.key for e in h.experiences])}
        accuracy = self._accuracy_forward_transfer()
        return out | ({} if math.isnan(accuracy) else {"forward_transfer": accuracy})

    def test_videos(self, experiences: list[ExperienceSpec]) -> dict[int, np.ndarray]:
        """Experience index -> the video of each test face, where the manifest tells."""
        found = {i: face_videos(self.root / e.test_x) for i, e in enumerate(experiences)}
        return {i: v for i, v in found.items() if v is not None}


def train_sequence(specs: list[ExperienceSpec], params: Params, folder: Path, root: Path,
                   on_experience: Callable[[int, dict, Learner], None] | None = None,
                   plugins: list = ()) -> tuple[Learner, dict]:
    """A new learner (whatever `folder` held is removed) trained on `specs` in order, then saved:
    the learner and its report (`strategy_report`). `on_experience(step, results, learner)` runs
    after each experience (progress, MLflow). `dfcl compare` and the benchmarks all train this way.
    The whole sequence is known here, so every evaluation also covers the methods still to come
    (train.eval_upcoming), and Avalanche's forward transfer is tracked from the untrained model.
    `plugins` run first, before the strategy's own (the benchmarks' step timer)."""
    shutil.rmtree(folder, ignore_errors=True)
    learner = Learner(folder, params, root)
    learner.strategy.plugins[:0] = list(plugins)
    start, results = time.perf_counter(), {}
    if params.train.eval_upcoming and len(specs) > 1:
        learner.track_forward_transfer(specs)  # one test pass of the untrained model, timed with the rest
    for step, spec in enumerate(specs):
        results = learner.learn(spec, upcoming=specs[step + 1:])
        if on_experience:
            on_experience(step, results, learner)
    seconds = time.perf_counter() - start
    learner.save()
    report = strategy_report(learner, results, seconds)
    # What the strategy keeps besides the model (GEM's gradient memories, EWC's importances, LwF's
    # teacher, Replay's buffer): the size of its saved state.
    report["state_mb"] = round(sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20, 1)
    return learner, report
