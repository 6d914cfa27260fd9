"""The REST API's contract (dfcl.serving.api): the answers' pydantic models, the one error shape
every refusal takes (`{"error": "..."}`, FastAPI's own 404, 405 and 422 included), the bearer
security scheme in /openapi.json, and /docs: Swagger UI from the swagger-ui-bundle-v2 package's
files, served here (no CDN), under the page's CSP (no inline script: its start is web/docs.js).

The models describe what the routes send; the routes build their answers as dicts (the same
ones `dfcl detect --json` writes), so a field a model does not name still reaches the client.
tests/test_api.py validates /openapi.json and every answer against it."""
from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from dfcl.serving.api_guards import error

Verdict = Literal["fake", "real", "uncertain"]
Kind = Literal["photo", "face crop", "video", "unknown"]
SCHEME = "bearer"  # the name of the security scheme in /openapi.json


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # more fields may come; a client ignores what it does not know


class Error(Open):
    """Every answer that is not a 2xx: what went wrong, in one line."""
    error: str = Field(description="why the request was refused or failed, in words")


class NoModel(Error):
    status: Literal["no model"]


class Resembles(Open):
    method: str = Field(description="the learned forgery method a fake is nearest to (a hint, not proof)")
    similarity: float = Field(description="for a face, its share of the nearness; for a video, the share of its "
                                          "fake frames that resemble this method most")
    frames: int | None = Field(None, description="a video's fake frames that resemble a learned method")


class Face(Open):
    """One face: of a photo every face found, of a video the most confident face of each sampled frame."""
    box: list[float] = Field(min_length=4, max_length=4, description="x1, y1, x2, y2 in pixels of the image or frame")
    score: float | None = Field(description="the face finder's confidence; null for a crop scored whole")
    p_fake: float = Field(description="calibrated P(fake) of this face")
    verdict: Verdict
    novelty: float | None = None
    novel: bool | None = Field(None, description="unlike the faces the model learned")
    resembles: Resembles | None = None
    withheld: Verdict | None = Field(None, description="the answer its P(fake) gave, withheld (see why)")
    why: str | None = Field(None, description="why its answer was withheld")
    frame: int | None = Field(None, description="a video's frame index")
    time_s: float | None = None


class Frame(Open):
    """A sampled frame of a video: its P(fake), or null with the reason when it has no usable face."""
    frame: int
    time_s: float
    p_fake: float | None
    verdict: Verdict | None = None
    reason: str | None = None
    box: list[float] | None = None
    score: float | None = None


class VideoInfo(Open):
    frames: int | None
    fps: float | None
    seconds: float | None
    width: int
    height: int
    warning: str | None = Field(None, description="e.g. truncated: scored on the frames that could be read")


class Learned(Open):
    method: str
    learned_at: str | None
    test_auc: float | None
    auc_before_learning: float | None
    synthetic: bool = Field(False, description="drawn, not photographed (the demo's data)")


class ModelCard(Open):
    """Which model answered and what to expect of it."""
    name: str | None
    version: str | None
    alias: str | None
    uri: str | None
    architecture: str | None
    image_size: int
    threshold: float
    methods: list[str]
    learned: list[Learned]
    auc_on_unlearned: float | None
    calibrated: bool
    band: list[float] = Field(min_length=2, max_length=2,
                              description="[lo, hi]: P(fake) below lo is answered real, at or above hi fake")
    precision: float | None
    measured_on: str | None
    measured: dict[str, Any]
    measured_unseen: dict[str, Any]
    foreign_reals: list[str] = Field(default_factory=list, description="real photos of other kinds a 'fake' answer is "
                                     "checked against (trust.foreign_reals): not unseen for this model")
    synthetic_only: bool = Field(False, description="it learned only synthetic demo faces: on real photos nothing was "
                                 "measured")


class Limits(Open):
    max_upload_mb: float
    max_image_pixels: int
    max_video_pixels: int
    max_video_seconds: float
    allowed_types: list[str]
    max_concurrent: int
    detect_timeout_s: float


class ModelInfo(ModelCard):
    """GET /v1/model: the card, when it was loaded, and the limits an upload must keep."""
    loaded_at: float | None = Field(description="Unix time the served version was loaded")
    reload_s: float
    limits: Limits


class Health(BaseModel):
    status: Literal["ok"]
    model: str | None
    version: str | None


class Evidence(Open):
    name: str
    p_fake: float
    frame: int | None
    image: str = Field(description="Grad-CAM heatmap over the face, a data:image/png;base64 URL")
    mask: str | None = Field(None, description="the forged region a model with a mask head predicts (data URL)")


