"""`vivait-sip ctl route NUMBER`: which dialplan rule a call would match, asked of the
running server (its config, its users), so what it prints is what a call would do.

Exit 0 when the call would go somewhere (a user, an extension, a trunk, through a flow to
one of them), 1 when it would be refused (a hangup rule, a target that does not exist,
no rule matching) or the server could not be asked, 2 for a `--at` that is no time.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from datetime import date, datetime, time
from typing import Any

from ..ctlclient import admin_request, print_json
from .routing import Source, Target

EXIT_REFUSED = 1
EXIT_USAGE = 2


def add_commands(sub: Any, ctl_sub: Any) -> None:
    """The feature's `add_commands` entry: `ctl route` (no top-level command)."""
    route = ctl_sub.add_parser(
        "route",
        help="which dialplan rule a call matches, its target, and why earlier rules did not match",
        description="Ask the running server how it would route a call to NUMBER: the rule that "
        "matches, where the call goes (and the mdflow outcomes), and why each earlier rule does "
        "not match. Exit 0 when the call would be put through, 1 when it would be refused.",
    )
    route.add_argument("number", help="the dialled number: 6140, 913346140, 0612345678...")
    route.add_argument(
        "--from",
        dest="source",
        metavar="SOURCE",
        help="the caller: a user (6140, or 6140@IP for network rules), a trunk (trunk:NAME, "
        "trunk:NAME@IP) or an IP address (its trunk recognised by network); default: an "
        "anonymous caller",
    )
    route.add_argument(
        "--at",
        metavar="TIME",
        help="when: ISO 8601 (2026-12-24T23:30+01:00); without an offset (2026-12-24T23:30, "
        "or 23:30 for today) in this machine's time zone; default: now",
    )
    route.add_argument("--json", action="store_true", help="the admin API's JSON answer")
    route.set_defaults(func=cmd_ctl_route)

    calls = ctl_sub.add_parser("calls", help="calls in progress: legs, states, durations")
    calls.add_argument("--json", action="store_true", help="the admin API's JSON answer")
    calls.set_defaults(func=cmd_ctl_calls)
    hangup = ctl_sub.add_parser(
        "hangup", help="end a call in progress", description="End a call: BYE to both legs when answered, "
        "else the caller gets 480 and the callees CANCEL. Exit 1 when no such call is in progress.",
    )
    hangup.add_argument("call", help="the call's id (first column of `ctl calls`) or any of its legs' Call-IDs")
    hangup.set_defaults(func=cmd_ctl_hangup)
    record = ctl_sub.add_parser(
        "record", help="start or stop recording a call in progress",
        description="Record a call in progress to a stereo WAV (the caller left, the callee right) in the "
        "media recording spool, moved to the archive when stopped or when the call ends; the path goes into "
        "the call's CDR (extra.recording). The call must be anchored. Exit 1 when there is no such call or "
        "it cannot be recorded (not anchored, not being recorded).",
    )
    record.add_argument("action", choices=["start", "stop"], help="start: begin (or report) the recording; stop: close its file")
    record.add_argument("call", help="the call's id (first column of `ctl calls`) or any of its legs' Call-IDs")
    record.add_argument("--json", action="store_true", help="the admin API's JSON answer")
    record.set_defaults(func=cmd_ctl_record)


