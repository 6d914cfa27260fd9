"""Dataset layouts: recognise what a folder is and list its files as a pandas table.

`recognise(root, ...)` tries each registered layout in turn and returns `Sources`: the layout's
name, the fake methods (each becomes one experience) and one row per (experience, file) with
label, video id, split group, official split (when the dataset ships one), the original a fake
was made from and its mask video. Frames and faces come later (`dfcl.data.extraction`).

Over 300 lines: one registry of layouts, one section each (FaceForensics++, Celeb-DF, DFDC,
plain folders), as timm keeps a family per file; the splitting rules they share close it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from dfcl.data.images import media_kind
from dfcl.config import DataConfig

COLUMNS = ["experience", "path", "kind", "label", "video", "group", "split", "original", "mask"]


class LayoutError(ValueError):
    pass


@dataclass
class Request:
    """What the caller knows about a dataset besides its folder."""
    name: str                        # names a one-method dataset (its only experience)
    real_names: list[str]            # folder names that hold real faces (per-method layout)
    methods: list[str] | None = None  # subset and order of a multi-method dataset's methods
    compression: str = "c23"         # FaceForensics++ quality
    splits: tuple = (0.2, 0, 0.1)    # data.test_fraction, data.seed, data.val_fraction (assign_splits)
    max_per_set: int = 0             # real_faces_of: at most this many files of each added dataset (0: all)
    identity_distance: float = 0.0   # real_faces_only: group unlinked images by person (dfcl.data.leaks; 0: off)
    cache_dir: Path | None = None    # ... where their descriptors are cached


@dataclass
class Layout:
    name: str
    description: str                                   # what the folder looks like (errors, --help)
    read: Callable[[Path, Request], "Sources | None"]  # None: the folder is not in this layout


# Layouts in the order they are tried; add one with @register_layout (as timm registers models).
LAYOUTS: dict[str, Layout] = {}


def register_layout(name: str, description: str):
    def register(read):
        LAYOUTS[name] = Layout(name, description, read)
        return read
    return register


def known_layouts() -> list[str]:
    return [layout.description for layout in LAYOUTS.values()] + [
        "real faces: real/ of images or videos alone (nothing to learn: for trust.foreign_reals or sbi.real_sets)"]


@dataclass
class Sources:
    layout: str
    methods: list[str]            # fake methods, in the order they become experiences
    files: pd.DataFrame           # COLUMNS; path/original/mask relative to the dataset root
    extra: list[str] = field(default_factory=list)   # split lists, metadata: kept with the raw copy
    notes: list[str] = field(default_factory=list)   # what was left out, and why
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why): files that escape the root (confine)
    written: dict[str, str] = field(default_factory=dict)  # files the raw copy gets that the dataset lacks: name -> text
    roots: dict[str, str] = field(default_factory=dict)  # several datasets in one (real_faces_of): folder -> its source

    def all_paths(self) -> list[str]:
        paths = set(self.files.path) | set(self.files["mask"]) | set(self.extra)
        return sorted(p for p in paths if p)


def stable_order(keys, seed: int | str) -> list[str]:
    """A shuffle that depends only on the names and the seed, not on listing order."""
    return sorted(keys, key=lambda k: hashlib.sha1(f"{seed}:{k}".encode()).hexdigest())


def _media(folder: Path) -> list[Path]:
    """Media files of `folder`; symlinks too, even broken ones, so that `confine` reports them."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if (p.is_file() or p.is_symlink()) and media_kind(p))


ABSENT = "absent"


# --- confinement ---------------------------------------------------------------------------
# A dataset (one in data/incoming/ above all) is a stranger's: its metadata may name
# `../../x` or `/etc/x`, a file may be a symlink to anything. Every path is resolved, and what
# does not stay inside the dataset's root is refused with a note, never read or copied.

