"""What the SIP trace costs per received datagram, at the transport (micro-benchmark).

    python bench/trace_cost.py [--count 200000] [--repeat 5]

Calls `_UdpProtocol.datagram_received` with a 400-byte REGISTER and a no-op core, so the
figures are the transport's own work plus the trace's, nothing else (no parsing, no
socket read).  Rows: the receive path as it was before the trace hook existed (`before`,
a copy of the old method), tracing off, HEP export to a local UDP socket, one `ctl
trace` session whose filter matches nothing (`--user 9999`), and one that matches every
message (records queued; the queue is emptied between runs).  Best of --repeat runs.
"""

from __future__ import annotations

import argparse
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vivait_sip import native
from vivait_sip.config import config_from_data
from vivait_sip.sip.address import Listener
from vivait_sip.sip.peer import Peer
from vivait_sip.trace.feature import TraceFeature
from vivait_sip.trace.match import TraceFilter
from vivait_sip.transport.manager import _CRLF, TransportManager, _UdpProtocol

MESSAGE = (
    b"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKbench;rport\r\n"
    b"From: <sip:6140@127.0.0.1>;tag=1\r\nTo: <sip:6140@127.0.0.1>\r\nCall-ID: bench-1@127.0.0.1\r\n"
    b"CSeq: 1 REGISTER\r\nContact: <sip:6140@127.0.0.1:5099>\r\nExpires: 600\r\nUser-Agent: bench\r\n"
    b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


class _Before(_UdpProtocol):
    """The receive path before the trace hook (commit 5aa055a)."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        manager = self.manager
        manager.stats.received += 1
        if data == _CRLF * 2 or data == _CRLF:
            return
        manager.on_message(data, Peer("udp", addr[0], addr[1]))


class _Host:
    def __init__(self, manager: TransportManager, config: dict[str, Any]) -> None:
        self.config = config_from_data(config)
        self.manager = manager
        self.worker_index = 0
        self.worker_count = 1
        self.is_primary = True

    def set_trace(self, hook: Any) -> None:
        self.manager.trace = hook

    def broadcast(self, msg: object) -> None:
        pass


def run(proto: _UdpProtocol, count: int, repeat: int, after: Any = None) -> float:
    receive = proto.datagram_received
    addr = ("127.0.0.1", 5099)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(count):
            receive(MESSAGE, addr)
        best = min(best, time.perf_counter() - start)
        if after is not None:
            after()
    return best / count * 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    listener = Listener("udp", "127.0.0.1", 5060)
    rows: list[tuple[str, float]] = []

    manager = TransportManager(lambda data, peer: None)
    rows.append(("before (no hook in the code)", run(_Before(manager, listener), args.count, args.repeat)))
    rows.append(("tracing off", run(_UdpProtocol(manager, listener), args.count, args.repeat)))

    hep_manager = TransportManager(lambda data, peer: None)
    hep = TraceFeature(_Host(hep_manager, {"trace": {"hep": {"collectors": [f"127.0.0.1:{sink.getsockname()[1]}"]}}}))  # type: ignore[arg-type]
    hep._configure(hep.settings)
    rows.append(("HEP export (1 collector)", run(_UdpProtocol(hep_manager, listener), args.count, args.repeat, lambda: _drain(sink))))

    session_manager = TransportManager(lambda data, peer: None)
    feature = TraceFeature(_Host(session_manager, {"trace": {"max_messages_per_s": 1_000_000}}))  # type: ignore[arg-type]
    miss = feature.open_session(TraceFilter.create(user="9999"))
    proto = _UdpProtocol(session_manager, listener)
    rows.append(("ctl trace, filter matches nothing", run(proto, args.count, args.repeat)))
    feature.close_session(miss)
    hit = feature.open_session(TraceFilter.create(method="REGISTER"))
    count = min(args.count, 4000)  # the session queue holds 5000

    def empty() -> None:
        while not hit.queue.empty():
            hit.queue.get_nowait()

    rows.append(("ctl trace, filter matches every message", run(proto, count, args.repeat, empty)))
    print(f"# {platform.python_implementation()} {platform.python_version()}, {platform.machine()}, native modules: {native.state}, {args.count} datagrams, best of {args.repeat}")
    base = rows[0][1]
    for name, ns in rows:
        print(f"{name:42s} {ns:8.0f} ns/datagram  ({ns - base:+.0f} ns)")


def _drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while True:
            sock.recv(70000)
    except BlockingIOError:
        pass


if __name__ == "__main__":
    main()
