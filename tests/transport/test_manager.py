"""TransportManager on real loopback sockets: outgoing connection reuse, flows, failures."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path

from vivait_sip.config import Listener
from vivait_sip.sip.message import StreamFramer
from vivait_sip.sip.peer import Peer
from vivait_sip.transport.manager import TransportManager

MSG = b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n"


class _Sink(asyncio.Protocol):
    """A plain TCP peer that records what arrives on each accepted connection."""

    accepted: list[_Sink] = []

    def __init__(self) -> None:
        self.framer = StreamFramer()
        self.messages: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        _Sink.accepted.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.messages += self.framer.feed(data)


async def _wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_outgoing_tcp_connection_is_reused_and_lost_flows_are_reported() -> None:
    _Sink.accepted = []
    server = await asyncio.get_running_loop().create_server(_Sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    received: list[tuple[bytes, Peer]] = []
    lost: list[Peer] = []
    manager = TransportManager(lambda data, peer: received.append((data, peer)))
    manager.on_connection_lost = lost.append
    try:
        peer = Peer("tcp", "127.0.0.1", port)
        manager.send(MSG, peer)
        manager.send(MSG, peer)  # while the first connect is still pending
        await _wait_for(lambda: sum(len(s.messages) for s in _Sink.accepted) == 2)
        manager.send(MSG, peer)
        await _wait_for(lambda: sum(len(s.messages) for s in _Sink.accepted) == 3)
        assert len(_Sink.accepted) == 1  # RFC 3261 §18.1.1: one connection, reused
        assert manager.connection_count == 1
        # The far end answers over the same connection: the manager delivers it with its flow id.
        sink = _Sink.accepted[0]
        assert sink.transport is not None
        sink.transport.write(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        await _wait_for(lambda: len(received) == 1)
        flow = received[0][1]
        assert flow.conn_id is not None and manager.has_flow(flow)
        sink.transport.close()
        await _wait_for(lambda: len(lost) == 1)
        assert lost[0].conn_id == flow.conn_id
        assert not manager.has_flow(flow)
    finally:
        await manager.close()
        server.close()
        await server.wait_closed()


async def test_connect_failure_is_counted_not_raised() -> None:
    manager = TransportManager(lambda data, peer: None)
    probe = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    try:
        manager.send(MSG, Peer("tcp", "127.0.0.1", port))
        await _wait_for(lambda: manager.stats.send_errors == 1)
    finally:
        await manager.close()


async def test_udp_listener_gets_the_configured_receive_buffer() -> None:
    wanted = 1 << 20
    manager = TransportManager(lambda data, peer: None, udp_receive_buffer_bytes=wanted)
    await manager.listen(Listener(transport="udp", host="127.0.0.1", port=0))
    try:
        (_, _, fd), = manager.udp_sockets()
        with socket.socket(fileno=os.dup(fd)) as sock:
            size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
        # Linux caps the request at net.core.rmem_max and doubles it for bookkeeping.
        assert size == 2 * min(wanted, rmem_max)
    finally:
        await manager.close()
