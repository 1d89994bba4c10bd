"""`vivait-sip ctl media`: the media backend of the running server, every worker merged.

Exit 0 when the backend is healthy (or not needed: nothing is anchored), 1 when it is
started but cannot take new sessions (every rtpengine daemon down) or failed to start.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..ctlclient import admin_request, print_json

EXIT_UNHEALTHY = 1


def add_commands(sub: Any, ctl_sub: Any) -> None:
    media = ctl_sub.add_parser(
        "media",
        help="the media backend: sessions, anchored calls, rtpengine daemons up or down",
        description="Show the media backend of the running server (every worker merged): its "
        "sessions and anchored calls, how many calls were anchored or passed through, and for "
        "rtpengine each daemon's state. Exit 1 when the backend cannot take new sessions.",
    )
    media.add_argument("--json", action="store_true", help="the admin API's JSON answer")
    media.set_defaults(func=cmd_ctl_media)


def _shown(value: object) -> str:
    text = "-" if value in (None, "") else str(value)
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def render(status: dict[str, Any]) -> list[str]:
    """`ctl media` as text."""
    backend = _shown(status.get("backend"))
    if not status.get("started"):
        state = f"not started ({_shown(status['start_error'])})" if status.get("start_error") else "not started (no call anchored yet)"
    else:
        state = "healthy" if status.get("healthy") else "UNHEALTHY: no new session can be placed"
    lines = [
        f"backend {backend}: {state}",
        f"sessions {int(status.get('sessions', 0))}, anchored calls {int(status.get('anchored_calls', 0))} "
        f"in {int(status.get('workers', 1))} worker(s)",
        f"calls anchored {int(status.get('anchored', 0))}, passed through {int(status.get('passed', 0))}, "
        f"media failures {int(status.get('failures', 0))}",
    ]
    requirements = status.get("requirements") or []
    if requirements:
        lines.append("anchored by features: " + ", ".join(_shown(r) for r in requirements))
    daemons = [d for d in status.get("daemons", []) if isinstance(d, dict)]
    if daemons:
        rows = [("DAEMON", "STATE", "SESSIONS", "REQUESTS", "RESENT", "TIMEOUTS", "LAST ERROR")]
        for d in daemons:
            rows.append((
                _shown(d.get("address")), _shown(d.get("state")), str(int(d.get("sessions", 0))),
                str(int(d.get("requests", 0))), str(int(d.get("retransmissions", 0))), str(int(d.get("timeouts", 0))),
                _shown(d.get("last_error"))[:80],
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines.append("daemons:")
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return lines


def cmd_ctl_media(args: argparse.Namespace) -> int:
    reply = admin_request(args.admin, "GET", "/api/media")
    if args.json:
        print_json(reply)
    else:
        print("\n".join(render(reply)))
    if reply.get("start_error") or (reply.get("started") and not reply.get("healthy")):
        return EXIT_UNHEALTHY
    return 0
