"""Real phones for the tests: headless baresip 1.0 instances driven over ctrl_tcp, each
sending its own tone (a WAV, aufile: 8 kHz mono for G.711) and recording what it receives
(the sndfile filter, `DIR/dump-<time>-dec.wav`), with a Goertzel detector to tell which
tone a recording holds, and when, and an RTP capture for what a recording cannot show.

One `Baresip` is one phone: its own config directory, SIP, RTP and control ports.  The
SIP trace (`-s`) goes to its log, so a test can read the messages the phone got.
ctrl_tcp speaks netstring-framed JSON: commands answered by token, events
(`CALL_INCOMING`, `CALL_RINGING`, `CALL_ESTABLISHED`, `CALL_CLOSED`, `REGISTER_OK`...)
sent only to connections open at that moment, so the connection opens with the process
and stays open.  Everything is on 127.0.0.1; every wait is bounded and baresip runs with
`-t`.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import subprocess
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

from audio import write_tone
from harness import free_port, free_ports

RATE = 8000  # G.711 (PCMU/PCMA)
LIFETIME_S = 180  # baresip quits by itself after this (-t): a safety cap

CONFIG = """\
poll_method epoll
sip_listen 127.0.0.1:{sip_port}
net_interface 127.0.0.1
call_local_timeout 120
call_max_calls 4
module_path /usr/lib/baresip/modules
audio_player aubridge,play_{name}
audio_source aufile,{tone}
audio_alert aubridge,play_{name}
audio_level no
ausrc_format s16
auplay_format s16
auenc_format s16
audec_format s16
audio_buffer 20-160
rtp_ports {rtp}-{rtp_end}
rtcp_mux no
jitter_buffer_delay 5-10
module g711.so
module sndfile.so
module aubridge.so
module aufile.so
module_tmp account.so
module_app menu.so
module_app ctrl_tcp.so
ctrl_tcp_listen 127.0.0.1:{ctrl_port}
snd_path {snd_path}
statmode_default off
ringback_disabled yes
"""


def read_samples(path: Path) -> list[int]:
    with wave.open(str(path), "rb") as wav:
        channels, width, frames = wav.getnchannels(), wav.getsampwidth(), wav.getnframes()
        raw = wav.readframes(frames)
    if width != 2 or not raw:
        return []
    count = len(raw) // 2
    return list(struct.unpack(f"<{count}h", raw[: count * 2]))[::channels]


def tone_share(samples: list[int], hz: float, rate: int = RATE) -> float:
    """The share of the signal's power at `hz` (Goertzel), 0..1; ~1 for a clean tone."""
    if len(samples) < 256:
        return 0.0
    k = 2 * math.cos(2 * math.pi * hz / rate)
    s1 = s2 = 0.0
    total = 0.0
    for x in samples:
        s1, s2 = x + k * s1 - s2, s1
        total += x * x
    power = s1 * s1 + s2 * s2 - k * s1 * s2
    if total <= 0:
        return 0.0
    return min(1.0, 2 * power / (len(samples) * total))


def rms_dbfs(samples: list[int]) -> float:
    if not samples:
        return -200.0
    rms = math.sqrt(sum(x * x for x in samples) / len(samples))
    return 20 * math.log10(rms / 32768) if rms > 0 else -200.0


Event = dict[str, Any]


