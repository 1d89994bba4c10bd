"""Real phones for B2BUA tests: headless baresip instances driven over ctrl_tcp, each
sending its own tone (a WAV made here) and recording what it receives (the sndfile
filter), with a Goertzel detector to tell which tone a recording holds, and when.

One `Baresip` is one registered user: `dial`, `accept`, `hangup`, `hold`, `resume`,
`transfer`, events (`wait_event`), and its recordings (`received()`).  Everything is on
127.0.0.1 with OS-chosen ports; every wait is bounded and baresip runs with `-t`.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import subprocess
import time
import wave
from pathlib import Path

from harness import free_port, free_ports

RATE = 8000  # PCMU/PCMA: aufile needs the codec's rate, mono

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


def write_tone(path: Path, hz: float, seconds: float) -> Path:
    """A -6 dBFS sine, 16-bit mono at 8 kHz."""
    frames = bytearray()
    amplitude = 0.5 * 32767
    for n in range(int(RATE * seconds)):
        frames += struct.pack("<h", int(amplitude * math.sin(2 * math.pi * hz * n / RATE)))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(bytes(frames))
    return path


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


class Baresip:
    """One headless baresip (see the module docstring)."""

    def __init__(self, workdir: Path, name: str, tone_hz: float, *, seconds: float = 90, quit_after: int = 110,
                 sip_trace: bool = True) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.tone_hz = tone_hz
        tone = write_tone(self.dir / "tone.wav", tone_hz, seconds)
        self.sip_port = free_ports(2)  # and the next for TLS
        self.ctrl_port = free_port()
        rtp = free_ports(22, even=True)
        self.rtp_ports = (rtp, rtp + 20)
        (self.dir / "config").write_text(CONFIG.format(
            sip_port=self.sip_port, name=name, tone=tone, rtp=rtp, rtp_end=rtp + 20, ctrl_port=self.ctrl_port,
            snd_path=self.dir,
        ))
        (self.dir / "accounts").write_text("")
        (self.dir / "contacts").write_text("")
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
                    raise
                time.sleep(0.1)
        self.buf = b""
        self.events: list[dict[str, object]] = []
        self.seen: list[dict[str, object]] = []  # every event, for failure messages
        self.token = 0

    # ---- ctrl_tcp --------------------------------------------------------------------------
    def _read(self, timeout: float) -> dict[str, object] | None:
        deadline = time.monotonic() + timeout
        while True:
            head, colon, rest = self.buf.partition(b":")
            if colon and head.isdigit() and len(rest) > int(head):
                size = int(head)
                msg, self.buf = rest[:size], rest[size + 1:]
                return dict(json.loads(msg.decode("utf-8", "replace")))
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
            self.buf += chunk

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict[str, object]:
        self.token += 1
        token = str(self.token)
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self.sock.sendall(str(len(body)).encode() + b":" + body + b",")
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self._read(left)
            if msg is None:
                break
            if msg.get("response") and msg.get("token") == token:
                return msg
            if msg.get("event"):
                self.events.append(msg)
                self.seen.append(msg)
        raise AssertionError(f"{self.name}: no answer to {command!r}")

    def wait_event(self, kind: str, timeout: float = 10.0) -> dict[str, object]:
        for i, event in enumerate(self.events):
            if event.get("type") == kind:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self._read(left)
            if msg is None:
                continue
            if msg.get("event"):
                self.seen.append(msg)
                if msg.get("type") == kind:
                    return msg
                self.events.append(msg)
        raise AssertionError(f"{self.name}: no {kind} within {timeout}s; seen {[e.get('type') for e in self.seen]}")

    def drain(self, seconds: float = 0.2) -> list[dict[str, object]]:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self._read(left)
            if msg is not None and msg.get("event"):
                self.seen.append(msg)
                self.events.append(msg)
        out, self.events = self.events, []
        return out

    # ---- a user -------------------------------------------------------------------------------
    def register(self, user: str, password: str, server_port: int, *, auto_answer: bool = True) -> None:
        line = f"<sip:{user}@127.0.0.1:{server_port}>;auth_pass={password};regint=60"
        if auto_answer:
            line += ";answermode=auto"
        self.command("uanew", line)
        self.wait_event("REGISTER_OK", 10)

    def received(self) -> list[Path]:
        """What it recorded from the other side, one WAV per audio stream, oldest first."""
        return sorted(self.dir.glob("dump-*-dec.wav"))

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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


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
