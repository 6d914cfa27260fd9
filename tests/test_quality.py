"""Detection quality levers in the learner: validation split, class-balanced loss, cosine
schedule, early stopping on validation AUC, self-blended fakes and the calibrated threshold."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from avalanche.core import SupervisedPlugin

from dfcl.data.layouts import assign_splits
from dfcl.learning.learner import Learner
from dfcl.learning.plugins import BestValidationEpoch, ClassBalancedLoss
from tests.conftest import small_params
from tests.test_learner import specs_for


@pytest.fixture(scope="module")
def specs(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return root, specs_for(demo_data, root, ["BlendSwap", "GANUpsample"])


def test_validation_split_is_by_group_and_holds_both_classes():
    groups = [f"g{i}" for i in range(40) for _ in range(3)]  # three frames per video
    files = pd.DataFrame({"group": groups, "label": [int(g[1:]) % 3 == 0 for g in groups], "split": ""})
    split = assign_splits(files, 0.2, 0, val_fraction=0.25)
    sides = files.assign(split=split).groupby("group").split.nunique()
    assert (sides == 1).all(), "a video's frames must stay on one side"
    val = files[split == "val"]
    assert set(val.label) == {False, True} and 0.1 < len(val) / len(files) < 0.3
    official = files.assign(split=["val" if g == "g1" else "train" for g in groups])
    assert (assign_splits(official, 0.2, 0, val_fraction=0.25) == official.split).all(), "an official split wins"


def test_class_balanced_loss_weights_follow_the_experience_counts(specs, tmp_path):
    root, (first, _) = specs
    learner = Learner(tmp_path / "l", small_params("train.epochs=1", "sbi.enabled=true", "sbi.per_real=2"), root)
    learner.learn(first)
    y = np.load(root / first.train_y)
    n_real, n_fake = int((y == 0).sum()), int((y == 1).sum()) + 2 * int((y == 0).sum())  # + SBI fakes
    weights = learner.strategy._criterion.weight.cpu()
    total = n_real + n_fake
    assert weights.tolist() == pytest.approx([total / (2 * n_real), total / (2 * n_fake)], rel=1e-5)
    assert any(isinstance(p, ClassBalancedLoss) for p in learner.strategy.plugins)
    assert len(learner.benchmark([first]).train_stream[0].dataset) == total, "SBI fakes join the experience"


def test_with_replay_the_class_weights_count_the_buffer(specs, tmp_path):
    from avalanche.training.plugins import ReplayPlugin

    root, (first, second) = specs
    learner = Learner(tmp_path / "l", small_params("train.epochs=1", "strategy.name=replay",
                                                   "strategy.replay.mem_size=30"), root)
    learner.learn(first)
    replay = next(p for p in learner.strategy.plugins if isinstance(p, ReplayPlugin))
    buffer = np.asarray(list(replay.storage_policy.buffer.targets))
    x, y = np.load(root / second.train_x), np.load(root / second.train_y)
    keep = (y == 0) | (np.cumsum(y == 1) % 3 == 0)  # the new data: a third of its fakes, so real-heavy
    x, y = x[keep], y[keep]
    np.save(tmp_path / "x.npy", x), np.save(tmp_path / "y.npy", y)
    second = dataclasses.replace(second, train_x=str(tmp_path / "x.npy"), train_y=str(tmp_path / "y.npy"))
    new_share, buffer_share = np.bincount(y, minlength=2) / len(y), np.bincount(buffer, minlength=2) / len(buffer)
    learner.learn(second)
    share = (new_share + buffer_share) / 2  # each batch: train_mb_size new + train_mb_size from the buffer
    assert learner.strategy._criterion.weight.cpu().tolist() == pytest.approx(list(1 / (2 * share)), rel=1e-5)
    assert not np.allclose(share, new_share), "the test needs a buffer whose mix differs from the new data"


def test_cosine_schedule_decays_within_each_experience(specs, tmp_path):
    root, (first, second) = specs
    seen = []

    class LrLog(SupervisedPlugin):  # runs after LRSchedule: the rate of each epoch's first step
        def before_training_iteration(self, strategy, **_):
            if strategy.clock.train_epoch_iterations == 0:
                seen.append(strategy.optimizer.param_groups[0]["lr"])

    learner = Learner(tmp_path / "l", small_params("train.epochs=4", "train.lr=0.01", "train.schedule=cosine"), root)
    learner.strategy.plugins.append(LrLog())
    learner.learn(first)
    learner.learn(second)
    expected = [0.01 * 0.5 * (1 + np.cos(np.pi * e / 4)) for e in range(4)]
    assert seen == pytest.approx(expected * 2), "restarts at the base rate for every experience"


def test_early_stopping_stops_without_a_validation_gain_and_keeps_the_best_epoch(specs, tmp_path):
    root, (first, _) = specs
    epochs = []

    class EpochLog(SupervisedPlugin):
        def after_training_epoch(self, strategy, **_):
            epochs.append(strategy.clock.train_exp_epochs)

    # lr 0: the weights never change, so validation AUC never improves on the first epoch.
    learner = Learner(tmp_path / "l", small_params("train.epochs=10", "train.lr=0.0", "train.early_stopping_patience=2",
                                                   "train.schedule=constant"), root)
    learner.strategy.plugins.append(EpochLog())
    for m in learner.strategy.model.modules():  # batch-norm statistics frozen too
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    before = {k: v.clone() for k, v in learner.strategy.model.state_dict().items()}
    learner.learn(first)
    assert len(epochs) == 3, f"stopped after the best epoch + patience, ran {len(epochs)}"
    stopper = next(p for p in learner.strategy.plugins if isinstance(p, BestValidationEpoch))
    assert stopper.faces == [] and stopper._best is None, "nothing path-bound or heavy stays for the checkpoint"
    for k, v in learner.strategy.model.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.equal(v, before[k]), k


def test_threshold_is_calibrated_on_validation_and_balanced_accuracy_reported(specs, tmp_path):
    root, (first, second) = specs
    learner = Learner(tmp_path / "l", small_params("train.epochs=2"), root)
    learner.learn(first)
    r = learner.learn(second)
    assert learner.history.threshold == pytest.approx(learner.calibrate(learner.history.experiences))
    assert 0 <= r["threshold"] <= 1 and r["threshold"] == learner.history.threshold
    assert set(r["balanced_accuracy"]) == {"BlendSwap", "GANUpsample"}
    assert [len(row) for row in learner.history.balanced_accuracy_matrix] == [1, 2]
    learner.save()
    again = Learner.load(tmp_path / "l", small_params("train.epochs=2"), root)
    assert again.history.threshold == learner.history.threshold
    assert again.last_results()["avg_balanced_accuracy"] == pytest.approx(r["avg_balanced_accuracy"])
