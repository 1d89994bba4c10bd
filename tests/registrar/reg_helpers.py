"""A small scripted SIP client for the registrar tests (UDP or TCP, our own digest answers)."""

from __future__ import annotations

import itertools
import json
import re
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import Server, StreamClient, UdpClient, loopback_args

from vivait_sip.registrar.digest import DigestChallenge, client_response, parse_challenge

_counter = itertools.count(1)


@dataclass
class Reply:
    """A parsed response: status, reason and headers in order (names as sent)."""

    raw: bytes
    status: int
    reason: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def challenges(self) -> list[DigestChallenge]:
        name = "Proxy-Authenticate" if self.status == 407 else "WWW-Authenticate"
        return [parse_challenge(v) for v in self.get_all(name)]

    def shape(self) -> tuple[int, list[str], list[str]]:
        """Status, header names in order, challenges with nonces, tags and branches masked."""
        masked = []
        for name, value in self.headers:
            if name.lower() in ("www-authenticate", "proxy-authenticate"):
                masked.append(re.sub(r'nonce="[^"]*"', 'nonce="*"', value))
        return self.status, [k for k, _ in self.headers], masked


def parse_reply(data: bytes) -> Reply:
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")
    _, status, reason = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return Reply(data, int(status), reason, headers)


@dataclass
class Phone:
    """One UA: a socket, a Call-ID and CSeq of its own, credentials it answers challenges with."""

    port: int  # server port
    user: str
    password: str = ""
    transport: str = "udp"
    source: str = "127.0.0.1"
    domain: str = "127.0.0.1"
    auth_user: str | None = None
    algorithm: str = "SHA-256"
    call_id: str = field(default_factory=lambda: secrets.token_hex(8))
    cseq: int = 0
    nc: int = 0
    challenge: DigestChallenge | None = None
    sock: socket.socket | None = None  # a UDP socket to use (bound to `source`), e.g. in a netns
    server_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.transport == "udp":
            self.udp: UdpClient | None = UdpClient(self.source, self.sock)
            self.tcp: StreamClient | None = None
        else:
            self.udp = None
            self.tcp = StreamClient(self.port)

    @property
    def local_port(self) -> int:
        return self.udp.port if self.udp is not None else self.tcp.port  # type: ignore[union-attr]

    def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()

    def contact(self, suffix: str = "") -> str:
        return f"<sip:{self.user}{suffix}@{self.source}:{self.local_port};transport={self.transport}>"

    def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        *,
        ruri: str | None = None,
        auth: str | None = None,
        vias: int = 1,
    ) -> bytes:
        self.cseq += 1
        branch = f"z9hG4bK{secrets.token_hex(6)}{next(_counter)}"
        lines = [f"{method} {ruri or f'sip:{self.domain}'} SIP/2.0"]
        for _ in range(vias - 1):
            lines.append(f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{secrets.token_hex(6)}")
        lines[1:1] = [f"Via: SIP/2.0/{self.transport.upper()} {self.source}:{self.local_port};branch={branch};rport"]
        lines += [
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{self.domain}>;tag={self.call_id[:6]}",
            f"To: <{target}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} {method}",
        ]
        lines += [f"{k}: {v}" for k, v in headers]
        if auth:
            lines.append(auth)
        lines += ["Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()

    def send(self, data: bytes, timeout: float = 3.0) -> Reply:
        if self.udp is not None:
            self.udp.send(data, self.port, self.server_host)
            raw = self.udp.recv_final(timeout)
        else:
            assert self.tcp is not None
            self.tcp.send(data)
            raw = self.tcp.recv(timeout)
            while raw is not None and raw.startswith(b"SIP/2.0 1"):
                raw = self.tcp.recv(timeout)
        assert raw is not None, "no response"
        return parse_reply(raw)

    def authorization(self, method: str, uri: str, reply: Reply, password: str | None = None) -> str:
        """Answer the challenge of `reply` (our preferred algorithm) with a fresh nc."""
        wanted = [c for c in reply.challenges() if c.algorithm == self.algorithm]
        self.challenge = wanted[0]
        self.nc = 0
        return self.reauthorization(method, uri, password)

    def reauthorization(self, method: str, uri: str, password: str | None = None, nc: int | None = None) -> str:
        assert self.challenge is not None
        self.nc = self.nc + 1 if nc is None else nc
        name = "Proxy-Authorization" if method != "REGISTER" else "Authorization"
        value = client_response(
            self.challenge,
            method,
            uri,
            self.auth_user or self.user,
            self.password if password is None else password,
            nc=self.nc,
        )
        return f"{name}: {value}"

    def register(
        self,
        expires: int | None = 600,
        *,
        contacts: list[str] | None = None,
        aor_user: str | None = None,
        extra: list[tuple[str, str]] | None = None,
        password: str | None = None,
        vias: int = 1,
    ) -> Reply:
        """REGISTER, answer the 401 once; returns the final reply."""
        headers = [("Contact", c) for c in (contacts if contacts is not None else [self.contact()])]
        if expires is not None:
            headers.append(("Expires", str(expires)))
        headers += extra or []
        target = f"sip:{aor_user or self.user}@{self.domain}"
        ruri = f"sip:{self.domain}"
        reply = self.send(self.request("REGISTER", target, headers, vias=vias))
        if reply.status != 401:
            return reply
        auth = self.authorization("REGISTER", ruri, reply, password)
        return self.send(self.request("REGISTER", target, headers, auth=auth, vias=vias))

    def invite(self, target_user: str, *, domain: str | None = None, password: str | None = None, method: str = "INVITE") -> Reply:
        """A request to `target_user`, answering one 407; a new Call-ID each time."""
        self.call_id = secrets.token_hex(8)
        target = f"sip:{target_user}@{domain or self.domain}"
        headers = [("Contact", self.contact())]
        reply = self.send(self.request(method, target, headers, ruri=target))
        if reply.status != 407:
            return reply
        auth = self.authorization(method, target, reply, password)
        return self.send(self.request(method, target, headers, ruri=target, auth=auth))


def start_server(tmp: Path, registrar: dict[str, Any], **config: Any) -> Server:
    """A server with no TLS/HTTP listeners (quick start), admin on a free port."""
    body: dict[str, Any] = {"registrar": registrar, **config}
    return Server(tmp, body, loopback_args(http=False, tls=False)).start()


def ctl(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vivait_sip", *server.ctl_args, *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def registrations(server: Server, aor: str | None = None) -> list[dict[str, Any]]:
    out = ctl(server, "registrations", *([aor] if aor else []), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    return list(data["registrations"])