def outside(root: Path, path: str | Path) -> str | None:
    """Why `path` (relative to `root`, or absolute) may not be read as part of the dataset, or
    None: it must resolve, symlinks followed, to an existing file inside `root`."""
    text = str(path)
    if Path(text).is_absolute():
        return "an absolute path: refused (a dataset names its files relative to its folder)"
    if ".." in Path(text).parts:
        return "names a parent folder (..): refused"
    if not os.path.lexists(root / text):
        return ABSENT
    try:
        real = (root / text).resolve(strict=True)
    except (OSError, RuntimeError) as e:  # missing, a broken link, a symlink loop
        return f"a broken symlink or a symlink loop ({getattr(e, 'strerror', None) or e}): refused"
    if not real.is_relative_to(root.resolve()):
        return "a symlink out of the dataset's folder: refused"
    if not real.is_file():
        return "not a regular file: refused"
    return None


def confine(root: Path, found: Sources) -> Sources:
    """`found` with every file that escapes `root` (`outside`) left out, one note each: its row,
    or its link (original, mask) only, or a refused extra file."""
    files, notes, why_of = found.files, list(found.notes), {}
    for rel in found.all_paths() + sorted(p for p in set(files.original) if p):
        if rel not in why_of:
            why_of[rel] = outside(root, rel)
    refused = files.path.map(why_of).notna()
    notes += [f"{rel}: {why_of[rel]}" for rel in sorted(set(files.path[refused]))]
    files = files[~refused].copy()
    for column in ("original", "mask"):
        bad = files[column].map(lambda p: bool(p) and why_of.get(p) is not None)
        notes += [f"{rel} ({column} of a listed file): {why_of[rel]}" for rel in sorted(set(files[column][bad]))]
        files.loc[bad, column] = ""
    extra = [e for e in found.extra if why_of.get(e) is None]
    notes += [f"{e}: {why_of[e]}" for e in found.extra if why_of.get(e) is not None]
    refused = found.refused + sorted((p, w) for p, w in why_of.items() if w is not None)
    return dataclasses.replace(found, files=files.reset_index(drop=True), extra=extra, notes=notes, refused=refused)


def _kind(path: Path) -> str:
    return media_kind(path) or "image"


def _row(root: Path, experience: str, path: Path, label: int, group: str = "", split: str = "",
         original: str = "", mask: str = "") -> dict:
    rel = path.relative_to(root).as_posix()
    return dict(experience=experience, path=rel, kind=_kind(path), label=label, video=path.stem,
                group=group or rel, split=split, original=original, mask=mask)


def _select(found: list[str], methods: list[str] | None, root: Path) -> list[str]:
    if not methods:
        return found
    unknown = sorted(set(methods) - set(found))
    if unknown:
        raise LayoutError(f"{root}: no method named {unknown}; it has {found}")
    return list(methods)


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


# --- FaceForensics++ ---------------------------------------------------------------------

