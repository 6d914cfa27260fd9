"""The API and `dfcl detect` against bad input, slow or vanishing clients and concurrent
requests (issue 28, "The page and the API"). On a small untrained CNN served directly (no
registry, no training): none of this depends on what the model learned."""
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from dfcl.data.images import count_frames, open_video, read_image
from dfcl.serving.api import ModelHolder, create_app, run_detection, uvicorn_config
from dfcl.serving.detect import FaceScorer, detect_files
from dfcl.serving.detector import Detector
from tests.conftest import REPO, free_port, small_params

CARD = {"uri": "models:/deepfake-detector/1", "name": "deepfake-detector", "version": "1", "alias": "champion",
        "architecture": "small_cnn", "methods": ["BlendSwap"]}


def stub_scorer(params: dict, model=None) -> FaceScorer:
    import torch

    from models import create_model

    torch.manual_seed(0)
    return FaceScorer(Detector((model or create_model("small_cnn", width=8)).eval(), 32, 0.5, dict(CARD)), params)


class FixedHolder(ModelHolder):
    """Serves one scorer, never asks the registry."""

    def __init__(self, params: dict, scorer: FaceScorer):
        super().__init__(params)
        self.current, self.loaded_at = scorer, time.time()

    def refresh(self) -> bool:
        return False


def client_for(params: dict, scorer: FaceScorer | None = None, **kwargs) -> TestClient:
    app = create_app(params, FixedHolder(params, scorer or stub_scorer(params)))
    return TestClient(app, base_url="http://127.0.0.1", **kwargs)


