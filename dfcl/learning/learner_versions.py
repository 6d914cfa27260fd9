"""The learner's state of every registered version, so that the next retraining continues from
the champion's, not from a challenger ops rejected or rolled back.

`Learner.save` keeps one state (data/learner/CURRENT names it). When a challenger is registered,
its state is marked with its version (a `VERSION` file) and kept under
data/learner/versions/v<version>/ (hard links: no extra space), pruned to the newest
`flow.keep_learner_versions` plus the champion's. Before a retraining run loads the learner,
`continue_from_champion` puts the champion's state back when the current one is a registered
version that is not champion; `dfcl retrain --from-challenger` keeps the current one. A state
without a VERSION (learned, not registered yet: a run that crashed before registering) is always
continued, so that it gets registered."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from dfcl.files import fsync_dir, fsync_tree, write_atomic

CURRENT, VERSIONS, VERSION_FILE = "CURRENT", "versions", "VERSION"


def _current(folder: Path) -> Path | None:
    pointer = folder / CURRENT
    return folder / pointer.read_text().strip() if pointer.exists() else None


def _copy(src: Path, dst: Path) -> None:
    """`src` as `dst`, whole or not at all: hard links where possible (state files are never
    changed in place: every save writes a new folder)."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:  # another file system
            shutil.copy2(a, b)

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=link)
    fsync_tree(tmp)
    tmp.rename(dst)
    fsync_dir(dst.parent)


def _archived(folder: Path) -> dict[str, Path]:
    root = folder / VERSIONS
    found = [p for p in root.iterdir() if p.name.startswith("v") and p.name[1:].isdigit()] if root.is_dir() else []
    return {str(int(p.name[1:])): p for p in sorted(found, key=lambda p: int(p.name[1:]))}


def current_version(folder: Path) -> str | None:
    """The registered version the current state is, or None (not registered, or no state)."""
    state = _current(Path(folder))
    marker = state / VERSION_FILE if state else None
    return marker.read_text().strip() if marker and marker.is_file() else None


def archive(folder: Path, version: str, keep: int, protect: set[str] = frozenset()) -> Path:
    """Mark the current state as `version` and keep a copy of it; prune the copies to the newest
    `keep`, never one of `protect` (the champion's)."""
    folder = Path(folder)
    state = _current(folder)
    write_atomic(state / VERSION_FILE, f"{version}\n")
    dst = folder / VERSIONS / f"v{int(version):06d}"
    if not dst.is_dir():
        dst.parent.mkdir(parents=True, exist_ok=True)
        _copy(state, dst)
    archived = _archived(folder)
    for old in list(archived)[:-keep]:
        if old not in protect and old != str(version):
            shutil.rmtree(archived[old])
    return dst


def continue_from_champion(folder: Path, champion: str | None, from_challenger: bool) -> str | None:
    """Point CURRENT at the champion's state when the current state is another registered version
    (rejected, or rolled back). Returns what it did, for the log; None when nothing changes."""
    folder = Path(folder)
    current = current_version(folder)
    if current is None or str(champion) == current:
        return None
    if champion is None:  # no champion yet: the only learned state is this one, gated again when registered
        return (f"no champion yet: continuing from version {current}'s learner (registered, not promoted); "
                "`dfcl retrain --fresh` starts a new one")
    if from_challenger:
        return f"continuing from version {current}'s learner (--from-challenger), not the champion's ({champion})"
    kept = _archived(folder).get(str(champion))
    if kept is None:
        return (f"the champion's (version {champion}) learner state is not kept here; continuing from version "
                f"{current}'s, which is not champion")
    state = folder / f"state-v{champion}-{time.time_ns()}"
    _copy(kept, state)
    write_atomic(folder / CURRENT, state.name + "\n")
    return (f"continuing from the champion's learner (version {champion}), not from version {current}'s (not "
            "champion: rejected, rolled back or never approved); `dfcl retrain --from-challenger` continues from that one")
