"""Durable writes: a file or a folder that is either all there or not there, even after a kill
or a power cut. At the bottom of the tree: data extraction, the learner's state and the ops
ledgers all write through it."""
from __future__ import annotations

import os
from pathlib import Path

# A rename is atomic, but without fsync the file it moves in may still be empty on disk after a
# power cut: the new name then points at nothing. So data first, then the rename, then the folder.

def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Every file under `folder`, and the folders, on disk (before `folder` is renamed into use)."""
    for path in sorted(Path(folder).rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)


def write_atomic(path: Path, text: str) -> None:
    """`path` holds either its old content or all of `text`, even after a kill or power cut: a
    temporary file of a name no other writer uses, fsync, rename, fsync of the folder."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
