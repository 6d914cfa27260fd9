"""A tqdm progress bar over each training epoch, as an Avalanche plugin (its InteractiveLogger
also prints every metric; this shows only progress and the running loss)."""
from avalanche.core import SupervisedPlugin
from tqdm.auto import tqdm


class EpochProgress(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.bar = None

    def before_training_epoch(self, strategy, **_):
        epochs = strategy.train_epochs
        self.bar = tqdm(total=len(strategy.dataloader), leave=False, unit="batch",
                        desc=f"experience {strategy.experience.current_experience} "
                             f"epoch {strategy.clock.train_exp_epochs + 1}/{epochs}")

    def after_training_iteration(self, strategy, **_):
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{strategy.loss.item():.3f}", refresh=False)

    def after_training_epoch(self, strategy, **_):
        self.bar.close()
        self.bar = None  # nothing unpicklable left for the checkpoint
