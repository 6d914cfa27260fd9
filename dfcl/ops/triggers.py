"""Which datasets in data/incoming/ are due a retraining run: the trigger of scheduled and served
retraining.

A dataset's fingerprint is its DVC hash when it is DVC-tracked (`<folder>.dvc`: a new version
pulled or imported is a new fingerprint), else a hash of its file names, sizes and modification
times (cheap: nothing is read). The ledger data/triggers.json remembers, per folder, the
fingerprint it last saw and what became of it:

- `pending`: new, not taken yet. A dataset still being copied must not be trained on half its
  files, so it is taken when a `READY` file appears at its top, or once its fingerprint has
  stayed the same for `flow.serve.quiet_s` seconds (0: only with `READY`);
- `queued`: a run was started for it (`attempts` runs so far for this fingerprint);
- `failed`: its latest run failed; the next starts after `flow.serve.retry_backoff_s`, doubled
  after every failure, until `flow.serve.max_attempts` runs failed: then `gave up` until it
  changes (a dataset that always fails does not start a run on every poll forever);
- `trained`: the fingerprint the run took when it ingested it (files added during the run make a
  new version). An already-trained version never starts a run.

A run cancelled (`dfcl serve` stopped) or no longer known to Prefect is queued again at once,
without counting as a failed attempt."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dfcl.config import ServeConfig
from dfcl.data.layouts import LayoutError, recognise
from dfcl.files import write_atomic
from dfcl.ops.guards import exclusive_flock

READY = "READY"  # the marker a producer drops when a dataset is complete; not part of its fingerprint


def fingerprint(folder: Path) -> str:
    dvc_file = folder.with_name(folder.name + ".dvc")
    if dvc_file.is_file():
        import yaml

        return "dvc:" + yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.relative_to(folder).as_posix() != READY:
            st = p.stat()
            h.update(f"{p.relative_to(folder).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return "files:" + h.hexdigest()


class Ledger:
    """data/triggers.json. The serving process and the runs it started write it at once: every
    read-modify-write holds its flock (`<name>.lock`) and replaces the file whole
    (ops.write_atomic). A file that is not a ledger (corrupted by an older version, or by hand)
    is moved aside with a warning and the ledger starts empty: datasets are then seen as new,
    which costs at most a run, never the watcher."""
    LOCK_WAIT_S = 60  # each holder reads and writes one small file; longer means a hung one

    def __init__(self, path: Path, log: Callable[[str], None] = logging.getLogger(__name__).warning):
        self.path, self.log = path, log
        with self._locked():
            self.entries = self._read()

    @contextmanager
    def _locked(self):
        lock = self.path.with_name(self.path.name + ".lock")
        with exclusive_flock(lock, self.LOCK_WAIT_S, lambda: f"{lock} held for over {self.LOCK_WAIT_S} s", poll_s=0.01):
            yield

    def _read(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            entries = json.loads(self.path.read_text())
            if isinstance(entries, dict) and all(isinstance(e, dict) for e in entries.values()):
                return entries
            why = "not a table of folders"
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            why = str(e)
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.time_ns()}")
        os.replace(self.path, aside)
        self.log(f"{self.path} was corrupt ({why}); moved aside to {aside.name}, starting an empty ledger "
                 "(datasets in data/incoming/ count as new)")
        return {}

    def save(self) -> None:
        with self._locked():
            write_atomic(self.path, json.dumps(self.entries, indent=1, sort_keys=True))

    def mark(self, folder: Path, state: str, fp: str | None = None, **extra) -> dict:
        """Record `state` for the folder's fingerprint `fp` (default: as it is now)."""
        fp = fp or fingerprint(folder)  # outside the lock: it lists the whole folder
        with self._locked():
            # re-read under the lock: the serving process and the runs it started write the same file
            self.entries = self._read()
            entry = self.entries[str(folder.resolve())] = {"fingerprint": fp, "state": state, **extra}
            write_atomic(self.path, json.dumps(self.entries, indent=1, sort_keys=True))
        return entry


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


@dataclass
class Due:
    folder: Path
    fingerprint: str
    attempt: int  # the how-manieth run of this fingerprint it will be


def due_datasets(incoming: Path, ledger: Ledger, real_names, serve: ServeConfig,
                 run_state: Callable[[dict], str] = lambda entry: "alive", clock: Callable[[], float] = time.time,
                 log: Callable[[str], None] = print) -> list[Due]:
    """Datasets to queue a run for now (see the module's docstring). `serve` is params'
    `flow.serve`; `run_state(entry)` says what became of a queued run: alive | failed |
    cancelled | gone. Writes what it learns (pending, failed, gave up) to the ledger."""
    due = []
    for folder in dataset_folders(incoming, real_names):
        fp, now = fingerprint(folder), clock()
        entry = ledger.entries.get(str(folder.resolve()))
        if entry is None or entry["fingerprint"] != fp:  # new, or changed: complete yet?
            entry = ledger.mark(folder, "pending", fp, since=now)
        state = entry["state"]
        if state == "pending":
            quiet = serve.quiet_s > 0 and now - entry["since"] >= serve.quiet_s
            if (folder / READY).is_file() or quiet:
                due.append(Due(folder, fp, 1))
            continue
        attempts = entry.get("attempts", 1)
        if state == "queued":
            outcome = run_state(entry)
            if outcome in ("cancelled", "gone"):  # not the data's fault: again, as the same attempt
                due.append(Due(folder, fp, attempts))
                continue
            if outcome != "failed":
                continue
            if attempts >= serve.max_attempts:
                ledger.mark(folder, "gave up", fp, attempts=attempts, flow_run=entry.get("flow_run"))
                log(f"{folder}: {attempts} retraining runs failed; left alone until it changes "
                    f"(flow.serve.max_attempts); the last run: {entry.get('flow_run')}")
                continue
            entry = ledger.mark(folder, "failed", fp, attempts=attempts, failed_at=now, flow_run=entry.get("flow_run"))
        if entry["state"] == "failed":
            wait = serve.retry_backoff_s * 2 ** (attempts - 1)
            if now - entry["failed_at"] >= wait:
                due.append(Due(folder, fp, attempts + 1))
    return due
