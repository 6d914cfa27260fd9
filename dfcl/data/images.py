"""Reading images and videos, behind the checks every reader shares (the API, `dfcl detect` and
ingest): what a file is comes from its first bytes, not its name; its size in pixels comes from
the header, before anything is decoded (`api.max_image_pixels`, `api.max_video_pixels`), and
again on every decoded frame; a video's codec must be one a face video needs (VIDEO_CODECS) and
its length within the caller's limit (`check_video`: the API's `api.max_video_seconds`, ingest's
`faces.max_video_seconds`); FFmpeg reads local files only. Apart from dfcl.data.datasets (the torch Dataset) so that face extraction of image
datasets, a DVC stage in a process of its own, starts without importing torch.

A reason a file cannot be used is a `Refusal`: a str (what callers print) with the HTTP status
the API answers with (413 too large, 415 not what its name says, 422 unusable).

Over 300 lines: every check an untrusted file passes before a decoder sees it, in one place.
"""
from __future__ import annotations

import os
import struct
import time
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

# FFmpeg opens URLs and follows references inside a file (HLS playlists, ffconcat, image
# sequences): a crafted upload could make the server fetch http:// or read its own files. Only
# the file protocol and the demuxers of the containers we accept. OpenCV reads this variable at
# every open, so setting it when this module is imported, before any video is opened, holds
# even where cv2 was imported first.
FFMPEG_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi"}
# What each suffix must hold. Within images OpenCV picks the decoder from the bytes (a PNG named
# .jpg decodes as PNG), so a suffix only has to match the kind: an image name never reaches FFmpeg
# and a video name never reaches an image decoder.
# The one list of media types: datasets (layouts), `dfcl detect` and the API all read it.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
SUFFIX_KIND = {**dict.fromkeys(IMAGE_SUFFIXES, "image"), **dict.fromkeys(VIDEO_SUFFIXES, "video")}
FORMAT_KIND = {"JPEG": "image", "PNG": "image", "BMP": "image", "WebP": "image",
               "MP4/QuickTime": "video", "Matroska/WebM": "video", "AVI": "video"}
UNREADABLE_VIDEO = "cannot open video (corrupt, truncated or not a video)"
# The FFmpeg decoders a face video needs, by the codec tags (FourCC) containers name them with;
# any other decoder (raw, lossless, screen and legacy codecs, each a parser of its own) is never
# handed a stranger's bytes.
VIDEO_CODECS = {"h264": ("avc1", "avc3", "h264", "x264", "davc"), "hevc": ("hev1", "hvc1", "hevc", "h265"),
                "mpeg4": ("mp4v", "fmp4", "xvid", "divx", "dx50"), "vp8": ("vp80",), "vp9": ("vp90", "vp09"),
                "av1": ("av01",), "mjpeg": ("mjpg",)}
CODEC_OF_TAG = {tag: codec for codec, tags in VIDEO_CODECS.items() for tag in tags}
# A video whose container states no length is counted up to the frames `max_seconds` hold at
# this rate (or at its stated one): no more decoding than the longest video allowed needs.
MAX_FPS = 60


