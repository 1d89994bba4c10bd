"""Anchored calls through a running server with real rtpengine as the media backend
(1 and 2 workers): a trunk call on a rule with `"media": "anchor"` reaches the
registered phone with SDP pointing at rtpengine, the caller's 200 too, RTP flows both
ways through rtpengine, the session is deleted at BYE; a call on another rule passes
untouched.  `ctl media` and /metrics show it.  A config that needs the built-in backend,
which is not there yet, stops `serve` with a sentence."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server, loopback_args
from registrar.reg_helpers import Phone
from rtpengine_proc import Rtpengine

from vivait_sip.sip.message import Request, Response, make_response, parse_message

pytestmark = pytest.mark.timeout(120)

GATEWAY = "127.0.0.5"  # the trunk's address (its network is trusted)
PHONE = "127.0.0.3"


def config(workers: int, daemon: str) -> dict[str, object]:
    return {
        "sip": {"workers": workers},
        "registrar": {"algorithms": ["MD5"], "users": [{"number": "6141", "password": "pw-6141"}]},
        "b2bua": {
            "trunks": [{"name": "gw", "host": GATEWAY, "port": 5999, "networks": [f"{GATEWAY}/32"], "options_interval_s": 0}],
            "dialplan": [
                {"name": "anchored", "media": "anchor", "match": {"number": {"exact": "6141"}}, "action": {"type": "user"}},
                {"name": "direct", "match": {"number": {"exact": "99"}}, "action": {"type": "user", "user": "6141"}},
            ],
        },
        "media": {"backend": "rtpengine", "rtpengine": {"daemons": [daemon], "ping_interval_s": 1}},
    }


@pytest.fixture(scope="module")
def daemon() -> Iterator[Rtpengine]:
    proc = asyncio.run(Rtpengine().start())
    yield proc
    proc.stop()


@pytest.fixture(params=[1, 2], ids=["1worker", "2workers"])
def server(request: pytest.FixtureRequest, tmp_path: Path, daemon: Rtpengine) -> Iterator[Server]:
    srv = Server(tmp_path, config(int(request.param), daemon.address), loopback_args(http=False, tls=False)).start()
    yield srv
    srv.stop()


def ctl(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vivait_sip", *server.ctl_args, *args],
                          capture_output=True, text=True, timeout=30, check=False)


def media_status(server: Server) -> dict[str, object]:
    out = ctl(server, "media", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def sdp(host: str, port: int, user: str) -> bytes:
    return (f"v=0\r\no={user} 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=sendrecv\r\n").encode()


def media_of(body: bytes) -> tuple[str, int]:
    text = body.decode()
    host = re.search(r"^c=IN IP4 (\S+)", text, re.M)
    port = re.search(r"^m=audio (\d+)", text, re.M)
    assert host and port, text
    return host.group(1), int(port.group(1))


def udp(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(3)
    return sock


def receive(sock: socket.socket, want: str) -> tuple[Request | Response, tuple[str, int]]:
    """The next SIP message that is `want` (a method, or a status like "200"), skipping
    provisionals and retransmissions of anything else."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        data, addr = sock.recvfrom(65535)
        msg = parse_message(data)
        if isinstance(msg, Request) and msg.method == want:
            return msg, addr
        if isinstance(msg, Response) and str(msg.status) == want:
            return msg, addr
    raise AssertionError(f"no {want}")


