"""Opus ↔ G.711 for a WebRTC party and a plain phone that share no codec (PyAV's libopus).

Used only then: every browser has G.711 (RFC 7874), so the bridge forwards payloads
untouched whenever the SDPs share a codec.  A WebRTC client that offers Opus without
G.711 gets, towards the phone, its offer plus PCMU/PCMA and telephone-event/8000
(`offer_with_g711`); when the phone answers G.711, the answer towards the client names
its Opus payload type (`answer_in_opus`) and each direction gets a transcoder that turns
one RTP packet into another (`OpusToG711`, `G711ToOpus`): pure computation on bytes, so
the relay stays a state machine (the relay calls `convert` where it would forward).

* Opus is decoded at 48 kHz (libopus in FFmpeg always gives 48 kHz), resampled to 8 kHz
  (swresample, state kept across packets) and encoded to G.711 with our tables; the
  other way G.711 is decoded and Opus is encoded from 8 kHz input (libopus takes it:
  narrowband, 20 ms frames, 24 kbit/s, VoIP mode).  RTP timestamps are scaled by 6 (Opus
  runs on a 48 kHz clock whatever it carries, RFC 7587), sequence numbers and SSRC kept.
* RFC 4733 telephone-events are mapped between the phone's telephone-event/8000 and the
  client's telephone-event/48000 (payload type, timestamp and duration scaled); without
  a 48 kHz one on the client's side they are dropped.
* Not here: RTCP is still relayed as is (its sender report timestamps are then in the
  other clock), and recordings hold the G.711 side only.
"""

from __future__ import annotations

import copy
import struct
from typing import Any

import numpy as np

from ..sip.sdp import MediaDescription, SessionDescription
from .audio import g711
from .sdpinfo import StreamInfo, is_dtls_proto

_HDR = struct.Struct("!BBHII")
G711_PTS = ((0, "PCMU"), (8, "PCMA"))
RATIO = 6  # 48 kHz / 8 kHz


def opus_pt(media: MediaDescription) -> int | None:
    for codec in media.codecs():
        if codec.encoding.lower() == "opus":
            return codec.payload_type
    return None


def needs_g711(info: StreamInfo, media: MediaDescription) -> bool:
    """A WebRTC party's audio m= line with Opus and without G.711: transcoding may be needed."""
    return info.media == "audio" and is_dtls_proto(info.proto) and not info.g711 and opus_pt(media) is not None


def offer_with_g711(parsed: SessionDescription, infos: list[StreamInfo]) -> SessionDescription | None:
    """A copy of a WebRTC party's offer where each Opus-only audio m= line also offers
    PCMU, PCMA and telephone-event/8000 (to a phone); None when no line needs it."""
    lines = [i for i, (info, media) in enumerate(zip(infos, parsed.media, strict=False)) if needs_g711(info, media)]
    if not lines:
        return None
    out = copy.deepcopy(parsed)
    for index in lines:
        media = out.media[index]
        used = {int(f) for f in media.formats if f.isdigit()}
        added = [pt for pt, _ in G711_PTS if pt not in used]
        for pt, name in G711_PTS:
            if pt in added:
                media.attributes.append(("rtpmap", f"{pt} {name}/8000"))
        dtmf = next((pt for pt in (101, 100, 102, 96, 97, 98, 99, 120, 121) if pt not in used), None)
        if dtmf is not None and info_has_no_dtmf8k(media):
            media.attributes.append(("rtpmap", f"{dtmf} telephone-event/8000"))
            media.attributes.append(("fmtp", f"{dtmf} 0-16"))
            added.append(dtmf)
        # the client's codecs first (a phone that has Opus keeps it end to end), then ours
        media.formats = [*media.formats, *(str(pt) for pt in added)]
    return out


def info_has_no_dtmf8k(media: MediaDescription) -> bool:
    return not any(c.encoding.lower() == "telephone-event" and c.clock_rate == 8000 for c in media.codecs())


