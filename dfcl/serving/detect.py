"""Detection for people: a photo, a face crop, a video or a folder in; a verdict with its
evidence out. One module behind `dfcl detect`, the REST API (dfcl.serving.api) and the web page.

- photo: every face MTCNN finds (the ingest settings, `faces.*`) is cropped as in training and
  scored; the photo is fake when any face is (its P(fake) is the highest face's).
- face crop: the image is already one face (`detect.crop`: `auto` decides by whether the one
  face found fills the image, as training crops do); it is scored whole.
- video: `faces.frames_per_video` evenly spaced frames, the most confident face of each, one
  P(fake) per frame (the timeline) and one for the video by `detect.aggregate`.
- folder: every photo and video in it, recursively.

Every verdict says how sure it is (dfcl.measure.trust, fit on the model's validation faces when it was
trained): P(fake) calibrated; "fake" or "real" only where such answers were right
`trust.precision` of the time on the methods it learned, else "uncertain", with the reason; a
face unlike anything it learned is flagged `novel`; a fake names the learned method it resembles.
A model without trust data (a user's file, an older version) answers raw P(fake) at its
threshold, and says so. A file that cannot be used gets a row with `error` and the reason, never an exception:
its bytes must be the kind its name says, and its size in pixels, read from the header before
decoding, within `api.max_image_pixels` / `api.max_video_pixels` (dfcl.data.images).

Over 300 lines: FaceScorer is the one path a verdict takes for photos, crops and videos (they
share the face finder, crop and scoring); what a person is shown of it is dfcl.serving.verdicts.
"""
from __future__ import annotations

import copy
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from dfcl.config import ConfigError, DetectConfig, Params
from dfcl.data.faces import (
    FaceDetector,
    FaceSettings,
    crop_square,
    inside_share,
    square_of,
)
from dfcl.data.images import (
    SUFFIX_KIND,
    check_video,
    media_kind,
    read_frames,
    read_image,
)
from dfcl.measure.scoring import fake_probabilities
from dfcl.measure.trust import (
    CUT_OFF,
    scores_and_features,
    sharpness,
    withhold,
)
from dfcl.serving.detector import Detector, load_detector
from dfcl.serving.verdicts import (
    NOVEL_NOTE,
    band_of,
    calibrated,
    face_evidence,
    measured_on,
    model_card,
    reason_for,
)

log = logging.getLogger("dfcl.serving.detect")


@dataclass
class Result:
    """What one file got. `faces` and `frames` hold the evidence; `crops` (not serialised) the
    face crops that were scored, for explanations."""
    file: str
    kind: str                        # photo | face crop | video | unknown
    verdict: str                     # fake | real | uncertain | error
    p_fake: float | None = None
    error: str | None = None
    reason: str | None = None        # why this verdict, in words (how sure; frames that disagree)
    why: str | None = None           # an answer withheld: what about the face is unfamiliar, in a few words
    novel: bool | None = None        # unlike the faces the model learned (None: the model cannot tell)
    resembles: dict | None = None    # a fake's nearest learned method: {"method", "similarity"}
    faces: list[dict] = field(default_factory=list)    # box [x1, y1, x2, y2], score, p_fake (+ frame, time_s)
    frames: list[dict] = field(default_factory=list)   # video timeline: frame, time_s, p_fake (None: no face)
    video: dict | None = None                          # frames, fps, seconds, width, height
    seconds: float = 0.0
    crops: np.ndarray | None = None
    timings: dict = field(default_factory=dict)        # decode / faces / classify / trust seconds
    status: int | None = None  # an error's HTTP status in the API: 413 too large, 415 not its type, else 422
    measured_at: int | None = None  # a small face's verdict: the face size its band was fit at (None: full size)

    def to_dict(self, detector: Detector, aggregate: str | None = None) -> dict:
        out = {"file": self.file, "kind": self.kind, "verdict": self.verdict,
               "p_fake": None if self.p_fake is None else round(self.p_fake, 4),
               "threshold": round(detector.shown_threshold, 4), "model": model_card(detector)}
        if self.error:
            out["error"] = self.error
        else:
            out |= {"reason": self.reason, "why": self.why, "calibrated": calibrated(detector),
                    "band": band_of(detector, self.measured_at), "measured_at": self.measured_at,
                    "measured_on": measured_on(detector, self.measured_at),
                    "novel": self.novel, "resembles": self.resembles}
        if self.faces:
            out["faces"] = self.faces
        if self.kind == "video" and self.video:
            out["video"] = self.video
            out["aggregate"] = aggregate
            out["frames"] = self.frames
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class Pending:
    """A file read and its faces cut, its crops waiting to be classified: `finish(judged, seconds)`
    makes its Result from their judgements (FaceScorer.score's, in the crops' order) and the
    seconds classifying them took ({"classify": the model's pass, "trust": calibration, novelty
    and attribution})."""
    crops: np.ndarray
    finish: Callable[[list[dict], dict[str, float]], Result]
    sides: list[int]  # how many picture pixels across each crop was cut from: the band it is answered by


