"""baresip 1.0 as a headless test phone, driven over ctrl_tcp.

One instance per phone: its own config directory, SIP port, RTP ports and control port.
It sends a tone from a WAV (aufile: 8 kHz mono for G.711) and records what it receives
with the sndfile filter (`DIR/dump-<time>-dec.wav`); the SIP trace (`-s`) goes to its log,
so a test can read the messages the phone got.  ctrl_tcp speaks netstring-framed JSON:
commands answered by token, events (`CALL_INCOMING`, `CALL_RINGING`, `CALL_ESTABLISHED`,
`CALL_CLOSED`, `REGISTER_OK`...) sent only to connections open at that moment, so the
connection opens with the process and stays open.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from audio import write_tone
from harness import free_port, free_ports

LIFETIME_S = 180  # baresip quits by itself after this (-t): a safety cap

CONFIG = """\
poll_method epoll
sip_listen 127.0.0.1:{sip_port}
net_interface 127.0.0.1
call_local_timeout 120
call_max_calls 4
audio_player aubridge,play_{name}
audio_alert aubridge,play_{name}
audio_source aufile,{tone}
ausrc_format s16
auplay_format s16
auenc_format s16
audec_format s16
audio_buffer 20-160
rtp_ports {rtp}-{rtp_end}
rtcp_mux no
jitter_buffer_delay 5-10
module_path /usr/lib/baresip/modules
module g711.so
module sndfile.so
module aubridge.so
module aufile.so
module_tmp account.so
module_app menu.so
module_app ctrl_tcp.so
ctrl_tcp_listen 127.0.0.1:{ctrl_port}
snd_path {dir}
statmode_default off
ringback_disabled yes
"""

Event = dict[str, Any]


class Baresip:
    """One phone.  `account` is baresip's account line without the answer mode, e.g.
    `<sip:6140@127.0.0.1:5060>;auth_pass=pw;regint=60`."""

    def __init__(self, workdir: Path, name: str, tone_hz: float, *, account: str, auto_answer: bool = True) -> None:
        self.name = name
        self.dir = workdir / f"baresip-{name}"
        self.dir.mkdir(parents=True)
        self.sip_port = free_ports(2)  # and the next for TLS
        self.ctrl_port = free_port()
        rtp = free_ports(22, even=True)
        tone = write_tone(self.dir / f"tone{int(tone_hz)}.wav", tone_hz, 60)
        (self.dir / "config").write_text(CONFIG.format(
            sip_port=self.sip_port, name=name, tone=tone, rtp=rtp, rtp_end=rtp + 20, ctrl_port=self.ctrl_port, dir=self.dir,
        ))
        (self.dir / "accounts").write_text("")  # added over ctrl_tcp: REGISTER_OK is not replayed
        (self.dir / "contacts").write_text("")  # else baresip writes one naming public URIs
        self.log_path = self.dir / "out.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            ["baresip", "-f", str(self.dir), "-s", "-t", str(LIFETIME_S)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"baresip {name} did not start:\n{self.log()}") from None
                time.sleep(0.05)
        self._buf = b""
        self._token = 0
        self.events: list[Event] = []  # every event seen, in order
        self._unread: list[Event] = []  # not yet returned by wait_event
        mode = "auto" if auto_answer else "manual"
        reply = self.command("uanew", f"{account};answermode={mode}")
        assert reply.get("ok"), reply

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

    def settle(self, seconds: float) -> None:
        """Read events for a while (so `events` is current)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._read(left)

    def types(self) -> list[str]:
        return [str(e.get("type")) for e in self.events]

    # ---- what it does ------------------------------------------------------------------------
    def register(self, timeout: float = 10.0) -> None:
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
        """What it received, one WAV per call (oldest first)."""
        return sorted(self.dir.glob("dump-*-dec.wav"))

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def sip_received(self, start: str) -> list[str]:
        """Messages of the SIP trace (`-s`) the phone received that start with `start`
        (`"CANCEL"`, `"SIP/2.0 487"`), each as text, headers and all.  The trace prints
        `#`, then `UDP src -> dst`, then the message, in colour codes."""
        found = []
        for block in self.log().split("\x1b[36;1m#\n")[1:]:
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
