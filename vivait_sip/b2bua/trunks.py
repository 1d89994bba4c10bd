"""SIP trunks (SPEC §1: the PRI gateway, or a carrier): where they are, whether they are
up, what they may carry, and who a call on them claims to be.

`TrunkManager` drives, for every `b2bua.trunks[]` entry, the pure `TrunkState`
(trunk_state.py): it resolves the trunk's host (RFC 3263, `Host.resolve`), sends the
OPTIONS health checks and the REGISTERs through `Host.sip` as the B2BUA feature
(`owner`), reads their outcome from the feature's UA events (`on_ua_event`), and keeps
the count of calls on each trunk for the call code (`candidates`, `acquire`, `release`,
`report_failure`).  One asyncio task sleeps until the next thing any trunk has due.

`outgoing_identity` and `inbound_identity` are the caller-ID rules: presentation per user
and per trunk, P-Asserted-Identity (RFC 3325) and privacy (RFC 3323).

docs/b2bua.md ("Trunks") describes the states and the config keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..contract import Host, mint_call_id
from ..sip.auth import Credentials
from ..sip.errors import SipParseError
from ..sip.message import Request, Response
from ..sip.peer import Peer
from ..sip.ua import RequestFailed, ResponseReceived, UaError, UaEvent
from ..sip.uri import SipUri, parse_name_addr, parse_uri
from .config import TrunkConfig
from .slots import LocalSlots, Slots
from .trunk_state import DOWN, TrunkState, is_ip

log = logging.getLogger("vivait_sip.b2bua.trunks")

# stop(): how long the un-REGISTERs (Expires: 0, challenged once) may take.
UNREGISTER_WAIT_S = 2.0
# Features start before the SIP listeners open (`Application.start`): the first OPTIONS
# and REGISTER wait this long, or they would leave from no socket and fail.
START_DELAY_S = 1.0
# From user of our OPTIONS: any name does; this one says who pings.
PROBE_USER = "vivait-sip"
ANONYMOUS_FROM = '"Anonymous" <sip:anonymous@anonymous.invalid>'  # RFC 3323 §4.1.1.3
# Privacy values that withhold the caller's identity (RFC 3323 §4.2, RFC 3325 §7);
# "session" is about media and "critical" only qualifies the others.
_IDENTITY_PRIVACY = frozenset(("id", "user", "header"))
# Characters a telephone number may keep unescaped in a SIP user part (RFC 3261 §25.1).
_USER_SAFE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/]")


@dataclass(frozen=True, slots=True)
class TrunkRoute:
    """Everything the call code needs to place a leg on a trunk."""

    name: str
    destinations: tuple[Peer, ...]  # RFC 3263 order, for the UA's failover
    request_uri_host: str  # host[:port] for the Request-URI (the trunk's host as configured)
    credentials: Credentials | None  # for a 401/407 from the far end
    from_domain: str  # the From host: `from_domain`, else our account's domain, else our address


class _Trunk:
    """The driver's side of one trunk: its addresses and its requests in flight."""

    __slots__ = ("binding", "destinations", "probe_id", "resolver", "state")

    def __init__(self, state: TrunkState) -> None:
        self.state = state
        self.destinations: tuple[Peer, ...] = ()
        self.resolver: asyncio.Task[None] | None = None
        self.probe_id: int | None = None  # the OPTIONS whose answer counts (older ones are late)
        self.binding: tuple[tuple[Peer, ...], str] | None = None  # where we registered, our Contact

    @property
    def config(self) -> TrunkConfig:
        return self.state.config


