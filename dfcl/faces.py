"""Faces out of a raw dataset: what the DVC stage `extract_faces_<dataset>` runs.

Videos: K evenly spaced frames over the whole video (OpenCV), the most confident face of each
frame (facenet-pytorch MTCNN, batched, on the GPU when there is one), a square crop around it
enlarged by `faces.margin`, resized to `data.image_size`; the same box is cut from the mask
video when FF++ ships one. Images are treated as face crops and only resized, unless
`faces.detect_in_images` is on. Every sampled frame gets a manifest row (box, landmarks, score,
frame index, video id, split) and kept faces go into one uint8 array per method and split:

    <out>/<method>/{train,val,test}-x.npy  -y.npy  [-mask.npy]  manifest.csv  preview.png
    <out>/skipped.csv     every skipped file or frame, with its reason
    <out>/experiences.json   faces per method, split and class; which methods can be learned

A video's detections are cached under data/cache/faces/ by its content hash and the detection
settings, so an unchanged video is never detected twice, even when the dataset around it, the
crop margin or the crop size change.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dfcl.images import read_image
from dfcl.layouts import assign_splits, cap_per_class, recognise

log = logging.getLogger("dfcl.faces")


@dataclass(frozen=True)
class FaceSettings:
    size: int
    frames_per_video: int
    margin: float
    min_score: float
    min_face_size: int
    detect_max_side: int
    batch_size: int
    device: str
    detect_in_images: bool

    @classmethod
    def from_params(cls, params: dict) -> "FaceSettings":
        f = params["faces"]
        return cls(size=params["data"]["image_size"], frames_per_video=f["frames_per_video"], margin=f["margin"],
                   min_score=f["min_score"], min_face_size=f["min_face_size"], detect_max_side=f["detect_max_side"],
                   batch_size=f["batch_size"], device=f["device"], detect_in_images=f["detect_in_images"])

    def detection_key(self) -> str:
        """What MTCNN's output depends on; margin, size and min_score only change the crops."""
        relevant = [self.frames_per_video, self.min_face_size, self.detect_max_side]
        return hashlib.sha1(json.dumps(relevant).encode()).hexdigest()[:12]


@dataclass
class FileFaces:
    """The faces found in one file. Arrays hold kept faces only; `skipped` lists the rest."""
    n_frames: int
    frames: np.ndarray           # (N,) frame index of each kept face
    boxes: np.ndarray            # (N, 4) x1 y1 x2 y2 in frame pixels
    landmarks: np.ndarray        # (N, 10) eyes, nose, mouth corners as x,y pairs
    scores: np.ndarray           # (N,) MTCNN probability (NaN for images taken as crops)
    crops: np.ndarray            # (N, S, S, 3) uint8 RGB
    masks: np.ndarray | None     # (N, S, S) uint8, when a mask video exists
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (frame or -1 for the file, reason)

    @classmethod
    def empty(cls, size: int, reason: str, n_frames: int = 0, skipped=None) -> "FileFaces":
        return cls(n_frames, np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros((0, 10), np.float32),
                   np.zeros(0, np.float32), np.zeros((0, size, size, 3), np.uint8), None,
                   skipped if skipped is not None else [(-1, reason)])


Detection = tuple  # (box[4], landmarks[10], score) in frame pixels, or None when no face


