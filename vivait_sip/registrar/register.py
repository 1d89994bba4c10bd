"""REGISTER processing (RFC 3261 §10.3, RFC 3327 Path, RFC 5626 outbound).

The order of checks matters for security: domain checks first (they reveal nothing
about users), then digest authentication, and only then "does this AOR exist and belong
to you?" (403), so an unauthenticated client can never tell existing extensions from
missing ones.  A request is processed atomically: every contact is validated (expiry,
CSeq ordering, outbound) before any binding changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate

from ..contract import LocalDomains
from ..sip.errors import SipParseError
from ..sip.incoming import Incoming
from ..sip.message import Request
from ..sip.uri import NameAddr
from .config import RegistrarConfig
from .location import Binding, LocationService
from .security import AuthGate
from .users import UserDirectory

OUTBOUND_TRANSPORTS = frozenset(("tcp", "tls", "ws", "wss"))


@dataclass(slots=True, init=False)
class _Change:
    """One validated contact of the request: a binding to put, or (expires 0) to remove."""

    binding: Binding
    remove: bool

    # An explicit __init__: mypyc compiles it (a dataclass-made one runs as Python).
    def __init__(self, binding: Binding, remove: bool) -> None:
        self.binding = binding
        self.remove = remove


class _DateCache:
    """RFC 1123 Date header text, formatted once per second (it is on every 200)."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = formatdate(second, usegmt=True)
        return self._text