class TrunkManager:
    """The trunks of the B2BUA: health, registration, calls, addresses."""

    def __init__(self, trunks: list[TrunkConfig], host: Host, owner: str) -> None:
        self.host = host
        self.owner = owner
        self.slots: Slots = LocalSlots()  # the feature swaps in the workers' shared file (use_slots)
        now = self._now()
        self._trunks: dict[str, _Trunk] = {t.name: _Trunk(self._state(t, now)) for t in trunks}
        self._networks = _networks(trunks)
        # request id → (trunk, "options" | "register" | "unregister"); a removed trunk's
        # requests stay here until their final event, so it is still recognised as ours.
        self._requests: dict[int, tuple[_Trunk, str]] = {}
        self._early: list[UaEvent] = []  # outcomes reported before send_request returned
        self._sending = False
        self._wake = asyncio.Event()
        self._unregistered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _state(self, config: TrunkConfig, now: float) -> TrunkState:
        """Every worker checks a trunk's health itself (no messages, and its failover
        sees its own failures); only the primary registers."""
        return TrunkState(config, now, register=self.host.is_primary, slots=self.slots)

    @staticmethod
    def _now() -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:  # built outside the loop (a feature's __init__)
            return 0.0

    # ---- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Resolve every trunk (bounded by the resolver's own timeouts), then probe and
        register in the background."""
        now = self._now()
        for trunk in self._trunks.values():  # the constructor's clock may have been 0
            trunk.state = self._state(trunk.config, now)
            trunk.state.resolving()
        await asyncio.gather(*(self._resolve(t) for t in self._trunks.values()))
        self._task = asyncio.create_task(self._run(), name="trunks")

    async def stop(self) -> None:
        """Stop probing; un-REGISTER (Expires: 0) and wait for the answers, briefly."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # (not `await task`: our own cancellation must not be swallowed)
            self._task = None
        self._unregistered.clear()
        for trunk in self._trunks.values():
            self._retire(trunk)
        if any(kind == "unregister" for _, kind in self._requests.values()):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(UNREGISTER_WAIT_S):
                    await self._unregistered.wait()

    def reload(self, trunks: list[TrunkConfig]) -> None:
        """Apply a new trunk list: an unchanged trunk keeps everything; a changed one keeps
        its calls and counters, and its health and registration unless its address or
        account changed; new trunks start; removed ones are un-registered and forgotten
        (their calls in progress just end, and `release` gives their slots back)."""
        now = self._now()
        wanted = {t.name: t for t in trunks}
        for name in [n for n in self._trunks if n not in wanted]:
            self._retire(self._trunks.pop(name))
        for name, config in wanted.items():
            current = self._trunks.get(name)
            if current is None:
                self._trunks[name] = _Trunk(self._state(config, now))
            elif config != current.config or config.model_fields_set != current.config.model_fields_set:
                if current.state.same_address(config):
                    current.state.reconfigure(config, now)
                else:
                    self._retire(current)
                    fresh = self._state(config, now)
                    fresh.counters = current.state.counters  # its calls are in the slots, by name
                    self._trunks[name] = _Trunk(fresh)
        self._networks = _networks(trunks)
        self._wake.set()

    # ---- the loop -----------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(START_DELAY_S)
        while True:
            self._wake.clear()  # before servicing: an event arriving meanwhile wakes us again
            now = loop.time()
            for trunk in list(self._trunks.values()):
                self._service(trunk, now)
            due = [w for t in self._trunks.values() if (w := t.state.next_wakeup()) is not None]
            timeout = max(0.0, min(due) - loop.time()) if due else None
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that arrives
            # just as the event is set, and stop() would wait for the next timer
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _service(self, trunk: _Trunk, now: float) -> None:
        """Do what is due for one trunk."""
        state = trunk.state
        before = state.health.state
        if state.resolve_due(now) and trunk.resolver is None:
            state.resolving()
            trunk.resolver = asyncio.create_task(self._resolve(trunk), name=f"trunk-resolve-{trunk.config.name}")
        state.expire(now)
        if state.probe_due(now):
            trunk.probe_id = None  # an unanswered one is late from now on
            if state.probe(now, bool(trunk.destinations)) and self._send(trunk, "OPTIONS", "options") is None:
                state.probe_answered(False, True, now)
        registration = state.registration
        if registration is not None and registration.due(now) and not state.locating:
            if not trunk.destinations:
                registration.failed(503, now)
            else:
                registration.sent()
                contact = self.host.sip.contact_for(trunk.destinations[0], _username(trunk.config))
                trunk.binding = (trunk.destinations, contact)
                if self._send(trunk, "REGISTER", "register", contact, registration.expires) is None:
                    registration.failed(503, now)
        _log_change(trunk.config.name, before, state)

    async def _resolve(self, trunk: _Trunk) -> None:
        """RFC 3263 next hops for the trunk (`Host.resolve`); [] keeps the old ones."""
        config = trunk.config
        try:
            found = await self.host.resolve(parse_uri(_probe_uri(config)))
        except SipParseError:  # a host no URI can carry: never reachable
            found = []
        finally:
            trunk.resolver = None
        now = self._now()
        if found:
            trunk.destinations = tuple(found)
        elif not trunk.destinations:
            log.info("event=trunk_unresolved trunk=%s host=%s", config.name, config.host)
        trunk.state.resolved(bool(found), now)
        self._wake.set()

    # ---- requests -----------------------------------------------------------------------
    def _send(
        self, trunk: _Trunk, method: str, kind: str, contact: str = "", expires: int = 0,
        destinations: tuple[Peer, ...] | None = None,
    ) -> int | None:
        """OPTIONS, or REGISTER of `contact` for `expires` seconds, to the trunk; the
        request id, or None when the UA refused it."""
        config = trunk.config
        sip = self.host.sip
        destinations = destinations or trunk.destinations
        headers: list[tuple[str, str]] = []
        if method == "REGISTER":
            aor = f"<sip:{_username(config)}@{config.from_domain or _uri_host(config.host)}>"
            from_, to = aor, aor
            headers += [("Contact", contact), ("Expires", str(expires))]
        else:
            local_host, _ = sip.local_address(destinations[0])
            from_ = f"<sip:{PROBE_USER}@{config.from_domain or _uri_host(local_host)}>"
            to = f"<sip:{_request_uri_host(config)}>"
        self._sending = True
        try:
            request_id = sip.send_request(
                method,
                f"sip:{_request_uri_host(config)}",
                owner=self.owner,
                destinations=destinations,
                from_=from_,
                to=to,
                call_id=mint_call_id(self.host.worker_index, self.host.worker_count),
                headers=headers,
                credentials=_credentials(config),
            )
        except UaError as exc:  # the transaction table is full: try again next time
            log.info("event=trunk_request_refused trunk=%s method=%s error=%s", config.name, method, str(exc))
            return None
        finally:
            self._sending = False
        self._requests[request_id] = (trunk, kind)
        if kind == "options":
            trunk.probe_id = request_id
        early, self._early = self._early, []
        for event in early:
            self.on_ua_event(event)
        return request_id

    def _retire(self, trunk: _Trunk) -> None:
        """The trunk is going away (stop, removed or readdressed by a reload): stop
        resolving it and, when we hold (or may hold: a REGISTER in flight) a binding
        there, send Expires: 0."""
        if trunk.resolver is not None:
            trunk.resolver.cancel()
        registration = trunk.state.registration
        if registration is None or trunk.binding is None:
            return
        if not (registration.in_flight or registration.registered(self._now())):
            return
        destinations, contact = trunk.binding
        self._send(trunk, "REGISTER", "unregister", contact, 0, destinations)
        trunk.state.registration = None  # nothing more to refresh
        trunk.binding = None

    # ---- UA events ------------------------------------------------------------------------
    def on_ua_event(self, event: UaEvent) -> bool:
        """Consume the outcome of one of our OPTIONS or REGISTERs; False for anything else
        (the call code's events)."""
        if event.owner != self.owner or not isinstance(event, ResponseReceived | RequestFailed):
            return False
        entry = self._requests.get(event.request_id)
        if entry is None:
            # During our own send_request the UA can report a transport failure before
            # the id is returned; the queue was empty when we called it (every entry
            # point drains it), so such an event can only be about our request.
            if self._sending:
                self._early.append(event)
                return True
            return False
        if isinstance(event, ResponseReceived) and event.response.status < 200:
            return True
        del self._requests[event.request_id]
        trunk, kind = entry
        now = self._now()
        status = event.response.status if isinstance(event, ResponseReceived) else event.status
        if isinstance(event, RequestFailed):
            trunk.state.resolve_soon(now)
        if kind == "options":
            current = event.request_id == trunk.probe_id
            if current:
                trunk.probe_id = None
            before = trunk.state.health.state
            trunk.state.probe_answered(_alive(status), current, now)
            _log_change(trunk.config.name, before, trunk.state)
        elif kind == "register":
            self._registered(trunk, event, status, now)
        else:
            trunk.state.count("unregistered" if 200 <= status < 300 else "unregister_failed")
            if not any(k == "unregister" for _, k in self._requests.values()):
                self._unregistered.set()
        self._wake.set()
        return True

    def _registered(self, trunk: _Trunk, event: ResponseReceived | RequestFailed, status: int, now: float) -> None:
        registration = trunk.state.registration
        if registration is None:  # un-registered meanwhile (reload, stop)
            return
        was = registration.registered(now)
        if isinstance(event, ResponseReceived) and 200 <= status < 300:
            contact = trunk.binding[1] if trunk.binding is not None else ""
            registration.succeeded(_granted(event.response, contact, registration.expires), now)
            trunk.state.count("registrations_ok")
        else:
            min_expires = event.response.headers.get("min-expires") if isinstance(event, ResponseReceived) else None
            registration.failed(status, now, int(min_expires) if min_expires and min_expires.isdigit() else None)
            trunk.state.count("registrations_failed")
        if registration.registered(now) != was or registration.state == "failed":
            log.info(
                "event=trunk_registration trunk=%s state=%s status=%d", trunk.config.name, registration.state, status,
            )

    # ---- what the call code asks ----------------------------------------------------------
    def trunk_for_source(self, host: str) -> str | None:
        """The trunk whose `networks` hold `host` (an inbound request's source address):
        its calls come from that trunk, trusted by address (no digest)."""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 peer on a dual-stack socket
        for network, name in self._networks:
            if address in network:
                return name
        return None

    def candidates(self, names: Sequence[str]) -> list[TrunkRoute]:
        """The named trunks that can take a call now, in the order given: not down, under
        `max_calls`, with an address.  The call code tries them in turn (failover on 503,
        408 or a transport failure: `report_failure`)."""
        routes: list[TrunkRoute] = []
        for name in names:
            trunk = self._trunks.get(name)
            if trunk is None or not trunk.destinations or not trunk.state.available:
                continue
            config = trunk.config
            routes.append(TrunkRoute(
                name=name,
                destinations=trunk.destinations,
                request_uri_host=_request_uri_host(config),
                credentials=_credentials(config),
                from_domain=self._from_domain(trunk),
            ))
        return routes

    def _from_domain(self, trunk: _Trunk) -> str:
        """`from_domain`; else, for a trunk we hold an account on, its host (our AOR's
        domain); else our own address towards it."""
        config = trunk.config
        if config.from_domain:
            return config.from_domain
        if config.auth is not None:
            return _uri_host(config.host)
        return _uri_host(self.host.sip.local_address(trunk.destinations[0])[0])

    def acquire(self, name: str) -> bool:
        """Count a call on the trunk; False when it is at `max_calls` (or unknown)."""
        trunk = self._trunks.get(name)
        return trunk is not None and trunk.state.acquire()

    def release(self, name: str) -> None:
        """A call `acquire` counted has ended (on a trunk maybe removed since)."""
        self.slots.give_back(name)

    def use_slots(self, slots: Slots) -> None:
        """Count calls in `slots` (the workers' shared file) from now on; before any call."""
        self.slots = slots
        for trunk in self._trunks.values():
            trunk.state.slots = slots

    def report_failure(self, name: str, status: int) -> None:
        """A call on the trunk got 503, 408 or a transport failure: counts towards down
        like a failed OPTIONS (an answered OPTIONS resets the count)."""
        trunk = self._trunks.get(name)
        if trunk is None:
            return
        if trunk.state.call_failed(status, self._now()):
            log.info("event=trunk_state trunk=%s state=down why=call_failures status=%d", name, status)
            self._wake.set()  # a DNS name is looked up again

    # ---- status -------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        """Per trunk: health, registration, calls, addresses and counters (`ctl status`)."""
        now = self._now()
        out: dict[str, object] = {}
        for name, trunk in self._trunks.items():
            state = trunk.state
            registration = state.registration
            out[name] = {
                "state": state.health.state,
                "since_s": round(now - state.health.since, 1),
                "registered": registration is not None and registration.registered(now),
                "registration": None if registration is None else {
                    "state": registration.state,
                    "expires_in_s": None if registration.expires_at is None else round(max(0.0, registration.expires_at - now), 1),
                    "last_status": registration.last_status,
                },
                "calls": state.calls,
                "max_calls": state.max_calls,
                "destinations": [str(p) for p in trunk.destinations],
                "counters": dict(sorted(state.counters.items())),
            }
        return out

    def metrics(self) -> list[str]:
        """Prometheus lines for every trunk."""
        now = self._now()
        lines = [
            "# HELP vivait_trunk_up 1 when the trunk takes calls (up, or not known to be down), 0 when down.",
            "# TYPE vivait_trunk_up gauge",
        ]
        trunks = sorted(self._trunks.items())
        lines += [f'vivait_trunk_up{{trunk="{n}"}} {int(t.state.health.state != DOWN)}' for n, t in trunks]
        lines += [
            "# HELP vivait_trunk_state Trunk health state (one series per state, 1 for the current one).",
            "# TYPE vivait_trunk_state gauge",
        ]
        for name, trunk in trunks:
            for state in ("up", "down", "unknown"):
                lines.append(f'vivait_trunk_state{{trunk="{name}",state="{state}"}} {int(trunk.state.health.state == state)}')
        lines += [
            "# HELP vivait_trunk_registered 1 while the far end holds our registration.",
            "# TYPE vivait_trunk_registered gauge",
        ]
        for name, trunk in trunks:
            registration = trunk.state.registration
            if registration is not None:
                lines.append(f'vivait_trunk_registered{{trunk="{name}"}} {int(registration.registered(now))}')
        lines += [
            "# HELP vivait_trunk_calls Calls in progress on the trunk.",
            "# TYPE vivait_trunk_calls gauge",
        ]
        lines += [f'vivait_trunk_calls{{trunk="{n}"}} {t.state.calls}' for n, t in trunks]
        lines += [
            "# HELP vivait_trunk_calls_total Calls offered to the trunk: placed, refused at max_calls (limit), failed (503, 408, transport).",
            "# TYPE vivait_trunk_calls_total counter",
        ]
        for name, trunk in trunks:
            counters = trunk.state.counters
            for result in ("placed", "limit", "failed"):
                lines.append(f'vivait_trunk_calls_total{{trunk="{name}",result="{result}"}} {counters.get("calls_" + result, 0)}')
        lines += [
            "# HELP vivait_trunk_options_total OPTIONS health checks by outcome.",
            "# TYPE vivait_trunk_options_total counter",
        ]
        for name, trunk in trunks:
            for result in ("ok", "failed"):
                lines.append(f'vivait_trunk_options_total{{trunk="{name}",result="{result}"}} {trunk.state.counters.get("options_" + result, 0)}')
        return lines


