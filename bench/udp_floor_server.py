"""The floor of a Python SIP server: uvloop, one UDP socket, and an answer per datagram
with no SIP work at all ("SIP/2.0 200 OK" + the request's own header lines, enough for
SIPp's REGISTER and OPTIONS scenarios to count it).  What bench/cpu_per_request.py
measures for it is what any Python server on this event loop pays per request before
parsing a byte: the datagram's wake-up, recvmsg, the protocol callback and sendmsg.

    python bench/udp_floor_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys

_OK = b"SIP/2.0 200 OK"


class Floor(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(_OK + data[data.find(b"\r\n"):], addr)  # type: ignore[attr-defined]


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Floor, local_addr=("127.0.0.1", port))
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
