"""A classic pcap file of traced SIP messages, for Wireshark, tshark and `sngrep -I`.

The server traces messages, not packets, so each one gets synthetic headers: Ethernet
(zero MACs), IPv4 or IPv6, and UDP (udp) or TCP (tcp, tls, ws, wss: TLS and WebSocket
appear decrypted and unframed, as plain SIP over TCP, which is what one wants to read).
TCP segments carry a per-direction sequence number that grows with the bytes sent, so
Wireshark flags nothing; a long message is split into several segments (which Wireshark
reassembles).  Checksums are computed.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
_ETHER_V4 = b"\0" * 12 + b"\x08\x00"
_ETHER_V6 = b"\0" * 12 + b"\x86\xdd"
# TCP payload per synthetic packet: well under an IPv4 total length (16 bits) and under
# the 20 KiB sngrep reads of one packet (it skips longer ones, and shows no SIP message
# longer than that at all; Wireshark and tshark reassemble any size).
MAX_SEGMENT = 16000


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class PcapWriter:
    """Append messages to an open binary file (the global header is written at once)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self._seq: dict[tuple[str, int, str, int], int] = {}
        out.write(_GLOBAL.pack(0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
        out.flush()

    def write(self, ts: float, transport: str, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
        a, b = _address(src[0]), _address(dst[0])
        version = a.version if a is not None else b.version if b is not None else 4
        unspecified = ipaddress.ip_address("0.0.0.0" if version == 4 else "::")
        src_ip = a if a is not None and a.version == version else unspecified
        dst_ip = b if b is not None and b.version == version else unspecified
        if transport == "udp":
            self._packet(ts, version, src_ip.packed, dst_ip.packed, 17, self._udp(src_ip.packed, dst_ip.packed, src[1], dst[1], payload))
            return
        key = (src[0], src[1], dst[0], dst[1])
        for offset in range(0, max(len(payload), 1), MAX_SEGMENT):
            segment = payload[offset : offset + MAX_SEGMENT]
            seq = self._seq.get(key, 1)
            self._seq[key] = (seq + len(segment)) & 0xFFFFFFFF
            ack = self._seq.get((dst[0], dst[1], src[0], src[1]), 1)
            self._packet(ts, version, src_ip.packed, dst_ip.packed, 6, self._tcp(src_ip.packed, dst_ip.packed, src[1], dst[1], seq, ack, segment))
        self.out.flush()

    @staticmethod
    def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
        if len(src) == 4:
            return src + dst + struct.pack("!BBH", 0, proto, length)
        return src + dst + struct.pack("!IxxxB", length, proto)

    def _udp(self, src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
        length = 8 + len(payload)
        header = struct.pack("!HHHH", sport, dport, length & 0xFFFF, 0)
        checksum = _checksum(self._pseudo(src, dst, 17, length) + header + payload) or 0xFFFF
        return struct.pack("!HHHH", sport, dport, length & 0xFFFF, checksum) + payload

    def _tcp(self, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, payload: bytes) -> bytes:
        flags = 0x18  # PSH, ACK
        header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
        checksum = _checksum(self._pseudo(src, dst, 6, len(header) + len(payload)) + header + payload)
        return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, checksum, 0) + payload

    def _packet(self, ts: float, version: int, src: bytes, dst: bytes, proto: int, segment: bytes) -> None:
        if version == 4:
            total = 20 + len(segment)
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total & 0xFFFF, 0, 0x4000, 64, proto, 0, src, dst)
            header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
            frame = _ETHER_V4 + header + segment
        else:
            header = struct.pack("!IHBB16s16s", 6 << 28, len(segment) & 0xFFFF, proto, 64, src, dst)
            frame = _ETHER_V6 + header + segment
        seconds = int(ts)
        micros = round((ts - seconds) * 1_000_000)
        if micros >= 1_000_000:
            seconds, micros = seconds + 1, micros - 1_000_000
        captured = frame[:SNAPLEN]
        self.out.write(_RECORD.pack(seconds, micros, len(captured), len(frame)) + captured)
        self.out.flush()