class Detection(Open):
    """POST /v1/detect: one file's verdict, what `dfcl detect --json` writes for it."""
    file: str = Field(description="the name it was sent as")
    kind: Kind
    verdict: Verdict
    p_fake: float = Field(description="calibrated P(fake) of the file (a photo: its most suspicious face; a video: "
                                      "its frames' by detect.aggregate)")
    threshold: float
    model: ModelCard
    reason: str = Field(description="why this verdict, in words: how sure, and where that was measured")
    why: str | None = Field(None, description="an answer withheld: what about the face is unfamiliar, in a few words")
    calibrated: bool
    band: list[float] = Field(min_length=2, max_length=2, description="[lo, hi] this verdict was answered by: the "
                              "model's, or for a face smaller than its input the band fit at that face's size")
    measured_at: int | None = Field(None, description="a face smaller than the model's input: the size (px across) "
                                    "its band was fit at; null: the model's own band")
    measured_on: str | None = Field(None, description="where that band's promise was measured, in words")
    novel: bool | None
    resembles: Resembles | None = Field(description="a fake's nearest learned method")
    faces: list[Face] = []
    video: VideoInfo | None = None
    aggregate: str | None = None
    frames: list[Frame] | None = Field(None, description="a video's timeline")
    seconds: float
    evidence: list[Evidence] | None = Field(None, description="with ?explain=true")


class Failure(Error):
    """A file that cannot be scored: `error` says why; the fields of its verdict row come along when
    the file got that far (its kind, the model)."""
    file: str | None = None
    kind: Kind | None = None
    verdict: Literal["error"] | None = None
    model: ModelCard | None = None


def refusal(description: str, model=Error, retry: bool = False) -> dict:
    out = {"model": model, "description": description}
    if retry:
        out["headers"] = {"Retry-After": {"description": "seconds to wait before trying again",
                                          "schema": {"type": "integer"}}}
    return out


UNAUTHORIZED = {401: refusal("no or wrong access token (only when the server has one: api.token_env)")}
UNAVAILABLE = {503: refusal("no model loaded yet (or the alias is gone)", retry=True)}
DETECT_REFUSALS = {
    400: refusal("the upload was interrupted, or is not a valid multipart form"),
    408: refusal("the upload did not arrive within api.upload_timeout_s"),
    413: refusal("over api.max_upload_mb, or its pixels over api.max_image_pixels / api.max_video_pixels", Failure),
    415: refusal("a type not in api.allowed_types, or bytes that are not what the name says", Failure),
    422: refusal("no field 'file', or a file that cannot be scored (corrupt, no face, too small, a video over "
                 "api.max_video_seconds)", Failure),
    503: refusal("no model loaded yet; busy (every detection slot taken for api.queue_timeout_s); or the detection "
                 "ran over api.detect_timeout_s", retry=True),
}


def validation_message(e: RequestValidationError) -> str:
    """FastAPI's list of problems in one line; a missing upload in the page's words."""
    problems = []
    for p in e.errors():
        loc = [str(x) for x in p.get("loc", ())]
        if loc[:2] == ["body", "file"]:
            problems.append("send the photo or video as the multipart form field 'file'")
        else:
            problems.append(f"{' '.join(loc)}: {p.get('msg', 'invalid')}")
    return "; ".join(dict.fromkeys(problems)) or "invalid request"


def add_error_handlers(app: FastAPI) -> None:
    """One shape for every error: {"error": "..."}, FastAPI's and Starlette's own included."""

    @app.exception_handler(StarletteHTTPException)  # HTTPException, and the router's 404 and 405
    async def http_error(request: Request, e: StarletteHTTPException):
        response = error(e.status_code, str(e.detail))
        response.headers.update(e.headers or {})  # 405's Allow, 401's WWW-Authenticate
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return error(422, validation_message(e))

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception):  # the traceback goes to the log; the client gets one line
        return error(500, f"internal error ({type(e).__name__}); the server's log has the details")


def add_openapi(app: FastAPI, token_required: bool) -> None:
    """/openapi.json with the bearer scheme (required on /v1/* when the server has a token), and
    no schema of FastAPI's validation error (its 422 answers are Error)."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})[SCHEME] = {
            "type": "http", "scheme": "bearer",
            "description": "the token in the environment variable api.token_env names, when the server has one"}
        for path, operations in schema["paths"].items():
            if path.startswith("/v1/"):
                for operation in operations.values():
                    # Without a token the server asks for none: {} says no credential is also accepted.
                    operation["security"] = [{SCHEME: []}] if token_required else [{}, {SCHEME: []}]
        for unused in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>deepfake-cl detection: API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body>
</html>
"""


def add_docs(app: FastAPI) -> bool:
    """/docs: Swagger UI from the package's files (offline). False when the package is missing."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return False
    app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return HTMLResponse(DOCS_PAGE)

    return True
