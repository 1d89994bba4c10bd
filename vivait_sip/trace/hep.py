"""HEP v3 (EEP) export: every SIP message, wrapped as Homer and `sngrep -L` expect, in
one UDP datagram to each collector.

A HEP3 packet is `"HEP3"`, its total length (16 bits), then chunks of (vendor 0, type,
length including the 6-byte chunk header, value): address family, IP protocol (UDP 17;
TCP 6 for TCP, TLS and WebSocket), source and destination address and port, timestamp
(seconds, microseconds), protocol type 1 (SIP), capture agent id, the optional
authentication key, and the message itself.

Sampling is per Call-ID (crc32, so a dialog is exported whole or not at all).  Sending
never blocks and never raises: a full socket buffer or an unreachable collector only
counts an error.
"""

from __future__ import annotations

import logging
import socket
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from ..sip.address import parse_hostport
from ..sip.peer import Peer

log = logging.getLogger("vivait_sip.trace")

_HEADER = struct.Struct("!4sH")
_CHUNK = struct.Struct("!HHH")
PROTO_UDP = 17
PROTO_TCP = 6
MAX_PACKET = 65535
_CALL_ID_NAMES = (b"\r\ncall-id:", b"\r\ni:")


def _packed(host: str) -> tuple[int, bytes] | None:
    """(4 or 6, the address bytes), or None for a name or garbage."""
    try:
        return 4, socket.inet_pton(socket.AF_INET, host)
    except OSError:
        pass
    try:
        return 6, socket.inet_pton(socket.AF_INET6, host.strip("[]"))
    except OSError:
        return None


# Everything before the optional key and the payload, in one pack: family, protocol,
# addresses, ports, time, protocol type, capture id (IPv4 and IPv6 layouts).
_FIXED = {
    4: struct.Struct("!4sH HHHB HHHB HHH4s HHH4s HHHH HHHH HHHI HHHI HHHB HHHI"),
    6: struct.Struct("!4sH HHHB HHHB HHH16s HHH16s HHHH HHHH HHHI HHHI HHHB HHHI"),
}
_ADDRESS_KINDS = {4: (2, 3, 4), 6: (10, 5, 6)}  # HEP's family code, src and dst chunk types
_ZERO = {4: b"\0" * 4, 6: b"\0" * 16}
_packed_cache: dict[str, tuple[int, bytes] | None] = {}


def _address(host: str) -> tuple[int, bytes] | None:
    hit = _packed_cache.get(host, False)
    if hit is False:
        hit = _packed(host)
        if len(_packed_cache) > 4096:
            _packed_cache.clear()
        _packed_cache[host] = hit
    return hit  # type: ignore[return-value]


def encode(
    payload: bytes,
    *,
    proto: int,
    src: tuple[str, int],
    dst: tuple[str, int],
    ts: float,
    capture_id: int = 0,
    auth_key: bytes = b"",
) -> bytes:
    """One HEP3 packet.  Addresses that are not IP literals, or of two families, are
    written as the unspecified address of the other's family (IPv4 when neither is)."""
    a, b = _address(src[0]), _address(dst[0])
    version = a[0] if a is not None else b[0] if b is not None else 4
    zero = _ZERO[version]
    src_bytes = a[1] if a is not None and a[0] == version else zero
    dst_bytes = b[1] if b is not None and b[0] == version else zero
    fixed = _FIXED[version]
    family, src_kind, dst_kind = _ADDRESS_KINDS[version]
    alen = len(zero) + 6
    key = _CHUNK.pack(0, 14, 6 + len(auth_key)) + auth_key if auth_key else b""
    tail = _CHUNK.pack(0, 15, 6 + len(payload))
    total = fixed.size + len(key) + len(tail) + len(payload)
    seconds = int(ts)
    head = fixed.pack(
        b"HEP3", total & 0xFFFF,
        0, 1, 7, family,
        0, 2, 7, proto,
        0, src_kind, alen, src_bytes,
        0, dst_kind, alen, dst_bytes,
        0, 7, 8, src[1] & 0xFFFF,
        0, 8, 8, dst[1] & 0xFFFF,
        0, 9, 10, seconds & 0xFFFFFFFF,
        0, 10, 10, int((ts - seconds) * 1_000_000) % 1_000_000,
        0, 11, 7, 1,
        0, 12, 10, capture_id & 0xFFFFFFFF,
    )
    return b"".join((head, key, tail, payload))  # callers drop it when over MAX_PACKET


