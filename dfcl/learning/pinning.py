"""Learned experiences are pinned: the faces a method was trained, validated and tested on never
change under the learner.

Re-ingesting a dataset rewrites `data/processed/<name>/<method>/` (a dataset that gains a method
deals its real faces out again, an edited file changes a method's faces), while what the
strategies keep points into those arrays: Replay's buffer and Cumulative's data are subsets of
the datasets by index, and the accuracy matrix, forgetting and BWT compare evaluations on the same
test faces over time. So when a method is learned, its arrays (and manifest) are linked into
`<learner>/experiences/<method>-<digest>/`, named by the SHA-256 of their bytes, and the learner
reads only those from then on. Hard links cost no space (extraction always writes new files and
swaps folders, never edits an array in place); a copy is made where links are not possible.

DVC could serve the same purpose (read a learned version back by its hash), but the processed
folder is one DVC output per dataset, so every method would be restored with it; and the
learner state must stay usable on a machine where only the learner folder was copied.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from dfcl.data.arrays import beside
from dfcl.files import fsync_dir, fsync_tree

SPLITS = ("train", "val", "test")


class PinnedDataError(RuntimeError):
    """A learned experience's faces are missing or not the ones the learner learned."""


def _arrays(spec) -> dict[str, str]:
    """field name -> path, for the arrays a spec names (val_* is empty for old extractions)."""
    return {f"{s}_{a}": getattr(spec, f"{s}_{a}") for s in SPLITS for a in "xy" if getattr(spec, f"{s}_{a}")}


def array_digest(spec, root: Path) -> str:
    """SHA-256 over the bytes of the spec's arrays, in a fixed order."""
    h = hashlib.sha256()
    for field, path in sorted(_arrays(spec).items()):
        h.update(field.encode())
        with open(root / path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def face_counts(spec, root: Path) -> dict[str, int]:
    return {s: int(np.load(root / getattr(spec, f"{s}_y"), mmap_mode="r").shape[0])
            for s in SPLITS if getattr(spec, f"{s}_y")}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def pin(spec, root: Path, store: Path):
    """The spec, with its arrays pinned under `store` (idempotent: the same bytes, the same
    folder), its content digest and its face counts."""
    root = Path(root)
    digest = array_digest(spec, root)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.key)
    folder = Path(store) / f"{slug}-{digest[:12]}"
    if not folder.is_dir():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        sources = {field: root / path for field, path in _arrays(spec).items()}
        for path in sources.values():
            _link_or_copy(path, tmp / path.name)
        # What goes with the faces (SBI's landmarks, blend/forgery masks) is pinned beside them; it is
        # derived from the same faces, so the digest of the faces and labels names it too.
        for path in [p for field, p in sources.items() if field.endswith("_x")]:
            for kind in ("landmarks", "mask"):
                if beside(path, kind).is_file():
                    _link_or_copy(beside(path, kind), tmp / beside(path, kind).name)
        manifest = next(iter(sources.values())).parent / "manifest.csv"
        if manifest.is_file():
            shutil.copy2(manifest, tmp / "manifest.csv")  # video of each face, files' MD5s
        _read_only(tmp)
        fsync_tree(tmp)  # on disk before the name that says it is whole
        tmp.rename(folder)  # all or nothing
        fsync_dir(folder.parent)
    try:
        where = folder.resolve().relative_to(root.resolve())
    except ValueError:
        where = folder.resolve()
    pinned = {field: str(where / Path(path).name) for field, path in _arrays(spec).items()}
    spec = dataclasses.replace(spec, **pinned, digest=digest)
    return dataclasses.replace(spec, faces=face_counts(spec, root))


def _read_only(folder: Path) -> None:
    """Pinned files lose their write bits. A hard link shares its file with data/processed, so the
    processed arrays turn read-only too: an edit in place there fails instead of changing what
    the learner learned (extraction writes new files and swaps folders, which still works). Root
    ignores the bits; the digest check on load (check) catches what gets through."""
    for path in Path(folder).iterdir():
        try:
            path.chmod(path.stat().st_mode & ~0o222)
        except OSError:  # not ours to change (a learner folder copied from elsewhere): check() still guards
            pass


def check(spec, root: Path) -> None:
    """Fail clearly when a learned experience's pinned faces are missing, of another size, or not
    the bytes it learned (the recorded SHA-256)."""
    if not spec.faces:  # learned before pinning existed (`dfcl migrate` pins those)
        raise PinnedDataError(f"learned experience {spec.key} was never pinned: run `dfcl migrate` once")
    for split, expected in spec.faces.items():
        path = Path(root) / getattr(spec, f"{split}_y")
        if not path.is_file():
            raise PinnedDataError(
                f"learned experience {spec.key}: its {split} faces {path} are missing (version "
                f"{spec.digest[:12]}); restore the learner folder with its experiences/ or start over with --fresh")
        found = int(np.load(path, mmap_mode="r").shape[0])
        if found != expected:
            raise PinnedDataError(
                f"learned experience {spec.key}: {path} holds {found} {split} faces, the learner learned "
                f"{expected} (version {spec.digest[:12]}); restore the learner folder with its experiences/ "
                "or start over with --fresh")
    found = array_digest(spec, root)
    if found != spec.digest:
        raise PinnedDataError(
            f"learned experience {spec.key}: its pinned faces changed since it was learned (SHA-256 "
            f"{spec.digest[:12]}, now {found[:12]}; were the arrays in data/processed, which they are hard links "
            "to, edited in place?); restore the learner folder with its experiences/ or start over with --fresh")


def _files(spec, root: Path) -> pd.DataFrame:
    """(source, label, md5) of the files behind a spec's faces, from the manifest beside them."""
    manifest = (Path(root) / spec.train_x).parent / "manifest.csv"
    if not manifest.is_file():
        return pd.DataFrame(columns=["source", "label", "md5"])
    rows = pd.read_csv(manifest, keep_default_na=False)
    if "md5" not in rows:  # extracted before the manifest had MD5s
        return pd.DataFrame(columns=["source", "label", "md5"])
    return rows[["source", "label", "md5"]].drop_duplicates("source")


def data_change(learned, fresh, root: Path) -> str | None:
    """What changed in a learned method's own files between the learned version and a fresh
    ingest, or None. Its fake files must be the same files with the same content; its real files,
    where the fresh ingest still gives them to this method, the same content (a dataset that
    gains methods deals real files out again: that alone is no change)."""
    old, new = _files(learned, root), _files(fresh, root)
    if old.empty or new.empty:
        return None
    old_md5, new_md5 = dict(zip(old.source, old.md5)), dict(zip(new.source, new.md5))
    old_fake, new_fake = set(old[old.label == 1].source), set(new[new.label == 1].source)
    edited = sorted(s for s, h in old_md5.items() if s in new_md5 and new_md5[s] != h)
    removed = sorted(old_fake - new_fake)
    added = sorted(new_fake - old_fake)
    if not (edited or removed or added):
        return None
    parts = [f"{len(v)} file(s) {what} (e.g. {v[0]})" for what, v in
             (("edited", edited), ("removed", removed), ("added", added)) if v]
    return "; ".join(parts)
