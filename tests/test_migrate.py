"""`dfcl migrate`: a workspace of an older version (renamed params keys, a learner saved as a
pickled Avalanche strategy) is brought to the current formats once, keeping what it learned."""
import json
import math
import pickle

import pytest
import torch
from avalanche.checkpointing import save_checkpoint

from dfcl.config import ConfigError, load_params
from dfcl.learning.learner import Learner
from dfcl.migrate import _unpickler, migrate_learner, migrate_params
from tests.conftest import small_params
from tests.test_learner import memories, specs_for


def test_old_params_keys_are_refused_then_renamed_keeping_their_values(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("strategy:\n  name: gem\n  replay_mem_size: 77\n  ewc_decay: 0.5\n")
    with pytest.raises(ConfigError, match="strategy.replay_mem_size is now strategy.replay.mem_size: run `dfcl migrate`"):
        load_params(params)
    assert sorted(migrate_params(params)) == ["strategy.ewc_decay -> strategy.ewc.decay_factor",
                                              "strategy.replay_mem_size -> strategy.replay.mem_size"]
    p = load_params(params)
    assert p.strategy.replay.mem_size == 77 and p.strategy.ewc.decay_factor == 0.5
    assert p.strategy.name == "gem" and migrate_params(params) == []  # once only


def test_removed_keys_of_an_old_workspace_are_ignored_then_deleted(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("detect:\n  crop: always\n  image_types: [.jpg]\n  video_types: [.mp4]\n")
    assert load_params(params).detect.crop == "always"  # still loads
    assert [line.split(" ")[0] for line in migrate_params(params)] == ["detect.image_types", "detect.video_types"]
    assert "image_types" not in params.read_text() and load_params(params).detect.crop == "always"


def test_old_checkpoints_class_names_resolve_to_todays():
    import io

    from dfcl.learning import evaluation, plugins

    for module, name, now in [("dfcl.learner", "CosineEpochs", plugins.LRSchedule),
                              ("dfcl.learner", "ClassBalancedLoss", plugins.ClassBalancedLoss),
                              ("dfcl.progress", "EpochProgress", plugins.EpochProgress),
                              ("dfcl.metrics", "ExperienceAUC", evaluation.ExperienceAUC),
                              # the flat dfcl/ of before the packages (issue 37)
                              ("dfcl.scoring", "ExperienceAUC", evaluation.ExperienceAUC),
                              # before detection stopped importing Avalanche
                              ("dfcl.measure.scoring", "ExperienceAUC", evaluation.ExperienceAUC),
                              ("dfcl.plugins", "PairedBatches", plugins.PairedBatches),
                              ("dfcl.plugins", "CosineEpochs", plugins.LRSchedule)]:
        assert _unpickler(pickle.Unpickler)(io.BytesIO(f"c{module}\n{name}\n.".encode())).load() is now


@pytest.fixture(scope="module")
def three(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    return root, specs_for(demo_data, root, ["BlendSwap", "GANUpsample", "MouthWarp"])


def as_old_format(learner: Learner, forget: tuple[str, ...] = ()) -> None:
    """Rewrite the saved state as the old format was: the pickled strategy (Avalanche's
    save_checkpoint), the optimizer apart; history without the keys in `forget`."""
    state = learner._state()
    for name in ("model.safetensors", "memory.safetensors", "memory.json"):
        (state / name).unlink()
    save_checkpoint(learner.strategy, str(state / "strategy.ckpt"), exclude=["optimizer"])
    history = json.loads((state / "history.json").read_text())
    del history["identity"]["model"]["mask_head"]  # saved before the mask head
    for key in forget:
        del history[key]
    (state / "history.json").write_text(json.dumps(history))


@pytest.mark.parametrize("strategy", ["replay", "lwf"])
def test_an_old_pickled_learner_is_converted_and_continues(three, tmp_path, strategy):
    root, (first, second, _) = three
    params = small_params(f"strategy.name={strategy}")
    learner = Learner(tmp_path / "learner", params, root)
    learner.learn(first)
    learner.save()
    as_old_format(learner)
    with pytest.raises(ConfigError, match="dfcl migrate"):
        Learner.load(tmp_path / "learner", params, root)

    said = migrate_learner(tmp_path / "learner", params, root)
    assert "1 learned experience(s) converted" in said and ("buffer drawn again: 40" in said) == (strategy == "replay")
    assert "already in the current format" in migrate_learner(tmp_path / "learner", params, root)
    again = Learner.load(tmp_path / "learner", params, root)
    for k, v in learner.strategy.model.state_dict().items():
        assert torch.equal(again.strategy.model.state_dict()[k], v)
    kept = memories(again.strategy)
    if strategy == "lwf":
        assert all(torch.equal(v, memories(learner.strategy)[k]) for k, v in kept.items()) and kept
    else:
        assert len(kept["buffer keys"]) == 40 and all(k >> 32 == 0 for k in kept["buffer keys"].tolist())
    assert again.learn(second)["methods"] == ["BlendSwap", "GANUpsample"]


def test_a_learner_saved_before_the_upper_triangle_migrates_and_continues(three, tmp_path):
    root, (first, second, third) = three
    learner = Learner(tmp_path / "learner", small_params(), root)
    learner.learn(first)
    learner.save()
    as_old_format(learner, forget=("columns",))  # square lower-triangular matrices, no columns
    migrate_learner(tmp_path / "learner", small_params(), root)

    again = Learner.load(tmp_path / "learner", small_params(), root)
    assert again.history.columns == [["BlendSwap", "test"]]
    assert math.isnan(again.last_results()["auc_forward_transfer"])
    r = again.learn(second, upcoming=[third])
    assert [len(row) for row in again.history.auc_matrix] == [1, 3]
    assert r["methods"] == ["BlendSwap", "GANUpsample"] and r["auc_before"] == {}  # unknown when BlendSwap was learned
    r = again.learn(third)
    assert r["auc_before"] == {"MouthWarp": again.history.auc_matrix[1][2]}
