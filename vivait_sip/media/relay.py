"""The RTP relay as a pure state machine: datagrams in, datagrams out, one timer.

No sockets and no clock: the media worker (media/worker.py) feeds every datagram with the
local port it arrived on, its source address and its arrival time (`receive`), sends what
comes back, calls `on_timer(now)` at `deadline()` and drains `pop_events()`.  Tests drive
it the same way with made-up datagrams and times.

A **session** (one per Call-ID) has two **legs**, A (the party that sent the first offer)
and B; each leg has one **stream** per SDP m= line, with our local port pair facing that
party (RTP on an even port, RTCP on the next), the address its SDP advertised and the one
it really sends from (latched).

* **Symmetric RTP and latching.**  We send to a party from the port it sends to, and to
  the address it really sends from: the first packet from a source on a stream's port
  latches that address (a phone behind NAT advertises a private address its packets never
  come from).  Until then we send to the advertised address.  Packets from another source
  are dropped while the latched one is alive; after `relatch_s` of silence from it, a new
  source latches (the NAT mapping changed).  A new SDP with another address re-latches.
* **Our own o= line.**  Each party receives SDP with one origin of ours for the whole
  call (session id fixed, version raised when the SDP changes), whoever is behind the
  other leg: a transfer never shows a party a foreign origin.
* **Continuous streams across leg replacement.**  What we send to a party is an `OutStream`:
  the first source it carries passes through untouched; when the source changes (the
  other leg was replaced after a transfer, a player started or stopped, the far phone
  changed SSRC) the packets are rewritten so the party sees one stream: the same SSRC,
  the sequence number continuing from the last sent + 1, the timestamp from the last sent
  plus the time elapsed (at the payload's clock rate), the marker bit set on the first.
* **RTCP** is relayed (rtcp-mux on the RTP port or demuxed on port + 1, per party; SSRCs
  and SR timestamps rewritten with the same mapping).  Per stream we keep RFC 3550 A.1
  loss (expected - received, sequence wrap-around and reordering handled) and A.8
  interarrival jitter computed from the RTP we receive, and what the party reports in its
  RTCP receiver reports about the RTP we send it (fraction lost, cumulative lost, jitter).
* **RTP timeout.**  Once answered, a leg whose party should be sending (sendrecv or
  sendonly in its SDP) and has sent nothing for `rtp_timeout_s` gives one `RtpTimeout`
  event; the SIP side ends the call both ways with a CDR cause.
* **SRTP (SDES).**  A party whose SDP says RTP/SAVP with `a=crypto` has its SRTP
  terminated here (srtp.py): decrypted on the way in (a packet failing authentication is
  dropped and latches nothing), encrypted with our own key on the way out.  An offer may
  ask for another transport towards the other party (`transport="RTP/AVP"`: bridge an
  SRTP phone to plain RTP, or the reverse).
* **Injected sources.**  A `Player` (prompt, music on hold) or a `DtmfSender` (RFC 4733)
  replaces, while it runs, what we forward to one party, 20 ms packets paced by the timer.
* **WebRTC parties** (UDP/TLS/RTP/SAVPF: ICE, DTLS-SRTP, rtcp-mux) are bridged to plain
  RTP ones, or to each other (each leg its own DTLS-SRTP, payloads forwarded).  ICE and
  DTLS are not here: the media worker's bridge (webrtc_bridge.py, `Relay.webrtc`) answers
  the party's STUN checks and runs the DTLS handshake on the stream's port, then hands
  the relay the SRTP sessions (`webrtc_secure`) and the path (`webrtc_path`).  Until then
  nothing is forwarded to or from that party.  The SDP towards it gets the bridge's
  ICE-lite credentials, candidate, fingerprint and DTLS role; the SDP towards a plain
  party loses every WebRTC attribute.

No payload is decoded on the relay path (telephone-event payloads are read for
detection: they are four bytes of fields, not audio).  Recording taps see each received
RTP packet through `Session.tap`.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import math
import random
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from ..sip.sdp import SdpError, SessionDescription
from . import transcode
from .audio.dtmf import DtmfDetector, event_code, event_packets
from .sdpinfo import (
    RTP_PROTOS,
    WEBRTC_MEDIA_ATTRIBUTES,
    WEBRTC_SESSION_ATTRIBUTES,
    Addr,
    StreamInfo,
    Transport,
    is_dtls_proto,
    parse,
    rewrite,
    stream_infos,
)
from .srtp import (
    DEFAULT_SUITE,
    Crypto,
    SrtpError,
    inbound,
    is_sdes_proto,
    new_key,
    outbound,
)

Out = tuple[int, bytes | bytearray, Addr]  # (our local port to send from, datagram, destination)


class WebrtcHooks(Protocol):
    """What the relay asks of the media worker's WebRTC bridge (webrtc_bridge.py)."""

    def attributes(self, stream: Stream, *, offer: bool) -> list[tuple[str, str | None]]:
        """Our ICE and DTLS attributes for the m= line we send the party of `stream`."""
        ...

    def remote(self, stream: Stream) -> None:
        """The party of `stream` sent an SDP (`stream.info`: its ICE and DTLS parameters)."""
        ...

    def released(self, port: int) -> None:
        """The stream on `port` is gone (the call ended, the party was replaced)."""
        ...

# (leg index 0/1, payload type, RTP timestamp, sequence, the packet, arrival time)
Tap = Callable[[int, int, int, int, bytes, float], None]

_HDR = struct.Struct("!BBHII")
_SEQ_TS_SSRC = struct.Struct("!HII")
_U32 = struct.Struct("!I")
_RTCP_HDR = struct.Struct("!BBH")
MAX_DROPOUT = 3000
MAX_MISORDER = 100
RTP_SEQ_MOD = 1 << 16
SCAN_INTERVAL_S = 1.0
MAX_CATCH_UP_S = 0.2  # a source paced later than this skips ahead instead of bursting
MUX_POLICIES = (None, "offer", "demux", "accept", "reject")
SOURCE_GRID_S = 0.004  # sources start on this grid (at most 5 timer wake-ups per 20 ms)