class _Groups:
    """Union-find over video ids: a fake `a_b` joins a and b, so a pair of originals, their
    fakes in every method, never straddle train and test (FF++'s official splits are pairs)."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = sorted((self.find(a), self.find(b)))
        self.parent[rb] = ra


def _ffpp_official_splits(root: Path) -> tuple[dict[str, str], list[str]]:
    """FF++ ships splits/{train,val,test}.json: lists of [id, id] pairs."""
    split_of, files = {}, []
    for folder in (root / "splits", root):
        for name in ("train", "val", "test"):
            f = folder / f"{name}.json"
            if f.is_file():
                files.append(f.relative_to(root).as_posix())
                for pair in json.loads(f.read_text()):
                    for vid in pair:
                        split_of[str(vid)] = name
        if files:
            break
    return split_of, files


@register_layout("FaceForensics++", "FaceForensics++ official: original_sequences/youtube/<c23|c40|raw>/videos/*.mp4 + "
                                     "manipulated_sequences/<Method>/<c>/videos/*.mp4")
def _ffpp(root: Path, ask: Request) -> Sources | None:
    compression, methods = ask.compression, ask.methods
    originals_root, manipulated = root / "original_sequences" / "youtube", root / "manipulated_sequences"
    if not manipulated.is_dir():
        return None
    levels = sorted({p.parent.name for p in manipulated.glob("*/*/videos")} |
                    {p.parent.name for p in originals_root.glob("*/videos")})
    if not levels:
        raise LayoutError(f"{root}: FaceForensics++ layout without any <method>/<c23|c40|raw>/videos/ folder")
    level = compression if compression in levels else levels[0]
    notes = [] if level == compression else [f"compression {compression!r} absent; using {level!r} (present: {levels})"]
    originals = _media(originals_root / level / "videos")
    if not originals:
        raise LayoutError(f"{root}: no original videos in original_sequences/youtube/{level}/videos/: "
                          "every method needs real faces")
    found = sorted(p.name for p in manipulated.iterdir() if (p / level / "videos").is_dir())
    chosen = _select(found, methods, root)
    split_of, split_files = _ffpp_official_splits(root)
    groups = _Groups()
    fakes = {m: _media(manipulated / m / level / "videos") for m in chosen}
    for m in chosen:
        for f in fakes[m]:
            ids = f.stem.split("_")
            for other in ids[1:]:
                groups.union(ids[0], other)
    by_stem = {p.stem: p for p in originals}
    rows, kept = [], []
    for m in chosen:
        if not fakes[m]:
            notes.append(f"{m}: no videos in manipulated_sequences/{m}/{level}/videos/; left out")
            continue
        kept.append(m)
        mask_dirs = [manipulated / m / "masks" / "videos", manipulated / m / level / "masks" / "videos"]
        for f in fakes[m]:
            target = f.stem.split("_")[0]
            mask = next((d / f.name for d in mask_dirs if (d / f.name).is_file()), None)
            original = by_stem.get(target)
            rows.append(_row(root, m, f, 1, group=groups.find(target), split=split_of.get(target, ""),
                             original=original.relative_to(root).as_posix() if original else "",
                             mask=mask.relative_to(root).as_posix() if mask else ""))
        # FF++ uses the same pristine videos as the real class of every method.
        rows += [_row(root, m, o, 0, group=groups.find(o.stem), split=split_of.get(o.stem, ""))
                 for o in originals]
    return Sources(f"FaceForensics++ official ({level})", kept, _frame(rows), split_files, notes)


# --- Celeb-DF v2 ---------------------------------------------------------------------------

@register_layout("Celeb-DF v2", "Celeb-DF v2: Celeb-real/ + Celeb-synthesis/ (+ YouTube-real/, List_of_testing_videos.txt)")
def _celebdf(root: Path, ask: Request) -> Sources | None:
    name = ask.name
    if not ((root / "Celeb-synthesis").is_dir() and (root / "Celeb-real").is_dir()):
        return None
    test, extra = set(), []
    listing = root / "List_of_testing_videos.txt"
    if listing.is_file():
        extra.append(listing.name)
        test = {line.split()[-1] for line in listing.read_text().splitlines() if line.strip()}
    rows = []
    for folder, label in (("Celeb-real", 0), ("YouTube-real", 0), ("Celeb-synthesis", 1)):
        for f in _media(root / folder):
            rel = f.relative_to(root).as_posix()
            split = "test" if rel in test else ("train" if test else "")
            if label:  # id0_id16_0003: id16's face on id0's video 0003, made from Celeb-real/id0_0003
                parts = f.stem.split("_")
                original = f"Celeb-real/{parts[0]}_{parts[-1]}{f.suffix}"
                group = Path(original).stem
                rows.append(_row(root, name, f, 1, group, split,
                                 original if (root / original).is_file() else ""))
            else:
                rows.append(_row(root, name, f, 0, f.stem if folder == "Celeb-real" else rel, split))
    return Sources("Celeb-DF v2", [name], _frame(rows), extra)


# --- DFDC ----------------------------------------------------------------------------------

@register_layout("DFDC", "DFDC: metadata.json (label REAL/FAKE, original) beside the videos, in the folder or its sub-folders")
def _dfdc(root: Path, ask: Request) -> Sources | None:
    name = ask.name
    metas = sorted(root.glob("metadata.json")) + sorted(root.glob("*/metadata.json"))
    if not metas:
        return None
    rows, notes, refused = [], [], []
    for meta in metas:
        here = meta.parent.relative_to(root)
        for file, info in json.loads(meta.read_text()).items():
            why = outside(root, here / file)
            if why == ABSENT:
                notes.append(f"{(here / file).as_posix()}: listed in {meta.relative_to(root)} but absent")
                continue
            if why:  # a key is a stranger's text: `../../x` or `/x` never becomes a path read
                notes.append(f"{file!r} listed in {meta.relative_to(root)}: {why}")
                refused.append((file, why))
                continue
            video = meta.parent / file
            fake = str(info.get("label", "")).upper() == "FAKE"
            original = str(info["original"]) if fake and info.get("original") else ""
            group = Path(original).stem if original else video.stem
            linked = original and outside(root, here / original) is None
            rows.append(_row(root, name, video, int(fake), group,
                             original=(here / original).as_posix() if linked else ""))
    return Sources("DFDC", [name], _frame(rows), [m.relative_to(root).as_posix() for m in metas], notes, refused)


# --- plain folders -------------------------------------------------------------------------

def _subfolders(root: Path) -> dict[str, Path]:
    return {p.name: p for p in root.iterdir() if p.is_dir()}


@register_layout("per-method", "per-method: {train,test}/{<real>,<Method>...}/ of images or videos")
def _per_method(root: Path, ask: Request) -> Sources | None:
    subdirs = _subfolders(root)
    if not {"train", "test"} <= set(subdirs):
        return None
    methods, real_lower = ask.methods, {n.lower() for n in ask.real_names}
    found: dict[str, dict[str, list[Path]]] = {}
    for split in ("train", "test"):
        for cls in sorted(p for p in subdirs[split].iterdir() if p.is_dir()):
            found.setdefault(cls.name, {})[split] = _media(cls)
    reals = [n for n in found if n.lower() in real_lower]
    if len(reals) != 1:
        raise LayoutError(f"{root}: expected one real-face folder (one of {list(ask.real_names)}) "
                          f"under train/ and test/, found {reals or 'none'}")
    real = reals[0]
    fakes = _select([n for n in found if n != real], methods, root)
    if not fakes:
        raise LayoutError(f"{root}: no fake-method folders beside {real!r}")
    for cls in [real] + fakes:
        for split in ("train", "test"):
            if not found[cls].get(split):
                raise LayoutError(f"{root}: {split}/{cls} is empty or missing: every class needs files in train and test")
    rows = [_row(root, cls, f, 1, split=split) for cls in fakes for split in ("train", "test")
            for f in found[cls][split]]
    # Without a link between fakes and reals, the real files are dealt round-robin (in a
    # name-stable order) so each experience has both classes and no real file is in two.
    for split in ("train", "test"):
        by_rel = {f.relative_to(root).as_posix(): f for f in found[real][split]}
        for i, rel in enumerate(stable_order(by_rel, 0)):
            rows.append(_row(root, fakes[i % len(fakes)], by_rel[rel], 0, split=split))
    return Sources("per-method", fakes, _frame(rows))


@register_layout("real-fake", "real-fake: real/ + fake/ of images or videos (optional metadata.csv with file, original)")
def _real_fake(root: Path, ask: Request) -> Sources | None:
    lower = {n.lower(): p for n, p in _subfolders(root).items()}
    if not {"real", "fake"} <= set(lower):
        return None
    name = ask.name
    links, extra = {}, []
    meta = root / "metadata.csv"
    if meta.is_file():  # e.g. DFDC crops: file, original (the real video a fake was made from)
        table = pd.read_csv(meta, dtype=str, keep_default_na=False)
        if {"file", "original"} <= set(table.columns):
            extra.append(meta.name)
            key = "video" if "video" in table.columns else "file"
            for r in table.itertuples(index=False):
                links[r.file] = Path(r.original or getattr(r, key)).stem
    rows = []
    for cls, label in (("real", 0), ("fake", 1)):
        files = _media(lower[cls])
        if not files:
            raise LayoutError(f"{root}: {lower[cls].name}/ holds no images or videos")
        for f in files:
            rel = f.relative_to(root).as_posix()
            rows.append(_row(root, name, f, label, group=links.get(rel, "")))
    return Sources("real-fake", [name], _frame(rows), extra)


SYNTHETIC_MARK = "SYNTHETIC.txt"  # in a dataset's folder: its faces are drawn, not photographed (the demo's)


def is_synthetic(path: str | Path | list) -> bool:
    """Is the dataset at `path` (every folder of a list) marked synthetic? A model that learned only
    such data has never been measured on a real photo, and its model card says so."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    return bool(paths) and all((Path(p) / SYNTHETIC_MARK).is_file() for p in paths)


