"""What the relay needs from a party's SDP, and the SDP rewritten to point at the relay.

Pure functions on `sip.sdp.SessionDescription`: no sockets, no state."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..sip.sdp import (
    Connection,
    Direction,
    MediaDescription,
    SdpError,
    SessionDescription,
    parse_sdp,
)
from .srtp import Crypto, parse_crypto

Addr = tuple[str, int]

# Attributes of ICE (RFC 8839): dropped from what we forward, since media now goes through
# the relay's own address and a phone that tried ICE would bypass it.
ICE_ATTRIBUTES = frozenset(
    ("candidate", "ice-ufrag", "ice-pwd", "ice-options", "ice-lite", "end-of-candidates", "remote-candidates", "ice-mismatch")
)
RTP_PROTOS = ("RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF", "UDP/TLS/RTP/SAVP", "UDP/TLS/RTP/SAVPF")
# What only a WebRTC (ICE + DTLS-SRTP + BUNDLE) party understands: dropped from an SDP
# going to a plain RTP party (the bridge terminates them), and replaced by our own
# towards a WebRTC party (webrtc_bridge.py writes those).
WEBRTC_MEDIA_ATTRIBUTES = frozenset(
    ("fingerprint", "setup", "tls-id", "mid", "msid", "ssrc", "ssrc-group", "extmap", "extmap-allow-mixed", "rtcp-fb", "rtcp-rsize")
)
WEBRTC_SESSION_ATTRIBUTES = frozenset(("fingerprint", "setup", "tls-id", "group", "msid-semantic", "extmap-allow-mixed", "ice-lite"))


def is_dtls_proto(proto: str) -> bool:
    """UDP/TLS/RTP/SAVP(F): DTLS-SRTP over ICE, a WebRTC party."""
    return proto.upper().startswith("UDP/TLS/")
_UNSPECIFIED = frozenset(("0.0.0.0", "::"))


@dataclass
class StreamInfo:
    """One m= line as its sender describes itself."""

    media: str
    proto: str
    rtp: Addr | None  # where it wants our RTP; None: port 0, or an unspecified address (old hold)
    rtcp: Addr | None  # where it wants RTCP (a=rtcp, else port + 1); None as above
    rtcp_mux: bool  # it offered or accepted a=rtcp-mux
    direction: Direction
    clock_rates: dict[int, int] = field(default_factory=dict)  # payload type → clock rate
    g711: list[tuple[int, str]] = field(default_factory=list)  # (payload type, PCMU|PCMA) in its order
    dtmf_pt: int | None = None  # its telephone-event payload type (at 8 kHz if offered)
    ptime_ms: int = 20
    rejected: bool = False
    crypto: Crypto | None = None  # its first usable a=crypto line (SDES SRTP)
    # WebRTC (DTLS-SRTP over ICE): its ICE credentials, certificate fingerprints, DTLS
    # role (a=setup) and mid, from the m= line or else the session level
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str | None = None
    mid: str | None = None

    is_rtp: bool = field(init=False)  # an RTP profile (else forwarded as plain UDP)

    def __post_init__(self) -> None:
        self.is_rtp = self.proto.upper() in RTP_PROTOS

    @property
    def sends(self) -> bool:
        """It says it will send (sendrecv or sendonly) and wants media back somewhere: used
        for the RTP timeout.  A party at an unspecified address (c=0.0.0.0, RFC 2543 hold,
        or the placeholder of a call the B2BUA answers itself) is not expected to send."""
        return not self.rejected and self.rtp is not None and self.direction in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def holding(self) -> bool:
        """sendonly: it holds the call (RFC 3264 §8.4) and may well send nothing."""
        return self.direction is Direction.SENDONLY

    def clock_rate(self, payload_type: int) -> int:
        return self.clock_rates.get(payload_type, 8000)


def parse(sdp: str | bytes) -> SessionDescription:
    try:
        return parse_sdp(sdp)
    except SdpError:
        raise
    except Exception as exc:  # defensive: any parser surprise is a bad SDP, never a crash
        raise SdpError(str(exc)) from None


def stream_infos(session: SessionDescription) -> list[StreamInfo]:
    infos = []
    for media in session.media:
        infos.append(_stream_info(session, media))
    return infos


def _stream_info(session: SessionDescription, media: MediaDescription) -> StreamInfo:
    conn = session.media_connection(media)
    host = conn.address.split("/")[0] if conn is not None else None
    rejected = media.rejected
    rtp: Addr | None = None
    rtcp: Addr | None = None
    if host is not None and host not in _UNSPECIFIED and not rejected:
        rtp = (host, media.port)
        rtcp = (host, media.port + 1)
        value = media.attribute("rtcp")
        if value:
            parts = value.split()
            if parts and parts[0].isdigit():
                rtcp = (parts[3] if len(parts) >= 4 and parts[3] not in _UNSPECIFIED else host, int(parts[0]))
    rates: dict[int, int] = {}
    g711: list[tuple[int, str]] = []
    dtmf: int | None = None
    for codec in media.codecs():
        rates[codec.payload_type] = codec.clock_rate
        name = codec.encoding.upper()
        if name in ("PCMU", "PCMA") and codec.clock_rate == 8000:
            g711.append((codec.payload_type, name))
        elif name == "TELEPHONE-EVENT" and (dtmf is None or codec.clock_rate == 8000):
            dtmf = codec.payload_type
    ptime = media.ptime
    crypto = None
    for value in media.attributes_named("crypto"):
        crypto = parse_crypto(value)
        if crypto is not None:
            break
    def either(name: str) -> str | None:
        value = media.attribute(name)
        return value if value is not None else session.attribute(name)

    prints: list[tuple[str, str]] = []
    for value in media.attributes_named("fingerprint") or [v for n, v in session.attributes if n == "fingerprint"]:
        alg, _, digest = (value or "").strip().partition(" ")
        if alg and digest:
            prints.append((alg.strip(), digest.strip()))
    return StreamInfo(
        media=media.media,
        proto=media.proto,
        rtp=rtp,
        rtcp=rtcp,
        rtcp_mux=media.has_attribute("rtcp-mux"),
        direction=session.media_direction(media),
        clock_rates=rates,
        g711=g711,
        dtmf_pt=dtmf,
        ptime_ms=int(ptime) if ptime is not None and 10 <= ptime <= 120 else 20,
        rejected=rejected,
        crypto=crypto,
        ice_ufrag=either("ice-ufrag"),
        ice_pwd=either("ice-pwd"),
        fingerprints=prints,
        setup=(either("setup") or "").strip().lower() or None,
        mid=media.attribute("mid"),
    )


Transport = tuple[str, str | None]  # (proto, a=crypto value or None)


def rewrite(
    session: SessionDescription,
    address: str,
    ports: list[int],
    transports: list[Transport | None] | None = None,
    mux: list[bool | None] | None = None,
) -> SessionDescription:
    """A copy of `session` pointing at the relay: origin and every c= at `address`, m= line
    `i` at `ports[i]` (0: rejected stream stays at 0), a=rtcp at the port above, ICE dropped.
    With `transports[i]`, m= line `i` gets that proto and its a=crypto lines are replaced
    by the one given (none when None): SRTP terminated at the relay.  With `mux[i]` True or
    False, m= line `i` gets a=rtcp-mux or loses it."""
    out = copy.deepcopy(session)
    addrtype = "IP6" if ":" in address else "IP4"
    out.origin.address = address
    out.origin.addrtype = addrtype
    if out.connection is not None or any(m.connection is None for m in out.media):
        out.connection = Connection.for_address(address)
    for index, media in enumerate(out.media):
        port = ports[index] if index < len(ports) else 0
        if media.connection is not None:
            media.connection = Connection.for_address(address)
        if media.port == 0 or port == 0:
            media.port = 0
            continue
        media.port = port
        transport = transports[index] if transports is not None and index < len(transports) else None
        if transport is not None:
            media.proto = transport[0]
        attributes = []
        for name, value in media.attributes:
            if name in ICE_ATTRIBUTES or (transport is not None and name == "crypto"):
                continue
            if name == "rtcp":
                value = f"{port + 1} IN {addrtype} {address}"
            attributes.append((name, value))
        if transport is not None and transport[1] is not None:
            attributes.append(("crypto", transport[1]))
        want_mux = mux[index] if mux is not None and index < len(mux) else None
        if want_mux is False:
            attributes = [a for a in attributes if a[0] != "rtcp-mux"]
        elif want_mux and not any(a[0] == "rtcp-mux" for a in attributes):
            attributes.append(("rtcp-mux", None))
        media.attributes = attributes
    out.attributes = [a for a in out.attributes if a[0] not in ICE_ATTRIBUTES]
    return out

