"""Deepfake-specific continual-learning methods as Avalanche components (project issue 31).

- `selection`: which faces a Replay buffer keeps (SUR-LID's sparse uniform replay, DFIL's
  central + hard samples), as Avalanche `ExemplarsSelectionStrategy`s, and `make_replay_plugin`.
- `dfil`: DFIL's contrastive + feature + logit distillation as a `SupervisedPlugin`.
- `features`: the pooled features every method here works on (the input of `model.head`).
"""
from dfcl.learning.continual.dfil import ContrastiveDistillation
from dfcl.learning.continual.features import HeadTap, frozen_copy
from dfcl.learning.continual.selection import (
           CentralHardSelection,
           SparseUniformSelection,
           make_replay_plugin,
)

__all__ = ["CentralHardSelection", "ContrastiveDistillation", "HeadTap", "SparseUniformSelection",
           "frozen_copy", "make_replay_plugin"]
