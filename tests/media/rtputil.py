"""Helpers for the media tests: SDP of a party, RTP and RTCP packets."""

from __future__ import annotations

import struct

_HDR = struct.Struct("!BBHII")


def party_sdp(
    host: str,
    port: int,
    *,
    codecs: str = "0 8 101",
    direction: str = "sendrecv",
    rtcp_mux: bool = False,
    rtcp_port: int | None = None,
    ice: bool = False,
    session_id: str = "1",
    version: int = 1,
) -> str:
    lines = [
        "v=0",
        f"o=- {session_id} {version} IN IP4 {host}",
        "s=-",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {codecs}",
    ]
    names = {"0": "PCMU/8000", "8": "PCMA/8000", "101": "telephone-event/8000", "9": "G722/8000"}
    for pt in codecs.split():
        lines.append(f"a=rtpmap:{pt} {names[pt]}")
    if "101" in codecs.split():
        lines.append("a=fmtp:101 0-16")
    lines.append("a=ptime:20")
    if rtcp_port is not None:
        lines.append(f"a=rtcp:{rtcp_port}")
    if rtcp_mux:
        lines.append("a=rtcp-mux")
    if ice:
        lines += ["a=ice-ufrag:abcd", "a=ice-pwd:0123456789abcdef012345", f"a=candidate:1 1 udp 2130706431 {host} {port} typ host"]
    lines.append(f"a={direction}")
    return "\r\n".join(lines) + "\r\n"


def rtp(seq: int, ts: int, ssrc: int, payload: bytes = b"\xff" * 160, *, pt: int = 0, marker: bool = False) -> bytes:
    return _HDR.pack(0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def parse_rtp(data: bytes | bytearray) -> tuple[int, bool, int, int, int, bytes]:
    """(payload type, marker, seq, ts, ssrc, payload)."""
    first, second, seq, ts, ssrc = _HDR.unpack_from(data)
    assert first >> 6 == 2
    offset = 12 + 4 * (first & 0x0F)
    return second & 0x7F, bool(second & 0x80), seq, ts, ssrc, bytes(data[offset:])


def receiver_report(ssrc: int, about: int, *, fraction: int = 0, cumulative: int = 0, high_seq: int = 0, jitter: int = 0) -> bytes:
    block = struct.pack("!IB3sIIII", about, fraction, cumulative.to_bytes(3, "big", signed=True), high_seq, jitter, 0, 0)
    return struct.pack("!BBHI", 0x81, 201, 7, ssrc) + block


def sender_report(ssrc: int, rtp_ts: int, packets: int = 10, octets: int = 1600) -> bytes:
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 0, 0, rtp_ts, packets, octets)
