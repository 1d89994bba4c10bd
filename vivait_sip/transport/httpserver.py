"""The HTTP(S) and admin servers: aiohttp applications behind our own accept loop.

aiohttp's `TCPSite` accepts everything, lets a TLS handshake run 60 s and a request head
trickle in forever.  Here `accept.Acceptor` admits each connection first (caps per
source, descriptor budget, PROXY header from trusted proxies, TLS handshake timeout) and
`_HttpConnection` sits between the transport and aiohttp's protocol to time the request
head: from the first byte of a request (or the connection's start) to the moment aiohttp
hands the parsed request to the application, at most `header_timeout_s`; a slowloris
connection is closed then.  Behind a trusted proxy that sends no PROXY header, the
right-most untrusted `X-Forwarded-For` address is the client, capped per address by
counting its requests and WebSockets in flight.

`request[CLIENT_KEY]` is the client as caps, bans and SIP (`received=`) see it.
The `Server: Python/… aiohttp/…` banner is not sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web, web_response

from ..logs import throttle
from .accept import (
    Acceptor,
    AcceptPolicy,
    ConnectionGate,
    Network,
    Slot,
    bind_stream_sockets,
    client_ip,
    in_networks,
)

log = logging.getLogger("vivait_sip.transport")

CLIENT_KEY = "vivait_sip.client"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp adds `Server: Python/3.x aiohttp/x.y` to every response; `drop_server_header`
# removes it from whatever the application answers, and this empties it on the few
# answers aiohttp makes before any application sees the request (a malformed request line).
web_response.SERVER_SOFTWARE = ""


async def drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: no `Server` header at all."""
    response.headers.popall("Server", None)


@dataclass(frozen=True)
class HttpLimits:
    max_connections_per_ip: int = 64
    tls_handshake_timeout_s: float = 5.0
    header_timeout_s: float = 5.0
    keepalive_timeout_s: float = 15.0
    trusted_proxies: tuple[Network, ...] = ()


def forwarded_client(values: list[str], trusted: tuple[Network, ...]) -> str | None:
    """The client an `X-Forwarded-For` chain names: the right-most address that is not one
    of our trusted proxies (the left-most entries are whatever the client claimed)."""
    hops = [part.strip() for value in values for part in value.split(",") if part.strip()]
    for hop in reversed(hops):
        host = hop[1:hop.index("]")] if hop.startswith("[") and "]" in hop else hop
        if host.count(":") == 1:  # 192.0.2.1:1234
            host = host.split(":")[0]
        if not _is_ip(host):
            return None  # garbage: do not guess
        if not in_networks(host, trusted):
            return client_ip(host)
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class _ClientView:
    """The transport as aiohttp sees it: `peername` is the client a PROXY header named."""

    def __init__(self, transport: asyncio.Transport, client: tuple[str, int]) -> None:
        self._transport = transport
        self._client = client

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._client
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _HttpConnection(asyncio.Protocol):
    """Between one connection's transport and aiohttp's RequestHandler: times request heads."""

    def __init__(self, server: HttpServer, slot: Slot, client: tuple[str, int], trusted_direct: bool) -> None:
        self.server = server
        self.slot = slot
        self.client = client
        self.trusted_direct = trusted_direct
        assert server.runner is not None and server.runner.server is not None
        self.handler = server.runner.server()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request is in the application (or a WebSocket is open)
        self.data_while_busy = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        view: Any = transport
        if not peer or (client_ip(peer[0]), peer[1]) != self.client:
            view = _ClientView(transport, self.client)  # type: ignore[arg-type]
        self.server.connections[self.handler] = self
        self._arm()  # the first request head is due from the start
        self.handler.connection_made(view)

    def data_received(self, data: bytes) -> None:
        if self.busy:
            self.data_while_busy = True
        elif self.timer is None:
            self._arm()
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        self.handler.eof_received()
        return None

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.server.connections.pop(self.handler, None)
        self.slot.release()
        self.handler.connection_lost(exc)

    # ---- request heads ----------------------------------------------------------------
    def request_started(self) -> None:
        self.busy = True
        self.data_while_busy = False
        self._disarm()

    def request_finished(self) -> None:
        self.busy = False
        if self.data_while_busy:
            self._arm()  # a pipelined head may be incomplete

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.server.limits.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        self.server.gate.counters["http_header_timeouts"] += 1
        throttle.log(
            log, logging.INFO, "http_header_timeout",
            "event=http_header_timeout listener=%r peer=%s seconds=%s",
            self.server.label, self.client[0], self.server.limits.header_timeout_s,
        )
        if self.transport is not None:
            self.transport.abort()


