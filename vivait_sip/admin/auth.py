"""Who may talk to the admin API: a bearer token, the right Host, no foreign Origin, JSON.

- The token is made on first start in DATA_DIR/admin-token (or `admin.token_file`), mode
  0600; `vivait-sip ctl` and `vivait-sip user` read it there.  Every call needs
  `Authorization: Bearer TOKEN` (compared in constant time); `/metrics` too unless
  `admin.metrics_public`.  Missing or wrong: 401 with a JSON error saying which.
- `Host` must name the bound address (`localhost` too on loopback, any IP literal when
  bound to a wildcard address) or one of `admin.allowed_hosts`: a DNS-rebinding page
  sends its own name (403).
- A request with an `Origin` other than this API's own scheme://host:port (or with
  `Sec-Fetch-Site: cross-site/same-site`) is a browser acting for some page: refused (403).
  `ctl`, curl and Prometheus send neither.
- A state-changing call (POST, PUT, PATCH, DELETE) with a body must say
  `Content-Type: application/json` (415): a cross-site form or `text/plain` POST cannot.

There are no bans on wrong tokens: a 256-bit token cannot be guessed, and a ban on the
source address would let any local user lock the operator's `ctl` out of a loopback port.
Wrong tokens are logged (throttled).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import stat
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from ..config import AdminConfig
from ..logs import throttle
from ..store.private import private_dir, write_private

log = logging.getLogger("vivait_sip.admin")

TOKEN_FILE_NAME = "admin-token"
TOKEN_BYTES = 32
STATE_CHANGING = frozenset(("POST", "PUT", "PATCH", "DELETE"))
WILDCARDS = frozenset(("", "0.0.0.0", "::", "*"))
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware


class TokenError(Exception):
    """The token file cannot be read or made (a start-up error)."""


def token_path(data_dir: Path, token_file: str | None) -> Path:
    return Path(token_file) if token_file else data_dir / TOKEN_FILE_NAME


def ensure_token(path: Path) -> str:
    """The token in `path`, made (0600) when the file does not exist yet."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
        if path.parent.name and not path.parent.exists():
            private_dir(path.parent)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        try:
            write_private(path, (token + "\n").encode())
        except OSError as exc:
            raise TokenError(f"cannot write the admin token file {path}: {exc.strerror}") from None
        log.info("event=admin_token_created path=%s", path)
        return token
    except OSError as exc:
        raise TokenError(f"cannot read the admin token file {path}: {exc.strerror}") from None
    if len(text) < 16:
        raise TokenError(f"the admin token in {path} is too short (at least 16 characters)")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("event=admin_token_readable path=%s mode=%o hint=chmod_600", path, mode)
    return text


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """Which `Host` (and `Origin`) names are this admin API."""

    def __init__(self, bound_host: str, extra: Iterable[str] = ()) -> None:
        self.wildcard = bound_host in WILDCARDS
        names = {n.lower().strip("[]") for n in extra}
        if not self.wildcard:
            names.add(bound_host.lower().strip("[]"))
        if self.wildcard or is_loopback(bound_host):
            names.add("localhost")
        self.names = frozenset(names)

    def accepts(self, hostname: str | None) -> bool:
        if not hostname:
            return False
        name = hostname.lower().strip("[]").rstrip(".")
        if name in self.names:
            return True
        if self.wildcard:
            try:
                ipaddress.ip_address(name)
                return True  # an IP literal cannot be a rebinding name
            except ValueError:
                return False
        return False


def _host_of_header(value: str) -> str | None:
    try:
        return urlsplit("//" + value).hostname
    except ValueError:
        return None


def _same_origin(origin: str, host: str) -> bool:
    """The page making the request was served by this very API (scheme://Host): never the
    case in practice (the API serves no pages), so any Origin from a browser is refused
    unless it names exactly the host and port the request went to."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc.lower() == host.strip().lower()


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _peer(request: web.Request) -> str:
    return request.remote or "?"


def make_middleware(token: str, hosts: HostPolicy, *, metrics_public: bool) -> Middleware:
    expected = token.encode()

    @web.middleware
    async def admin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not hosts.accepts(_host_of_header(request.headers.get("Host", ""))):
            throttle.log(log, logging.WARNING, "admin_refused", "event=admin_refused peer=%s reason=foreign_host", _peer(request))
            return _error(403, "Host header does not name this admin API (DNS rebinding?); add the name to admin.allowed_hosts if it is yours")
        origin = request.headers.get("Origin")
        if origin is not None and not _same_origin(origin, request.headers.get("Host", "")):
            throttle.log(log, logging.WARNING, "admin_refused", "event=admin_refused peer=%s reason=foreign_origin", _peer(request))
            return _error(403, "cross-origin request refused: the admin API is not for web pages")
        if request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
            throttle.log(log, logging.WARNING, "admin_refused", "event=admin_refused peer=%s reason=cross_site", _peer(request))
            return _error(403, "cross-site request refused: the admin API is not for web pages")
        if not (metrics_public and request.path == "/metrics"):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                return _error(
                    401,
                    "admin token required: send 'Authorization: Bearer TOKEN' with the token from the "
                    "server's data directory (DATA_DIR/admin-token, or admin.token_file)",
                    **{"WWW-Authenticate": 'Bearer realm="vivait-sip admin"'},
                )
            if not hmac.compare_digest(given.strip().encode(), expected):
                throttle.log(log, logging.WARNING, "admin_auth_failed", "event=admin_auth_failed peer=%s reason=wrong_token", _peer(request))
                return _error(401, "wrong admin token", **{"WWW-Authenticate": 'Bearer realm="vivait-sip admin", error="invalid_token"'})
        has_body = request.body_exists or "Content-Type" in request.headers
        if request.method in STATE_CHANGING and has_body and request.content_type != "application/json":
            return _error(415, f"{request.method} bodies must be application/json (got {request.content_type or 'none'})")
        return await handler(request)

    return admin_guard


def protect_admin_app(app: web.Application, settings: AdminConfig, data_dir: Path) -> str:
    """Make (or read) the token and put the guard in front of every admin route; returns
    the token file's path."""
    path = token_path(data_dir, settings.token_file)
    token = ensure_token(path)
    app.middlewares.append(make_middleware(token, HostPolicy(settings.host, settings.allowed_hosts), metrics_public=settings.metrics_public))
    return str(path)


def exposure_warning(host: str, port: int, tls: bool) -> str | None:
    """The loud line for an admin API reachable from other hosts (None on loopback)."""
    if is_loopback(host):
        return None
    where = f"{'[' + host + ']' if ':' in host else host}:{port}"
    if tls:
        return (
            f"WARNING: the admin API listens on {where}, reachable from other hosts (TLS on, token "
            "required): firewall it to the management network"
        )
    return (
        f"WARNING: the admin API listens on {where}, reachable from other hosts, WITHOUT TLS: the "
        "token crosses the network in clear. Set admin.tls true (it uses the server certificate), "
        "or keep it on 127.0.0.1 and use an SSH tunnel"
    )