# ---- helpers --------------------------------------------------------------------------------


def _log_change(name: str, before: str, state: TrunkState) -> None:
    if state.health.state != before:
        log.info("event=trunk_state trunk=%s state=%s was=%s", name, state.health.state, before)


def _networks(trunks: list[TrunkConfig]) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]:
    """(network, trunk) pairs, most specific first: overlapping networks go to the
    trunk with the narrower one."""
    pairs = [(ipaddress.ip_network(n), t.name) for t in trunks for n in t.networks]
    return sorted(pairs, key=lambda pair: -pair[0].prefixlen)


def _username(config: TrunkConfig) -> str:
    assert config.auth is not None  # TrunkConfig: registration needs auth
    return config.auth.username


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _request_uri_host(config: TrunkConfig) -> str:
    host = _uri_host(config.host)
    return host if config.port is None else f"{host}:{config.port}"


def _probe_uri(config: TrunkConfig) -> str:
    """The URI whose RFC 3263 resolution gives the trunk's next hops.  A transport set in
    the config is forced; left out, a DNS name's NAPTR/SRV records may choose it."""
    uri = f"sip:{_request_uri_host(config)}"
    explicit = "transport" in config.model_fields_set or is_ip(config.host) or config.port is not None
    return f"{uri};transport={config.transport}" if explicit else uri


