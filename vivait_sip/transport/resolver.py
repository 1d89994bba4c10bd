"""RFC 3263 next-hop selection: which transport, host and port to send a request to.

Order (§4.1, §4.2): a numeric host or an explicit port needs no SRV; otherwise NAPTR
(optional, when the domain publishes it), then SRV `_sips._tcp` / `_sip._tcp` /
`_sip._udp`, then A/AAAA on the default port.  SRV targets are ordered by priority and,
within one priority, by the RFC 2782 weighted random draw.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from ..sip.uri import SipUri

DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}
_NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
_SRV_PREFIX = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}


@dataclass(frozen=True, slots=True)
class Target:
    transport: str
    host: str  # an IP address
    port: int


class ResolveError(Exception):
    """No target found; the caller answers 503 (RFC 3263 §4.3) or tries the next route."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class Resolver:
    """Async RFC 3263 resolver on top of dnspython; `nameservers` None = the system's."""

    def __init__(
        self,
        nameservers: list[str] | None = None,
        port: int = 53,
        timeout: float = 2.0,
        supported: tuple[str, ...] = ("udp", "tcp", "tls"),
        rng: random.Random | None = None,
    ) -> None:
        self._dns = dns.asyncresolver.Resolver(configure=nameservers is None)
        if nameservers is not None:
            self._dns.nameservers = nameservers
            self._dns.port = port
        self._dns.lifetime = timeout
        self.supported = supported
        self._rng = rng or random.Random()

    async def resolve(self, uri: SipUri) -> list[Target]:
        """Targets to try in order."""
        host = uri.param("maddr") or uri.host
        transport = uri.transport
        if uri.scheme == "sips":
            transport = "tls"
        if transport is not None and transport not in self.supported:
            raise ResolveError(f"transport {transport} not supported")
        if _is_ip(host):
            transport = transport or "udp"
            return [Target(transport, host.strip("[]"), uri.port or DEFAULT_PORTS[transport])]
        if uri.port is not None:
            transport = transport or "udp"
            return [Target(transport, ip, uri.port) for ip in await self._addresses(host)]
        if transport is None:
            transport, srv_name = await self._naptr(host)
        else:
            srv_name = None
        candidates = [transport] if transport else [t for t in ("tls", "tcp", "udp") if t in self.supported]
        for candidate in candidates:
            name = srv_name or f"{_SRV_PREFIX[candidate]}.{host}"
            targets = await self._srv(name, candidate)
            if targets:
                return targets
        transport = transport or "udp"
        return [Target(transport, ip, DEFAULT_PORTS[transport]) for ip in await self._addresses(host)]

    async def _query(self, name: str, rdtype: str) -> list[Any]:
        try:
            answer = await self._dns.resolve(name, rdtype, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.NoAnswer):
            return []
        return list(answer)

    async def _naptr(self, host: str) -> tuple[str | None, str | None]:
        records = await self._query(host, "NAPTR")
        usable = []
        for rec in records:
            service = rec.service.decode().upper()
            transport = _NAPTR_SERVICES.get(service)
            if transport in self.supported and rec.flags.decode().lower() == "s":
                usable.append((rec.order, rec.preference, transport, rec.replacement.to_text(omit_final_dot=True)))
        if not usable:
            return None, None
        usable.sort(key=lambda item: (item[0], item[1]))
        _, _, transport, replacement = usable[0]
        return transport, replacement

    async def _srv(self, name: str, transport: str) -> list[Target]:
        records = await self._query(name, "SRV")
        ordered = self._order_srv(
            [(r.priority, r.weight, r.target.to_text(omit_final_dot=True), r.port) for r in records]
        )
        targets: list[Target] = []
        for _, _, target, port in ordered:
            try:
                addresses = await self._addresses(target)
            except ResolveError:
                continue
            targets += [Target(transport, ip, port) for ip in addresses]
        return targets

    def _order_srv(self, records: list[tuple[int, int, str, int]]) -> list[tuple[int, int, str, int]]:
        """RFC 2782: ascending priority; weighted random order inside a priority."""
        out: list[tuple[int, int, str, int]] = []
        for priority in sorted({r[0] for r in records}):
            group = [r for r in records if r[0] == priority]
            while group:
                total = sum(r[1] for r in group)
                pick = self._rng.uniform(0, total) if total else 0
                acc = 0
                chosen = group[0]
                for rec in group:
                    acc += rec[1]
                    if acc >= pick:
                        chosen = rec
                        break
                out.append(chosen)
                group.remove(chosen)
        return out

    async def _addresses(self, host: str) -> list[str]:
        if _is_ip(host):
            return [host.strip("[]")]
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            found += [r.to_text() for r in await self._query(host, rdtype)]
        if not found:
            raise ResolveError(f"no address for {host}")
        return found
