"""Tracing off costs nothing per message: the transports test one attribute against None
and allocate nothing more; the measurement is shown to see allocations when tracing is on."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from vivait_sip.config import default_config
from vivait_sip.sip.address import Listener
from vivait_sip.trace.feature import TraceFeature
from vivait_sip.trace.match import TraceFilter
from vivait_sip.transport.manager import TransportManager, _UdpProtocol

MESSAGE = (
    b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKc1;rport\r\n"
    b"From: <sip:6140@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: cost-1\r\nCSeq: 1 OPTIONS\r\n"
    b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)
BURST = 5000


class FakeHost:
    """The few `contract.Host` members the trace feature uses."""

    def __init__(self, manager: TransportManager) -> None:
        self.config = default_config()
        self.manager = manager
        self.worker_index = 0
        self.worker_count = 1
        self.is_primary = True
        self.hooks: list[Any] = []

    def set_trace(self, hook: Any) -> None:
        self.hooks.append(hook)
        self.manager.trace = hook

    def broadcast(self, msg: object) -> None:
        pass


def _burst(proto: _UdpProtocol, count: int) -> None:
    receive = proto.datagram_received
    for _ in range(count):
        receive(MESSAGE, ("127.0.0.1", 40000))


def _allocated(proto: _UdpProtocol, count: int) -> tuple[int, int]:
    """(blocks still allocated by vivait_sip code after the burst, peak growth in bytes)."""
    gc.collect()
    tracemalloc.start(1)
    try:
        before = tracemalloc.take_snapshot()
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        _burst(proto, count)
        _, peak = tracemalloc.get_traced_memory()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ours = tracemalloc.Filter(True, "*vivait_sip*")
    diff = after.filter_traces([ours]).compare_to(before.filter_traces([ours]), "filename")
    return sum(max(0, d.count_diff) for d in diff), peak - start


def test_tracing_off_allocates_nothing_per_message_and_on_does() -> None:
    received: list[int] = [0]

    def on_message(data: bytes, peer: object) -> None:
        received[0] += 1

    manager = TransportManager(on_message)
    proto = _UdpProtocol(manager, Listener("udp", "127.0.0.1", 5060))
    host = FakeHost(manager)
    feature = TraceFeature(host)  # type: ignore[arg-type]
    _burst(proto, 100)  # warm-up (first-call caches)

    blocks_off, peak_off = _allocated(proto, BURST)
    assert manager.trace is None and host.hooks == []
    assert blocks_off <= 2, blocks_off  # nothing kept per message
    assert peak_off < 4096, peak_off  # one message's transient objects, not BURST of them

    session = feature.open_session(TraceFilter.create(method="OPTIONS"))
    feature.max_per_s = 10 * BURST
    assert manager.trace is not None
    blocks_on, peak_on = _allocated(proto, 1000)
    assert session.queue.qsize() == 1000
    assert blocks_on >= 1000 and peak_on > 100_000  # the same measurement sees the records

    feature.close_session(session)
    assert manager.trace is None and host.hooks[-1] is None
    assert received[0] == 100 + BURST + 1000
