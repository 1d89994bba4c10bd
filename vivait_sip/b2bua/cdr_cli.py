"""`vivait-sip ctl cdr`: call detail records of a period from a running server.

Times are read here (ISO 8601 in the operator's local time, or epoch seconds) and sent as
epoch seconds, so "08:00" means the operator's 08:00.  An empty period is an answer, not
an error: exit 0 with "0 calls ..." (an empty CSV still has its header row), so scripts
that export every night need no special case; exit 1 only when the server could not
answer, 2 for a time that cannot be read.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from datetime import datetime
from typing import Any

from .. import ctlclient
from .cdr import parse_time

TABLE_COLUMNS = ("START", "CALLER", "CALLEE", "USER", "DID", "TRUNK", "DISPOSITION", "DURATION", "BILLABLE", "HANGUP")


def add_cdr_commands(sub: Any, ctl_sub: Any) -> None:
    """Add `ctl cdr` (`sub`, the top-level commands, gets nothing)."""
    cdr = ctl_sub.add_parser(
        "cdr",
        help="call detail records of a period (table, CSV or JSON)",
        description="Calls that started in [--since, --until), oldest first. Times: ISO 8601 "
        "(2026-03-01, 2026-03-01T08:30, 2026-03-01T08:30:00+01:00; local time without an "
        "offset) or epoch seconds. An empty period exits 0.",
    )
    cdr.add_argument("--since", type=_time_arg, help="start of the period (default: today 00:00)")
    cdr.add_argument("--until", type=_time_arg, help="end of the period, excluded (default: now)")
    cdr.add_argument("--user", help="only calls made by this user (billing per extension)")
    cdr.add_argument("--limit", type=_positive, help="at most this many calls")
    cdr.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="output (default: a table)"
    )
    cdr.set_defaults(func=cmd_ctl_cdr)


def _time_arg(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _local(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts is not None else "-"


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


def cmd_ctl_cdr(args: argparse.Namespace) -> int:
    midnight = datetime.now().replace(hour=0, minute=0, second=0, microsecond=0)
    since = args.since if args.since is not None else midnight.timestamp()
    until = args.until if args.until is not None else time.time()
    params = {"since": f"{since:.6f}", "until": f"{until:.6f}"}
    if args.user:
        params["user"] = args.user
    if args.limit:
        params["limit"] = str(args.limit)
    if args.format == "csv":
        params["format"] = "csv"
    path = "/api/cdr?" + urllib.parse.urlencode(params)
    if args.format == "csv":
        sys.stdout.write(ctlclient.admin_request(args.admin, "GET", path, raw=True))
        return 0
    reply = ctlclient.admin_request(args.admin, "GET", path)
    if args.format == "json":
        return ctlclient.print_json(reply)
    calls = reply["calls"]
    if calls:
        rows = [TABLE_COLUMNS, *(_table_row(c) for c in calls)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"{len(calls)} call(s) from {_local(since)} to {_local(until)}")
    return 0


def _table_row(call: dict[str, Any]) -> tuple[str, ...]:
    return (
        _local(call["started_at"]),
        _shown(call["caller"]),
        _shown(call["callee"]),
        _shown(call["user"]),
        _shown(call["did"]),
        _shown(call["trunk"]),
        call["disposition"],
        _seconds(call["duration_s"]),
        _seconds(call["billable_s"]),
        f"{call['hangup_side']}: {_shown(call['hangup_cause'])}",
    )


def _shown(value: str | None) -> str:
    """A cell for the terminal: "-" for none; control characters (a caller's From may
    carry escape sequences) as "?"."""
    if not value:
        return "-"
    return "".join(ch if ch.isprintable() else "?" for ch in value)