class Gateway:
    """The trunk's side of one call, speaking raw SIP from GATEWAY."""

    def __init__(self, server_port: int) -> None:
        self.server = ("127.0.0.1", server_port)
        self.sock = udp(GATEWAY)
        self.rtp = udp(GATEWAY)
        self.call_id = secrets.token_hex(8) + "@gw"
        self.tag = "gw" + secrets.token_hex(4)
        self.to_tag = ""
        self.remote_contact = ""

    def request(self, method: str, uri: str, cseq: int, body: bytes = b"") -> bytes:
        port = self.sock.getsockname()[1]
        to = "<sip:6141@127.0.0.1>" + (f";tag={self.to_tag}" if self.to_tag else "")
        lines = [
            f"{method} {uri} SIP/2.0", f"Via: SIP/2.0/UDP {GATEWAY}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70", f"From: <sip:913000000@{GATEWAY}>;tag={self.tag}", f"To: {to}",
            f"Call-ID: {self.call_id}", f"CSeq: {cseq} {method}", f"Contact: <sip:gw@{GATEWAY}:{port}>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines += [f"Content-Length: {len(body)}", "", ""]
        return "\r\n".join(lines).encode() + body

    def invite(self, number: str) -> None:
        body = sdp(GATEWAY, self.rtp.getsockname()[1], "gw")
        self.sock.sendto(self.request("INVITE", f"sip:{number}@127.0.0.1:{self.server[1]}", 1, body), self.server)

    def answered(self) -> Response:
        ok, _ = receive(self.sock, "200")
        assert isinstance(ok, Response)
        self.to_tag = ok.to.tag or ""
        contact = ok.contacts[0].uri if ok.contacts else None
        self.remote_contact = str(contact)
        self.sock.sendto(self.request("ACK", self.remote_contact, 1), self.server)
        return ok

    def bye(self) -> None:
        self.sock.sendto(self.request("BYE", self.remote_contact, 2), self.server)
        receive(self.sock, "200")

    def close(self) -> None:
        self.sock.close()
        self.rtp.close()


class Callee:
    """The registered phone: answers one INVITE with its SDP, then a BYE."""

    def __init__(self, server_port: int) -> None:
        self.phone = Phone(server_port, "6141", "pw-6141", source=PHONE, algorithm="MD5")
        assert self.phone.register(600).status == 200
        assert self.phone.udp is not None
        self.sock = self.phone.udp.sock
        self.rtp = udp(PHONE)

    def answer(self) -> Request:
        invite, addr = receive(self.sock, "INVITE")
        assert isinstance(invite, Request)
        port = self.sock.getsockname()[1]
        body = sdp(PHONE, self.rtp.getsockname()[1], "phone")
        ok = make_response(invite, 200, to_tag="ph" + secrets.token_hex(4), body=body, headers=[
            ("Contact", f"<sip:6141@{PHONE}:{port}>"), ("Content-Type", "application/sdp")])
        self.sock.sendto(ok.to_bytes(), addr)
        receive(self.sock, "ACK")
        return invite

    def hang_up_answered(self) -> None:
        bye, addr = receive(self.sock, "BYE")
        assert isinstance(bye, Request)
        self.sock.sendto(make_response(bye, 200).to_bytes(), addr)

    def close(self) -> None:
        self.phone.close()
        self.rtp.close()


def rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + b"\xd5" * 160


def test_an_anchored_call_through_the_server_and_rtpengine(server: Server, daemon: Rtpengine) -> None:
    port = server.sip_port("udp")
    callee = Callee(port)
    gateway = Gateway(port)
    gateway.invite("6141")
    invite = callee.answer()
    to_phone_side = media_of(invite.body)  # where the phone sends: rtpengine, not the gateway
    assert to_phone_side[0] == "127.0.0.1" and daemon.port_min <= to_phone_side[1] <= daemon.port_max
    assert GATEWAY.encode() not in invite.body
    ok = gateway.answered()
    to_gateway_side = media_of(ok.body)
    assert to_gateway_side[0] == "127.0.0.1" and daemon.port_min <= to_gateway_side[1] <= daemon.port_max
    assert PHONE.encode() not in ok.body
    for seq in range(5):  # RTP both ways, through rtpengine
        gateway.rtp.sendto(rtp(seq, 1), to_gateway_side)
        data, source = callee.rtp.recvfrom(2048)
        assert data == rtp(seq, 1) and source == to_phone_side
        callee.rtp.sendto(rtp(seq, 2), to_phone_side)
        data, source = gateway.rtp.recvfrom(2048)
        assert data == rtp(seq, 2) and source == to_gateway_side
    status = media_status(server)
    assert status["sessions"] == 1 and status["anchored_calls"] == 1 and status["healthy"] is True
    text = ctl(server, "media").stdout
    assert "backend rtpengine: healthy" in text and f"{daemon.address}  up" in text, text
    gateway.bye()
    callee.hang_up_answered()
    for _ in range(50):
        status = media_status(server)
        if status["sessions"] == 0:
            break
        time.sleep(0.1)
    assert status["sessions"] == 0 and status["anchored"] == 1 and status["deletes"] == 1
    gateway.rtp.sendto(rtp(9, 1), to_gateway_side)
    callee.rtp.settimeout(0.3)
    with pytest.raises(TimeoutError):
        callee.rtp.recvfrom(2048)  # rtpengine relays nothing after the delete

    # A call on a rule without anchoring passes untouched.
    direct = Gateway(port)
    direct.invite("99")
    invite = callee.answer()
    assert media_of(invite.body) == (GATEWAY, direct.rtp.getsockname()[1])
    ok = direct.answered()
    assert media_of(ok.body) == (PHONE, callee.rtp.getsockname()[1])
    direct.bye()
    callee.hang_up_answered()
    status = media_status(server)
    assert status["passed"] == 1 and status["anchored"] == 1
    metrics = subprocess.run(["curl", "-s", "-H", f"Authorization: Bearer {server.admin_token}",
                              f"http://{server.admin}/metrics"], capture_output=True, text=True, timeout=10, check=False).stdout
    assert f'vivait_media_daemon_up{{daemon="{daemon.address}"}} 1' in metrics
    assert 'vivait_media_calls_total{decision="anchored"} 1' in metrics
    assert 'vivait_media_calls_total{decision="passed"} 1' in metrics
    for party in (gateway, direct, callee):
        party.close()


def test_a_needed_builtin_backend_that_cannot_start_stops_serve(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    # Bound to every address with nothing to write into the SDP: the media workers cannot start.
    path.write_text(json.dumps({"media": {"default": "anchor", "bind": "0.0.0.0"}}))
    out = subprocess.run([sys.executable, "-m", "vivait_sip", "serve", "--config", str(path), "--data-dir", str(tmp_path / "d"),
                          *loopback_args(http=False, tls=False)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "error: media: backend builtin: media.advertise is needed" in out.stderr, out.stderr
    assert "ready" not in out.stdout
