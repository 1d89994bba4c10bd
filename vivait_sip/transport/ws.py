"""SIP over WebSocket (RFC 7118) on the HTTP(S) server's `/sip` path.

Each WebSocket message carries exactly one SIP message.  Sending is synchronous for the
core, so every connection has one writer task draining a bounded queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from ..sip.peer import Peer
from .httpserver import CLIENT_KEY
from .manager import TransportError, TransportManager

log = logging.getLogger("vivait_sip.transport")

SUBPROTOCOL = "sip"
MAX_QUEUED_MESSAGES = 1000


class WsConnection:
    def __init__(self, manager: TransportManager, ws: web.WebSocketResponse, peer: Peer) -> None:
        self.conn_id = peer.conn_id if peer.conn_id is not None else manager.new_conn_id()
        self.peer = peer
        self.local = ("", 0)
        self.ws = ws
        self.last_activity = time.monotonic()
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(MAX_QUEUED_MESSAGES)
        self.writer = asyncio.get_running_loop().create_task(self._drain())

    def write(self, data: bytes) -> None:
        if self.ws.closed:
            raise TransportError(f"websocket {self.conn_id} is closed")
        self.last_activity = time.monotonic()
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            raise TransportError(f"websocket {self.conn_id} send queue full") from None

    def close(self) -> None:
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            self.writer.cancel()

    async def _drain(self) -> None:
        while True:
            data = await self.queue.get()
            if data is None:
                await self.ws.close()
                return
            try:
                await self.ws.send_str(data.decode("utf-8", "replace"))
            except (ConnectionError, RuntimeError):
                return


def make_ws_handler(
    manager: TransportManager, transport_name: str
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """aiohttp handler for GET /sip; `transport_name` is "ws" or "wss"."""

    async def handler(request: web.Request) -> web.StreamResponse:
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if SUBPROTOCOL not in offered:
            # RFC 7118 §4.1: the "sip" subprotocol is mandatory.
            raise web.HTTPBadRequest(text="WebSocket subprotocol 'sip' required\n")
        ws = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,), max_msg_size=manager.limits.max_message_bytes, heartbeat=30.0
        )
        await ws.prepare(request)
        # The client as the HTTP server admitted it (a PROXY header or X-Forwarded-For from
        # a trusted proxy), so bans and `received=` apply to it and not to the proxy.
        client = request.get(CLIENT_KEY)
        if client is None:
            client = (request.transport.get_extra_info("peername") or ("0.0.0.0", 0))[:2] if request.transport else ("0.0.0.0", 0)
        host, port = client
        peer = Peer(transport_name, host, port, manager.new_conn_id())
        conn = WsConnection(manager, ws, peer)
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            conn.local = (str(sockname[0]), int(sockname[1]))
        if not manager.admit_external(conn):
            await ws.close()
            return ws
        try:
            async for msg in ws:
                conn.last_activity = time.monotonic()
                if msg.type == WSMsgType.TEXT:
                    data = msg.data.encode("utf-8")
                elif msg.type == WSMsgType.BINARY:
                    data = msg.data
                else:
                    continue
                manager.stats.received += 1
                if manager.trace is not None:
                    manager.trace("in", data, peer, conn.local)
                manager.on_message(data, peer)
        finally:
            manager.release_external(conn)
            conn.close()
        return ws

    return handler