class Registrar:
    """The REGISTER handler (the feature declares it in `request_handlers`)."""

    def __init__(
        self,
        domains: LocalDomains,
        gate: AuthGate,
        users: UserDirectory,
        location: LocationService,
        settings: RegistrarConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.domains = domains
        self.gate = gate
        self.users = users
        self.location = location
        self.settings = settings
        self.clock = clock
        self._date = _DateCache()

    def handle(self, inc: Incoming) -> None:
        """Answer one request; a SipParseError it raises becomes a 400 in the core."""
        req = inc.request
        domains = self.domains
        # Properties of the message read into locals first: tests/native_shapes.py,
        # property-borrow (req.uri.host leaked a SipUri per request, compiled).
        uri = req.uri
        if not domains.is_local_domain(uri.host):
            inc.respond(403, "Forbidden (relaying not allowed)")
            return
        to = req.to
        to_uri = to.uri
        if not to_uri.is_sip or not domains.is_local_domain(to_uri.host):
            inc.respond(403, "Forbidden (not a local domain)")
            return
        peer = inc.peer
        username: str | None = None
        if self.gate.trunk_for(peer.host) is None:
            username = self.gate.check(inc, proxy=False)
            if username is None:
                return
        aor_user = to_uri.user_unescaped
        if aor_user is None or not self._may_register(aor_user, username):
            inc.respond(403, "Forbidden (AOR not allowed for this user)")
            return
        # Counted before any contact is parsed: more than the AOR may hold can never be
        # stored, so the request is refused whole (as Asterisk does; docs/registrar.md).
        if len(req.headers.get_all("contact")) > self.settings.max_contacts_per_aor:
            inc.respond(403, "Forbidden (too many contacts)")
            return
        contacts = req.contacts
        expires_header = req.expires
        aor = to_uri.aor
        now = self.clock()
        call_id = req.call_id
        cseq_header = req.cseq
        cseq = cseq_header.number
        if contacts is None:
            self._wildcard(inc, aor, expires_header, call_id, cseq, now)
            return
        settings = self.settings
        path = req.headers.get_all("path")
        user_agent = req.headers.get("user-agent") or ""
        changes: list[_Change] = []
        outbound = False
        for contact in contacts:
            expires = contact.expires
            if expires is None:
                expires = expires_header if expires_header is not None else settings.default_expires
            if 0 < expires < settings.min_expires:
                inc.respond(423, headers=[("Min-Expires", str(settings.min_expires))])
                return
            expires = min(expires, settings.max_expires)
            instance, reg_id = self._outbound_params(contact)
            conn_id = None
            if reg_id is not None and instance is not None:
                if peer.transport not in OUTBOUND_TRANSPORTS:
                    reg_id = None  # RFC 5626 over UDP needs STUN keep-alives, which we lack
                elif _via_count(req) > 1 and not any(p.uri.has_param("ob") for p in req.name_addrs("path")):
                    inc.respond(439)
                    return
                else:
                    conn_id = peer.conn_id
                    outbound = True
            binding = Binding(
                aor=aor,
                contact=str(contact.uri),
                expires_at=now + expires,
                q=contact.q,
                call_id=call_id,
                cseq=cseq,
                instance=instance,
                reg_id=reg_id,
                path=path,
                transport=peer.transport,
                source_host=peer.host,
                source_port=peer.port,
                conn_id=conn_id,
                user_agent=user_agent,
                registered_at=now,
            )
            existing = self.location.get(aor, binding.key)
            if existing is not None:
                if existing.call_id == call_id and cseq <= existing.cseq:
                    inc.respond(500, "Server Internal Error (out-of-order CSeq)", headers=[("Retry-After", "1")])
                    return
                binding.registered_at = existing.registered_at
            changes.append(_Change(binding, expires == 0))
        for change in changes:
            if change.remove:
                self.location.remove(aor, change.binding.key)
            else:
                self.location.put(change.binding)
        self._enforce_limit(aor, {c.binding.key for c in changes if not c.remove}, now)
        self._ok(inc, aor, now, path if "path" in req.option_tags("supported") else [], outbound)

    def _may_register(self, aor_user: str, username: str | None) -> bool:
        """Users may register their own extensions; trunks (no username) any existing local AOR."""
        if username is not None:
            return self.users.owns_aor_user(aor_user, username)
        return (self.users.by_extension(aor_user) or self.users.by_number(aor_user)) is not None

    @staticmethod
    def _outbound_params(contact: NameAddr) -> tuple[str | None, int | None]:
        instance = contact.param("+sip.instance") or None
        reg_id_text = contact.param("reg-id")
        if reg_id_text is None:
            return instance, None
        if not reg_id_text.isascii() or not reg_id_text.isdigit() or len(reg_id_text) > 10:
            raise SipParseError("Malformed reg-id")
        return instance, int(reg_id_text)

    def _wildcard(self, inc: Incoming, aor: str, expires: int | None, call_id: str, cseq: int, now: float) -> None:
        """`Contact: *` removes every binding, and only with Expires: 0 (§10.2.2)."""
        if expires != 0:
            inc.respond(400, "Bad Request (Contact: * requires Expires: 0)")
            return
        for binding in self.location.bindings(aor, now):
            if binding.call_id == call_id and cseq <= binding.cseq:
                inc.respond(500, "Server Internal Error (out-of-order CSeq)", headers=[("Retry-After", "1")])
                return
        self.location.remove_aor(aor)
        self._ok(inc, aor, now, [], False)

    def _enforce_limit(self, aor: str, keep: set[object], now: float) -> None:
        """Over max_contacts_per_aor, the least recently refreshed other bindings go.

        Rejecting instead would lock out a phone that re-registers with a new Call-ID
        after each reboot until its stale bindings expire.  (One request carrying more
        contacts than the limit never gets here: it is refused whole in `handle`.)
        """
        bindings = self.location.bindings(aor, now)
        excess = len(bindings) - self.settings.max_contacts_per_aor
        if excess <= 0:
            return
        others = sorted((b for b in bindings if b.key not in keep), key=lambda b: b.expires_at)
        for binding in others[:excess]:
            self.location.remove(aor, binding.key, "replaced")

    def _ok(self, inc: Incoming, aor: str, now: float, path: list[str], outbound: bool) -> None:
        headers: list[tuple[str, str]] = []
        for b in self.location.bindings(aor, now):
            value = f"<{b.contact}>;expires={max(0, int(b.expires_at - now + 0.5))}"
            if b.q != 1.0:
                value += f";q={b.q:g}"
            if b.instance is not None:
                value += f";+sip.instance={b.instance}"
            if b.reg_id is not None:
                value += f";reg-id={b.reg_id}"
            headers.append(("Contact", value))
        headers.extend(("Path", p) for p in path)
        if outbound:
            headers.append(("Require", "outbound"))
        headers.append(("Date", self._date(now)))
        inc.respond(200, headers=headers)


def _via_count(req: Request) -> int:
    # Not len(req.vias): a property of another compiled module read where mypyc borrows
    # (tests/native_shapes.py, property-borrow).
    vias = req.vias
    return len(vias)
