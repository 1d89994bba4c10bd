"""`vivait-sip ctl webfon`: the webfon sessions of the running server."""

from __future__ import annotations

import argparse
from typing import Any

from ..ctlclient import admin_request, print_json


def add_commands(sub: Any, ctl_sub: Any) -> None:
    webfon = ctl_sub.add_parser(
        "webfon",
        help="webfon sessions: user, web extension, WebSocket, registration",
        description="List the webfon sessions of the running server: who is logged in, the web "
        "extension each holds (fixed or leased from a pool), whether its WebSocket is open and its "
        "extension registered, and when it ends.",
    )
    webfon.add_argument("--json", action="store_true", help="the admin API's JSON answer")
    webfon.set_defaults(func=cmd_ctl_webfon)


def _shown(value: object) -> str:
    text = "-" if value in (None, "") else str(value)
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def render(reply: dict[str, Any]) -> list[str]:
    sessions = [s for s in reply.get("sessions", []) if isinstance(s, dict)]
    lines = [f"node {_shown(reply.get('node'))}: {len(sessions)} webfon session(s), grace {reply.get('grace_s')} s"
             + (", colas_limpiar_siempre" if reply.get("colas_limpiar_siempre") else "")]
    if not sessions:
        return lines
    rows = [("SESSION", "USER", "NAME", "EXTENSION", "POOL", "CLIENT", "WEBSOCKET", "REGISTERED", "ENDS IN")]
    for s in sessions:
        lost = s.get("lost_for")
        ws = "open" if s.get("websockets") else ("never" if lost is None else f"lost {lost} s")
        rows.append((
            _shown(s.get("id")), _shown(s.get("user")), _shown(s.get("name"))[:24], _shown(s.get("extension")),
            _shown(s.get("pool")), _shown(s.get("client")), ws, "yes" if s.get("registered") else "no",
            f"{int(s.get('expires_in', 0))} s",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return lines


def cmd_ctl_webfon(args: argparse.Namespace) -> int:
    reply = admin_request(args.admin, "GET", "/api/webfon")
    if args.json:
        print_json(reply)
    else:
        print("\n".join(render(reply)))
    return 0
