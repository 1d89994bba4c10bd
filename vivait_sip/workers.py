"""Several worker processes behind the same UDP sockets, as Kamailio runs its children.

One CPython process is one core.  With ``sip.workers`` N > 1, the process ``serve``
started (worker 0) opens every listener, then starts workers 1..N-1 as fresh
interpreters (``python -m vivait_sip worker``) that inherit the UDP sockets: the kernel
hands each datagram to whichever worker reads first.  Every pair of workers shares one
Unix stream socketpair (inherited only, so nothing else on the host can speak on it);
a new worker asks worker 0 over it for the effective config and the nonce secret, which
therefore never appear in a command line, the environment or a file.

State has exactly one owner, so nothing is shared and nothing is locked:

* a REGISTER belongs to the worker that owns its AOR (``crc32(aor) % N``): bindings,
  CSeq ordering, nonce-counts and the per-AOR contact limit live there;
* every other request, and every response, belongs to the owner of its Call-ID, so a
  dialog's transactions (INVITE, CANCEL, ACK, BYE) always meet in one process;
* requests answered statelessly (OPTIONS, a REGISTER that can only be challenged,
  malformed input, 503 shedding, banned sources) are answered where they arrive;
* worker 0 alone holds TCP, TLS and WebSocket connections, the HTTP and admin servers,
  the mdflow engine and the authentication-failure counters.  Other workers send to a
  connection through worker 0, and report failed authentications to it; worker 0
  decides, logs and broadcasts the bans.  A worker also counts the failures it verifies
  itself and refuses a source at the threshold without waiting for that broadcast.

A request that arrives at the wrong worker is forwarded as raw bytes with its source
(one frame on the socketpair) and parsed again by its owner.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from .contract import WorkerMessage, decode_message, encode_message, worker_message
from .sip.peer import Peer

log = logging.getLogger("vivait_sip.workers")

ENV_SPEC = "VIVAIT_SIP_WORKER"
SECRET_BYTES = 32
BOOTSTRAP_CALL = "bootstrap"  # worker 0 answers {"secret": hex, "config": effective config JSON}

_FRAME = struct.Struct("!IB")  # payload length (kind included), kind
_PEER = struct.Struct("!BHqqB")  # transport code, port, conn_id (-1: none), tx id (-1: none), host length
KIND_MESSAGE = 1  # process this SIP message as if it had arrived here
KIND_SEND = 2  # send these bytes to this peer (worker 0 holds the connections)
KIND_CONTROL = 3  # JSON: admin calls and their replies
KIND_TYPED = 4  # a contract.WorkerMessage (contract.encode_message)
MAX_FRAME = 16 * 1024 * 1024
# Past this many bytes queued towards one worker, forwarded SIP messages are dropped
# (UDP semantics: the sender retransmits); control frames are never dropped.
MAX_QUEUED_BYTES = 8 * 1024 * 1024
CALL_TIMEOUT_S = 10.0

_TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")
_TRANSPORT_CODE = {name: code for code, name in enumerate(_TRANSPORTS)}


def owner_index(key: str, count: int) -> int:
    """The worker owning `key` (an AOR or a Call-ID): stable across processes and restarts."""
    if count <= 1:
        return 0
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % count


def encode_peer_frame(kind: int, peer: Peer, data: bytes, tx_id: int | None = None) -> bytes:
    host = peer.host.encode("utf-8")
    head = _PEER.pack(
        _TRANSPORT_CODE[peer.transport],
        peer.port,
        -1 if peer.conn_id is None else peer.conn_id,
        -1 if tx_id is None else tx_id,
        len(host),
    )
    body_len = 1 + len(head) + len(host) + len(data)
    return _FRAME.pack(body_len, kind) + head + host + data


def decode_peer_payload(payload: bytes) -> tuple[Peer, bytes, int | None]:
    code, port, conn_id, tx_id, host_len = _PEER.unpack_from(payload)
    start = _PEER.size
    host = payload[start : start + host_len].decode("utf-8")
    peer = Peer(_TRANSPORTS[code], host, port, None if conn_id < 0 else conn_id)
    return peer, payload[start + host_len :], None if tx_id < 0 else tx_id


def encode_typed(msg: WorkerMessage) -> bytes:
    body = encode_message(msg)
    return _FRAME.pack(len(body) + 1, KIND_TYPED) + body


@worker_message("core.worker_ready")
@dataclass(frozen=True)
class WorkerReady(WorkerMessage):
    """A worker → worker 0: started, reading from the shared sockets."""

    index: int


@worker_message("core.reload")
@dataclass(frozen=True)
class ReloadConfig(WorkerMessage):
    """Worker 0 → all: the config file was re-read; re-read it too."""


@worker_message("core.send_failed")
@dataclass(frozen=True)
class SendFailed(WorkerMessage):
    """Worker 0 → the owner of a transaction: its message could not be sent over a
    connection worker 0 holds (refused connect, closed WebSocket)."""

    tx_id: int
    peer: str
    error: str


def encode_control(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return _FRAME.pack(len(body) + 1, KIND_CONTROL) + body


@dataclass
class WorkerSpec:
    """What a worker process inherits: its place, its sockets, the shared secret's pipe."""

    index: int
    count: int
    udp_fds: list[tuple[str, int, int]]  # (host, port, fd) per UDP listener, in config order
    local_hosts: list[str]  # every address worker 0 listens on: domains we answer for
    link_fds: dict[int, int]  # other worker index -> fd of our end of the socketpair
    config_path: str | None
    demo: bool
    # Descriptors features hand to this worker (`Feature.fds_for_worker`): feature → name → fd.
    feature_fds: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_env(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "count": self.count,
                "udp_fds": self.udp_fds,
                "local_hosts": self.local_hosts,
                "link_fds": {str(k): v for k, v in self.link_fds.items()},
                "config_path": self.config_path,
                "demo": self.demo,
                "feature_fds": self.feature_fds,
            }
        )

    @classmethod
    def from_env(cls, text: str) -> WorkerSpec:
        raw = json.loads(text)
        return cls(
            index=int(raw["index"]),
            count=int(raw["count"]),
            udp_fds=[(str(h), int(p), int(fd)) for h, p, fd in raw["udp_fds"]],
            local_hosts=[str(h) for h in raw["local_hosts"]],
            link_fds={int(k): int(v) for k, v in raw["link_fds"].items()},
            config_path=raw["config_path"],
            demo=bool(raw["demo"]),
            feature_fds={str(f): {str(k): int(v) for k, v in fds.items()} for f, fds in raw.get("feature_fds", {}).items()},
        )


