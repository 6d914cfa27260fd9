"""EpochCheckpoint: the state after each finished epoch of an experience, so that a run killed in
a long experience (the self-blended one trains for tens of epochs) continues from its last
finished epoch instead of from the experience's start."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from avalanche.core import SupervisedPlugin
from safetensors.torch import load_file, save_file

from dfcl.files import fsync_tree, write_atomic
from dfcl.learning.learner_state import MODEL, OPTIMIZER, plain_tensors
from dfcl.learning.plugins.best_epoch import BestValidationEpoch

BEST, RNG, META = "best.safetensors", "rng.safetensors", "epoch.json"


def _stopper(strategy) -> BestValidationEpoch | None:
    return next((p for p in strategy.plugins if isinstance(p, BestValidationEpoch)), None)


class EpochCheckpoint(SupervisedPlugin):
    """After every training epoch: the model, the optimizer, the epochs done and the best epoch
    so far (BestValidationEpoch's) go to `folder`, a new folder renamed over the old one, so a
    kill leaves the previous epoch's whole. When the learner starts an experience whose
    checkpoint is there (the same experience, from the same saved state, the same epochs), the
    state comes back after the optimizer is made, and the clock is set to the epochs done: the
    learning-rate schedule and early stopping go on where they were; the epochs left are run.
    Avalanche checkpoints between experiences only (by pickling the whole strategy), and its
    loop always starts at epoch 0. Torch's RNG state at the epoch's end is kept too and put back
    just before the next epoch draws from it (data order, augmentation, DataLoader workers'
    seeds), so a resumed experience trains as the uninterrupted one would have, bit for bit on one
    machine (not with persistent DataLoader workers, `train.num_workers` > 0, whose streams
    began with the run). The learner removes the checkpoint once the experience's state is saved."""

    def __init__(self):
        super().__init__()
        self.folder: Path | None = None   # set by the learner for each experience
        self.key = ""
        self.base = ""                    # the saved state the experience started from (its folder's name)
        self.resumed_at = 0               # epochs done before this run (0: started afresh)
        self._pending = 0
        self._rng: dict | None = None     # torch's RNG state to put back before the first resumed epoch

    def _identity(self, strategy) -> dict:
        return {"key": self.key, "base": self.base, "after_experiences": strategy.clock.train_exp_counter,
                "train_epochs": strategy.train_epochs}

    def _saved(self) -> Path | None:
        """The last whole checkpoint: its metadata is written last, so a folder with it is whole
        (the new one, where a kill fell between removing the old and renaming the new)."""
        if self.folder is None:
            return None
        return next((f for f in (self.folder, self._new) if (f / META).is_file()), None)

    @property
    def _new(self) -> Path:
        return self.folder.with_name(self.folder.name + ".new")

    def before_training_exp(self, strategy, **_):
        self.resumed_at = self._pending = 0
        self._rng = None
        folder = self._saved()
        if folder is None:
            return
        saved = json.loads((folder / META).read_text())
        if {k: saved.get(k) for k in self._identity(strategy)} != self._identity(strategy):
            self.discard()  # another experience's, or other settings'
            return
        device = str(strategy.device)
        strategy.model.load_state_dict(load_file(folder / MODEL, device=device))
        strategy.optimizer.load_state_dict(torch.load(folder / OPTIMIZER, map_location=device, weights_only=True))
        stopper = _stopper(strategy)
        if stopper is not None:
            stopper.restore(load_file(folder / BEST, device=device) if (folder / BEST).is_file() else None, saved)
        self._rng = load_file(folder / RNG) if (folder / RNG).is_file() else None  # None: a checkpoint before it
        self.resumed_at = self._pending = int(saved["epochs_done"])
        print(f"{self.key}: continuing from epoch {self.resumed_at + 1} of {strategy.train_epochs} "
              "(the checkpoint of a run that stopped)", flush=True)

    def before_training_epoch(self, strategy, **_):
        if self._pending:  # the clock has just been reset for the experience: the epochs done count
            strategy.clock.train_exp_epochs, self._pending = self._pending, 0
            if self._rng is not None:  # here, after every plugin's before_training_exp has drawn what it draws
                torch.set_rng_state(self._rng["cpu"])
                if "cuda" in self._rng and torch.device(strategy.device).type == "cuda":
                    torch.cuda.set_rng_state(self._rng["cuda"], strategy.device)
                self._rng = None
        if self.resumed_at and strategy.clock.train_exp_epochs >= strategy.train_epochs:
            strategy.stop_training()  # every epoch done: Avalanche's loop counts from 0 again

    def after_training_epoch(self, strategy, **_):
        if self.folder is None:
            return
        stopper = _stopper(strategy)
        new = self._new
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        save_file(plain_tensors(strategy.model.state_dict()), new / MODEL)
        torch.save(strategy.optimizer.state_dict(), new / OPTIMIZER)
        weights, best = stopper.state() if stopper is not None else (None, {"best_auc": None, "best_epoch": 0})
        if weights is not None:
            save_file(plain_tensors(weights), new / BEST)
        rng = {"cpu": torch.get_rng_state()}
        if torch.device(strategy.device).type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(strategy.device)
        save_file(rng, new / RNG)
        fsync_tree(new)
        # the clock counts this epoch after every other plugin (it is the last): hence + 1
        write_atomic(new / META, json.dumps({**self._identity(strategy), **best,
                                             "epochs_done": strategy.clock.train_exp_epochs + 1}))
        shutil.rmtree(self.folder, ignore_errors=True)
        new.rename(self.folder)

    def discard(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            shutil.rmtree(self._new, ignore_errors=True)
