"""How these tests reach a server's admin API: its address, and its token once the admin
API requires one (the harness then offers `ctl_args` and `admin_headers`)."""

from __future__ import annotations

import urllib.request
from typing import Any

from harness import Server


def ctl_prefix(server: Server) -> list[str]:
    """`ctl --admin ADDRESS [...]` for this server, as `vivait-sip` arguments."""
    return list(getattr(server, "ctl_args", ["ctl", "--admin", server.admin]))


def admin_get(server: Server, path: str) -> tuple[str, Any]:
    """(body, headers) of a GET on the admin API."""
    headers = getattr(server, "admin_headers", None)
    request = urllib.request.Request(f"http://{server.admin}{path}", headers=headers() if callable(headers) else {})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.read().decode(), resp.headers
