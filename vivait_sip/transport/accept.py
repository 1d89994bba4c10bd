"""Accepting stream connections without letting one source (or a crowd) exhaust the process.

Every TCP, TLS, HTTP(S) and admin listener is served by an `Acceptor`: it accepts the
socket itself and decides at once, before any TLS handshake or HTTP parsing, through the
process-wide `ConnectionGate`:

- a cap per source address and service (`sip`, `http`, `admin`), counting connections
  still in their handshake;
- a cap on connections per service, and a descriptor budget for all of them (the file
  limit minus a reserve, fdlimit.py) that SIP and HTTP(S) may not go past, so the admin
  API, the store and outgoing connections always find a descriptor;
- on the HTTP listener, a PROXY protocol header (v1/v2) is read, only from
  `trusted_proxies`, and the client it names is the one capped; from elsewhere it is refused.

Only then is the socket handed to the event loop (`connect_accepted_socket`, asyncio and
uvloop alike), with the TLS handshake under a timeout.  Refusals and handshake failures
are logged, throttled (logs.throttle), and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..logs import throttle
from .fdlimit import open_fds
from .proxyproto import PEEK_BYTES, ProxyHeaderError, parse_proxy_header, starts_proxy_header

log = logging.getLogger("vivait_sip.transport")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ACCEPT_BACKOFF_S = 0.1
PROXY_RETRY_S = 0.01
# Errors of one accept that say nothing about the next one.
_TRANSIENT = frozenset((errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN))


def client_ip(host: str) -> str:
    """`::ffff:192.0.2.1` (a dual-stack socket) is 192.0.2.1 for caps and bans."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def in_networks(host: str, networks: tuple[Network, ...]) -> bool:
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in networks)


@dataclass(frozen=True)
class AcceptPolicy:
    """How one listener admits connections."""

    service: str  # "sip", "http", "admin": caps per source are per service
    label: str  # for logs: "tls 127.0.0.1:5061"
    max_per_ip: int
    max_total: int | None = None
    ssl: ssl.SSLContext | None = None
    handshake_timeout_s: float = 5.0
    privileged: bool = False  # the admin API: may use half of the reserved descriptors
    inspect_first_bytes: bool = False  # look for a PROXY header (HTTP listener)
    first_bytes_timeout_s: float = 5.0
    trusted_proxies: tuple[Network, ...] = ()


class Slot:
    """One admitted connection's place in the gate; `release` is idempotent."""

    __slots__ = ("gate", "ip", "released", "service")

    def __init__(self, gate: ConnectionGate, service: str, ip: str | None) -> None:
        self.gate = gate
        self.service = service
        self.ip = ip  # None: not counted per source (a trusted proxy's own address)
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.gate._release(self)


