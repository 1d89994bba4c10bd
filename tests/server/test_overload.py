"""Load shedding: a lagging loop answers new requests 503 + Retry-After, keeps old ones."""

from __future__ import annotations

import asyncio
import time

from vivait_sip.core import SipCore
from vivait_sip.overload import LagMonitor
from vivait_sip.sip.message import DEFAULT_LIMITS, parse_message
from vivait_sip.sip.peer import Peer
from vivait_sip.sip.transaction import TimerConfig

PEER = Peer("udp", "127.0.0.1", 5999)


def request(method: str, call_id: str) -> bytes:
    return (
        f"{method} sip:127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{call_id};rport\r\n"
        f"From: <sip:a@127.0.0.1>;tag={call_id}\r\nTo: <sip:127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def make_core() -> tuple[SipCore, list[bytes]]:
    sent: list[bytes] = []
    core = SipCore(send=lambda data, peer, tx_id: sent.append(data), timers=TimerConfig(), limits=DEFAULT_LIMITS,
                   local=lambda peer: ("127.0.0.1", 5060), retry_after_s=9, clock=lambda: 100.0)
    core.add_local_address("127.0.0.1")
    return core, sent


def status(data: bytes) -> int:
    msg = parse_message(data)
    return int(getattr(msg, "status", 0))


def test_hysteresis() -> None:
    changes: list[bool] = []
    monitor = LagMonitor(0.2, on_change=changes.append)
    for lag in (0.05, 0.25, 0.15, 0.12, 0.09, 0.3):
        monitor.observe(lag)
    # on above 200 ms, stays on until below 100 ms, then on again
    assert changes == [True, False, True]
    assert monitor.overloaded and monitor.episodes == 2


async def test_a_blocked_loop_is_detected_and_clears() -> None:
    changes: list[bool] = []
    monitor = LagMonitor(0.1, interval_s=0.02, on_change=changes.append)
    monitor.start()
    try:
        await asyncio.sleep(0.05)
        assert changes == []
        time.sleep(0.3)  # the loop is stuck: the next wake-up is ~300 ms late
        await asyncio.sleep(0.1)
        # shedding started on the late wake-up and ended once wake-ups were punctual again
        assert changes == [True, False]
        assert monitor.episodes == 1 and not monitor.overloaded
    finally:
        await monitor.stop()


def test_shedding_refuses_new_requests_but_serves_retransmissions() -> None:
    core, sent = make_core()
    core.on_message(request("FROBNICATE", "old"), PEER)
    assert status(sent[-1]) == 501
    core.set_shedding(True)
    core.on_message(request("FROBNICATE", "new"), PEER)
    assert sent[-1].startswith(b"SIP/2.0 503 Service Unavailable (overloaded)\r\n")
    assert b"Retry-After: 9\r\n" in sent[-1]
    core.on_message(request("OPTIONS", "opt"), PEER)  # stateless requests are shed too
    assert status(sent[-1]) == 503
    core.on_message(request("FROBNICATE", "old"), PEER)  # a retransmission: the old answer
    assert status(sent[-1]) == 501
    assert core.status()["counters"]["overload_rejections"] == 2  # type: ignore[index]
    core.set_shedding(False)
    core.on_message(request("FROBNICATE", "after"), PEER)
    assert status(sent[-1]) == 501