def dataset_name(path: str | Path, method: str | None = None) -> str:
    """The one naming rule for an ingested dataset: the method given, else the folder's name
    (its parent's, for a folder called images/ or data/). Several folders (the real faces of a
    self-blended experience) need the name given."""
    if isinstance(path, (list, tuple)):
        if len(path) == 1:
            return dataset_name(path[0], method)
        if not method:
            raise LayoutError("several dataset folders need --method NAME (e.g. --method self-blended)")
        return method
    p = Path(path).resolve()
    name = method or (p.parent.name if p.name.lower() in {"images", "data"} else p.name)
    if name in {"", ".", ".."} or "/" in name or "\\" in name:  # it names folders under data/raw/, data/processed/
        raise LayoutError(f"{name!r} cannot name a dataset: a name is one folder name, without / or ..")
    return name


# Layouts whose folder holds one forgery method with no name of its own: `--method` names it.
ONE_METHOD_LAYOUTS = ("real-fake", "Celeb-DF v2", "DFDC")


# A self-blended experience's raw copy holds real files only, so the layout that gave their splits
# (FF++'s train/ and test/, DFDC's groups by original) no longer recognises it: the split of every
# file, decided on the whole dataset, travels with the copy in this file.
REAL_SPLITS = "real-splits.csv"


