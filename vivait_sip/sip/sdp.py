"""SDP (RFC 8866) parsing/serialisation and RFC 3264 offer/answer helpers.

Pure data handling: no I/O, no clocks.  The parser is liberal (unknown line
types and attributes are kept) but strict about the structure it relies on
(v/o/s order, numeric ports, well-formed o=/c=/m=/t= lines).

Serialisation uses the canonical RFC 8866 line order, so a well-formed SDP
with CRLF line endings round-trips byte for byte.  Lines of unknown type are
re-emitted at the end of their section.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "Connection",
    "Direction",
    "MediaDescription",
    "Origin",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "Timing",
    "build_answer",
    "make_reoffer",
    "parse_sdp",
]

Attribute = tuple[str, str | None]
Bandwidth = tuple[str, int]

_LINE_RE = re.compile(r"([a-zA-Z])=(.*)", re.DOTALL)
_DIGITS_RE = re.compile(r"[0-9]{1,20}")  # bounded: int() rejects huge digit strings
_ENCODING = "utf-8"
# surrogateescape lets non-UTF-8 bytes in free-text fields survive a round trip.
_ERRORS = "surrogateescape"


class SdpError(ValueError):
    """The SDP body is malformed in a way we cannot safely interpret."""


class Direction(StrEnum):
    """Media direction attribute (RFC 8866 §6.7)."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    def answer(self) -> Direction:
        """Direction an answerer uses for this offered direction (RFC 3264 §6.1)."""
        return _ANSWER_DIRECTION[self]


_ANSWER_DIRECTION = {
    Direction.SENDRECV: Direction.SENDRECV,
    Direction.SENDONLY: Direction.RECVONLY,
    Direction.RECVONLY: Direction.SENDONLY,
    Direction.INACTIVE: Direction.INACTIVE,
}
_DIRECTION_NAMES = frozenset(d.value for d in Direction)