def cmd_ctl_calls(args: argparse.Namespace) -> int:
    reply = admin_request(args.admin, "GET", "/api/calls")
    if args.json:
        return print_json(reply)
    calls = reply["calls"]
    rows = [("CALL", "STATE", "FROM", "TO", "TRUNK", "DURATION", "LEGS")]
    for call in calls:
        legs = ", ".join(f"{leg['target']}:{leg['state']}" for leg in call["legs"]) or "-"
        rows.append((
            str(call["call"])[:12], str(call["state"]), _shown(call["caller"]), _shown(call["callee"]),
            _shown(call.get("trunk")), f"{float(call['duration_s']):.0f}s", legs,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"{len(calls)} call(s) in progress")
    return 0


def cmd_ctl_hangup(args: argparse.Namespace) -> int:
    from ..ctlclient import AdminError

    try:
        admin_request(args.admin, "DELETE", "/api/calls/" + urllib.parse.quote(args.call, safe=""))
    except AdminError as exc:
        if "HTTP 404" in str(exc):
            print(f"no call {args.call} in progress", file=sys.stderr)
            return EXIT_REFUSED
        raise
    print(f"call {args.call} hung up")
    return 0


def cmd_ctl_record(args: argparse.Namespace) -> int:
    from ..ctlclient import AdminError

    method = "POST" if args.action == "start" else "DELETE"
    path = "/api/calls/" + urllib.parse.quote(args.call, safe="") + "/recording"
    try:
        reply = admin_request(args.admin, method, path)
    except AdminError as exc:
        if exc.status == 404:
            print(f"no call {args.call} in progress", file=sys.stderr)
            return EXIT_REFUSED
        if exc.status in (409, 503):
            print(f"error: {exc.message}", file=sys.stderr)
            return EXIT_REFUSED
        raise
    if args.json:
        return print_json(reply)
    if args.action == "start":
        print(f"recording call {reply['call']} to {reply['path']}")
    else:
        seconds = reply.get("seconds")
        length = f" ({float(seconds):.1f} s)" if isinstance(seconds, (int, float)) else ""
        print(f"recording of call {reply['call']} stopped: {reply['path']}{length}")
    return 0


def _shown(value: object) -> str:
    """A value from the network, printable (no control characters reach the terminal)."""
    text = "-" if value in (None, "") else str(value)
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def aware_time(text: str, today: date) -> datetime:
    """A `--at` value as an aware time; naive ones are this machine's local time."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        at = datetime.combine(today, time.fromisoformat(text))
    return at if at.utcoffset() is not None else at.astimezone()


def cmd_ctl_route(args: argparse.Namespace) -> int:
    query = {"number": args.number}
    if args.source:
        query["from"] = args.source
    if args.at:
        try:
            query["at"] = aware_time(args.at, date.today()).isoformat()
        except ValueError:
            print(f"error: --at {args.at!r} is not a time (2026-12-24T23:30+01:00, 2026-12-24T23:30, 23:30)", file=sys.stderr)
            return EXIT_USAGE
    reply = admin_request(args.admin, "GET", "/api/route?" + urllib.parse.urlencode(query))
    if args.json:
        print_json(reply)
    else:
        print("\n".join(explain(reply)))
    return 0 if reply["target"]["kind"] != "hangup" else EXIT_REFUSED


def _target(data: dict[str, Any]) -> Target:
    then = data.get("then")
    return Target(**{**data, "trunks": tuple(data["trunks"]), "then": _target(then) if then else None})


def _sentence(target: Target) -> str:
    """What happens to the call, in words."""
    if target.kind == "user":
        return f"it rings user {target.user}'s active devices"
    if target.kind == "extension":
        return f"it rings extension {target.extension}"
    if target.kind == "trunk":
        first, *rest = target.trunks
        text = f"it leaves on trunk {first}" + (f" (failing over to {', '.join(rest)})" if rest else "")
        text += f" as {target.number}"
        return text + (f" with caller ID {target.caller_id}" if target.caller_id else "")
    if target.kind == "announcement":
        then = _sentence(target.then) if target.then is not None else "it is hung up"
        return f"it is answered with the announcement {target.prompt}, then {then}"
    text = f"it is refused with {target.status}" + (f" {target.reason}" if target.reason else "")
    return text + (f" and Retry-After {target.retry_after}" if target.retry_after is not None else "")


def explain(reply: dict[str, Any]) -> list[str]:
    """`ctl route`'s plain-text answer: the question, every rule tried, the outcome."""
    source = Source(**reply["source"])
    did = " (a DID)" if reply["did"] else ""
    lines = [f"Calling {reply['number']}{did} from {source.describe()} at {reply['at']}:"]
    lines += [f"  {line}" for line in reply["trace"]]
    target = _target(reply["target"])
    if reply["rule"] is None:
        lines.append(f"No rule matches: {_sentence(target)}.")
        return lines
    if reply["flow"] is None:
        lines.append(f'Rule "{reply["rule"]}" matches: {_sentence(target)}.')
        return lines
    ringing = ", ringing (180) while it waits in its queue" if reply["ringing"] else ""
    lines.append(
        f'Rule "{reply["rule"]}" matches: the call goes through mdflow flow {reply["flow"]}{ringing}; '
        f"once admitted, {_sentence(target)}."
    )
    for key, when in (("on_agujero", "the flow has no queue for it (agujero)"), ("on_desborda", "it waits too long (desborda)")):
        outcome = reply[key]
        what = "it is refused with 503 and Retry-After (the default)" if outcome is None else _sentence(_target(outcome))
        lines.append(f"If {when}: {what}.")
    return lines