class MediaError(Exception):
    """A command the relay refuses; `code` is stable for callers (503 for `ports_exhausted`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PortsExhausted(MediaError):
    def __init__(self, message: str = "no free RTP port in this media worker's range") -> None:
        super().__init__("ports_exhausted", message)


# ---- ports ------------------------------------------------------------------------------


class PortPool:
    """Even RTP ports (RTCP on the odd port above) of [port_min, port_max], least recently
    freed last.  The worker's subclass binds the sockets (`allocate` may skip a port some
    other program holds)."""

    def __init__(self, port_min: int, port_max: int) -> None:
        first = port_min + (port_min & 1)
        self.port_min = port_min
        self.port_max = port_max
        self._free: deque[int] = deque(range(first, port_max, 2))  # port + 1 <= port_max
        self.total = len(self._free)
        self.in_use: set[int] = set()

    def allocate(self) -> int:
        if not self._free:
            raise PortsExhausted(f"no free RTP port pair in {self.port_min}-{self.port_max} ({self.total} pairs, all in use)")
        port = self._free.popleft()
        self.in_use.add(port)
        return port

    def release(self, port: int) -> None:
        if port in self.in_use:
            self.in_use.discard(port)
            self._free.append(port)

    @property
    def available(self) -> int:
        return len(self._free)


# ---- events -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RelayEvent:
    kind: ClassVar[str] = ""
    call_id: str
    tag: str | None  # the party concerned
    leg: str  # "A" or "B"

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["event"] = self.kind
        return out


@dataclass(frozen=True)
class RtpTimeout(RelayEvent):
    """The party of `leg` sent no RTP for `idle_s` (≥ rtp_timeout_s) while it should."""

    kind: ClassVar[str] = "rtp_timeout"
    idle_s: float = 0.0
    cause: str | None = None  # None: "RTP timeout"; a WebRTC party gone says how (bridge)


@dataclass(frozen=True)
class DtmfDetected(RelayEvent):
    """The party of `leg` sent an RFC 4733 event (reported once, at its end)."""

    kind: ClassVar[str] = "dtmf"
    digit: str = ""
    duration_ms: int = 0
    volume: int = 0
    ended: bool = True  # False: its end packets never came (reported at the next event)


@dataclass(frozen=True)
class PlayDone(RelayEvent):
    """A non-looping player to the party of `leg` reached its end (or was stopped)."""

    kind: ClassVar[str] = "play_done"
    name: str = ""
    stopped: bool = False


# ---- what we send to one party ------------------------------------------------------------


class OutStream:
    """The RTP a party receives from us: one SSRC, sequence and timestamp continuous
    whatever the source behind it."""

    __slots__ = (
        "bytes",
        "identity",
        "in_ssrc",
        "last_time",
        "max_seq",
        "max_ts",
        "packets",
        "resync",
        "seq_off",
        "source",
        "ssrc",
        "suppressed",
        "ts_off",
    )

    def __init__(self) -> None:
        self.ssrc: int | None = None  # what the party sees; None until the first packet
        self.in_ssrc: int | None = None  # the forwarded source's SSRC for the current mapping
        self.seq_off = 0
        self.ts_off = 0
        self.identity = True
        self.resync = False
        self.max_seq = 0
        self.max_ts = 0
        self.last_time = 0.0
        self.source: Source | None = None
        self.packets = 0
        self.bytes = 0
        self.suppressed = 0  # forwarded packets dropped while a source played

    def _map(self, ssrc: int, seq: int, ts: int, now: float, rate: int) -> None:
        if self.ssrc is None:
            self.ssrc = ssrc
            self.seq_off = self.ts_off = 0
            self.identity = True
        else:
            step = max(1, round((now - self.last_time) * rate))
            self.seq_off = (self.max_seq + 1 - seq) & 0xFFFF
            self.ts_off = (self.max_ts + step - ts) & 0xFFFFFFFF
            self.identity = False  # even when the numbers line up: the marker is set once
        self.in_ssrc = ssrc
        self.resync = False

    def forward(self, data: bytes, seq: int, ts: int, ssrc: int, now: float, rate: int) -> bytes | bytearray:
        fresh = ssrc != self.in_ssrc or self.resync
        if fresh:
            self._map(ssrc, seq, ts, now, rate)
        if self.identity:
            out: bytes | bytearray = data
            oseq, ots = seq, ts
        else:
            oseq = (seq + self.seq_off) & 0xFFFF
            ots = (ts + self.ts_off) & 0xFFFFFFFF
            buf = bytearray(data)
            _SEQ_TS_SSRC.pack_into(buf, 2, oseq, ots, self.ssrc)
            if fresh:
                buf[1] |= 0x80
            out = buf
        if self.packets == 0 or ((oseq - self.max_seq) & 0xFFFF) < 0x8000:
            self.max_seq = oseq
            self.max_ts = ots
            self.last_time = now
        self.packets += 1
        self.bytes += len(data)
        return out

    # -- injected sources
    def start_injection(self, now: float, rate: int) -> int:
        """The timestamp of an injected source's first packet; the forwarded stream stops."""
        if self.ssrc is None:
            self.ssrc = random.getrandbits(32)
            self.max_seq = random.getrandbits(16)
            self.max_ts = random.getrandbits(32)
            self.last_time = now
            return self.max_ts
        return (self.max_ts + max(1, round((now - self.last_time) * rate))) & 0xFFFFFFFF

    def emit(self, pt: int, payload: bytes, ts: int, marker: bool, now: float, ts_now: int | None = None) -> bytes:
        assert self.ssrc is not None
        seq = (self.max_seq + 1) & 0xFFFF
        packet = _HDR.pack(0x80, (0x80 if marker else 0) | pt, seq, ts, self.ssrc) + payload
        self.max_seq = seq
        self.max_ts = ts if ts_now is None else ts_now
        self.last_time = now
        self.packets += 1
        self.bytes += len(packet)
        return packet

    def end_injection(self) -> None:
        self.source = None
        self.resync = True


# ---- injected sources -------------------------------------------------------------------


class Source:
    """Paced packets to one party (replacing what we forward to it while it runs)."""

    kind: ClassVar[str] = "source"
    _ids = itertools.count()

    def __init__(self, stream: Stream, name: str, period_s: float) -> None:
        self.stream = stream
        self.name = name
        self.period_s = period_s
        self.next_due = 0.0
        self.done = False
        self.cancelled = False
        self.order = next(self._ids)
        self.late_skips = 0

    def begin(self, now: float) -> None:
        # on a SOURCE_GRID_S grid: sources started at different times share timer wake-ups
        self.next_due = math.ceil(now / SOURCE_GRID_S) * SOURCE_GRID_S

    def produce(self, now: float) -> list[bytes]:
        packets: list[bytes] = []
        while not self.done and self.next_due <= now:
            if now - self.next_due > MAX_CATCH_UP_S:
                self.skip()
                self.late_skips += 1
            else:
                packet = self.packet(now)
                if packet is not None:
                    packets.append(packet)
            self.next_due += self.period_s
        return packets

    def packet(self, now: float) -> bytes | None:
        raise NotImplementedError

    def skip(self) -> None:
        """One slot passes unsent (the timer came too late): keep the timestamps in time."""


class Player(Source):
    """G.711 bytes (already encoded for the party's codec) in packets of `ptime`."""

    kind = "play"

    def __init__(self, stream: Stream, name: str, encoded: bytes, pt: int, *, loop: bool, ptime_ms: int = 20, silence: int = 0xFF) -> None:
        super().__init__(stream, name, ptime_ms / 1000)
        self.encoded = encoded
        self.pt = pt
        self.loop = loop
        self.size = 8 * ptime_ms  # 8 kHz: one byte a sample
        self.silence = silence
        self.offset = 0
        self.ts = 0
        self.first = True
        self.sent = 0

    def begin(self, now: float) -> None:
        super().begin(now)
        self.ts = self.stream.out.start_injection(now, 8000)

    def _chunk(self) -> bytes:
        data, size = self.encoded, self.size
        if not data:
            self.done = True
            return bytes([self.silence]) * size
        chunk = data[self.offset : self.offset + size]
        self.offset += size
        while len(chunk) < size:
            if not self.loop:
                self.done = True
                return chunk + bytes([self.silence]) * (size - len(chunk))
            self.offset = size - len(chunk)
            chunk += data[: self.offset]
        if not self.loop and self.offset >= len(data):
            self.done = True
        return chunk

    def packet(self, now: float) -> bytes:
        chunk = self._chunk()
        packet = self.stream.out.emit(self.pt, chunk, self.ts, self.first, now)
        self.first = False
        self.ts = (self.ts + self.size) & 0xFFFFFFFF
        self.sent += 1
        return packet

    def skip(self) -> None:
        self._chunk()
        self.ts = (self.ts + self.size) & 0xFFFFFFFF


