"""The client side of the admin API, for `vivait-sip ctl ...` and the features' commands.

Every call carries the admin token (`Authorization: Bearer …`).  It is read from
`--admin-token-file`, else from DATA_DIR/admin-token (`--data-dir`, default
`paths.default_data_dir()`, the server's default); `configure` is called once with the
parsed command line.  Without a token file the call is still made, so the server's 401
says what is missing.  `--admin https://HOST:PORT` talks TLS (`admin.tls`), trusting the
server's self-signed certificate from DATA_DIR/certs when there is one, else the system's
CAs.

The API answers errors as `{"error": "a sentence", "errors": ["path: message", …]}`;
`AdminError` carries the sentence and the lines, which is what `ctl` prints.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import default_data_dir
from .sip.address import parse_hostport

DEFAULT_ADMIN = "127.0.0.1:8081"
TOKEN_FILE_NAME = "admin-token"


class AdminError(Exception):
    """The admin API refused or could not be reached; the message says which.

    `status` is the HTTP status (None: no answer), `errors` the detail lines the server
    sent with it (a config file's errors on reload)."""

    def __init__(self, message: str, status: int | None = None, errors: list[str] | None = None, request: str = "") -> None:
        # str(): "DELETE /api/calls/x: HTTP 404: no call x", for code that tests the status.
        super().__init__(f"{request}: HTTP {status}: {message}" if status is not None else message)
        self.message = message
        self.status = status
        self.errors = errors or []

    def lines(self) -> list[str]:
        """What `ctl` prints: the sentence (with the HTTP status, for scripts and bug
        reports), then each detail line."""
        first = self.message
        if self.status is not None and "(HTTP " not in first:
            first += f" (HTTP {self.status})"
        return [first, *(f"  {line}" for line in self.errors)]


def error_reply(status: int, body: str) -> tuple[str, list[str]]:
    """The sentence and detail lines of an error answer: the JSON `error` (and
    `errors`), else the text itself; never raw JSON."""
    text = body.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        details = data.get("errors")
        lines = [str(d) for d in details] if isinstance(details, list) else []
        return data["error"], lines
    if text.startswith("<") or not text:  # an HTML error page, or nothing
        return f"HTTP {status}", []
    return text.splitlines()[0][:500], []


@dataclass
class Credentials:
    data_dir: str = ""  # "": the default data directory (paths.default_data_dir)
    token_file: str | None = None  # explicit: must be readable

    @property
    def directory(self) -> Path:
        return Path(self.data_dir) if self.data_dir else default_data_dir()

    def token_path(self) -> Path:
        return Path(self.token_file) if self.token_file else self.directory / TOKEN_FILE_NAME

    def token(self) -> str | None:
        path = self.token_path()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            if self.token_file:
                raise AdminError(f"cannot read the admin token file {path}: {exc.strerror}") from None
            return None
        if not token:
            raise AdminError(f"the admin token file {path} is empty")
        return token


_credentials = Credentials()


def configure(data_dir: str | None = None, token_file: str | None = None) -> None:
    """Where the token comes from (the parsed `--data-dir` and `--admin-token-file`)."""
    global _credentials
    _credentials = Credentials(data_dir or "", token_file)


def _url_and_context(address: str) -> tuple[str, ssl.SSLContext | None]:
    scheme = "http"
    if "://" in address:
        scheme, _, address = address.partition("://")
        if scheme not in ("http", "https"):
            raise AdminError(f"--admin {scheme}://…: only http and https")
    host, port = parse_hostport(address, "--admin")
    shown = f"[{host}]" if ":" in host else host
    if scheme == "http":
        return f"http://{shown}:{port}", None
    own = _credentials.directory / "certs" / "server.crt"
    if own.exists():
        # Exactly the server's own self-signed certificate as the one trust anchor: a
        # pinned certificate, so its names need not match the address used.
        context = ssl.create_default_context(cafile=str(own))
        context.check_hostname = False
    else:
        context = ssl.create_default_context()
    return f"https://{shown}:{port}", context


def admin_request(address: str, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
    payload = "".join(chunk.decode() for chunk in _call(address, method, path, body, timeout=10, whole=True))
    return payload if raw else json.loads(payload)


def admin_stream(address: str, path: str) -> Iterator[bytes]:
    """GET a streaming admin path (`ctl mdflow debug`), line by line."""
    return _call(address, "GET", path, None, timeout=3600, whole=False)


def _call(address: str, method: str, path: str, body: Any, *, timeout: float, whole: bool) -> Iterator[bytes]:
    base, context = _url_and_context(address)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    token = _credentials.token()
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout, context=context)
    except urllib.error.HTTPError as exc:
        message, lines = error_reply(exc.code, exc.read().decode(errors="replace"))
        if exc.code == 401 and token is None:
            message += (
                f" (HTTP 401; no token at {_credentials.token_path()}: give the server's data directory "
                "with --data-dir DIR, or --admin-token-file FILE)"
            )
        raise AdminError(message, exc.code, lines, f"{method} {path}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminError(f"cannot reach the admin API at {base.partition('://')[2]} ({reason}); is the server running?") from None
    return _read(resp, whole, base)


def _read(resp: Any, whole: bool, base: str) -> Iterator[bytes]:
    try:
        with resp:
            if whole:
                yield resp.read()
            else:
                yield from resp
    except OSError as exc:
        raise AdminError(f"the admin API at {base.partition('://')[2]} went away ({exc})") from None


def print_json(data: Any) -> int:
    print(json.dumps(data, indent=2, sort_keys=True))
    return 0
