"""REST API and web page for detection (`dfcl api`), always on the model the `api.alias` alias
(champion) points at.

    POST /v1/detect   multipart field `file` (a photo or a video); ?explain=true adds heatmaps;
                      ?crop=true scores an image whole as a face crop. Answers what `dfcl detect
                      --json` writes for one file.
    GET  /v1/model    which model answers: name, version, alias, threshold, methods, input size, limits
    GET  /health      200 when a model is loaded, 503 when none is
    GET  /            the web page (dfcl/web/, no CDN: it works offline);  /docs  OpenAPI

Bad input never makes a 500: over `api.max_upload_mb` 413, a type not in `api.allowed_types`
415, a file that cannot be scored (corrupt, no face, video longer than `api.max_video_seconds`)
422, all with a JSON `error`. Uploads are streamed by Starlette's multipart parser into a
spooled temporary file (on disk past 1 MB), capped while they stream, and deleted after the answer.

Hot swap: a thread checks the alias every `api.reload_s` and, when it moved (an approval, a
rollback), loads that version and swaps it in whole. A request takes the model once, when it
starts, so one in flight finishes on the model it started with.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from dfcl.detect import FaceScorer, model_card, video_info
from dfcl.evaluate import load_mlflow_detector
from dfcl.registry import alias_version

log = logging.getLogger("dfcl.api")
WEB = Path(__file__).resolve().parent / "web"


class ModelHolder:
    """The scorer for the version `alias` points at; `refresh()` swaps in a new one whole."""

    def __init__(self, params: dict):
        self.params = params
        self.name, self.alias = params["mlflow"]["registered_model"], params["api"]["alias"]
        self.current: FaceScorer | None = None
        self.problem = f"no version of {self.name!r} has the alias {self.alias!r} yet"
        self.loaded_at: float | None = None
        self._lock = threading.Lock()  # one refresh at a time

    def refresh(self) -> bool:
        """Load the aliased version if it is not the one served. True when the model changed."""
        with self._lock:
            version = alias_version(self.name, self.alias)
            served = self.current.detector.info.get("version") if self.current else None
            if version is None:
                if self.current is not None:
                    log.warning("alias %r of %s is gone; serving nothing", self.alias, self.name)
                self.current = None
                return served is not None
            if str(version.version) == served:
                return False
            detector = load_mlflow_detector(f"models:/{self.name}@{self.alias}",
                                            trust_pickle=self.params["api"]["trust_pickle"])
            # MTCNN does not change with the model: the new scorer keeps the loaded one.
            scorer = FaceScorer(detector, self.params, self.current._finder if self.current else None)
            self.current, self.loaded_at = scorer, time.time()
            log.info("serving %s version %s (%s)%s", self.name, detector.info["version"], self.alias,
                     f", was version {served}" if served else "")
            return True

    def watch(self, stop: threading.Event) -> None:
        while not stop.wait(self.params["api"]["reload_s"]):
            try:
                self.refresh()
            except Exception as e:  # the registry is briefly unreachable: keep serving, try again
                log.warning("checking alias %r: %s", self.alias, e)


def create_app(params: dict) -> FastAPI:
    a = params["api"]
    holder = ModelHolder(params)
    max_bytes = int(a["max_upload_mb"] * 2**20)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = threading.Event()
        try:
            await run_in_threadpool(holder.refresh)
        except Exception as e:
            log.warning("loading the %s: %s (retrying every %s s)", holder.alias, e, a["reload_s"])
        watcher = threading.Thread(target=holder.watch, args=(stop,), daemon=True, name="watch-alias")
        watcher.start()
        app.state.slots = asyncio.Semaphore(a["max_concurrent"])
        yield
        stop.set()

    app = FastAPI(title="deepfake-cl detection", lifespan=lifespan,
                  description="Is this photo or video forged? Answered by the current champion.")
    app.state.holder = holder
    app.add_middleware(UploadCap, max_bytes=max_bytes, limit_mb=a["max_upload_mb"])

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error(e.status_code, str(e.detail))

    @app.get("/health")
    def health():
        scorer = holder.current
        if scorer is None:
            return error(503, holder.problem, status="no model")
        return {"status": "ok", "model": scorer.detector.info.get("uri"), "version": scorer.detector.info.get("version")}

    @app.get("/v1/model")
    def model():
        scorer = holder.current
        if scorer is None:
            return error(503, holder.problem)
        return {**model_card(scorer.detector), "loaded_at": holder.loaded_at, "reload_s": a["reload_s"],
                "limits": {k: a[k] for k in ("max_upload_mb", "max_video_seconds", "allowed_types", "max_concurrent")}}

    @app.post("/v1/detect")
    async def detect(request: Request, explain: bool = False, crop: bool = False):
        scorer = holder.current  # taken once: a swap during this request does not touch it
        if scorer is None:
            return error(503, holder.problem)
        form = await request.form(max_files=1, max_fields=4)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return error(422, "send the photo or video as the multipart form field 'file'")
            name = Path(upload.filename or "upload").name
            suffix = Path(name).suffix.lower()
            if suffix not in a["allowed_types"]:
                return error(415, f"type {suffix or '(none)'!r} is not accepted; allowed: {', '.join(a['allowed_types'])}")
            with tempfile.TemporaryDirectory(prefix="dfcl-upload-") as tmp:
                path = Path(tmp) / f"upload{suffix}"
                size = await run_in_threadpool(save_upload, upload, path)
                try:
                    await asyncio.wait_for(request.app.state.slots.acquire(), a["queue_timeout_s"])
                except asyncio.TimeoutError:
                    return error(503, f"busy: {a['max_concurrent']} detections running; try again")
                try:
                    status, body = await run_in_threadpool(run_detection, scorer, path, name, explain, crop, params)
                finally:
                    request.app.state.slots.release()
        finally:
            await form.close()
        log.info("%s %s: %s %s", name, f"{size / 2**20:.1f} MB", status, body.get("verdict"))
        return JSONResponse(body, status_code=status)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(WEB / "index.html")

    app.mount("/static", StaticFiles(directory=WEB), name="static")
    return app


class UploadCap:
    """413 for a request body over the cap: at once when Content-Length says so, else as soon as
    the streamed body passes it (the multipart parser reads through this)."""

    def __init__(self, app, max_bytes: int, limit_mb: float):
        self.app, self.max_bytes, self.limit_mb = app, max_bytes, limit_mb

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            response = error(413, f"upload of {int(length) / 2**20:.1f} MB is over the limit of {self.limit_mb} MB")
            return await response(scope, receive, send)
        seen = 0

        async def capped():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, f"upload is over the limit of {self.limit_mb} MB")
            return message

        await self.app(scope, capped, send)


def save_upload(upload: UploadFile, path: Path) -> int:
    """The (already size-capped) upload into `path`, 1 MB at a time; its size."""
    upload.file.seek(0)
    with open(path, "wb") as out:
        shutil.copyfileobj(upload.file, out, 2**20)
    return path.stat().st_size


def run_detection(scorer: FaceScorer, path: Path, name: str, explain: bool, crop: bool, params: dict) -> tuple[int, dict]:
    a, d = params["api"], params["detect"]
    if path.suffix.lower() in d["video_types"]:
        info = video_info(path)
        if info["seconds"] and info["seconds"] > a["max_video_seconds"]:
            return 422, {"file": name, "verdict": "error", "model": model_card(scorer.detector),
                         "error": f"video of {info['seconds']:.0f} s is over the limit of {a['max_video_seconds']} s"}
    result = scorer.detect(path, "always" if crop else None)
    result.file = name
    body = result.to_dict(scorer.detector, d["aggregate"])
    if explain and result.verdict != "error":
        from dfcl.explain import evidence, png_bytes

        body["evidence"] = [{"name": n, "p_fake": face["p_fake"], "frame": face.get("frame"),
                             "image": "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode()}
                            for n, img, face in evidence(scorer.detector, result, d["explain_top_frames"])]
    return (422 if result.verdict == "error" else 200), body


def error(code: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=code)


def serve(params: dict, host: str | None = None, port: int | None = None) -> None:
    """Run the API with uvicorn until SIGINT or SIGTERM; either stops it cleanly (requests in
    flight finish), says so, and returns."""
    import signal

    import uvicorn

    host, port = host or params["api"]["host"], port or params["api"]["port"]
    print(f"deepfake-cl detection on http://{host}:{port}/ (API docs at /docs); "
          f"following alias {params['api']['alias']!r} every {params['api']['reload_s']} s", flush=True)
    # uvicorn shuts down gracefully on these, then raises the signal again for the handler it
    # found: ours records it instead of killing the process mid-exit.
    stopped_by = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stopped_by.append(signal.Signals(signum).name))
    uvicorn.run(create_app(params), host=host, port=port, log_level="info")
    print(f"dfcl api: stopped ({stopped_by[0] if stopped_by else 'server exited'})", flush=True)
