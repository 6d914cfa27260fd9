"""Which faces a Replay buffer keeps: selection strategies made for forgeries.

Avalanche's `ParametricBuffer` asks its `ExemplarsSelectionStrategy` for an *order* of the data
(`make_sorted_indices`) and keeps the first k; it asks again, on what it kept, each time the
memory shrinks for a new experience. So every order here is built to make any prefix a good
buffer: classes interleave (real, fake, real, fake, ...), so a prefix of even length is balanced
while both classes last, and each class's own order covers its whole feature distribution early.

- `SparseUniformSelection`: SUR, the "sparse uniform replay" of SUR-LID (Cheng et al.,
  "Stacking Brick by Brick: Aligned Feature Isolation for Incremental Face Forgery Detection",
  CVPR 2025): a sparse subset spread uniformly over each class's distribution, made of samples
  that are stable. Here: bins of distance to the class centroid, visited round-robin; inside a
  bin the most stable samples first, spread by greedy farthest-point.
- `CentralHardSelection`: DFIL's replay (Pan et al., "DFIL: Deepfake Incremental Learning by
  Exploiting Domain-invariant Forgery Clues", ACM MM 2023): half central samples (closest to the
  class centroid, the typical ones), half hard ones (lowest probability of their true class).

Features are the pooled ones, the input of `model.head` (dfcl.learning.continual.features), L2-normalised
so distances do not depend on the backbone's feature scale. The model runs in eval mode without
gradients, and every module's train/eval mode is restored after (FrozenBatchNormStats keeps some
in eval). The faces are those of the dataset as given: with the project's augmentation inside
FaceArrayDataset, features are of augmented faces (data.eval() cannot switch it off).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import (
    ExemplarsSelectionStrategy,
    ParametricBuffer,
)
from torch.utils.data import DataLoader

from dfcl.learning.continual.features import HeadTap


def make_replay_plugin(mem_size: int, selection: ExemplarsSelectionStrategy,
                       batch_size_mem: int | None = None) -> ReplayPlugin:
    """Avalanche's ReplayPlugin whose buffer keeps `mem_size` samples in all, split equally over
    the experiences seen (as Replay's default buffer), each share chosen by `selection`."""
    buffer = ParametricBuffer(mem_size, groupby="experience", selection_strategy=selection)
    return ReplayPlugin(mem_size=mem_size, batch_size_mem=batch_size_mem, storage_policy=buffer)


class _ClassOrderSelection(ExemplarsSelectionStrategy):
    """One batched pass of the model over the data, an order per class, classes interleaved.
    Subclasses say how many perturbed views they need and how they order one class."""

    views = 0  # perturbed passes per batch (SparseUniformSelection's stability)

    def __init__(self, batch_size: int | None = None, seed: int = 0, noise: float = 0.0):
        self.batch_size, self.seed, self.noise = batch_size, seed, noise

    def make_sorted_indices(self, strategy, data) -> list[int]:
        features, logits, labels, drift = self._infer(strategy, data)
        orders = []
        for c in sorted(labels.unique().tolist()):
            members = (labels == c).nonzero().flatten()
            local = self.order_class(features[members], logits[members], c, drift[members])
            orders.append(members[local].tolist())
        return interleave(orders)

    def order_class(self, features, logits, label: int, drift) -> list[int]:
        raise NotImplementedError

    @torch.no_grad()
    def _infer(self, strategy, data):
        """(features, logits, labels, drift) of every sample, on the CPU; drift is the mean
        cosine distance of the features over `views` random flip + noise views (zeros if none)."""
        model, device = strategy.model, strategy.device
        modes = {m: m.training for m in model.modules()}
        model.eval()
        generator = torch.Generator().manual_seed(self.seed)  # same data, same views, same order
        loader = DataLoader(data, batch_size=self.batch_size or strategy.eval_mb_size or 64,
                            shuffle=False, collate_fn=getattr(data, "collate_fn", None))
        features, logits, labels, drift = [], [], [], []
        try:
            with HeadTap(model) as tap:
                for batch in loader:
                    x = batch[0].to(device)
                    logits.append(model(x).float().cpu())
                    f = tap.features.float()
                    change = torch.zeros(len(x), device=device)
                    for _ in range(self.views):
                        model(self._view(x, generator))
                        change += 1 - F.cosine_similarity(f, tap.features.float(), dim=1)
                    features.append(f.cpu())
                    drift.append((change / max(self.views, 1)).cpu())
                    labels.append(torch.as_tensor(batch[1]).long().cpu())
        finally:
            for module, training in modes.items():
                module.train(training)
        if not features:
            return torch.zeros(0, 0), torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), torch.zeros(0)
        return (F.normalize(torch.cat(features), dim=1), torch.cat(logits), torch.cat(labels),
                torch.cat(drift))

    def _view(self, x, generator):
        """x with a random horizontal flip per sample and Gaussian noise of std `noise`."""
        flip = (torch.rand(len(x), generator=generator) < 0.5).view(-1, *[1] * (x.dim() - 1))
        x = torch.where(flip.to(x.device), x.flip(-1), x)
        if self.noise > 0:
            x = x + self.noise * torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        return x