def real_faces_only(root: Path, ask: Request) -> Sources:
    """The real files of `root` as one experience named `ask.name`, for a self-blended experience
    (its fakes are blended from these faces, dfcl.data.sbi): the real class of any layout above (each
    real file once, e.g. FF++'s originals are dealt to every method), or else every image and
    video under `root/real/` or `root/` itself.

    Each real file keeps the split the whole dataset gives it (`ask.splits`: test_fraction, seed,
    val_fraction), so the self-blended experience never trains on a face that another experience
    of the same dataset tests on; a plain folder's top-level train/, val/ or test/ is its split.
    The splits are written to REAL_SPLITS (`Sources.written`), which the raw copy keeps."""
    if (root / REAL_SPLITS).is_file():
        return _listed_reals(root, ask)
    found = None
    for layout in LAYOUTS.values():
        try:
            found = layout.read(root, ask)
        except LayoutError:  # e.g. a copy of the real files alone: no fake folders beside them
            found = None
        if found is not None:
            break
    if found is not None:
        files = found.files.assign(split=assign_splits(found.files, *ask.splits))
        reals = files[files.label == 0].drop_duplicates("path")
        # Reals alone name the people's groups (dfcl.data.leaks.identity_groups): the fakes
        # need no describing here to give each real the split the methods' extraction gives it.
        rows, note = by_identity(root, found.files, reals, ask.splits, ask.identity_distance, ask.cache_dir)
        rows, notes = rows.assign(experience=ask.name), [note] if note else []
        layout, extra = f"{found.layout}, real files only", found.extra
    else:
        folder = next((p for n, p in _subfolders(root).items() if n.lower() in {r.lower() for r in ask.real_names}), root)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and media_kind(p))
        rows = _frame([_row(root, ask.name, f, 0, split=_official_split(f.relative_to(root))) for f in files])
        rows = rows.assign(split=assign_splits(rows, *ask.splits)) if len(rows) else rows
        layout, extra, notes = "real faces", [], []
    found = confine(root, Sources(layout, [ask.name], rows.reset_index(drop=True), extra,
                                  [f"{ask.name}: real faces only; its fakes are self-blended from them (dfcl.data.sbi)"]
                                  + notes))
    if found.files.empty:
        raise LayoutError(f"{root}: no real images or videos to blend a self-blended experience from")
    return dataclasses.replace(found, written={REAL_SPLITS: found.files[["path", "split", "group"]].to_csv(index=False)})


