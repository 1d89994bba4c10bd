"""RFC 4733 telephone-events: the payload, a sender's packet train and a receiver's detector.

Payload (RFC 4733 §2.3): event (8 bits) | E (end) | R | volume (6 bits) | duration (16 bits,
in timestamp units).  One event keeps one RTP timestamp (its start) for all its packets;
the first has the marker bit; the end packet is sent three times (§2.5.1.4)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

EVENTS = "0123456789*#ABCD"
FLASH = 16
_PAYLOAD = struct.Struct("!BBH")


def event_code(digit: str) -> int:
    """`'5'` → 5, `'*'` → 10, `'#'` → 11, `'A'`-`'D'` → 12-15, `'!'` (flash) → 16."""
    if digit == "!":
        return FLASH
    index = EVENTS.find(digit.upper())
    if index < 0 or len(digit) != 1:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return index


def event_name(code: int) -> str:
    if 0 <= code < len(EVENTS):
        return EVENTS[code]
    return "!" if code == FLASH else f"event-{code}"


def encode_event(code: int, duration: int, *, end: bool = False, volume: int = 10) -> bytes:
    if not 0 <= code <= 255 or not 0 <= volume <= 63 or not 0 <= duration <= 0xFFFF:
        raise ValueError("telephone-event field out of range")
    return _PAYLOAD.pack(code, (0x80 if end else 0) | volume, duration)


@dataclass(frozen=True)
class EventPayload:
    code: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str:
        return event_name(self.code)


def decode_event(payload: bytes | bytearray | memoryview) -> EventPayload | None:
    """The first event of a payload (RFC 4733 allows several in redundancy; the first is the
    current one); None when it is shorter than 4 bytes."""
    if len(payload) < 4:
        return None
    code, flags, duration = _PAYLOAD.unpack_from(payload)
    return EventPayload(code, bool(flags & 0x80), flags & 0x3F, duration)


def event_packets(code: int, duration: int, *, step: int = 160, volume: int = 10) -> list[tuple[bytes, bool]]:
    """The payloads of one event, one per packet time: (payload, marker).  Durations grow
    by `step` samples; the last three carry the end bit and the final duration."""
    out: list[tuple[bytes, bool]] = []
    elapsed = step
    while elapsed < duration:
        out.append((encode_event(code, elapsed, volume=volume), not out))
        elapsed += step
    final = encode_event(code, min(duration, 0xFFFF), end=True, volume=volume)
    out.append((final, not out))
    out.extend([(final, False), (final, False)])
    return out


@dataclass(frozen=True)
class Detected:
    digit: str
    code: int
    duration: int  # timestamp units
    volume: int
    timestamp: int
    ended: bool  # False: its end packets were lost (reported when the next event began)


class DtmfDetector:
    """Feed every telephone-event packet of one stream; an event is reported once, on its
    first end packet (the retransmitted ends are ignored), or when a new event starts
    while the previous one never ended (lost end packets)."""

    __slots__ = ("_current", "_reported_ts")

    def __init__(self) -> None:
        self._current: tuple[int, EventPayload] | None = None  # (timestamp, last payload)
        self._reported_ts: int | None = None

    def feed(self, timestamp: int, payload: bytes | bytearray | memoryview) -> list[Detected]:
        event = decode_event(payload)
        if event is None:
            return []
        found: list[Detected] = []
        current = self._current
        if current is not None and current[0] != timestamp and self._reported_ts != current[0]:
            ts, last = current
            found.append(Detected(last.digit, last.code, last.duration, last.volume, ts, False))
            self._reported_ts = ts
        self._current = (timestamp, event)
        if event.end and self._reported_ts != timestamp:
            found.append(Detected(event.digit, event.code, event.duration, event.volume, timestamp, True))
            self._reported_ts = timestamp
        return found
