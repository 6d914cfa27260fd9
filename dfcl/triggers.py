"""Which datasets in data/incoming/ are new: the trigger of scheduled and served retraining.

A dataset's fingerprint is its DVC hash when it is DVC-tracked (`<folder>.dvc`: a new version
pulled or imported is a new fingerprint), else a hash of its file names, sizes and modification
times (cheap: nothing is read). The ledger data/triggers.json remembers, per folder, the
fingerprint last queued or trained, so an already-trained version never starts a run."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dfcl.layouts import LayoutError, recognise


def fingerprint(folder: Path) -> str:
    dvc_file = folder.with_name(folder.name + ".dvc")
    if dvc_file.is_file():
        import yaml

        return "dvc:" + yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return "files:" + h.hexdigest()


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def mark(self, folder: Path, state: str, **extra) -> None:
        # re-read first: the serving process and the runs it started write the same file
        self.entries = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.entries[str(folder.resolve())] = {"fingerprint": fingerprint(folder), "state": state, **extra}
        self.save()


def dataset_folders(incoming: Path, real_names) -> list[Path]:
    """Folders under incoming/ that are datasets of a known layout: its children, or their
    children when a child is only a grouping folder (like incoming/demo/<Method>)."""
    def is_dataset(folder: Path) -> bool:
        try:
            recognise(folder, real_names, folder.name)
            return True
        except LayoutError:
            return False

    found = []
    children = sorted(p for p in incoming.iterdir() if p.is_dir() and not p.name.startswith(".")) if incoming.is_dir() else []
    for child in children:
        if is_dataset(child):
            found.append(child)
        else:
            found += [p for p in sorted(child.iterdir()) if p.is_dir() and is_dataset(p)]
    return found


def new_datasets(incoming: Path, ledger: Ledger, real_names, still_queued=lambda entry: True) -> list[Path]:
    """Datasets whose current fingerprint was neither trained nor is waiting in the queue.
    `still_queued(entry)` tells whether a queued run is still alive (a crashed one is retried)."""
    out = []
    for folder in dataset_folders(incoming, real_names):
        entry = ledger.entries.get(str(folder.resolve()))
        if entry and entry["fingerprint"] == fingerprint(folder):
            if entry["state"] == "trained" or (entry["state"] == "queued" and still_queued(entry)):
                continue
        out.append(folder)
    return out