def real_photos_only(root: Path, ask: Request) -> bool:
    """A folder of real photos and nothing else: its only sub-folder a real one (`data.real_names`),
    or a raw copy of such a folder (its REAL_SPLITS list beside it)."""
    subfolders = {n.lower() for n in _subfolders(root)}
    return (root / REAL_SPLITS).is_file() or (bool(subfolders) and subfolders <= {r.lower() for r in ask.real_names})


def _official_split(rel: Path) -> str:
    """train/val/test when the first folder of a path says so ("" otherwise)."""
    first = rel.parts[0].lower() if len(rel.parts) > 1 else ""
    return {"train": "train", "val": "val", "validation": "val", "test": "test"}.get(first, "")


def _listed_reals(root: Path, ask: Request) -> Sources:
    """The real files and splits a raw copy's REAL_SPLITS lists (see real_faces_only)."""
    table = pd.read_csv(root / REAL_SPLITS, dtype=str, keep_default_na=False)
    if not {"path", "split", "group"} <= set(table.columns) or not set(table.split) <= {"train", "val", "test"}:
        raise LayoutError(f"{root / REAL_SPLITS}: expected columns path, split, group with train/val/test splits")
    rows = []
    for r in table.itertuples(index=False):
        why = outside(root, r.path)
        if why is not None and why != ABSENT:
            raise LayoutError(f"{root / REAL_SPLITS}: {r.path!r} leaves the dataset ({why})")
        if why is None:
            rows.append(_row(root, ask.name, root / r.path, 0, group=r.group, split=r.split))
    if not rows:
        raise LayoutError(f"{root}: none of the files {REAL_SPLITS} lists is there")
    return Sources("real faces, listed splits", [ask.name], _frame(rows), [REAL_SPLITS],
                   [f"{ask.name}: real faces only; its fakes are self-blended from them (dfcl.data.sbi)"])


def real_faces_of(roots: list[Path], ask: Request) -> Sources:
    """Several datasets' real faces as ONE self-blended experience (real faces of several cameras
    and compressions, so that no camera is the one "real" look): each dataset's files under a
    folder of its name, with their own splits; of the datasets after the first, at most
    `ask.max_per_set` files each."""
    parts, refused = [], []
    for i, root in enumerate(roots):
        found = real_faces_only(root, ask)
        files = found.files
        refused += [(dataset_name(root) + "/" + p, why) for p, why in found.refused]
        if i and ask.max_per_set:
            files = capped_per_split(files, ask.max_per_set, ask.splits[1])
        prefix = dataset_name(root)
        parts.append(files.assign(path=prefix + "/" + files.path, group=prefix + "/" + files.group))
    names = [dataset_name(r) for r in roots]
    if len(set(names)) != len(names):
        raise LayoutError(f"real-face datasets need distinct folder names, got {names}")
    rows = pd.concat(parts, ignore_index=True)
    return Sources("real faces of " + ", ".join(names), [ask.name], rows, [],
                   [f"{ask.name}: real faces of {', '.join(names)}; its fakes are self-blended from them (dfcl.data.sbi)"],
                   refused=refused, written={REAL_SPLITS: rows[["path", "split", "group"]].to_csv(index=False)},
                   roots={n: str(Path(r).resolve()) for n, r in zip(names, roots)})