def answer_in_opus(parsed: SessionDescription, index: int, client: MediaDescription) -> None:
    """Rewrite m= line `index` of a phone's G.711 answer (in place) to name the client's
    Opus (and its telephone-event/48000 when the phone answered telephone-event)."""
    media = parsed.media[index]
    opus = opus_pt(client)
    assert opus is not None
    formats = [str(opus)]
    dtmf48 = next((c.payload_type for c in client.codecs() if c.encoding.lower() == "telephone-event" and c.clock_rate == 48000), None)
    phone_dtmf = any(c.encoding.lower() == "telephone-event" for c in media.codecs())
    if dtmf48 is not None and phone_dtmf:
        formats.append(str(dtmf48))
    keep = {int(f) for f in formats}
    attributes = [(n, v) for n, v in media.attributes if n not in ("rtpmap", "fmtp", "ptime", "maxptime")]
    for name, value in client.attributes:
        if name in ("rtpmap", "fmtp") and value and value.split(" ", 1)[0].isdigit() and int(value.split(" ", 1)[0]) in keep:
            attributes.append((name, value))
    media.formats = formats
    media.attributes = attributes


def plan(client: StreamInfo, client_media: MediaDescription, phone: StreamInfo) -> tuple[OpusToG711, G711ToOpus] | None:
    """The transcoders of one stream, when the client has Opus without G.711 and the phone
    answered G.711 (its first codec); else None (forwarding as usual)."""
    if not needs_g711(client, client_media) or not phone.g711:
        return None
    opus = opus_pt(client_media)
    assert opus is not None
    g711_pt, name = phone.g711[0]
    codec: g711.Codec = "PCMA" if name == "PCMA" else "PCMU"
    dtmf48 = next((c.payload_type for c in client_media.codecs() if c.encoding.lower() == "telephone-event" and c.clock_rate == 48000), None)
    to_phone = OpusToG711(opus, g711_pt, codec, dtmf=(dtmf48, phone.dtmf_pt) if dtmf48 is not None and phone.dtmf_pt is not None else None)
    to_client = G711ToOpus(g711_pt, codec, opus, dtmf=(phone.dtmf_pt, dtmf48) if dtmf48 is not None and phone.dtmf_pt is not None else None)
    return to_phone, to_client


def _payload(data: bytes | bytearray) -> tuple[int, bytes] | None:
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    end = len(data)
    if data[0] & 0x20 and end > offset:  # padding
        end -= data[-1]
    if offset > end:
        return None
    return offset, bytes(data[offset:end])


class Transcoder:
    """One direction: `convert(packet)` → the packet in the other codec, or None."""

    packets = 0
    dropped = 0

    def convert(self, data: bytes | bytearray) -> bytes | None:
        raise NotImplementedError

    def _dtmf(self, data: bytes | bytearray, payload: bytes, pt: int, scale: float) -> bytes:
        _, second, seq, ts, ssrc = _HDR.unpack_from(data, 0)
        out_ts = int(ts * scale) & 0xFFFFFFFF
        if len(payload) >= 4:
            duration = min(0xFFFF, int(int.from_bytes(payload[2:4], "big") * scale))
            payload = payload[:2] + duration.to_bytes(2, "big") + payload[4:]
        return _HDR.pack(0x80, (second & 0x80) | pt, seq, out_ts, ssrc) + payload


