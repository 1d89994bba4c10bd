"""Listening addresses: where we bind, and the address we advertise in Via, Contact,
Record-Route and SDP (which differs behind NAT or a load balancer)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")


def parse_hostport(text: str, what: str = "address", *, default_port: int | None = None) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` → (host, port); with `default_port`, `HOST` alone too.

    Raises ValueError with a message naming `what` and saying exactly what is wrong."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{what}: unclosed '[' in {text!r}")
        if rest.startswith(":"):
            port_text = rest[1:]
        elif rest == "" and default_port is not None:
            port_text = str(default_port)
        else:
            raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
        _check_ipv6(host, what)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            if default_port is None:
                raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
            host, port_text = text, str(default_port)
        elif ":" in host:
            raise ValueError(f"{what}: an IPv6 address needs brackets, as in [::1]:5060, got {text!r}")
    if not host:
        raise ValueError(f"{what}: the host is missing in {text!r}")
    if not port_text.isdigit():
        raise ValueError(f"{what}: the port must be a number, got {port_text!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"{what}: port {port} is out of range (0-65535)")
    check_host(host, what)
    return host, port


def _check_ipv6(host: str, what: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"{what}: {host!r} is not an IPv6 address") from None


def check_host(host: str, what: str = "address") -> None:
    """A dotted-quad must be a real IPv4 address (`999.1.1.1` is refused); names must be
    valid DNS labels."""
    if ":" in host:
        _check_ipv6(host, what)
        return
    labels = host.split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{what}: {host!r} is not an IPv4 address") from None
        return
    for label in labels:
        if not label or len(label) > 63 or not all(c.isalnum() or c == "-" for c in label) or label[0] == "-":
            raise ValueError(f"{what}: {host!r} is not a valid host name")


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(frozen=True, slots=True)
class Listener:
    """One SIP listening socket, and what we call ourselves on it.

    `advertise_host`/`advertise_port` replace the bound address in everything we write
    into messages (a server bound to 0.0.0.0, behind NAT or a balancer); None: the bound
    address itself."""

    transport: str
    host: str
    port: int
    advertise_host: str | None = None
    advertise_port: int | None = None

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")

    @classmethod
    def parse(cls, text: str, what: str = "listener") -> Listener:
        """`udp:127.0.0.1:5060` (the config and --listen form)."""
        transport, sep, rest = text.partition(":")
        transport = transport.lower()
        if not sep or transport not in TRANSPORTS:
            raise ValueError(f"{what} must be TRANSPORT:HOST:PORT with TRANSPORT one of {', '.join(TRANSPORTS)}, got {text!r}")
        host, port = parse_hostport(rest, what)
        return cls(transport, host, port)

    def with_port(self, port: int) -> Listener:
        return Listener(self.transport, self.host, port, self.advertise_host, self.advertise_port)

    def with_advertised(self, text: str | None, what: str = "advertise") -> Listener:
        """`HOST` or `HOST:PORT` we are known by on this listener."""
        if text is None:
            return Listener(self.transport, self.host, self.port)
        host, port = parse_hostport(text, what, default_port=0)
        return Listener(self.transport, self.host, self.port, host, port or None)

    @property
    def is_wildcard(self) -> bool:
        """Bound to every address with nothing advertised: the address to write into a
        message depends on the destination (the adapter asks the routing table)."""
        return self.advertise_host is None and self.host in ("0.0.0.0", "::")

    @property
    def sent_by(self) -> tuple[str, int]:
        """(host, port) for Via, Contact, Record-Route and SDP (see `is_wildcard`)."""
        return self.advertise_host or self.host, self.advertise_port or self.port

    def __str__(self) -> str:
        return f"{self.transport}:{format_host(self.host)}:{self.port}"


__all__ = ["TRANSPORTS", "Listener", "check_host", "format_host", "parse_hostport"]
