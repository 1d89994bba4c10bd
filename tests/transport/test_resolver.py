"""RFC 3263 next hop against a real DNS server on loopback (a tiny one of our own)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from vivait_sip.sip.uri import parse_uri
from vivait_sip.transport.resolver import ResolveError, Resolver, Target

ZONE: dict[tuple[str, str], list[str]] = {
    ("pbx.test.", "NAPTR"): ['10 50 "s" "SIP+D2T" "" _sip._tcp.pbx.test.', '20 50 "s" "SIP+D2U" "" _sip._udp.pbx.test.'],
    ("_sip._tcp.pbx.test.", "SRV"): ["10 60 5070 b.pbx.test.", "5 10 5080 a.pbx.test."],
    ("a.pbx.test.", "A"): ["127.0.0.11"],
    ("b.pbx.test.", "A"): ["127.0.0.12"],
    ("_sip._udp.srvonly.test.", "SRV"): ["1 1 5090 host.srvonly.test."],
    ("host.srvonly.test.", "A"): ["127.0.0.21"],
    ("plain.test.", "A"): ["127.0.0.31"],
    ("plain.test.", "AAAA"): ["::1"],
}


class _DnsServer(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        key = (question.name.to_text(), dns.rdatatype.to_text(question.rdtype))
        if key in ZONE:
            response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", key[1], ZONE[key]))
        elif not any(name == key[0] for name, _ in ZONE):
            response.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(response.to_wire(), addr)  # type: ignore[attr-defined]


@pytest.fixture
async def resolver() -> AsyncIterator[Resolver]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_DnsServer, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    yield Resolver(["127.0.0.1"], port=port, rng=random.Random(1))
    transport.close()


async def test_numeric_host_needs_no_dns(resolver: Resolver) -> None:
    assert await resolver.resolve(parse_uri("sip:6140@127.0.0.5")) == [Target("udp", "127.0.0.5", 5060)]
    assert await resolver.resolve(parse_uri("sips:6140@127.0.0.5")) == [Target("tls", "127.0.0.5", 5061)]
    assert await resolver.resolve(parse_uri("sip:6140@127.0.0.5:5099;transport=tcp")) == [Target("tcp", "127.0.0.5", 5099)]


async def test_naptr_then_srv_by_priority(resolver: Resolver) -> None:
    targets = await resolver.resolve(parse_uri("sip:6140@pbx.test"))
    assert targets == [Target("tcp", "127.0.0.11", 5080), Target("tcp", "127.0.0.12", 5070)]


async def test_srv_without_naptr(resolver: Resolver) -> None:
    assert await resolver.resolve(parse_uri("sip:x@srvonly.test")) == [Target("udp", "127.0.0.21", 5090)]


async def test_a_and_aaaa_fallback_and_explicit_port(resolver: Resolver) -> None:
    assert await resolver.resolve(parse_uri("sip:x@plain.test")) == [Target("udp", "127.0.0.31", 5060), Target("udp", "::1", 5060)]
    assert await resolver.resolve(parse_uri("sip:x@plain.test:5062")) == [Target("udp", "127.0.0.31", 5062), Target("udp", "::1", 5062)]


async def test_unknown_domain_is_an_error(resolver: Resolver) -> None:
    with pytest.raises(ResolveError):
        await resolver.resolve(parse_uri("sip:x@nowhere.test"))


def test_srv_weights_follow_rfc2782() -> None:
    resolver = Resolver(["127.0.0.1"], rng=random.Random(7))
    records = [(1, 90, "heavy", 1), (1, 10, "light", 2), (0, 0, "first", 3)]
    heavy_first = sum(resolver._order_srv(records)[1][2] == "heavy" for _ in range(500))
    assert resolver._order_srv(records)[0][2] == "first"
    assert 380 < heavy_first < 490
