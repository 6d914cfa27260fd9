"""EpochProgress: a progress bar over each training epoch with the running loss, and the
experience's progress as a Prefect progress artifact when it trains inside a Prefect run."""
from __future__ import annotations

import logging
import sys
import time

from avalanche.core import SupervisedPlugin
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


class RunProgress:
    """An experience's training progress (0-100 %) as a progress artifact `training-progress` of
    the Prefect task or flow run it trains in: the run's page in the Prefect UI shows how far it
    is. Nothing outside a Prefect run (the benchmarks, a bare train_sequence): Prefect is looked
    at only where a flow already imported it, so the learner needs no Prefect of its own."""

    EVERY_S = 10.0  # an update is a request to the Prefect API: often enough to watch, rare enough to cost nothing

    def __init__(self):
        self.artifact = None
        self.sent_at = 0.0

    def start(self, description: str) -> None:
        self.artifact = None
        if "prefect" not in sys.modules:
            return
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        from prefect.artifacts import create_progress_artifact

        self.artifact = self._send(lambda: create_progress_artifact(0.0, key="training-progress",
                                                                    description=description))
        self.sent_at = time.monotonic()

    def update(self, percent: float, description: str, final: bool = False) -> None:
        if self.artifact is None or not final and time.monotonic() - self.sent_at < self.EVERY_S:
            return
        from prefect.artifacts import update_progress_artifact

        self.sent_at = time.monotonic()
        if self._send(lambda: update_progress_artifact(self.artifact, min(percent, 100.0), description)) is None:
            self.artifact = None

    @staticmethod
    def _send(call):
        # What a person watches, never a reason to stop a training: an API that does not answer
        # costs this experience its progress display, with a warning.
        try:
            return call()
        except Exception as e:
            log.warning("training progress not shown in Prefect: %s", e)
            return None


class EpochProgress(SupervisedPlugin):
    """A tqdm bar over each training epoch with the running loss (Avalanche's InteractiveLogger
    also prints every metric), and the experience's progress over all its epochs in Prefect
    (RunProgress). `images`: how many images the experience's steps trained on, replayed ones
    included (the learner reports its speed by it)."""

    def __init__(self):
        super().__init__()
        self.bar = None
        self.run = RunProgress()
        self.images = 0

    def _where(self, strategy) -> str:
        return (f"experience {strategy.experience.current_experience} "
                f"epoch {strategy.clock.train_exp_epochs + 1}/{strategy.train_epochs}")

    def before_training_exp(self, strategy, **_):
        self.images = 0
        self.run.start(f"training experience {strategy.experience.current_experience}")

    def before_training_iteration(self, strategy, **_):
        # Made at the epoch's first step, not before the epoch: a resumed run's clock is set in
        # EpochCheckpoint's before_training_epoch, after this plugin's (it would say "epoch 1").
        if self.bar is None:
            self.bar = tqdm(total=len(strategy.dataloader), leave=False, unit="batch", desc=self._where(strategy))

    def after_training_iteration(self, strategy, **_):
        self.images += len(strategy.mb_y)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{strategy.loss.item():.3f}", refresh=False)
        done = strategy.clock.train_exp_epochs + self.bar.n / max(self.bar.total, 1)
        self.run.update(100 * done / strategy.train_epochs, f"{self._where(strategy)}, loss {strategy.loss.item():.3f}")

    def after_training_epoch(self, strategy, **_):
        if self.bar is not None:
            self.bar.close()
        self.bar = None

    def after_training_exp(self, strategy, **_):
        # Early stopping may end it before its last epoch: done all the same.
        self.run.update(100.0, f"experience {strategy.experience.current_experience} trained", final=True)
