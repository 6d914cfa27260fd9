"""A whole dataset's faces: what the DVC stage `extract_faces_<dataset>` runs (dfcl.data.faces does
each frame). Every sampled frame gets a manifest row (box, landmarks, score, frame index, video
id, split) and kept faces go into one uint8 array per method and split (dfcl.data.datasets.face_arrays):

    <out>/<method>/{train,val,test}-x.npy  -y.npy  [-mask.npy]  [-landmarks.npy]  manifest.csv  preview.png
    <out>/skipped.csv     every skipped file or frame, with its reason
    <out>/experiences.json   faces per method, split and class; which methods can be learned

A video's detections are cached (Workspace.face_cache) by its content hash and the detection
settings, so an unchanged video is never detected twice, even when the dataset around it, the
crop margin or the crop size change.

Over 300 lines: the one path from a layout's file list to the arrays (frames, faces, landmarks,
splits, manifest) with its per-file skip report; each step is a function of its own.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dfcl.data.arrays import SPLITS, beside, face_arrays
from dfcl.data.faces import (
    FaceDetector,
    FaceSettings,
    FileFaces,
    face_of_image,
    faces_in_image,
    faces_in_video,
    inside_share,
    file_md5,
    load_detections,
    prefetched,
    read_frames,
    save_detections,
)
from dfcl.data.images import read_image
from dfcl.data.landmarks import N_POINTS, LandmarkPredictor
from dfcl.data.landmarks import kind as landmark_kind
from dfcl.data.layouts import Sources, assign_splits, by_identity, cap_per_class, identity_distance, recognise, split_rule
from dfcl.files import fsync_dir, fsync_tree
from dfcl.workspace import Workspace
from dfcl.config import DataConfig, Params

OVER_CAP = "over data.max_per_class"
NO_68 = "68 landmarks not found (MTCNN's 5 points kept)"


def _manifest(files: pd.DataFrame, results: dict[str, FileFaces], dup_of: dict[str, str],
              md5: dict[str, str]) -> pd.DataFrame:
    """One row per (experience, file, sampled frame), kept or skipped, with the file's MD5 (what
    tells a learned method that one of its files changed, see dfcl.learning.pinning)."""
    per_file = []
    for path, r in results.items():
        for j in range(len(r.frames)):
            per_file.append(dict(path=path, frame=int(r.frames[j]), n_frames=r.n_frames, face=j,
                                 x1=r.boxes[j, 0], y1=r.boxes[j, 1], x2=r.boxes[j, 2], y2=r.boxes[j, 3],
                                 score=r.scores[j], landmarks=json.dumps(np.round(r.landmarks[j].astype(float), 1).tolist()),
                                 landmarks68="" if r.points is None else landmark_kind(r.points[j]), skipped="",
                                 inside=np.nan if r.shape is None else round(inside_share(r.boxes[j], *r.shape), 4)))
        per_file += [dict(path=path, frame=frame, n_frames=r.n_frames, face=-1, skipped=reason)
                     for frame, reason in r.skipped if reason]
    per_file += [dict(path=p, frame=-1, face=-1, skipped=f"duplicate of {first}") for p, first in dup_of.items()]
    table = pd.DataFrame(per_file, columns=["path", "frame", "n_frames", "face", "x1", "y1", "x2", "y2", "score",
                                            "landmarks", "landmarks68", "skipped", "inside"])
    m = files.merge(table, on="path", how="left").rename(columns={"path": "source"})
    m["face"] = m["face"].fillna(-1).astype(int)
    m["frame"] = m["frame"].fillna(-1).astype(int)
    m["skipped"] = m["skipped"].fillna("")
    m["landmarks68"] = m["landmarks68"].fillna("")
    m["md5"] = m["source"].map(md5).fillna("")
    return m.sort_values(["experience", "split", "label", "source", "frame"]).reset_index(drop=True)


def _preview(x: np.ndarray, y: np.ndarray, path: Path, n: int = 8) -> None:
    """Up to n real faces (top row) and n fake faces (bottom row): a quick look at the crops."""
    size = x.shape[1] if len(x) else 1
    sheet = np.zeros((2 * size, n * size, 3), np.uint8)
    for row, label in enumerate((0, 1)):
        picks = np.flatnonzero(y == label)
        picks = picks[np.linspace(0, len(picks) - 1, min(n, len(picks))).astype(int)] if len(picks) else []
        for col, i in enumerate(picks):
            sheet[row * size:(row + 1) * size, col * size:(col + 1) * size] = x[i]
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def _self_blended_fakes(x: np.ndarray, points: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One SBI fake of each real face, and its blend mask (uint8, 255 = all source): the fixed
    validation and test fakes of a self-blended experience (training blends new ones every epoch)."""
    from dfcl.data.sbi import self_blend  # it needs torch; extraction otherwise does not

    rng = np.random.default_rng(seed)
    pairs = [self_blend(face, rng, None if points is None else points[i]) for i, face in enumerate(x)]
    size = x.shape[1]
    return (np.stack([f for f, _ in pairs]) if pairs else np.zeros((0, size, size, 3), np.uint8),
            np.stack([np.rint(m * 255).astype(np.uint8) for _, m in pairs]) if pairs else np.zeros((0, size, size), np.uint8))


