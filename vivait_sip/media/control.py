"""The media control API: messages in the shape of rtpengine's NG protocol.

Pure data (frozen dataclasses), no I/O: what the B2BUA, the WebRTC gateway, voicemail,
IVR and the ACD ask of a media backend, and what it answers.  The same messages go to
the built-in relay (media worker processes) and, spoken as NG commands over UDP
(`ng.py`), to rtpengine daemons.

A media session is keyed like rtpengine's: by a Call-ID and the tags of its two sides.
`from_tag` is always the side that made the offer being handled (the caller for the
first INVITE, the callee for a re-INVITE it sends), `to_tag` the other side.  SDP goes
in as it came from a party and comes out rewritten to point at the relay.

Every command is answered with a `MediaReply`; backends never raise for a refused or
failed request: `reply.ok` is False and `reply.error` says why in a sentence.  Callers
that need an exception use `reply.check()` (`MediaError`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Literal, Protocol

__all__ = [
    "Answer",
    "CallKey",
    "CodecFlags",
    "Delete",
    "Dtls",
    "Ice",
    "Latching",
    "LegStats",
    "MediaBackend",
    "MediaCommand",
    "MediaError",
    "MediaFlags",
    "MediaReply",
    "Offer",
    "Ping",
    "PlayDtmf",
    "PlayMedia",
    "Query",
    "Replace",
    "ReplaceParty",
    "RtcpMux",
    "StartRecording",
    "StopMedia",
    "StopRecording",
    "TransportProtocol",
]

MAX_SDP = 256 * 1024  # an SDP larger than this is refused before it reaches a backend
_DTMF_RE = re.compile(r"[0-9*#A-Da-d]")
_TOKEN_RE = re.compile(r"[!-~]{1,1024}")  # printable ASCII, no spaces: Call-IDs, tags, codec names


class MediaError(Exception):
    """A media request failed (refused, timed out, no backend): the sentence says why."""


# ---- flags ------------------------------------------------------------------------------


class TransportProtocol(StrEnum):
    """The m= line protocol a side should see (rtpengine `transport-protocol`): plain RTP
    for phones, SAVPF over DTLS for browsers; the relay converts between them."""

    RTP_AVP = "RTP/AVP"
    RTP_AVPF = "RTP/AVPF"
    RTP_SAVP = "RTP/SAVP"
    RTP_SAVPF = "RTP/SAVPF"
    UDP_TLS_RTP_SAVP = "UDP/TLS/RTP/SAVP"
    UDP_TLS_RTP_SAVPF = "UDP/TLS/RTP/SAVPF"


class Ice(StrEnum):
    """ICE candidates in the rewritten SDP: `remove` them (plain SIP phones), `force` the
    relay's own (browsers), or `default` (kept when the offer had them)."""

    REMOVE = "remove"
    FORCE = "force"
    DEFAULT = "default"


class Dtls(StrEnum):
    """DTLS-SRTP role the relay takes towards the side (`off`: no DTLS)."""

    OFF = "off"
    PASSIVE = "passive"
    ACTIVE = "active"


class RtcpMux(StrEnum):
    """rtcp-mux handling (RFC 5761): `offer` it to the side, `demux` towards a side that
    cannot, `accept` it when offered, `reject` it, `require` it (WebRTC)."""

    OFFER = "offer"
    DEMUX = "demux"
    ACCEPT = "accept"
    REJECT = "reject"
    REQUIRE = "require"


class Latching(StrEnum):
    """`symmetric`: send to where a side's RTP comes from (phones behind NAT; the
    default); `asymmetric`: send to the address its SDP gives, whatever the source."""

    SYMMETRIC = "symmetric"
    ASYMMETRIC = "asymmetric"


class Replace(StrEnum):
    """SDP fields rewritten to the relay's: the `o=` line, the session-level `c=` line."""

    ORIGIN = "origin"
    SESSION_CONNECTION = "session-connection"


def _tokens(values: tuple[str, ...], what: str) -> tuple[str, ...]:
    for value in values:
        if not _TOKEN_RE.fullmatch(value):
            raise ValueError(f"{what}: {value!r} is not a token (1-1024 printable characters, no spaces)")
    return values