def _credentials(config: TrunkConfig) -> Credentials | None:
    auth = config.auth
    return None if auth is None else Credentials(auth.username, auth.password, realm=auth.realm)


def _alive(status: int) -> bool:
    """An answer to OPTIONS proves the far end alive, unless it is a timeout or a 5xx
    (503: out of service or overloaded; 502/504: a proxy could not reach it)."""
    return status != 408 and not 500 <= status < 600


def _granted(response: Response, contact: str, asked: int) -> int:
    """The expiry a 2xx to REGISTER granted our binding: its Contact's `expires`
    (RFC 3261 §10.2.4), else the Expires header, else what we asked for."""
    try:
        ours = parse_name_addr(contact).uri
        for item in response.contacts or []:
            uri = item.uri
            if (uri.user, uri.host, uri.port) == (ours.user, ours.host, ours.port) and item.expires is not None:
                return item.expires
        header = response.expires
    except SipParseError:
        return asked
    return header if header is not None else asked


# ---- caller identity ---------------------------------------------------------------------


def outgoing_identity(
    trunk: TrunkConfig | None,
    caller_number: str,
    display: str | None,
    user_caller_id: str | None,
    privacy: bool,
    local_host: str,
) -> tuple[str, list[tuple[str, str]]]:
    """The From header value and the extra headers for an outbound leg.

    * Presented number: towards a trunk, the user's own caller ID (`user_caller_id`: the
      call code passes a dialplan rule's `caller_id` here when it sets one), else the
      trunk's `caller_id`, else the caller's number; towards a phone (`trunk` None) the
      caller's own number (an outside caller ID means nothing inside).
    * From host: the trunk's `from_domain`, else `local_host` (pass `TrunkRoute.from_domain`).
    * P-Asserted-Identity with the presented number and display name only towards a trunk
      in our trust domain (`trust_pai`, RFC 3325 §5: trusted both ways): the PRI gateway
      maps it to the calling party number and presentation.
    * Privacy (the caller's `privacy`, or the trunk's): From becomes the RFC 3323 anonymous
      one and `Privacy: id` asks the trusted next hop to withhold the asserted identity
      (on a PRI: presentation restricted), which it still gets for screening and billing.
      Towards an untrusted trunk no identity leaves at all.
    """
    private = privacy or (trunk is not None and trunk.privacy)
    number = caller_number if trunk is None else (user_caller_id or trunk.caller_id or caller_number)
    domain = trunk.from_domain if trunk is not None and trunk.from_domain else local_host
    identity = f"<sip:{_escape_user(number)}@{_uri_host(domain)}>"
    if display:
        identity = f"{_quote_display(display)} {identity}"
    headers: list[tuple[str, str]] = []
    if trunk is not None and trunk.trust_pai:
        headers.append(("P-Asserted-Identity", identity))
    if not private:
        return identity, headers
    headers.append(("Privacy", "id"))
    return ANONYMOUS_FROM, headers


