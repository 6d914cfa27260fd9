"""REST API and web page for detection (`dfcl api`), always on the model the `api.alias` alias
(champion) points at.

    POST /v1/detect   multipart field `file` (a photo or a video); ?explain=true adds heatmaps (and masks);
                      ?crop=true scores an image whole as a face crop. Answers what `dfcl detect
                      --json` writes for one file: fake | real | uncertain, calibrated P(fake), the
                      reason, novel, resembles (dfcl.serving.detect, dfcl.measure.trust).
    GET  /v1/model    the model card: name, version, alias, threshold and band, methods learned (when,
                      test AUC, AUC before learning), input size, limits
    GET  /health      200 when a model is loaded, 503 when none is
    GET  /            the web page (dfcl/serving/web/, no CDN: it works offline)
    GET  /openapi.json  the contract (dfcl.serving.api_contract: a model per answer, the bearer scheme);
         /docs          Swagger UI on it, from packaged files (offline)

Bad input never makes a 500: over `api.max_upload_mb`, `api.max_image_pixels` or
`api.max_video_pixels` 413, a type not in `api.allowed_types` or bytes that are not what the name
says 415, a file that cannot be scored (corrupt, no face, too small, video longer than
`api.max_video_seconds`) 422, all with a JSON `error`: every error, FastAPI's 404, 405 and 422
included, is `{"error": "..."}`; every 503 of the app says when to try again (Retry-After).

Admission, in order: uvicorn takes at most `api.max_connections` at once (beyond: 503); a
request waits up to `api.queue_timeout_s` for one of `api.max_concurrent` detection slots (503),
and only then is its upload read (so at most that many are parsed and saved at once; the route
takes the slot before FastAPI parses the form for `file`: api_guards.admitted_route), capped
while it streams and due within `api.upload_timeout_s` (408); the detection has
`api.detect_timeout_s` (503): it stops at its next step and then frees its slot. Uploads go
to a temporary folder deleted after the answer.

Public deployment (see docs/detection.md): `api.token_env` names the environment variable whose token
/v1/* then requires as `Authorization: Bearer`; `api.allowed_hosts` (TrustedHostMiddleware);
every answer carries a CSP without inline script, nosniff and frame-ancestors 'none'.

Hot swap: a thread checks the alias every `api.reload_s` and, when it moved (an approval, a
rollback), loads that version and swaps it in whole. A request takes the model once, when it
starts, so one in flight finishes on the model it started with.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from dfcl.config import ConfigError, Params
from dfcl.ops.registry import alias_version
from dfcl.serving.api_contract import (
    DETECT_REFUSALS,
    UNAUTHORIZED,
    UNAVAILABLE,
    Detection,
    Health,
    ModelInfo,
    NoModel,
    add_docs,
    add_error_handlers,
    add_openapi,
    refusal,
)
from dfcl.serving.api_guards import (
    RequireToken,
    SecurityHeaders,
    TrustedHosts,
    Turn,
    UploadCap,
    admitted_route,
    error,
    is_loopback,
    open_bind,
    retry_after,
)
from dfcl.serving.detect import FaceScorer, in_time
from dfcl.serving.detector import load_mlflow_detector
from dfcl.serving.verdicts import model_card

log = logging.getLogger("dfcl.serving.api")
# Package data (pyproject's package-data), on disk wherever dfcl is installed: a folder to serve.
WEB = Path(resources.files("dfcl.serving") / "web")
LIMITS = ("max_upload_mb", "max_image_pixels", "max_video_pixels", "max_video_seconds", "allowed_types",
          "max_concurrent", "detect_timeout_s")


class ModelHolder:
    """The scorer for the version `alias` points at; `refresh()` swaps in a new one whole."""

    def __init__(self, params: Params):
        self.params = params
        self.name, self.alias = params.mlflow.registered_model, params.api.alias
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
                                            trust_pickle=self.params.api.trust_pickle)
            # MTCNN does not change with the model: the new scorer keeps the loaded one.
            scorer = FaceScorer(detector, self.params, self.current._finder if self.current else None)
            self.current, self.loaded_at = scorer, time.time()
            log.info("serving %s version %s (%s)%s", self.name, detector.info["version"], self.alias,
                     f", was version {served}" if served else "")
            return True

    def watch(self, stop: threading.Event) -> None:
        while not stop.wait(self.params.api.reload_s):
            try:
                self.refresh()
            except Exception as e:  # the registry is briefly unreachable: keep serving, try again
                log.warning("checking alias %r: %s", self.alias, e)


def api_token(params: Params) -> str | None:
    """The access token from the environment variable `api.token_env` names; None: none asked."""
    name = params.api.token_env
    token = os.environ.get(name, "").strip() if name else ""
    return token or None


def create_app(params: Params, holder: ModelHolder | None = None) -> FastAPI:
    """The app; `holder` (default: one following the registry's alias) is what serves."""
    a = params.api
    holder = holder or ModelHolder(params)
    token = api_token(params)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = threading.Event()
        try:
            await run_in_threadpool(holder.refresh)
        except Exception as e:
            log.warning("loading the %s: %s (retrying every %s s)", holder.alias, e, a.reload_s)
        watcher = threading.Thread(target=holder.watch, args=(stop,), daemon=True, name="watch-alias")
        watcher.start()
        app.state.slots = asyncio.Semaphore(a.max_concurrent)
        yield
        stop.set()

    app = FastAPI(title="deepfake-cl detection", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Is this photo or video forged? Answered by the current champion. Every error is "
                              '`{"error": "..."}`; a 503 says when to try again (Retry-After).')
    app.state.holder = holder
    # The last added runs first: headers on every answer, then the Host, the token, the upload.
    app.add_middleware(UploadCap, max_bytes=int(a.max_upload_mb * 2**20), limit_mb=a.max_upload_mb,
                       timeout_s=a.upload_timeout_s)
    if token:
        app.add_middleware(RequireToken, token=token)
    app.add_middleware(TrustedHosts, allowed_hosts=a.allowed_hosts)
    app.add_middleware(SecurityHeaders)
    add_error_handlers(app)
    add_openapi(app, token_required=bool(token))

    @app.get("/health", response_model=Health, summary="Is a model loaded?", operation_id="health",
             responses={503: refusal("no model loaded yet (or the alias is gone)", NoModel, retry=True)})
    def health():
        scorer = holder.current
        if scorer is None:
            return error(503, holder.problem, status="no model", headers=retry_after(a.reload_s))
        return {"status": "ok", "model": scorer.detector.info.get("uri"), "version": scorer.detector.info.get("version")}

    @app.get("/v1/model", response_model=ModelInfo, summary="The model card and the upload limits", operation_id="model",
             responses={**UNAUTHORIZED, **UNAVAILABLE})
    def model():
        scorer = holder.current
        if scorer is None:
            return error(503, holder.problem, headers=retry_after(a.reload_s))
        return JSONResponse({**model_card(scorer.detector), "loaded_at": holder.loaded_at, "reload_s": a.reload_s,
                             "limits": {k: getattr(a, k) for k in LIMITS}})

    async def detect(request: Request, file: UploadFile = File(description="the photo or video (api.allowed_types)"),
                     explain: bool = False, crop: bool = False):
        """Is this photo or video forged? `explain=true` adds Grad-CAM heatmaps (and masks);
        `crop=true` scores an image whole as a face crop."""
        turn: Turn = request.state.turn  # the model and slot Admitted took for this request
        name = Path(file.filename or "upload").name
        suffix = Path(name).suffix.lower()
        if suffix not in a.allowed_types:
            return error(415, f"type {suffix or '(none)'!r} is not accepted; allowed: {', '.join(a.allowed_types)}")
        turn.folder = Path(tempfile.mkdtemp(prefix="dfcl-upload-"))
        path = turn.folder / f"upload{suffix}"
        size = await run_in_threadpool(save_upload, file, path)
        deadline = time.monotonic() + a.detect_timeout_s
        work = asyncio.ensure_future(run_in_threadpool(run_detection, turn.scorer, path, name, explain, crop,
                                                       params, deadline))
        try:
            status, body = await asyncio.wait_for(asyncio.shield(work), a.detect_timeout_s)
        except TimeoutError:
            # The thread stops at its next step (past the deadline); the slot is free when it has.
            turn.end_after(work)
            log.warning("%s: detection over %s s, stopped", name, a.detect_timeout_s)
            return error(503, f"the detection took longer than {a.detect_timeout_s} s "
                              "(api.detect_timeout_s); try a shorter video, or later",
                         headers=retry_after(a.queue_timeout_s))
        log.info("%s %s: %s %s", name, f"{size / 2**20:.1f} MB", status, body.get("verdict"))
        return JSONResponse(body, status_code=status)

    app.router.add_api_route("/v1/detect", detect, methods=["POST"], response_model=Detection,
                             summary="Is this photo or video forged?", operation_id="detect",
                             responses=dict(sorted({**UNAUTHORIZED, **DETECT_REFUSALS}.items())),
                             route_class_override=admitted_route(holder, a))

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(WEB / "index.html")

    app.mount("/static", StaticFiles(directory=WEB), name="static")
    add_docs(app)
    return app


def save_upload(upload: UploadFile, path: Path) -> int:
    """The (already size-capped) upload into `path`, 1 MB at a time; its size."""
    upload.file.seek(0)
    with open(path, "wb") as out:
        shutil.copyfileobj(upload.file, out, 2**20)
    return path.stat().st_size


def run_detection(scorer: FaceScorer, path: Path, name: str, explain: bool, crop: bool, params: Params,
                  deadline: float | None = None) -> tuple[int, dict]:
    a, d = params.api, params.detect
    result = scorer.detect(path, "always" if crop else None, max_seconds=a.max_video_seconds, deadline=deadline)
    result.file = name
    body = result.to_dict(scorer.detector, d.aggregate)
    if result.verdict == "error":
        return result.status or 422, body
    if explain:
        from dfcl.serving.explain import evidence, png_bytes

        in_time(deadline)
        # On the scorer's private copy of the model: Grad-CAM's (and the mask head's) hooks never
        # see another request's plain scoring on the shared one. `mask`: the forged region a model
        # with a mask head predicts; absent without one.
        body["evidence"] = [{"name": n, "p_fake": face["p_fake"], "frame": face.get("frame"),
                             "image": "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode(),
                             **({} if mask is None else
                                {"mask": "data:image/png;base64," + base64.b64encode(png_bytes(mask)).decode()})}
                            for n, img, mask, face in evidence(scorer.explainer, result, d.explain_top_frames)]
    return 200, body


def uvicorn_config(app, params: Params, host: str, port: int, **kwargs):
    """uvicorn's settings for the API: at most `api.max_connections` connections and requests
    at once (beyond them, 503 at once instead of a queue that grows without bound)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, limit_concurrency=params.api.max_connections,
                          timeout_keep_alive=5, **kwargs)


def serve(params: Params, host: str | None = None, port: int | None = None, insecure: bool = False) -> None:
    """Run the API with uvicorn until SIGINT or SIGTERM; either stops it cleanly (requests in
    flight finish), says so, and returns. Beyond loopback only with a token, or `insecure`."""
    import signal

    import uvicorn

    a = params.api
    host, port = host or a.host, port or a.port
    token = api_token(params)
    why = open_bind(host, token, insecure)
    if why:
        raise ConfigError(why)
    print(f"deepfake-cl detection on http://{host}:{port}/ (API schema at /openapi.json); "
          f"following alias {a.alias!r} every {a.reload_s} s; "
          + (f"access token required (from ${a.token_env})" if token else "no access token required"), flush=True)
    if not token and not is_loopback(host):
        print(f"dfcl api: warning: --insecure: listening on {host} without an access token; set "
              f"${a.token_env or 'DFCL_API_TOKEN'} (api.token_env) and put TLS in front "
              "(docs/detection.md: A public deployment)", flush=True)
    # uvicorn shuts down gracefully on these, then raises the signal again for the handler it
    # found: ours records it instead of killing the process mid-exit.
    stopped_by = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stopped_by.append(signal.Signals(signum).name))
    server = uvicorn.Server(uvicorn_config(create_app(params), params, host, port, log_level="info"))
    server.run()
    if not server.started:
        raise ConfigError(f"the API could not start on {host}:{port} (uvicorn said why above: e.g. the port is in use)")
    print(f"dfcl api: stopped ({stopped_by[0] if stopped_by else 'server exited'})", flush=True)
