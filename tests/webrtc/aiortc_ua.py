"""A browser-free webfon for tests and the benchmark: aiortc's RTCPeerConnection for the
media (full ICE, DTLS-SRTP, Opus/PCMU/PCMA as a browser offers them) and SIP over WSS to
the server's `/sip` (our own messages: REGISTER, INVITE with digest, ACK, BYE, and
answering an incoming INVITE), logged in through the REST API like the page.

It sends a sine tone and keeps what it receives (decoded by aiortc), so a test can say
which tone reached it.  aiortc is told `iceServers=[]` (no STUN server off the machine)
and gathers only 127.0.0.1 (`loopback_only()`: aioice skips loopback by default)."""

from __future__ import annotations

import asyncio
import fractions
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from av import AudioFrame
from webfon_helpers import INSTANCE, WsPhone, parse_reply, sip_response

from vivait_sip.registrar.digest import client_response, parse_challenge

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz


def loopback_only() -> None:
    """aioice gathers host candidates on 127.0.0.1 only (its default skips loopback)."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]


class ToneTrack(MediaStreamTrack):
    """A sine tone paced in real time, 20 ms frames of 48 kHz s16 mono."""

    kind = "audio"

    def __init__(self, hz: float, level: float = 0.4) -> None:
        super().__init__()
        self.hz = hz
        self.level = level
        self.pts = 0
        self.start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.start is None:
            self.start = time.monotonic()
        else:
            wait = self.start + self.pts / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        n = np.arange(self.pts, self.pts + FRAME)
        samples = (self.level * 32767 * np.sin(2 * math.pi * self.hz * n / RATE)).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, RATE)
        self.pts += FRAME
        return frame


@dataclass
class Heard:
    """What the remote track delivered (decoded audio, resampled to 8 kHz mono)."""

    frames: int = 0
    samples: list[np.ndarray] = field(default_factory=list)

    def tone_share(self, hz: float, skip_s: float = 0.5) -> float:
        """The share of the signal's energy within ±20 Hz of `hz` (after `skip_s`)."""
        if not self.samples:
            return 0.0
        data = np.concatenate(self.samples).astype(np.float64)[int(8000 * skip_s):]
        if len(data) < 4000:
            return 0.0
        spectrum = np.abs(np.fft.rfft(data * np.hanning(len(data)))) ** 2
        freqs = np.fft.rfftfreq(len(data), 1 / 8000)
        total = spectrum[freqs > 50].sum()
        band = spectrum[(freqs > hz - 20) & (freqs < hz + 20)].sum()
        return float(band / total) if total else 0.0