class DtmfSender(Source):
    """RFC 4733 events for `digits`, one packet per ptime, then `pause_ms` before the next."""

    kind = "dtmf"

    def __init__(self, stream: Stream, digits: str, pt: int, *, duration_ms: int, pause_ms: int, volume: int, ptime_ms: int = 20) -> None:
        super().__init__(stream, f"dtmf:{digits}", ptime_ms / 1000)
        self.pt = pt
        step = 8 * ptime_ms
        # one entry per slot: (payload, marker, slot of the event's start, duration so far) or None
        self.slots: list[tuple[bytes, bool, int, int] | None] = []
        for digit in digits:
            code = event_code(digit)
            start = len(self.slots)
            for payload, marker in event_packets(code, 8 * duration_ms, step=step, volume=volume):
                duration = int.from_bytes(payload[2:4], "big")
                self.slots.append((payload, marker, start, duration))
            self.slots.extend([None] * max(1, round(pause_ms / ptime_ms)))
        self.step = step
        self.index = 0
        self.base_ts = 0

    def begin(self, now: float) -> None:
        super().begin(now)
        self.base_ts = self.stream.out.start_injection(now, 8000)

    def packet(self, now: float) -> bytes | None:
        slot = self.slots[self.index] if self.index < len(self.slots) else None
        self.index += 1
        if self.index >= len(self.slots):
            self.done = True
        if slot is None:
            return None
        payload, marker, start, duration = slot
        ts = (self.base_ts + start * self.step) & 0xFFFFFFFF
        return self.stream.out.emit(self.pt, payload, ts, marker, now, ts_now=(ts + duration) & 0xFFFFFFFF)

    def skip(self) -> None:
        self.index += 1
        if self.index >= len(self.slots):
            self.done = True


# ---- streams, legs, sessions ----------------------------------------------------------------


class Stream:
    """One m= line of one leg: our port pair facing its party, and what we know of it."""

    __slots__ = (
        "auth_failures",
        "bad_seq",
        "base_seq",
        "bytes_in",
        "cycles",
        "dest",
        "dest_rtcp",
        "detector",
        "dtmf_pt",
        "foreign",
        "in_crypto",
        "index",
        "info",
        "info_at",
        "jitter",
        "last_pt",
        "last_rx",
        "last_rx_rtcp",
        "last_transit",
        "latched",
        "latched_rtcp",
        "leg",
        "lost_before",
        "malformed",
        "max_seq",
        "moved_in",
        "mux_seen",
        "not_ready",
        "out",
        "out_crypto",
        "packets_in",
        "peer",
        "port",
        "rates",
        "received",
        "received_before",
        "remote_cum_lost",
        "remote_fraction",
        "remote_jitter_ms",
        "remote_reports",
        "rtcp_in",
        "rx_ssrc",
        "sent_mux",
        "srtp_in",
        "srtp_out",
        "transcoder",
        "webrtc",
    )

    def __init__(self, leg: Leg, index: int, port: int) -> None:
        self.leg = leg
        self.index = index
        self.port = port  # 0: rejected m= line, no ports
        self.peer: Stream | None = None
        self.info: StreamInfo | None = None
        self.info_at = 0.0
        self.rates: dict[int, int] = {}
        self.dtmf_pt: int | None = None
        self.latched: Addr | None = None
        self.latched_rtcp: Addr | None = None
        self.dest: Addr | None = None
        self.dest_rtcp: Addr | None = None
        self.mux_seen = False
        self.sent_mux = False  # the last SDP we sent this party had a=rtcp-mux
        self.last_rx = 0.0
        self.last_rx_rtcp = 0.0
        self.out = OutStream()
        self.detector = DtmfDetector()
        self.foreign = 0
        self.malformed = 0
        self.packets_in = 0
        self.bytes_in = 0
        self.rtcp_in = 0
        self._reset_rx()
        self.lost_before = 0
        self.received_before = 0
        self.jitter = 0.0
        self.remote_fraction = 0.0
        self.remote_cum_lost = 0
        self.remote_jitter_ms = 0.0
        self.remote_reports = 0
        self.in_crypto: Crypto | None = None  # the party's key (what it sends)
        self.out_crypto: Crypto | None = None  # ours (what we send it), as written in its SDP
        self.srtp_in: Any = None  # pylibsrtp.Session or None
        self.srtp_out: Any = None
        self.auth_failures = 0
        self.webrtc = False  # a WebRTC party: SRTP keys and path come from the bridge
        self.not_ready = 0  # its packets dropped before DTLS gave keys
        self.transcoder: transcode.Transcoder | None = None  # what it sends, into its peer's codec
        # made by `replace` for a party new to this session: a browser moved here from
        # another session of ours gets another DTLS identity (webrtc_bridge.py)
        self.moved_in = False

    def _reset_rx(self) -> None:
        self.rx_ssrc: int | None = None
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.bad_seq = -1
        self.last_transit: float | None = None
        self.last_pt = -1

    # -- what we know of the party
    def set_info(self, info: StreamInfo, now: float) -> None:
        old = self.info
        self.info = info
        self.info_at = now
        self.rates = info.clock_rates
        self.dtmf_pt = info.dtmf_pt
        if is_dtls_proto(info.proto):
            self.webrtc = True
        if old is not None and old.rtp != info.rtp and not self.webrtc:  # (ICE decides a WebRTC path)
            self.latched = self.latched_rtcp = None  # it moved: learn again
        crypto = info.crypto if is_sdes_proto(info.proto) else None
        if crypto != self.in_crypto:
            self.in_crypto = crypto
            self.srtp_in = inbound(crypto) if crypto is not None else None
        self._update_dest()

    def _update_dest(self) -> None:
        info = self.info
        if self.webrtc:  # only where ICE (or authenticated SRTP) says it is
            self.dest = self.dest_rtcp = self.latched
            return
        self.dest = self.latched or (info.rtp if info is not None else None)
        if self.uses_mux:
            self.dest_rtcp = self.dest
        else:
            self.dest_rtcp = self.latched_rtcp or (info.rtcp if info is not None else None)
            if self.dest_rtcp is None and self.latched is not None:
                self.dest_rtcp = (self.latched[0], self.latched[1] + 1)

    @property
    def uses_mux(self) -> bool:
        """RTCP shares the RTP port with this party: seen so, or agreed (its SDP and the
        last one we sent it both have a=rtcp-mux)."""
        if self.mux_seen:
            return True
        info = self.info
        return bool(info is not None and info.rtcp_mux and self.sent_mux)

    # -- statistics
    def fold(self) -> None:
        """A new SSRC: keep the old source's counts in the totals."""
        self.lost_before += self.lost
        self.received_before += self.received
        self._reset_rx()

    @property
    def expected(self) -> int:
        if self.rx_ssrc is None:
            return 0
        return self.cycles + self.max_seq - self.base_seq + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.received)

    def rx_stats(self) -> dict[str, Any]:
        lost = self.lost_before + self.lost
        received = self.received_before + self.received
        expected = lost + received
        return {
            "packets": self.packets_in,
            "bytes": self.bytes_in,
            "lost": lost,
            "loss_pct": round(100.0 * lost / expected, 3) if expected else 0.0,
            "jitter_ms": round(self.jitter * 1000, 3),
            "ssrc": self.rx_ssrc,
        }

    def stats(self, now: float) -> dict[str, Any]:
        info = self.info
        return {
            "index": self.index,
            "media": info.media if info else None,
            "local_port": self.port,
            "advertised": _addr(info.rtp) if info else None,
            "latched": _addr(self.latched),
            "rtcp_mux": self.uses_mux,
            "received": self.rx_stats(),
            "sent": {"packets": self.out.packets, "bytes": self.out.bytes, "ssrc": self.out.ssrc, "suppressed": self.out.suppressed},
            "reported_by_party": {
                "reports": self.remote_reports,
                "fraction_lost_pct": round(100.0 * self.remote_fraction, 2),
                "cumulative_lost": self.remote_cum_lost,
                "jitter_ms": round(self.remote_jitter_ms, 3),
            },
            "rtcp_packets": self.rtcp_in,
            "foreign_dropped": self.foreign,
            "srtp": {"in": self.in_crypto.suite if self.in_crypto else None, "out": self.out_crypto.suite if self.out_crypto else None, "auth_failures": self.auth_failures},
            **({"webrtc": {"secure": self.srtp_in is not None, "not_ready": self.not_ready}} if self.webrtc else {}),
            **({"transcoded": {"packets": self.transcoder.packets, "dropped": self.transcoder.dropped}} if self.transcoder else {}),
            "malformed": self.malformed,
            "idle_s": round(now - self.last_rx, 3) if self.last_rx else None,
            "playing": self.out.source.name if self.out.source is not None else None,
        }