@dataclass(frozen=True, slots=True)
class CodecFlags:
    """Codec manipulation (rtpengine `codec`): names as in rtpmap (`PCMU`, `opus`), or
    `all` for strip."""

    strip: tuple[str, ...] = ()  # removed from the SDP the other side sees
    offer: tuple[str, ...] = ()  # kept (or restored) at the front of the list
    transcode: tuple[str, ...] = ()  # added, the relay transcoding when chosen
    mask: tuple[str, ...] = ()  # hidden from the other side, still accepted from this one

    def __post_init__(self) -> None:
        for name in ("strip", "offer", "transcode", "mask"):
            _tokens(getattr(self, name), f"codec.{name}")

    @property
    def empty(self) -> bool:
        return not (self.strip or self.offer or self.transcode or self.mask)


@dataclass(frozen=True, slots=True)
class MediaFlags:
    """How an offer or answer is rewritten; every field left at its default leaves the
    backend's own default (rtpengine's: symmetric latching, ICE kept as offered)."""

    transport_protocol: TransportProtocol | None = None
    ice: Ice | None = None
    dtls: Dtls | None = None
    rtcp_mux: tuple[RtcpMux, ...] = ()
    codec: CodecFlags = field(default_factory=CodecFlags)
    latching: Latching = Latching.SYMMETRIC
    media_handover: bool = False  # a new source address may take over a latched stream
    replace: tuple[Replace, ...] = ()
    direction: tuple[str, str] | None = None  # (from side's interface, to side's): rtpengine interface names
    media_address: str | None = None  # the address written into the SDP instead of the interface's
    record_call: bool = False
    flags: tuple[str, ...] = ()  # further NG flags passed through as they are ("trust address", ...)

    def __post_init__(self) -> None:
        if self.direction is not None:
            if len(self.direction) != 2:
                raise ValueError("direction: two interface names (from side, to side)")
            _tokens(tuple(self.direction), "direction")
        if self.media_address is not None:
            _tokens((self.media_address,), "media_address")
        for flag in self.flags:
            if not flag or len(flag) > 64 or not flag.isprintable():
                raise ValueError(f"flags: {flag!r} is not a flag name")


# ---- commands ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallKey:
    """A media session: the Call-ID and the two sides' tags (the offerer's first)."""

    call_id: str
    from_tag: str
    to_tag: str | None = None

    def __post_init__(self) -> None:
        _tokens((self.call_id, self.from_tag), "call key")
        if self.to_tag is not None:
            _tokens((self.to_tag,), "to tag")


class MediaCommand:
    """Base of the commands a backend takes; `command` is the NG command name."""

    __slots__ = ()
    command: ClassVar[str] = ""

    def session_id(self) -> str | None:
        """The Call-ID of the session a command is about (None: the backend itself)."""
        return None


def _check_sdp(sdp: bytes) -> None:
    if not sdp:
        raise ValueError("an offer or answer needs an SDP body")
    if len(sdp) > MAX_SDP:
        raise ValueError(f"SDP of {len(sdp)} bytes is over the {MAX_SDP} byte limit")


@dataclass(frozen=True, slots=True)
class Offer(MediaCommand):
    """An SDP offer from `key.from_tag`'s side; the reply's SDP goes to the other side."""

    command: ClassVar[str] = "offer"
    key: CallKey
    sdp: bytes
    flags: MediaFlags = field(default_factory=MediaFlags)

    def __post_init__(self) -> None:
        _check_sdp(self.sdp)

    def session_id(self) -> str | None:
        return self.key.call_id


@dataclass(frozen=True, slots=True)
class Answer(MediaCommand):
    """The SDP answer of `key.to_tag`'s side to the offer `key.from_tag` made; the reply's
    SDP goes back to the offerer."""

    command: ClassVar[str] = "answer"
    key: CallKey
    sdp: bytes
    flags: MediaFlags = field(default_factory=MediaFlags)

    def __post_init__(self) -> None:
        _check_sdp(self.sdp)
        if self.key.to_tag is None:
            raise ValueError("an answer needs the answering side's tag (to_tag)")

    def session_id(self) -> str | None:
        return self.key.call_id


