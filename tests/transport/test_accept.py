"""The accept path on the plain asyncio loop (the server runs uvloop when it is installed):
caps at accept, handshake timeout, PROXY headers; the PROXY parser and X-Forwarded-For."""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
from pathlib import Path

import pytest

from vivait_sip.admin.auth import HostPolicy
from vivait_sip.certs import ensure_self_signed, server_context
from vivait_sip.transport.accept import (
    Acceptor,
    AcceptPolicy,
    ConnectionGate,
    bind_stream_sockets,
    parse_networks,
)
from vivait_sip.transport.httpserver import forwarded_client
from vivait_sip.transport.proxyproto import (
    ProxyHeader,
    ProxyHeaderError,
    parse_proxy_header,
    starts_proxy_header,
    v1_header,
    v2_header,
)


class Echo(asyncio.Protocol):
    def __init__(self, slot: object, client: tuple[str, int], trusted: bool) -> None:
        self.slot = slot
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(f"{self.client[0]}:".encode() + data)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.release()  # type: ignore[attr-defined]


def make_acceptor(policy: AcceptPolicy, gate: ConnectionGate) -> Acceptor:
    (sock,) = bind_stream_sockets("127.0.0.1", 0)
    acceptor = Acceptor(sock, policy, gate, Echo)
    acceptor.start()
    return acceptor


async def test_per_ip_cap_applies_at_accept_and_slots_come_back() -> None:
    gate = ConnectionGate()
    acceptor = make_acceptor(AcceptPolicy(service="t", label="t", max_per_ip=2), gate)
    try:
        conns = [await asyncio.open_connection("127.0.0.1", acceptor.port, local_addr=("127.0.0.30", 0)) for _ in range(3)]
        for reader, writer in conns[:2]:
            writer.write(b"hi")
            assert await asyncio.wait_for(reader.read(100), 2) == b"127.0.0.30:hi"
        third_reader, _ = conns[2]
        with pytest.raises(ConnectionResetError):
            assert await asyncio.wait_for(third_reader.read(100), 2) == b""
        assert gate.counters["accepts_refused_per_ip_limit"] == 1
        other_reader, other_writer = await asyncio.open_connection("127.0.0.1", acceptor.port, local_addr=("127.0.0.31", 0))
        other_writer.write(b"x")
        assert await asyncio.wait_for(other_reader.read(100), 2) == b"127.0.0.31:x"
        for _, writer in conns:
            writer.close()
        other_writer.close()
        await asyncio.sleep(0.2)
        assert gate.total == 0 and gate.per_ip == {}
    finally:
        await acceptor.close()


async def test_descriptor_budget_and_the_privileged_share() -> None:
    gate = ConnectionGate(budget=2, reserve=4)
    plain = AcceptPolicy(service="sip", label="sip", max_per_ip=100)
    admin = AcceptPolicy(service="admin", label="admin", max_per_ip=100, privileged=True)
    slots = [gate.acquire(plain, f"192.0.2.{i}") for i in range(3)]
    assert slots[2] is None and gate.counters["accepts_refused_file_limit_reserve"] == 1
    admin_slots = [gate.acquire(admin, "127.0.0.1") for _ in range(3)]
    assert admin_slots[:2] != [None, None] and admin_slots[2] is None  # half the reserve
    for slot in [*slots, *admin_slots]:
        if slot is not None:
            slot.release()
            slot.release()  # idempotent
    assert gate.total == 0 and not gate.per_service and not gate.per_ip