class Baresip:
    """One phone.  `account` is baresip's account line without the answer mode, e.g.
    `<sip:6140@127.0.0.1:5060>;auth_pass=pw;regint=60`: added over ctrl_tcp once the
    control connection is open, since REGISTER_OK is not replayed (`register` waits for
    it).  `seconds` is the tone's length, `quit_after` baresip's `-t`."""

    def __init__(self, workdir: Path, name: str, tone_hz: float, *, account: str | None = None,
                 auto_answer: bool = True, seconds: float = 60, quit_after: int = LIFETIME_S,
                 sip_trace: bool = True) -> None:
        self.name = name
        self.dir = workdir / f"baresip-{name}"
        self.dir.mkdir(parents=True)
        tone = write_tone(self.dir / "tone.wav", tone_hz, seconds)
        self.sip_port = free_ports(2)  # and the next for TLS
        self.ctrl_port = free_port()
        rtp = free_ports(22, even=True)
        self.rtp_ports = (rtp, rtp + 20)
        (self.dir / "config").write_text(CONFIG.format(
            sip_port=self.sip_port, name=name, tone=tone, rtp=rtp, rtp_end=rtp + 20, ctrl_port=self.ctrl_port,
            snd_path=self.dir,
        ))
        (self.dir / "accounts").write_text("")  # added over ctrl_tcp (see above)
        (self.dir / "contacts").write_text("")  # else baresip writes one naming public URIs
        self.log_path = self.dir / "baresip.log"
        self._log = self.log_path.open("w")
        trace = ["-s"] if sip_trace else []
        self.proc = subprocess.Popen(["baresip", "-f", str(self.dir), "-t", str(quit_after), *trace],
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.proc.kill()
                    self.proc.wait(5)
                    self._log.close()
                    raise RuntimeError(f"baresip {name} did not start:\n{self.log()}") from None
                time.sleep(0.05)
        self._buf = b""
        self._token = 0
        self.events: list[Event] = []  # every event seen, in order (for failure messages)
        self._unread: list[Event] = []  # not yet returned by wait_event or drain
        if account is not None:
            mode = "auto" if auto_answer else "manual"
            try:
                reply = self.command("uanew", f"{account};answermode={mode}")
                assert reply.get("ok"), reply
            except BaseException:  # the caller has no phone to close
                self.close()
                raise

    # ---- ctrl_tcp ----------------------------------------------------------------------------
    def _read(self, timeout: float) -> Event | None:
        deadline = time.monotonic() + timeout
        while True:
            head, colon, rest = self._buf.partition(b":")
            if colon and head.isdigit() and len(rest) > int(head):
                size = int(head)
                payload, self._buf = rest[:size], rest[size + 1:]
                msg: Event = json.loads(payload.decode("utf-8", "replace"))
                if msg.get("event"):
                    self.events.append(msg)
                    self._unread.append(msg)
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                return None
            self._buf += chunk

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> Event:
        self._token += 1
        token = str(self._token)
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self.sock.sendall(str(len(body)).encode() + b":" + body + b",")
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self._read(left)
            if msg is None:
                break
            if msg.get("response") and msg.get("token") == token:
                return msg
        raise AssertionError(f"{self.name}: no answer to {command!r}")

    def wait_event(self, kind: str, timeout: float = 10.0, where: Callable[[Event], bool] = lambda e: True) -> Event:
        """The next unread event of this type (earlier unread events of other types stay)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._unread):
                if event.get("type") == kind and where(event):
                    del self._unread[i]
                    return event
            left = deadline - time.monotonic()
            if left <= 0 or (self._read(left) is None and time.monotonic() >= deadline):
                seen = [(e.get("type"), e.get("param")) for e in self.events]
                raise AssertionError(f"{self.name}: no {kind} in {timeout} s; events {seen}")

    def drain(self, seconds: float = 0.2) -> list[Event]:
        """Reads events for `seconds`, then marks every unread one read and returns them:
        a step starts from what happens after it, or checks what happened in it."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._read(left)
        out, self._unread = self._unread, []
        return out

    # ---- what it does ------------------------------------------------------------------------
    def register(self, timeout: float = 10.0) -> None:
        """Waits for the registration of the `account` given."""
        self.wait_event("REGISTER_OK", timeout)

    def dial(self, number: str) -> None:
        reply = self.command("dial", number)
        assert reply.get("ok"), reply

    def accept(self) -> None:
        assert self.command("accept").get("ok")

    def hangup(self) -> None:
        self.command("hangup")

    # ---- what it saw -------------------------------------------------------------------------
    def recordings(self) -> list[Path]:
        """What it received, one WAV per audio stream (oldest first)."""
        return sorted(self.dir.glob("dump-*-dec.wav"))

    def log(self) -> str:
        """The end of its log, for failure messages."""
        return self.log_path.read_text(errors="replace")[-4000:]

    def sip_received(self, start: str) -> list[str]:
        """Messages of the SIP trace (`-s`) the phone received that start with `start`
        (`"CANCEL"`, `"SIP/2.0 487"`), each as text, headers and all.  The trace prints
        `#`, then `UDP src -> dst`, then the message, in colour codes."""
        found = []
        for block in self.log_path.read_text(errors="replace").split("\x1b[36;1m#\n")[1:]:
            route, _, message = block.partition("\n")
            message = message.split("\x1b[;m", 1)[0]
            if route.endswith(f"-> 127.0.0.1:{self.sip_port}") and message.startswith(start):
                found.append(message)
        return found

    def wait_sip_received(self, start: str, timeout: float = 5.0) -> list[str]:
        """`sip_received`, once at least one such message is in the trace: a phone may
        report an event before the message that follows it (baresip closes a call it
        cancels before the 487 arrives)."""
        deadline = time.monotonic() + timeout
        while not (found := self.sip_received(start)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return found

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.command("quit", timeout=2)
                # baresip unregisters before it exits: with the server gone it waits ~5 s
                # for answers that never come, so a quit is given 1.5 s, then killed
                self.proc.wait(1.5)
            except (OSError, AssertionError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self.sock.close()
        self._log.close()


def wav_samples_size(path: Path) -> int:
    """Samples in a WAV being written (the header's count may lag: use the file size)."""
    try:
        return max(0, (path.stat().st_size - 44) // 2)
    except FileNotFoundError:
        return 0


def read_growing(path: Path) -> list[int]:
    """Samples of a WAV that is still being written (its header is not final yet)."""
    data = path.read_bytes()[44:]
    count = len(data) // 2
    return list(struct.unpack(f"<{count}h", data[: count * 2]))


class RtpCapture:
    """RTP arriving at a phone, captured on the loopback with dumpcap (capture rights
    needed: root, or a dumpcap with CAP_NET_RAW).  For what a phone's own recording cannot
    show: baresip 1.0 loses its receive filters (the sndfile recording) on the first SDP
    direction change (src/audio.c: `audio_decoder_set` flushes them when the direction is
    not sendrecv, `aufilt_setup` does not set them up again), so after a hold only the
    packets tell what the phone receives."""

    def __init__(self, path: Path, ports: tuple[int, int]) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            ["dumpcap", "-q", "-P", "-i", "lo", "-f", f"udp dst portrange {ports[0]}-{ports[1]}", "-w", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 5
        while not (path.exists() and path.stat().st_size >= 24):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"dumpcap could not capture on lo (root or CAP_NET_RAW needed): {err}")
            time.sleep(0.05)
        time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def packets(self) -> list[tuple[float, int, bytes]]:
        """(arrival time, RTP payload type, payload) of each RTP packet captured."""
        return [(when, pt, payload) for when, pt, _seq, _ts, _ssrc, payload in self.rtp()]

    def rtp(self) -> list[tuple[float, int, int, int, int, bytes]]:
        """(arrival time, payload type, sequence, timestamp, SSRC, payload) of each RTP packet."""
        return [packet for _source, packet in self.rtp_with_sources()]

    def rtp_with_sources(self) -> list[tuple[tuple[str, int], tuple[float, int, int, int, int, bytes]]]:
        """Each RTP packet as in `rtp()`, with the (address, port) it came from."""
        data = self.path.read_bytes()
        if len(data) < 24:
            return []
        magic = data[:4]
        endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        linktype = struct.unpack(endian + "I", data[20:24])[0]
        offset = 24
        out: list[tuple[tuple[str, int], tuple[float, int, int, int, int, bytes]]] = []
        while offset + 16 <= len(data):
            sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[offset:offset + 16])
            frame = data[offset + 16:offset + 16 + incl]
            offset += 16 + incl
            when = sec + frac / (1e9 if nano else 1e6)
            ip = frame[14:] if linktype == 1 else frame[16:] if linktype == 113 else frame[4:] if linktype == 0 else frame
            if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            udp = ip[(ip[0] & 0x0F) * 4:]
            rtp = udp[8:]
            if len(rtp) < 12 or rtp[0] >> 6 != 2:
                continue
            start = 12 + 4 * (rtp[0] & 0x0F)
            if rtp[0] & 0x10 and len(rtp) >= start + 4:
                start += 4 + 4 * struct.unpack("!H", rtp[start + 2:start + 4])[0]
            payload_type = rtp[1] & 0x7F
            if payload_type >= 72 and payload_type <= 76:  # RTCP sent to the RTP port (rtcp-mux)
                continue
            seq, ts, ssrc = struct.unpack("!HII", rtp[2:12])
            source = (".".join(str(b) for b in ip[12:16]), struct.unpack("!H", udp[0:2])[0])
            out.append((source, (when, payload_type, seq, ts, ssrc, rtp[start:])))
        return out


def ulaw_samples(payloads: list[bytes]) -> list[int]:
    """G.711 mu-law (PCMU) to 16-bit samples."""
    out: list[int] = []
    for payload in payloads:
        for byte in payload:
            u = ~byte & 0xFF
            magnitude = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
            out.append((0x84 - magnitude) if u & 0x80 else (magnitude - 0x84))
    return out