def _restrict_ffmpeg() -> None:
    pairs = [p for p in os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS", "").split("|") if p]
    keys = {p.split(";", 1)[0] for p in pairs}  # an operator's own setting of a key stays
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "|".join(pairs + [f"{k};{v}" for k, v in FFMPEG_OPTIONS.items()
                                                                    if k not in keys])


_restrict_ffmpeg()
# Every file that cannot be read gets its reason in its own row; OpenCV's own warnings about it
# ("can't be used to capture by name", "can't read data") would only interleave with the progress
# bar. An operator's OPENCV_LOG_LEVEL still wins.
if "OPENCV_LOG_LEVEL" not in os.environ:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def media_kind(path: Path) -> str | None:
    """"image" or "video" by the file's suffix, None for any other file."""
    return SUFFIX_KIND.get(Path(path).suffix.lower())


class Refusal(str):
    """Why a file is not used (a str), and the HTTP status that says it."""

    def __new__(cls, reason: str, status: int = 422):
        self = super().__new__(cls, reason)
        self.status = status
        return self


@lru_cache(maxsize=1)
def default_limits() -> dict:
    """The packaged params.yaml's pixel limits, for readers not handed any."""
    from dfcl.config import packaged_params

    api = packaged_params().api
    return {"image": api.max_image_pixels, "video": api.max_video_pixels}


def sniff(head: bytes) -> str | None:
    """The format the first bytes of a file say, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "AVI"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "Matroska/WebM"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):  # ISO media / QuickTime atoms
        return "MP4/QuickTime"
    return None


def content_problem(path: Path) -> Refusal | None:
    """None when the file's bytes are the kind its suffix says (image or video), else why not."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return Refusal("empty file")
    expected, found = SUFFIX_KIND.get(path.suffix.lower()), sniff(head)
    if expected is None:
        return Refusal(f"unsupported type {path.suffix or '(none)'!r}; dfcl reads {', '.join(SUFFIX_KIND)}", 415)
    if found is None:
        what = "unreadable image" if expected == "image" else "cannot open video"
        formats = ", ".join(f for f, k in FORMAT_KIND.items() if k == expected)
        return Refusal(f"{what}: its first bytes are none of the formats dfcl reads ({formats})", 415)
    if FORMAT_KIND[found] != expected:
        return Refusal(f"the file is {found}, not the {expected} its name ({path.suffix}) says", 415)
    return None


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image's header, without decoding it; None when unreadable."""
    with open(path, "rb") as f:
        head = f.read(32)
        kind = sniff(head)
        try:
            if kind == "PNG" and head[12:16] == b"IHDR":
                return struct.unpack(">II", head[16:24])
            if kind == "BMP":
                if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
                    return struct.unpack("<HH", head[18:22])
                w, h = struct.unpack("<ii", head[18:26])
                return abs(w), abs(h)  # negative height: stored top-down
            if kind == "WebP":
                chunk = head[12:16]
                if chunk == b"VP8 ":
                    w, h = struct.unpack("<HH", head[26:30])
                    return w & 0x3FFF, h & 0x3FFF
                if chunk == b"VP8L":
                    bits = struct.unpack("<I", head[21:25])[0]
                    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
                if chunk == b"VP8X":
                    return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
                return None
            if kind == "JPEG":
                return _jpeg_size(f)
        except struct.error:  # header cut short
            return None
    return None


def _jpeg_segments(f):
    """The marker and length of each segment up to the first scan (SOS) or the end of the image,
    with `f` at the segment's payload; a frame header's or a scan's caller reads on from there."""
    f.seek(2)
    while True:
        byte = f.read(1)
        if not byte:
            return
        if byte != b"\xff":
            continue
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            return
        m = marker[0]
        if m == 0x01 or 0xD0 <= m <= 0xD8:  # markers without a length
            continue
        if m == 0xD9:  # end of image before any scan
            return
        length = struct.unpack(">H", f.read(2))[0]
        yield m, length
        if m == 0xDA:
            return
        f.seek(length - 2, 1)


def _jpeg_size(f) -> tuple[int, int] | None:
    """Width and height from the first frame header (SOFn), skipping the segments before it."""
    for m, _ in _jpeg_segments(f):
        if m == 0xDA:  # a scan before any frame header
            return None
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">xHH", f.read(5))
            return (w, h) if w and h else None
    return None


def _jpeg_complete(path: Path) -> bool:
    """Whether the JPEG's end-of-image marker follows its first scan. Hand-written because the
    decoders do not say: OpenCV (libjpeg) decodes a truncated JPEG to a picture whose missing rows are
    grey and only warns on stderr, so a cut-off upload would be scored as if whole. In the scans'
    entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so the first
    FF D9 after the scan starts is the image's end (an EXIF thumbnail's own FF D9 lies before it)."""
    with open(path, "rb") as f:
        for m, length in _jpeg_segments(f):
            if m == 0xDA:
                f.seek(length - 2, 1)
                tail = b""
                while chunk := f.read(1 << 20):
                    if b"\xff\xd9" in tail[-1:] + chunk:
                        return True
                    tail = chunk
                return False
    return False


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} MP" if n >= 100_000 else f"{n / 1e6:.3f} MP"  # a small cap stays readable