async def test_tls_handshake_times_out_and_an_untrusted_proxy_header_is_refused() -> None:
    cert, key = ensure_self_signed(Path(tempfile.mkdtemp()), [])
    gate = ConnectionGate()
    policy = AcceptPolicy(
        service="h", label="h", max_per_ip=10, ssl=server_context(cert, key), handshake_timeout_s=0.5,
        inspect_first_bytes=True, first_bytes_timeout_s=0.5, trusted_proxies=parse_networks(["127.0.0.40/32"]),
    )
    acceptor = make_acceptor(policy, gate)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", acceptor.port)
        writer.write(b"\x16\x03\x01")  # a ClientHello that never completes
        assert await asyncio.wait_for(reader.read(100), 3) == b""
        assert gate.counters["tls_handshakes_failed"] == 1 and gate.total == 0
        # Untrusted PROXY header: refused before TLS.
        reader, writer = await asyncio.open_connection("127.0.0.1", acceptor.port, local_addr=("127.0.0.41", 0))
        writer.write(v1_header(("203.0.113.1", 1), ("127.0.0.1", acceptor.port)))
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 2)
        assert gate.counters["accepts_refused_proxy_header_from_untrusted_address"] == 1
        # Trusted: the header is consumed (exactly), TLS follows, the client is the named one.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", acceptor.port), source_address=("127.0.0.40", 0))
        raw.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=raw)
        writer.write(v2_header(("203.0.113.2", 2000), ("127.0.0.1", acceptor.port)))
        await writer.drain()
        await writer.start_tls(context)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.read(100), 2) == b"203.0.113.2:ping"
        assert gate.count("h", "203.0.113.2") == 1 and gate.count("h", "127.0.0.40") == 0
        writer.close()
    finally:
        await acceptor.close()


def test_proxy_header_parser() -> None:
    v1 = v1_header(("192.0.2.1", 1234), ("192.0.2.2", 443))
    assert parse_proxy_header(v1 + b"\x16\x03") == ProxyHeader(len(v1), ("192.0.2.1", 1234))
    assert parse_proxy_header(v1[:10]) is None
    assert parse_proxy_header(b"PROXY UNKNOWN\r\n") == ProxyHeader(15, None)
    v6 = v2_header(("2001:db8::1", 5), ("2001:db8::2", 443))
    assert parse_proxy_header(v6) == ProxyHeader(len(v6), ("2001:db8::1", 5))
    assert parse_proxy_header(v6[:20]) is None
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    assert parse_proxy_header(local) == ProxyHeader(16, None)
    for bad in (
        b"PROXY TCP4 999.1.1.1 192.0.2.2 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 99999\r\n",
        b"PROXY " + b"x" * 120,
        b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12),
        b"GET / HTTP/1.1\r\n",
    ):
        with pytest.raises(ProxyHeaderError):
            parse_proxy_header(bad)
    assert starts_proxy_header(b"PRO") is None and starts_proxy_header(b"POST /") is False
    assert starts_proxy_header(b"\x16\x03\x01") is False and starts_proxy_header(v6[:12]) is True


def test_forwarded_for_takes_the_rightmost_untrusted_hop() -> None:
    trusted = parse_networks(["10.0.0.0/8"])
    assert forwarded_client(["203.0.113.9, 198.51.100.7"], trusted) == "198.51.100.7"
    assert forwarded_client(["198.51.100.7, 10.1.1.1", "10.2.2.2"], trusted) == "198.51.100.7"
    assert forwarded_client(["[2001:db8::5]:443"], trusted) == "2001:db8::5"
    assert forwarded_client(["198.51.100.7:5555"], trusted) == "198.51.100.7"
    assert forwarded_client(["unknown"], trusted) is None
    assert forwarded_client(["10.0.0.1"], trusted) is None
    assert forwarded_client([], trusted) is None


def test_admin_host_policy() -> None:
    loopback = HostPolicy("127.0.0.1", ["pbx-admin.example.com"])
    assert loopback.accepts("127.0.0.1") and loopback.accepts("localhost") and loopback.accepts("PBX-admin.example.com")
    assert not loopback.accepts("evil.example") and not loopback.accepts("10.0.0.1") and not loopback.accepts(None)
    wildcard = HostPolicy("0.0.0.0")
    assert wildcard.accepts("10.0.0.1") and wildcard.accepts("::1") and not wildcard.accepts("rebind.example")
    v6 = HostPolicy("::1")
    assert v6.accepts("[::1]") and v6.accepts("localhost")