class OpusToG711(Transcoder):
    def __init__(self, opus_pt: int, g711_pt: int, codec: g711.Codec, *, dtmf: tuple[int, int] | None = None) -> None:
        import av

        self.opus_pt = opus_pt
        self.g711_pt = g711_pt
        self.codec = codec
        self.dtmf = dtmf
        self.decoder: Any = av.CodecContext.create("libopus", "r")
        self.decoder.sample_rate = 48000
        self.decoder.layout = "mono"
        self.decoder.open()
        self.resampler: Any = av.AudioResampler(format="s16", layout="mono", rate=8000)
        self._av = av

    def convert(self, data: bytes | bytearray) -> bytes | None:
        found = _payload(data)
        if found is None:
            return None
        _, payload = found
        pt = data[1] & 0x7F
        if self.dtmf is not None and pt == self.dtmf[0]:
            return self._dtmf(data, payload, self.dtmf[1], 1 / RATIO)
        if pt != self.opus_pt or not payload:
            self.dropped += 1
            return None
        pcm: list[np.ndarray] = []
        try:
            for frame in self.decoder.decode(self._av.Packet(payload)):
                for out in self.resampler.resample(frame):
                    pcm.append(out.to_ndarray().reshape(-1))
        except self._av.error.FFmpegError:
            self.dropped += 1
            return None
        if not pcm:
            return None
        samples = pcm[0] if len(pcm) == 1 else np.concatenate(pcm)
        _, second, seq, ts, ssrc = _HDR.unpack_from(data, 0)
        self.packets += 1
        return _HDR.pack(0x80, (second & 0x80) | self.g711_pt, seq, (ts // RATIO) & 0xFFFFFFFF, ssrc) + g711.encode(samples, self.codec)


class G711ToOpus(Transcoder):
    FRAME = 160  # 20 ms at 8 kHz: libopus's frame here

    def __init__(self, g711_pt: int, codec: g711.Codec, opus_pt: int, *, dtmf: tuple[int, int] | None = None,
                 bitrate: int = 24000) -> None:
        import av

        self.g711_pt = g711_pt
        self.codec = codec
        self.opus_pt = opus_pt
        self.dtmf = dtmf
        encoder: Any = av.CodecContext.create("libopus", "w")
        encoder.sample_rate = 8000
        encoder.layout = "mono"
        encoder.format = "s16"
        encoder.bit_rate = bitrate
        encoder.options = {"application": "voip"}
        encoder.open()
        self.encoder = encoder
        self._av = av
        self.pending = np.zeros(0, dtype=np.int16)
        self.pending_ts = 0  # the 8 kHz timestamp of pending[0]
        self.seq: int | None = None

    def convert(self, data: bytes | bytearray) -> bytes | None:
        found = _payload(data)
        if found is None:
            return None
        _, payload = found
        pt = data[1] & 0x7F
        if self.dtmf is not None and pt == self.dtmf[0]:
            return self._dtmf(data, payload, self.dtmf[1], RATIO)
        if pt != self.g711_pt or not payload:
            self.dropped += 1
            return None
        _, second, seq, ts, ssrc = _HDR.unpack_from(data, 0)
        samples = g711.decode(payload, self.codec)
        if not len(self.pending) or (ts - (self.pending_ts + len(self.pending))) & 0xFFFFFFFF:
            self.pending = samples  # first packet, or a gap: start afresh at this packet
            self.pending_ts = ts
        else:
            self.pending = np.concatenate((self.pending, samples))
        if len(self.pending) >= 2 * self.FRAME:  # ptime above 20 ms: one packet out per packet in, so
            self.pending = self.pending[-self.FRAME:]  # the backlog is bounded (20 ms ptime assumed)
            self.pending_ts = (ts + len(samples) - self.FRAME) & 0xFFFFFFFF
        if len(self.pending) < self.FRAME:
            return None
        chunk, self.pending = self.pending[: self.FRAME], self.pending[self.FRAME :]
        chunk_ts = self.pending_ts
        self.pending_ts = (self.pending_ts + self.FRAME) & 0xFFFFFFFF
        frame = self._av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 8000
        try:
            packets = self.encoder.encode(frame)
        except self._av.error.FFmpegError:
            self.dropped += 1
            return None
        if not packets:
            return None
        self.seq = seq if self.seq is None else (self.seq + 1) & 0xFFFF
        self.packets += 1
        body = b"".join(bytes(p) for p in packets[:1])
        return _HDR.pack(0x80, (second & 0x80) | self.opus_pt, self.seq, (chunk_ts * RATIO) & 0xFFFFFFFF, ssrc) + body
