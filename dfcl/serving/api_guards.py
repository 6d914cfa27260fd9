"""The REST API's guards, as ASGI middleware around the app (dfcl.serving.api): a cap on the upload's size
and the time it may take to arrive, a bearer token on /v1/*, the Host allow-list, and security headers
on every answer; the admission of a detection (a model and a slot before its upload is read:
`admitted_route`); and, before it listens, no address beyond loopback without a token (`open_bind`)."""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import shutil
import socket
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from dfcl.config import ApiConfig

if TYPE_CHECKING:
    from dfcl.serving.detect import FaceScorer

log = logging.getLogger("dfcl.serving.api")

# The page's own files only: no inline script or style, no other origin, never inside a frame.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one ("" and 0.0.0.0 are every interface)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: what it resolves to
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def open_bind(host: str, token: str | None, insecure: bool) -> str | None:
    """Why the API must not listen on `host`, or None. The Host allow-list is no access control
    (a client sends `Host: 127.0.0.1`): beyond loopback only a token is, unless the operator
    says --insecure (e.g. behind a proxy that authenticates)."""
    if token or insecure or is_loopback(host):
        return None
    return (f"refusing to listen on {host or 'every interface'} without an access token: anyone who reaches it could "
            "use it. Set the token's environment variable (api.token_env, e.g. DFCL_API_TOKEN), or pass --insecure "
            "(docs/detection.md: A public deployment)")


def error(code: int, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    """The API's one error shape: {"error": message} (and `extra` fields)."""
    return JSONResponse({"error": message, **extra}, status_code=code, headers=headers)


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header every 503 of the app carries: whole seconds, at least 1."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class TrustedHosts:
    """Starlette's TrustedHostMiddleware (400 for a Host not in `allowed_hosts`), its refusal in
    the API's error shape instead of plain text."""

    def __init__(self, app, allowed_hosts: list[str]):
        self.app = app
        self.guard = TrustedHostMiddleware(self.through, allowed_hosts=allowed_hosts)

    async def through(self, scope, receive, send):
        await self.app(scope, receive, scope.pop("dfcl.send"))

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        scope["dfcl.send"] = send  # what the app answers on, once the Host passed
        refused = []

        async def refuse(message):  # reached only when the guard answers itself
            refused.append(message)

        await self.guard(scope, receive, refuse)
        if refused:
            scope.pop("dfcl.send", None)
            if refused[0].get("status") == 400:
                return await error(400, "this server does not answer for that Host header "
                                        "(api.allowed_hosts)")(scope, receive, send)
            for message in refused:  # e.g. a redirect to the www. name
                await send(message)


class UploadCap:
    """413 for a request body over the cap: at once when Content-Length says so, else as soon as
    the streamed body passes it (the multipart parser reads through this). 408 when the body has
    not all arrived `timeout_s` after the route started reading it (a slow or stalled client
    would hold a detection slot)."""

    def __init__(self, app, max_bytes: int, limit_mb: float, timeout_s: float):
        self.app, self.max_bytes, self.limit_mb, self.timeout_s = app, max_bytes, limit_mb, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            response = error(413, f"upload of {int(length) / 2**20:.1f} MB is over the limit of {self.limit_mb} MB")
            return await response(scope, receive, send)
        seen, due, complete = 0, None, False

        async def capped():
            nonlocal seen, due, complete
            if complete:  # after the body: e.g. waiting for a disconnect, which has no deadline
                return await receive()
            loop = asyncio.get_running_loop()
            due = due or loop.time() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(due - loop.time(), 0))
            except TimeoutError:
                raise HTTPException(408, f"the upload did not arrive within {self.timeout_s} s (api.upload_timeout_s)")
            seen += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if seen > self.max_bytes:
                raise HTTPException(413, f"upload is over the limit of {self.limit_mb} MB")
            return message

        await self.app(scope, capped, send)


class RequireToken:
    """/v1/* answers only requests with `Authorization: Bearer <token>` (401 otherwise); the page,
    its files and /health stay open (the page asks for the token)."""

    def __init__(self, app, token: str):
        self.app, self.expected = app, b"Bearer " + token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):  # constant time: no guessing it byte by byte
                response = error(401, "this server needs an access token: send Authorization: Bearer <token>")
                response.headers["WWW-Authenticate"] = "Bearer"
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class SecurityHeaders:
    """SECURITY_HEADERS on every answer."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Turn:
    """A request's detection slot and its upload folder. Both go back when the request is done,
    or, when its detection outlives the answer (past its deadline), when that thread stops."""

    def __init__(self, slots: asyncio.Semaphore, scorer: FaceScorer):
        self.slots, self.scorer, self.folder, self.handed_over = slots, scorer, None, False

    def end(self, work=None) -> None:
        if work is not None and not work.cancelled():
            work.exception()  # retrieved: a deadline's TimeoutError is expected
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.slots.release()

    def end_after(self, work) -> None:
        self.handed_over = True
        work.add_done_callback(self.end)


def admitted_route(holder, a: ApiConfig) -> type[APIRoute]:
    """A route whose request first takes the model (once: a swap does not touch it) and a
    detection slot, waiting up to `api.queue_timeout_s`, and only then has its upload read:
    FastAPI parses the form for the `file` argument before the endpoint runs, so this comes
    before FastAPI's handler. The form is read here, at most one file and four fields. `holder`:
    the app's dfcl.serving.api.ModelHolder; `a`: the api section."""

    class Admitted(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def admit(request: Request):
                scorer = holder.current
                if scorer is None:
                    return error(503, holder.problem, headers=retry_after(a.reload_s))
                slots = request.app.state.slots
                try:
                    await asyncio.wait_for(slots.acquire(), a.queue_timeout_s)
                except TimeoutError:
                    return error(503, f"busy: {a.max_concurrent} detections running; try again",
                                 headers=retry_after(a.queue_timeout_s))
                request.state.turn = turn = Turn(slots, scorer)
                try:
                    try:  # the upload is read only now, holding the slot (capped by UploadCap)
                        form = await request.form(max_files=1, max_fields=4)
                    except ClientDisconnect:
                        log.info("client went away during the upload")
                        return error(400, "the upload was interrupted")
                    try:
                        return await handler(request)  # the form is Starlette's cached one
                    finally:
                        await form.close()
                finally:
                    if not turn.handed_over:
                        turn.end()

            return admit

    return Admitted
