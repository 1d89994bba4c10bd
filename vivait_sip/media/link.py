"""One end of a socketpair between the SIP side and a media worker.

The frames are those of the SIP workers' links (vivait_sip/workers.py): a 4-byte length
(the kind byte included), a kind byte, the payload; only kind 4, a typed
`contract.WorkerMessage` (`contract.encode_message`), is used here.  The framing is
repeated rather than imported because a feature area never imports `workers`
(tests/test_dependencies.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import cast

from ..contract import WorkerMessage, decode_message, encode_message

log = logging.getLogger("vivait_sip.media.link")

FRAME = struct.Struct("!IB")  # payload length (kind included), kind — as workers._FRAME
KIND_TYPED = 4  # as workers.KIND_TYPED
MAX_FRAME = 16 * 1024 * 1024


def encode_frame(msg: WorkerMessage) -> bytes:
    body = encode_message(msg)
    return FRAME.pack(len(body) + 1, KIND_TYPED) + body


class Link(asyncio.Protocol):
    """Typed messages both ways over one stream socket."""

    def __init__(self, on_message: Callable[[Link, WorkerMessage], None], on_lost: Callable[[Link], None], name: str = "") -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.name = name
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        size = len(buffer)
        while size - offset >= FRAME.size:
            length, kind = FRAME.unpack_from(buffer, offset)
            if length > MAX_FRAME or length < 1:
                log.error("event=media_link_corrupt link=%s length=%d", self.name, length)
                self.close()
                return
            end = offset + 4 + length
            if end > size:
                break
            payload = bytes(buffer[offset + FRAME.size : end])
            offset = end
            if kind != KIND_TYPED:
                continue
            try:
                msg = decode_message(payload)
            except Exception:
                log.exception("event=media_link_bad_message link=%s", self.name)
                continue
            try:
                self.on_message(self, msg)
            except Exception:
                log.exception("event=media_link_handler_failed link=%s kind=%s", self.name, msg.kind)
        if offset:
            del buffer[:offset]

    def send(self, msg: WorkerMessage) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(encode_frame(msg))
        return True

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.on_lost(self)


async def open_link(fd: int | socket.socket, on_message: Callable[[Link, WorkerMessage], None], on_lost: Callable[[Link], None], name: str = "") -> Link:
    sock = fd if isinstance(fd, socket.socket) else socket.socket(fileno=fd)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    _, link = await loop.connect_accepted_socket(lambda: Link(on_message, on_lost, name), sock)
    return link