class SparseUniformSelection(_ClassOrderSelection):
    """SUR-LID's sparse uniform replay, per class (real, fake), classes interleaved.

    1. Distance of each (L2-normalised) feature to its class centroid, cut into `bins` bins:
       equal-width over [min, max] (`binning="width"`) or equally filled (`"quantile"`).
    2. The bins are visited round-robin, so the first picks of a class cover every bin: the
       buffer spans typical and atypical faces alike instead of crowding the dense centre.
    3. Inside a bin: the `stable_fraction` most stable samples first, ordered by greedy
       farthest-point (each next pick the one farthest from those already picked), starting
       from the most stable; then the rest by stability. "Stable" is a documented, cheap proxy
       for SUR's stability under shuffled augmentation: the mean cosine change of a sample's
       feature over `views` random horizontal-flip + Gaussian-noise (std `noise`) views.
       Farthest-point stops after `max_spread` picks per bin (O(picks x bin x dim)); a buffer
       keeps far fewer than that per bin.

    :param bins: distance bins per class.
    :param views: perturbed views per sample for the stability score (0: no stability, order by
        farthest-point alone).
    :param noise: std of the view noise, in input units (faces are in [0, 1]).
    :param stable_fraction: share of each bin treated as stable and picked first.
    :param binning: "width" or "quantile".
    :param max_spread: farthest-point picks per bin before the rest follow by stability.
    :param batch_size: inference batch size; None for the strategy's eval_mb_size.
    :param seed: seeds the views, so the order is deterministic for the same data and model.
    """

    def __init__(self, bins: int = 8, views: int = 2, noise: float = 0.03, stable_fraction: float = 0.5,
                 binning: str = "width", max_spread: int = 256, batch_size: int | None = None, seed: int = 0):
        if binning not in ("width", "quantile"):
            raise ValueError(f"binning must be 'width' or 'quantile', not {binning!r}")
        super().__init__(batch_size=batch_size, seed=seed, noise=noise)
        self.bins, self.views, self.stable_fraction = int(bins), int(views), float(stable_fraction)
        self.binning, self.max_spread = binning, int(max_spread)

    def order_class(self, features, logits, label, drift):
        bin_of = distance_bins(features, self.bins, self.binning)
        per_bin = []
        for b in bin_of.unique().tolist():  # ascending: central bins first in each round
            members = (bin_of == b).nonzero().flatten()
            by_stability = members[torch.argsort(drift[members], stable=True)]
            k = max(1, math.ceil(self.stable_fraction * len(members)))
            spread = farthest_first(features[by_stability[:k]], self.max_spread)
            per_bin.append(by_stability[:k][spread].tolist() + by_stability[k:].tolist())
        return interleave(per_bin)


class CentralHardSelection(_ClassOrderSelection):
    """DFIL's replay selection, per class, classes interleaved: its order alternates the most
    central sample left (smallest distance of the L2-normalised feature to the class centroid)
    and the hardest left (lowest softmax probability of the true class). A sample both central
    and hard is taken once. Deterministic: ties are broken by dataset position.

    :param batch_size: inference batch size; None for the strategy's eval_mb_size.
    """

    def __init__(self, batch_size: int | None = None):
        super().__init__(batch_size=batch_size)

    def order_class(self, features, logits, label, drift):
        if len(features) == 0:
            return []
        central = torch.argsort((features - features.mean(0)).norm(dim=1), stable=True)
        hard = torch.argsort(logits.softmax(dim=1)[:, label], stable=True)
        taken, order = set(), []
        for i in interleave([central.tolist(), hard.tolist()]):
            if i not in taken:
                taken.add(i)
                order.append(i)
        return order


def distance_bins(features: torch.Tensor, bins: int, binning: str = "width") -> torch.Tensor:
    """The bin (0..bins-1) of each feature's distance to the centroid of `features`."""
    distance = (features - features.mean(0)).norm(dim=1)
    if len(distance) == 0:
        return torch.zeros(0, dtype=torch.long)
    if binning == "quantile":
        rank = torch.empty_like(distance, dtype=torch.long)
        rank[torch.argsort(distance, stable=True)] = torch.arange(len(distance))
        return rank * bins // len(distance)
    edges = torch.linspace(float(distance.min()), float(distance.max()), bins + 1)
    # All distances equal: every edge equal, every sample in the last bin (one bin, fine).
    return torch.bucketize(distance, edges[1:-1], right=True)


def farthest_first(points: torch.Tensor, limit: int) -> torch.Tensor:
    """An order of `points` by greedy farthest-point from the first one, for `limit` picks;
    the rest follow in their given order."""
    n = len(points)
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    picked = [0]
    nearest = (points - points[0]).norm(dim=1)  # distance to the closest pick so far
    nearest[0] = -1
    for _ in range(min(n, max(limit, 1)) - 1):
        i = int(torch.argmax(nearest))
        picked.append(i)
        nearest = torch.minimum(nearest, (points - points[i]).norm(dim=1))
        nearest[picked] = -1
    chosen = set(picked)
    rest = [i for i in range(n) if i not in chosen]
    return torch.as_tensor(picked + rest, dtype=torch.long)


def interleave(orders: list[list[int]]) -> list[int]:
    """Round-robin over the lists: a[0], b[0], ..., a[1], b[1], ...; a list that runs out is
    skipped."""
    longest = max((len(o) for o in orders), default=0)
    return [o[i] for i in range(longest) for o in orders if i < len(o)]