class HttpServer:
    """One aiohttp application served through `Acceptor`s."""

    def __init__(
        self,
        app: web.Application,
        *,
        service: str,
        gate: ConnectionGate,
        limits: HttpLimits,
        ssl_context: ssl.SSLContext | None = None,
        privileged: bool = False,
    ) -> None:
        self.app = app
        self.service = service
        self.gate = gate
        self.limits = limits
        self.ssl_context = ssl_context
        self.privileged = privileged
        self.runner: web.AppRunner | None = None
        self.acceptors: list[Acceptor] = []
        self.connections: dict[object, _HttpConnection] = {}
        self.label = service
        self._forwarded: dict[str, int] = {}  # X-Forwarded-For clients: requests in flight
        app.middlewares.insert(0, self._middleware)
        app.on_response_prepare.append(drop_server_header)

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (useful with 0).  OSError when the address is taken."""
        limits = self.limits
        self.runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, keepalive_timeout=limits.keepalive_timeout_s
        )
        await self.runner.setup()
        try:
            sockets = bind_stream_sockets(host, port)
        except OSError:
            await self.runner.cleanup()
            raise
        real_port = int(sockets[0].getsockname()[1])
        self.label = f"{self.service} {host}:{real_port}"
        policy = AcceptPolicy(
            service=self.service,
            label=self.label,
            max_per_ip=limits.max_connections_per_ip,
            ssl=self.ssl_context,
            handshake_timeout_s=limits.tls_handshake_timeout_s,
            privileged=self.privileged,
            inspect_first_bytes=True,
            first_bytes_timeout_s=limits.tls_handshake_timeout_s if self.ssl_context else limits.header_timeout_s,
            trusted_proxies=limits.trusted_proxies,
        )
        for sock in sockets:
            acceptor = Acceptor(sock, policy, self.gate, self._protocol)
            acceptor.start()
            self.acceptors.append(acceptor)
        return real_port

    def _protocol(self, slot: Slot, client: tuple[str, int], trusted_direct: bool) -> asyncio.Protocol:
        return _HttpConnection(self, slot, client, trusted_direct)

    async def close(self) -> None:
        for acceptor in self.acceptors:
            await acceptor.close()
        if self.runner is not None:
            await self.runner.cleanup()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = self.connections.get(request.protocol)
        if conn is None:  # not one of ours (a test client)
            return await handler(request)
        conn.request_started()
        counted: str | None = None
        try:
            client = conn.client
            if conn.trusted_direct:
                forwarded = forwarded_client(request.headers.getall("X-Forwarded-For", []), self.limits.trusted_proxies)
                if forwarded is not None:
                    client = (forwarded, client[1])
                    if self._forwarded.get(forwarded, 0) >= self.limits.max_connections_per_ip:
                        self.gate.refuse(self.label, forwarded, "per_ip_limit")
                        return web.json_response({"error": "too many connections from your address"}, status=429)
                    self._forwarded[forwarded] = self._forwarded.get(forwarded, 0) + 1
                    counted = forwarded
            request[CLIENT_KEY] = client
            return await handler(request)
        finally:
            if counted is not None:
                left = self._forwarded[counted] - 1
                if left:
                    self._forwarded[counted] = left
                else:
                    del self._forwarded[counted]
            conn.request_finished()