def expand(paths: list[str]) -> list[Path]:
    """Files as given, and the photos and videos inside the folders given (sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and media_kind(f))
        else:
            out.append(p)
    return out


def aggregate(p: np.ndarray, rule: str, d: DetectConfig) -> float:
    """One P(fake) for a video from its frames' P(fake).

    mean: the mean (DeepfakeBench's video-level score).
    confident: the rule of the DFDC winner (Seferbekov, 2020): when a large share of frames is
    confidently fake, the mean of those frames (a forgery can be visible in only part of a
    video); else when nearly all are confidently real, the mean of those; else the mean."""
    if rule == "mean":
        return float(p.mean())
    if rule != "confident":
        raise ValueError(f"unknown detect.aggregate {rule!r}; choose mean or confident")
    fake, real = p >= d.confident_fake, p <= d.confident_real
    if fake.sum() > d.confident_fake_share * len(p):
        return float(p[fake].mean())
    if real.sum() > d.confident_real_share * len(p):
        return float(p[real].mean())
    return float(p.mean())


class FaceScorer:
    """The detector plus the face finder (MTCNN, loaded on first use) and the settings of both."""

    def __init__(self, detector: Detector, params: Params, finder: FaceDetector | None = None):
        """`finder`: an MTCNN already loaded (it does not depend on the detector), else loaded on first use."""
        self.detector = detector
        self.params = params
        self.settings = FaceSettings.from_params(detector.params_as_trained(params))
        self._finder = finder
        self._explainer, self._copying = None, threading.Lock()

    @property
    def finder(self) -> FaceDetector:
        if self._finder is None:
            self._finder = FaceDetector(self.settings)
        return self._finder

    @property
    def explainer(self) -> Detector:
        """The detector on a private copy of the model, for Grad-CAM: its hooks then see only
        their own passes, never another request's scoring on the shared model (explanations on
        it take turns: dfcl.serving.explain.LOCK)."""
        with self._copying:
            if self._explainer is None:
                self._explainer = replace(self.detector, model=copy.deepcopy(self.detector.model))
            return self._explainer

    def score(self, crops: np.ndarray, sides=None) -> tuple[list[dict], dict[str, float]]:
        """Per crop: calibrated P(fake), verdict (by the band of the size it was cut from, `sides`),
        and novelty and attribution where the model has them; and the seconds of the model's pass
        (`classify`) and of the rest (`trust`)."""
        trust, t = self.detector.trust, time.perf_counter()
        if trust is not None:
            p, features, spread = scores_and_features(self.detector.model, crops, flip=trust.flip)
        else:
            p, features, spread = fake_probabilities(self.detector.model, crops).numpy(), None, None
        classified = time.perf_counter()
        judged = self.detector.judge(p, features, spread, sharpness(crops) if trust is not None else None, sides)
        return judged, {"classify": classified - t, "trust": time.perf_counter() - classified}

    def cut_off(self, box, h: int, w: int) -> bool:
        """Is more of this face cut off by the picture's edge than of the faces the model learned?"""
        return cut_off(box, h, w, self.detector.trust.min_inside if self.detector.trust is not None else 1.0)

    def concluded(self, result: Result, judged: dict) -> Result:
        """`result` with the verdict, reason, novelty and attribution of the face (or video) `judged`."""
        result.verdict, result.p_fake, result.why = judged["verdict"], judged["p_fake"], judged.get("why")
        result.measured_at = judged.get("measured_at")
        result.reason = judged.get("reason") or reason_for(self.detector, judged["verdict"], judged["p_fake"],
                                                           judged.get("why"), result.measured_at)
        result.novel = judged.get("novel")
        if result.novel and not judged.get("why"):
            result.reason += "; " + NOVEL_NOTE
        result.resembles = judged.get("resembles") if judged["verdict"] == "fake" else None
        return result

    def detect(self, path: Path, crop: str | None = None, max_seconds: float | None = None,
               deadline: float | None = None) -> Result:
        """One file. `crop`: auto | always | never (default: `detect.crop`); `max_seconds`: longer
        videos are refused; `deadline` (time.monotonic()): past it, TimeoutError at the next step."""
        start = time.perf_counter()
        prepared = self.prepare(path, crop, max_seconds, deadline)
        if isinstance(prepared, Pending):
            in_time(deadline)
            prepared = prepared.finish(*self.score(prepared.crops, prepared.sides))
        prepared.seconds = time.perf_counter() - start
        return prepared

    def prepare(self, path: Path, crop: str | None = None, max_seconds: float | None = None,
                deadline: float | None = None) -> Result | Pending:
        """One file read and its faces cut: a Pending whose crops wait to be classified (alone, or
        in a batch with other files' by detect_files), or the Result of a file that gives none."""
        kind = media_kind(path)
        if not path.is_file():
            return Result(str(path), "unknown", "error", error="no such file")
        if kind is None:
            known = ", ".join(SUFFIX_KIND)
            return Result(str(path), "unknown", "error", error=f"unsupported type {path.suffix or '(none)'!r}; known: {known}")
        if path.stat().st_size == 0:
            return Result(str(path), "photo" if kind == "image" else kind, "error", error="empty file")
        if kind == "image":
            return self.prepare_image(path, crop or self.params.detect.crop, deadline)
        return self.prepare_video(path, max_seconds, deadline)

    def prepare_image(self, path: Path, crop: str, deadline: float | None = None) -> Result | Pending:
        s, t = self.settings, time.perf_counter()
        image = read_image(path, self.params.api.max_image_pixels)
        if isinstance(image, str):
            return Result(str(path), "photo", "error", error=image, status=getattr(image, "status", None))
        timings = {"decode": time.perf_counter() - t}
        h, w = image.shape[:2]
        if crop != "always" and not s.searchable(h, w):
            return Result(str(path), "photo", "error", timings=timings, error=self._too_small("image", h, w))
        in_time(deadline)
        t = time.perf_counter()
        found = [] if crop == "always" else [f for f in self.finder.detect_all([image])[0] if f[2] >= s.min_score]
        timings["faces"] = time.perf_counter() - t
        in_time(deadline)
        if crop == "auto":  # as the model was trained: re-framed images, or face crops taken whole
            crop = ("never" if self.settings.detect_in_images else
                    "always" if found and self._fills(found[0][0], h, w) else "never")
        if crop == "always":  # the image is the face, as the training crops were
            crops = cv2.resize(image, (s.size, s.size), interpolation=cv2.INTER_AREA)[None]
            boxes = [found[0][0] if found else np.array([0, 0, w, h], float)]
            scores, kind = [found[0][2] if found else None], "face crop"
        else:
            if not found:
                return Result(str(path), "photo", "error", timings=timings,
                              error="no face found (if the image is a face crop already, use --crop)")
            crops = np.stack([crop_square(image, f[0], s.margin, s.size) for f in found])
            boxes, scores, kind = [f[0] for f in found], [f[2] for f in found], "photo"

        def finish(judged: list[dict], seconds: dict[str, float]) -> Result:
            timings.update(seconds)
            for j, b in zip(judged, boxes):
                if kind == "photo" and self.cut_off(b, h, w):
                    withhold(j, CUT_OFF)
            faces = [{"box": [round(float(v), 1) for v in b], "score": None if sc is None else round(sc, 4),
                      **face_evidence(j)} for b, sc, j in zip(boxes, scores, judged)]
            return self.concluded(Result(str(path), kind, "", faces=faces, crops=crops, timings=timings),
                                  photo_verdict(judged))
        sides = [square_of(b, s.margin, (h, w))[2] for b in boxes] if kind == "photo" else [min(h, w)]
        return Pending(crops, finish, sides)

    def _too_small(self, what: str, h: int, w: int) -> str:
        s = self.settings
        scale = min(1.0, s.detect_max_side / max(h, w))
        return (f"no face found: the {what} ({w}x{h}) is too small to search, {round(w * scale)}x{round(h * scale)} "
                f"at detection scale, and a face needs at least {s.min_face_size} px (faces.min_face_size)"
                + (" (if the image is a face crop already, use --crop)" if what == "image" else ""))

    def _fills(self, box, h: int, w: int) -> bool:
        """Is this face the whole image, as in a training crop taken whole? Its box spans at least
        `detect.crop_min_fill` of the image's shorter side (the box itself: such a model learned
        whole images, whatever the margin of the workspace)."""
        side = max(box[2] - box[0], box[3] - box[1])
        return side >= self.params.detect.crop_min_fill * min(h, w)

    def prepare_video(self, path: Path, max_seconds: float | None = None,
                      deadline: float | None = None) -> Result | Pending:
        s, t = self.settings, time.perf_counter()
        max_pixels = self.params.api.max_video_pixels
        info, problem = check_video(path, max_pixels, max_seconds, deadline)
        if problem:
            return Result(str(path), "video", "error", error=problem, status=problem.status, video=info)
        frames, n, problem = read_frames(path, s.frames_per_video, max_pixels, deadline, n=info["frames"])
        timings = {"decode": time.perf_counter() - t}
        if not frames:
            return Result(str(path), "video", "error", error=problem, timings=timings,
                          status=getattr(problem, "status", None))
        if info["frames"] is None:  # counted while reading
            info.update(frames=n, seconds=round(n / info["fps"], 2) if info["fps"] else None)
        h, w = next(iter(frames.values())).shape[:2]
        if not s.searchable(h, w):
            return Result(str(path), "video", "error", error=self._too_small("video", h, w), timings=timings, video=info)
        in_time(deadline)
        t = time.perf_counter()
        order = sorted(frames)
        found = self.finder.detect([frames[i] for i in order])
        timings["faces"] = time.perf_counter() - t
        in_time(deadline)
        fps = info["fps"] or 25.0
        timeline, kept = [], []
        for i, det in zip(order, found):
            row = {"frame": i, "time_s": round(i / fps, 3), "p_fake": None}
            if det is None or det[2] < s.min_score:
                row["reason"] = "no face" if det is None else f"face score {det[2]:.3f} below faces.min_score"
            else:
                row.update(box=[round(float(v), 1) for v in det[0]], score=round(det[2], 4))
                kept.append((len(timeline), crop_square(frames[i], det[0], s.margin, s.size), self.cut_off(det[0], h, w),
                             square_of(det[0], s.margin, (h, w))[2]))
            timeline.append(row)
        if not kept:
            return Result(str(path), "video", "error", error="no face in any sampled frame", frames=timeline,
                          video=info, timings=timings)
        crops = np.stack([c for _, c, _, _ in kept])

        def finish(judged: list[dict], seconds: dict[str, float]) -> Result:
            timings.update(seconds)
            for (_, _, edge, _), j in zip(kept, judged):
                if edge:
                    withhold(j, CUT_OFF)
            faces = []
            for (k, _, _, _), j in zip(kept, judged):
                timeline[k]["p_fake"] = round(j["p_fake"], 4)
                timeline[k]["verdict"] = j["verdict"]
                faces.append({"frame": timeline[k]["frame"], "time_s": timeline[k]["time_s"], "box": timeline[k]["box"],
                              "score": timeline[k]["score"], **face_evidence(j)})
            result = Result(str(path), "video", "", faces=faces, frames=timeline, video=info, crops=crops, timings=timings)
            self.concluded(result, self.video_verdict(judged, [side for _, _, _, side in kept]))
            if problem:  # e.g. truncated after some frames: scored on what could be read, and said
                result.video = {**info, "warning": problem}
            return result
        return Pending(crops, finish, [side for _, _, _, side in kept])

    def video_verdict(self, judged: list[dict], sides=None) -> dict:
        """One answer for a video from its frames': P(fake) by `detect.aggregate`, answered by the
        band of the faces' median size (`sides`: each frame's face's, as FaceScorer.score takes
        them); "uncertain" when at least `trust.video_disagreement` of the frames are answered the
        other way (e.g. three confidently fake frames in a video whose mean says real), or when most
        frames' answers were withheld (unfamiliar, cut off: the commonest reason is given); novel
        when most frames are; the method most frames resemble."""
        d = self.params.detect
        p = np.array([j["p_fake"] for j in judged])
        score = aggregate(p, d.aggregate, d)
        verdict, at = self.detector.judge_calibrated(score, float(np.median(sides)) if sides else None)
        out = {"p_fake": score, "verdict": verdict} | ({"measured_at": at} if at is not None else {})
        other = {"fake": "real", "real": "fake"}.get(verdict)
        against = sum(j["verdict"] == other for j in judged)
        whys = [j["why"] for j in judged if j.get("why")]
        if len(whys) > len(judged) / 2:  # most of its faces give no answer: neither does the video, and it says why
            out |= {"verdict": "uncertain", "why": f"{len(whys)} of {len(judged)} frames: {commonest_reason(whys)}"}
        elif other and against >= self.params.trust.video_disagreement * len(judged):
            out["verdict"] = "uncertain"
            out["reason"] = (f"its frames disagree: {against} of {len(judged)} frames are answered '{other}' while "
                             f"the video's P(fake) {score:.2f} says '{verdict}' (trust.video_disagreement)")
        if all("novel" in j for j in judged):
            out["novel"] = sum(j["novel"] for j in judged) > len(judged) / 2
        methods = [j["resembles"]["method"] for j in judged if "resembles" in j and j["verdict"] == "fake"]
        if methods:
            top = max(set(methods), key=methods.count)
            out["resembles"] = {"method": top, "similarity": round(methods.count(top) / len(methods), 3),
                                "frames": len(methods)}
        return out