def _write_experience(folder: Path, rows: pd.DataFrame, results: dict[str, FileFaces], with_masks: bool,
                      size: int, with_landmarks: bool, self_blended: bool = False, seed: int = 0) -> dict:
    """One method's arrays. `self_blended` (real faces only): the validation and test splits also
    get one fixed SBI fake of each real face, with its blend mask; training has the reals alone."""
    folder.mkdir(parents=True)
    rows = rows.copy()
    rows["index"] = -1
    counts = {}
    with_masks = with_masks or self_blended
    for split in SPLITS:
        kept = rows[(rows.split == split) & (rows.face >= 0)]
        rows.loc[kept.index, "index"] = np.arange(len(kept))
        x = (np.stack([results[p].crops[f] for p, f in zip(kept.source, kept.face)]) if len(kept)
             else np.zeros((0, size, size, 3), np.uint8))
        y = kept.label.to_numpy(np.int64)
        mask = (np.stack([results[p].masks[f] if results[p].masks is not None else np.zeros((size, size), np.uint8)
                          for p, f in zip(kept.source, kept.face)]) if len(kept) else np.zeros((0, size, size), np.uint8))
        points = (np.stack([results[p].points[f] for p, f in zip(kept.source, kept.face)]).astype(np.float32)
                  if len(kept) else np.zeros((0, N_POINTS, 2), np.float32)) if with_landmarks else None
        if self_blended and split != "train":
            fakes, fake_masks = _self_blended_fakes(x, points, seed + SPLITS.index(split))
            x, y, mask = np.concatenate([x, fakes]), np.concatenate([y, np.ones(len(fakes), np.int64)]), np.concatenate([mask, fake_masks])
            if points is not None:
                points = np.concatenate([points, points])  # a blend keeps its face's landmarks
            synthetic = kept.assign(label=1, source=kept.source + "#sbi", index=np.arange(len(kept), 2 * len(kept)))
            rows = pd.concat([rows, synthetic], ignore_index=True)
            kept = pd.concat([kept, synthetic])
        arrays = face_arrays(folder, [split], masks=with_masks)
        np.save(arrays[f"{split}_x"], x)
        np.save(arrays[f"{split}_y"], y)
        if with_masks:
            np.save(arrays[f"{split}_mask"], mask)
        if points is not None:
            np.save(beside(arrays[f"{split}_x"], "landmarks"), points)
        if split == "train":
            _preview(x, y, folder / "preview.png")
        counts[split] = {"real": int((y == 0).sum()), "fake": int((y == 1).sum()),
                         "real_videos": int(kept[kept.label == 0].source.nunique()),
                         "fake_videos": int(kept[kept.label == 1].source.nunique())}
    rows.to_csv(folder / "manifest.csv", index=False)
    missing = [f"{split} {cls}" for split in ("train", "test") for cls in ("real", "fake") if not counts[split][cls]]
    empty_test = not (counts["test"]["real"] or counts["test"]["fake"])
    if self_blended:  # its training fakes are blended on the fly
        missing = [m for m in missing if m != "train fake"]
        counts["self_blended"] = True
    counts["learnable"] = not any(m.startswith("train") for m in missing) and not empty_test
    counts["problems"] = [f"no {m} faces" for m in missing]
    return counts