def inbound_identity(request: Request, trunk: TrunkConfig | None) -> tuple[str | None, bool]:
    """The caller's number and whether it is private, for a request from `trunk` (None:
    not from a trunk).

    The number is the first P-Asserted-Identity's only from a trunk with `trust_pai`
    (RFC 3325 §5: from anyone else it is ignored), else the From user; an anonymous From
    gives None.  Private: a `Privacy` of id, user or header (RFC 3323), or an anonymous
    From; the number is still returned (for routing and the CDR), not to be presented.
    """
    values = {v.strip(" \t").lower() for h in request.headers.get_all("privacy") for v in re.split(r"[;,]", h)}
    private = bool(values & _IDENTITY_PRIVACY)
    if trunk is not None and trunk.trust_pai:
        try:
            asserted = request.name_addrs("p-asserted-identity")
        except SipParseError:
            asserted = []
        for item in asserted:
            number = _number_of(item.uri)
            if number is not None:
                return number, private
    try:
        caller = request.from_.uri
    except SipParseError:
        return None, True
    number = _number_of(caller)
    if number is None or caller.host == "anonymous.invalid":
        return None, True
    return number, private


def _number_of(uri: SipUri) -> str | None:
    """The number in a sip/sips user part or a tel URI; None when anonymous or absent."""
    if uri.scheme == "tel" and uri.opaque:
        number: str | None = uri.opaque.split(";", 1)[0]
    elif uri.is_sip:
        number = uri.user_unescaped
        if number is not None:
            number = number.split(";", 1)[0]  # user parameters (;npdi, ;rn=...)
    else:
        number = None
    if not number or number.lower() == "anonymous":
        return None
    return number


def _escape_user(number: str) -> str:
    return "".join(c if _USER_SAFE.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in number)


def _quote_display(display: str) -> str:
    clean = "".join(c for c in display if c >= " " and c != "\x7f")
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'