@dataclass(frozen=True)
class RtpMap:
    """An ``a=rtpmap`` entry (or a static payload type's implied mapping)."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None

    def matches(self, encoding: str, clock_rate: int) -> bool:
        """Codec names are case-insensitive (RFC 4855 §3)."""
        return self.encoding.lower() == encoding.lower() and self.clock_rate == clock_rate


# RFC 3551 static audio payload types, usable without an rtpmap line.
STATIC_PAYLOADS: dict[int, RtpMap] = {
    0: RtpMap(0, "PCMU", 8000),
    3: RtpMap(3, "GSM", 8000),
    4: RtpMap(4, "G723", 8000),
    8: RtpMap(8, "PCMA", 8000),
    9: RtpMap(9, "G722", 8000),
    13: RtpMap(13, "CN", 8000),
    18: RtpMap(18, "G729", 8000),
}


@dataclass
class Origin:
    """The ``o=`` line; (username, session_id, address) identify the session."""

    username: str
    session_id: str
    session_version: int
    nettype: str
    addrtype: str
    address: str

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass
class Connection:
    """A ``c=`` line; ``address`` keeps any multicast ``/ttl/count`` suffix."""

    nettype: str
    addrtype: str
    address: str

    @classmethod
    def for_address(cls, address: str) -> Connection:
        """Build an ``IN IP4``/``IN IP6`` connection for a unicast address."""
        return cls("IN", "IP6" if ":" in address else "IP4", address)

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass
class Timing:
    """A ``t=`` line with the ``r=`` repeat lines that belong to it."""

    start: int = 0
    stop: int = 0
    repeats: list[str] = field(default_factory=list)


def _find_attribute(attributes: Sequence[Attribute], name: str) -> Attribute | None:
    for attr in attributes:
        if attr[0] == name:
            return attr
    return None


def _direction_of(attributes: Sequence[Attribute]) -> Direction | None:
    for name, _ in attributes:
        if name in _DIRECTION_NAMES:
            return Direction(name)
    return None


@dataclass
class MediaDescription:
    """One ``m=`` section."""

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    title: str | None = None
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    unknown_lines: list[tuple[str, str]] = field(default_factory=list)

    def attribute(self, name: str) -> str | None:
        """Value of the first attribute called ``name`` (None if absent or flag)."""
        attr = _find_attribute(self.attributes, name)
        return None if attr is None else attr[1]

    def has_attribute(self, name: str) -> bool:
        """True if an attribute (flag or valued) called ``name`` is present."""
        return _find_attribute(self.attributes, name) is not None

    def attributes_named(self, name: str) -> list[str | None]:
        """Values of every attribute called ``name``, in order."""
        return [value for attr, value in self.attributes if attr == name]

    def _payload_attribute(self, name: str, payload_type: int) -> str | None:
        prefix = str(payload_type)
        for value in self.attributes_named(name):
            if value is None:
                continue
            pt, _, rest = value.partition(" ")
            if pt == prefix:
                return rest.strip()
        return None

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        """Codec for a payload type, falling back to the RFC 3551 static table."""
        value = self._payload_attribute("rtpmap", payload_type)
        if value is not None:
            parts = value.split("/")
            if (
                len(parts) in (2, 3)
                and parts[0]
                and all(_DIGITS_RE.fullmatch(p) for p in parts[1:])
            ):
                channels = int(parts[2]) if len(parts) == 3 else None
                return RtpMap(payload_type, parts[0], int(parts[1]), channels)
            return None
        return STATIC_PAYLOADS.get(payload_type)

    def fmtp(self, payload_type: int) -> str | None:
        """Format parameters (``a=fmtp``) for a payload type."""
        return self._payload_attribute("fmtp", payload_type)

    def payload_types(self) -> list[int]:
        """The numeric formats of an RTP m-line (non-numeric ones are skipped)."""
        return [int(f) for f in self.formats if _DIGITS_RE.fullmatch(f) and int(f) <= 127]

    def codecs(self) -> list[RtpMap]:
        """Known codecs in offer order; formats without a mapping are skipped."""
        found = (self.rtpmap(pt) for pt in self.payload_types())
        return [codec for codec in found if codec is not None]

    def telephone_event_payload(self, clock_rate: int | None = None) -> int | None:
        """Payload type of RFC 4733 DTMF events, optionally at a given clock rate."""
        for codec in self.codecs():
            if codec.encoding.lower() == "telephone-event" and (
                clock_rate is None or codec.clock_rate == clock_rate
            ):
                return codec.payload_type
        return None

    @property
    def ptime(self) -> float | None:
        """Packet time in milliseconds, if given and numeric."""
        value = self.attribute("ptime")
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            return None

    def direction(self, fallback: Direction = Direction.SENDRECV) -> Direction:
        """Media-level direction, else ``fallback`` (normally the session's)."""
        return _direction_of(self.attributes) or fallback

    def set_direction(self, direction: Direction) -> None:
        """Replace any direction attribute with ``direction``."""
        self.attributes = [a for a in self.attributes if a[0] not in _DIRECTION_NAMES]
        self.attributes.append((direction.value, None))

    @property
    def rejected(self) -> bool:
        """Port 0 means the stream is rejected or removed (RFC 3264 §6, §8.2)."""
        return self.port == 0

    def _lines(self) -> list[str]:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        lines = [f"m={' '.join([self.media, port, self.proto, *self.formats])}"]
        if self.title is not None:
            lines.append(f"i={self.title}")
        if self.connection is not None:
            lines.append(f"c={self.connection}")
        lines.extend(f"b={bwtype}:{value}" for bwtype, value in self.bandwidths)
        if self.key is not None:
            lines.append(f"k={self.key}")
        lines.extend(_attribute_line(attr) for attr in self.attributes)
        lines.extend(f"{kind}={value}" for kind, value in self.unknown_lines)
        return lines


@dataclass
class SessionDescription:
    """A complete SDP body."""

    origin: Origin
    session_name: str = "-"
    version: int = 0
    information: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=lambda: [Timing()])
    time_zones: str | None = None
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    unknown_lines: list[tuple[str, str]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    def attribute(self, name: str) -> str | None:
        """Value of the first session-level attribute called ``name``."""
        attr = _find_attribute(self.attributes, name)
        return None if attr is None else attr[1]

    def has_attribute(self, name: str) -> bool:
        """True if a session-level attribute called ``name`` is present."""
        return _find_attribute(self.attributes, name) is not None

    @property
    def direction(self) -> Direction:
        """Session-level direction; sendrecv when unspecified (RFC 8866 §6.7)."""
        return _direction_of(self.attributes) or Direction.SENDRECV

    def media_direction(self, media: MediaDescription) -> Direction:
        """Effective direction of a stream, inheriting the session-level value."""
        return media.direction(self.direction)

    def media_connection(self, media: MediaDescription) -> Connection | None:
        """Effective connection of a stream (media-level ``c=`` wins)."""
        return media.connection or self.connection

    def to_str(self) -> str:
        """Serialise with CRLF line endings."""
        lines = [f"v={self.version}", f"o={self.origin}", f"s={self.session_name}"]
        if self.information is not None:
            lines.append(f"i={self.information}")
        if self.uri is not None:
            lines.append(f"u={self.uri}")
        lines.extend(f"e={email}" for email in self.emails)
        lines.extend(f"p={phone}" for phone in self.phones)
        if self.connection is not None:
            lines.append(f"c={self.connection}")
        lines.extend(f"b={bwtype}:{value}" for bwtype, value in self.bandwidths)
        for timing in self.timings:
            lines.append(f"t={timing.start} {timing.stop}")
            lines.extend(f"r={repeat}" for repeat in timing.repeats)
        if self.time_zones is not None:
            lines.append(f"z={self.time_zones}")
        if self.key is not None:
            lines.append(f"k={self.key}")
        lines.extend(_attribute_line(attr) for attr in self.attributes)
        lines.extend(f"{kind}={value}" for kind, value in self.unknown_lines)
        for media in self.media:
            lines.extend(media._lines())
        return "\r\n".join(lines) + "\r\n"

    def to_bytes(self) -> bytes:
        """Serialise to the wire form (CRLF, UTF-8)."""
        return self.to_str().encode(_ENCODING, _ERRORS)


def _attribute_line(attr: Attribute) -> str:
    name, value = attr
    return f"a={name}" if value is None else f"a={name}:{value}"


def _parse_int(text: str, what: str, *, maximum: int | None = None) -> int:
    if not _DIGITS_RE.fullmatch(text):
        raise SdpError(f"{what} must be an integer of at most 20 digits, got {text!r}")
    value = int(text)
    if maximum is not None and value > maximum:
        raise SdpError(f"{what} out of range: {value}")
    return value


def _parse_origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6:
        raise SdpError(f"o= needs 6 fields, got {len(parts)}: {value!r}")
    username, sess_id, sess_version, nettype, addrtype, address = parts
    return Origin(
        username,
        sess_id,
        _parse_int(sess_version, "o= session version"),
        nettype,
        addrtype,
        address,
    )


def _parse_connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3:
        raise SdpError(f"c= needs 3 fields, got {len(parts)}: {value!r}")
    return Connection(*parts)


def _parse_bandwidth(value: str) -> Bandwidth:
    bwtype, sep, amount = value.partition(":")
    if not sep or not bwtype:
        raise SdpError(f"b= must be <bwtype>:<bandwidth>, got {value!r}")
    return bwtype, _parse_int(amount, "b= bandwidth")


def _parse_attribute(value: str) -> Attribute:
    name, sep, rest = value.partition(":")
    if not name:
        raise SdpError(f"a= has an empty attribute name: {value!r}")
    return (name, rest if sep else None)


def _parse_timing(value: str) -> Timing:
    parts = value.split()
    if len(parts) != 2:
        raise SdpError(f"t= needs 2 fields, got {value!r}")
    return Timing(_parse_int(parts[0], "t= start"), _parse_int(parts[1], "t= stop"))


def _parse_media_line(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"m= needs at least media, port and proto: {value!r}")
    media, port_text, proto, *formats = parts
    port_str, slash, count_str = port_text.partition("/")
    port = _parse_int(port_str, "m= port", maximum=65535)
    count = _parse_int(count_str, "m= port count") if slash else None
    if count == 0:
        raise SdpError("m= port count must be positive")
    return MediaDescription(media, port, proto, formats, port_count=count)


def _split_lines(data: bytes | str) -> list[tuple[str, str]]:
    text = data.decode(_ENCODING, _ERRORS) if isinstance(data, bytes) else data
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    parsed = []
    for number, raw in enumerate(lines, start=1):
        line = raw.removesuffix("\r")
        if not line:
            continue  # tolerate blank lines some UAs emit between sections
        match = _LINE_RE.fullmatch(line)
        if match is None:
            raise SdpError(f"line {number} is not of the form <type>=<value>: {line[:40]!r}")
        kind, value = match.group(1), match.group(2)
        if "\r" in value or "\x00" in value:
            raise SdpError(f"line {number} contains a CR or NUL character")
        parsed.append((kind, value))
    return parsed


_SESSION_ONLY = frozenset("vosuepzrt")


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse an SDP body, raising :class:`SdpError` when it is malformed."""
    lines = _split_lines(data)
    for index, expected in enumerate("vos"):
        if len(lines) <= index or lines[index][0] != expected:
            raise SdpError(
                f"SDP must start with v=, o=, s=; missing {expected}= at line {index + 1}"
            )
    if lines[0][1] != "0":
        raise SdpError(f"unsupported SDP version {lines[0][1]!r}")
    session = SessionDescription(
        origin=_parse_origin(lines[1][1]), session_name=lines[2][1], timings=[]
    )
    current: MediaDescription | None = None
    for kind, value in lines[3:]:
        if kind == "m":
            current = _parse_media_line(value)
            session.media.append(current)
        elif current is None:
            _parse_session_line(session, kind, value)
        else:
            _parse_media_attribute_line(current, kind, value)
    return session


def _parse_session_line(session: SessionDescription, kind: str, value: str) -> None:
    match kind:
        case "v" | "o" | "s":
            raise SdpError(f"duplicate {kind}= line")
        case "i":
            session.information = value
        case "u":
            session.uri = value
        case "e":
            session.emails.append(value)
        case "p":
            session.phones.append(value)
        case "c":
            if session.connection is not None:
                raise SdpError("more than one session-level c= line")
            session.connection = _parse_connection(value)
        case "b":
            session.bandwidths.append(_parse_bandwidth(value))
        case "t":
            session.timings.append(_parse_timing(value))
        case "r":
            if not session.timings:
                raise SdpError("r= line before any t= line")
            session.timings[-1].repeats.append(value)
        case "z":
            session.time_zones = value
        case "k":
            session.key = value
        case "a":
            session.attributes.append(_parse_attribute(value))
        case _:
            session.unknown_lines.append((kind, value))


def _parse_media_attribute_line(media: MediaDescription, kind: str, value: str) -> None:
    match kind:
        case _ if kind in _SESSION_ONLY:
            raise SdpError(f"{kind}= line is not allowed inside an m= section")
        case "i":
            media.title = value
        case "c":
            if media.connection is not None:
                raise SdpError("more than one c= line in an m= section")
            media.connection = _parse_connection(value)
        case "b":
            media.bandwidths.append(_parse_bandwidth(value))
        case "k":
            media.key = value
        case "a":
            media.attributes.append(_parse_attribute(value))
        case _:
            media.unknown_lines.append((kind, value))


def build_answer(
    offer: SessionDescription,
    local_address: str,
    local_ports: Sequence[int],
    supported_codecs: Sequence[tuple[str, int]],
    session_id: str,
    session_version: int,
    *,
    protos: Collection[str] = ("RTP/AVP",),
    username: str = "-",
) -> SessionDescription:
    """Answer an offer per RFC 3264 §6.

    ``local_ports[i]`` is the port for ``offer.media[i]``; a missing entry or
    port 0 rejects that stream.  A stream is also rejected if the offerer
    rejected it, its proto is not in ``protos``, or no codec matches.
    Matched codecs keep the offerer's payload numbers, in our preference
    order; telephone-event is kept when offered at a matched clock rate.
    """
    answer = SessionDescription(
        origin=Origin(
            username,
            session_id,
            session_version,
            "IN",
            "IP6" if ":" in local_address else "IP4",
            local_address,
        ),
        connection=Connection.for_address(local_address),
    )
    for index, offered in enumerate(offer.media):
        port = local_ports[index] if index < len(local_ports) else 0
        codecs = _select_codecs(offered, supported_codecs)
        if port == 0 or offered.rejected or offered.proto not in protos or not codecs:
            answer.media.append(_rejected(offered))
            continue
        media = MediaDescription(
            offered.media, port, offered.proto, [str(c.payload_type) for c in codecs]
        )
        for codec in codecs:
            media.attributes.append(("rtpmap", _rtpmap_value(codec)))
            fmtp = offered.fmtp(codec.payload_type)
            if fmtp is not None:
                media.attributes.append(("fmtp", f"{codec.payload_type} {fmtp}"))
        media.set_direction(offer.media_direction(offered).answer())
        answer.media.append(media)
    return answer


def _select_codecs(
    offered: MediaDescription, supported_codecs: Sequence[tuple[str, int]]
) -> list[RtpMap]:
    offered_codecs = offered.codecs()
    selected: list[RtpMap] = []
    for name, rate in supported_codecs:
        selected.extend(c for c in offered_codecs if c.matches(name, rate) and c not in selected)
    rates = {c.clock_rate for c in selected}
    selected.extend(
        c
        for c in offered_codecs
        if c.encoding.lower() == "telephone-event" and c.clock_rate in rates and c not in selected
    )
    return selected


def _rtpmap_value(codec: RtpMap) -> str:
    suffix = "" if codec.channels is None else f"/{codec.channels}"
    return f"{codec.payload_type} {codec.encoding}/{codec.clock_rate}{suffix}"


def _rejected(offered: MediaDescription) -> MediaDescription:
    """Rejected stream: port 0, same media/proto, offer's formats (RFC 3264 §6)."""
    return MediaDescription(offered.media, 0, offered.proto, list(offered.formats))


def make_reoffer(
    previous: SessionDescription, direction: Direction | None = None
) -> SessionDescription:
    """Copy of our last SDP with the o= version bumped, for a re-INVITE.

    With ``direction`` set (e.g. SENDONLY or INACTIVE to put a call on hold,
    SENDRECV to resume) every active stream gets that direction explicitly and
    any session-level direction is dropped so it cannot contradict it.
    """
    offer = copy.deepcopy(previous)
    offer.origin.session_version += 1
    if direction is not None:
        offer.attributes = [a for a in offer.attributes if a[0] not in _DIRECTION_NAMES]
        for media in offer.media:
            if not media.rejected:
                media.set_direction(direction)
    return offer
