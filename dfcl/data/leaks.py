"""No test face trains, and no person is on both sides of a split.

Faces: every face a learner trains on is compared, by content, with every face any experience
validates or tests on. File names cannot tell (the same real face is dealt to several methods,
re-ingested under another dataset's name, or copied into a self-blended experience), so each face
row is hashed as the model sees it: the uint8 pixels of its crop. A number measured on a face the
model trained on is wrong however good it looks, so a retraining with any such face stops before
it trains.

People: a dataset that links none of its files (ffpp-crops: one crop per file, a fake not paired
with its original by name) was split file by file, and a validation face's person, often its very
video, was in training. Measured on the seed-2 champion's Face2Face experience (dlib descriptors,
distance < 0.4, about "the same person"): 73 % of its validation reals and 30 % of its validation
fakes had such a training face, against 13 % and 5 % of its test faces (FF++'s official test split
is by video). Validation faces were easier than test faces, so everything fit on them (the
calibration, the band's "right 95 % of the time", the rules' cuts) promised more than the test
faces gave: the band answered 0.89 right on the learned methods' test faces.

So for such a dataset every image's face gets dlib's 128-d descriptor (its ResNet, which ships in
face-recognition-models beside the 68-point predictor: nothing is downloaded), faces closer than
`data.identity_distance` are joined (connected components, scipy), and each component becomes
one split group. About 0.15 s a face on a CPU core (dlib holds the GIL: a pool of processes),
cached by the file's content, so a dataset is described once per workspace.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from dfcl.data.landmarks import predictor_file

HELD_OUT = ("val", "test")
DIMENSIONS = 128
_models = None


class DataLeakError(RuntimeError):
    """A face is in a training split and in a validation or test split."""


def face_hashes(images: Path) -> list[bytes]:
    """One 128-bit BLAKE2b digest per face row of a `<split>-x.npy` array (memory-mapped)."""
    x = np.load(images, mmap_mode="r")
    return [hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).digest() for row in x]


def find_leaks(experiences, root: Path) -> list[str]:
    """One line per (training experience, held-out experience and split) that share faces:
    how many faces of that held-out split are pixel for pixel training faces."""
    trained: dict[bytes, str] = {}
    for e in experiences:
        for h in face_hashes(Path(root) / e.train_x):
            trained.setdefault(h, e.key)
    shared: dict[tuple[str, str, str], int] = defaultdict(int)
    totals: dict[tuple[str, str], int] = {}
    for e in experiences:
        for split in HELD_OUT:
            path = getattr(e, f"{split}_x")
            if not path or not (Path(root) / path).is_file():
                continue
            hashes = face_hashes(Path(root) / path)
            totals[(e.key, split)] = len(hashes)
            for h in hashes:
                if h in trained:
                    shared[(trained[h], e.key, split)] += 1
    return [f"{n} of the {totals[(held, split)]} {split} faces of {held} are training faces of {train}"
            for (train, held, split), n in sorted(shared.items())]


def check_no_leak(experiences, root: Path) -> None:
    """Raise DataLeakError when any training face is also a validation or test face."""
    leaks = find_leaks(experiences, root)
    if leaks:
        raise DataLeakError("test faces would train (by content hash): " + "; ".join(leaks)
                            + ". Fix the splits (docs/datasets.md, splits) before training")


def _load_models():
    global _models
    if _models is None:
        import dlib

        folder = predictor_file().parent
        _models = (dlib.get_frontal_face_detector(),
                   dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat")),
                   dlib.face_recognition_model_v1(str(folder / "dlib_face_recognition_resnet_model_v1.dat")))
    return _models


def describe(path: str) -> np.ndarray:
    """The descriptor of the largest face dlib finds in the image; NaNs when it finds none (a
    drawn face, an unreadable file: such a face stays a group of its own)."""
    from dfcl.data.images import read_image

    detect, shape, net = _load_models()
    image = read_image(Path(path))
    found = [] if isinstance(image, str) else sorted(detect(image, 0), key=lambda r: r.area())
    if not found:
        return np.full(DIMENSIONS, np.nan, np.float32)
    return np.asarray(net.compute_face_descriptor(image, shape(image, found[-1])), np.float32)


def descriptors(root: Path, paths: list[str], md5: dict[str, str], cache_dir: Path | None) -> np.ndarray:
    """(len(paths), 128) descriptors of the images `paths` (relative to `root`), cached in
    `cache_dir` by content."""
    cached = (lambda p: cache_dir / f"{md5[p]}-identity.npy") if cache_dir else None
    out = np.full((len(paths), DIMENSIONS), np.nan, np.float32)
    todo = []
    for i, p in enumerate(paths):
        if cached and cached(p).is_file():
            out[i] = np.load(cached(p), allow_pickle=False)
        else:
            todo.append(i)
    if not todo:
        return out
    from tqdm.auto import tqdm

    workers = min(os.cpu_count() or 1, len(todo) // 32)
    # spawn, not fork: the parent may hold torch's and OpenCV's threads. A few faces are described
    # here: a process costs seconds to start (it imports dlib and loads its models).
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else nullcontext() as pool:
        found = (pool.map(describe, [str(root / paths[i]) for i in todo], chunksize=16) if pool
                 else (describe(str(root / paths[i])) for i in todo))
        for i, vector in tqdm(zip(todo, found), total=len(todo), desc="identities", unit="face",
                              disable=len(todo) < 100):
            out[i] = vector
            if cached:
                cache_dir.mkdir(parents=True, exist_ok=True)
                np.save(cached(paths[i]), vector, allow_pickle=False)
    return out


def identity_groups(paths: list[str], labels: np.ndarray, vectors: np.ndarray, distance: float) -> list[str]:
    """Each path's group. Real faces closer than `distance` are joined (connected components);
    a group is named by its first real path. A fake joins the group of its nearest real face when
    that is closer than `distance` (a Face2Face fake is its original's person), else stays alone.
    Reals alone decide the names, so a real face gets the same group whether the fakes are listed
    or not (a self-blended experience lists the reals only). A face without a descriptor is alone."""
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import NearestNeighbors, radius_neighbors_graph

    groups, ok = list(paths), ~np.isnan(vectors).any(axis=1)
    reals, fakes = np.flatnonzero(ok & (labels == 0)), np.flatnonzero(ok & (labels == 1))
    if len(reals) < 1:
        return groups
    _, component = connected_components(radius_neighbors_graph(vectors[reals], distance), directed=False)
    names = pd.Series(np.asarray(paths)[reals]).groupby(component).transform("min").to_numpy()
    for i, name in zip(reals, names):
        groups[i] = name
    if len(fakes):
        near, which = NearestNeighbors(n_neighbors=1).fit(vectors[reals]).kneighbors(vectors[fakes])
        for i, d, j in zip(fakes, near[:, 0], which[:, 0]):
            if d < distance:
                groups[i] = names[j]
    return groups


def drawn(group: str, seed: int, fraction: float, split: str) -> bool:
    """Whether a group is drawn for `split` (test, val): by its name and the seed alone, so a
    person lands on the same side in every experience and every listing (a self-blended
    experience's reals and the methods' experiences of the same dataset). Not assign_splits'
    draw: it orders the groups a listing holds, split by whether they have fakes, so a reals-only
    listing would draw other people."""
    digest = hashlib.sha1(f"{seed}:identity-{split}:{group}".encode()).hexdigest()
    return int(digest[:8], 16) < fraction * 16 ** 8


def split_by_identity(root: Path, files: pd.DataFrame, official: pd.Series, distance: float, splits: tuple,
                      cache_dir: Path | None) -> tuple[pd.DataFrame, str | None]:
    """`files` with their groups made the people in them and their splits re-drawn by those
    groups (`splits`: data.test_fraction, data.seed, data.val_fraction), for a layout that links
    none of its images (every file its own group). An official split (`official`, per row: the
    layout's own, "" where it gives none) stays: official test faces are not described, and an
    official training face can only be drawn for validation. Else `files` as they are. Also a
    note saying what was grouped."""
    mine = ~official.isin(["test", "val"])  # the faces whose split is drawn here
    if (not distance or files.empty or not (files.group == files.path).all()
            or not (files.kind == "image").all() or not mine.any()):
        return files, None
    from dfcl.data.faces import file_md5

    table = files[mine].drop_duplicates("path")
    paths = table.path.tolist()
    md5 = {p: file_md5(root / p) for p in paths}
    vectors = descriptors(root, paths, md5, cache_dir)
    group = dict(zip(paths, identity_groups(paths, table.label.to_numpy(), vectors, distance)))
    sizes = pd.Series(list(group.values())).value_counts()
    if sizes.iloc[0] < 2:  # no two images of one person found: the file-by-file split stands
        return files, None
    test_fraction, seed, val_fraction = splits
    people = files.copy()
    people.loc[mine, "group"] = files.path[mine].map(group)
    people.loc[mine, "split"] = [
        "test" if not trained and drawn(g, seed, test_fraction, "test")
        else "val" if drawn(g, seed + 1, val_fraction, "val") else "train"
        for g, trained in zip(people.group[mine], official[mine] == "train")]
    said = (f"images grouped by the person in them (dlib descriptors closer than {distance}): "
            f"{len(paths)} images, {len(sizes)} groups, the largest {sizes.iloc[0]}; "
            f"{int(np.isnan(vectors).any(axis=1).sum())} without a face dlib finds stay alone")
    # A draw per group (what keeps a person on one side in every listing) can leave a split of a
    # few people without a class the file-by-file draw gave it: then that draw stands.
    before, after = (t[mine].groupby("split").label.agg(set) for t in (files, people))
    if any(labels - after.get(split, set()) for split, labels in before.items()):
        return files, f"{said}; too few people to split by person: split file by file"
    return people, f"{said}; {'test and ' if (official[mine] == '').any() else ''}validation drawn by group"