NUMBER = re.compile(r"\d+(?:\.\d+)?")


def commonest_reason(whys: list[str]) -> str:
    """The reason most withheld frames share, its numbers given as the range over those frames
    ("face too small: 118-142 px across ..."): quoting one frame's exact words would state one
    frame's size as if every frame had it. A frame's `why` may join several reasons with "; "."""
    parts = [part for why in whys for part in why.split("; ")]
    kinds: dict[str, list[str]] = {}
    for part in parts:
        kinds.setdefault(NUMBER.sub("#", part), []).append(part)
    shared = max(kinds.values(), key=len)
    numbers = list(zip(*(NUMBER.findall(part) for part in shared)))
    spans = iter(f"{min(n, key=float)}-{max(n, key=float)}" if len(set(n)) > 1 else n[0] for n in numbers)
    return NUMBER.sub(lambda _: next(spans), shared[0])


def cut_off(box, h: int, w: int, min_inside: float = 1.0) -> bool:
    """Is less of the face's box (MTCNN's, x1 y1 x2 y2) inside the picture than `min_inside`
    (trust.min_inside: fit on the faces the model learned; 1.0: any box leaving the picture)? Then
    more of the face is cut off than in anything its figures were measured on (its crop is kept
    inside the picture, dfcl.data.faces.crop_square, so no padding is ever scored)."""
    return inside_share(box, h, w) < min_inside


