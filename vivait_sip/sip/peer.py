"""Where a message came from or goes to, as the transport layer names it."""

from __future__ import annotations

from dataclasses import dataclass

RELIABLE_TRANSPORTS = frozenset(("tcp", "tls", "ws", "wss"))


@dataclass(frozen=True, slots=True)
class Peer:
    """A remote address plus, for connection-oriented transports, the connection it used.

    `conn_id` lets a response or an RFC 5626 flow go back over the exact connection a
    request arrived on; None means "any connection to host:port, or a new one".
    """

    transport: str  # "udp", "tcp", "tls", "ws", "wss"
    host: str
    port: int
    conn_id: int | None = None

    @property
    def reliable(self) -> bool:
        return self.transport in RELIABLE_TRANSPORTS

    @property
    def via_transport(self) -> str:
        return self.transport.upper()

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"