def _resample_to_8k(frame: AudioFrame) -> np.ndarray:
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        mono = data[0]
    else:
        mono = data.reshape(-1, channels)[:, 0] if channels > 1 else data.reshape(-1)
    step = max(1, frame.sample_rate // 8000)
    return mono[::step].astype(np.int16)


class Call:
    """One call of the UA: its dialog and its peer connection."""

    def __init__(self, ua: WebrtcUa, call_id: str, local_tag: str, outgoing: bool) -> None:
        self.ua = ua
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag: str | None = None
        self.remote_target: str | None = None
        self.outgoing = outgoing
        self.cseq = 1
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.heard = Heard()
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self._readers: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._readers.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                self.heard.frames += 1
                self.heard.samples.append(_resample_to_8k(frame))
        except Exception:
            return

    def add_tone(self, hz: float, codecs: tuple[str, ...] | None) -> None:
        transceiver = self.pc.addTransceiver(ToneTrack(hz), direction="sendrecv")
        if codecs is not None:
            caps = RTCRtpSender.getCapabilities("audio").codecs
            wanted = [c for name in codecs for c in caps if c.mimeType.lower() == f"audio/{name.lower()}"]
            transceiver.setCodecPreferences(wanted)

    async def local_sdp(self) -> str:
        while self.pc.iceGatheringState != "complete":
            await asyncio.sleep(0.01)
        return str(self.pc.localDescription.sdp)

    async def hangup(self) -> None:
        if self.ended.is_set():
            return
        self.cseq += 1
        await self.ua.send(self.ua.request("BYE", self, self.cseq))
        self._end("hangup")

    def _end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await self.pc.close()


class WebrtcUa(WsPhone):
    """The webfon's SIP side over WSS plus aiortc calls (see the module docstring)."""

    def __init__(self, port: int, cookie: str | None, extension: str, password: str) -> None:
        super().__init__(port, cookie=cookie)
        self.extension = extension
        self.password = password
        self.calls: dict[str, Call] = {}
        self.invites: asyncio.Queue[bytes] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Queue[bytes]] = {}

    async def start(self) -> None:
        await self.connect()
        reply = await self.register(self.extension, self.password)
        assert reply.status == 200, reply.raw
        self._dispatcher = asyncio.ensure_future(self._dispatch())

    async def stop(self) -> None:
        for call in list(self.calls.values()):
            await call.close()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        await self.close()

    # ---- messages ---------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        """Requests from the server: INVITE queued for answer(), BYE ends a call."""
        while True:
            raw = await self.incoming.get()
            method = raw.split(b" ", 1)[0].decode()
            call_id = _header(raw, "Call-ID") or ""
            if method == "INVITE" and call_id not in self.calls:
                await self.invites.put(raw)
            elif method == "INVITE":  # a re-INVITE (hold, a transfer's join): keep our SDP
                call = self.calls[call_id]
                await call.pc.setRemoteDescription(RTCSessionDescription(_body(raw), "offer"))
                answer = await call.pc.createAnswer()
                await call.pc.setLocalDescription(answer)
                await self.send(sip_response(raw, 200, "OK", to_tag=call.local_tag, body=await call.local_sdp(),
                                             extra=[("Contact", self.contact)]))
            elif method == "BYE":
                await self.send(sip_response(raw, 200, "OK"))
                call = self.calls.get(call_id)
                if call is not None:
                    call._end("bye:" + (_header(raw, "Reason") or "no reason"))
            elif method == "ACK":
                queue = self._waiting.get(f"ACK {call_id}")
                if queue is not None:
                    queue.put_nowait(raw)
            elif method in ("OPTIONS", "NOTIFY", "UPDATE", "INFO"):
                await self.send(sip_response(raw, 200, "OK"))

    @property
    def contact(self) -> str:
        return f"<sip:wf{self.extension}@k3l9df7jal.invalid;transport=ws;ob>"

    def request(self, method: str, call: Call, cseq: int, *, body: str = "", target: str | None = None,
                auth: tuple[str, str] | None = None) -> bytes:
        uri = call.remote_target or target or ""
        to = f"<{target or uri}>" + (f";tag={call.remote_tag}" if call.remote_tag else "")
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/WSS k3l9df7jal.invalid;branch=z9hG4bK{secrets.token_hex(8)}",
            "Max-Forwards: 70",
            f"From: <sip:{self.extension}@127.0.0.1>;tag={call.local_tag}",
            f"To: {to}",
            f"Call-ID: {call.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: {self.contact}",
            "User-Agent: aiortc-webfon",
        ]
        if auth is not None:
            lines.append(f"{auth[0]}: {auth[1]}")
        if body:
            lines.append("Content-Type: application/sdp")
        lines += [f"Content-Length: {len(body.encode())}", "", body]
        return "\r\n".join(lines).encode()

    # ---- calls ------------------------------------------------------------------------------
    async def call(self, number: str, *, tone_hz: float = 1000.0, codecs: tuple[str, ...] | None = None,
                   timeout: float = 15.0, call_id: str | None = None) -> Call:
        """INVITE `number`; returns once the call is answered and the answer applied."""
        call = Call(self, call_id or secrets.token_hex(10), secrets.token_hex(5), outgoing=True)
        self.calls[call.call_id] = call
        call.add_tone(tone_hz, codecs)
        await call.pc.setLocalDescription(await call.pc.createOffer())
        sdp = await call.local_sdp()
        target = f"sip:{number}@127.0.0.1"
        auth: tuple[str, str] | None = None
        deadline = time.monotonic() + timeout
        while True:
            invite = self.request("INVITE", call, call.cseq, body=sdp, target=target, auth=auth)
            await self.send(invite)
            reply = await self._final(call, deadline)
            if reply.status in (401, 407) and auth is None:
                await self.send(self._ack_failure(invite, reply))
                name = "Proxy-Authenticate" if reply.status == 407 else "WWW-Authenticate"
                challenge = parse_challenge(reply.get_all(name)[0])
                value = client_response(challenge, "INVITE", target, self.extension, self.password)
                auth = ("Proxy-Authorization" if reply.status == 407 else "Authorization", value)
                call.cseq += 1
                continue
            if reply.status >= 300:
                await self.send(self._ack_failure(invite, reply))
                call._end(f"failed:{reply.status}")
                raise CallFailed(reply.status, reply.reason)
            break
        call.remote_tag = _tag(reply.get("To") or "")
        contact = reply.get("Contact") or ""
        call.remote_target = contact[contact.find("<") + 1:contact.find(">")] if "<" in contact else target
        await self.send(self.request("ACK", call, call.cseq, target=target))
        await call.pc.setRemoteDescription(RTCSessionDescription(_body(reply.raw), "answer"))
        return call

    async def _final(self, call: Call, deadline: float) -> Any:
        while True:
            raw = await asyncio.wait_for(self.responses.get(), max(0.1, deadline - time.monotonic()))
            if (_header(raw, "Call-ID") or "") != call.call_id:
                continue
            reply = parse_reply(raw)
            if reply.status >= 200 and "INVITE" in (reply.get("CSeq") or ""):
                return reply

    def _ack_failure(self, invite: bytes, reply: Any) -> bytes:
        head = invite.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        uri = head[0].split(" ")[1]
        keep = [line for line in head[1:] if line.split(":", 1)[0].lower() in ("via", "from", "call-id", "max-forwards")]
        cseq = (reply.get("CSeq") or "1 INVITE").split()[0]
        lines = [f"ACK {uri} SIP/2.0", *keep, f"To: {reply.get('To')}", f"CSeq: {cseq} ACK", "Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()

    async def answer(self, *, tone_hz: float = 400.0, timeout: float = 15.0, ring_s: float = 0.0) -> Call:
        """Wait for an INVITE, answer it 200 with our SDP, wait for the ACK."""
        raw = await asyncio.wait_for(self.invites.get(), timeout)
        call = Call(self, _header(raw, "Call-ID") or "", secrets.token_hex(5), outgoing=False)
        self.calls[call.call_id] = call
        call.remote_tag = _tag(_header(raw, "From") or "")
        contact = _header(raw, "Contact") or ""
        call.remote_target = contact[contact.find("<") + 1:contact.find(">")] if "<" in contact else None
        await self.send(sip_response(raw, 180, "Ringing", to_tag=call.local_tag))
        if ring_s:
            await asyncio.sleep(ring_s)
        call.add_tone(tone_hz, None)
        await call.pc.setRemoteDescription(RTCSessionDescription(_body(raw), "offer"))
        await call.pc.setLocalDescription(await call.pc.createAnswer())
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._waiting[f"ACK {call.call_id}"] = queue
        await self.send(sip_response(raw, 200, "OK", to_tag=call.local_tag, body=await call.local_sdp(),
                                     extra=[("Contact", self.contact)]))
        await asyncio.wait_for(queue.get(), 10)
        self._waiting.pop(f"ACK {call.call_id}", None)
        call.cseq = 100
        return call


class CallFailed(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status


def _header(raw: bytes, name: str) -> str | None:
    head = raw.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    short = {"call-id": "i", "from": "f", "to": "t", "contact": "m", "via": "v"}.get(name.lower())
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() in (name.lower(), short):
            return value.strip()
    return None


def _tag(value: str) -> str | None:
    for param in value.split(";")[1:]:
        key, _, val = param.partition("=")
        if key.strip().lower() == "tag":
            return val.strip()
    return None


def _body(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[1].decode()


__all__ = ["INSTANCE", "Call", "CallFailed", "Heard", "ToneTrack", "WebrtcUa", "loopback_only"]