def _addr(addr: Addr | None) -> str | None:
    if addr is None:
        return None
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Leg:
    def __init__(self, session: Session, index: int) -> None:
        self.session = session
        self.index = index
        self.label = "AB"[index]
        self.tag: str | None = None
        self.sdp: SessionDescription | None = None  # the party's last SDP
        self.streams: list[Stream] = []
        # The o= line of the SDP this party receives from us: ours, one session id for the
        # whole call whatever party is behind the other leg (a transfer does not change
        # it), the version raised whenever the rest of the SDP changes (RFC 3264 §8).
        self.origin_id = str(random.getrandbits(62))
        self.origin_version = random.getrandbits(20)
        self.last_sent: str | None = None

    @property
    def other(self) -> Leg:
        return self.session.legs[1 - self.index]

    def stats(self, now: float) -> dict[str, Any]:
        return {"leg": self.label, "tag": self.tag, "streams": [s.stats(now) for s in self.streams]}


class Session:
    def __init__(self, call_id: str, now: float) -> None:
        self.call_id = call_id
        self.created = now
        self.answered_at: float | None = None
        self.legs = (Leg(self, 0), Leg(self, 1))
        self.tap: Tap | None = None
        self.timed_out = False
        self.replaced: list[dict[str, Any]] = []  # stats of the parties replaced on a leg
        self.mux_policy: list[str | None] = [None, None]  # rtcp_mux flag of each leg's last offer

    def leg_by_tag(self, tag: str | None) -> Leg | None:
        if tag is None:
            return None
        for leg in self.legs:
            if leg.tag == tag:
                return leg
        return None

    def stats(self, now: float) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "age_s": round(now - self.created, 3),
            "answered": self.answered_at is not None,
            "legs": [leg.stats(now) for leg in self.legs],
            "summary": self.summary(),
            "replaced": list(self.replaced),
            "recording": self.tap is not None,
        }

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per leg ("A", "B"), its audio stream in a few numbers (for `ctl calls` and the
        CDR): what we received from the party (packets, lost, loss %, jitter) and what it
        says it received from us (loss %, jitter, from its RTCP reports)."""
        out: dict[str, dict[str, Any]] = {}
        for leg in self.legs:
            stream = next((s for s in leg.streams if s.info is not None and s.info.media == "audio"), None)
            if stream is None:
                continue
            rx = stream.rx_stats()
            out[leg.label] = {
                "tag": leg.tag,
                "packets": rx["packets"],
                "lost": rx["lost"],
                "loss_pct": rx["loss_pct"],
                "jitter_ms": rx["jitter_ms"],
                "reported_loss_pct": round(100.0 * stream.remote_fraction, 2) if stream.remote_reports else None,
                "reported_jitter_ms": round(stream.remote_jitter_ms, 3) if stream.remote_reports else None,
            }
        return out


# ---- the relay -----------------------------------------------------------------------------


class Relay:
    """Every session of one media worker, keyed by Call-ID."""

    def __init__(
        self, address: str, ports: PortPool, *, rtp_timeout_s: float = 30.0, relatch_s: float = 1.0,
        rtp_hold_timeout_s: float = 3600.0,
    ) -> None:
        self.address = address  # written into the SDP we hand out
        self.ports = ports
        self.rtp_timeout_s = rtp_timeout_s
        # A party holding the call (sendonly) often sends nothing: it gets this long instead
        # (rtpengine's silent-timeout, Asterisk's rtpholdtimeout); 0: never.
        self.rtp_hold_timeout_s = rtp_hold_timeout_s
        self.relatch_s = relatch_s
        self.sessions: dict[str, Session] = {}
        self._by_port: dict[int, tuple[Stream, bool]] = {}
        self._sources: list[tuple[float, int, Source]] = []
        self._events: list[RelayEvent] = []
        self._next_scan: float | None = None
        # totals, closed sessions included
        self.packets_in = 0
        self.packets_out = 0
        self.bytes_in = 0
        self.stray = 0  # datagrams for a port no session holds
        self.closed_lost = 0
        self.closed_received = 0
        self.sessions_total = 0
        self.timeouts = 0
        # the media worker's WebRTC bridge (ICE, DTLS); None: WebRTC parties are refused
        self.webrtc: WebrtcHooks | None = None
        self.webrtc_gone = 0

    # ---- commands ----------------------------------------------------------------------
    def offer(
        self,
        call_id: str,
        from_tag: str,
        sdp: str | bytes,
        now: float,
        *,
        to_tag: str | None = None,
        transport: str | None = None,
        rtcp_mux: str | None = None,
    ) -> str:
        """The SDP of the party `from_tag` (a new call's caller, or either party's re-offer);
        returns it rewritten for the other party: our address, our ports facing it,
        `transport` (RTP/AVP, RTP/SAVP…) instead of the offer's when given, and rtcp-mux as
        `rtcp_mux` says (rtpengine's flags): "offer" it to the other party whatever was
        offered, "demux" (accept it from the offerer, not offer it on), "accept" (accept
        and offer on), "reject" (neither); None passes it through."""
        if rtcp_mux not in MUX_POLICIES:
            raise MediaError("bad_request", f"rtcp_mux must be one of offer, demux, accept, reject; got {rtcp_mux!r}")
        parsed = self._parse(sdp)
        session = self.sessions.get(call_id)
        new = session is None
        if session is None:
            session = Session(call_id, now)
            leg = session.legs[0]
        else:
            leg = session.leg_by_tag(from_tag) or self._leg_for_unknown(session, from_tag, to_tag)
        self._ensure_streams(session, len(parsed.media))
        if new:
            self.sessions[call_id] = session
            self.sessions_total += 1
            self._arm_scan(now)
        leg.tag = from_tag
        if to_tag is not None and leg.other.tag is None:
            leg.other.tag = to_tag
        self._apply(leg, parsed, now)
        session.mux_policy[leg.index] = rtcp_mux
        to_send = parsed
        if transport is not None and not is_dtls_proto(transport):  # a WebRTC party's Opus-only offer to a phone
            to_send = transcode.offer_with_g711(parsed, stream_infos(parsed)) or parsed
        return self._rewritten(to_send, leg.other, offer=True, transport=transport, rtcp_mux=rtcp_mux)

    def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str | bytes, now: float) -> str:
        """The SDP of the party `to_tag` answering `from_tag`'s offer; returns it rewritten
        for the offerer."""
        parsed = self._parse(sdp)
        session = self._session(call_id)
        leg = session.leg_by_tag(to_tag)
        if leg is None:
            offerer = session.leg_by_tag(from_tag)
            if offerer is None:
                raise MediaError("not_found", f"no party {from_tag!r} or {to_tag!r} in call {call_id!r}")
            leg = offerer.other
        if len(parsed.media) > len(leg.streams):
            raise MediaError("bad_sdp", f"the answer has {len(parsed.media)} m= lines, the offer {len(leg.streams)}")
        leg.tag = to_tag
        self._apply(leg, parsed, now)
        if session.answered_at is None:
            session.answered_at = now
        return self._rewritten(self._transcoding(leg, parsed), leg.other, offer=False)

    def _transcoding(self, answerer: Leg, parsed: SessionDescription) -> SessionDescription:
        """Opus ↔ G.711 where a WebRTC offerer had Opus without G.711 and the phone answered
        G.711 (transcode.py): each direction's transcoder, and the answer towards the
        offerer in its Opus.  Otherwise the answer as it is (payloads forwarded)."""
        offerer = answerer.other
        out = parsed
        if offerer.sdp is None:
            return out
        for index, stream in enumerate(answerer.streams):
            if index >= len(offerer.streams) or index >= len(offerer.sdp.media) or index >= len(out.media):
                break
            client = offerer.streams[index]
            if client.info is None or stream.info is None:
                continue
            pair = transcode.plan(client.info, offerer.sdp.media[index], stream.info)
            if pair is None:
                if client.webrtc:  # its new offer has G.711 again (or no Opus): forward
                    client.transcoder = stream.transcoder = None
                continue
            if client.transcoder is None or stream.transcoder is None:
                client.transcoder, stream.transcoder = pair
            if out is parsed:
                out = copy.deepcopy(parsed)
            transcode.answer_in_opus(out, index, offerer.sdp.media[index])
        return out

    def replace(self, call_id: str, old_tag: str, new_tag: str, now: float, sdp: str | bytes | None = None, *, transport: str | None = None) -> str:
        """The party `old_tag` is replaced by `new_tag` (a transfer): its leg gets new ports
        and forgets the old party; the other party keeps its ports and hears one continuous
        stream.  With `sdp` (the new party's offer) returns it rewritten for the remaining
        party; without, returns an offer for the new party (the remaining party's last SDP,
        pointing at the new ports): its answer then goes to `answer(…, to_tag=new_tag)`."""
        parsed = self._parse(sdp) if sdp is not None else None
        session = self._session(call_id)
        leg = session.leg_by_tag(old_tag)
        if leg is None:
            raise MediaError("not_found", f"no party {old_tag!r} in call {call_id!r}")
        other = leg.other
        count = len(leg.streams) if parsed is None else max(len(leg.streams), len(parsed.media))
        new_ports = self._take_ports(count)
        session.replaced.append({"tag": leg.tag, "at_s": round(now - session.created, 3), **leg.stats(now)})
        for stream in leg.streams:
            self._release(stream)
        old_streams = leg.streams
        leg.streams = []
        for index in range(count):
            stream = Stream(leg, index, new_ports[index])
            stream.moved_in = True
            leg.streams.append(stream)
            self._bind(stream)
            peer = other.streams[index] if index < len(other.streams) else None
            stream.peer = peer
            if peer is not None:
                peer.peer = stream
                peer.out.resync = True
                if peer.out.source is None:
                    peer.out.in_ssrc = None
        for old in old_streams:
            if old.out.source is not None:
                old.out.source.cancelled = True
        leg.tag = new_tag
        leg.sdp = None
        session.mux_policy[leg.index] = None
        if parsed is not None:
            self._ensure_streams(session, len(parsed.media))
            self._apply(leg, parsed, now)
            return self._rewritten(parsed, other, offer=True, transport=transport)
        if other.sdp is None:
            raise MediaError("bad_request", f"party {other.tag!r} has no SDP to offer the new party")
        return self._rewritten(other.sdp, leg, offer=True, transport=transport)

    def delete(self, call_id: str, now: float) -> dict[str, Any]:
        """End the session, free its ports; returns its final statistics."""
        session = self._session(call_id)
        stats = session.stats(now)
        for leg in session.legs:
            for stream in leg.streams:
                self.closed_lost += stream.lost_before + stream.lost
                self.closed_received += stream.received_before + stream.received
                self._release(stream)
                if stream.out.source is not None:
                    stream.out.source.cancelled = True
        del self.sessions[call_id]
        return stats

    def query(self, call_id: str, now: float) -> dict[str, Any]:
        return self._session(call_id).stats(now)

    def set_tap(self, call_id: str, tap: Tap | None) -> None:
        self._session(call_id).tap = tap

    def play(self, call_id: str, tag: str, now: float, *, name: str, encoded: dict[str, bytes], loop: bool) -> None:
        """Play to the party `tag`: `encoded` maps "PCMU"/"PCMA" to the sound in that codec;
        the party's first G.711 payload type is used.  Replaces a running player."""
        stream = self._audio_stream(call_id, tag)
        info = stream.info
        if info is None or not info.g711:
            raise MediaError("no_codec", f"party {tag!r} negotiated no G.711 codec to play to")
        pt, codec = info.g711[0]
        silence = 0xFF if codec == "PCMU" else 0xD5
        player = Player(stream, name, encoded[codec], pt, loop=loop, ptime_ms=info.ptime_ms, silence=silence)
        self._start_source(player, now)

    def send_dtmf(self, call_id: str, tag: str, digits: str, now: float, *, duration_ms: int = 100, pause_ms: int = 60, volume: int = 10) -> None:
        """Send RFC 4733 events to the party `tag` (with its telephone-event payload type)."""
        stream = self._audio_stream(call_id, tag)
        info = stream.info
        if info is None or info.dtmf_pt is None:
            raise MediaError("no_codec", f"party {tag!r} negotiated no telephone-event")
        try:
            sender = DtmfSender(stream, digits, info.dtmf_pt, duration_ms=duration_ms, pause_ms=pause_ms, volume=volume, ptime_ms=info.ptime_ms)
        except ValueError as exc:
            raise MediaError("bad_request", str(exc)) from None
        self._start_source(sender, now)

    def stop_play(self, call_id: str, tag: str) -> bool:
        stream = self._audio_stream(call_id, tag)
        source = stream.out.source
        if source is None:
            return False
        source.cancelled = True
        stream.out.end_injection()
        self._events.append(PlayDone(call_id, stream.leg.tag, stream.leg.label, name=source.name, stopped=True))
        return True

    # ---- datagrams ------------------------------------------------------------------------
    def receive(self, port: int, data: bytes, src: Addr, now: float) -> Out | None:
        """One datagram that arrived on our `port` from `src`: what to send, if anything."""
        binding = self._by_port.get(port)
        if binding is None:
            self.stray += 1
            return None
        stream, is_rtcp = binding
        self.packets_in += 1
        self.bytes_in += len(data)
        info = stream.info
        if info is not None and not info.is_rtp:
            return self._raw(stream, is_rtcp, data, src, now)
        if len(data) < 8 or data[0] & 0xC0 != 0x80:
            stream.malformed += 1
            return None
        if is_rtcp or 192 <= data[1] <= 223:  # RFC 5761 §4: RTCP packet types on a muxed port
            return self._rtcp(stream, is_rtcp, data, src, now)
        if len(data) < 12:
            stream.malformed += 1
            return None
        srtp = stream.srtp_in
        if srtp is not None:
            try:
                data = srtp.unprotect(data)
            except (SrtpError, ValueError):  # ValueError: longer than libsrtp's buffer
                stream.auth_failures += 1
                return None
        elif stream.webrtc:  # DTLS has given no keys yet
            stream.not_ready += 1
            return None
        # latching
        if src != stream.latched:
            if stream.latched is not None and now - stream.last_rx < self.relatch_s:
                stream.foreign += 1
                return None
            stream.latched = src
            stream._update_dest()
        stream.last_rx = now
        stream.packets_in += 1
        stream.bytes_in += len(data)
        pt = data[1] & 0x7F
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(data, 2)
        # RFC 3550 A.1: sequence, loss
        if ssrc != stream.rx_ssrc:
            if stream.rx_ssrc is not None:
                stream.fold()
            stream.rx_ssrc = ssrc
            stream.base_seq = stream.max_seq = seq
        else:
            udelta = (seq - stream.max_seq) & 0xFFFF
            if udelta < MAX_DROPOUT:
                if seq < stream.max_seq:
                    stream.cycles += RTP_SEQ_MOD
                stream.max_seq = seq
            elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
                if seq == stream.bad_seq:  # two in a row after a jump: the source restarted
                    stream.fold()
                    stream.rx_ssrc = ssrc
                    stream.base_seq = stream.max_seq = seq
                else:
                    stream.bad_seq = (seq + 1) & 0xFFFF
                    stream.received -= 1  # not counted (A.1): undone below
        stream.received += 1
        # RFC 3550 A.8: interarrival jitter, in seconds (telephone-events keep one timestamp)
        if pt != stream.dtmf_pt:
            transit = now - ts / stream.rates.get(pt, 8000)
            last = stream.last_transit
            if last is not None and pt == stream.last_pt:
                d = transit - last
                if d < 0:
                    d = -d
                if d < 10.0:
                    stream.jitter += (d - stream.jitter) / 16
            stream.last_transit = transit
            stream.last_pt = pt
        else:
            self._dtmf(stream, data, ts)
        session = stream.leg.session
        if session.tap is not None:
            session.tap(stream.leg.index, pt, ts, seq, data, now)
        peer = stream.peer
        if peer is None:
            return None
        dest = peer.dest
        if dest is None:
            return None
        out = peer.out
        if out.source is not None:
            out.suppressed += 1
            return None
        if peer.srtp_out is None and peer.webrtc:
            return None
        rates = stream.rates
        transcoder = stream.transcoder
        if transcoder is not None:  # no codec in common (transcode.py): the packet in the peer's codec
            converted = transcoder.convert(data)
            if converted is None:
                return None
            data, rates = converted, peer.rates
            pt = data[1] & 0x7F
            seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(data, 2)
        packet = out.forward(data, seq, ts, ssrc, now, rates.get(pt, 8000))
        if peer.srtp_out is not None:
            try:
                packet = peer.srtp_out.protect(bytes(packet))
            except (SrtpError, ValueError):
                peer.auth_failures += 1
                return None
        self.packets_out += 1
        return (peer.port, packet, dest)

    def _raw(self, stream: Stream, is_rtcp: bool, data: bytes, src: Addr, now: float) -> Out | None:
        """A non-RTP m= line (T.38 UDPTL…): latch and forward as is."""
        if not is_rtcp:
            if src != stream.latched:
                if stream.latched is not None and now - stream.last_rx < self.relatch_s:
                    stream.foreign += 1
                    return None
                stream.latched = src
                stream._update_dest()
            stream.last_rx = now
            stream.packets_in += 1
            stream.bytes_in += len(data)
        peer = stream.peer
        if peer is None:
            return None
        dest = peer.dest_rtcp if is_rtcp else peer.dest
        if dest is None:
            return None
        self.packets_out += 1
        return (peer.port + 1 if is_rtcp else peer.port, data, dest)

    def _dtmf(self, stream: Stream, data: bytes, ts: int) -> None:
        offset = _payload_offset(data)
        if offset is None:
            return
        for found in stream.detector.feed(ts, data[offset:]):
            leg = stream.leg
            self._events.append(
                DtmfDetected(
                    leg.session.call_id,
                    leg.tag,
                    leg.label,
                    digit=found.digit,
                    duration_ms=round(found.duration / 8),
                    volume=found.volume,
                    ended=found.ended,
                )
            )

    def _rtcp(self, stream: Stream, on_rtcp_port: bool, data: bytes, src: Addr, now: float) -> Out | None:
        if stream.srtp_in is not None:
            try:
                data = stream.srtp_in.unprotect_rtcp(data)
            except (SrtpError, ValueError):  # ValueError: longer than libsrtp's buffer
                stream.auth_failures += 1
                return None
        elif stream.webrtc:
            stream.not_ready += 1
            return None
        if on_rtcp_port:
            if src != stream.latched_rtcp:
                if stream.latched_rtcp is not None and now - stream.last_rx_rtcp < self.relatch_s * 5:
                    stream.foreign += 1
                    return None
                stream.latched_rtcp = src
                stream._update_dest()
            stream.last_rx_rtcp = now
        else:
            if src != stream.latched and stream.latched is not None and now - stream.last_rx < self.relatch_s:
                stream.foreign += 1
                return None
            if not stream.mux_seen:
                stream.mux_seen = True
                stream._update_dest()
        stream.rtcp_in += 1
        self._read_reports(stream, data)
        peer = stream.peer
        if peer is None or peer.dest_rtcp is None or (peer.webrtc and peer.srtp_out is None):
            return None
        out: bytes | bytearray = data
        if not (peer.out.identity and stream.out.identity):
            out = _rewrite_rtcp(data, peer.out, stream.out)
        if peer.srtp_out is not None:
            try:
                out = peer.srtp_out.protect_rtcp(bytes(out))
            except (SrtpError, ValueError):
                return None
        self.packets_out += 1
        return (peer.port if peer.uses_mux else peer.port + 1, out, peer.dest_rtcp)

    def _read_reports(self, stream: Stream, data: bytes) -> None:
        """Report blocks (SR/RR) the party sends about the RTP we send it."""
        mine = stream.out.ssrc
        for pt, count, body in _rtcp_packets(data):
            if pt == 200:
                start = 28  # header, sender SSRC, sender info
            elif pt == 201:
                start = 8  # header, sender SSRC
            else:
                continue
            for i in range(count):
                block = start + 24 * i
                if block + 24 > len(body):
                    break
                ssrc = _U32.unpack_from(body, block)[0]
                if mine is not None and ssrc != mine:
                    continue
                fraction = body[block + 4]
                cum = int.from_bytes(body[block + 5 : block + 8], "big", signed=True)
                jitter = _U32.unpack_from(body, block + 12)[0]
                stream.remote_fraction = fraction / 256
                stream.remote_cum_lost = cum
                stream.remote_jitter_ms = jitter / 8.0  # 8 kHz timestamp units → ms
                stream.remote_reports += 1

    # ---- the one timer -----------------------------------------------------------------------
    def deadline(self) -> float | None:
        """When `on_timer` must run next (None: nothing scheduled)."""
        soonest = self._sources[0][0] if self._sources else None
        scan = self._next_scan
        if scan is not None and (soonest is None or scan < soonest):
            return scan
        return soonest

    def on_timer(self, now: float) -> list[Out]:
        outs: list[Out] = []
        heap = self._sources
        while heap and heap[0][0] <= now:
            _, _, source = heapq.heappop(heap)
            if source.cancelled:
                continue
            stream = source.stream
            for packet in source.produce(now):
                self.packets_out += 1
                if stream.dest is not None:
                    if stream.srtp_out is not None:
                        packet = stream.srtp_out.protect(packet)
                    elif stream.webrtc:
                        continue
                    outs.append((stream.port, packet, stream.dest))
            if source.done:
                if stream.out.source is source:
                    stream.out.end_injection()
                    if isinstance(source, Player):
                        leg = stream.leg
                        self._events.append(PlayDone(leg.session.call_id, leg.tag, leg.label, name=source.name))
            else:
                heapq.heappush(heap, (source.next_due, source.order, source))
        if self._next_scan is not None and now >= self._next_scan:
            self._scan(now)
            self._next_scan = now + SCAN_INTERVAL_S if self.sessions and self.rtp_timeout_s > 0 else None
        return outs

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def pop_events(self) -> list[RelayEvent]:
        events, self._events = self._events, []
        return events

    def _scan(self, now: float) -> None:
        timeout = self.rtp_timeout_s
        for session in self.sessions.values():
            if session.timed_out or session.answered_at is None:
                continue
            for leg in session.legs:
                expected = [s for s in leg.streams if s.port and s.info is not None and s.info.sends and s.info.is_rtp]
                if not expected:
                    continue
                holding = all(s.info is not None and s.info.holding for s in expected)
                limit = self.rtp_hold_timeout_s if holding else timeout
                if limit <= 0:
                    continue
                since = max(max(max(s.last_rx, s.info_at) for s in expected), session.answered_at)
                idle = now - since
                if idle >= limit:
                    session.timed_out = True
                    self.timeouts += 1
                    self._events.append(RtpTimeout(session.call_id, leg.tag, leg.label, idle_s=round(idle, 3)))
                    break

    def _arm_scan(self, now: float) -> None:
        if self._next_scan is None and self.rtp_timeout_s > 0:
            self._next_scan = now + SCAN_INTERVAL_S

    # ---- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        lost = self.closed_lost
        received = self.closed_received
        players = 0
        for session in self.sessions.values():
            for leg in session.legs:
                for stream in leg.streams:
                    lost += stream.lost_before + stream.lost
                    received += stream.received_before + stream.received
                    players += stream.out.source is not None
        expected = lost + received
        return {
            "sessions": len(self.sessions),
            "sessions_total": self.sessions_total,
            "ports_in_use": 2 * len(self.ports.in_use),
            "ports_total": 2 * self.ports.total,
            "port_min": self.ports.port_min,
            "port_max": self.ports.port_max,
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "bytes_in": self.bytes_in,
            "lost": lost,
            "loss_pct": round(100.0 * lost / expected, 3) if expected else 0.0,
            "stray": self.stray,
            "players": players,
            "rtp_timeouts": self.timeouts,
            "webrtc_gone": self.webrtc_gone,
        }

    # ---- internals -----------------------------------------------------------------------------
    @staticmethod
    def _parse(sdp: str | bytes) -> SessionDescription:
        try:
            return parse(sdp)
        except SdpError as exc:
            raise MediaError("bad_sdp", f"bad SDP: {exc}") from None

    def _session(self, call_id: str) -> Session:
        session = self.sessions.get(call_id)
        if session is None:
            raise MediaError("not_found", f"no media session for call {call_id!r}")
        return session

    @staticmethod
    def _leg_for_unknown(session: Session, from_tag: str, to_tag: str | None) -> Leg:
        known_other = session.leg_by_tag(to_tag)
        if known_other is not None:
            return known_other.other
        for leg in session.legs:
            if leg.tag is None:
                return leg
        raise MediaError("not_found", f"no party {from_tag!r} in call {session.call_id!r}")

    def _take_ports(self, count: int) -> list[int]:
        taken: list[int] = []
        try:
            for _ in range(count):
                taken.append(self.ports.allocate())
        except MediaError:
            for port in taken:
                self.ports.release(port)
            raise
        return taken

    def _ensure_streams(self, session: Session, count: int) -> None:
        """Both legs get streams (with ports) for m= lines 0..count-1; all or nothing."""
        a, b = session.legs
        missing = count - len(a.streams)
        if missing <= 0:
            return
        ports = self._take_ports(2 * missing)
        for i in range(missing):
            index = len(a.streams)
            sa, sb = Stream(a, index, ports[2 * i]), Stream(b, index, ports[2 * i + 1])
            sa.peer, sb.peer = sb, sa
            a.streams.append(sa)
            b.streams.append(sb)
            self._bind(sa)
            self._bind(sb)

    def _bind(self, stream: Stream) -> None:
        self._by_port[stream.port] = (stream, False)
        self._by_port[stream.port + 1] = (stream, True)

    def _release(self, stream: Stream) -> None:
        if stream.port:
            if stream.webrtc and self.webrtc is not None:
                self.webrtc.released(stream.port)
            self._by_port.pop(stream.port, None)
            self._by_port.pop(stream.port + 1, None)
            self.ports.release(stream.port)

    def _apply(self, leg: Leg, parsed: SessionDescription, now: float) -> None:
        leg.sdp = parsed
        for stream, info in zip(leg.streams, stream_infos(parsed), strict=False):
            stream.set_info(info, now)
            if stream.webrtc and self.webrtc is not None and stream.port:
                self.webrtc.remote(stream)
            if stream.peer is not None:
                stream.peer._update_dest()  # rtcp-mux agreement may have changed

    def _rewritten(
        self, parsed: SessionDescription, facing: Leg, *, offer: bool, transport: str | None = None, rtcp_mux: str | None = None
    ) -> str:
        """`parsed` (one party's SDP) for the party of `facing`: our ports facing it, and the
        transport it gets: in an offer `transport` or the offer's own; in an answer what that
        party offered.  Towards an SDES party we write our key and start encrypting with it."""
        ports = [s.port for s in facing.streams]
        infos = stream_infos(parsed)
        transports: list[Transport | None] = []
        muxes: list[bool | None] = []
        webrtc: dict[int, Stream] = {}  # m= lines going to a WebRTC party
        # in an answer, the flag given with the offer this answers (the facing party's)
        policy = rtcp_mux if offer else facing.session.mux_policy[facing.index]
        for index, media in enumerate(parsed.media):
            stream = facing.streams[index] if index < len(facing.streams) else None
            if stream is None or media.port == 0 or media.proto.upper() not in RTP_PROTOS:
                transports.append(None)
                muxes.append(None)
                continue
            has_mux = infos[index].rtcp_mux
            if offer:
                mux = {"offer": True, "demux": False, "reject": False}.get(policy or "", has_mux)
            else:
                they_offered = stream.info is not None and stream.info.rtcp_mux
                mux = they_offered and (policy in ("demux", "accept") or (policy != "reject" and has_mux))
            muxes.append(mux)
            stream.sent_mux = mux
            stream._update_dest()
            if offer:
                want = transport if transport is not None and transport.upper() in RTP_PROTOS else media.proto
            else:
                want = stream.info.proto if stream.info is not None else media.proto
            if is_dtls_proto(want):  # towards a WebRTC party: the bridge's ICE and DTLS
                if self.webrtc is None:
                    raise MediaError("bad_request", f"{want} needs the WebRTC bridge, which this relay has not")
                if not stream.webrtc:
                    stream.webrtc = True
                    stream.out_crypto = stream.srtp_out = None
                    stream._update_dest()
                transports.append((want, None))
                webrtc[index] = stream
                continue
            if not is_sdes_proto(want):
                if stream.out_crypto is not None:  # (a WebRTC party's keys are the bridge's)
                    stream.out_crypto = stream.srtp_out = None
                transports.append((want, None))
                continue
            if offer:
                offered = infos[index].crypto  # keep the suite the source chose, when it has one
                tag, suite = 1, offered.suite if offered is not None else DEFAULT_SUITE
            else:
                theirs = stream.info.crypto if stream.info is not None else None
                tag, suite = (theirs.tag, theirs.suite) if theirs is not None else (1, DEFAULT_SUITE)
            crypto = stream.out_crypto
            if crypto is None or (crypto.tag, crypto.suite) != (tag, suite):
                crypto = Crypto(tag, suite, crypto.key if crypto is not None else new_key())
                stream.out_crypto = crypto
                stream.srtp_out = outbound(crypto)
            transports.append((want, crypto.attribute()))
        out = rewrite(parsed, self.address, ports, transports, muxes)
        if webrtc or any(a[0] in WEBRTC_SESSION_ATTRIBUTES for a in out.attributes) or any(
            is_dtls_proto(m.proto) for m in parsed.media
        ):
            self._webrtc_sdp(out, webrtc, offer=offer)
        out.origin.username = "-"
        out.origin.session_id = facing.origin_id
        out.origin.session_version = 0
        body = out.to_str()
        if body != facing.last_sent:
            facing.last_sent = body
            facing.origin_version += 1
        out.origin.session_version = facing.origin_version
        return out.to_str()

    def _webrtc_sdp(self, out: SessionDescription, webrtc: dict[int, Stream], *, offer: bool) -> None:
        """Towards a WebRTC party: every m= line we send it carries the bridge's ICE-lite and
        DTLS attributes, its mid (the party's own in an answer), rtcp-mux and no a=rtcp,
        all in one BUNDLE group.  Towards a plain party: no WebRTC attribute at all."""
        out.attributes = [a for a in out.attributes if a[0] not in WEBRTC_SESSION_ATTRIBUTES]
        mids: list[str] = []
        for index, media in enumerate(out.media):
            original = list(media.attributes)
            media.attributes = [a for a in media.attributes if a[0] not in WEBRTC_MEDIA_ATTRIBUTES]
            stream = webrtc.get(index)
            if stream is None or media.port == 0:
                continue
            assert self.webrtc is not None
            known = stream.info.mid if stream.info is not None else None  # the party's own, from its last SDP
            if offer:
                # a re-offer keeps the mid the party already has for this m= line (JSEP: mids
                # never change), whoever is behind the other leg now (a transfer's new party)
                mid = known or next((v for n, v in original if n == "mid" and v), None) or str(index)
            else:
                mid = known or str(index)
            media.attributes = [a for a in media.attributes if a[0] != "rtcp"]
            media.attributes.insert(0, ("mid", mid))
            media.attributes.extend(self.webrtc.attributes(stream, offer=offer))
            if not any(a[0] == "rtcp-mux" for a in media.attributes):
                media.attributes.append(("rtcp-mux", None))
            mids.append(mid)
        if mids:
            out.attributes.extend([("ice-lite", None), ("group", "BUNDLE " + " ".join(mids))])

    # ---- the WebRTC bridge's calls ------------------------------------------------------------
    def stream_at(self, port: int) -> Stream | None:
        binding = self._by_port.get(port)
        return binding[0] if binding is not None and not binding[1] else None

    def webrtc_path(self, port: int, addr: Addr) -> None:
        """ICE chose where the WebRTC party on `port` is (its nominated check's source)."""
        stream = self.stream_at(port)
        if stream is not None and stream.latched != addr:
            stream.latched = addr
            stream._update_dest()

    def webrtc_secure(self, port: int, srtp_in: Any, srtp_out: Any) -> None:
        """DTLS is done with the WebRTC party on `port`: its SRTP sessions."""
        stream = self.stream_at(port)
        if stream is not None:
            stream.srtp_in, stream.srtp_out = srtp_in, srtp_out

    def webrtc_lost(self, port: int, cause: str, now: float) -> bool:
        """The WebRTC party on `port` is gone (consent lost, DTLS closed): one event per
        session, as for an RTP timeout, with the cause for the CDR."""
        stream = self.stream_at(port)
        if stream is None:
            return False
        session = stream.leg.session
        if session.timed_out:
            return False
        session.timed_out = True
        self.webrtc_gone += 1
        idle = now - stream.last_rx if stream.last_rx else 0.0
        self._events.append(RtpTimeout(session.call_id, stream.leg.tag, stream.leg.label, idle_s=round(idle, 3), cause=cause))
        return True

    def _audio_stream(self, call_id: str, tag: str) -> Stream:
        session = self._session(call_id)
        leg = session.leg_by_tag(tag)
        if leg is None:
            raise MediaError("not_found", f"no party {tag!r} in call {call_id!r}")
        for stream in leg.streams:
            if stream.port and stream.info is not None and stream.info.media == "audio" and stream.info.is_rtp:
                return stream
        raise MediaError("no_codec", f"party {tag!r} has no audio stream")

    def _start_source(self, source: Source, now: float) -> None:
        out = source.stream.out
        if out.source is not None:
            out.source.cancelled = True
            out.end_injection()
        out.source = source
        source.begin(now)
        heapq.heappush(self._sources, (source.next_due, source.order, source))


# ---- RTP/RTCP helpers -----------------------------------------------------------------------------


def _payload_offset(data: bytes | bytearray) -> int | None:
    """Where an RTP packet's payload starts (CSRCs and header extension skipped)."""
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    return offset if offset <= len(data) else None


def _rtcp_packets(data: bytes | bytearray) -> Iterable[tuple[int, int, bytes | bytearray]]:
    """(packet type, report count, the packet) of each packet of a compound RTCP datagram."""
    offset = 0
    size = len(data)
    while offset + 4 <= size:
        first, pt, length = _RTCP_HDR.unpack_from(data, offset)
        end = offset + 4 * (length + 1)
        if first & 0xC0 != 0x80 or end > size:
            return
        yield pt, first & 0x1F, data[offset:end]
        offset = end


def _rewrite_rtcp(data: bytes, towards: OutStream, back: OutStream) -> bytearray:
    """RTCP forwarded to the party of `towards`: the sender's SSRC (and SR timestamp) as
    that party sees them; report blocks about the party's stream (`back`, as we rewrote it
    towards the sender) turned back into the party's own SSRC and sequence."""
    buf = bytearray(data)
    offset = 0
    while offset + 8 <= len(buf):
        first, pt, length = _RTCP_HDR.unpack_from(buf, offset)
        end = offset + 4 * (length + 1)
        if end > len(buf):
            break
        count = first & 0x1F
        if pt in (200, 201):
            ssrc = _U32.unpack_from(buf, offset + 4)[0]
            if towards.in_ssrc == ssrc and not towards.identity and towards.ssrc is not None:
                _U32.pack_into(buf, offset + 4, towards.ssrc)
                if pt == 200 and end >= offset + 28:
                    ts = _U32.unpack_from(buf, offset + 16)[0]
                    _U32.pack_into(buf, offset + 16, (ts + towards.ts_off) & 0xFFFFFFFF)
            start = offset + (28 if pt == 200 else 8)
            for i in range(count):
                block = start + 24 * i
                if block + 24 > end:
                    break
                if back.in_ssrc is not None and not back.identity and _U32.unpack_from(buf, block)[0] == back.ssrc:
                    _U32.pack_into(buf, block, back.in_ssrc)
                    high = _U32.unpack_from(buf, block + 8)[0]
                    low = ((high & 0xFFFF) - back.seq_off) & 0xFFFF
                    _U32.pack_into(buf, block + 8, (high & 0xFFFF0000) | low)
        offset = end
    return buf