@dataclass(frozen=True, slots=True)
class Delete(MediaCommand):
    """The session is over: free its ports (one side only when a tag is given)."""

    command: ClassVar[str] = "delete"
    call_id: str
    from_tag: str | None = None
    to_tag: str | None = None
    delay_s: int | None = None  # keep it this long first (late retransmissions); None: the backend's

    def __post_init__(self) -> None:
        _tokens(tuple(t for t in (self.call_id, self.from_tag, self.to_tag) if t is not None), "delete")
        if self.delay_s is not None and not 0 <= self.delay_s <= 3600:
            raise ValueError("delete delay: 0 to 3600 s")

    def session_id(self) -> str | None:
        return self.call_id


@dataclass(frozen=True, slots=True)
class Query(MediaCommand):
    """Statistics of a session, per leg."""

    command: ClassVar[str] = "query"
    call_id: str
    from_tag: str | None = None

    def __post_init__(self) -> None:
        _tokens(tuple(t for t in (self.call_id, self.from_tag) if t is not None), "query")

    def session_id(self) -> str | None:
        return self.call_id


@dataclass(frozen=True, slots=True)
class ReplaceParty(MediaCommand):
    """A transfer: the party `old_tag` of the session is replaced by `new_tag` (its side
    gets new ports), while the other party keeps its ports and receives one continuous
    stream (same SSRC, sequence and timestamps carried on).  With `sdp` (the new party's
    offer) the reply's SDP is that offer for the remaining party; without, it is an offer
    for the new party (the remaining party's last SDP at the new ports), whose answer goes
    in an `Answer` with `to_tag=new_tag`.  `kept_tag` names the remaining party (the
    built-in relay knows it; rtpengine needs it: NG has no such command, the rtpengine
    backend makes it an offer between the new and the kept party with `port-latching`,
    then deletes the old party's branch, see `ng.replace_party_to_ng`)."""

    command: ClassVar[str] = "replace party"
    call_id: str
    old_tag: str
    new_tag: str
    sdp: bytes | None = None
    flags: MediaFlags = field(default_factory=MediaFlags)
    kept_tag: str | None = None

    def __post_init__(self) -> None:
        _tokens((self.call_id, self.old_tag, self.new_tag), "replace party")
        if self.kept_tag is not None:
            _tokens((self.kept_tag,), "replace party")
        if len({self.old_tag, self.new_tag, self.kept_tag} - {None}) != (3 if self.kept_tag is not None else 2):
            raise ValueError("replace party: the old, new and kept tags must differ")
        if self.sdp is not None:
            _check_sdp(self.sdp)

    def session_id(self) -> str | None:
        return self.call_id


@dataclass(frozen=True, slots=True)
class PlayMedia(MediaCommand):
    """Play a prompt or music to the side `key.from_tag` names (replacing what the other
    side sends it): a file on the media server, or the audio itself (`blob`, a WAV)."""

    command: ClassVar[str] = "play media"
    key: CallKey
    file: str | None = None
    blob: bytes | None = None
    repeat: int = 1  # times to play; 0: until stopped

    def __post_init__(self) -> None:
        if (self.file is None) == (self.blob is None):
            raise ValueError("play media: exactly one of file or blob")
        if self.file is not None and (not self.file or "\x00" in self.file or len(self.file) > 4096):
            raise ValueError("play media: file must be a path")
        if self.blob is not None and not 0 < len(self.blob) <= 16 * 1024 * 1024:
            raise ValueError("play media: blob of 1 byte to 16 MiB")
        if not 0 <= self.repeat <= 100_000:
            raise ValueError("play media: repeat 0 (until stopped) to 100000")

    def session_id(self) -> str | None:
        return self.key.call_id


@dataclass(frozen=True, slots=True)
class StopMedia(MediaCommand):
    """Stop what `PlayMedia` plays to that side; the other side is heard again."""

    command: ClassVar[str] = "stop media"
    key: CallKey

    def session_id(self) -> str | None:
        return self.key.call_id