class ConnectionGate:
    """Counts of admitted connections: per (service, source), per service, in all."""

    def __init__(self, budget: int | None = None, reserve: int = 0) -> None:
        self.budget = budget  # connections SIP and HTTP(S) may hold together; None: no limit
        self.reserve = reserve
        self.total = 0
        self.per_ip: dict[tuple[str, str], int] = {}
        self.per_service: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()

    def set_budget(self, budget: int | None, reserve: int) -> None:
        self.budget = budget
        self.reserve = reserve

    def acquire(self, policy: AcceptPolicy, ip: str, *, per_ip: bool = True) -> Slot | None:
        reason = self._refusal(policy, ip if per_ip else None)
        if reason is not None:
            self.refuse(policy.label, ip, reason)
            return None
        self.total += 1
        self.per_service[policy.service] += 1
        slot = Slot(self, policy.service, ip if per_ip else None)
        if per_ip:
            key = (policy.service, ip)
            self.per_ip[key] = self.per_ip.get(key, 0) + 1
        return slot

    def rebind(self, slot: Slot, policy: AcceptPolicy, ip: str) -> bool:
        """Count `slot` against `ip` from now on (the client a PROXY header named)."""
        key = (policy.service, ip)
        if slot.ip != ip and self.per_ip.get(key, 0) >= policy.max_per_ip:
            self.refuse(policy.label, ip, "per_ip_limit")
            return False
        self._forget_ip(slot)
        slot.ip = ip
        self.per_ip[key] = self.per_ip.get(key, 0) + 1
        return True

    def _refusal(self, policy: AcceptPolicy, ip: str | None) -> str | None:
        if self.budget is not None:
            limit = self.budget + (self.reserve // 2 if policy.privileged else 0)
            if self.total >= limit:
                return "file_limit_reserve"
        if policy.max_total is not None and self.per_service[policy.service] >= policy.max_total:
            return "connection_limit"
        if ip is not None and self.per_ip.get((policy.service, ip), 0) >= policy.max_per_ip:
            return "per_ip_limit"
        return None

    def refuse(self, label: str, ip: str, reason: str) -> None:
        """Count and log (throttled) one refused connection or request."""
        self.counters["accepts_refused"] += 1
        self.counters[f"accepts_refused_{reason}"] += 1
        throttle.log(
            log, logging.WARNING, f"connection_refused_{reason}",
            "event=connection_refused listener=%r peer=%s reason=%s", label, ip, reason,
        )

    def _release(self, slot: Slot) -> None:
        self.total -= 1
        left = self.per_service[slot.service] - 1
        if left > 0:
            self.per_service[slot.service] = left
        else:
            del self.per_service[slot.service]
        self._forget_ip(slot)

    def _forget_ip(self, slot: Slot) -> None:
        if slot.ip is None:
            return
        key = (slot.service, slot.ip)
        left = self.per_ip.get(key, 1) - 1
        if left > 0:
            self.per_ip[key] = left
        else:
            self.per_ip.pop(key, None)
        slot.ip = None

    def count(self, service: str, ip: str) -> int:
        return self.per_ip.get((service, ip), 0)


# (slot, client address, direct from a trusted proxy without a PROXY header) -> protocol
ProtocolFactory = Callable[[Slot, tuple[str, int], bool], asyncio.Protocol]


class _Refused(Exception):
    """The connection was refused after accept (already logged)."""


def bind_stream_sockets(host: str, port: int, backlog: int = socket.SOMAXCONN) -> list[socket.socket]:
    """Listening sockets for `host` (every address it resolves to) on `port`; with port 0
    they all get the port the first one was given."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: set[tuple[int, object]] = set()
    unique = []
    for family, kind, proto, _, sockaddr in infos:
        if (family, sockaddr) not in seen:
            seen.add((family, sockaddr))
            unique.append((family, kind, proto, sockaddr))
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, sockaddr in unique:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and len(unique) > 1:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                sockaddr = (sockaddr[0], sockets[0].getsockname()[1], *sockaddr[2:])
            sock.bind(sockaddr)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Acceptor:
    """The accept loop of one listening socket."""

    def __init__(self, sock: socket.socket, policy: AcceptPolicy, gate: ConnectionGate, factory: ProtocolFactory) -> None:
        self.sock = sock
        self.policy = policy
        self.gate = gate
        self.factory = factory
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop accepting; connections still in their handshake are dropped."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sock.close()
        pending = list(self._pending)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    continue
                # EMFILE/ENFILE/ENOBUFS: the connection waits in the backlog; try again soon.
                self.gate.counters["accept_errors"] += 1
                throttle.log(
                    log, logging.ERROR, "accept_failed",
                    "event=accept_failed listener=%r error=%s open_fds=%d",
                    self.policy.label, errno.errorcode.get(exc.errno or 0, str(exc)), open_fds(),
                )
                await asyncio.sleep(ACCEPT_BACKOFF_S)
                continue
            self._admit(conn, addr)

    def _admit(self, conn: socket.socket, addr: tuple[str, int] | tuple[str, int, int, int]) -> None:
        policy = self.policy
        ip = client_ip(addr[0])
        from_proxy = in_networks(ip, policy.trusted_proxies)
        slot = self.gate.acquire(policy, ip, per_ip=not from_proxy)
        if slot is None:
            _close_now(conn)
            return
        task = asyncio.get_running_loop().create_task(self._setup(conn, (ip, int(addr[1])), slot, from_proxy))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _setup(self, conn: socket.socket, addr: tuple[str, int], slot: Slot, from_proxy: bool) -> None:
        policy = self.policy
        loop = asyncio.get_running_loop()
        handed = False
        started = time.monotonic()
        try:
            conn.setblocking(False)
            client, trusted_direct = addr, False
            if policy.inspect_first_bytes:
                client, trusted_direct = await self._proxy_header(conn, addr, slot, from_proxy)

            def protocol() -> asyncio.Protocol:
                return self.factory(slot, client, trusted_direct)

            handed = True
            if policy.ssl is not None:
                timeout = max(0.1, policy.handshake_timeout_s - (time.monotonic() - started))
                await loop.connect_accepted_socket(protocol, conn, ssl=policy.ssl, ssl_handshake_timeout=timeout)
            else:
                await loop.connect_accepted_socket(protocol, conn)
        except _Refused:
            slot.release()
            _close_now(conn)
        except asyncio.CancelledError:
            slot.release()
            if not handed:
                conn.close()
            raise
        except (OSError, TimeoutError, ValueError) as exc:
            slot.release()
            if not handed:
                conn.close()
            reason = "timeout" if isinstance(exc, TimeoutError | ConnectionAbortedError) else type(exc).__name__
            key = "tls_handshake_failed" if handed and policy.ssl is not None else "connection_setup_failed"
            self.gate.counters["tls_handshakes_failed" if key == "tls_handshake_failed" else "connection_setups_failed"] += 1
            throttle.log(
                log, logging.INFO, key, "event=%s listener=%r peer=%s reason=%s",
                key, policy.label, addr[0], reason,
            )

    async def _proxy_header(
        self, conn: socket.socket, addr: tuple[str, int], slot: Slot, from_proxy: bool
    ) -> tuple[tuple[str, int], bool]:
        """Read a PROXY header, if any (without reading past it).  Returns the client and
        whether the connection comes straight from a trusted proxy (then X-Forwarded-For
        may name the client)."""
        policy = self.policy
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.first_bytes_timeout_s
        while True:
            data = await _peek(conn, deadline)
            if not data:
                raise ConnectionResetError("closed before sending anything")
            starts = starts_proxy_header(data)
            if starts is False:
                return addr, from_proxy
            if starts and not from_proxy:
                self.gate.refuse(policy.label, addr[0], "proxy_header_from_untrusted_address")
                raise _Refused
            try:
                header = parse_proxy_header(data) if starts else None
            except ProxyHeaderError as exc:
                self.gate.refuse(policy.label, addr[0], "bad_proxy_header")
                log.debug("event=bad_proxy_header peer=%s error=%r", addr[0], str(exc))
                raise _Refused from None
            if header is not None:
                break
            # Too few bytes yet to tell, or an incomplete header: look again shortly.
            if loop.time() >= deadline:
                raise TimeoutError("first bytes incomplete")
            await asyncio.sleep(PROXY_RETRY_S)
        if len(conn.recv(header.length)) != header.length:
            raise ConnectionResetError("PROXY header cut short")
        if header.source is None:  # LOCAL / UNKNOWN: the proxy speaking for itself
            return addr, False
        client = (client_ip(header.source[0]), header.source[1])
        if not self.gate.rebind(slot, policy, client[0]):
            raise _Refused
        return client, False


async def _peek(conn: socket.socket, deadline: float) -> bytes:
    """The bytes waiting on `conn` (left there), once there are some; b"" on EOF."""
    loop = asyncio.get_running_loop()
    try:
        return conn.recv(PEEK_BYTES, socket.MSG_PEEK)
    except BlockingIOError:
        pass
    ready = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = conn.fileno()
    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(ready, max(0.0, deadline - loop.time()))
    finally:
        loop.remove_reader(fd)
    return conn.recv(PEEK_BYTES, socket.MSG_PEEK)


def _close_now(conn: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): a refused connection leaves no TIME_WAIT behind."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
