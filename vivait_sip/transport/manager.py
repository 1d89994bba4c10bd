"""Sockets for every SIP transport behind one `send(data, peer)` / `on_message` pair.

UDP datagrams are handed over as they arrive; TCP, TLS and WebSocket connections are
framed into messages first.  Each connection gets an id so responses and RFC 5626 flows
go back over the connection a request arrived on (RFC 3261 §18.2.2).  Limits: a cap on
connections per source IP and in all, applied when a connection is accepted, before its
TLS handshake (accept.py), a handshake timeout, an idle timeout, a cap on buffered bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, cast

from ..logs import throttle
from ..sip.address import Listener
from ..sip.errors import SipParseError
from ..sip.message import DEFAULT_LIMITS, Limits, StreamFramer
from ..sip.peer import Peer
from .accept import Acceptor, AcceptPolicy, ConnectionGate, Slot, bind_stream_sockets

log = logging.getLogger("vivait_sip.transport")

MessageHandler = Callable[[bytes, Peer], None]
# contract.TraceHook: direction ("in"/"out"), the message, the remote peer, the local address.
TraceHook = Callable[[str, bytes, Peer, tuple[str, int]], None]
_CRLF = b"\r\n"
CLOSE_GRACE_S = 1.0  # after a framing error or EOF: time for answers to what was read


class Connection(Protocol):
    """What the manager needs from a TCP/TLS/WS connection."""

    conn_id: int
    peer: Peer
    local: tuple[str, int]  # our end's address, for traces
    last_activity: float

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass
class TransportStats:
    received: int = 0
    sent: int = 0
    parse_errors: int = 0
    send_errors: int = 0
    connections_refused: int = 0
    by_transport: dict[str, int] = field(default_factory=dict)  # connections accepted/opened


class TransportError(Exception):
    """A message could not be sent (no connection, connect failure)."""


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, manager: TransportManager, listener: Listener) -> None:
        self.manager = manager
        self.listener = listener
        self.transport: asyncio.DatagramTransport | None = None
        self.local = (listener.host, listener.port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.local = _local_address(transport, self.local)

    def datagram_received(self, data: bytes, addr: tuple[str, int] | tuple[str, int, int, int]) -> None:
        manager = self.manager
        manager.stats.received += 1
        if data == _CRLF * 2 or data == _CRLF:
            # RFC 5626 §4.4.1 STUN is not supported; a bare CRLF keep-alive needs no answer.
            return
        peer = Peer("udp", addr[0], addr[1])
        if manager.trace is not None:
            manager.trace("in", data, peer, self.local)
        manager.on_message(data, peer)

    def error_received(self, exc: Exception) -> None:
        log.debug("event=udp_error error=%s", exc)


class _StreamProtocol(asyncio.Protocol):
    """One TCP or TLS connection, accepted or opened by us."""

    def __init__(self, manager: TransportManager, transport_name: str, slot: Slot | None = None) -> None:
        self.manager = manager
        self.transport_name = transport_name
        self.slot = slot  # accepted: its place in the ConnectionGate (admitted already)
        self.conn_id = next(manager._ids)
        self.framer = StreamFramer(manager.limits)
        self.transport: asyncio.Transport | None = None
        self.peer = Peer(transport_name, "", 0, self.conn_id)
        self.local = ("", 0)
        self.last_activity = time.monotonic()
        self.closed = asyncio.get_running_loop().create_future()
        self._closing_soon = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        addr = self.transport.get_extra_info("peername")
        self.peer = Peer(self.transport_name, addr[0], addr[1], self.conn_id)
        self.local = _local_address(transport, self.local)
        if self.slot is None and not self.manager._admit(self):
            self.transport.abort()
            return
        self.manager._register(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        framer = self.framer
        for msg in framer.feed(data):
            if msg == StreamFramer.PING:
                self.write(_CRLF)  # RFC 5626 §3.5.1 pong
                continue
            self.manager.stats.received += 1
            if self.manager.trace is not None:
                self.manager.trace("in", msg, self.peer, self.local)
            self.manager.on_message(msg, self.peer)
        error = framer.error
        if error is not None and not self._closing_soon:
            # RFC 3261 §18.3: a framing error on a stream is unrecoverable.  What was framed
            # before it was handled above; the offending bytes get a stateless answer when
            # they carry enough to route one; the connection closes once those are out.
            self.manager.stats.parse_errors += 1
            throttle.log(log, logging.INFO, "stream_framing_error", "event=stream_framing_error peer=%s reason=%r", self.peer, error.reason)
            self.manager.on_framing_error(error, self.peer, framer.error_head)
            self._close_soon()

    def eof_received(self) -> bool:
        """The peer will send no more: a last header block left without its blank line is
        still answered (over the half-open connection), then we close."""
        last = self.framer.finish()
        if last is not None:
            self.manager.stats.received += 1
            if self.manager.trace is not None:
                self.manager.trace("in", last, self.peer, self.local)
            self.manager.on_message(last, self.peer)
        self._close_soon()
        return self.transport_name != "tls"  # TLS cannot stay half-open

    def _close_soon(self) -> None:
        """Stop reading and close after CLOSE_GRACE_S, so answers to what was already read
        (possibly from another worker) still go out over this connection."""
        self._closing_soon = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(RuntimeError, AttributeError):  # already paused, or cannot pause
            transport.pause_reading()
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self.close)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise TransportError(f"connection {self.conn_id} is closed")
        self.last_activity = time.monotonic()
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.manager._unregister(self)
        if self.slot is not None:
            self.slot.release()
        if not self.closed.done():
            self.closed.set_result(None)


def _local_address(transport: asyncio.BaseTransport, default: tuple[str, int]) -> tuple[str, int]:
    sockname = transport.get_extra_info("sockname")
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return (str(sockname[0]), int(sockname[1]))
    return default


class TransportManager:
    """Owns the listening sockets and live connections; the core sees only bytes and Peers."""

    def __init__(
        self,
        on_message: MessageHandler,
        *,
        limits: Limits = DEFAULT_LIMITS,
        ssl_server: ssl.SSLContext | None = None,
        ssl_client: ssl.SSLContext | None = None,
        max_connections_per_ip: int = 64,
        max_connections: int = 10000,
        idle_timeout_s: float = 300.0,
        udp_receive_buffer_bytes: int | None = None,
        gate: ConnectionGate | None = None,
        tls_handshake_timeout_s: float = 5.0,
    ) -> None:
        self.on_message = on_message
        self.trace: TraceHook | None = None  # set while a trace or HEP export runs
        # A stream that cannot be framed (413, 513, 400): the error, the connection and the
        # start of the offending bytes, for a stateless answer before it closes.
        self.on_framing_error: Callable[[SipParseError, Peer, bytes], None] = lambda exc, peer, head: None
        self.on_connection_lost: Callable[[Peer], None] = lambda peer: None
        # A send that needed a new TCP/TLS connection failed after `send` returned: the
        # token the caller gave (its transaction) comes back so it can fail over at once.
        self.on_send_failed: Callable[[Peer, int, str], None] = lambda peer, token, error: None
        self.limits = limits
        self.ssl_server = ssl_server
        self.ssl_client = ssl_client
        self.max_connections_per_ip = max_connections_per_ip
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.udp_receive_buffer_bytes = udp_receive_buffer_bytes
        self.gate = gate if gate is not None else ConnectionGate()
        self.tls_handshake_timeout_s = tls_handshake_timeout_s
        self.stats = TransportStats()
        self._ids = itertools.count(1)
        self._udp: dict[tuple[str, int], _UdpProtocol] = {}
        self._default_udp: _UdpProtocol | None = None
        self._udp_route: dict[str, _UdpProtocol | None] = {}
        self._acceptors: list[Acceptor] = []
        self._connections: dict[int, Connection] = {}
        self._by_addr: dict[tuple[str, str, int], int] = {}
        self._per_ip: dict[str, int] = {}
        self._connecting: dict[tuple[str, str, int], asyncio.Future[Connection]] = {}
        self.listeners: list[Listener] = []
        self._reaper: asyncio.Task[None] | None = None

    # ---- listening ----------------------------------------------------------------
    async def listen(self, listener: Listener) -> Listener:
        """Open one listener; returns it with the real port (useful for port 0)."""
        loop = asyncio.get_running_loop()
        if listener.transport == "udp":
            transport, proto = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self, listener), local_addr=(listener.host, listener.port)
            )
            port = transport.get_extra_info("sockname")[1]
            self._size_receive_buffer(transport.get_extra_info("socket"))
            self._udp[(listener.host, port)] = proto
            if self._default_udp is None:
                self._default_udp = proto
        elif listener.transport in ("tcp", "tls"):
            context = None
            if listener.transport == "tls":
                if self.ssl_server is None:
                    raise TransportError("a tls listener needs a certificate")
                context = self.ssl_server
            name = listener.transport
            sockets = bind_stream_sockets(listener.host, listener.port)
            port = sockets[0].getsockname()[1]
            policy = AcceptPolicy(
                service="sip",
                label=str(listener.with_port(port)),
                max_per_ip=self.max_connections_per_ip,
                max_total=self.max_connections,
                ssl=context,
                handshake_timeout_s=self.tls_handshake_timeout_s,
            )
            for sock in sockets:
                acceptor = Acceptor(sock, policy, self.gate, lambda slot, client, _: _StreamProtocol(self, name, slot))
                acceptor.start()
                self._acceptors.append(acceptor)
        else:
            raise TransportError(f"{listener.transport} listens on the HTTP port (/sip)")
        real = listener.with_port(port)
        self.listeners.append(real)
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())
        return real

    def _size_receive_buffer(self, sock: socket.socket) -> None:
        """A bigger SO_RCVBUF absorbs bursts a busy loop reads a moment later (capped by
        the kernel at net.core.rmem_max; raise that sysctl for more)."""
        if self.udp_receive_buffer_bytes is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.udp_receive_buffer_bytes)
            except OSError as exc:
                log.warning("event=udp_buffer_not_set error=%r", str(exc))

    async def adopt_udp(self, listener: Listener, fd: int) -> None:
        """Serve an inherited, already bound UDP socket (worker processes share them)."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        _, proto = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _UdpProtocol(self, listener), sock=sock
        )
        self._udp[(listener.host, listener.port)] = proto
        if self._default_udp is None:
            self._default_udp = proto
        self.listeners.append(listener)

    def udp_sockets(self) -> list[tuple[str, int, int]]:
        """(host, port, fd) of every UDP listener, for worker processes to inherit."""
        out = []
        for (host, port), proto in self._udp.items():
            if proto.transport is not None:
                out.append((host, port, int(proto.transport.get_extra_info("socket").fileno())))
        return out

    def add_listener_record(self, listener: Listener) -> None:
        """Record a listener served elsewhere (ws/wss on the HTTP server)."""
        self.listeners.append(listener)

    # ---- connections --------------------------------------------------------------
    def _admit(self, conn: Connection) -> bool:
        ip = conn.peer.host
        if len(self._connections) >= self.max_connections or self._per_ip.get(ip, 0) >= self.max_connections_per_ip:
            self.stats.connections_refused += 1
            throttle.log(log, logging.WARNING, "connection_refused", "event=connection_refused peer=%s reason=limit", conn.peer)
            return False
        return True

    def _register(self, conn: Connection) -> None:
        peer = conn.peer
        by = self.stats.by_transport
        by[peer.transport] = by.get(peer.transport, 0) + 1
        self._connections[conn.conn_id] = conn
        self._by_addr[(peer.transport, peer.host, peer.port)] = conn.conn_id
        self._per_ip[peer.host] = self._per_ip.get(peer.host, 0) + 1

    def _unregister(self, conn: Connection) -> None:
        if self._connections.pop(conn.conn_id, None) is None:
            return
        peer = conn.peer
        key = (peer.transport, peer.host, peer.port)
        if self._by_addr.get(key) == conn.conn_id:
            del self._by_addr[key]
        left = self._per_ip.get(peer.host, 1) - 1
        if left > 0:
            self._per_ip[peer.host] = left
        else:
            self._per_ip.pop(peer.host, None)
        self.on_connection_lost(peer)

    def admit_external(self, conn: Connection) -> bool:
        """Register a connection owned by another server (WebSocket); False = refused."""
        if not self._admit(conn):
            return False
        self._register(conn)
        return True

    def release_external(self, conn: Connection) -> None:
        self._unregister(conn)

    def new_conn_id(self) -> int:
        return next(self._ids)

    def connection(self, conn_id: int) -> Connection | None:
        return self._connections.get(conn_id)

    def has_flow(self, peer: Peer) -> bool:
        return peer.conn_id is not None and peer.conn_id in self._connections

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.idle_timeout_s))
            cutoff = time.monotonic() - self.idle_timeout_s
            for conn in list(self._connections.values()):
                if conn.last_activity < cutoff:
                    log.info("event=connection_idle_closed peer=%s", conn.peer)
                    conn.close()

    # ---- sending ------------------------------------------------------------------
    def send(self, data: bytes, peer: Peer, token: int | None = None) -> None:
        """Send now when possible; a stream peer without a live connection is connected
        first, and a failure to connect is reported to `on_send_failed` with `token`.
        Raises TransportError when it can tell at once that nothing can be sent."""
        if peer.transport == "udp":
            proto = self._udp_for(peer.host)
            if proto is None or proto.transport is None:
                raise TransportError("no UDP listener to send from")
            proto.transport.sendto(data, (peer.host, peer.port))
            self.stats.sent += 1
            if self.trace is not None:
                self.trace("out", data, peer, proto.local)
            return
        conn = None
        if peer.conn_id is not None:
            conn = self._connections.get(peer.conn_id)
        if conn is None:
            conn_id = self._by_addr.get((peer.transport, peer.host, peer.port))
            conn = self._connections.get(conn_id) if conn_id is not None else None
        if conn is not None:
            conn.write(data)
            self.stats.sent += 1
            if self.trace is not None:
                self.trace("out", data, conn.peer, conn.local)
            return
        if peer.transport in ("ws", "wss"):
            raise TransportError(f"no WebSocket connection to {peer}")
        asyncio.get_running_loop().create_task(self._connect_and_send(data, peer, token))

    async def _connect_and_send(self, data: bytes, peer: Peer, token: int | None) -> None:
        try:
            conn = await self.connect(peer)
            conn.write(data)
            self.stats.sent += 1
            if self.trace is not None:
                self.trace("out", data, conn.peer, conn.local)
        except (OSError, TransportError, TimeoutError) as exc:
            self.stats.send_errors += 1
            throttle.log(log, logging.INFO, "send_failed", "event=send_failed peer=%s error=%r", peer, str(exc))
            if token is not None:
                self.on_send_failed(peer, token, str(exc) or type(exc).__name__)

    def _udp_for(self, host: str) -> _UdpProtocol | None:
        """The UDP socket to send to `host` from: with one listener, it; with several,
        the one bound to the address the routing table would use as source (cached per
        destination), else a wildcard one, else the first."""
        if len(self._udp) <= 1:
            return self._default_udp
        proto = self._udp_route.get(host)
        if proto is None:
            proto = self._pick_udp(host)
            if len(self._udp_route) >= 4096:
                self._udp_route = {}
            self._udp_route[host] = proto
        return proto

    def _pick_udp(self, host: str) -> _UdpProtocol | None:
        source = self.source_address(host)
        wildcard = None
        for (bound, _port), proto in self._udp.items():
            if bound == source:
                return proto
            if wildcard is None and bound in ("0.0.0.0", "::") and (":" in bound) == (":" in host):
                wildcard = proto
        return wildcard or self._default_udp

    @staticmethod
    def source_address(host: str) -> str | None:
        """The local address the kernel would send from towards `host` (no packet sent)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((host, 9))
                return str(probe.getsockname()[0])
        except OSError:
            return None

    async def connect(self, peer: Peer) -> Connection:
        """Open (or reuse) an outgoing TCP/TLS connection (RFC 3261 §18.1.1)."""
        key = (peer.transport, peer.host, peer.port)
        conn_id = self._by_addr.get(key)
        if conn_id is not None and conn_id in self._connections:
            return self._connections[conn_id]
        pending = self._connecting.get(key)
        if pending is not None:
            return await pending
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Connection] = loop.create_future()
        self._connecting[key] = future
        try:
            context = self.ssl_client if peer.transport == "tls" else None
            if peer.transport == "tls" and context is None:
                raise TransportError("no TLS client context")
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _StreamProtocol(self, peer.transport), peer.host, peer.port, ssl=context),
                timeout=10,
            )
            future.set_result(proto)
            return proto
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._connecting[key]

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for acceptor in self._acceptors:
            await acceptor.close()
        for proto in self._udp.values():
            if proto.transport is not None:
                proto.transport.close()
        for conn in list(self._connections.values()):
            conn.close()
