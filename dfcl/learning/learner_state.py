"""A learner's state as plain data: the model's weights, the optimizer's state and what each
strategy remembers besides its weights, as tensors (safetensors) and JSON.

Avalanche's own checkpointing pickles the whole strategy with dill. That ties a saved learner to
the code and settings of the run that saved it (a continued learner kept the first run's plugin
settings) and needs every renamed class kept importable. Here the strategy and its plugins are
built again from this run's params, then given back their memories:

  Replay (and any buffer-based strategy): which training faces its buffer holds, as sample keys
    into the learned experiences (their pinned faces: dfcl.learning.pinning), plus reservoir weights or
    stored logits where the buffer has them;
  GEM: its stored patterns; EWC: parameter values and importances; LwF: the previous model;
  CWR*: the consolidated head weights and class counts; Cumulative: nothing (its data so far is
  the learned experiences, rebuilt from them); the training clock (experience counter).

A plugin of deepfake-cl that keeps memory says so itself with memory_state() and
load_memory_state() (dfcl.learning.continual). Nothing here unpickles: torch.load runs with weights_only."""
from __future__ import annotations

import copy
import json
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
from avalanche.benchmarks.utils import concat_datasets
from avalanche.benchmarks.utils.data_attribute import TensorDataAttribute
from avalanche.benchmarks.utils.flat_data import FlatData
from avalanche.training import Cumulative
from avalanche.training.plugins import (
    CWRStarPlugin,
    EWCPlugin,
    GEMPlugin,
    LwFPlugin,
)
from avalanche.training.storage_policy import (
    ReservoirSamplingBuffer,
    _ParametricSingleBuffer,
)
from avalanche.training.utils import ParamData
from safetensors.torch import load_file, save_file

MODEL, OPTIMIZER, MEMORY, MEMORY_META = "model.safetensors", "optimizer.pt", "memory.safetensors", "memory.json"
OLD_CHECKPOINT = "strategy.ckpt"  # the pickled strategy of versions before this format (`dfcl migrate`)
FORMAT = 1
SAMPLE_KEY = "sample_key"  # data attribute of every training face: experience << 32 | index in it
CLOCK = ("train_iterations", "train_exp_counter", "train_exp_epochs", "train_exp_iterations",
         "train_epoch_iterations", "total_iterations")


def sample_keys(experience: int, n: int) -> list[int]:
    return [(experience << 32) | i for i in range(n)]


# -- save ------------------------------------------------------------------------------
def save_state(strategy, folder: Path) -> None:
    """Weights, optimizer and memories of `strategy` into `folder` (which exists)."""
    save_file(plain_tensors(strategy.model.state_dict()), folder / MODEL)
    torch.save(strategy.optimizer.state_dict(), folder / OPTIMIZER)
    tensors, meta = {}, {"format": FORMAT, "clock": {k: getattr(strategy.clock, k) for k in CLOCK}, "memories": {}}
    for name, holder in _holders(strategy):
        saver = _saver(holder)
        if saver is None:
            continue
        t, m = saver(holder)
        tensors |= {f"{name}/{k}": v for k, v in t.items()}
        meta["memories"][name] = m
    save_file(plain_tensors(tensors), folder / MEMORY)
    (folder / MEMORY_META).write_text(json.dumps(meta, indent=1))