def photo_verdict(judged: list[dict]) -> dict:
    """A photo's answer from its faces': "fake" when any face is answered fake (the most suspicious
    of those), else "uncertain" when any face is (the most suspicious of those, with its reason),
    else "real"; the P(fake) shown is that face's."""
    for verdict in ("fake", "uncertain"):
        these = [j for j in judged if j["verdict"] == verdict]
        if these:
            return max(these, key=lambda j: j["p_fake"])
    return max(judged, key=lambda j: j["p_fake"])


def in_time(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError("the detection ran past its deadline")


def detect_files(scorer: FaceScorer, paths: list[str], crop: str | None = None, explain_dir: Path | None = None,
                 progress: bool = True) -> list[dict]:
    """Every photo and video of `paths` (folders included), one JSON-ready row each in input
    order, with a progress bar; with `explain_dir`, heatmap overlays (and video timelines)
    written there. Files are read and their faces cut by `detect.workers` threads (decoding and
    MTCNN release the GIL), and the faces of several files are classified together in batches of
    about `detect.batch_size`: one forward pass per file would leave most of the model's speed
    unused on a folder of crops (issue 40). A file that fails gets its own row and the rest go on."""
    from tqdm.auto import tqdm

    files, d = expand(paths), scorer.params.detect
    rows: list[dict | None] = [None] * len(files)
    waiting: list[tuple[int, Pending, float]] = []  # files whose crops wait for the next batch
    bar = tqdm(total=len(files), desc="detect", unit="file", disable=not progress or len(files) < 2)

    def settle(i: int, result: Result) -> None:
        rows[i] = _row(scorer, result, explain_dir)
        bar.update()

    def classify_waiting() -> None:
        try:
            judged, spent = scorer.score(np.concatenate([p.crops for _, p, _ in waiting]),
                                         [side for _, p, _ in waiting for side in p.sides])
        except Exception as e:  # the whole batch failed: each of its files says so
            for i, p, _ in waiting:
                settle(i, _failed(files[i], e))
            waiting.clear()
            return
        k = 0
        for i, p, seconds in waiting:
            n = len(p.crops)
            share = {stage: s * n / len(judged) for stage, s in spent.items()}  # the batch's time, by faces
            try:
                result = p.finish(judged[k:k + n], share)
                result.seconds = seconds + sum(share.values())
            except Exception as e:
                result = _failed(files[i], e)
            k += n
            settle(i, result)
        waiting.clear()

    def prepared(path: Path) -> tuple[Result | Pending, float]:
        t = time.perf_counter()
        try:
            return scorer.prepare(path, crop), time.perf_counter() - t
        except Exception as e:  # one file a decoder or a bug chokes on: its row says so, the rest go on
            return _failed(path, e), time.perf_counter() - t

    faces = 0  # in `waiting`
    chunk = max(d.batch_size, 4 * d.workers)  # files read ahead of the classifier, so memory stays bounded
    with ThreadPoolExecutor(d.workers) as pool:
        for start in range(0, len(files), chunk):
            for i, (outcome, seconds) in enumerate(pool.map(prepared, files[start:start + chunk]), start):
                if isinstance(outcome, Pending):
                    waiting.append((i, outcome, seconds))
                    faces += len(outcome.crops)
                    if faces >= d.batch_size:
                        classify_waiting()
                        faces = 0
                else:
                    outcome.seconds = seconds
                    settle(i, outcome)
        if waiting:
            classify_waiting()
    bar.close()
    return rows


def _failed(path: Path, e: Exception) -> Result:
    log.error("detect %s failed", path, exc_info=e)
    first = (str(e).splitlines() or [""])[0]
    return Result(str(path), "unknown", "error", error=f"{type(e).__name__}: {first} (traceback in the log)")


def _row(scorer: FaceScorer, result: Result, explain_dir: Path | None) -> dict:
    """A file's JSON-ready row; its evidence written to `explain_dir` when asked (Grad-CAM: only then)."""
    from dfcl.serving.explain import write_evidence

    d = scorer.params.detect
    row = result.to_dict(scorer.detector, d.aggregate)
    if explain_dir is not None and result.verdict != "error":
        try:
            row["evidence"] = [str(p) for p in write_evidence(scorer.detector, result, explain_dir, d.explain_top_frames,
                                                              scorer.detector.shown_threshold)]
        except Exception as e:  # no evidence is no reason to lose the verdict
            log.error("evidence for %s failed", result.file, exc_info=e)
            row["evidence_error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    return row


def detect_with_model(ref: str, paths: list[str], params: Params, root: Path, crop: bool = False,
                      explain_dir: Path | None = None, trust_pickle: bool = False) -> list[dict]:
    """`dfcl detect`: the model `ref` (load_detector: the face size and decision threshold
    travel with it; a pickled one only with `trust_pickle`) on every photo and video of
    `paths`, one row each."""
    if not expand(paths):
        raise ConfigError(f"no photo or video in {', '.join(paths)} (known types: {', '.join(SUFFIX_KIND)})")
    scorer = FaceScorer(load_detector(ref, params, root, trust_pickle), params)
    return detect_files(scorer, paths, crop="always" if crop else None, explain_dir=explain_dir)