def capped_per_split(files: pd.DataFrame, most: int, seed: int) -> pd.DataFrame:
    """At most `most` of `files`, each split keeping its share: a seeded choice within each split.
    (One seeded order over all files, as the splits are drawn, put a set's test files first: a set
    whose groups are its files, e.g. one photo per person, then gave the cap's every file to test.)"""
    if len(files) <= most:
        return files
    sizes = files.split.value_counts().sort_index()
    quotas = sizes * most // len(files)
    # The files left by rounding down go to the splits that lost most to it (largest remainder).
    short = (sizes * most % len(files)).sort_values(ascending=False, kind="stable").index[:most - quotas.sum()]
    quotas[short] += 1
    keep = []
    for split, part in files.groupby("split"):
        keep += stable_order(part.path.tolist(), f"{seed}:cap")[:quotas[split]]
    return files[files.path.isin(keep)]


def recognise(root: str | Path | list, real_names, name: str, methods: list[str] | None = None,
              compression: str = "c23", method: str | None = None, real_only: bool = False,
              splits: tuple = (0.2, 0, 0.1), max_per_set: int = 0, identity_distance: float = 0.0,
              cache_dir: Path | None = None) -> Sources:
    """The layout of `root` and its files. `name` names single-method datasets; `methods`
    picks (and orders) the methods of multi-method ones. `method` is the name the user gave
    (`--method`), which only a one-method dataset may take. `real_only`: the real files alone,
    as one experience named `name` (a self-blended experience, `real_faces_only`), of one folder
    or of a list of them (`real_faces_of`). `splits`: (data.test_fraction, data.seed,
    data.val_fraction), for the real files' splits; `max_per_set` caps each added folder's files;
    `identity_distance` and `cache_dir` group the real files by person (`by_identity`)."""
    roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
    for r in roots:
        if not r.is_dir():
            raise LayoutError(f"{r} is not a folder")
    ask = Request(name, list(real_names), methods, compression, tuple(splits), max_per_set, identity_distance,
                  Path(cache_dir) if cache_dir else None)
    if real_only:
        return real_faces_of(roots, ask) if len(roots) > 1 else real_faces_only(roots[0], ask)
    if len(roots) > 1:
        raise LayoutError("several folders make one dataset only as real faces of a self-blended experience "
                          "(--method self-blended)")
    root = roots[0]
    found = next(filter(None, (layout.read(root, ask) for layout in LAYOUTS.values())), None)
    if found is None and real_photos_only(root, ask):
        # Real photos alone (e.g. LFW): kept as real faces, for trust.foreign_reals or sbi.real_sets;
        # no method to learn (ingest says so). Same files and splits as a self-blended experience's.
        found = real_faces_only(root, ask)
        return dataclasses.replace(found, notes=[f"{name}: real faces only, no method to learn: list "
                                                 f"data/processed/{name}/{name} in trust.foreign_reals, or the folder "
                                                 "in sbi.real_sets"])
    if found is None:
        raise LayoutError(f"{root}: unknown dataset layout (sub-folders: {sorted(_subfolders(root)) or 'none'}). "
                          f"Known layouts: {'; '.join(known_layouts())}")
    found = confine(root, found)
    labels = set(found.files.label)
    if labels != {0, 1}:
        raise LayoutError(f"{root} ({found.layout}): no {'real' if 0 not in labels else 'fake'} files found; "
                          "a dataset needs both")
    if methods and found.methods != list(methods) and found.layout in ONE_METHOD_LAYOUTS:
        raise LayoutError(f"{root} is one method ({found.layout}); use --method NAME to name it, not --methods")
    if method and found.layout not in ONE_METHOD_LAYOUTS:
        # Otherwise `--method X` silently renames the dataset and its methods come back as new
        # experiences (X/Deepfakes, ...) that repeat what was already learned.
        raise LayoutError(f"{root} names its own methods ({found.layout}: {', '.join(found.methods)}); "
                          "--method only names a one-method dataset. Use --methods A,B to choose among them")
    return found


