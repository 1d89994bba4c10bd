"""The client side of the admin API, for `vivait-sip ctl ...` and the features' commands."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Generator
from typing import Any

from .sip.address import parse_hostport

DEFAULT_ADMIN = "127.0.0.1:8081"


class AdminError(Exception):
    """The admin API refused or could not be reached; the message says which."""


def admin_request(address: str, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
    host, port = parse_hostport(address, "--admin")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{host}:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            payload = resp.read().decode()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        raise AdminError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminError(f"cannot reach the admin API at {host}:{port} ({reason}); is the server running?") from None
    return payload if raw else json.loads(payload)


def print_json(data: Any) -> int:
    print(json.dumps(data, indent=2, sort_keys=True))
    return 0


def admin_stream(address: str, path: str, timeout: float = 30.0) -> Generator[bytes, None, None]:
    """GET a streaming endpoint (`/api/trace`): its lines as they arrive, until it ends.
    `timeout` bounds the silence between two lines (the server sends keep-alives)."""
    host, port = parse_hostport(address, "--admin")
    req = urllib.request.Request(f"http://{host}:{port}{path}", method="GET")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        raise AdminError(f"GET {path}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminError(f"cannot reach the admin API at {host}:{port} ({reason}); is the server running?") from None
    with resp:
        try:
            while line := resp.readline():
                yield line
        except (TimeoutError, OSError) as exc:
            raise AdminError(f"the admin API at {host}:{port} stopped answering ({exc})") from None