@dataclass(frozen=True)
class DecodedHep:
    """What `decode` reads back (tests, and anyone debugging a collector)."""

    proto: int
    src: tuple[str, int]
    dst: tuple[str, int]
    ts: float
    capture_id: int
    auth_key: bytes
    payload: bytes


def decode(packet: bytes) -> DecodedHep:
    magic, total = _HEADER.unpack_from(packet)
    if magic != b"HEP3" or total != len(packet):
        raise ValueError("not a HEP3 packet")
    fields: dict[int, bytes] = {}
    offset = _HEADER.size
    while offset < total:
        _vendor, kind, length = _CHUNK.unpack_from(packet, offset)
        if length < _CHUNK.size:
            raise ValueError("bad chunk length")
        fields[kind] = packet[offset + _CHUNK.size : offset + length]
        offset += length
    six = 5 in fields
    family = socket.AF_INET6 if six else socket.AF_INET
    src = socket.inet_ntop(family, fields[5 if six else 3])
    dst = socket.inet_ntop(family, fields[6 if six else 4])
    return DecodedHep(
        proto=fields[2][0],
        src=(src, struct.unpack("!H", fields[7])[0]),
        dst=(dst, struct.unpack("!H", fields[8])[0]),
        ts=struct.unpack("!I", fields[9])[0] + struct.unpack("!I", fields[10])[0] / 1_000_000,
        capture_id=struct.unpack("!I", fields[12])[0],
        auth_key=fields.get(14, b""),
        payload=fields[15],
    )


def call_id_of(data: bytes) -> bytes:
    """The Call-ID value from raw bytes (empty when there is none)."""
    end = data.find(b"\r\n\r\n")
    head = (data if end < 0 else data[: end + 2]).lower()
    for name in _CALL_ID_NAMES:
        start = head.find(name)
        if start >= 0:
            start += len(name)
            stop = head.find(b"\r\n", start)
            # The value's case as sent: offsets are the same in `data`.
            return data[start:stop].strip()
    return b""


def sampled(data: bytes, percent: float) -> bool:
    """Whether the dialog of this message is in the `percent` exported."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    return zlib.crc32(call_id_of(data)) % 10000 < percent * 100


class HepExporter:
    """Sends one HEP3 packet per traced message to every collector (this process's own socket)."""

    def __init__(
        self, collectors: Iterable[str], *, sample_percent: float = 100.0, capture_id: int = 0, auth_key: str | None = None
    ) -> None:
        self.sample_percent = sample_percent
        self.capture_id = capture_id
        self.auth_key = (auth_key or "").encode()
        self.names = list(collectors)
        # One connected socket per collector: `send` skips the per-packet address handling
        # of `sendto`, and a collector that is down shows up as send errors (ICMP refused).
        self.targets: list[socket.socket] = []
        self.sent = 0
        self.errors = 0
        self.sampled_out = 0
        for name in self.names:
            host, port = parse_hostport(name, "trace.hep.collectors")
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                log.error("event=hep_collector_unresolved collector=%s error=%r", name, str(exc))
                continue
            family, _, _, _, address = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect(address)
            except OSError as exc:
                sock.close()
                log.error("event=hep_collector_unreachable collector=%s error=%r", name, str(exc))
                continue
            self.targets.append(sock)

    def export(self, direction: str, data: bytes, peer: Peer, local: tuple[str, int], ts: float) -> None:
        if self.sample_percent < 100 and not sampled(data, self.sample_percent):
            self.sampled_out += 1
            return
        remote = (peer.host, peer.port)
        src, dst = (remote, local) if direction == "in" else (local, remote)
        packet = encode(
            data,
            proto=PROTO_UDP if peer.transport == "udp" else PROTO_TCP,
            src=src,
            dst=dst,
            ts=ts,
            capture_id=self.capture_id,
            auth_key=self.auth_key,
        )
        if len(packet) > MAX_PACKET:
            self.errors += 1  # a HEP3 length is 16 bits: a >64 KiB message cannot be sent
            return
        for sock in self.targets:
            try:
                sock.send(packet)
                self.sent += 1
            except OSError:
                self.errors += 1

    def status(self) -> dict[str, object]:
        return {
            "collectors": self.names,
            "sample_percent": self.sample_percent,
            "capture_id": self.capture_id,
            "packets_sent": self.sent,
            "send_errors": self.errors,
            "sampled_out": self.sampled_out,
        }

    def close(self) -> None:
        for sock in self.targets:
            sock.close()
        self.targets = []