def split_rule(data: DataConfig) -> tuple:
    """The params' `data` section's splitting settings, in recognise's `splits` order."""
    return data.test_fraction, data.seed, data.val_fraction


def identity_distance(data: DataConfig) -> float:
    """`data.identity_distance`, except in a run capped by `data.max_per_class`: describing every
    image of a dataset (0.15 s each) to split the few a quick run keeps is not worth it, and the
    capped run's numbers are no measurement anyway."""
    return 0.0 if data.max_per_class else data.identity_distance


def cap_per_class(table: pd.DataFrame, max_per_class: int, seed: int) -> pd.DataFrame:
    """At most `max_per_class` rows (files, or faces) per experience, split and label, a seeded
    choice by `path`: for quick runs. 0 keeps everything."""
    if not max_per_class:
        return table
    keep = [group[group.path.isin(stable_order(group.path.tolist(), seed)[:max_per_class])]
            for _, group in table.groupby(["experience", "split", "label"], sort=False)]
    return pd.concat(keep).sort_index()


def assign_splits(files: pd.DataFrame, test_fraction: float, seed: int, val_fraction: float = 0.0) -> pd.Series:
    """Split by group (a video, or a pair/identity when the layout knows it), deterministically:
    an official split wins; the other groups are ordered by a seeded hash, separately for groups
    with and without fakes (so both classes reach the test set), and the first `test_fraction`
    go to test. Then `val_fraction` of the training groups (official ones too) become the
    validation split, the same way: it picks the decision threshold and the best epoch, so test
    stays untouched. A group is never on two sides, in every experience alike."""
    split = files.split.copy()
    split[split == ""] = _hold_out(files[split == ""], test_fraction, seed, "test", "train")
    if not (split == "val").any():  # an official validation split wins too
        train = files[split == "train"]
        split[train.index] = _hold_out(train, val_fraction, seed + 1, "val", "train")
    return split


def by_identity(root: Path, listed: pd.DataFrame, files: pd.DataFrame, splits: tuple, distance: float,
                cache_dir: Path | None) -> tuple[pd.DataFrame, str | None]:
    """`files` (split by assign_splits) with their splits re-drawn by the people in them
    (dfcl.data.leaks.split_by_identity) when the layout links none of its images; `listed`
    is the layout's own table (its official splits stay). The one place both the methods'
    extraction and a self-blended experience's real files take it from, so a person is on one
    side in both."""
    if not distance or (listed.split == "val").any():  # an official validation split wins
        return files, None
    from dfcl.data.leaks import split_by_identity

    inside = files.path.map(lambda p: outside(root, p) is None)  # only what `confine` will keep is read
    official = listed.split.reindex(files.index).fillna("")
    grouped, note = split_by_identity(root, files[inside], official[inside], distance, splits, cache_dir)
    return pd.concat([grouped, files[~inside]]).loc[files.index], note


def _hold_out(files: pd.DataFrame, fraction: float, seed: int, held: str, rest: str) -> list[str]:
    has_fake = files.groupby("group").label.max()
    chosen = set()
    for flag in (1, 0):
        groups = stable_order(has_fake[has_fake == flag].index.tolist(), seed)
        if len(groups) > 1 and fraction > 0:
            chosen |= set(groups[:max(1, round(len(groups) * fraction))])
    return [held if g in chosen else rest for g in files.group]