def image_problem(path: Path, max_pixels: int | None = None) -> Refusal | None:
    """None when the image may be decoded: its bytes are an image and its header's width x height
    is within `max_pixels` (default: the packaged api.max_image_pixels)."""
    if not path.is_file() or path.stat().st_size == 0:
        return Refusal("missing or empty file")
    problem = content_problem(path)
    if problem:
        return problem
    size = image_size(path)
    if size is None:
        return Refusal("unreadable image (corrupt or not an image)")
    limit = max_pixels or default_limits()["image"]
    if size[0] * size[1] > limit:
        return Refusal(f"image of {size[0]}x{size[1]} ({_megapixels(size[0] * size[1])}) is over the limit of "
                       f"{_megapixels(limit)} (api.max_image_pixels)", 413)
    with open(path, "rb") as f:
        jpeg = sniff(f.read(16)) == "JPEG"
    if jpeg and not _jpeg_complete(path):
        return Refusal("truncated image: the JPEG ends before its picture does (cut off in a copy or download?)")
    return None


def read_image(path: Path, max_pixels: int | None = None) -> np.ndarray | str:
    """The image as RGB uint8, or the reason it cannot be used (a Refusal); see image_problem."""
    problem = image_problem(path, max_pixels)
    if problem:
        return problem
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return Refusal("unreadable image (corrupt or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def open_video(path: Path, max_pixels: int | None = None) -> tuple[cv2.VideoCapture | None, Refusal | None]:
    """An opened capture (FFmpeg, local file) of a video whose bytes are a video container and
    whose frames are within `max_pixels` (default: the packaged api.max_video_pixels); else None
    and why. Opening reads the container's header, no frame is kept."""
    if not path.is_file() or path.stat().st_size == 0:
        return None, Refusal("missing or empty file")
    problem = content_problem(path)
    if problem:
        return None, problem
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        return None, Refusal(UNREADABLE_VIDEO)
    problem = codec_problem(cap)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    problem = problem or _frame_too_large(w, h, max_pixels, "video")
    if problem:
        cap.release()
        return None, problem
    return cap, None


def codec_problem(cap: cv2.VideoCapture) -> Refusal | None:
    tag = (int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF).to_bytes(4, "little").decode("latin-1")
    if tag.strip("\0 ").lower() in CODEC_OF_TAG:
        return None
    return Refusal(f"video codec {tag.strip(chr(0)) or 'unknown'!r} is not one dfcl decodes "
                   f"({', '.join(VIDEO_CODECS)})", 415)


def _frame_too_large(w: int, h: int, max_pixels: int | None, what: str) -> Refusal | None:
    limit = max_pixels or default_limits()["video"]
    if w * h <= limit:
        return None
    return Refusal(f"{what} of {w}x{h} ({_megapixels(w * h)} a frame) is over the limit of "
                   f"{_megapixels(limit)} (api.max_video_pixels)", 413)


def video_info(cap: cv2.VideoCapture) -> dict:
    """Frame count, frame rate, length and size as the container states them (no decoding);
    a count or rate it does not state, or states absurdly, is None (and so is the length)."""
    n = stored_frame_count(cap)
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    fps = round(fps, 3) if 0 < fps < 1000 else None
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    return {"frames": n, "fps": fps, "seconds": round(n / fps, 2) if n and fps else None, "width": w, "height": h}


def too_long(cap: cv2.VideoCapture, info: dict, max_seconds: float, deadline: float | None = None) -> Refusal | None:
    """Why the video is over `max_seconds`, or has more frames than `max_seconds` hold at
    MAX_FPS, or None. A container that states no length (a live-recorded WebM, a raw stream) has
    its frames counted, at most as many as `max_seconds` hold at its frame rate (MAX_FPS when it
    states none); the count goes into `info`."""
    if info["seconds"] is not None and info["seconds"] > max_seconds:
        return Refusal(f"video of {info['seconds']:.0f} s is over the limit of {max_seconds} s")
    most = int(max_seconds * MAX_FPS)
    if info["frames"] is not None and info["frames"] > most:
        return Refusal(f"video of {info['frames']} frames is over the limit of {most} ({max_seconds} s at {MAX_FPS} fps)")
    if info["seconds"] is not None:
        return None
    limit = int(max_seconds * (info["fps"] or MAX_FPS))
    n = info["frames"] if info["frames"] is not None else count_frames(cap, limit, deadline)
    if n is None or n > limit:
        return Refusal(f"video over the limit of {max_seconds} s: its container states no length, "
                       f"and it has more than {limit} frames")
    info["frames"] = n
    return None


def check_video(path: Path, max_pixels: int | None = None, max_seconds: float | None = None,
                deadline: float | None = None) -> tuple[dict | None, Refusal | None]:
    """The one guard of every video reader (the API, `dfcl detect`, ingest) before frames are
    read: bytes of a video container, an allowed codec, frames within `max_pixels`, and at most
    `max_seconds` long (decoding no more frames than that holds when the container states no
    length). Returns its video_info (None when it does not open) and why not, or None."""
    cap, problem = open_video(path, max_pixels)
    if cap is None:
        return None, problem
    try:
        info = video_info(cap)
        return info, None if max_seconds is None else too_long(cap, info, max_seconds, deadline)
    finally:
        cap.release()


def stored_frame_count(cap: cv2.VideoCapture) -> int | None:
    """The frame count the container states; None when it states none or an absurd one
    (negative, or over 10^8: 46 days at 25 fps), as live-recorded WebM and raw streams do."""
    n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    return int(n) if 0 < n < 1e8 else None


def count_frames(cap: cv2.VideoCapture, limit: int | None = None, deadline: float | None = None) -> int | None:
    """Frames counted by decoding (grab: no colour conversion), at most `limit`: None when the
    stream has more. `deadline` (time.monotonic()) stops it with TimeoutError."""
    n = 0
    while limit is None or n <= limit:
        if deadline is not None and n % 64 == 0 and time.monotonic() > deadline:
            raise TimeoutError("reading the video took too long")
        if not cap.grab():
            return n
        n += 1
    return None


def frame_indices(n_frames: int, k: int) -> list[int]:
    """k frames spread over the whole video: the middle of k equal segments (not the first k
    frames, and not the very first/last frame, which are often fades)."""
    if n_frames <= k:
        return list(range(n_frames))
    return sorted({int((i + 0.5) * n_frames / k) for i in range(k)})


def read_frames(path: Path, k: int, max_pixels: int | None = None, deadline: float | None = None,
                max_seconds: float | None = None, n: int | None = None) -> tuple[dict[int, np.ndarray], int, str | None]:
    """The sampled frames (RGB) of a video, its frame count, and a problem if any (see open_video;
    with `max_seconds`, check_video first; `deadline`, time.monotonic(), stops a slow read with
    TimeoutError). `n`: its frame count when a caller's check_video counted it. A decoded frame
    larger than `max_pixels` (the header said less) stops the read: the video is refused."""
    if max_seconds is not None:
        info, problem = check_video(path, max_pixels, max_seconds, deadline)
        if problem:
            return {}, 0, problem
        n = info["frames"]
    cap, problem = open_video(path, max_pixels)
    if cap is None:
        return {}, 0, problem
    try:
        n = n or stored_frame_count(cap)
        if n is None:  # the container states no frame count: count by decoding once
            n = count_frames(cap, deadline=deadline)
            cap.release()
            cap, problem = open_video(path, max_pixels)
            if cap is None:
                return {}, 0, problem
        if n <= 0:
            return {}, 0, Refusal("no decodable frames (empty or corrupt video)")
        wanted = set(frame_indices(n, k))
        # One sequential pass with grab() (decode, no colour conversion) is faster than seeking,
        # which re-decodes from the previous keyframe for every frame: measured on FF++ c23,
        # 8 frames of a 1080p video took 5.2 s by seeking and 1.7 s in one pass.
        frames, i = {}, 0
        while i <= max(wanted) and cap.grab():
            if deadline is not None and i % 16 == 0 and time.monotonic() > deadline:
                raise TimeoutError("reading the video took too long")
            if i in wanted:
                ok, frame = cap.retrieve()
                if ok:
                    big = _frame_too_large(frame.shape[1], frame.shape[0], max_pixels, f"decoded frame {i}")
                    if big:
                        return {}, n, big
                    frames[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            i += 1
        problem = None if i > max(wanted) else f"video ended at frame {i} of {n} (truncated?)"
        if not frames:
            problem = Refusal("no decodable frames (empty or corrupt video)")
        return frames, n, problem
    finally:
        cap.release()
