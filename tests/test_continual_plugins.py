"""dfcl.learning.continual on toy data: the replay selections (SUR-LID, DFIL), DFIL's contrastive
distillation plugin, and Avalanche's DER/DER++ as the generic baseline. Random tensors and a tiny
CNN: fast on a CPU."""
import copy
import json
import pickle
import threading
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import _make_taskaware_classification_dataset
from avalanche.training import DER, Naive
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dfcl.learning.continual import (
    CentralHardSelection,
    ContrastiveDistillation,
    SparseUniformSelection,
    make_replay_plugin,
)
from dfcl.learning.continual.dfil import logit_distillation
from dfcl.learning.continual.features import HeadTap, frozen_copy
from dfcl.learning.continual.selection import distance_bins


class TinyCNN(nn.Module):
    """The shape of the project's detectors: pooled features into an nn.Linear `head`."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.dropout(self.body(x)))


class Probe(nn.Module):
    """Features = the input itself, so a test knows them; head: p(fake) grows with feature 2."""

    def __init__(self, dim=3):
        super().__init__()
        self.head = nn.Linear(dim, 2)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[0, 2], self.head.weight[1, 2] = -1.0, 1.0
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(x.flatten(1))


def dataset(x, y):
    return _make_taskaware_classification_dataset(TensorDataset(x, y), task_labels=0, targets=y.tolist())


def faces(n, seed, shift=0.0):
    """n random 3x8x8 'faces', half real (0), half fake (1); fakes are brighter by `shift`."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, 3, 8, 8, generator=g) + shift * y.view(-1, 1, 1, 1)
    return dataset(x, y)


def stream(n_exps=3, n=48):
    return benchmark_from_datasets(train=[faces(n, seed=e, shift=0.3 * (e + 1)) for e in range(n_exps)],
                                   test=[faces(16, seed=100 + e) for e in range(n_exps)])


def naive(model, plugins):
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), criterion=nn.CrossEntropyLoss(),
                 train_mb_size=16, train_epochs=1, eval_mb_size=32, plugins=plugins, evaluator=None)


def fake_strategy(model):
    return SimpleNamespace(model=model, device=torch.device("cpu"), eval_mb_size=16)


def class_orders(order, labels):
    return {c: [i for i in order if labels[i] == c] for c in (0, 1)}


# -- selection ------------------------------------------------------------------------------
@pytest.mark.parametrize("binning", ["width", "quantile"])
def test_sparse_uniform_is_balanced_covers_bins_and_is_deterministic(binning):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(70, 6, generator=g), torch.tensor([0] * 40 + [1] * 30)
    data, model = dataset(x, y), Probe(dim=6)
    select = SparseUniformSelection(bins=4, views=2, binning=binning, seed=3)
    order = select.make_sorted_indices(fake_strategy(model), data)
    assert sorted(order) == list(range(70))
    for k in range(2, 61, 2):  # while both classes last, every even prefix is half real, half fake
        assert sum(y[order[:k]].tolist()) == k // 2
    for c, own in class_orders(order, y.tolist()).items():
        members = (y == c).nonzero().flatten()
        bins = distance_bins(F.normalize(x[members], dim=1), 4, binning)
        bin_of = dict(zip(members.tolist(), bins.tolist()))
        nonempty = set(bins.tolist())
        assert {bin_of[i] for i in own[:len(nonempty)]} == nonempty  # the first picks cover every bin
    assert SparseUniformSelection(bins=4, views=2, binning=binning, seed=3).make_sorted_indices(
        fake_strategy(model), data) == order


def test_selections_handle_a_class_with_one_or_no_samples_and_restore_modes():
    model = TinyCNN().train()
    model.body[1].eval()  # as FrozenBatchNormStats leaves it
    strategy = fake_strategy(model)
    x = torch.rand(6, 3, 8, 8)
    one_fake, no_fake = dataset(x, torch.tensor([0, 0, 1, 0, 0, 0])), dataset(x, torch.zeros(6, dtype=torch.long))
    for select in (SparseUniformSelection(bins=3), CentralHardSelection()):
        order = select.make_sorted_indices(strategy, one_fake)
        assert sorted(order) == list(range(6)) and 2 in order[:2]
        assert sorted(select.make_sorted_indices(strategy, no_fake)) == list(range(6))
    assert model.training and model.head.training and not model.body[1].training
    assert not model.head._forward_pre_hooks  # the feature tap is gone


