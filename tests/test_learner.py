"""The learner keeps weights AND strategy memory across runs (save -> load -> continue)."""
import pytest
import torch

from dfcl.config import ConfigError
from dfcl.extraction import extract_dataset
from dfcl.learner import ExperienceSpec, Learner
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
@pytest.mark.parametrize("strategy", ["naive", "cwr", "replay", "gem", "lwf", "ewc", "cumulative"])
def test_learner_resumes_with_its_strategy_state(specs, tmp_path, strategy, model):
    root, (first, second) = specs
    params = small_params(f"strategy.name={strategy}", *MODELS[model])
    learner = Learner(tmp_path / "learner", params, root)
    r1 = learner.learn(first)
    learner.save()
    weights = {k: v.clone() for k, v in learner.strategy.model.state_dict().items()}

    again = Learner.load(tmp_path / "learner", params, root)
    assert again.strategy.clock.train_exp_counter == 1
    for k, v in again.strategy.model.state_dict().items():
        assert torch.equal(v, weights[k]), f"{k} not restored"
    if strategy == "replay":
        buffer = next(p for p in again.strategy.plugins if hasattr(p, "storage_policy"))
        assert len(buffer.storage_policy.buffer) == 40
    if strategy == "gem":
        gem = next(p for p in again.strategy.plugins if hasattr(p, "memory_x"))
        assert gem.memory_x[0].shape[0] == 16
    if strategy == "cwr":
        cwr = next(p for p in again.strategy.plugins if hasattr(p, "cwr_layer_name"))
        assert cwr.model.saved_weights, "CWR* consolidated weights were lost"
    if strategy == "lwf":
        lwf = next(p for p in again.strategy.plugins if hasattr(p, "lwf"))
        assert lwf.lwf.prev_model is not None, "LwF's teacher (the previous model) was lost"
    if strategy == "ewc":
        ewc = next(p for p in again.strategy.plugins if hasattr(p, "importances"))
        assert ewc.importances and ewc.saved_params, "EWC's importances were lost"
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


def test_changed_identity_is_refused(specs, tmp_path):
    root, (first, _) = specs
    learner = Learner(tmp_path / "learner", small_params(), root)
    learner.learn(first)
    learner.save()
    with pytest.raises(ConfigError, match="start over with --fresh"):  # one `dfcl:` line, no traceback
        Learner.load(tmp_path / "learner", small_params("strategy.name=gem"), root)


def test_a_resumed_learner_trains_with_this_runs_loop_settings(specs, tmp_path):
    """The checkpoint holds the strategy of the first run; -S train.epochs=... must still apply."""
    root, (first, _) = specs
    learner = Learner(tmp_path / "learner", small_params(), root)
    learner.learn(first)
    learner.save()
    again = Learner.load(tmp_path / "learner", small_params("train.epochs=3", "train.batch_size=8"), root)
    assert (again.strategy.train_epochs, again.strategy.train_mb_size) == (3, 8)


def test_learning_the_same_method_twice_is_refused(specs, tmp_path):
    root, (first, _) = specs
    learner = Learner(tmp_path / "learner", small_params(), root)
    learner.learn(first)
    with pytest.raises(ValueError, match="already learned"):
        learner.learn(first)
