"""The learner keeps weights AND strategy memory across runs (save -> load -> continue), and
evaluates the methods still to come (the matrices' upper triangle: forward transfer)."""
import math

import numpy as np
import pytest
import torch

from dfcl.config import ConfigError
from dfcl.data.arrays import ExperienceSpec
from dfcl.data.extraction import extract_dataset
from dfcl.learning.learner import Learner
from dfcl.learning.plugins import EpochProgress
from dfcl.measure.scoring import per_experience
from tests.conftest import small_params


def specs_for(root, ws_root, names):
    """Extract the synthetic methods' faces into arrays and describe them as experiences."""
    specs = []
    for name in names:
        extract_dataset(root / name, ws_root / name, small_params(), name, cache_dir=ws_root / "cache")
        paths = {f"{split}_{a}": f"{name}/{name}/{split}-{a}.npy" for split in ("train", "val", "test") for a in "xy"}
        specs.append(ExperienceSpec(key=name, dataset=name, method=name, version="test", **paths))
    return specs


@pytest.fixture(scope="module")
def specs(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return root, specs_for(demo_data, root, ["BlendSwap", "GANUpsample"])


MODELS = {"small_cnn": [], "efficientnet_lite0": ["model.name=efficientnet_lite0", "model.pretrained=imagenet",
                                                 "train.backbone_lr_scale=0.3", "train.warmup_epochs=0.5"]}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("strategy", ["naive", "cwr", "replay", "gem", "lwf", "ewc", "cumulative", "der", "sur_lid",
                                      "dfil"])
def test_learner_resumes_with_its_strategy_state(specs, tmp_path, strategy, model):
    root, (first, second) = specs
    params = small_params(f"strategy.name={strategy}", *MODELS[model])
    learner = Learner(tmp_path / "learner", params, root)
    r1 = learner.learn(first)
    learner.save()
    weights = {k: v.clone() for k, v in learner.strategy.model.state_dict().items()}

    memory = memories(learner.strategy)

    again = Learner.load(tmp_path / "learner", params, root)
    assert again.strategy is not learner.strategy and again.strategy.clock.train_exp_counter == 1
    for k, v in again.strategy.model.state_dict().items():
        assert torch.equal(v, weights[k]), f"{k} not restored"
    restored = memories(again.strategy)
    assert restored.keys() == memory.keys()
    for name, value in memory.items():
        assert torch.equal(restored[name], value), f"{strategy}: {name} not restored"
    if strategy in ("replay", "sur_lid", "dfil", "der"):
        assert len(memory["buffer keys"]) == 40
    if strategy == "gem":
        assert memory["gem x 0"].shape[0] == 16
    if strategy == "der":
        assert memory["der logits"].shape == (40, 2)
    if strategy in ("cwr", "lwf", "ewc", "dfil"):
        assert memory, f"{strategy} kept no memory"
    if strategy == "cumulative":
        import numpy as np

        assert len(again.strategy.dataset) == len(np.load(root / first.train_y)), "Cumulative's data so far was lost"

    r2 = again.learn(second)
    assert r1["methods"] == ["BlendSwap"] and r2["methods"] == ["BlendSwap", "GANUpsample"]
    assert [len(row) for row in again.history.accuracy_matrix] == [1, 2]
    assert again.history.accuracy_matrix[0][0] == pytest.approx(r1["accuracy"]["BlendSwap"])
    assert all(0 <= a <= 1 for a in r2["accuracy"].values())
    assert all(0 <= a <= 1 for a in r2["auc"].values())
    # Avalanche's forgetting: accuracy right after learning minus now
    expected = again.history.accuracy_matrix[0][0] - again.history.accuracy_matrix[1][0]
    assert r2["forgetting"] == pytest.approx(expected, abs=1e-6)
    assert r2["bwt"] == pytest.approx(-expected, abs=1e-6)
    # the same definition on AUC and balanced accuracy, which Avalanche does not compute
    auc, bal = again.history.auc_matrix, again.history.balanced_accuracy_matrix
    assert r2["auc_forgetting"] == pytest.approx(auc[0][0] - auc[1][0], abs=1e-6)
    assert r2["balanced_accuracy_forgetting"] == pytest.approx(bal[0][0] - bal[1][0], abs=1e-6)
    assert r1["auc_forgetting"] == 0.0 and again.last_results()["auc_forgetting"] == r2["auc_forgetting"]


def memories(strategy) -> dict[str, torch.Tensor]:
    """What each strategy remembers besides its weights, read from Avalanche's own objects."""
    from avalanche.training.plugins import (
        CWRStarPlugin,
        EWCPlugin,
        GEMPlugin,
        LwFPlugin,
        ReplayPlugin,
    )

    from dfcl.learning.continual.dfil import ContrastiveDistillation

    out = {}
    if hasattr(strategy, "storage_policy"):  # DER: its buffer, with the logits each face had
        buffer = strategy.storage_policy.buffer
        out["buffer keys"] = torch.as_tensor(list(buffer.sample_key))
        out["der logits"] = torch.stack([torch.as_tensor(v) for v in buffer.logits])
    for p in strategy.plugins:
        if isinstance(p, ContrastiveDistillation) and p.teacher is not None:
            out |= {f"dfil {k}": v for k, v in p.teacher.state_dict().items()}
        if isinstance(p, ReplayPlugin):
            out["buffer keys"] = torch.as_tensor(list(p.storage_policy.buffer.sample_key))
        if isinstance(p, GEMPlugin):
            out |= {f"gem x {t}": x for t, x in p.memory_x.items()} | {f"gem y {t}": y for t, y in p.memory_y.items()}
        if isinstance(p, EWCPlugin):
            for kind in ("saved_params", "importances"):
                out |= {f"ewc {kind} {t} {k}": d.data for t, ps in getattr(p, kind).items() for k, d in ps.items()}
        if isinstance(p, LwFPlugin) and p.lwf.prev_model is not None:
            out |= {f"lwf {k}": v for k, v in p.lwf.prev_model.state_dict().items()}
        if isinstance(p, CWRStarPlugin):
            out |= {f"cwr {c}": torch.as_tensor(w) for c, w in p.model.saved_weights.items()}
    return out


def test_a_continued_learner_takes_this_runs_plugin_settings(specs, tmp_path):
    """The strategy is rebuilt from this run's params: a smaller replay memory and class weighting
    switched off apply to the next experience, and the buffer keeps its faces from before."""
    from dfcl.learning.plugins import ClassBalancedLoss

    root, (first, second) = specs
    learner = Learner(tmp_path / "learner", small_params("strategy.name=replay"), root)
    learner.learn(first)
    learner.save()
    before = set(memories(learner.strategy)["buffer keys"].tolist())
    again = Learner.load(tmp_path / "learner", small_params("strategy.name=replay", "strategy.replay.mem_size=20",
                                                            "train.class_balance=false"), root)
    assert not any(isinstance(p, ClassBalancedLoss) for p in again.strategy.plugins)
    again.learn(second)
    keys = memories(again.strategy)["buffer keys"].tolist()
    assert len(keys) == 20
    assert sum(k >> 32 == 0 for k in keys) == 10 and set(k for k in keys if k >> 32 == 0) <= before


def test_changed_identity_is_refused(specs, tmp_path):
    root, (first, _) = specs
    learner = Learner(tmp_path / "learner", small_params(), root)
    learner.learn(first)
    learner.save()
    with pytest.raises(ConfigError, match="start over with --fresh"):  # one `dfcl:` line, no traceback
        Learner.load(tmp_path / "learner", small_params("strategy.name=gem"), root)


def test_a_resumed_learner_trains_with_this_runs_loop_settings(specs, tmp_path):
    """The strategy is built from this run's params: -S train.epochs=... applies."""
    root, (first, _) = specs
    learner = Learner(tmp_path / "learner", small_params(), root)
    learner.learn(first)
    learner.save()
    again = Learner.load(tmp_path / "learner", small_params("train.epochs=3", "train.batch_size=8"), root)
    assert (again.strategy.train_epochs, again.strategy.train_mb_size) == (3, 8)


class Killed(Exception):
    pass


def epoch_log(learner) -> list:
    """(epoch index, learning rate) at the first step of every epoch a learner trains."""
    from avalanche.core import SupervisedPlugin

    seen = []

    class Log(SupervisedPlugin):
        def after_training_iteration(self, strategy, **_):
            if strategy.clock.train_epoch_iterations == 0:  # the clock counts this step after every plugin
                seen.append((strategy.clock.train_exp_epochs, round(strategy.optimizer.param_groups[0]["lr"], 8)))

    learner.strategy.plugins.insert(0, Log())
    return seen


def test_an_experience_a_run_was_killed_in_continues_from_its_last_finished_epoch(specs, tmp_path):
    """Killed after two of three epochs: the next run (a new process: the learner loaded from its
    folder) starts from the checkpoint of epoch 2, runs the third epoch alone, at the learning
    rate the uninterrupted run had there, and ends with the uninterrupted run's weights, bit for
    bit; the checkpoint goes once the experience is saved."""
    from avalanche.core import SupervisedPlugin
    from safetensors.torch import load_file

    from dfcl.learning.plugins.epoch_checkpoint import MODEL

    root, (first, second) = specs
    params = small_params("train.epochs=3", "train.schedule=cosine")
    whole = Learner(tmp_path / "whole", params, root)
    whole.learn(first)
    whole.save()
    lrs = epoch_log(whole)
    faces = len(np.load(root / second.train_y))
    speed = whole.learn(second)["speed"]
    uninterrupted = {k: v.clone() for k, v in whole.strategy.model.state_dict().items()}
    assert [e for e, _ in lrs] == [0, 1, 2]
    assert speed["new_images"] == 3 * faces and speed["train_images"] > speed["new_images"]  # and Replay's memory
    assert speed["train_seconds"] > 0 and speed["eval_seconds"] >= sum(
        speed[f"{part}_seconds"] for part in ("calibrate", "trust", "evaluate")) > 0

    learner = Learner(tmp_path / "learner", params, root)
    learner.learn(first)
    learner.save()

    class KillAfterSecondEpoch(SupervisedPlugin):
        def after_training_epoch(self, strategy, **_):
            if strategy.clock.train_exp_epochs == 1:
                raise Killed

    # after the checkpoint's own hook, before the clock's (Avalanche's last plugin)
    learner.strategy.plugins.insert(len(learner.strategy.plugins) - 1, KillAfterSecondEpoch())
    with pytest.raises(Killed):
        learner.learn(second)
    checkpoint = tmp_path / "learner" / Learner.EPOCH_CHECKPOINT
    saved = load_file(checkpoint / MODEL)

    again = Learner.load(tmp_path / "learner", params, root)
    resumed = epoch_log(again)
    start = {}

    class Weights(SupervisedPlugin):
        def before_training_epoch(self, strategy, **_):
            start.setdefault("weights", {k: v.clone() for k, v in strategy.model.state_dict().items()})

    again.strategy.plugins.append(Weights())
    progress = again._plugin(EpochProgress)
    shown = []
    update = progress.after_training_iteration
    progress.after_training_iteration = lambda strategy, **kw: (shown.append(progress.bar.desc), update(strategy, **kw))
    assert again.learn(second)["speed"]["new_images"] == faces  # the one epoch left
    assert set(shown) == {"experience 1 epoch 3/3"}  # its bar counts the epochs done before it
    assert [e for e, _ in resumed] == [2] and resumed[0][1] == pytest.approx(lrs[2][1])
    assert all(torch.equal(start["weights"][k], v) for k, v in saved.items())
    # its RNG put back too (data order, augmentation): it ends where the uninterrupted run ended
    assert all(torch.equal(again.strategy.model.state_dict()[k], v) for k, v in uninterrupted.items())
    assert again.strategy.clock.train_exp_counter == 2 and checkpoint.is_dir()
    again.save()
    assert not checkpoint.exists()

    # killed after its last epoch, before the save (while evaluating): no epoch is trained again
    done = Learner.load(tmp_path / "whole", params, root)  # `second` was learned, never saved
    assert (tmp_path / "whole" / Learner.EPOCH_CHECKPOINT).is_dir()
    nothing = epoch_log(done)
    speed = done.learn(second)["speed"]
    assert speed["train_images"] == speed["new_images"] == 0
    assert nothing == [] and done.strategy.clock.train_exp_counter == 2

    # a checkpoint of other settings is not used: killed again, then run with 2 epochs, it starts afresh
    third = Learner(tmp_path / "third", params, root)
    third.learn(first)
    third.save()
    third.strategy.plugins.insert(len(third.strategy.plugins) - 1, KillAfterSecondEpoch())
    with pytest.raises(Killed):
        third.learn(second)
    shorter = Learner.load(tmp_path / "third", small_params("train.epochs=2", "train.schedule=cosine"), root)
    fresh = epoch_log(shorter)
    shorter.learn(second)
    assert [e for e, _ in fresh] == [0, 1]


def test_learning_the_same_method_twice_is_refused(specs, tmp_path):
    root, (first, _) = specs
    learner = Learner(tmp_path / "learner", small_params(), root)
    learner.learn(first)
    with pytest.raises(ValueError, match="already learned"):
        learner.learn(first)


@pytest.fixture(scope="module")
def three(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache3")
    return root, specs_for(demo_data, root, ["BlendSwap", "GANUpsample", "MouthWarp"])


def lower(matrix):
    return [row[:i + 1] for i, row in enumerate(matrix)]


@pytest.fixture(scope="module")
def sequences(three, tmp_path_factory):
    """The same three-method sequence trained twice from the same seed: with the methods still to
    come evaluated after each experience (the default), and without."""
    from dfcl.learning.learner import train_sequence

    root, specs = three
    folder = tmp_path_factory.mktemp("sequences")
    on = train_sequence(specs, small_params(), folder / "on", root)
    off = train_sequence(specs, small_params("train.eval_upcoming=false"), folder / "off", root)
    return on, off


def test_upcoming_methods_fill_the_upper_triangle(sequences):
    (on, report), (off, _) = sequences
    h = on.history
    assert [len(row) for row in h.auc_matrix] == [3, 3, 3]
    assert [len(row) for row in off.history.auc_matrix] == [1, 2, 3]
    for matrix in (h.accuracy_matrix, h.auc_matrix, h.balanced_accuracy_matrix):
        assert all(0 <= v <= 1 for row in matrix for v in row)
    assert h.columns == [[k, "test"] for k in ("BlendSwap", "GANUpsample", "MouthWarp")]
    r = on.last_results()
    # Forward transfer: each method's AUC just before it was learned, and their mean.
    assert r["auc_before"] == {"GANUpsample": h.auc_matrix[0][1], "MouthWarp": h.auc_matrix[1][2]}
    assert r["auc_forward_transfer"] == pytest.approx((h.auc_matrix[0][1] + h.auc_matrix[1][2]) / 2)
    assert report["auc_forward_transfer"] == pytest.approx(r["auc_forward_transfer"])
    assert math.isnan(off.last_results()["auc_forward_transfer"]) and off.last_results()["auc_before"] == {}
    # Averages are over the learned methods only.
    assert r["methods"] == ["BlendSwap", "GANUpsample", "MouthWarp"]
    assert r["avg_auc"] == pytest.approx(sum(h.auc_matrix[-1]) / 3)


def test_evaluating_upcoming_methods_changes_neither_training_nor_forgetting(sequences):
    (on, on_report), (off, off_report) = sequences
    # Same seed, same training: the extra evaluations leave torch's RNG where it was.
    for name in ("accuracy_matrix", "auc_matrix", "balanced_accuracy_matrix"):
        assert lower(getattr(on.history, name)) == getattr(off.history, name), name
    for key in ("forgetting", "bwt", "auc_forgetting", "avg_accuracy", "avg_auc"):
        assert on_report[key] == pytest.approx(off_report[key], abs=1e-9), key
    assert on.history.threshold == off.history.threshold


class RandomProjection(torch.nn.Module):
    """A stand-in detector whose answers change, fixed, with each `reseed`: accuracies away from
    0.5 that differ from one evaluation to the next (the tiny CNN answers 0.5 everywhere)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3 * 32 * 32, 2))

    @torch.no_grad()
    def reseed(self, seed: int):
        self.w.copy_(torch.randn(self.w.shape, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        return (x - 0.5).reshape(len(x), -1) @ self.w


class ReseedAfterEachExperience:
    """Plugin: after each experience's training, other answers for its evaluations."""

    def __init__(self):
        self.seed = 0

    def after_training_exp(self, strategy, **kwargs):
        self.seed += 1
        strategy.model.reseed(self.seed)

    def __getattr__(self, name):  # every other Avalanche callback: nothing to do
        if name.startswith(("before_", "after_")):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def test_forgetting_counts_from_right_after_learning_not_from_before(three, tmp_path):
    """Avalanche's StreamForgetting (accuracy) takes a method's value right after training on it:
    the evaluation before it was learned (the upper triangle) must not become that value."""
    root, specs = three
    from dfcl.learning.strategies import make_optimizer

    learner = Learner(tmp_path / "learner", small_params("strategy.name=naive"), root)
    learner.strategy.model = RandomProjection()
    learner.strategy.optimizer = make_optimizer(learner.strategy.model, learner.params.train)
    learner.strategy.plugins.append(ReseedAfterEachExperience())
    results = [learner.learn(spec, upcoming=specs[i + 1:]) for i, spec in enumerate(specs)]
    acc = learner.history.accuracy_matrix
    assert len({v for row in acc for v in row}) > 3, f"the test needs accuracies that differ: {acc}"
    assert acc[0][1] != acc[1][1] and acc[1][2] != acc[2][2]
    assert results[1]["forgetting"] == pytest.approx(acc[0][0] - acc[1][0], abs=1e-6)
    expected = ((acc[0][0] - acc[2][0]) + (acc[1][1] - acc[2][1])) / 2
    assert results[2]["forgetting"] == pytest.approx(expected, abs=1e-6)
    assert results[2]["bwt"] == pytest.approx(-expected, abs=1e-6)
    auc = learner.history.auc_matrix
    assert results[2]["auc_forgetting"] == pytest.approx(((auc[0][0] - auc[2][0]) + (auc[1][1] - auc[2][1])) / 2)
    assert results[2]["auc_forward_transfer"] == pytest.approx((auc[0][1] + auc[1][2]) / 2)


def test_accuracy_forward_transfer_is_avalanches_against_the_untrained_model(three, sequences):
    """Avalanche's forward transfer: accuracy just before learning minus the untrained model's."""
    root, specs = three
    (on, report), (off, off_report) = sequences
    untrained = Learner(root / "untrained", small_params(), root)  # the same seed: the same initial model
    metrics = untrained.strategy.eval(untrained.benchmark(specs).test_stream)
    initial = per_experience(metrics, "Top1_Acc_Exp")
    acc = on.history.accuracy_matrix
    expected = ((acc[0][1] - initial[1]) + (acc[1][2] - initial[2])) / 2
    assert report["forward_transfer"] == pytest.approx(expected, abs=1e-6)
    assert on.last_results()["forward_transfer"] == pytest.approx(expected, abs=1e-6)
    assert off_report["forward_transfer"] is None


def test_a_column_that_changed_method_is_dropped(three, tmp_path):
    """A run that stopped after the first method, followed by another dataset's: the cell measured
    for the method planned second must not count as the new second method's."""
    root, (first, second, third) = three
    learner = Learner(tmp_path / "learner", small_params(), root)
    learner.learn(first, upcoming=[second])
    assert len(learner.history.auc_matrix[0]) == 2
    r = learner.learn(third)
    assert [len(row) for row in learner.history.auc_matrix] == [1, 2]
    assert learner.history.columns == [["BlendSwap", "test"], ["MouthWarp", "test"]]
    assert r["auc_before"] == {} and math.isnan(r["auc_forward_transfer"])


def test_a_method_arriving_after_a_run_is_measured_before_it_is_learned(three, tmp_path):
    """A dataset that arrives later: the model as it stands is tested on its methods first, so the
    first of them also gets its AUC before learning (what the detector answered in between)."""
    root, (first, second, third) = three
    learner = Learner(tmp_path / "learner", small_params(), root)
    learner.learn(first)  # a run that knew nothing of the others
    learned = [list(row) for row in learner.history.auc_matrix]
    learner.evaluate_unlearned([first, second, third])
    row = learner.history.auc_matrix[0]
    assert row[:1] == learned[0] and len(row) == 3 and not any(math.isnan(v) for v in row)
    assert learner.history.columns == [["BlendSwap", "test"], ["GANUpsample", "test"], ["MouthWarp", "test"]]
    r = learner.learn(second, upcoming=[third])
    assert r["auc_before"] == {"GANUpsample": row[1]}
    # The same weights and the same faces: a learner that measured them while learning agrees.
    other = Learner(tmp_path / "other", small_params(), root)
    other.learn(first, upcoming=[second, third])
    assert other.history.auc_matrix[0] == pytest.approx(row)


def test_the_next_run_continues_from_the_champions_learner_not_a_rejected_one(tmp_path):
    from dfcl.learning.learner_versions import (
        archive,
        continue_from_champion,
        current_version,
    )

    folder, params = tmp_path / "learner", small_params()

    def saved(threshold):  # states told apart by what they saved, without training
        learner = Learner(folder, params, tmp_path)
        learner.history.threshold = threshold
        learner.save()

    saved(0.3)
    archive(folder, "1", keep=5)  # the champion
    # before it was promoted (a first version the gate rejected): continued, and the log says so
    said = continue_from_champion(folder, None, from_challenger=False)
    assert said.startswith("no champion yet: continuing from version 1's learner")
    assert current_version(folder) == "1"
    saved(0.7)
    archive(folder, "2", keep=5, protect={"1"})  # the challenger ops rejected
    assert current_version(folder) == "2"
    assert "--from-challenger" in continue_from_champion(folder, "1", from_challenger=True)
    assert Learner.load(folder, params, tmp_path).history.threshold == 0.7
    said = continue_from_champion(folder, "1", from_challenger=False)
    assert said.startswith("continuing from the champion's learner (version 1), not from version 2's")
    assert Learner.load(folder, params, tmp_path).history.threshold == 0.3 and current_version(folder) == "1"
    assert continue_from_champion(folder, "1", from_challenger=False) is None, "already the champion's"
    # a state learned but not registered yet (a crash before registering) is continued, to be registered
    saved(0.9)
    assert continue_from_champion(folder, "1", from_challenger=False) is None
    # pruned to the newest `keep`, never the champion's; a save removes no kept version
    archive(folder, "3", keep=2, protect={"1"})
    archive(folder, "4", keep=2, protect={"1"})
    assert sorted(p.name for p in (folder / "versions").iterdir()) == ["v000001", "v000003", "v000004"]
