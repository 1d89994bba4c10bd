"""Browser-free webfon clients for tests: the REST API over HTTPS (cookies by hand) and a
SIP UA over WSS (aiohttp WebSocket + our own SIP messages and digest answers), as the
webfon's SIP stack would behave, plus small SIP helpers for UDP phones."""

from __future__ import annotations

import asyncio
import secrets
import ssl
import sys
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "registrar"))

from reg_helpers import Phone, Reply, parse_reply

from vivait_sip.registrar.digest import client_response, parse_challenge

USERS = [
    {"number": "6140", "name": "Ana", "password": "pw-6140", "extension": "5140", "web_pool": "web"},
    {"number": "6141", "name": "Bea", "password": "pw-6141", "web_extension": "7141"},
    {"number": "6142", "name": "Caller", "password": "pw-6142"},
    {"number": "6143", "name": "Dani", "password": "pw-6143", "web_pool": "web"},
]
INSTANCE = '"<urn:uuid:0b8ec7d2-3ad1-4d3e-9b1e-{:012x}>"'


def base_config(**webrtc: Any) -> dict[str, Any]:
    return {
        "registrar": {"users": USERS, "web_pools": [{"name": "web", "members": ["7000-7001"]}]},
        "webrtc": {"grace_s": 1, **webrtc},
    }


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass
class Api:
    """The REST API as the page uses it; the session cookie kept by hand (it is Secure)."""

    port: int
    cookie: str | None = None
    origin: str | None = None

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        out = {"Origin": self.origin or self.base}
        if self.cookie:
            out["Cookie"] = f"vivait_webfon={self.cookie}"
        out.update(extra or {})
        return out

    async def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http, http.request(
            method, self.base + path, json=body, headers=self.headers(headers), ssl=tls_context()
        ) as resp:
            data = await resp.json(content_type=None) if resp.content_type == "application/json" else await resp.text()
            for value in resp.headers.getall("Set-Cookie", []):
                jar: SimpleCookie = SimpleCookie()
                jar.load(value)
                if "vivait_webfon" in jar:
                    morsel = jar["vivait_webfon"]
                    self.cookie = morsel.value or None
            return resp.status, dict(resp.headers), data

    async def login(self, user: str, password: str) -> dict[str, Any]:
        status, _, data = await self.call("POST", "/api/login", {"user": user, "password": password})
        assert status == 200, data
        return data  # type: ignore[no-any-return]


def sip_response(request: bytes, status: int, reason: str, *, to_tag: str | None = None, body: str = "",
                 extra: list[tuple[str, str]] | None = None) -> bytes:
    """A response to `request` (its Vias, From, To, Call-ID, CSeq)."""
    head = request.split(b"\r\n\r\n", 1)[0].decode()
    lines = [f"SIP/2.0 {status} {reason}"]
    for line in head.split("\r\n")[1:]:
        name = line.split(":", 1)[0].strip().lower()
        if name in ("via", "v", "from", "f", "call-id", "i", "cseq"):
            lines.append(line)
        elif name in ("to", "t"):
            lines.append(line if ";tag=" in line or to_tag is None else f"{line};tag={to_tag}")
    lines += [f"{k}: {v}" for k, v in extra or []]
    if body:
        lines.append("Content-Type: application/sdp")
    lines += [f"Content-Length: {len(body.encode())}", "", body]
    return "\r\n".join(lines).encode()


def method_of(data: bytes) -> str | None:
    first = data.split(b" ", 1)[0].decode(errors="replace")
    return None if first.startswith("SIP/") else first


@dataclass
class WsPhone:
    """A webfon's SIP stack over WSS: registers its web extension (RFC 5626 outbound, as
    SIP.js does), collects the requests sent to it."""

    port: int
    cookie: str | None = None
    origin: str | None = None
    ws: aiohttp.ClientWebSocketResponse | None = None
    http: aiohttp.ClientSession | None = None
    incoming: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    responses: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    call_id: str = field(default_factory=lambda: secrets.token_hex(8))
    cseq: int = 0
    _reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        headers = {"Origin": self.origin or f"https://127.0.0.1:{self.port}"}
        if self.cookie:
            headers["Cookie"] = f"vivait_webfon={self.cookie}"
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self.ws = await self.http.ws_connect(
            f"https://127.0.0.1:{self.port}/sip", protocols=("sip",), ssl=tls_context(), headers=headers
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = msg.data.encode()
            (self.responses if data.startswith(b"SIP/2.0") else self.incoming).put_nowait(data)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self.http is not None:
            await self.http.close()

    async def send(self, data: bytes) -> None:
        assert self.ws is not None
        await self.ws.send_str(data.decode())

    async def final(self, timeout: float = 5.0) -> Reply:
        while True:
            raw = await asyncio.wait_for(self.responses.get(), timeout)
            if not raw.startswith(b"SIP/2.0 1"):
                return parse_reply(raw)

    def _register(self, ext: str, expires: int, auth: str | None) -> bytes:
        self.cseq += 1
        lines = [
            "REGISTER sip:127.0.0.1 SIP/2.0",
            f"Via: SIP/2.0/WSS k3l9df7jal.invalid;branch=z9hG4bK{secrets.token_hex(6)}",
            "Max-Forwards: 70",
            f"From: <sip:{ext}@127.0.0.1>;tag=wf{self.call_id[:6]}",
            f"To: <sip:{ext}@127.0.0.1>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:wf{ext}@k3l9df7jal.invalid;transport=ws;ob>;+sip.instance={INSTANCE.format(int(ext))};reg-id=1",
            f"Expires: {expires}",
            "Supported: outbound, path",
        ]
        if auth:
            lines.append(f"Authorization: {auth}")
        lines += ["Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()

    async def register(self, ext: str, password: str, *, aor: str | None = None, expires: int = 300) -> Reply:
        """REGISTER `aor` (default: the extension) with digest username `ext`."""
        target = aor or ext
        await self.send(self._register(target, expires, None))
        reply = await self.final()
        if reply.status != 401:
            return reply
        challenge = parse_challenge(reply.get_all("WWW-Authenticate")[0])
        auth = client_response(challenge, "REGISTER", "sip:127.0.0.1", ext, password)
        await self.send(self._register(target, expires, auth))
        return await self.final()

    async def next_request(self, method: str, timeout: float = 5.0) -> bytes:
        while True:
            raw = await asyncio.wait_for(self.incoming.get(), timeout)
            if method_of(raw) == method:
                return raw
__all__ = ["Api", "Phone", "Reply", "WsPhone", "base_config", "method_of", "parse_reply", "sip_response"]
