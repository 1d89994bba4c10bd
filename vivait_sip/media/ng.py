"""rtpengine's NG control protocol: bencode, the UDP client, and `RtpengineBackend`.

* **bencode** (`bencode`, `bdecode`): our own, small and strict.  Decoding refuses input
  over a size limit, nesting deeper than a limit, trailing bytes, non-canonical integers
  (`i03e`, `i-0e`), string lengths past the end, non-string or duplicate dict keys.
  Strings decode to `bytes`, dict keys to `str` (UTF-8).  Encoding sorts dict keys.
* **NG over UDP** (`NgClient`, one per daemon): each request is `COOKIE SP bencode`; the
  daemon answers with the same cookie (and answers a retransmission from its cache, so
  resending is safe).  A request is resent with exponential back-off until its timeout;
  replies whose cookie is not pending (late, duplicated, forged) are counted and dropped;
  the pending table is bounded (beyond it a request is refused at once).
* **Mapping** (`to_ng`, `from_ng`): each `control` command to its NG dictionary and each
  NG reply back to a `MediaReply`.
* **`RtpengineBackend(daemons)`**: health by NG `ping` with hysteresis (down after
  `down_after` failures, up after `up_after` successes); a new session goes to the up
  daemon with the fewest of our sessions, failing over to the next when one does not
  answer; a session stays pinned to the daemon that holds it (by Call-ID) until deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .control import (
    Answer,
    CallKey,
    Delete,
    Ice,
    Latching,
    LegStats,
    MediaCommand,
    MediaFlags,
    MediaReply,
    Offer,
    Ping,
    PlayDtmf,
    PlayMedia,
    Query,
    Replace,
    ReplaceParty,
    RtcpMux,
    StartRecording,
    StopMedia,
    StopRecording,
    TransportProtocol,
)

log = logging.getLogger("vivait_sip.media.ng")

# ---- bencode ----------------------------------------------------------------------------

BValue = bytes | int | list["BValue"] | dict[str, "BValue"]
MAX_MESSAGE = 1024 * 1024  # bytes of one bencoded message (rtpengine's query of a big call stays far below)
MAX_DEPTH = 32  # nesting of lists and dicts
_MAX_INT_DIGITS = 19  # |value| < 10**19: every 64-bit integer rtpengine sends


class BencodeError(ValueError):
    """Malformed, oversized or too deeply nested bencode (or a value that has none)."""


def bencode(value: object, *, max_depth: int = MAX_DEPTH) -> bytes:
    """Encode bytes, str (as UTF-8), int (not bool), lists/tuples and dicts with str or
    bytes keys (sorted by their bytes, as the format wants)."""
    out: list[bytes] = []
    _encode(value, out, max_depth)
    return b"".join(out)


def _encode(value: object, out: list[bytes], depth: int) -> None:
    if isinstance(value, bool):
        raise BencodeError("bencode has no booleans (use 1/0 or a string)")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out.append(b"%d:" % len(data))
        out.append(data)
    elif isinstance(value, str):
        data = value.encode("utf-8")
        out.append(b"%d:" % len(data))
        out.append(data)
    elif isinstance(value, (list, tuple)):
        if depth <= 0:
            raise BencodeError("nested too deeply")
        out.append(b"l")
        for item in value:
            _encode(item, out, depth - 1)
        out.append(b"e")
    elif isinstance(value, Mapping):
        if depth <= 0:
            raise BencodeError("nested too deeply")
        items: dict[bytes, object] = {}
        for key, item in value.items():
            if isinstance(key, str):
                raw = key.encode("utf-8")
            elif isinstance(key, bytes):
                raw = key
            else:
                raise BencodeError(f"dict keys must be strings, not {type(key).__name__}")
            if raw in items:
                raise BencodeError(f"duplicate key {raw!r}")
            items[raw] = item
        out.append(b"d")
        for raw in sorted(items):
            out.append(b"%d:" % len(raw))
            out.append(raw)
            _encode(items[raw], out, depth - 1)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes, *, max_size: int = MAX_MESSAGE, max_depth: int = MAX_DEPTH) -> BValue:
    """Decode exactly one value filling `data` (see the module docstring for what is refused)."""
    if len(data) > max_size:
        raise BencodeError(f"{len(data)} bytes is over the {max_size} byte limit")
    if not data:
        raise BencodeError("empty input")
    value, end = _Decoder(bytes(data), max_depth).value(0, 0)
    if end != len(data):
        raise BencodeError(f"trailing bytes at offset {end}")
    return value


class _Decoder:
    __slots__ = ("data", "max_depth")

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.max_depth = max_depth

    def value(self, pos: int, depth: int) -> tuple[BValue, int]:
        data = self.data
        if pos >= len(data):
            raise BencodeError("truncated")
        lead = data[pos]
        if lead == 0x69:  # i
            return self.integer(pos + 1)
        if 0x30 <= lead <= 0x39:
            return self.string(pos)
        if lead == 0x6C:  # l
            if depth >= self.max_depth:
                raise BencodeError(f"nested deeper than {self.max_depth}")
            items: list[BValue] = []
            pos += 1
            while True:
                if pos >= len(data):
                    raise BencodeError("unterminated list")
                if data[pos] == 0x65:  # e
                    return items, pos + 1
                item, pos = self.value(pos, depth + 1)
                items.append(item)
        if lead == 0x64:  # d
            if depth >= self.max_depth:
                raise BencodeError(f"nested deeper than {self.max_depth}")
            found: dict[str, BValue] = {}
            pos += 1
            while True:
                if pos >= len(data):
                    raise BencodeError("unterminated dict")
                if data[pos] == 0x65:
                    return found, pos + 1
                if not 0x30 <= data[pos] <= 0x39:
                    raise BencodeError(f"dict key at offset {pos} is not a string")
                raw, pos = self.string(pos)
                try:
                    key = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise BencodeError(f"dict key {raw[:40]!r} is not UTF-8") from None
                if key in found:
                    raise BencodeError(f"duplicate key {key[:40]!r}")
                found[key], pos = self.value(pos, depth + 1)
        raise BencodeError(f"unexpected byte {bytes([lead])!r} at offset {pos}")

    def integer(self, pos: int) -> tuple[int, int]:
        data = self.data
        end = data.find(b"e", pos, pos + _MAX_INT_DIGITS + 2)
        if end < 0:
            raise BencodeError("integer unterminated or too long")
        text = data[pos:end]
        digits = text[1:] if text[:1] == b"-" else text
        if not digits or not digits.isdigit() or len(digits) > _MAX_INT_DIGITS:
            raise BencodeError(f"bad integer {text[:24]!r}")
        if (digits[0] == 0x30 and len(digits) > 1) or text == b"-0":
            raise BencodeError(f"non-canonical integer {text!r}")
        return int(text), end + 1

    def string(self, pos: int) -> tuple[bytes, int]:
        data = self.data
        colon = data.find(b":", pos, pos + 12)
        if colon < 0:
            raise BencodeError(f"string length at offset {pos} unterminated or too long")
        digits = data[pos:colon]
        if not digits.isdigit() or (digits[0] == 0x30 and len(digits) > 1):
            raise BencodeError(f"bad string length {digits!r}")
        length = int(digits)
        start = colon + 1
        if start + length > len(data):
            raise BencodeError(f"string of {length} bytes runs past the end")
        return data[start:start + length], start + length


# ---- control messages <-> NG dictionaries -------------------------------------------------


def _flags_to_ng(flags: MediaFlags, out: dict[str, object]) -> None:
    ng_flags: list[str] = []
    if flags.transport_protocol is not None:
        out["transport-protocol"] = flags.transport_protocol.value
    if flags.ice is not None:
        out["ICE"] = flags.ice.value
    if flags.dtls is not None:
        out["DTLS"] = flags.dtls.value
    if flags.rtcp_mux:
        out["rtcp-mux"] = [m.value for m in flags.rtcp_mux]
    codec = flags.codec
    if not codec.empty:
        out["codec"] = {
            name: list(getattr(codec, name)) for name in ("strip", "offer", "transcode", "mask") if getattr(codec, name)
        }
    if flags.latching is Latching.ASYMMETRIC:  # symmetric is rtpengine's default (10.5 logs the word as unknown)
        ng_flags.append(flags.latching.value)
    if flags.media_handover:
        ng_flags.append("media-handover")
    if flags.replace:
        out["replace"] = ["session-connection" if r is Replace.SESSION_CONNECTION else r.value for r in flags.replace]
    if flags.direction is not None:
        out["direction"] = list(flags.direction)
    if flags.media_address is not None:
        out["media-address"] = flags.media_address
    if flags.record_call:
        out["record-call"] = "yes"
    ng_flags.extend(flags.flags)
    out["flags"] = ng_flags


def _key_to_ng(key: CallKey, out: dict[str, object]) -> None:
    out["call-id"] = key.call_id
    out["from-tag"] = key.from_tag
    if key.to_tag is not None:
        out["to-tag"] = key.to_tag


def to_ng(msg: MediaCommand) -> dict[str, object]:
    """The NG dictionary of a control command (bencoded by the client)."""
    out: dict[str, object] = {"command": msg.command}
    if isinstance(msg, (Offer, Answer)):
        _key_to_ng(msg.key, out)
        out["sdp"] = msg.sdp
        _flags_to_ng(msg.flags, out)
    elif isinstance(msg, Delete):
        out["call-id"] = msg.call_id
        if msg.from_tag is not None:
            out["from-tag"] = msg.from_tag
        if msg.to_tag is not None:
            out["to-tag"] = msg.to_tag
        if msg.delay_s is not None:
            out["delete-delay"] = msg.delay_s
    elif isinstance(msg, (Query, StartRecording, StopRecording)):
        out["call-id"] = msg.call_id
        if msg.from_tag is not None:
            out["from-tag"] = msg.from_tag
    elif isinstance(msg, PlayMedia):
        _key_to_ng(msg.key, out)
        if msg.file is not None:
            out["file"] = msg.file
        if msg.blob is not None:
            out["blob"] = msg.blob
        out["repeat-times"] = msg.repeat
    elif isinstance(msg, StopMedia):
        _key_to_ng(msg.key, out)
    elif isinstance(msg, PlayDtmf):
        _key_to_ng(msg.key, out)
        out["code"] = msg.code.upper()
        out["duration"] = msg.duration_ms
        out["volume"] = -msg.volume_db  # NG: positive dB below the reference
    elif isinstance(msg, ReplaceParty):
        raise TypeError("replace party is two NG messages (replace_party_to_ng), not one")
    elif not isinstance(msg, Ping):
        raise TypeError(f"no NG mapping for {type(msg).__name__}")
    return out


PORT_LATCHING = "port-latching"


def replace_party_to_ng(
    msg: ReplaceParty, kept_tag: str, kept_sdp: bytes | None = None
) -> tuple[dict[str, object], dict[str, object]]:
    """A transfer in NG terms (rtpengine has no "replace party"): an `offer` that puts
    the new party opposite the kept one in the same call, then a `delete` of the old
    party's branch (`from-tag` alone, `delete-delay` 0).

    * With `msg.sdp` (the new party offers): `offer` from-tag = the new tag, to-tag = the
      kept tag.  rtpengine makes a new monologue for the new tag and subscribes it and
      the kept party to each other (what it does for a branched answer); its reply is the
      offer for the kept party, whose answer then goes as `answer` from-tag = new, to-tag
      = kept (`Answer(CallKey(call, new, kept))`).
    * Without (the kept party will offer): `offer` from-tag = the kept tag, to-tag = the
      new tag, with the kept party's last SDP (`kept_sdp`): the reply is an offer for the
      new party; its answer goes as `answer` from-tag = kept, to-tag = new.

    `port-latching` keeps the ports facing the kept party: rtpengine otherwise picks the
    ports facing a party by the *other* party's endpoint (its "endpoint maps", made for
    forked calls), so a new party at another address would give the kept party new ports
    (measured with rtpengine 10.5: new ports without the flag, the same with it).  The old
    party's branch stays subscribed to nobody but must be deleted: the kept party would
    otherwise still receive what the old party sends."""
    if msg.sdp is not None:
        offer: dict[str, object] = {
            "command": "offer", "call-id": msg.call_id, "from-tag": msg.new_tag, "to-tag": kept_tag, "sdp": msg.sdp,
        }
    else:
        if not kept_sdp:
            raise ValueError(f"replace party: no SDP of the kept party {kept_tag!r} to offer to the new party")
        offer = {"command": "offer", "call-id": msg.call_id, "from-tag": kept_tag, "to-tag": msg.new_tag, "sdp": kept_sdp}
    _flags_to_ng(msg.flags, offer)
    _add_flag(offer, PORT_LATCHING)
    delete: dict[str, object] = {"command": "delete", "call-id": msg.call_id, "from-tag": msg.old_tag, "delete-delay": 0}
    return offer, delete


# The DTLS fingerprint hashes a transferred WebRTC party is given in turn (`DTLS-fingerprint`,
# rtpengine 10.5: sha-1, sha-224, sha-256, sha-384, sha-512).  rtpengine signs every leg
# with one certificate and, by default, hashes it as the party hashed its own (sha-256 for
# Chrome); see `RtpengineBackend._transfer_hash`.
TRANSFER_HASHES = ("sha-384", "sha-512")
DEFAULT_HASH = "sha-256"
MAX_PEERS = 4096  # peers whose fingerprint hash we remember (bounded, oldest forgotten)


def sdp_fingerprint(sdp: bytes | None) -> bytes | None:
    """The (first) `a=fingerprint:` value of an SDP: a WebRTC party's own certificate, one
    per peer connection (None: no DTLS)."""
    if not sdp:
        return None
    start = sdp.find(b"a=fingerprint:")
    if start < 0:
        return None
    end = sdp.find(b"\n", start)
    return sdp[start + 14:end if end >= 0 else len(sdp)].strip().lower()


def next_transfer_hash(current: str | None) -> str:
    """The hash a transferred party's new leg gets: one its peer connection does not have
    now (`current`, the one our fingerprint reached it with last; rtpengine's default
    when unknown)."""
    current = (current or DEFAULT_HASH).lower()
    return next(h for h in TRANSFER_HASHES if h != current)


def _add_flag(payload: dict[str, object], flag: str) -> None:
    flags = payload.get("flags")
    found = [*flags] if isinstance(flags, list) else []
    if flag not in found:
        found.append(flag)
    payload["flags"] = found


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, int):
        return str(value)
    return None


def _int(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, bytes) and value.strip().lstrip(b"-").isdigit():
        return int(value)
    return 0


def _num(value: object) -> float | None:
    if isinstance(value, int):
        return float(value)
    if isinstance(value, bytes):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def from_ng(reply: BValue, backend: str | None = None) -> MediaReply:
    """A `MediaReply` from an NG reply dictionary (anything else is an error reply)."""
    if not isinstance(reply, dict):
        return MediaReply.failure(f"{backend or 'rtpengine'}: reply is not a dictionary", backend)
    result = _text(reply.get("result")) or ""
    warning = _text(reply.get("warning"))
    if result == "pong":
        return MediaReply("pong", warning=warning, backend=backend)
    if result != "ok":
        reason = _text(reply.get("error-reason")) or f"result {result!r}"
        return MediaReply("error", error=f"{backend or 'rtpengine'}: {reason}", warning=warning, backend=backend)
    sdp = reply.get("sdp")
    duration = reply.get("duration")
    return MediaReply(
        "ok",
        sdp=sdp if isinstance(sdp, bytes) else None,
        warning=warning,
        legs=_leg_stats(reply),
        duration_ms=duration if isinstance(duration, int) else None,
        backend=backend,
    )


def _leg_stats(reply: dict[str, Any]) -> tuple[LegStats, ...]:
    """Per tag of a `query` reply: what rtpengine received on its RTP streams (RTCP
    streams left out), with loss and jitter from the RTCP reports it saw, per SSRC."""
    tags = _dict(reply.get("tags"))
    ssrc_stats = _dict(reply.get("SSRC"))
    legs = []
    for name, info in tags.items():
        info = _dict(info)
        tag = _text(info.get("tag")) or name
        packets = octets = errors = 0
        address = None
        ssrcs: list[str] = []
        for media in _list(info.get("medias")):
            media = _dict(media)
            streams = _list(media.get("streams"))
            for index, stream in enumerate(streams):
                stream = _dict(stream)
                stream_flags = {_text(f) for f in _list(stream.get("flags"))}
                if "RTCP" in stream_flags or (index % 2 == 1 and "RTP" not in stream_flags and len(streams) > 1):
                    continue
                stats = _dict(stream.get("stats"))
                packets += _int(stats.get("packets"))
                octets += _int(stats.get("bytes"))
                errors += _int(stats.get("errors"))
                endpoint = _dict(stream.get("endpoint"))
                host, port = _text(endpoint.get("address")), _int(endpoint.get("port"))
                if address is None and host and port:
                    address = f"{host}:{port}"
                ssrc = stream.get("SSRC")
                for value in ssrc if isinstance(ssrc, list) else [ssrc]:
                    text = _text(value)
                    if text:
                        ssrcs.append(text)
        lost, loss, jitter = _rtcp_figures([_dict(ssrc_stats.get(s)) for s in dict.fromkeys(ssrcs)])
        legs.append(LegStats(tag, packets, octets, errors, lost, loss, jitter, address))
    return tuple(legs)


def _rtcp_figures(entries: Sequence[dict[str, Any]]) -> tuple[int | None, float | None, float | None]:
    """Packets lost, fraction lost and jitter (ms) from rtpengine's per-SSRC statistics
    (the last of its "MOS progression" samples), when RTCP reported any."""
    lost: int | None = None
    loss: float | None = None
    jitter: float | None = None
    for entry in entries:
        samples = _list(_dict(entry.get("MOS progression")).get("entries"))
        last = _dict(samples[-1]) if samples else {}
        if "packet loss" in last:
            value = _num(last.get("packet loss"))
            if value is not None:
                loss = max(loss or 0.0, value / 100.0)
        if "jitter" in last:
            value = _num(last.get("jitter"))
            if value is not None:
                jitter = max(jitter or 0.0, value)
        if "packets lost" in entry:
            lost = (lost or 0) + _int(entry.get("packets lost"))
    return lost, loss, jitter


# ---- NG over UDP ------------------------------------------------------------------------


class NgError(Exception):
    """An NG request got no usable reply: timed out, refused, malformed, overloaded."""


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[BValue]
    sent_at: float


class _NgProtocol(asyncio.DatagramProtocol):
    def __init__(self, client: NgClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.client._received(data)

    def error_received(self, exc: Exception) -> None:
        self.client._refused(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost()


class NgClient:
    """NG requests to one daemon over UDP; see the module docstring.

    `retransmit_s` is the first wait for a reply (doubled after each resend, capped at
    `max_retransmit_s`), `timeout_s` the whole request's.  A connected socket is used,
    so an ICMP port unreachable (a daemon not running) fails the pending requests at
    once instead of waiting for their timeout."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float = 2.0,
        retransmit_s: float = 0.5,
        max_retransmit_s: float = 2.0,
        max_pending: int = 1024,
        max_reply: int = MAX_MESSAGE,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.retransmit_s = retransmit_s
        self.max_retransmit_s = max_retransmit_s
        self.max_pending = max_pending
        self.max_reply = max_reply
        self.name = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: dict[bytes, _Pending] = {}
        self._prefix = os.urandom(4).hex()
        self._seq = itertools.count(1)
        self.counters: dict[str, int] = {
            "requests": 0, "retransmissions": 0, "timeouts": 0, "refused": 0, "overflow": 0,
            "unmatched_replies": 0, "malformed_replies": 0,
        }

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        if self._transport is not None:
            return
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _NgProtocol(self), remote_addr=(self.host, self.port))
        self._transport = transport

    async def stop(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        self._fail_all(NgError(f"rtpengine {self.name}: client stopped"))

    def _cookie(self) -> bytes:
        return f"{self._prefix}_{next(self._seq)}".encode()

    async def request(self, payload: Mapping[str, object]) -> BValue:
        """Send one NG request and return the decoded reply (`NgError` when there is none)."""
        if self._transport is None:
            await self.start()
        transport = self._transport
        if transport is None:
            raise NgError(f"rtpengine {self.name}: client stopped")
        if len(self._pending) >= self.max_pending:
            self.counters["overflow"] += 1
            raise NgError(f"rtpengine {self.name}: {self.max_pending} requests already waiting for a reply")
        cookie = self._cookie()
        data = cookie + b" " + bencode(payload)
        loop = asyncio.get_running_loop()
        entry = _Pending(loop.create_future(), loop.time())
        self._pending[cookie] = entry
        self.counters["requests"] += 1
        deadline = entry.sent_at + self.timeout_s
        wait = self.retransmit_s
        try:
            while True:
                try:
                    transport.sendto(data)
                except OSError as exc:
                    self.counters["refused"] += 1
                    raise NgError(f"rtpengine {self.name}: cannot send: {exc}") from None
                remaining = deadline - loop.time()
                await asyncio.wait((entry.future,), timeout=max(0.0, min(wait, remaining)))
                if entry.future.done():
                    return entry.future.result()
                if loop.time() >= deadline - 1e-6:
                    self.counters["timeouts"] += 1
                    raise NgError(f"rtpengine {self.name}: no reply in {self.timeout_s:g} s")
                self.counters["retransmissions"] += 1
                wait = min(wait * 2, self.max_retransmit_s)
        finally:
            self._pending.pop(cookie, None)
            if not entry.future.done():
                entry.future.cancel()

    # ---- protocol callbacks
    def _received(self, data: bytes) -> None:
        cookie, sep, body = data.partition(b" ")
        entry = self._pending.get(cookie) if sep else None
        if entry is None or entry.future.done():
            self.counters["unmatched_replies"] += 1
            return
        try:
            value = bdecode(body, max_size=self.max_reply)
        except BencodeError as exc:
            self.counters["malformed_replies"] += 1
            entry.future.set_exception(NgError(f"rtpengine {self.name}: malformed reply ({exc})"))
            return
        entry.future.set_result(value)

    def _refused(self, exc: Exception) -> None:
        self.counters["refused"] += 1
        self._fail_all(NgError(f"rtpengine {self.name}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"))

    def _lost(self) -> None:
        self._transport = None
        self._fail_all(NgError(f"rtpengine {self.name}: socket closed"))

    def _fail_all(self, exc: NgError) -> None:
        for entry in self._pending.values():
            if not entry.future.done():
                entry.future.set_exception(exc)
                entry.future.exception()  # retrieved: no "never retrieved" warning if nobody awaits


# ---- the backend --------------------------------------------------------------------------

DaemonState = Literal["unknown", "up", "down"]
MAX_STRAYS = 10_000  # calls remembered for a delete to daemons that did not answer their offer


def parse_daemon(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{text!r}: expected HOST:PORT")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: expected HOST:PORT with a port 1-65535")
    return host, int(port_text)


class Daemon:
    """One rtpengine daemon: its client, health state and the sessions pinned to it."""

    def __init__(self, address: str, client: NgClient, *, down_after: int, up_after: int) -> None:
        self.address = address
        self.client = client
        self.down_after = down_after
        self.up_after = up_after
        self.state: DaemonState = "unknown"
        self.successes = 0  # consecutive
        self.failures = 0  # consecutive
        self.sessions = 0
        self.last_error: str | None = None
        self.last_change = time.time()
        self.version_warning: str | None = None

    @property
    def usable(self) -> bool:
        """New sessions may go here (an unknown daemon is tried: it has not failed yet)."""
        return self.state != "down"

    def success(self) -> bool:
        """Record a reply; True when the state changed."""
        self.failures = 0
        self.successes += 1
        if self.state != "up" and (self.state == "unknown" or self.successes >= self.up_after):
            self._set("up")
            return True
        return False

    def failure(self, error: str) -> bool:
        self.successes = 0
        self.failures += 1
        self.last_error = error
        if self.state != "down" and self.failures >= self.down_after:
            self._set("down")
            return True
        return False

    def _set(self, state: DaemonState) -> None:
        self.state = state
        self.last_change = time.time()
        if state == "down":
            log.warning("event=rtpengine_down daemon=%s error=%r", self.address, self.last_error)
        else:
            log.info("event=rtpengine_%s daemon=%s", state, self.address)

    def status(self) -> dict[str, object]:
        return {
            "address": self.address, "state": self.state, "sessions": self.sessions,
            "pending": self.client.pending, "last_error": self.last_error,
            "since": round(self.last_change, 3), **self.client.counters,
        }


class RtpengineBackend:
    """`control.MediaBackend` over one or more rtpengine daemons; see the module docstring.

    `request` never raises: a session on a daemon that is down, a daemon that does not
    answer, no daemon up, too many sessions — each is an error reply naming what failed."""

    name = "rtpengine"
    # rtpengine tells nobody when a prompt ends: the caller times it by the reply's duration
    reports_play_done = False

    def __init__(
        self,
        daemons: Sequence[str],
        *,
        timeout_s: float = 2.0,
        retransmit_s: float = 0.5,
        ping_interval_s: float = 5.0,
        down_after: int = 2,
        up_after: int = 2,
        max_pending: int = 1024,
        max_sessions: int = 0,
        client_factory: Callable[[str, int], NgClient] | None = None,
        sounds: Callable[[PlayMedia], PlayMedia] | None = None,
    ) -> None:
        if not daemons:
            raise ValueError("rtpengine: at least one daemon (HOST:PORT)")
        factory = client_factory or (lambda host, port: NgClient(
            host, port, timeout_s=timeout_s, retransmit_s=retransmit_s, max_pending=max_pending))
        self.daemons: list[Daemon] = []
        for text in daemons:
            host, port = parse_daemon(text)
            self.daemons.append(Daemon(text, factory(host, port), down_after=down_after, up_after=up_after))
        self.ping_interval_s = ping_interval_s
        self.max_sessions = max_sessions
        self._pinned: dict[str, Daemon] = {}  # Call-ID → the daemon holding it
        self._placing: dict[str, asyncio.Future[None]] = {}  # Call-ID → its first offer, in flight
        # Call-ID → daemons its first offer timed out on: they may have made the session
        # after all (a late reply), so the call's delete goes to them too.
        self._stray: dict[str, list[Daemon]] = {}
        # Call-ID → {tag: the last SDP that party sent}: a transfer whose kept party offers
        # next needs its SDP (`replace_party_to_ng`); two small SDPs per call.
        self._sdps: dict[str, dict[str, bytes]] = {}
        # Calls with a replaced party: their later offers and answers carry `port-latching`
        # (the kept party's ports were made for the old party's endpoint, see above)
        self._latched: set[str] = set()
        # Call-ID → {tag: DTLS fingerprint hash}: WebRTC parties a transfer put on a new leg,
        # and the hash of our fingerprint every SDP to them carries (`_transfer_hash`)
        self._hashes: dict[str, dict[str, str]] = {}
        # a WebRTC party's own fingerprint (its peer connection) → the hash it last got from us
        self._peer_hash: dict[bytes, str] = {}
        # `PlayMedia(file=NAME)` → what rtpengine can play (rtpe_sounds.RtpengineSounds.resolve);
        # None: files and blobs go as they are
        self.sounds = sounds
        # (Call-ID, the party played to) → the parties whose media is blocked meanwhile
        self._blocked: dict[tuple[str, str], list[str]] = {}
        # (Call-ID, party) → its play and stop requests, one at a time and in order: a stop
        # asked while the play is still being rendered or blocking goes after it
        self._players: dict[tuple[str, str], asyncio.Lock] = {}
        self._pinging: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = {"requests": 0, "errors": 0, "failovers": 0, "refused_no_daemon": 0}

    # ---- lifecycle
    async def start(self) -> None:
        for daemon in self.daemons:
            await daemon.client.start()
        await self.check_health()
        if self.ping_interval_s > 0 and self._pinging is None:
            self._pinging = asyncio.create_task(self._ping_loop(), name="rtpengine-ping")

    async def stop(self) -> None:
        task, self._pinging = self._pinging, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for daemon in self.daemons:
            await daemon.client.stop()

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            try:
                await self.check_health()
            except Exception as exc:  # never let health checks die
                log.error("event=rtpengine_ping_failed error=%r", str(exc))

    async def check_health(self) -> None:
        """One NG ping to every daemon, at once."""
        await asyncio.gather(*(self._ping(daemon) for daemon in self.daemons))

    async def _ping(self, daemon: Daemon) -> None:
        try:
            reply = await daemon.client.request({"command": "ping"})
        except NgError as exc:
            daemon.failure(str(exc))
            return
        if isinstance(reply, dict) and reply.get("result") == b"pong":
            daemon.success()
        else:
            daemon.failure(f"rtpengine {daemon.address}: ping answered {_text(_dict(reply).get('result'))!r}")

    # ---- MediaBackend
    @property
    def healthy(self) -> bool:
        return any(d.usable for d in self.daemons)

    @property
    def sessions(self) -> int:
        return len(self._pinned)

    def daemon_of(self, call_id: str) -> str | None:
        daemon = self._pinned.get(call_id)
        return daemon.address if daemon is not None else None

    def status(self) -> dict[str, object]:
        return {
            "backend": self.name,
            "healthy": self.healthy,
            "sessions": len(self._pinned),
            "daemons": [d.status() for d in self.daemons],
            **self.counters,
        }

    async def request(self, msg: MediaCommand) -> MediaReply:
        self.counters["requests"] += 1
        if isinstance(msg, ReplaceParty):
            return await self._replace_party(msg)
        if isinstance(msg, (PlayMedia, StopMedia)):
            player = (msg.key.call_id, msg.key.from_tag)
            if msg.key.call_id not in self._pinned and msg.key.call_id not in self._placing:
                return self._error(f"rtpengine: no media session for call {msg.key.call_id}")
            async with self._players.setdefault(player, asyncio.Lock()):  # forgotten with the session (_unpin)
                return await (self._play(msg) if isinstance(msg, PlayMedia) else self._stop_play(msg))
        try:
            payload = to_ng(msg)
        except (TypeError, ValueError) as exc:
            return self._error(f"rtpengine: {exc}")
        if isinstance(msg, (Offer, Answer)) and msg.key.call_id in self._latched:
            _add_flag(payload, PORT_LATCHING)
        if not isinstance(msg, (Offer, Answer)):
            return await self._request(msg, payload)
        key = msg.key
        # the party whose SDP this is, and the one the reply's SDP goes to
        party, recipient = (key.from_tag, key.to_tag) if isinstance(msg, Offer) else (key.to_tag, key.from_tag)
        self._with_hash(payload, key.call_id, recipient)
        reply = await self._request(msg, payload)
        if reply.ok and party is not None and key.call_id in self._pinned:
            self._sdps.setdefault(key.call_id, {})[party] = msg.sdp
            given = self._hashes.get(key.call_id, {}).get(party)
            if given is not None:
                self._remember_peer(sdp_fingerprint(msg.sdp), given)
        return reply

    def _with_hash(self, payload: dict[str, object], call_id: str, recipient: str | None) -> None:
        given = self._hashes.get(call_id, {}).get(recipient) if recipient is not None else None
        if given is not None:
            payload["DTLS-fingerprint"] = given

    def _remember_peer(self, fingerprint: bytes | None, given: str) -> None:
        if fingerprint is None:
            return
        self._peer_hash.pop(fingerprint, None)
        if len(self._peer_hash) >= MAX_PEERS:
            del self._peer_hash[next(iter(self._peer_hash))]
        self._peer_hash[fingerprint] = given

    def _transfer_hash(self, msg: ReplaceParty) -> str | None:
        """The DTLS fingerprint hash of a transfer's new WebRTC party (None: not WebRTC):
        one its peer connection has not seen our certificate hashed with (sha-256, the
        hash Chrome uses and rtpengine copies, unless a transfer gave it another); every
        later SDP to it keeps it.  See `_replace_party`."""
        if msg.sdp is not None:
            webrtc = b"a=fingerprint:" in msg.sdp or b"UDP/TLS/RTP/SAVP" in msg.sdp
        else:
            webrtc = msg.flags.transport_protocol is TransportProtocol.UDP_TLS_RTP_SAVPF
        if not webrtc:
            return None
        fingerprint = sdp_fingerprint(msg.sdp)
        given = next_transfer_hash(self._peer_hash.get(fingerprint) if fingerprint is not None else None)
        self._hashes.setdefault(msg.call_id, {})[msg.new_tag] = given
        self._remember_peer(fingerprint, given)
        return given
    async def _play(self, msg: PlayMedia) -> MediaReply:
        """`play media` of a sound rtpengine can play (a named one rendered by `sounds`),
        the other parties' media blocked first: rtpengine 10.5 sends its player's stream
        *alongside* what it forwards to that party (measured: two SSRCs interleaved), so a
        held party would hear the holder's audio over the music.  `_stop_play` unblocks."""
        if self.sounds is not None and msg.blob is None and msg.file is not None and not msg.file.startswith("/"):
            try:
                msg = await asyncio.to_thread(self.sounds, msg)
            except (LookupError, OSError, ValueError) as exc:
                return self._error(f"rtpengine: {exc}")
        call_id, tag = msg.key.call_id, msg.key.from_tag
        others = [t for t in self._sdps.get(call_id, {}) if t != tag]
        blocked = self._blocked.setdefault((call_id, tag), [])
        for other in others:
            if other in blocked:
                continue
            reply = await self._request(msg, {"command": "block media", "call-id": call_id, "from-tag": other})
            if reply.ok:
                blocked.append(other)
            else:
                log.warning("event=media_block_failed call_id=%r tag=%r error=%r", call_id, other, reply.error)
        return await self._request(msg, to_ng(msg))

    async def _stop_play(self, msg: StopMedia) -> MediaReply:
        """`stop media`, then the parties `_play` blocked are heard again (their failures,
        a party deleted meanwhile by a transfer, are only logged)."""
        call_id, tag = msg.key.call_id, msg.key.from_tag
        reply = await self._request(msg, to_ng(msg))
        for other in self._blocked.pop((call_id, tag), []):
            if call_id not in self._pinned:
                break
            unblocked = await self._request(msg, {"command": "unblock media", "call-id": call_id, "from-tag": other})
            if not unblocked.ok:
                log.info("event=media_unblock_failed call_id=%r tag=%r error=%r", call_id, other, unblocked.error)
        return reply

    async def _replace_party(self, msg: ReplaceParty) -> MediaReply:
        """`replace_party_to_ng`: the offer, then the old branch's delete (its failure is
        a warning: the kept party may then also receive what the old party still sends).

        **A new WebRTC party gets our certificate under another fingerprint.**  rtpengine
        signs every leg with one certificate, and by default hashes it as the party
        hashed its own (sha-256 for Chrome).  A browser moved onto a new leg — an
        attended transfer's target, re-INVITEd inside its consultation call, whose leg
        was in the same daemon — would see the very fingerprint it already has a DTLS
        association with: Chrome then keeps that association and refuses the new leg's
        DTLS role when it differs ("Failed to set SSL role for the transport": it was
        the client of the consultation call, rtpengine answers its `actpass` re-offer as
        the client), and sip.js hangs up (BYE, 488).  Another hash of the same
        certificate (`DTLS-fingerprint`, `_transfer_hash`) is another fingerprint to
        Chrome: it starts a new handshake on the new ICE path, in the role the answer
        gives it.  rtpengine 10.5 honours `DTLS-fingerprint` only in an offer, for a leg
        that has no hash yet, and keeps it afterwards; so when the new party offers (its
        SDP here) the daemon is first offered the kept party's last SDP towards the new
        tag (the *priming* offer, its reply dropped), which makes the new leg with the
        chosen hash, and the new party's offer follows as usual (measured with
        Chromium 156 and rtpengine 10.5.3.5: sha-384 in the answer to the target, the
        kept party's port and fingerprint unchanged)."""
        call_id = msg.call_id
        placing = self._placing.get(call_id)
        if placing is not None:
            await asyncio.shield(placing)
        daemon = self._pinned.get(call_id)
        if daemon is None:
            return self._error(f"rtpengine: no media session for call {call_id}")
        if daemon.state == "down":
            return self._error(f"rtpengine {daemon.address} holding call {call_id} is down ({daemon.last_error})")
        parties = self._sdps.get(call_id, {})
        kept_tag = msg.kept_tag
        if kept_tag is None:
            others = [tag for tag in parties if tag not in (msg.old_tag, msg.new_tag)]
            if len(others) != 1:
                return self._error(f"rtpengine: replace party: which party of call {call_id} stays is unknown")
            kept_tag = others[0]
        kept_sdp = parties.get(kept_tag)
        try:
            offer, delete = replace_party_to_ng(msg, kept_tag, kept_sdp)
        except ValueError as exc:
            return self._error(f"rtpengine: {exc}")
        given = self._transfer_hash(msg)
        if given is not None and msg.sdp is not None:
            if not kept_sdp:
                return self._error(f"rtpengine: replace party: no SDP of the kept party {kept_tag!r} to make "
                                   f"the new WebRTC party's leg with")
            prime = dict(offer, **{"from-tag": kept_tag, "to-tag": msg.new_tag, "sdp": kept_sdp})
            _flags_to_ng(dataclasses.replace(
                msg.flags, transport_protocol=TransportProtocol.UDP_TLS_RTP_SAVPF, ice=Ice.FORCE,
                rtcp_mux=(RtcpMux.OFFER, RtcpMux.REQUIRE)), prime)
            _add_flag(prime, PORT_LATCHING)
            prime["DTLS-fingerprint"] = given
            # the new party offers next (an ICE restart, it is then controlling): rtpengine,
            # the offerer of this priming offer, would stay controlling too; as ICE-lite
            # towards it (what the built-in bridge is to every browser) it never is
            prime["ICE-lite"] = "forward"
            primed = await self._send(daemon, prime)
            if not primed.ok:
                return primed
        self._with_hash(offer, call_id, kept_tag if msg.sdp is not None else msg.new_tag)
        reply = await self._send(daemon, offer)
        if not reply.ok:
            return reply
        self._latched.add(call_id)
        parties = self._sdps.setdefault(call_id, {})
        parties.pop(msg.old_tag, None)
        if msg.sdp is not None:
            parties[msg.new_tag] = msg.sdp
        dropped = await self._send(daemon, delete)
        if not dropped.ok:
            log.warning("event=media_replace_delete_failed call_id=%r tag=%r error=%r", call_id, msg.old_tag, dropped.error)
            warning = f"the replaced party's branch was not deleted ({dropped.error})"
            return dataclasses.replace(reply, warning="; ".join(w for w in (reply.warning, warning) if w))
        return reply

    async def _request(self, msg: MediaCommand, payload: dict[str, object]) -> MediaReply:
        if isinstance(msg, Ping):
            return await self._ping_reply()
        call_id = msg.session_id()
        assert call_id is not None
        placing = self._placing.get(call_id)
        if placing is not None:  # a delete (or anything) racing the session's first offer goes after it
            await asyncio.shield(placing)
        daemon = self._pinned.get(call_id)
        if daemon is not None:
            whole_delete = isinstance(msg, Delete) and msg.from_tag is None and msg.to_tag is None
            if daemon.state == "down":
                if whole_delete:  # gone with its daemon: nothing left to free
                    self._unpin(call_id)
                    return MediaReply("ok", warning=f"rtpengine {daemon.address} is down: session forgotten",
                                      backend=f"rtpengine {daemon.address}")
                return self._error(f"rtpengine {daemon.address} holding call {call_id} is down ({daemon.last_error})")
            queried: MediaReply | None = None
            if whole_delete:
                # rtpengine 10.5 answers a whole call's delete without statistics (only a
                # branch delete carries them): what each party sent, asked just before
                queried = await self._send(daemon, {"command": "query", "call-id": call_id})
            reply = await self._send(daemon, payload)
            if whole_delete:
                self._unpin(call_id)
                await self._delete_strays(call_id, payload)
                if reply.ok and not reply.legs and queried is not None and queried.ok and queried.legs:
                    reply = dataclasses.replace(reply, legs=queried.legs)
            return reply
        if not isinstance(msg, Offer):
            if isinstance(msg, Delete):
                await self._delete_strays(call_id, payload)
                return MediaReply("ok", warning=f"call {call_id} has no media session", backend=self.name)
            return self._error(f"rtpengine: no media session for call {call_id}")
        placed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._placing[call_id] = placed
        try:
            return await self._new_session(call_id, payload)
        finally:
            del self._placing[call_id]
            placed.set_result(None)

    async def _new_session(self, call_id: str, payload: Mapping[str, object]) -> MediaReply:
        if self.max_sessions and len(self._pinned) >= self.max_sessions:
            return self._error(f"rtpengine: {self.max_sessions} sessions in use (media.rtpengine.max_sessions)")
        order = sorted((d for d in self.daemons if d.usable), key=lambda d: (d.sessions, self.daemons.index(d)))
        if not order:
            self.counters["refused_no_daemon"] += 1
            errors = "; ".join(f"{d.address}: {d.last_error}" for d in self.daemons)
            return self._error(f"rtpengine: no daemon up ({errors})")
        failures: list[str] = []
        for n, daemon in enumerate(order):
            if n:
                self.counters["failovers"] += 1
            try:
                raw = await daemon.client.request(payload)
            except NgError as exc:
                daemon.failure(str(exc))
                failures.append(str(exc))
                self._note_stray(call_id, daemon)
                continue  # no answer: the next daemon
            daemon.success()
            reply = from_ng(raw, f"rtpengine {daemon.address}")
            if reply.ok:
                if call_id not in self._pinned:
                    self._pinned[call_id] = daemon
                    daemon.sessions += 1
            else:
                self.counters["errors"] += 1
            return reply
        return self._error("; ".join(failures))

    async def _send(self, daemon: Daemon, payload: Mapping[str, object]) -> MediaReply:
        try:
            raw = await daemon.client.request(payload)
        except NgError as exc:
            daemon.failure(str(exc))
            return self._error(str(exc))
        daemon.success()
        reply = from_ng(raw, f"rtpengine {daemon.address}")
        if not reply.ok:
            self.counters["errors"] += 1
        return reply

    async def _ping_reply(self) -> MediaReply:
        await self.check_health()
        up = [d.address for d in self.daemons if d.state == "up"]
        if up:
            return MediaReply("pong", backend=f"rtpengine {', '.join(up)}")
        return self._error("rtpengine: no daemon answers ping")

    def _note_stray(self, call_id: str, daemon: Daemon) -> None:
        if len(self._stray) >= MAX_STRAYS and call_id not in self._stray:
            del self._stray[next(iter(self._stray))]  # the oldest: bounded, best effort
        self._stray.setdefault(call_id, []).append(daemon)

    async def _delete_strays(self, call_id: str, payload: Mapping[str, object]) -> None:
        """Best effort: the delete also to daemons the call's first offer timed out on."""
        strays = self._stray.pop(call_id, [])
        if not strays:
            return

        async def one(daemon: Daemon) -> None:
            with contextlib.suppress(NgError):
                await daemon.client.request(payload)

        await asyncio.gather(*(one(d) for d in strays))

    def _unpin(self, call_id: str) -> None:
        self._sdps.pop(call_id, None)
        self._hashes.pop(call_id, None)
        for key in [k for k in self._blocked if k[0] == call_id]:
            del self._blocked[key]
        for key in [k for k in self._players if k[0] == call_id and not self._players[k].locked()]:
            del self._players[key]
        self._latched.discard(call_id)
        daemon = self._pinned.pop(call_id, None)
        if daemon is not None:
            daemon.sessions = max(0, daemon.sessions - 1)

    def forget(self, call_id: str) -> None:
        """Drop a session's pin without telling the daemon (it timed the session out)."""
        self._unpin(call_id)

    def _error(self, text: str) -> MediaReply:
        self.counters["errors"] += 1
        return MediaReply.failure(text, self.name)