def save_detections(path: Path, found: dict[int, Detection | None]) -> None:
    """A video's detections as JSON (a few KB), written atomically so a crash leaves no half entry.
    Frame counts and read problems are not kept: the frames are decoded again anyway."""
    entry = {"faces": {str(i): None if d is None else [np.asarray(d[0]).tolist(), np.asarray(d[1]).tolist(), d[2]]
                       for i, d in found.items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, path)


def load_detections(path: Path) -> dict[int, Detection | None]:
    faces = json.loads(path.read_text())["faces"]
    return {int(i): None if d is None else (np.array(d[0]), np.array(d[1]), d[2]) for i, d in faces.items()}


def frame_indices(n_frames: int, k: int) -> list[int]:
    """k frames spread over the whole video: the middle of k equal segments (not the first k
    frames, and not the very first/last frame, which are often fades)."""
    if n_frames <= k:
        return list(range(n_frames))
    return sorted({int((i + 0.5) * n_frames / k) for i in range(k)})


def read_frames(path: Path, k: int) -> tuple[dict[int, np.ndarray], int, str | None]:
    """The sampled frames (RGB) of a video, its frame count, and a problem if any."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return {}, 0, "cannot open video (corrupt, truncated or not a video)"
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if n <= 0:  # some containers do not store a frame count: count by decoding once
            while cap.grab():
                n += 1
            cap.release()
            cap = cv2.VideoCapture(str(path))
        if n <= 0:
            return {}, 0, "no decodable frames (empty or corrupt video)"
        wanted = set(frame_indices(n, k))
        # One sequential pass with grab() (decode, no colour conversion) is faster than seeking,
        # which re-decodes from the previous keyframe for every frame: measured on FF++ c23,
        # 8 frames of a 1080p video took 5.2 s by seeking and 1.7 s in one pass.
        frames, i = {}, 0
        while i <= max(wanted) and cap.grab():
            if i in wanted:
                ok, frame = cap.retrieve()
                if ok:
                    frames[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            i += 1
        problem = None if i > max(wanted) else f"video ended at frame {i} of {n} (truncated?)"
        if not frames:
            problem = "no decodable frames (empty or corrupt video)"
        return frames, n, problem
    finally:
        cap.release()


def crop_square(image: np.ndarray, box, margin: float, size: int) -> np.ndarray:
    """A square around the box's centre, `margin` times its longer side, padded with black
    where it leaves the frame, resized to size x size."""
    x1, y1, x2, y2 = box
    side = max(int(round(max(x2 - x1, y2 - y1) * margin)), 1)
    left, top = int(round((x1 + x2) / 2 - side / 2)), int(round((y1 + y2) / 2 - side / 2))
    out = np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
    h, w = image.shape[:2]
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + side, w), min(top + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = image[sy0:sy1, sx0:sx1]
    return cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


class FaceDetector:
    """facenet-pytorch MTCNN (its weights ship inside the package: nothing is downloaded)."""

    def __init__(self, settings: FaceSettings):
        import torch
        from facenet_pytorch import MTCNN

        name = settings.device
        self.device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                                   ("cpu" if name == "auto" else name))
        self.settings = settings
        self.mtcnn = MTCNN(keep_all=True, min_face_size=settings.min_face_size, device=self.device)

    def detect(self, frames: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, float] | None]:
        """The most confident face per frame as (box, landmarks, score) in frame pixels, or None.
        Frames of one video share a size, so they go to MTCNN in batches."""
        return [faces[0] if faces else None for faces in self.detect_all(frames)]

    def detect_all(self, frames: list[np.ndarray]) -> list[list[tuple[np.ndarray, np.ndarray, float]]]:
        """Every face of each frame as (box, landmarks, score) in frame pixels, most confident first."""
        if not frames:
            return []
        h, w = frames[0].shape[:2]
        scale = min(1.0, self.settings.detect_max_side / max(h, w))  # detection cost grows with pixels
        small = [cv2.resize(f, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
                 if scale < 1 else f for f in frames]
        results = []
        bs = self.settings.batch_size
        for start in range(0, len(small), bs):
            boxes, probs, points = self.mtcnn.detect(np.stack(small[start:start + bs]), landmarks=True)
            for b, p, lm in zip(boxes, probs, points):
                if b is None or len(b) == 0:
                    results.append([])
                    continue
                order = np.argsort(-np.asarray(p, dtype=float))
                results.append([(np.asarray(b[k], float) / scale, np.asarray(lm[k], float).reshape(-1) / scale,
                                 float(p[k])) for k in order])
        return results


def _mask_like(mask: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """The mask frame as one channel at the video frame's size (boxes are in frame pixels)."""
    gray = cv2.cvtColor(mask, cv2.COLOR_RGB2GRAY)
    h, w = frame.shape[:2]
    return gray if gray.shape == (h, w) else cv2.resize(gray, (w, h), interpolation=cv2.INTER_NEAREST)


def faces_in_video(frames: dict[int, np.ndarray], n: int, problem: str | None,
                   found: dict[int, Detection | None], mask_path: Path | None, s: FaceSettings) -> FileFaces:
    """Crops (and mask crops) of the most confident face of each sampled frame."""
    if not frames:
        return FileFaces.empty(s.size, problem, n)
    skipped = [(-1, problem)] if problem else []
    masks_src = {}
    if mask_path is not None:
        masks_src, _, mask_problem = read_frames(mask_path, s.frames_per_video)
        if mask_problem and not masks_src:
            skipped.append((-1, f"mask video unusable: {mask_problem}"))
    keep = []
    for i in sorted(frames):
        det = found.get(i)
        if det is None:
            skipped.append((i, "no face found"))
        elif det[2] < s.min_score:
            skipped.append((i, f"face score {det[2]:.3f} below faces.min_score {s.min_score}"))
        else:
            keep.append((i, det))
    if not keep:
        return FileFaces.empty(s.size, "", n, skipped + [(-1, "no face in any sampled frame")])
    crops = [crop_square(frames[i], d[0], s.margin, s.size) for i, d in keep]
    masks = None
    if masks_src:
        masks = np.stack([crop_square(_mask_like(masks_src[i], frames[i]), d[0], s.margin, s.size)
                          if i in masks_src else np.zeros((s.size, s.size), np.uint8) for i, d in keep])
    return FileFaces(n, np.array([i for i, _ in keep]), np.stack([d[0] for _, d in keep]).astype(np.float32),
                     np.stack([d[1] for _, d in keep]).astype(np.float32),
                     np.array([d[2] for _, d in keep], np.float32), np.stack(crops), masks, skipped)


def faces_in_image(path: Path, s: FaceSettings, detector: FaceDetector | None) -> FileFaces:
    image = read_image(path)
    if isinstance(image, str):
        return FileFaces.empty(s.size, image)
    h, w = image.shape[:2]
    if detector is None:  # the image is already a face crop
        crop = cv2.resize(image, (s.size, s.size), interpolation=cv2.INTER_AREA)
        return FileFaces(1, np.zeros(1, np.int64), np.array([[0, 0, w, h]], np.float32),
                         np.full((1, 10), np.nan, np.float32), np.full(1, np.nan, np.float32), crop[None], None)
    det = detector.detect([image])[0]
    if det is None or det[2] < s.min_score:
        return FileFaces.empty(s.size, "no face found" if det is None else f"face score {det[2]:.3f} below faces.min_score")
    return FileFaces(1, np.zeros(1, np.int64), det[0][None].astype(np.float32), det[1][None].astype(np.float32),
                     np.array([det[2]], np.float32), crop_square(image, det[0], s.margin, s.size)[None], None)


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _prefetched(fn, items, depth: int = 2):
    """fn(item) for each item, computed `depth` ahead in a thread: OpenCV decodes the next
    videos (it releases the GIL) while MTCNN works on the current one. Bounded, unlike
    Executor.map, so a long dataset never sits in memory as decoded frames."""
    with ThreadPoolExecutor(1) as pool:
        pending = deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > depth:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _manifest(files: pd.DataFrame, results: dict[str, FileFaces], dup_of: dict[str, str],
              md5: dict[str, str]) -> pd.DataFrame:
    """One row per (experience, file, sampled frame), kept or skipped, with the file's MD5 (what
    tells a learned method that one of its files changed, see dfcl.pinning)."""
    per_file = []
    for path, r in results.items():
        for j in range(len(r.frames)):
            per_file.append(dict(path=path, frame=int(r.frames[j]), n_frames=r.n_frames, face=j,
                                 x1=r.boxes[j, 0], y1=r.boxes[j, 1], x2=r.boxes[j, 2], y2=r.boxes[j, 3],
                                 score=r.scores[j], landmarks=json.dumps(np.round(r.landmarks[j].astype(float), 1).tolist()),
                                 skipped=""))
        per_file += [dict(path=path, frame=frame, n_frames=r.n_frames, face=-1, skipped=reason)
                     for frame, reason in r.skipped if reason]
    per_file += [dict(path=p, frame=-1, face=-1, skipped=f"duplicate of {first}") for p, first in dup_of.items()]
    table = pd.DataFrame(per_file, columns=["path", "frame", "n_frames", "face", "x1", "y1", "x2", "y2", "score",
                                            "landmarks", "skipped"])
    m = files.merge(table, on="path", how="left").rename(columns={"path": "source"})
    m["face"] = m["face"].fillna(-1).astype(int)
    m["frame"] = m["frame"].fillna(-1).astype(int)
    m["skipped"] = m["skipped"].fillna("")
    m["md5"] = m["source"].map(md5).fillna("")
    return m.sort_values(["experience", "split", "label", "source", "frame"]).reset_index(drop=True)


def face_videos(images: str | Path) -> np.ndarray | None:
    """The source video (file) of every face of `<method>/<split>-x.npy`, in array order, from
    the manifest beside it; None when there is no manifest (faces not from extract_dataset)."""
    images = Path(images)
    manifest = images.parent / "manifest.csv"
    if not manifest.is_file():
        return None
    split = images.name.split("-")[0]
    rows = pd.read_csv(manifest, usecols=["split", "index", "source"], keep_default_na=False)
    rows = rows[(rows["split"] == split) & (rows["index"] >= 0)].sort_values("index")
    return rows["source"].to_numpy(str)


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


def _write_experience(folder: Path, rows: pd.DataFrame, results: dict[str, FileFaces], with_masks: bool,
                      size: int) -> dict:
    folder.mkdir(parents=True)
    rows = rows.copy()
    rows["index"] = -1
    counts = {}
    for split in ("train", "val", "test"):
        kept = rows[(rows.split == split) & (rows.face >= 0)]
        rows.loc[kept.index, "index"] = np.arange(len(kept))
        x = (np.stack([results[p].crops[f] for p, f in zip(kept.source, kept.face)]) if len(kept)
             else np.zeros((0, size, size, 3), np.uint8))
        y = kept.label.to_numpy(np.int64)
        np.save(folder / f"{split}-x.npy", x)
        np.save(folder / f"{split}-y.npy", y)
        if with_masks:
            np.save(folder / f"{split}-mask.npy", np.stack(
                [results[p].masks[f] if results[p].masks is not None else np.zeros((size, size), np.uint8)
                 for p, f in zip(kept.source, kept.face)]) if len(kept) else np.zeros((0, size, size), np.uint8))
        if split == "train":
            _preview(x, y, folder / "preview.png")
        counts[split] = {"real": int((y == 0).sum()), "fake": int((y == 1).sum()),
                         "real_videos": int(kept[kept.label == 0].source.nunique()),
                         "fake_videos": int(kept[kept.label == 1].source.nunique())}
    rows.to_csv(folder / "manifest.csv", index=False)
    missing = [f"{split} {cls}" for split in ("train", "test") for cls in ("real", "fake") if not counts[split][cls]]
    empty_test = not (counts["test"]["real"] or counts["test"]["fake"])
    counts["learnable"] = not any(m.startswith("train") for m in missing) and not empty_test
    counts["problems"] = [f"no {m} faces" for m in missing]
    return counts


def extract_dataset(raw_dir: str | Path, out_dir: str | Path, params: dict, name: str,
                    cache_dir: str | Path | None = None) -> dict:
    """Extract faces from every file of the dataset in raw_dir into out_dir (replaced at the
    end, in one move, so a failure leaves the previous version in place). Returns the stats."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    dp, s = params["data"], FaceSettings.from_params(params)
    cache_dir = Path(cache_dir) if cache_dir else Path("data") / "cache" / "faces"
    cache_dir.mkdir(parents=True, exist_ok=True)
    sources = recognise(raw_dir, dp["real_names"], name, compression=dp["compression"])
    print(f"{raw_dir}: layout {sources.layout}, methods {', '.join(sources.methods)}")
    for note in sources.notes:
        print(f"  note: {note}")
    files = sources.files.copy()
    files["split"] = assign_splits(files, dp["test_fraction"], dp["seed"], dp.get("val_fraction", 0.0))

    kinds = files.drop_duplicates("path").set_index("path")
    masks = files[files["mask"] != ""].drop_duplicates("path").set_index("path")["mask"].to_dict()
    with ThreadPoolExecutor(4) as pool:  # hashlib releases the GIL on large reads
        paths = kinds.index.tolist()
        sizes = {p: (raw_dir / p).stat().st_size for p in paths}
        md5 = dict(zip(paths, pool.map(lambda p: file_md5(raw_dir / p), paths)))
    first, dup_of = {}, {}
    for p in paths:  # identical content is kept once: a copy could otherwise land in train and test
        if sizes[p] and md5[p] in first:
            dup_of[p] = first[md5[p]]
        else:
            first.setdefault(md5[p], p)
    todo = [p for p in paths if p not in dup_of]
    results: dict[str, FileFaces] = {}
    detector = None
    images = [p for p in todo if kinds.kind[p] == "image"]
    videos = [p for p in todo if kinds.kind[p] == "video"]
    if videos or (images and s.detect_in_images):
        detector = FaceDetector(s)
    with ThreadPoolExecutor(4) as pool:  # OpenCV releases the GIL while decoding images
        for p, r in zip(images, pool.map(lambda p: faces_in_image(raw_dir / p, s, detector if s.detect_in_images else None), images)):
            results[p] = r

    def cache_file(p):
        return cache_dir / f"{md5[p]}-{s.detection_key()}.json"

    def read(p):
        if sizes[p] == 0:
            return {}, 0, "empty file (0 bytes)"
        return read_frames(raw_dir / p, s.frames_per_video)

    # Frames are decoded every time (crops depend on margin and size); MTCNN runs only on
    # videos whose content and detection settings it has not seen.
    start, frames_done, detected = time.perf_counter(), 0, 0
    bar = tqdm(total=len(videos), desc="videos", unit="video", disable=not videos)
    for p, (frames, n, problem) in _prefetched(read, videos):
        if cache_file(p).exists():
            found = load_detections(cache_file(p))
        else:
            order = sorted(frames)
            found = dict(zip(order, detector.detect([frames[i] for i in order])))
            if frames:  # nothing worth caching when no frame decoded
                save_detections(cache_file(p), found)
            detected += 1
        mask = raw_dir / masks[p] if p in masks and (raw_dir / masks[p]).is_file() else None
        results[p] = faces_in_video(frames, n, problem, found, mask, s)
        frames_done += len(frames)
        bar.update(1)
        bar.set_postfix(frames_per_s=f"{frames_done / (time.perf_counter() - start):.1f}")
    bar.close()
    seconds = time.perf_counter() - start

    manifest = _manifest(files, results, dup_of, md5)
    kept = manifest[manifest.face >= 0].copy()
    kept["path"] = kept.source + "#" + kept.frame.astype(str)
    capped = cap_per_class(kept, dp["max_per_class"], dp["seed"])
    dropped = kept.index.difference(capped.index)
    manifest.loc[dropped, "face"] = -1
    manifest.loc[dropped, "skipped"] = "over data.max_per_class"

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with_masks = any(r.masks is not None for r in results.values())
    experiences = {m: _write_experience(tmp / m, manifest[manifest.experience == m], results, with_masks, s.size)
                   for m in sources.methods}
    skipped = manifest[(manifest.skipped != "") & (manifest.skipped != "over data.max_per_class")]
    skipped = skipped.drop_duplicates(["source", "frame", "skipped"])[["source", "frame", "skipped"]]
    skipped.to_csv(tmp / "skipped.csv", index=False)
    (tmp / "experiences.json").write_text(json.dumps(
        {"layout": sources.layout, "methods": sources.methods, "notes": sources.notes,
         "experiences": experiences}, indent=1) + "\n")
    if out_dir.exists():  # swap in the new version; the old one goes only once the new one is complete
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)

    stats = {"layout": sources.layout, "methods": len(sources.methods), "videos": len(videos), "images": len(images),
             "videos_detected": detected, "videos_from_cache": len(videos) - detected, "duplicates": len(dup_of),
             "frames": frames_done, "faces_kept": int((manifest.face >= 0).sum()), "skipped": len(skipped),
             "video_seconds": round(seconds, 2), "frames_per_s": round(frames_done / seconds, 2) if frames_done else None,
             "device": str(detector.device) if detector else "none"}
    print(f"{name}: {stats['faces_kept']} faces kept, {len(skipped)} file(s)/frame(s) skipped; "
          f"{frames_done} frames of {len(videos)} video(s) in {seconds:.1f} s"
          + (f" ({stats['frames_per_s']} frames/s on {stats['device']})" if frames_done else "")
          + (f"; {len(videos) - detected} unchanged video(s) not detected again" if len(videos) - detected else ""))
    if len(skipped):
        print(skipped.to_string(index=False))
    return stats
