"""The kiosk's local set-up page (``[web]``, ``--web HOST:PORT``): Starlette on uvicorn.

Why Starlette and uvicorn: both small, well kept and pure Python (uvicorn
with h11), so they install on a Jetson's Python 3.10 without a compiler or
torch; Starlette's StreamingResponse serves MJPEG and cancels the stream when
the viewer leaves. The server runs its own event loop in its own thread and
never touches the frame loop: it reads what the loop handed to the
web_hub.LiveHub, and draws and encodes there.

    GET  /                    the page (static/index.html: live view, events, status)
    GET  /stream.mjpg         the live view, MJPEG at most [web] stream_fps
    GET  /frame.jpg           the latest live-view frame (for pages that poll)
    GET  /api/status          bundle, backend, source, fps, latency, MQTT, outbox, update
    GET  /api/events          the last events as published, with links to snapshot and JSON
    GET  /api/events/{id}     one event as published
    GET  /events/{id}.jpg     the view the event's decision used
    POST /api/relearn         re-learn the empty counter
    GET  /metrics             Prometheus (with [metrics] prometheus)

Access (``access``): with a token (env ``[web] token_env``, KIOSK_WEB_TOKEN by
default) every request must carry it, as ``Authorization: Bearer TOKEN`` or
``?token=TOKEN`` (what the page's own requests use), compared in constant
time; without one the page is read-only and served on loopback only
(config.WebConfig.check refuses another bind at start).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.web_hub import LiveHub
from models.errors import ConfigError

__all__ = ["WebContext", "WebServer", "access", "create_app"]

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
BOUNDARY = "kioskframe"


def access(method: str, given: str | None, token: str | None) -> int:
    """The HTTP status a request gets before its handler runs: 200 to go on,
    401 without the right token (when one is set), 403 for a write when no
    token is set (writes always need one)."""
    if token is not None:
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            return 401
        return 200
    return 403 if method not in ("GET", "HEAD") else 200


@dataclass
class WebContext:
    """What the page reads and may ask: the hub, a status snapshot, the
    re-learn request, the Prometheus registry (None: no /metrics) and the token."""

    hub: LiveHub
    status: Callable[[], dict[str, Any]]
    relearn: Callable[[], bool]
    registry: Any = None
    token: str | None = None


def _given_token(request: Any) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query_params.get("token")


def create_app(ctx: WebContext) -> Any:
    """The Starlette application over ``ctx``."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    page = PAGE.read_text(encoding="utf-8")
    hub = ctx.hub

    async def index(request: Any) -> Any:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def stream(request: Any) -> Any:
        async def frames() -> Any:
            with hub.watching():
                seq = hub.fresh_after()
                while not hub.closed:
                    got = await asyncio.to_thread(hub.wait_frame, seq, 1.0)
                    if got is None:
                        continue
                    seq, jpeg = got
                    yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                           f"Content-Length: {len(jpeg)}\r\n\r\n").encode() + jpeg + b"\r\n"

        return StreamingResponse(frames(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers={"Cache-Control": "no-store"})

    async def frame(request: Any) -> Any:
        hub.poll()
        got = await asyncio.to_thread(hub.wait_frame, hub.fresh_after(), 1.0)
        if got is None:
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        return Response(got[1], media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def status(request: Any) -> Any:
        body = await asyncio.to_thread(ctx.status)
        return JSONResponse({**body, "view": hub.words(), "viewers": hub.viewers})

    async def events(request: Any) -> Any:
        out = []
        for e in hub.events():
            eid = e["event"]["event_id"]
            out.append({"event": e["event"], "json": f"/api/events/{eid}",
                        "snapshot": f"/events/{eid}.jpg" if e["snapshot"] else None})
        return JSONResponse({"events": out})

    async def one_event(request: Any) -> Any:
        payload = hub.event_payload(request.path_params["event_id"])
        if payload is None:
            return JSONResponse({"error": "no such event (only the last are kept)"}, status_code=404)
        return JSONResponse(payload)

    async def snapshot(request: Any) -> Any:
        data = await asyncio.to_thread(hub.snapshot_jpeg, request.path_params["event_id"])
        if data is None:
            return JSONResponse({"error": "no snapshot for this event"}, status_code=404)
        return Response(data, media_type="image/jpeg")

    async def relearn(request: Any) -> Any:
        if not ctx.relearn():
            return JSONResponse({"error": "presence is off: there is no empty counter to learn"},
                                status_code=409)
        return JSONResponse({"relearn": "requested"}, status_code=202)

    async def metrics(request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = await asyncio.to_thread(generate_latest, ctx.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    routes = [Route("/", index), Route("/stream.mjpg", stream), Route("/frame.jpg", frame),
              Route("/api/status", status), Route("/api/events", events),
              Route("/api/events/{event_id}", one_event),
              Route("/events/{event_id}.jpg", snapshot),
              Route("/api/relearn", relearn, methods=["POST"])]
    if ctx.registry is not None:
        routes.append(Route("/metrics", metrics))
    return _Guard(Starlette(routes=routes), ctx.token)


class _Guard:
    """ASGI middleware: ``access`` before every HTTP request (a plain ASGI
    wrapper rather than BaseHTTPMiddleware, which gets in the way of streams)."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.requests import Request
        from starlette.responses import JSONResponse

        if scope["type"] == "http":
            request = Request(scope)
            code = access(request.method, _given_token(request), self.token)
            if code != 200:
                msg = ("a valid token is needed" if code == 401 else
                       "writes need a token: start the kiosk with KIOSK_WEB_TOKEN set")
                headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
                await JSONResponse({"error": msg}, status_code=code, headers=headers)(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


class WebServer:
    """uvicorn serving ``app`` on its own event loop in a daemon thread. The
    socket is bound in the constructor, so a taken port is a ConfigError at
    start, before the frame loop runs."""

    def __init__(self, host: str, port: int, app: Any, hub: LiveHub | None = None) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise ConfigError(f"web: cannot serve on {host}:{port} ({exc.strerror})") from None
        self.host, self.port = host, self.sock.getsockname()[1]
        self.hub = hub
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name="web", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> WebServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        log.info("page on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self.hub is not None:
            self.hub.close()   # ends the live-view streams
        self.server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(1.0)
        self.sock.close()
