"""rtpengine's `--dtmf-log-dest` reports: the parser, and the listener's source check."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import pytest

from vivait_sip.media.protocol import MediaDtmf
from vivait_sip.media.rtpe_dtmf import DtmfLogListener, daemon_addresses, parse_dtmf_log

# what rtpengine 10.5 sent for event 5 (measured)
SAMPLE = (b'{"callid":"cid1","source_tag":"ta","tags":["tb","ta"],"type":"DTMF","timestamp":1796067533,'
          b'"source_ip":"127.0.0.1","event":5,"duration":120,"volume":10}')


def record(**changes: object) -> bytes:
    fields = json.loads(SAMPLE)
    fields.update(changes)
    return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()


def test_a_report_becomes_the_digit_of_the_party_that_sent_it() -> None:
    assert parse_dtmf_log(SAMPLE) == MediaDtmf(call_id="cid1", tag="ta", leg="ta", digit="5", duration_ms=120, volume=10)
    assert [parse_dtmf_log(record(event=code)).digit for code in (10, 11, 12, 15)] == ["*", "#", "A", "D"]  # type: ignore[union-attr]


@pytest.mark.parametrize("data", [
    b"", b"not json", b"\xff\xfe", b"[1, 2]", b'"DTMF"', b"{}",
    record(event=16), record(event=-1), record(event="5"), record(event=5.0), record(event=True),
    record(callid=None), record(callid=""), record(callid="x" * 257), record(callid=7),
    record(source_tag=None), record(source_tag=["ta"]), record(type="other"),
    record(pad="x" * 5000),
], ids=lambda d: repr(d[:30]))
def test_anything_else_is_no_digit(data: bytes) -> None:
    assert parse_dtmf_log(data) is None


def test_odd_duration_and_volume_are_zeroed_not_trusted() -> None:
    event = parse_dtmf_log(record(duration=10**9, volume=99))
    assert event is not None and event.duration_ms == 0 and event.volume == 0
    event = parse_dtmf_log(record(duration=None, volume="10", source_tag=""))
    assert event is not None and (event.duration_ms, event.volume, event.tag) == (0, 0, None)


def test_daemon_addresses_resolve_names() -> None:
    assert daemon_addresses(["127.0.0.1", "localhost"]) >= {"127.0.0.1"}


@contextlib.asynccontextmanager
async def listening() -> AsyncIterator[tuple[DtmfLogListener, list[MediaDtmf], tuple[str, int], socket.socket, socket.socket]]:
    """A listener that trusts 127.0.0.1, what it heard, its address, a daemon's socket
    (127.0.0.1) and a stranger's (127.0.0.2)."""
    got: list[MediaDtmf] = []
    listener = await DtmfLogListener.bind("127.0.0.1", 0, frozenset({"127.0.0.1"}), got.append)
    assert listener.transport is not None
    address = ("127.0.0.1", listener.transport.get_extra_info("sockname")[1])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as daemon, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.bind(("127.0.0.2", 0))
            yield listener, got, address, daemon, stranger
    finally:
        listener.close()


async def heard(got: list[MediaDtmf], timeout_s: float) -> None:
    for _ in range(int(timeout_s * 100)):
        if got:
            return
        await asyncio.sleep(0.01)


async def test_the_listener_takes_reports_from_the_daemons_only() -> None:
    async with listening() as (listener, got, address, daemon, stranger):
        stranger.sendto(SAMPLE, address)
        daemon.sendto(b"garbage", address)
        daemon.sendto(SAMPLE, address)
        await heard(got, 1)
        assert [event.digit for event in got] == ["5"]
        assert listener.counters == {"digits": 1, "bad": 1, "foreign": 1}


async def test_a_flood_of_bad_and_foreign_reports_is_counted_and_the_next_digit_still_arrives() -> None:
    async with listening() as (listener, got, address, daemon, stranger):
        for n in range(2000):  # bounded; paced so the kernel's buffer keeps up
            daemon.sendto(b"{" * (n % 5000), address)
            stranger.sendto(SAMPLE, address)
            if n % 100 == 99:
                await asyncio.sleep(0.01)
        daemon.sendto(SAMPLE, address)
        await heard(got, 3)
        assert [event.digit for event in got] == ["5"]  # no stranger's digit, nothing from the garbage
        assert listener.counters["digits"] == 1 and listener.counters["foreign"] > 0 and listener.counters["bad"] > 0