def plain_tensors(tensors: dict) -> dict:
    """safetensors wants contiguous tensors that share no memory."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def _holders(strategy):
    """Everything that may keep memory, under a stable name: the strategy, then its plugins by class."""
    yield "strategy", strategy
    for plugin in strategy.plugins:
        yield type(plugin).__name__, plugin


def _saver(holder):
    if hasattr(holder, "memory_state"):  # deepfake-cl's own plugins
        return lambda h: h.memory_state()
    if hasattr(holder, "storage_policy"):  # ReplayPlugin, DER and every buffer-based strategy
        return lambda h: _buffer_state(h.storage_policy)
    for kind, saver in SAVERS.items():
        if isinstance(holder, kind):
            return saver
    return None


def _buffer_state(policy) -> tuple[dict, dict]:
    tensors, groups = {}, []
    for gid, group in policy.buffer_groups.items():
        data = group.buffer
        tensors[f"{gid}.keys"] = torch.as_tensor(list(getattr(data, SAMPLE_KEY)), dtype=torch.int64)
        if isinstance(group, ReservoirSamplingBuffer):
            tensors[f"{gid}.weights"] = group._buffer_weights
        if hasattr(data, "logits"):  # DER: the logits stored with each sample
            tensors[f"{gid}.logits"] = torch.stack([torch.as_tensor(v) for v in data.logits]) if len(data) else torch.zeros(0)
        groups.append({"id": gid, "max_size": group.max_size, "kind": type(group).__name__})
    seen = {k: sorted(getattr(policy, k)) for k in ("seen_groups", "seen_classes") if hasattr(policy, k)}
    return tensors, {"groups": groups, "num_exps": getattr(policy, "_num_exps", None), **seen}


def _gem_state(gem: GEMPlugin):
    tensors = {}
    for t in gem.memory_x:
        tensors |= {f"x.{t}": gem.memory_x[t], f"y.{t}": gem.memory_y[t], f"tid.{t}": gem.memory_tid[t]}
    return tensors, {"experiences": sorted(gem.memory_x)}


def _ewc_state(ewc: EWCPlugin):
    tensors = {}
    for kind in ("saved_params", "importances"):
        for t, params in getattr(ewc, kind).items():
            tensors |= {f"{kind}.{t}.{name}": p.data for name, p in params.items()}
    # The parameter order too: online EWC pairs old and new importances by position.
    return tensors, {kind: {str(t): list(params) for t, params in getattr(ewc, kind).items()}
                     for kind in ("saved_params", "importances")}


def _lwf_state(lwf: LwFPlugin):
    inner = lwf.lwf
    tensors = {} if inner.prev_model is None else {f"prev.{k}": v for k, v in inner.prev_model.state_dict().items()}
    return tensors, {"expcount": inner.expcount,
                     "prev_classes_by_task": {str(t): sorted(int(c) for c in cs) for t, cs in inner.prev_classes_by_task.items()}}


def _cwr_state(cwr: CWRStarPlugin):
    model = cwr.model
    tensors = {f"saved.{c}": torch.as_tensor(w) for c, w in model.saved_weights.items()}
    return tensors, {"past_j": {str(c): int(n) for c, n in model.past_j.items()},
                     "cur_j": {str(c): int(n) for c, n in model.cur_j.items()}, "cur_class": [int(c) for c in cwr.cur_class]}


SAVERS = {GEMPlugin: _gem_state, EWCPlugin: _ewc_state, LwFPlugin: _lwf_state, CWRStarPlugin: _cwr_state}


# -- load ------------------------------------------------------------------------------
def load_state(strategy, folder: Path, train_datasets: Callable[[], list], device: torch.device) -> None:
    """Give `strategy` (built from this run's params) the weights and memories saved in `folder`.
    `train_datasets()`: the learned experiences' training datasets, in order (buffers index them);
    called only where a memory needs them."""
    strategy.model.load_state_dict(load_file(folder / MODEL, device=str(device)))
    meta = json.loads((folder / MEMORY_META).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder}: learner state format {meta.get('format')!r}, this version reads {FORMAT}")
    for k, v in meta["clock"].items():
        setattr(strategy.clock, k, v)
    tensors = load_file(folder / MEMORY)
    for name, holder in _holders(strategy):
        if name not in meta["memories"]:
            continue  # nothing saved for it (a plugin this run adds): it starts empty
        mine = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(name + "/")}
        _load_into(holder, mine, meta["memories"][name], strategy, train_datasets)
    if isinstance(strategy, Cumulative) and train_datasets():
        strategy.dataset = concat_datasets(train_datasets())


def load_optimizer(strategy, folder: Path, device: torch.device) -> None:
    strategy.optimizer.load_state_dict(torch.load(folder / OPTIMIZER, map_location=device, weights_only=True))


def _load_into(holder, tensors: dict, meta: dict, strategy, train_datasets: Callable[[], list]) -> None:
    if hasattr(holder, "load_memory_state"):
        holder.load_memory_state(tensors, meta, strategy)
    elif hasattr(holder, "storage_policy"):
        _load_buffer(holder.storage_policy, tensors, meta, train_datasets)
    elif isinstance(holder, GEMPlugin):
        for t in meta["experiences"]:
            holder.memory_x[t], holder.memory_y[t], holder.memory_tid[t] = (
                tensors[f"{k}.{t}"].to(strategy.device) for k in ("x", "y", "tid"))
    elif isinstance(holder, EWCPlugin):
        for kind in ("saved_params", "importances"):
            for t, names in meta[kind].items():
                getattr(holder, kind)[int(t)] = {
                    name: ParamData(name, init_tensor=tensors[f"{kind}.{t}.{name}"], device=strategy.device)
                    for name in names}
    elif isinstance(holder, LwFPlugin):
        _load_lwf(holder, tensors, meta, strategy)
    elif isinstance(holder, CWRStarPlugin):
        model = holder.model
        model.saved_weights = {int(k.split(".", 1)[1]): v.numpy() for k, v in tensors.items()}
        model.past_j = defaultdict(int, {int(c): n for c, n in meta["past_j"].items()})
        model.cur_j = defaultdict(int, {int(c): n for c, n in meta["cur_j"].items()})
        holder.cur_class = meta["cur_class"]


def _load_lwf(lwf: LwFPlugin, tensors: dict, meta: dict, strategy) -> None:
    inner = lwf.lwf
    inner.expcount = meta["expcount"]
    inner.prev_classes_by_task = defaultdict(set, {int(t): set(cs) for t, cs in meta["prev_classes_by_task"].items()})
    if tensors:
        inner.prev_model = copy.deepcopy(strategy.model)
        inner.prev_model.load_state_dict({k[len("prev."):]: v for k, v in tensors.items()})


def _load_buffer(policy, tensors: dict, meta: dict, train_datasets: Callable[[], list]) -> None:
    """Each buffer group again as a subset of the learned experiences' training faces."""
    if not meta["groups"]:
        return
    everything = concat_datasets(train_datasets())
    position = {key: i for i, key in enumerate(getattr(everything, SAMPLE_KEY))}
    for g in meta["groups"]:
        gid = g["id"]
        keys = tensors[f"{gid}.keys"].tolist()
        missing = [k for k in keys if k not in position]
        if missing:
            raise ValueError(f"the saved replay buffer names {len(missing)} faces the learned experiences do not have")
        data = everything.subset([position[k] for k in keys])
        if f"{gid}.logits" in tensors:
            data = data.update_data_attribute("logits", TensorDataAttribute(
                FlatData([list(tensors[f"{gid}.logits"])], discard_elements_not_in_indices=True),
                name="logits", use_in_getitem=True))
        if g["kind"] == "_ParametricSingleBuffer":
            group = _ParametricSingleBuffer(g["max_size"], policy.selection_strategy)
        else:
            group = ReservoirSamplingBuffer(g["max_size"])
            group._buffer_weights = tensors[f"{gid}.weights"]
        group.buffer = data
        policy.buffer_groups[gid] = group
    if meta.get("num_exps") is not None:
        policy._num_exps = meta["num_exps"]
    for k in ("seen_groups", "seen_classes"):
        if k in meta:
            setattr(policy, k, set(meta[k]))