class _Link(asyncio.Protocol):
    """Our end of the socketpair to one other worker: length-prefixed frames both ways."""

    def __init__(self, cluster: Cluster, other: int) -> None:
        self.cluster = cluster
        self.other = other
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        size = len(buffer)
        while size - offset >= _FRAME.size:
            length, kind = _FRAME.unpack_from(buffer, offset)
            if length > MAX_FRAME:
                log.error("event=worker_link_corrupt other=%d length=%d", self.other, length)
                self.close()
                return
            end = offset + 4 + length
            if end > size:
                break
            payload = bytes(buffer[offset + _FRAME.size : end])
            offset = end
            self.cluster._on_frame(self.other, kind, payload)
        if offset:
            del buffer[:offset]

    def write(self, frame: bytes, droppable: bool) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if droppable and transport.get_write_buffer_size() > MAX_QUEUED_BYTES:
            return False
        transport.write(frame)
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.cluster._on_link_lost(self.other)


CallHandler = Callable[[dict[str, Any]], Awaitable[Any] | Any]


class Cluster:
    """This process's view of the workers: who owns what, and the links to the others."""

    def __init__(self, index: int, count: int, secret: bytes) -> None:
        self.index = index
        self.count = count
        self.secret = secret
        self.links: dict[int, _Link] = {}
        self.on_message: Callable[[bytes, Peer], None] = lambda data, peer: None
        self.on_send: Callable[[int, bytes, Peer, int | None], None] = lambda source, data, peer, tx_id: None
        self.on_typed: Callable[[int, WorkerMessage], None] = lambda source, msg: None
        self.on_link_lost: Callable[[int], None] = lambda other: None
        self._calls: dict[str, CallHandler] = {}
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self.dropped = 0
        self.closing = False

    @property
    def is_primary(self) -> bool:
        return self.index == 0

    def owner(self, key: str) -> int:
        return owner_index(key, self.count)

    def owns(self, key: str) -> bool:
        return owner_index(key, self.count) == self.index

    async def connect(self, link_fds: dict[int, int]) -> None:
        loop = asyncio.get_running_loop()
        for other, fd in sorted(link_fds.items()):
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            _, link = await loop.connect_accepted_socket(lambda o=other: _Link(self, o), sock)  # type: ignore[misc]
            self.links[other] = link

    def close(self) -> None:
        self.closing = True
        for link in self.links.values():
            link.close()

    # ---- SIP traffic ----------------------------------------------------------------
    def forward(self, worker: int, data: bytes, peer: Peer) -> None:
        """Hand a received message to the worker that owns it."""
        self._write(worker, encode_peer_frame(KIND_MESSAGE, peer, data), droppable=True)

    def send_via(self, worker: int, data: bytes, peer: Peer, tx_id: int | None = None) -> None:
        """Ask `worker` (the one holding the connection) to send `data` to `peer`; a
        failure comes back as `SendFailed(tx_id)`."""
        self._write(worker, encode_peer_frame(KIND_SEND, peer, data, tx_id), droppable=True)

    def send(self, worker: int, msg: WorkerMessage) -> None:
        """A typed one-way message to one worker (never dropped)."""
        self._write(worker, encode_typed(msg), droppable=False)

    def broadcast(self, msg: WorkerMessage) -> None:
        """A typed one-way message to every other worker."""
        frame = encode_typed(msg)
        for other in self.links:
            self._write(other, frame, droppable=False)

    def _write(self, worker: int, frame: bytes, droppable: bool) -> None:
        link = self.links.get(worker)
        if link is None or not link.write(frame, droppable):
            self.dropped += 1

    # ---- control: events and calls ----------------------------------------------------
    def on_call(self, name: str, handler: CallHandler) -> None:
        self._calls[name] = handler

    async def call(self, worker: int, name: str, **args: Any) -> Any:
        """Run `name` on `worker` and return its JSON-able result."""
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            self._write(worker, encode_control({"call": name, "id": call_id, "args": args}), droppable=False)
            return await asyncio.wait_for(future, CALL_TIMEOUT_S)
        finally:
            self._pending.pop(call_id, None)

    async def call_all(self, name: str, **args: Any) -> list[Any]:
        """`name` on every other worker, results in worker order."""
        return list(await asyncio.gather(*(self.call(other, name, **args) for other in sorted(self.links))))

    # ---- input ----------------------------------------------------------------------
    def _on_frame(self, other: int, kind: int, payload: bytes) -> None:
        try:
            if kind == KIND_MESSAGE:
                peer, data, _ = decode_peer_payload(payload)
                self.on_message(data, peer)
            elif kind == KIND_SEND:
                peer, data, tx_id = decode_peer_payload(payload)
                self.on_send(other, data, peer, tx_id)
            elif kind == KIND_TYPED:
                self.on_typed(other, decode_message(payload))
            elif kind == KIND_CONTROL:
                self._on_control(other, json.loads(payload))
        except Exception:
            log.exception("event=worker_frame_error other=%d kind=%d", other, kind)

    def _on_control(self, other: int, msg: dict[str, Any]) -> None:
        if "call" in msg:
            asyncio.get_running_loop().create_task(self._answer(other, msg))
        elif "reply" in msg:
            future = self._pending.get(msg["reply"])
            if future is not None and not future.done():
                if "error" in msg:
                    future.set_exception(RuntimeError(f"worker {other}: {msg['error']}"))
                else:
                    future.set_result(msg.get("result"))

    async def _answer(self, other: int, msg: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"reply": msg.get("id")}
        handler = self._calls.get(msg["call"])
        try:
            if handler is None:
                raise LookupError(f"unknown call {msg['call']!r}")
            result = handler(msg.get("args", {}))
            if asyncio.iscoroutine(result):
                result = await result
            reply["result"] = result
        except Exception as exc:
            log.exception("event=worker_call_failed name=%s", msg.get("call"))
            reply["error"] = str(exc)
        self._write(other, encode_control(reply), droppable=False)

    def _on_link_lost(self, other: int) -> None:
        self.links.pop(other, None)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"worker {other} is gone"))
        if not self.closing:
            self.on_link_lost(other)


def make_links(count: int) -> dict[int, dict[int, socket.socket]]:
    """One stream socketpair per pair of workers: ends[i][j] is i's end towards j."""
    ends: dict[int, dict[int, socket.socket]] = {i: {} for i in range(count)}
    for i in range(count):
        for j in range(i + 1, count):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            ends[i][j] = a
            ends[j][i] = b
    return ends
