"""`dfcl migrate`: bring a workspace made by an older version up to date, once, so the rest of
the code knows only the current formats.

- params.yaml: keys that moved (config.RENAMED) are renamed in place.
- data/learner: a learner saved as a pickled Avalanche strategy (strategy.ckpt) becomes the
  current plain-data state (dfcl.learning.learner_state). The pickle is read here and nowhere else, with
  the old module names of its classes mapped to today's and its datasets never opened. Weights,
  optimizer, clock, GEM / EWC / LwF / CWR* memories carry over as they were; a replay buffer is
  drawn again from the learned experiences at its size (the old one names its faces by
  objects, not keys). Methods learned before pinning are pinned now.

Run it only on a learner you trust: reading the old format unpickles it."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from dfcl.config import REMOVED, RENAMED, Params
from dfcl.files import fsync_tree, write_atomic

# Old (module, class) -> today's, for the names the old checkpoints hold.
OLD_NAMES = {**{(m, "ExperienceAUC"): ("dfcl.learning.evaluation", "ExperienceAUC")
                for m in ("dfcl.metrics", "dfcl.scoring", "dfcl.measure.scoring")},
             ("dfcl.plugins", "CosineEpochs"): ("dfcl.learning.plugins", "LRSchedule"),
             ("dfcl.learner", "CosineEpochs"): ("dfcl.learning.plugins", "LRSchedule"),
             ("dfcl.learner", "ExperienceSpec"): ("dfcl.data.arrays", "ExperienceSpec")}
# Modules that moved: renamed ones, then the flat dfcl/ of before issue 37 (one package per role).
MOVED_MODULES = {"dfcl.progress": "dfcl.learning.plugins", "dfcl.results": "dfcl.measure.metrics",
                 "dfcl.report": "dfcl.measure.tables", "dfcl.registry": "dfcl.ops.registry",
                 "dfcl.mlflow_registry": "dfcl.ops.registry", "dfcl.experience": "dfcl.data.arrays",
                 **{f"dfcl.{m}": f"dfcl.data.{m}" for m in ("layouts", "images", "faces", "landmarks", "extraction",
                                                            "demo_data", "arrays", "augment", "sbi", "masks", "leaks")},
                 "dfcl.data": "dfcl.data.datasets",
                 **{f"dfcl.{m}": f"dfcl.learning.{m}" for m in ("learner", "learner_state", "learner_versions",
                                                                "pinning", "strategies", "plugins", "memory")},
                 **{f"dfcl.continual.{m}": f"dfcl.learning.continual.{m}" for m in ("dfil", "features", "selection")},
                 **{f"dfcl.{m}": f"dfcl.measure.{m}" for m in ("scoring", "metrics", "bootstrap", "gate", "trust",
                                                               "tables", "plots")},
                 **{f"dfcl.{m}": f"dfcl.ops.{m}" for m in ("tracking", "dvc", "versions", "runners", "triggers")},
                 "dfcl.ops": "dfcl.ops.guards",
                 **{f"dfcl.{m}": f"dfcl.serving.{m}" for m in ("detector", "detect", "verdicts", "explain", "evaluate",
                                                               "api", "api_guards")}}
DATASETS = {("dfcl.data", "FaceArrayDataset"), ("dfcl.sbi", "SelfBlendedFakes")}


class _Inert:
    """Stands in for a pickled dataset: keeps its state, opens no file."""

    def __setstate__(self, state):
        self.__dict__.update(state)


def _unpickler(base):
    class Renamed(base):
        def find_class(self, module, name):
            if (module, name) in DATASETS:
                return _Inert
            if (module, name) in OLD_NAMES:
                module, name = OLD_NAMES[(module, name)]
            elif module == "dfcl.learner" and name != "Learner":  # plugins dfcl.learner once re-exported
                module = "dfcl.learning.plugins"
            module = MOVED_MODULES.get(module, module)
            return super().find_class(module, name)
    return Renamed


def read_old_checkpoint(path: Path, device: torch.device):
    """The pickled strategy of an old learner state (Avalanche's save_checkpoint: torch + dill)."""
    import dill

    pickle_module = type("renamed_dill", (), {"Unpickler": _unpickler(dill.Unpickler), "load": dill.load,
                                              "__name__": "dill"})
    data = torch.load(path, map_location=device, pickle_module=pickle_module, weights_only=False)
    return data["strategy"]


def migrate_params(path: Path) -> list[str]:
    """Rename moved keys in a workspace's params.yaml and delete removed ones; what was done."""
    if not path.is_file():
        return []
    params, done = yaml.safe_load(path.read_text()) or {}, []
    for old, new in RENAMED.items():
        section, leaf = old.split(".")
        if leaf in params.get(section, {}):
            node = params
            for part in new.split(".")[:-1]:
                node = node.setdefault(part, {})
            node[new.rsplit(".", 1)[1]] = params[section].pop(leaf)
            done.append(f"{old} -> {new}")
    for gone in REMOVED:
        section, leaf = gone.split(".")
        if leaf in (params.get(section) or {}):
            del params[section][leaf]
            done.append(f"{gone} removed (now in {REMOVED[gone]})")
    if done:
        path.write_text(yaml.safe_dump(params, sort_keys=False))
    return done


def migrate_learner(folder: Path, params: Params, root: Path) -> str:
    """Convert the learner in `folder` to the current state format; what was done, in a line."""
    from dfcl.data.arrays import ExperienceSpec
    from dfcl.learning import learner_state, pinning
    from dfcl.learning.learner import Learner
    from dfcl.learning.strategies import pick_device

    learner = Learner(folder, params, root)
    state = learner._state()
    if state is None:
        return f"{folder}: no learner saved"
    if not (state / learner_state.OLD_CHECKPOINT).is_file():
        return f"{folder}: already in the current format"
    history = json.loads((state / Learner.HISTORY).read_text())
    model = history.get("identity", {}).get("model")
    if isinstance(model, dict):  # saved before pretrained weights and the mask head existed
        model.setdefault("pretrained", "none")
        model.setdefault("mask_head", False)
    experiences = [ExperienceSpec(**e) for e in history["experiences"]]
    # Saved before the upper triangle: square lower-triangular matrices, one column per experience.
    history["columns"] = history.get("columns") or [[e.key, e.version] for e in experiences]
    store = folder / Learner.EXPERIENCES
    experiences = [e if e.faces else pinning.pin(e, root, store) for e in experiences]  # learned before pinning
    history["experiences"] = [asdict(e) for e in experiences]
    device = pick_device(params.train.device)
    old, new = read_old_checkpoint(state / learner_state.OLD_CHECKPOINT, device), learner.strategy
    new.model.load_state_dict(old.model.state_dict())
    for key in learner_state.CLOCK:
        setattr(new.clock, key, getattr(old.clock, key, 0))
    _carry_memories(old, new)
    redrawn = _redraw_buffer(learner, experiences)
    learner_state.load_optimizer(new, state, device)

    fresh = folder / f"state-{len(experiences):04d}-{time.time_ns()}"
    fresh.mkdir()
    learner_state.save_state(new, fresh)
    (fresh / Learner.HISTORY).write_text(json.dumps(history, indent=1))
    from dfcl.measure.trust import TRUST_FILE
    if (state / TRUST_FILE).is_file():
        shutil.copy2(state / TRUST_FILE, fresh / TRUST_FILE)
    fsync_tree(fresh)
    write_atomic(folder / Learner.CURRENT, fresh.name + "\n")
    shutil.rmtree(state, ignore_errors=True)
    note = f"; replay buffer drawn again: {redrawn} faces" if redrawn else ""
    return f"{folder}: {len(experiences)} learned experience(s) converted to the current format{note}"


def _carry_memories(old, new) -> None:
    """GEM, EWC, LwF and CWR* memories from the old plugins into this run's (same classes)."""
    from dfcl.learning.learner_state import SAVERS, _load_into

    for plugin in new.plugins:
        kind = next((k for k in SAVERS if isinstance(plugin, k)), None)
        before = next((p for p in old.plugins if kind and isinstance(p, kind)), None)
        if before is not None:
            tensors, meta = SAVERS[kind](before)
            # Through JSON as a saved state goes (its int keys become strings), so the loader sees what it reads.
            _load_into(plugin, tensors, json.loads(json.dumps(meta)), new, list)


def _redraw_buffer(learner, experiences) -> int:
    """A replay buffer filled as training would have filled it, experience by experience."""
    holder = next((h for h in [learner.strategy, *learner.strategy.plugins] if hasattr(h, "storage_policy")), None)
    if holder is None or not experiences:
        return 0
    bench = learner.benchmark(experiences)
    with torch.random.fork_rng():
        torch.manual_seed(learner.params.train.seed)
        for exp in bench.train_stream:
            learner.strategy.clock.train_exp_counter = exp.current_experience
            learner.strategy.experience = exp
            holder.storage_policy.post_adapt(learner.strategy, exp)
    learner.strategy.clock.train_exp_counter = len(experiences)
    return len(holder.storage_policy.buffer)