@contextmanager
def live_api(params: dict, scorer: FaceScorer | None = None):
    """The app under uvicorn, as `dfcl api` runs it, in a thread on a free port of 127.0.0.1; its
    log records reach pytest's caplog."""
    import uvicorn

    port = free_port()
    app = create_app(params, FixedHolder(params, scorer or stub_scorer(params)))
    server = uvicorn.Server(uvicorn_config(app, params, "127.0.0.1", port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 120
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(60)


def post(client, path: Path, name: str | None = None, **query):
    with open(path, "rb") as f:
        return client.post("/v1/detect", params=query, files={"file": (name or path.name, f)})


def png_header(path: Path, w: int, h: int) -> Path:
    """A PNG that declares w x h and holds one tiny compressed chunk: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b""))
    return path


def write_video(path: Path, n: int, size=(64, 48), fps: float = 25) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), (i * 7) % 255, np.uint8))
    writer.release()
    return path


def without_duration(src: Path, out: Path) -> Path:
    """The Matroska file with its Duration element voided: a container that states no length
    (as a live-recorded WebM)."""
    data = bytearray(src.read_bytes())
    at = data.find(b"\x44\x89")
    total = 3 + (data[at + 2] & 0x7F)  # id (2 bytes) + 1-byte size + the float
    data[at:at + total] = bytes([0xEC, 0x80 | (total - 2)]) + bytes(total - 2)  # an EBML Void of the same length
    out.write_bytes(bytes(data))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("robustness")
    rng = np.random.default_rng(0)
    f = {"face": out / "face.jpg", "bomb": png_header(out / "bomb.png", 40000, 40000)}
    cv2.imwrite(str(f["face"]), (rng.random((96, 96, 3)) * 255).astype(np.uint8))
    for name, (w, h) in {"tiny": (39, 39), "banner": (2000, 120), "dot": (1, 1)}.items():
        f[name] = out / f"{name}.png"
        cv2.imwrite(str(f[name]), (rng.random((h, w, 3)) * 255).astype(np.uint8))
    f["video"] = write_video(out / "clip.mp4", 30)
    mkv = write_video(out / "clip.mkv", 300)
    f["mkv"] = mkv
    f["no_length"] = without_duration(mkv, out / "live.mkv")
    f["mkv_as_jpg"] = out / "photo.jpg"
    f["mkv_as_jpg"].write_bytes(mkv.read_bytes())
    f["png_as_jpg"] = out / "really_png.jpg"
    f["png_as_jpg"].write_bytes(f["tiny"].read_bytes())
    f["playlist"] = out / "list.mp4"  # an FFmpeg concat script: would make FFmpeg open the file it names
    f["playlist"].write_text(f"ffconcat version 1.0\nfile '{f['video'].name}'\n")
    f["text_mp4"] = out / "notes.mp4"
    f["text_mp4"].write_text("not a video\n")
    f["heic"] = out / "photo.heic"
    f["heic"].write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    return f


def test_pixel_limits_come_from_the_header_before_anything_is_decoded(files, tmp_path, monkeypatch):
    params = small_params()
    decoded = []
    real_imread = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda *a, **k: decoded.append(a[0]) or real_imread(*a, **k))
    with client_for(params) as client:
        r = post(client, files["bomb"])
        assert r.status_code == 413, r.text
        assert "40000x40000 (1600.0 MP) is over the limit of 50.0 MP" in r.json()["error"]
    assert decoded == []  # refused from its header: nothing was decoded
    # The same limits for `dfcl detect` and ingest's reader, from params.
    small = small_params("api.max_image_pixels=1000", "api.max_video_pixels=1000")
    scorer = stub_scorer(small)
    row = scorer.detect(files["face"], "always")
    assert (row.verdict, row.status) == ("error", 413) and "96x96" in row.error
    assert read_image(files["bomb"]).status == 413  # ingest: the packaged default limit
    video = scorer.detect(files["video"])
    assert video.status == 413 and "64x48" in video.error and "api.max_video_pixels" in video.error
    cap, problem = open_video(files["video"], max_pixels=1000)
    assert cap is None and problem.status == 413
    assert stub_scorer(params).detect(files["face"], "always").verdict in ("fake", "real", "uncertain")


def test_a_video_of_unknown_length_is_counted_only_up_to_the_limit(files):
    cap = cv2.VideoCapture(str(files["no_length"]))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) <= 0  # the container really states no length
    cap.release()
    scorer = stub_scorer(small_params())
    refused = scorer.detect(files["no_length"], max_seconds=5)  # 300 frames at 25 fps: 12 s
    assert refused.verdict == "error" and "states no length" in refused.error and "125 frames" in refused.error
    assert scorer.detect(files["mkv"], max_seconds=5).error == "video of 12 s is over the limit of 5 s"
    cap, _ = open_video(files["no_length"])
    try:
        assert count_frames(cap, limit=40) is None  # stops at the limit instead of decoding the rest
    finally:
        cap.release()
    within = scorer.detect(files["no_length"], max_seconds=20)  # allowed: read, no face in the grey frames
    assert "no face in any sampled frame" in within.error and within.video["frames"] == 300


def test_tiny_and_banner_images_get_a_reason_not_a_500(files, tmp_path):
    params = small_params()
    with client_for(params) as client:
        for key, shown in {"tiny": "39x39", "banner": "2000x120", "dot": "1x1"}.items():
            r = post(client, files[key])
            assert r.status_code == 422, (key, r.text)
            assert "too small to search" in r.json()["error"] and shown in r.json()["error"], r.json()
        assert "640x38 at detection scale" in post(client, files["banner"]).json()["error"]
        assert post(client, files["tiny"], crop="true").status_code == 200  # a face crop is scored whole
    # A folder: every file gets its row, whatever happens to one of them.
    folder = tmp_path / "folder"
    folder.mkdir()
    for key in ("tiny", "banner", "face"):
        (folder / files[key].name).write_bytes(files[key].read_bytes())
    scorer = stub_scorer(params)
    real_prepare = scorer.prepare
    scorer.prepare = lambda path, crop=None: (_ for _ in ()).throw(RuntimeError("decoder crashed")) \
        if path.name == "face.jpg" else real_prepare(path, crop)
    rows = {Path(r["file"]).name: r for r in detect_files(scorer, [str(folder)], progress=False)}
    assert len(rows) == 3 and all(r["verdict"] == "error" for r in rows.values())
    assert rows["face.jpg"]["error"].startswith("RuntimeError: decoder crashed")
    # MTCNN itself is never handed an image it cannot search (ingest calls it directly).
    assert scorer.finder.detect_all([np.zeros((38, 640, 3), np.uint8)]) == [[]]


def test_a_folder_is_classified_in_batches_across_files_in_input_order(files, tmp_path):
    """`dfcl detect FOLDER`: the faces of several files go through the model together
    (detect.batch_size), each file keeps its own row, in order, with the answer it gets alone; an
    unreadable file in the middle gets its own error row."""
    params = small_params("detect.batch_size=4", "detect.workers=2")
    folder = tmp_path / "crops"
    folder.mkdir()
    rng = np.random.default_rng(1)
    names = [f"{i:02d}.png" for i in range(7)]
    for name in names:
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    (folder / "03-broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    scorer = stub_scorer(params)
    alone = {name: scorer.detect(folder / name, "always") for name in names}
    batches, real_score = [], scorer.score
    scorer.score = lambda crops, sides=None: batches.append(len(crops)) or real_score(crops, sides)
    rows = detect_files(scorer, [str(folder)], crop="always", progress=False)
    assert [Path(r["file"]).name for r in rows] == sorted(names + ["03-broken.jpg"])
    by_name = {Path(r["file"]).name: r for r in rows}
    assert by_name["03-broken.jpg"]["verdict"] == "error" and by_name["03-broken.jpg"]["error"]
    for name in names:
        assert by_name[name]["verdict"] == alone[name].verdict
        assert by_name[name]["p_fake"] == pytest.approx(round(alone[name].p_fake, 4), abs=2e-4)
    assert batches == [4, 3], "seven faces in batches of four, across files"


def test_content_comes_from_the_bytes_and_ffmpeg_reads_local_files_only(files, tmp_path):
    with client_for(small_params()) as client:
        r = post(client, files["mkv_as_jpg"])
        assert r.status_code == 415 and r.json()["error"] == "the file is Matroska/WebM, not the image its name (.jpg) says"
        for key in ("playlist", "text_mp4"):
            r = post(client, files[key])
            assert r.status_code == 415 and "cannot open video: its first bytes are none of" in r.json()["error"], r.text
        assert post(client, files["png_as_jpg"], crop="true").status_code == 200  # an image is an image
    # Even where cv2 was imported first, importing dfcl.data.images keeps FFmpeg to local files and
    # the containers we read: a concat script would otherwise open the files it names.
    script = ("import cv2, sys\nimport dfcl.data.images\n"
              "ok = lambda p: cv2.VideoCapture(p, cv2.CAP_FFMPEG).isOpened()\n"
              f"print(ok({str(files['playlist'])!r}), ok({str(files['video'])!r}))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["False", "True"], out.stderr[-2000:]


def test_a_jpeg_cut_off_is_refused_even_after_a_whole_thumbnail(tmp_path):
    """A truncated JPEG decodes (libjpeg greys the missing rows and warns on stderr): it is refused
    instead, however it was cut; an EXIF thumbnail's own end marker does not make it whole, and
    trailing bytes after the end (camera trailers) do not make a whole one cut."""
    rng = np.random.default_rng(0)
    picture = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (5, 5), 0)
    for name, flags in (("baseline", []), ("progressive", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])):
        whole = cv2.imencode(".jpg", picture, flags)[1].tobytes()
        thumb = cv2.imencode(".jpg", cv2.resize(picture, (40, 30)))[1].tobytes()
        app1 = b"Exif\0\0" + thumb  # a thumbnail, end marker included, inside an APP1 segment
        with_thumb = whole[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + whole[2:]
        for data, expected in ((whole, None), (with_thumb, None), (whole + os.urandom(5000), None),
                               (whole[:len(whole) * 2 // 3], 422), (with_thumb[:len(with_thumb) - 200], 422),
                               (whole[:-2], 422)):
            path = tmp_path / f"{name}.jpg"
            path.write_bytes(data)
            image = read_image(path)
            if expected is None:
                assert isinstance(image, np.ndarray) and image.shape == (240, 320, 3), (name, len(data), image)
            else:
                assert isinstance(image, str) and image.status == 422 and image.startswith("truncated image"), (name, len(data))


def test_a_detection_past_its_deadline_answers_503_and_frees_its_slot(files):
    params = small_params("api.detect_timeout_s=1", "api.max_concurrent=1", "api.queue_timeout_s=120")
    scorer = stub_scorer(params)
    stuck, release = threading.Event(), threading.Event()
    real_score = scorer.score

    def slow_score(crops, sides=None):
        if not stuck.is_set():
            stuck.set()
            release.wait(120)  # held past the deadline until the test has its answer
        return real_score(crops, sides)

    scorer.score = slow_score
    with client_for(params, scorer) as client:
        answers = {}
        first = threading.Thread(target=lambda: answers.update(r=post(client, files["face"], crop="true")))
        first.start()
        first.join(90)
        assert not first.is_alive(), "no answer while the detection was stuck"
        assert answers["r"].status_code == 503 and "api.detect_timeout_s" in answers["r"].json()["error"]
        assert answers["r"].headers["retry-after"] == "120"  # api.queue_timeout_s: a slot is free by then
        release.set()  # the thread goes on, meets its deadline at the next step and frees the slot
        r = post(client, files["face"], crop="true")
        assert r.status_code == 200, r.text


def test_grad_cam_never_sees_another_requests_scoring(files):
    """Grad-CAM hooks the model it explains. Another request's plain scoring in the middle of an
    explanation (simulated here at the exact moment, inside the explained forward pass) must
    not reach the heatmap: the API explains on a private copy of the model."""
    import torch

    from tests.test_detect import Tiny

    params = small_params()
    scorer = stub_scorer(params, Tiny(1.0))
    scorer.detector.info["architecture"] = None  # Tiny: Grad-CAM takes its last convolution
    path = files["face"]
    image = np.zeros((32, 32, 3), np.uint8)
    image[:8, :8] = 255  # evidence in the top-left corner only
    cv2.imwrite(str(path.parent / "corner.png"), image)
    corner = path.parent / "corner.png"
    _, alone = run_detection(scorer, corner, "corner.png", True, True, params)

    other = torch.zeros(1, 3, 32, 32)
    other[..., 24:, 24:] = 1.0  # another request's face: bright in the opposite corner
    Tiny.interleave = lambda: scorer.detector.model(other)
    try:
        _, mixed = run_detection(scorer, corner, "corner.png", True, True, params)
    finally:
        Tiny.interleave = None
    assert mixed["evidence"][0]["image"] == alone["evidence"][0]["image"]


def test_uploads_are_read_only_once_a_slot_is_taken(files, monkeypatch):
    import dfcl.serving.api as api

    params = small_params("api.max_concurrent=1", "api.queue_timeout_s=1")
    scorer = stub_scorer(params)
    started, release = threading.Event(), threading.Event()
    real_score = scorer.score
    scorer.score = lambda crops, sides=None: (started.set(), release.wait(120), real_score(crops, sides))[2]
    saved = []
    real_save = api.save_upload
    monkeypatch.setattr(api, "save_upload", lambda upload, path: saved.append(path) or real_save(upload, path))
    with client_for(params, scorer) as client:
        answers = {}
        first = threading.Thread(target=lambda: answers.update(r=post(client, files["face"], crop="true")))
        first.start()
        assert started.wait(120)
        busy = post(client, files["face"], crop="true")
        assert busy.status_code == 503 and "busy" in busy.json()["error"] and busy.headers["retry-after"] == "1"
        assert len(saved) == 1  # the waiting request's upload was never parsed nor saved
        release.set()
        first.join(120)
        assert answers["r"].status_code == 200


def raw_upload_head(url: str, length: int) -> tuple[socket.socket, bytes]:
    """A socket with the head of a multipart upload of `length` bytes sent; the part head."""
    host, port = url.removeprefix("http://").split(":")
    boundary = "dfclrobust"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"face.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    s = socket.create_connection((host, int(port)), timeout=60)
    s.sendall((f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode() + part)
    return s, part


def read_answer(s: socket.socket) -> str:
    """The whole HTTP answer on `s`: the head and body can arrive in separate packets."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < body_length(data):
        chunk = s.recv(4096)  # blocks until the server sends (60 s socket timeout)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def body_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_slow_and_vanishing_clients(files, caplog):
    caplog.set_level(logging.INFO)
    params = small_params("api.upload_timeout_s=2", "api.max_concurrent=1", "api.queue_timeout_s=60")
    with live_api(params) as (url, _):
        # A client that stalls mid-upload gets 408 once api.upload_timeout_s has passed.
        s, _ = raw_upload_head(url, 2**20)
        s.sendall(b"\xff\xd8\xff" + bytes(10_000))
        answer = read_answer(s)
        s.close()
        assert answer.startswith("HTTP/1.1 408") and "api.upload_timeout_s" in answer, answer[:300]
        # A client that goes away mid-upload: no traceback, the slot comes back.
        s, _ = raw_upload_head(url, 2**20)
        s.sendall(bytes(50_000))
        s.close()
        time.sleep(1)
        with open(files["face"], "rb") as f:
            r = httpx.post(f"{url}/v1/detect?crop=true", files={"file": ("face.jpg", f)}, timeout=120)
        assert r.status_code == 200, r.text
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, [r.getMessage() for r in errors]
    assert any("went away during the upload" in r.getMessage() for r in caplog.records)


def test_uvicorn_refuses_connections_over_the_limit():
    params = small_params("api.max_connections=2")  # the idle connection, and the one it refuses
    with live_api(params) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=60) as idle:
            idle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert idle.recv(4096).startswith(b"HTTP/1.1 200")  # kept alive: still counts
            assert httpx.get(f"{url}/health", timeout=60).status_code == 503


def test_public_deployment_token_hosts_headers_and_no_cdn(monkeypatch, files):
    monkeypatch.setenv("DFCL_API_TOKEN", "s3cret-token")
    params = small_params()
    with client_for(params) as client:
        r = client.get("/v1/model")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "access token" in r.json()["error"]
        assert client.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert post(client, files["face"], crop="true").status_code == 401
        good = {"Authorization": "Bearer s3cret-token"}
        assert client.get("/v1/model", headers=good).json()["version"] == "1"
        with open(files["face"], "rb") as f:
            assert client.post("/v1/detect?crop=true", files={"file": ("face.jpg", f)}, headers=good).status_code == 200
        page = client.get("/")
        assert page.status_code == 200 and client.get("/health").status_code == 200  # open: the page asks for it
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-content-type-options"] == "nosniff"  # errors too
        docs = client.get("/docs")  # Swagger UI, open like the page, from the server's own files
        assert docs.status_code == 200 and "script-src 'self'" in docs.headers["content-security-policy"]
        assert "/v1/detect" in client.get("/openapi.json").json()["paths"]
    # Every script the page and /docs run is a file of its own (the CSP allows no inline script), none from elsewhere.
    html = (REPO / "dfcl" / "serving" / "web" / "index.html").read_text()
    assert html.count("<script") == html.count('<script src="/static/') == 1 and "http" not in html.replace("http-equiv", "")
    assert docs.text.count("<script") == docs.text.count('<script src="/') == 2 and "http" not in docs.text
    with TestClient(create_app(params, FixedHolder(params, stub_scorer(params))), base_url="http://evil.example") as c:
        refused = c.get("/")
        assert refused.status_code == 400 and "api.allowed_hosts" in refused.json()["error"]  # a Host not allowed
    monkeypatch.delenv("DFCL_API_TOKEN")
    with client_for(params) as client:
        assert client.get("/v1/model").status_code == 200  # no token set: none asked


def test_every_error_has_the_one_shape_its_schema_declares(files, monkeypatch):
    """FastAPI's own 404, 405 and 422, the guards' 400, 401 and 413 and the app's 415 and 503: all
    `{"error": "..."}`, each valid against the schema /openapi.json declares for its status."""
    from tests.openapi_client import SchemaClient

    monkeypatch.setenv("DFCL_API_TOKEN", "shape-token")
    params = small_params("api.max_upload_mb=1", "api.max_concurrent=1", "api.queue_timeout_s=1")
    good = {"Authorization": "Bearer shape-token"}
    scorer = stub_scorer(params)
    with client_for(params, scorer) as http:
        spec = http.get("/openapi.json").json()
        client = SchemaClient(http, spec, token="shape-token")
        detect = [  # status, answer
            (401, http.post("/v1/detect", files={"file": ("face.jpg", b"x")})),
            (413, http.post("/v1/detect", files={"file": ("big.jpg", bytes(2 * 2**20))}, headers=good)),
            (415, client.call("/v1/detect", "post", files={"file": files["heic"]})),
            (422, http.post("/v1/detect", headers=good)),
            (422, client.call("/v1/detect", "post", params={"crop": "maybe"}, files={"file": files["face"]})),
        ]
        for status, r in detect:
            assert r.status_code == status, (status, r.text)
            assert isinstance(client.read("/v1/detect", "post", r)["error"], str)
        assert "field 'file'" in detect[3][1].json()["error"] and "crop" in detect[4][1].json()["error"]
        for r, status in ((http.get("/no/such/page"), 404), (http.get("/static/nothing.js"), 404),
                          (http.put("/health"), 405), (http.get("/v1/detect", headers=good), 405)):
            assert r.status_code == status and set(r.json()) == {"error"} and r.json()["error"], r.text
        assert http.put("/health").headers["allow"] == "GET"
        # The one detection slot taken: 503 with Retry-After, as the schema says.
        started, release = threading.Event(), threading.Event()
        real_score = scorer.score
        scorer.score = lambda crops, sides=None: (started.set(), release.wait(120), real_score(crops, sides))[2]
        first = threading.Thread(target=lambda: client.call("/v1/detect", "post", {"crop": True}, {"file": files["face"]}))
        first.start()
        assert started.wait(120)
        busy = client.call("/v1/detect", "post", {"crop": True}, {"file": files["face"]})
        release.set()
        first.join(120)
        assert busy.status_code == 503 and "busy" in client.read("/v1/detect", "post", busy)["error"]
        assert busy.headers["retry-after"] == "1"


def test_an_upload_over_the_cap_is_refused_while_it_streams(files):
    """The declared upload (FastAPI's UploadFile) does not read the body before the cap: a chunked
    upload without a Content-Length gets 413 long before it has all been sent."""
    params = small_params("api.max_upload_mb=1")
    total, sent = 64 * 2**20, 0  # the kernel buffers some MB before the server reads (7 MB seen on loopback)
    with live_api(params) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        boundary = "dfclcap"
        s = socket.create_connection((host, int(port)), timeout=30)
        part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
                "Content-Type: image/jpeg\r\n\r\n").encode()
        s.sendall((f"POST /v1/detect?crop=true HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                   f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()
                  + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        chunk = b"%x\r\n" % 2**16 + bytes(2**16) + b"\r\n"
        try:
            while sent < total and not select.select([s], [], [], 0)[0]:
                s.sendall(chunk)
                sent += 2**16
        except OSError:  # the server closed the connection after its answer
            pass
        answer = read_answer(s)
        s.close()
    assert answer.startswith("HTTP/1.1 413") and '"error"' in answer and "over the limit of 1" in answer, answer[:300]
    assert sent < total / 2, f"{sent} bytes went in before the answer"


def test_one_video_guard_codec_length_and_decoded_size(tmp_path):
    """Ingest and the API read videos through the same guard (images.check_video, read_frames)."""
    from benchmarks.hostile_data import jpeg, mjpeg_avi, other_codec_avi
    from dfcl.data.images import read_frames

    fine = mjpeg_avi(tmp_path / "fine.avi", [jpeg(64, 48, i) for i in range(3)])
    frames, n, problem = read_frames(fine, 2, max_seconds=60)
    assert problem is None and n == 3 and len(frames) == 2
    _, _, problem = read_frames(other_codec_avi(tmp_path / "huffyuv.avi"), 2)
    assert problem == "video codec 'HFYU' is not one dfcl decodes (h264, hevc, mpeg4, vp8, vp9, av1, mjpeg)"
    assert problem.status == 415
    six_hours = mjpeg_avi(tmp_path / "six-hours.avi", [jpeg(64, 48)] * 3, total_frames=6 * 3600 * 25)
    _, _, problem = read_frames(six_hours, 2, max_seconds=1800)
    assert problem == "video of 21600 s is over the limit of 1800 s"
    # the header says 64x48; the frames decode at 1600x1200
    liar = mjpeg_avi(tmp_path / "liar.avi", [jpeg(1600, 1200, i) for i in range(3)])
    frames, _, problem = read_frames(liar, 2, max_pixels=64 * 48 * 4, max_seconds=60)
    assert not frames and problem.status == 413 and "1600x1200" in problem, problem


def test_ingest_skips_a_video_over_its_length_with_a_reason(tmp_path, workspace):
    from benchmarks.hostile_data import jpeg, mjpeg_avi
    from dfcl.data.extraction import faces_of_videos
    from dfcl.data.faces import FaceSettings

    mjpeg_avi(tmp_path / "long.avi", [jpeg(64, 48)] * 3, total_frames=6 * 3600 * 25)
    s = FaceSettings.from_params(small_params())
    class NoFaces:  # MTCNN is not the point: nothing is decoded to give it
        def detect(self, frames):
            assert not frames, "frames of a refused video reached face detection"
            return []

    results, _ = faces_of_videos(tmp_path, ["long.avi"], {}, {"long.avi": "x"}, {"long.avi": 1}, s, NoFaces(),
                                 tmp_path / "cache", limits={"max_pixels": None, "max_seconds": 1800})
    assert results["long.avi"].skipped == [(-1, "video of 21600 s is over the limit of 1800 s")]