def extract_dataset(raw_dir: str | Path, out_dir: str | Path, params: Params, name: str,
                    cache_dir: str | Path | None = None) -> dict:
    """Extract faces from every file of the dataset in raw_dir into out_dir (replaced at the
    end, in one move, so a failure leaves the previous version in place). Returns the stats.
    Detections are cached in `cache_dir` (default: the workspace's, see Workspace.face_cache)."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    s = FaceSettings.from_params(params)
    cache_dir = Path(cache_dir) if cache_dir else Workspace.here().face_cache
    cache_dir.mkdir(parents=True, exist_ok=True)
    sources, files = list_files(raw_dir, params, name, cache_dir)
    # Only the files a capped run uses are read (as the flow's copy does), then faces are capped.
    files = cap_per_class(files, params.data.max_per_class, params.data.seed)
    md5, sizes = hash_files(raw_dir, files)
    dup_of = duplicates(md5, sizes)
    todo = [p for p in md5 if p not in dup_of]
    kind = files.drop_duplicates("path").set_index("path").kind
    images, videos = [p for p in todo if kind[p] == "image"], [p for p in todo if kind[p] == "video"]
    detector = FaceDetector(s) if videos or (images and s.detect_in_images) else None
    predictor = LandmarkPredictor() if s.landmarks and todo else None
    results = faces_of_images(raw_dir, images, s, detector, predictor, md5, cache_dir)
    masks = files[files["mask"] != ""].drop_duplicates("path").set_index("path")["mask"].to_dict()
    limits = {"max_pixels": params.api.max_video_pixels, "max_seconds": params.faces.max_video_seconds}
    video_results, timing = faces_of_videos(raw_dir, videos, masks, md5, sizes, s, detector, cache_dir, predictor,
                                            limits)
    results.update(video_results)
    manifest = capped(_manifest(files, results, dup_of, md5), params.data)
    reported = write_faces(out_dir, sources, manifest, results, s.size,
                           self_blended=name == params.sbi.method, seed=params.data.seed)
    skipped = reported[reported.skipped != NO_68]
    stats = {"layout": sources.layout, "methods": len(sources.methods), "videos": len(videos), "images": len(images),
             "duplicates": len(dup_of), "faces_kept": int((manifest.face >= 0).sum()), "skipped": len(skipped),
             "landmarks_68": int(((manifest.face >= 0) & (manifest.landmarks68 == "68")).sum()),
             "landmarks_not_68": int(((manifest.face >= 0) & manifest.landmarks68.isin(["5", "none"])).sum()),
             **timing, "device": str(detector.device) if detector else "none"}
    report(name, stats, reported)
    return stats


def list_files(raw_dir: Path, params: Params, name: str,
               cache_dir: Path | None = None) -> tuple[Sources, pd.DataFrame]:
    """The dataset's layout and files, each with its split (official, or by video group, or by
    the person in an image: `data.identity_distance`, descriptors cached in `cache_dir`)."""
    dp = params.data
    sources = recognise(raw_dir, dp.real_names, name, compression=dp.compression,
                        real_only=name == params.sbi.method, splits=split_rule(dp), max_per_set=params.sbi.max_per_set)
    print(f"{raw_dir}: layout {sources.layout}, methods {', '.join(sources.methods)}")
    files = sources.files.copy()
    files["split"] = assign_splits(files, dp.test_fraction, dp.seed, dp.val_fraction)
    files, note = by_identity(raw_dir, sources.files, files, split_rule(dp), identity_distance(dp), cache_dir)
    for note in sources.notes + ([note] if note else []):
        print(f"  note: {note}")
    return sources, files


def hash_files(raw_dir: Path, files: pd.DataFrame) -> tuple[dict[str, str], dict[str, int]]:
    """MD5 and size of every file (by path relative to raw_dir)."""
    paths = files.path.drop_duplicates().tolist()
    with ThreadPoolExecutor(4) as pool:  # hashlib releases the GIL on large reads
        md5 = dict(zip(paths, pool.map(lambda p: file_md5(raw_dir / p), paths)))
    return md5, {p: (raw_dir / p).stat().st_size for p in paths}


def duplicates(md5: dict[str, str], sizes: dict[str, int]) -> dict[str, str]:
    """path -> the first path with the same content: a copy could otherwise land in train and test."""
    first, dup_of = {}, {}
    for p in md5:
        if sizes[p] and md5[p] in first:
            dup_of[p] = first[md5[p]]
        else:
            first.setdefault(md5[p], p)
    return dup_of


def faces_of_images(raw_dir: Path, images: list[str], s: FaceSettings, detector,
                    predictor: LandmarkPredictor | None = None, md5: dict[str, str] | None = None,
                    cache_dir: Path | None = None) -> dict[str, FileFaces]:
    """Each image's face: re-framed (`faces.detect_in_images`: MTCNN on batches of images of one
    size, as a video's frames, each detection cached by the image's content like a video's) or
    taken whole as a crop."""
    with ThreadPoolExecutor(4) as pool:  # OpenCV releases the GIL while decoding images
        if not s.detect_in_images:
            return dict(zip(images, pool.map(lambda p: faces_in_image(raw_dir / p, s, None, predictor), images)))
        cached = (lambda p: cache_dir / f"{md5[p]}-image-{s.detection_key()}.json") if md5 and cache_dir else None
        results, chunk = {}, max(1, s.batch_size) * 4
        bar = tqdm(total=len(images), desc="images", unit="image", disable=len(images) < 100)
        for start in range(0, len(images), chunk):
            names = images[start:start + chunk]
            decoded = dict(zip(names, pool.map(lambda p: read_image(raw_dir / p), names)))
            found, by_shape = {}, {}
            for p, image in decoded.items():
                if isinstance(image, str):
                    results[p] = FileFaces.empty(s.size, image)
                elif cached and cached(p).exists():
                    found[p] = load_detections(cached(p))[0]
                else:
                    by_shape.setdefault(image.shape, []).append(p)
            for group in by_shape.values():
                for p, det in zip(group, detector.detect([decoded[p] for p in group])):
                    found[p] = det
                    if cached:
                        save_detections(cached(p), {0: det})
            for p, det in found.items():
                results[p] = face_of_image(decoded[p], det, s, predictor)
            bar.update(len(names))
        bar.close()
        return {p: results[p] for p in images}


def faces_of_videos(raw_dir: Path, videos: list[str], masks: dict[str, str], md5: dict[str, str],
                    sizes: dict[str, int], s: FaceSettings, detector, cache_dir: Path,
                    predictor: LandmarkPredictor | None = None, limits: dict | None = None) -> tuple[dict, dict]:
    """Faces of every video, and timing. Frames are decoded every time (crops depend on margin and
    size); MTCNN runs only on videos whose content and detection settings it has not seen. A
    video over `limits` (images.read_frames' max_pixels, max_seconds: the API's guard) is
    skipped with its reason, before more than its allowed length is decoded."""
    def cache_file(p):
        return cache_dir / f"{md5[p]}-{s.detection_key()}.json"

    def read(p):
        if sizes[p] == 0:
            return {}, 0, "empty file (0 bytes)"
        return read_frames(raw_dir / p, s.frames_per_video, **(limits or {}))

    results, start, frames_done, detected = {}, time.perf_counter(), 0, 0
    bar = tqdm(total=len(videos), desc="videos", unit="video", disable=not videos)
    for p, (frames, n, problem) in prefetched(read, videos):
        if cache_file(p).exists():
            found = load_detections(cache_file(p))
        else:
            order = sorted(frames)
            found = dict(zip(order, detector.detect([frames[i] for i in order])))
            if frames:  # nothing worth caching when no frame decoded
                save_detections(cache_file(p), found)
            detected += 1
        mask = raw_dir / masks[p] if p in masks and (raw_dir / masks[p]).is_file() else None
        results[p] = faces_in_video(frames, n, problem, found, mask, s, predictor)
        frames_done += len(frames)
        bar.update(1)
        bar.set_postfix(frames_per_s=f"{frames_done / (time.perf_counter() - start):.1f}")
    bar.close()
    seconds = time.perf_counter() - start
    return results, {"frames": frames_done, "videos_detected": detected, "videos_from_cache": len(videos) - detected,
                     "video_seconds": round(seconds, 2),
                     "frames_per_s": round(frames_done / seconds, 2) if frames_done else None}


def capped(manifest: pd.DataFrame, dp: DataConfig) -> pd.DataFrame:
    """Faces over `data.max_per_class` (per method, split and class) marked as skipped."""
    kept = manifest[manifest.face >= 0].copy()
    kept["path"] = kept.source + "#" + kept.frame.astype(str)
    dropped = kept.index.difference(cap_per_class(kept, dp.max_per_class, dp.seed).index)
    manifest.loc[dropped, "face"] = -1
    manifest.loc[dropped, "skipped"] = OVER_CAP
    return manifest


def write_faces(out_dir: Path, sources: Sources, manifest: pd.DataFrame, results: dict[str, FileFaces],
                size: int, self_blended: bool = False, seed: int = 0) -> pd.DataFrame:
    """Every method's face arrays, the skip report and experiences.json, written beside out_dir
    and swapped in whole. Returns the skipped files and frames."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with_masks = any(r.masks is not None for r in results.values())
    with_landmarks = any(r.points is not None for r in results.values())
    experiences = {m: _write_experience(tmp / m, manifest[manifest.experience == m], results, with_masks, size,
                                        with_landmarks, self_blended, seed) for m in sources.methods}
    skipped = manifest[(manifest.skipped != "") & (manifest.skipped != OVER_CAP)]
    # A kept face without 68 landmarks is still trained on; the report says so (SBI falls back to
    # a hull grown from MTCNN's 5 points for it).
    no_68 = manifest[(manifest.face >= 0) & manifest.landmarks68.isin(["5", "none"])].assign(skipped=NO_68)
    skipped = pd.concat([skipped, no_68])
    skipped = skipped.drop_duplicates(["source", "frame", "skipped"])[["source", "frame", "skipped"]]
    skipped.to_csv(tmp / "skipped.csv", index=False)
    (tmp / "experiences.json").write_text(json.dumps(
        {"layout": sources.layout, "methods": sources.methods, "notes": sources.notes,
         "experiences": experiences}, indent=1) + "\n")
    fsync_tree(tmp)  # complete on disk before it takes the name
    if out_dir.exists():  # the old version goes only once the new one is complete
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)
    fsync_dir(out_dir.parent)
    return skipped


def report(name: str, stats: dict, skipped: pd.DataFrame) -> None:
    frames, videos, cached = stats["frames"], stats["videos"], stats["videos_from_cache"]
    print(f"{name}: {stats['faces_kept']} faces kept, {stats['skipped']} file(s)/frame(s) skipped"
          + (f", {stats['landmarks_not_68']} face(s) without 68 landmarks" if stats.get("landmarks_not_68") else "")
          + "; "
          f"{frames} frames of {videos} video(s) in {stats['video_seconds']:.1f} s"
          + (f" ({stats['frames_per_s']} frames/s on {stats['device']})" if frames else "")
          + (f"; {cached} unchanged video(s) not detected again" if cached else ""))
    if len(skipped):
        print(skipped.to_string(index=False))