def test_central_hard_gives_the_central_and_the_hard_samples():
    # Fakes around (1, 0, 0.5): the exact centre is index 1; index 4 has the lowest p(fake)
    # (feature 2 is the fake logit). Reals mirror them: centre 6, hardest (highest p(fake)) 9.
    fakes = [[1, 1, .5], [1, 0, .5], [1, -1, .5], [1, .5, .5], [1, -.5, -.3]]
    reals = [[-1, 1, -.5], [-1, 0, -.5], [-1, -1, -.5], [-1, .5, -.5], [-1, -.5, .3]]
    x = torch.tensor(fakes + reals)
    y = torch.tensor([1] * 5 + [0] * 5)
    order = CentralHardSelection().make_sorted_indices(fake_strategy(Probe()), dataset(x, y))
    assert order[:4] == [6, 1, 9, 4]  # real centre, fake centre, real hard, fake hard
    assert sorted(order) == list(range(10))


@pytest.mark.parametrize("selection", [SparseUniformSelection(bins=3, views=1), CentralHardSelection()])
def test_replay_plugin_keeps_mem_size_split_over_experiences(selection):
    torch.manual_seed(0)
    replay = make_replay_plugin(20, selection, batch_size_mem=8)
    strategy = naive(TinyCNN(), [replay])
    for i, exp in enumerate(stream(3).train_stream):
        strategy.train(exp)
        groups = [g.buffer for g in replay.storage_policy.buffer_groups.values()]
        assert len(replay.storage_policy.buffer) == 20
        assert sorted(len(g) for g in groups) == sorted([20 // (i + 1) + (j < 20 % (i + 1)) for j in range(i + 1)])
        for g in groups:  # each experience's share stays balanced real/fake
            assert abs(2 * sum(g.targets) - len(g)) <= 1
    assert not strategy.model.head._forward_pre_hooks


# -- DFIL's contrastive distillation -------------------------------------------------------------
def test_dfil_trains_two_experiences_with_frozen_teacher_and_live_terms():
    torch.manual_seed(0)
    dfil = ContrastiveDistillation(contrastive_weight=0.1, feature_weight=1.0, logit_weight=1.0)
    strategy = naive(TinyCNN(), [make_replay_plugin(16, CentralHardSelection()), dfil])
    exps = list(stream(2).train_stream)
    strategy.train(exps[0])
    assert set(dfil.last_terms) == {"contrastive"}  # no teacher during the first experience
    first = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    assert all(torch.equal(first[k], v) for k, v in dfil.teacher.state_dict().items())
    teacher = dfil.teacher  # the teacher of the second experience
    strategy.train(exps[1])
    assert set(dfil.last_terms) == {"contrastive", "feature", "logit"}
    assert all(torch.isfinite(t) and t > 0 for t in dfil.last_terms.values())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(first[k], v) for k, v in teacher.state_dict().items())  # frozen: unchanged
    student = strategy.model.state_dict()
    assert not torch.equal(teacher.state_dict()["head.weight"], student["head.weight"])
    assert all(torch.equal(student[k], v) for k, v in dfil.teacher.state_dict().items())  # the next one's
    assert not strategy.model.head._forward_pre_hooks and not dfil.teacher.head._forward_pre_hooks
    pickle.dumps(dfil)  # nothing unpicklable left on the plugin


def test_zero_weights_do_not_change_the_loss_and_kd_is_positive():
    torch.manual_seed(0)
    student, teacher = TinyCNN().train(), TinyCNN().eval()
    x, y = torch.rand(12, 3, 8, 8), torch.arange(12) % 2

    def loss_with(**weights):
        dfil = ContrastiveDistillation(**weights)
        dfil.teacher = teacher.requires_grad_(False)
        strategy = SimpleNamespace(model=student, mb_x=x, mb_y=y)
        dfil.before_training_exp(strategy)
        torch.manual_seed(1)  # the same dropout mask every time
        strategy.mb_output = student(x)
        strategy.loss = base = F.cross_entropy(strategy.mb_output, y)
        dfil.before_backward(strategy)
        dfil._close_tap()
        return strategy.loss, base, dfil.last_terms

    loss, base, terms = loss_with(contrastive_weight=0, feature_weight=0, logit_weight=0)
    assert terms == {} and torch.equal(loss, base)
    loss, base, terms = loss_with(contrastive_weight=0, feature_weight=0.5, logit_weight=0)
    assert set(terms) == {"feature"} and torch.allclose(loss, base + 0.5 * terms["feature"])
    loss, base, terms = loss_with(contrastive_weight=0.2, feature_weight=0, logit_weight=0.3)
    assert set(terms) == {"contrastive", "logit"}
    assert torch.allclose(loss, base + 0.2 * terms["contrastive"] + 0.3 * terms["logit"])
    assert terms["logit"] > 0  # student != teacher: the distillation is not silently zero
    logits = torch.randn(8, 2)
    assert logit_distillation(logits, logits, 2.0).abs() < 1e-6
    assert logit_distillation(logits, logits.flip(1), 2.0) > 0


def test_memory_state_round_trip_gives_the_same_teacher():
    torch.manual_seed(0)
    dfil = ContrastiveDistillation()
    assert dfil.memory_state() == ({}, {})
    strategy = naive(TinyCNN(), [dfil])
    strategy.train(next(iter(stream(1).train_stream)))
    tensors, meta = dfil.memory_state()
    assert tensors and all(k.startswith("teacher.") and isinstance(v, torch.Tensor) for k, v in tensors.items())
    json.dumps(meta)
    restored, other = ContrastiveDistillation(), fake_strategy(TinyCNN())  # another model's weights
    restored.load_memory_state(tensors, json.loads(json.dumps(meta)), other)
    x = torch.rand(5, 3, 8, 8)
    assert torch.equal(restored.teacher(x), dfil.teacher(x))
    assert not any(p.requires_grad for p in restored.teacher.parameters())
    restored.load_memory_state({}, {}, other)
    assert restored.teacher is None


def test_frozen_copy_leaves_the_live_models_hooks_behind():
    class Owner:  # a hook's owner that deepcopy cannot copy (it holds a lock)
        lock = None

        def hook(self, *_):
            assert not self.lock.locked()

    owner, model = Owner(), TinyCNN()
    owner.lock = threading.Lock()
    model.body.register_forward_hook(owner.hook)
    with pytest.raises(TypeError):
        copy.deepcopy(model)
    with HeadTap(model) as tap:
        teacher = frozen_copy(model)
        assert not teacher.body._forward_hooks and not teacher.head._forward_pre_hooks
        assert model.body._forward_hooks and model.head._forward_pre_hooks  # restored
        model(torch.rand(2, 3, 8, 8))
        assert tap.features.shape == (2, 8)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


# -- Avalanche's DER / DER++ -----------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_der_trains_two_experiences(beta):
    torch.manual_seed(0)
    model = TinyCNN()
    der = DER(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), mem_size=20, batch_size_mem=8,
              alpha=0.1, beta=beta, train_mb_size=16, train_epochs=1, eval_mb_size=32, evaluator=None,
              plugins=[ContrastiveDistillation()])  # DFIL's terms stack on DER's (batch = replay + new)
    for exp in stream(2).train_stream:
        der.train(exp)
    assert len(der.storage_policy.buffer) == 20
    assert torch.isfinite(der.loss)


class MaskedFaces(Dataset):
    """Items (x, y, mask), as the learner's datasets are for a model with a mask head."""

    def __init__(self, n):
        self.x, self.targets = torch.rand(n, 3, 8, 8), [i % 2 for i in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i], torch.zeros(1, 8, 8)


def test_der_does_not_take_batches_with_masks():
    # A known limit of Avalanche 0.6's DER: it unpacks batches as exactly (x, y, task)
    # (compute_dataset_logits, and (x, y, task, logits) from its buffer), so MaskLoss's
    # (x, y, mask, task) batches break it when it stores the first experience.
    model = TinyCNN()
    der = DER(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), mem_size=8,
              train_mb_size=8, eval_mb_size=8, evaluator=None)
    data = MaskedFaces(16)
    exp = benchmark_from_datasets(train=[_make_taskaware_classification_dataset(
        data, task_labels=0, targets=data.targets)]).train_stream[0]
    with pytest.raises(ValueError, match="unpack"):
        der.train(exp)
