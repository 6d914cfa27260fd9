"""One forgery method's faces as the learner sees them: a plain record (no torch, no Avalanche),
so the flows, the gate and the tables can pass it around without loading either."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ExperienceSpec:
    """One learned (or to-be-learned) method: where its decoded train/test faces live."""
    key: str          # "<dataset>/<method>"
    dataset: str
    method: str
    version: str      # DVC hash of the processed dataset it came from
    train_x: str
    train_y: str
    test_x: str
    test_y: str
    val_x: str = ""   # validation faces (threshold, early stopping); "" for data extracted without
    val_y: str = ""
    digest: str = ""  # once learned: SHA-256 of its pinned arrays (dfcl.pinning), and their sizes
    faces: dict = field(default_factory=dict)
    learned_at: str = ""  # once learned: when (UTC, ISO 8601), for the model card
