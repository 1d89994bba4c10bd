"""A scriptable fake rtpengine NG daemon on a loopback UDP port, for the client's tests.

`reply(msg) -> dict | None` answers a decoded request (None: silence); `drop` datagrams
are ignored first; every datagram is kept in `received` with its arrival time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from vivait_sip.media.ng import bdecode, bencode

Reply = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def rtpengine_like(msg: dict[str, Any]) -> dict[str, Any] | None:
    command = msg.get("command")
    if command == b"ping":
        return {"result": "pong"}
    if command in (b"offer", b"answer"):
        return {"result": "ok", "sdp": msg["sdp"].replace(b"10.0.0.1", b"203.0.113.5")}
    return {"result": "ok"}


class FakeDaemon(asyncio.DatagramProtocol):
    def __init__(self, reply: Reply = rtpengine_like) -> None:
        self.reply = reply
        self.drop = 0
        self.received: list[tuple[float, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.before: Callable[[asyncio.DatagramTransport, bytes, Any], None] | None = None  # extra datagrams first

    @classmethod
    async def start(cls, reply: Reply = rtpengine_like) -> FakeDaemon:
        loop = asyncio.get_running_loop()
        _, daemon = await loop.create_datagram_endpoint(lambda: cls(reply), local_addr=("127.0.0.1", 0))
        return daemon

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def commands(self) -> list[str]:
        return [bdecode(data.partition(b" ")[2])["command"].decode() for _, data in self.received]  # type: ignore[index, union-attr]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append((time.monotonic(), data))
        if self.drop > 0:
            self.drop -= 1
            return
        cookie, _, body = data.partition(b" ")
        msg = bdecode(body)
        assert isinstance(msg, dict)
        answer = self.reply(msg)
        if answer is None or self.transport is None:
            return
        if self.before is not None:
            self.before(self.transport, cookie, addr)
        self.transport.sendto(cookie + b" " + bencode(answer), addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
