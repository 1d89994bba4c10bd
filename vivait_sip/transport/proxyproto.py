"""The PROXY protocol, versions 1 and 2 (HAProxy's proxy-protocol.txt), sans I/O.

A TLS-terminating or TCP proxy in front of the HTTPS/WSS port writes one header before
the client's bytes, naming the client's address; from a trusted proxy (`http.trusted_proxies`)
that address is the one per-IP caps, bans and `received=` see.  From any other address a
header is refused: it would let anyone choose the address they are judged by.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX = 16 + 1024  # header and addresses; longer TLV blocks are refused
PEEK_BYTES = V2_MAX


class ProxyHeaderError(ValueError):
    """Not a valid PROXY header."""


@dataclass(frozen=True)
class ProxyHeader:
    length: int  # bytes the header takes on the wire
    source: tuple[str, int] | None  # None: LOCAL (v2) or UNKNOWN (v1): the connection's own address


def starts_proxy_header(data: bytes) -> bool | None:
    """Do the first bytes of a connection start a PROXY header?  None: too few to tell."""
    if data[:6] == V1_PREFIX or data[:12] == V2_SIGNATURE:
        return True
    if (len(data) < 6 and V1_PREFIX.startswith(data)) or (len(data) < 12 and V2_SIGNATURE.startswith(data)):
        return None
    return False


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`; None while incomplete; ProxyHeaderError if bad."""
    if data[:12] == V2_SIGNATURE:
        return _parse_v2(data)
    if V2_SIGNATURE.startswith(data[:12]) and len(data) < 12:
        return None
    if data[:6] == V1_PREFIX:
        return _parse_v1(data)
    if V1_PREFIX.startswith(data[:6]) and len(data) < 6:
        return None
    raise ProxyHeaderError("no PROXY header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError("PROXY v1 line longer than 107 bytes")
        return None
    try:
        parts = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    length = end + 2
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(length, None)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 line is not 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
    _, family, src, dst, sport, dport = parts
    try:
        source = ipaddress.ip_address(src)
        ipaddress.ip_address(dst)
        ports = int(sport), int(dport)
    except ValueError:
        raise ProxyHeaderError("PROXY v1 line has a bad address or port") from None
    if source.version != (4 if family == "TCP4" else 6) or not all(0 <= p <= 65535 for p in ports):
        raise ProxyHeaderError("PROXY v1 address family or port out of range")
    return ProxyHeader(length, (str(source), ports[0]))


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    ver_cmd, fam, size = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError("PROXY v2 header with another version")
    if 16 + size > V2_MAX:
        raise ProxyHeaderError("PROXY v2 header too long")
    if len(data) < 16 + size:
        return None
    length = 16 + size
    command = ver_cmd & 0x0F
    if command == 0x0:  # LOCAL: the proxy's own connection (health checks)
        return ProxyHeader(length, None)
    if command != 0x1:
        raise ProxyHeaderError("PROXY v2 header with an unknown command")
    body = data[16:length]
    family, transport = fam >> 4, fam & 0x0F
    if transport not in (0x1, 0x0):
        raise ProxyHeaderError("PROXY v2 header for a datagram transport")
    if family == 0x1 and size >= 12:
        return ProxyHeader(length, (str(ipaddress.IPv4Address(body[0:4])), struct.unpack("!H", body[8:10])[0]))
    if family == 0x2 and size >= 36:
        return ProxyHeader(length, (str(ipaddress.IPv6Address(body[0:16])), struct.unpack("!H", body[32:34])[0]))
    if family == 0x0:  # AF_UNSPEC
        return ProxyHeader(length, None)
    raise ProxyHeaderError("PROXY v2 header with an unsupported address family")


def v1_header(source: tuple[str, int], dest: tuple[str, int]) -> bytes:
    """A v1 header (tests and tools)."""
    family = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {family} {source[0]} {dest[0]} {source[1]} {dest[1]}\r\n".encode()


def v2_header(source: tuple[str, int], dest: tuple[str, int]) -> bytes:
    """A v2 PROXY header over TCP (tests and tools)."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(dest[0])
    if src.version == 4:
        fam, addresses = 0x11, src.packed + dst.packed
    else:
        fam, addresses = 0x21, src.packed + dst.packed
    body = addresses + struct.pack("!HH", source[1], dest[1])
    return V2_SIGNATURE + bytes((0x21, fam)) + struct.pack("!H", len(body)) + body