@dataclass(frozen=True, slots=True)
class StartRecording(MediaCommand):
    """Record the session (both directions)."""

    command: ClassVar[str] = "start recording"
    call_id: str
    from_tag: str | None = None
    name: str | None = None  # the file's stem (the built-in backend; rtpengine names its own)

    def __post_init__(self) -> None:
        _tokens(tuple(t for t in (self.call_id, self.from_tag, self.name) if t is not None), "start recording")

    def session_id(self) -> str | None:
        return self.call_id


@dataclass(frozen=True, slots=True)
class StopRecording(MediaCommand):
    command: ClassVar[str] = "stop recording"
    call_id: str
    from_tag: str | None = None

    def __post_init__(self) -> None:
        _tokens(tuple(t for t in (self.call_id, self.from_tag) if t is not None), "stop recording")

    def session_id(self) -> str | None:
        return self.call_id


@dataclass(frozen=True, slots=True)
class PlayDtmf(MediaCommand):
    """Send one RFC 4733 event (or in-band tone) to the side `key.from_tag` names."""

    command: ClassVar[str] = "play DTMF"
    key: CallKey
    code: str
    duration_ms: int = 250
    volume_db: int = -8  # dBm0, 0 to -63

    def __post_init__(self) -> None:
        if not _DTMF_RE.fullmatch(self.code):
            raise ValueError(f"play DTMF: {self.code!r} is not a DTMF digit (0-9 * # A-D)")
        if not 40 <= self.duration_ms <= 10_000:
            raise ValueError("play DTMF: duration 40 to 10000 ms")
        if not -63 <= self.volume_db <= 0:
            raise ValueError("play DTMF: volume 0 to -63 dBm0")

    def session_id(self) -> str | None:
        return self.key.call_id


@dataclass(frozen=True, slots=True)
class Ping(MediaCommand):
    """Is the backend alive (rtpengine answers `pong`)."""

    command: ClassVar[str] = "ping"


# ---- replies ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LegStats:
    """What the relay received from one side (one tag) of a session."""

    tag: str
    packets: int = 0
    bytes: int = 0
    errors: int = 0
    packets_lost: int | None = None  # from RTCP reports, when the backend has them
    loss: float | None = None  # fraction lost, 0.0-1.0
    jitter_ms: float | None = None
    address: str | None = None  # where this side's media comes from ("host:port")


@dataclass(frozen=True, slots=True)
class MediaReply:
    """The answer to any command: `result` is `ok` (`pong` to a ping) or `error`."""

    result: Literal["ok", "pong", "error"]
    sdp: bytes | None = None
    error: str | None = None  # the sentence, when result is "error"
    warning: str | None = None
    legs: tuple[LegStats, ...] = ()
    duration_ms: int | None = None  # play media: the length of what is played
    path: str | None = None  # start recording: the file being written; stop recording: the file closed
    seconds: float | None = None  # stop recording: its length
    backend: str | None = None  # who answered: "rtpengine 10.0.0.7:2223", "builtin worker 1"

    @property
    def ok(self) -> bool:
        return self.result != "error"

    def check(self) -> MediaReply:
        """Self when ok, else `MediaError(error)`."""
        if self.result == "error":
            raise MediaError(self.error or "media backend error")
        return self

    @classmethod
    def failure(cls, error: str, backend: str | None = None) -> MediaReply:
        return cls("error", error=error, backend=backend)


class MediaBackend(Protocol):
    """A media relay as the control side sees it: the built-in media workers or
    rtpengine daemons (`ng.RtpengineBackend`).

    `request` never raises for a failed request (its reply says `error`); `healthy` is
    False when no new session could be placed now; `status()` is JSON for `ctl media`
    (`backend`, `healthy`, `sessions`, and the backend's own detail)."""

    @property
    def name(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def request(self, msg: MediaCommand) -> MediaReply: ...

    @property
    def healthy(self) -> bool: ...

    def status(self) -> Mapping[str, object]: ...
