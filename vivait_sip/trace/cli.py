"""`vivait-sip ctl trace`: SIP messages live from a running server, as text or pcap."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from ..ctlclient import AdminError, admin_stream
from .pcap import PcapWriter

# Everything a terminal could act on (escape sequences, backspace...) except tab and newline.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def add_commands(ctl_sub: argparse._SubParsersAction[Any]) -> None:
    trace = ctl_sub.add_parser(
        "trace",
        help="show SIP messages live, from every worker (like sngrep on the server)",
        description="Stream the SIP messages the server receives and sends, as they happen, from "
        "every worker process: direction, transport, local and remote address, time and the whole "
        "message. Filters combine (all must match). Runs until Ctrl-C, --count or --duration.",
    )
    trace.add_argument("--user", metavar="N", help="user part of the Request-URI, From or To (e.g. 6140)")
    trace.add_argument("--call", metavar="CALL_ID", help="this Call-ID only")
    trace.add_argument("--ip", metavar="ADDR", help="remote address, or a network such as 10.0.0.0/8")
    trace.add_argument("--method", metavar="M", help="requests of method M and their responses (e.g. REGISTER)")
    trace.add_argument("--pcap", metavar="FILE", help="also write the messages to FILE as pcap (Wireshark, tshark -r, sngrep -I)")
    trace.add_argument("--count", type=int, metavar="N", help="stop after N messages (exit 1 if fewer came)")
    trace.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    trace.add_argument("--json", action="store_true", help="one JSON object per message, as the admin API sends them")
    trace.add_argument("-q", "--quiet", action="store_true", help="print no messages (with --pcap)")
    trace.set_defaults(func=cmd_trace)


def safe_text(text: str) -> str:
    """A message as it may be shown on a terminal: CRLF as newlines, control bytes as \\xNN."""
    text = text.replace("\r\n", "\n")
    return _CONTROL_RE.sub(lambda m: _hex(m.group()), text)


def _hex(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        code -= 0xDC00
    return f"\\x{code:02x}"


def _address(host: str, port: object) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_record(record: dict[str, Any]) -> str:
    local = _address(str(record["local_host"]), record["local_port"])
    remote = _address(str(record["remote_host"]), record["remote_port"])
    inbound = record["direction"] == "in"
    when = datetime.fromtimestamp(float(record["ts"])).strftime("%Y-%m-%d %H:%M:%S.%f")
    message = str(record["message"])
    size = len(message.encode("utf-8", "surrogateescape"))
    arrow = f"{remote} -> {local}" if inbound else f"{local} -> {remote}"
    head = f"--- {when} worker {record['worker']} | {'received' if inbound else 'sent'} {record['transport']} {arrow} | {size} bytes ---"
    return head + "\n" + safe_text(message).rstrip("\n") + "\n"


def write_pcap(writer: PcapWriter, record: dict[str, Any]) -> None:
    local = (str(record["local_host"]), int(record["local_port"]))
    remote = (str(record["remote_host"]), int(record["remote_port"]))
    src, dst = (remote, local) if record["direction"] == "in" else (local, remote)
    payload = str(record["message"]).encode("utf-8", "surrogateescape")
    writer.write(float(record["ts"]), str(record["transport"]), src, dst, payload)


def cmd_trace(args: argparse.Namespace) -> int:
    params = {"user": args.user, "call": args.call, "ip": args.ip, "method": args.method}
    query = urlencode({k: v for k, v in params.items() if v})
    path = "/api/trace" + (f"?{query}" if query else "")
    if args.count is not None and args.count < 1:
        print("error: --count must be at least 1", file=sys.stderr)
        return 2
    pcap = open(args.pcap, "wb") if args.pcap else None  # noqa: SIM115 (closed in finally)
    writer = PcapWriter(pcap) if pcap is not None else None
    deadline = time.monotonic() + args.duration if args.duration is not None else None
    seen = 0
    ended = False
    try:
        for line in admin_stream(args.admin, path):
            item = json.loads(line)
            event = item.get("event")
            if event == "started":
                flt = " ".join(f"{k}={v}" for k, v in item.get("filter", {}).items() if v) or "everything"
                print(f"tracing {flt} on {item.get('workers', 1)} worker(s); Ctrl-C to stop", file=sys.stderr, flush=True)
            elif event == "dropped":
                print(f"warning: {item.get('count')} message(s) dropped: the trace was read too slowly", file=sys.stderr, flush=True)
            elif event is None:
                seen += 1
                if writer is not None:
                    write_pcap(writer, item)
                if args.json:
                    print(json.dumps(item), flush=True)
                elif not args.quiet:
                    print(format_record(item), flush=True)
            if args.count is not None and seen >= args.count:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
        else:
            ended = True
    except KeyboardInterrupt:
        pass
    except AdminError as exc:
        for number, text in enumerate(exc.lines()):
            print(f"error: {text}" if number == 0 else text, file=sys.stderr)
        return 1
    finally:
        if pcap is not None:
            pcap.close()
    where = f" written to {args.pcap}" if args.pcap else ""
    print(f"{seen} message(s){where}" + ("; the server ended the trace" if ended else ""), file=sys.stderr)
    return 1 if args.count is not None and seen < args.count else 0
