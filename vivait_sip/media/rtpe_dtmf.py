"""The digits rtpengine detects in a call's media, reported to us over UDP.

rtpengine started with `--dtmf-log-dest=HOST:PORT` sends one JSON object per RFC 4733
telephone-event that ends in any call it relays, e.g. `{"callid": "…", "source_tag": "…",
"tags": […], "type": "DTMF", "timestamp": …, "source_ip": "…", "event": 5,
"duration": 250, "volume": 10}` (duration in ms).  NG has no such event, so without this
a call anchored in rtpengine reports only SIP INFO digits.

* `parse_dtmf_log(data)` turns one datagram into a `MediaDtmf` (None for anything else:
  too long, not JSON, not an object, no Call-ID, an event that is no digit).  Pure.
* `DtmfLogListener` binds `media.rtpengine.dtmf_listen` in SIP worker 0 and hands each
  event to a callback (the media feature routes it to the worker that owns the Call-ID).
  Datagrams from any address but the daemons' are dropped and counted: anyone else who
  can reach the port could otherwise type digits into an IVR.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable, Iterable

from .protocol import MediaDtmf

log = logging.getLogger("vivait_sip.media.rtpe_dtmf")

DIGITS = "0123456789*#ABCD"  # RFC 4733 events 0-15
MAX_DATAGRAM = 4096  # rtpengine's are about 300 bytes
MAX_ID = 256  # Call-ID and tag: longer is not one of our sessions


def parse_dtmf_log(data: bytes) -> MediaDtmf | None:
    """One `--dtmf-log-dest` datagram → the digit event, or None."""
    if len(data) > MAX_DATAGRAM:
        return None
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("type", "DTMF") != "DTMF":
        return None
    call_id, tag, event = record.get("callid"), record.get("source_tag"), record.get("event")
    if not isinstance(call_id, str) or not 0 < len(call_id) <= MAX_ID:
        return None
    if not isinstance(tag, str) or len(tag) > MAX_ID:
        return None
    if type(event) is not int or not 0 <= event < len(DIGITS):
        return None
    duration, volume = record.get("duration"), record.get("volume")
    return MediaDtmf(
        call_id=call_id,
        tag=tag or None,
        leg=tag,
        digit=DIGITS[event],
        duration_ms=duration if type(duration) is int and 0 <= duration <= 60_000 else 0,
        volume=volume if type(volume) is int and 0 <= volume <= 63 else 0,
    )


def daemon_addresses(hosts: Iterable[str]) -> frozenset[str]:
    """The IP addresses of the daemons' hosts (names resolved once, at start)."""
    found: set[str] = set()
    for host in hosts:
        for info in socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM):
            found.add(str(info[4][0]))
    return frozenset(found)


class DtmfLogListener(asyncio.DatagramProtocol):
    """The UDP socket rtpengine's `--dtmf-log-dest` points at."""

    def __init__(self, allowed: frozenset[str], deliver: Callable[[MediaDtmf], None]) -> None:
        self.allowed = allowed
        self.deliver = deliver
        self.transport: asyncio.DatagramTransport | None = None
        self.counters = {"digits": 0, "bad": 0, "foreign": 0}

    @classmethod
    async def bind(cls, host: str, port: int, allowed: frozenset[str],
                   deliver: Callable[[MediaDtmf], None]) -> DtmfLogListener:
        loop = asyncio.get_running_loop()
        transport, listener = await loop.create_datagram_endpoint(lambda: cls(allowed, deliver), local_addr=(host, port))
        listener.transport = transport
        return listener

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if str(addr[0]) not in self.allowed:
            self.counters["foreign"] += 1
            if self.counters["foreign"] == 1:  # once: a flood must not become a log flood
                log.warning("event=rtpengine_dtmf_foreign source=%s (not a configured daemon)", addr[0])
            return
        event = parse_dtmf_log(data)
        if event is None:
            self.counters["bad"] += 1
            return
        self.counters["digits"] += 1
        self.deliver(event)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
