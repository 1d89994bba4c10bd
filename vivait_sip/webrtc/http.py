"""The webfon's HTTP side: security headers, the Origin check on `/sip`, static files
and the REST API under `/api/` (login, logout, session, config, logo).

Everything here runs in worker 0 (it holds the HTTPS server).  The feature
(`feature.WebrtcFeature`) owns the sessions; these handlers only read requests and
write answers.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..logs import throttle

if TYPE_CHECKING:
    from .feature import WebrtcFeature

log = logging.getLogger("vivait_sip.webrtc")

CLIENT_KEY = "vivait_sip.client"  # what the HTTP server admitted (transport/httpserver.py)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 4096
LOGO_TYPES = {".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def client_of(request: web.Request) -> str:
    client = request.get(CLIENT_KEY)
    if client is not None:
        return str(client[0])
    return request.remote or "0.0.0.0"


def is_loopback_host(host: str) -> bool:
    """`localhost`, `*.localhost` or a loopback address (a host without its port)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_of(request: web.Request) -> str:
    host = request.host or ""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if ":" in host else host


def own_origin(request: web.Request) -> str:
    scheme = "https" if request.secure else "http"
    return f"{scheme}://{(request.host or '').lower()}"


def origin_allowed(request: web.Request, allowed: list[str]) -> bool:
    """No Origin (not a browser: a SIP phone over WSS), the page's own, or a configured one."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    origin = origin.lower().rstrip("/")
    return origin == own_origin(request) or origin in allowed


def security_middleware(feature: WebrtcFeature) -> Any:
    """Headers on every answer of the HTTPS app; the Origin check on `/sip` and `/api/`
    writes; a `/sip` WebSocket carrying a session cookie counts as that session's."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        settings = feature.settings
        path = request.path
        if path == "/sip":
            if not origin_allowed(request, settings.allowed_origins):
                throttle.log(log, logging.WARNING, "webfon_origin_refused",
                             "event=webfon_origin_refused path=/sip origin=%s client=%s",
                             request.headers.get("Origin"), client_of(request))
                feature.counters["origin_refused"] += 1
                return _secure(request, web.json_response({"error": "origin not allowed"}, status=403), feature)
            session = feature.session_of(request) if request.headers.get("Origin") is not None else None
            if session is not None:
                feature.ws_opened(session)
                try:
                    return await handler(request)
                finally:
                    feature.ws_closed(session)
            return await handler(request)
        cross = not origin_allowed(request, settings.allowed_origins) or request.headers.get("Sec-Fetch-Site") == "cross-site"
        if path.startswith("/api/") and request.method not in ("GET", "HEAD", "OPTIONS") and cross:
            feature.counters["origin_refused"] += 1
            return _secure(request, web.json_response({"error": "cross-origin request refused"}, status=403), feature)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        return _secure(request, response, feature)

    return middleware


def _secure(request: web.Request, response: web.StreamResponse, feature: WebrtcFeature) -> web.StreamResponse:
    headers = response.headers
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "no-referrer"
    headers["Permissions-Policy"] = "microphone=(self), camera=(), geolocation=()"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if request.secure and not is_loopback_host(_host_of(request)):
        headers["Strict-Transport-Security"] = "max-age=31536000"
    if request.path.startswith("/api/"):
        headers["Cache-Control"] = "no-store"
    return response


async def read_json(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text=json.dumps({"error": "send application/json"}), content_type="application/json")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY, request.content_length)
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY, len(raw))
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": "the body is not JSON"}), content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "the body must be a JSON object"}), content_type="application/json")
    return body


def web_root(configured: str | None) -> Path:
    """The static files: `webrtc.web_root`, else the project's `web/` (next to the package)."""
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "web"


def add_routes(app: web.Application, feature: WebrtcFeature) -> None:
    root = web_root(feature.settings.web_root)
    app.middlewares.append(security_middleware(feature))

    async def index(request: web.Request) -> web.StreamResponse:
        page = root / "index.html"
        if not page.is_file():
            return web.Response(status=503, text="the webfon is not installed here (web/index.html missing)\n")
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def static(request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        if not rel or any(part in ("", ".", "..") or part.startswith(".") for part in rel.split("/")):
            raise web.HTTPNotFound()
        path = (root / rel).resolve()
        if not path.is_relative_to(root.resolve()) or not path.is_file():
            if rel.startswith("vendor/"):
                return web.Response(status=404, text="not installed: run ./scripts/install.sh (it fetches sip.js)\n")
            raise web.HTTPNotFound()
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix in (".js", ".mjs"):
            kind = "text/javascript"
        return web.FileResponse(path, headers={"Content-Type": kind, "Cache-Control": "no-cache"})

    async def logo(request: web.Request) -> web.StreamResponse:
        configured = feature.settings.logo
        if configured:
            path = Path(configured)
            kind = LOGO_TYPES.get(path.suffix.lower())
            if kind is not None and path.is_file():
                return web.FileResponse(path, headers={"Content-Type": kind, "Cache-Control": "no-cache"})
        path = root / "logo.svg"
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": "image/svg+xml", "Cache-Control": "no-cache"})

    app.router.add_get("/", index)
    app.router.add_get("/web/{path:.+}", static)
    app.router.add_get("/api/logo", logo)
    app.router.add_get("/api/config", feature.api_config)
    app.router.add_get("/api/session", feature.api_session)
    app.router.add_post("/api/login", feature.api_login)
    app.router.add_post("/api/logout", feature.api_logout)

