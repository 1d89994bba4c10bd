"""Authentication failure counters and fail2ban-like source bans.

Policy (docs/registrar.md "Security", docs/security.md):

* A failed attempt is a well-formed response, for our realm, to a nonce we issued to
  that same source address, whose password was tested and was wrong (or whose user is
  unknown).  Only that counts against the source IP and the username it claimed.
  Nothing else does, because nothing else tests a password and anything else can be
  sent with a forged UDP source address: no credentials (the normal first leg of a
  challenge), unparsable credentials, another realm, a nonce we did not issue or
  issued to another address (a spoofer never sees the victim's challenges), a replayed
  nonce-count.  Those are re-challenged.
* `ban_failures` failures from one source IP within `ban_window_s` ban that IP for
  `ban_duration_s`.  A banned source gets `403 Forbidden` for every request: a final
  response stops the retransmissions that silence would cause, and costs one datagram.
  The ban is logged once as `event=auth_ban source=IP failures=N until=ISO8601`.
* With worker processes, worker 0 decides and logs bans for all of them; a worker that
  verifies credentials also counts its own failures and refuses a source itself as soon
  as they reach the threshold, without waiting for worker 0's broadcast.
* Sources inside `security.trusted_networks` are never banned (they are still
  authenticated: trust here only means "cannot be locked out").
* Per-user counters are only logged and exposed in `status()`; they never lock the
  user out, because a global per-user lockout would let anyone disable any phone by
  sending bad passwords in its name.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from ..config import SecurityConfig
from ..logs import throttle
from ..sip.incoming import Incoming
from ..sip.message import Request
from .digest import (
    Authenticator,
    AuthOutcome,
    DigestCredentials,
    DigestParseError,
    NonceStatus,
    parse_credentials,
)

log = logging.getLogger("vivait_sip.registrar.security")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Iterable[str]) -> list[Network]:
    """CIDR, ip/mask or bare addresses, as the config accepts them."""
    return [ipaddress.ip_network(item.replace(" ", ""), strict=False) for item in items]


class NetworkSet:
    """Membership test for a list of networks, cached per address (sources repeat)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = parse_networks(networks)
        self._cache: dict[str, bool] = {}

    def __contains__(self, host: str) -> bool:
        hit = self._cache.get(host)
        if hit is None:
            try:
                addr = ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                hit = False
            else:
                hit = any(addr in net for net in self.networks)
            if len(self._cache) > 65536:
                self._cache = {}  # not clear(): see Headers._changed in sip/message.py
            self._cache[host] = hit
        return hit

    def __bool__(self) -> bool:
        return bool(self.networks)


class SecurityMonitor:
    """Counts failures, bans sources, answers "is this source banned?" in O(1)."""

    def __init__(self, config: SecurityConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ip_failures: dict[str, deque[float]] = {}
        self._user_failures: dict[str, int] = {}
        self._bans: dict[str, float] = {}  # ip -> monotonic end of ban
        self.bans_total = 0
        self.failures_total = 0
        # Worker processes (vivait_sip/workers.py): worker 0 counts every worker's failures
        # and tells the others about the bans it decides; the others report theirs to it
        # through this sink and also count them locally (see `record_failure`).
        self.failure_sink: Callable[[str, str | None], None] | None = None
        self.on_ban: Callable[[str, float], None] = lambda ip, seconds: None
        self.on_unban: Callable[[str], None] = lambda ip: None
        self.reconfigure(config)

    def reconfigure(self, config: SecurityConfig) -> None:
        """Apply new thresholds and trusted networks (reload); running bans stay."""
        self.config = config
        self.trusted = NetworkSet(config.trusted_networks)
        for ip in [ip for ip in self._bans if ip in self.trusted]:
            del self._bans[ip]

    def is_banned(self, ip: str) -> bool:
        if not self._bans:
            return False
        until = self._bans.get(ip)
        if until is None:
            return False
        if until <= self._clock():
            del self._bans[ip]
            log.info("event=auth_unban source=%s", ip)
            return False
        return True

    def record_failure(self, ip: str, username: str | None) -> None:
        """One failed authentication from `ip` claiming `username`."""
        now = self._clock()
        if self.failure_sink is not None:
            # Worker 0 decides, logs and broadcasts the ban.  Counting here too means a
            # pipelined burst verified by this worker stops at the threshold, not when
            # the broadcast arrives: the ban is applied locally, silently (worker 0's
            # count includes these failures, so it bans and logs at the same moment).
            self.failure_sink(ip, username)
            if ip not in self.trusted and self._count(ip, now) >= self.config.ban_failures:
                self._bans[ip] = now + self.config.ban_duration_s
                del self._ip_failures[ip]
                log.debug("event=worker_local_ban source=%s", ip)
            return
        self.failures_total += 1
        if username:
            count = self._user_failures.get(username, 0) + 1
            if len(self._user_failures) >= 100_000 and username not in self._user_failures:
                self._user_failures = {}  # bounded: attackers can invent usernames
            self._user_failures[username] = count
            throttle.log(log, logging.INFO, "auth_failure", "event=auth_failure source=%s user=%s user_failures=%d", ip, username, count)
        if ip in self.trusted:
            return
        failures = self._count(ip, now)
        if failures >= self.config.ban_failures and ip not in self._bans:
            until = now + self.config.ban_duration_s
            self._bans[ip] = until
            self.bans_total += 1
            wall_until = datetime.fromtimestamp(time.time() + self.config.ban_duration_s, UTC)
            log.warning(
                "event=auth_ban source=%s failures=%d until=%s",
                ip,
                failures,
                wall_until.isoformat(timespec="seconds"),
            )
            del self._ip_failures[ip]
            self.on_ban(ip, self.config.ban_duration_s)

    def _count(self, ip: str, now: float) -> int:
        """Add one failure of `ip` at `now` to its window; the failures now in the window."""
        window = self._ip_failures.get(ip)
        if window is None:
            if len(self._ip_failures) >= 100_000:
                self._prune(now)
            window = deque()
            self._ip_failures[ip] = window
        window.append(now)
        cutoff = now - self.config.ban_window_s
        while window and window[0] < cutoff:
            window.popleft()
        return len(window)

    def apply_ban(self, ip: str, seconds: float) -> None:
        """A ban decided by another worker: enforce it here too (logged where decided)."""
        self._bans[ip] = self._clock() + seconds

    def lift_ban(self, ip: str) -> None:
        """An operator's unban, relayed from worker 0: the local count starts afresh too."""
        self._bans.pop(ip, None)
        self._ip_failures.pop(ip, None)

    def _prune(self, now: float) -> None:
        cutoff = now - self.config.ban_window_s
        for ip in [ip for ip, w in self._ip_failures.items() if not w or w[-1] < cutoff]:
            del self._ip_failures[ip]

    def unban(self, ip: str) -> bool:
        """Lift a ban at once (an operator's `ctl unban`); its failure window starts afresh."""
        self._ip_failures.pop(ip, None)
        if self._bans.pop(ip, None) is None:
            return False
        self.on_unban(ip)
        log.warning("event=auth_unban source=%s by=operator", ip)
        return True

    def banned(self) -> dict[str, float]:
        """Banned sources and the seconds each ban has left."""
        now = self._clock()
        return {ip: round(until - now, 1) for ip, until in self._bans.items() if until > now}

    def user_failures(self) -> dict[str, int]:
        return dict(self._user_failures)

    def status(self) -> dict[str, object]:
        return {
            "auth_failures": self.failures_total,
            "bans_total": self.bans_total,
            "banned_sources": self.banned(),
        }


class AuthGate:
    """Digest challenge/verify for one request, shared by REGISTER (401) and the guards (407).

    Returns the authenticated identity, or None after having answered the request.
    Every failure answer is a fresh challenge built the same way whatever went wrong,
    so a response never says whether the user exists (enumeration).
    """

    def __init__(self, authenticator: Authenticator, monitor: SecurityMonitor) -> None:
        self.authenticator = authenticator
        self.monitor = monitor
        self.trunks: list[tuple[str, NetworkSet]] = []
        # With worker processes: this worker's index, and the worker owning a request.
        # A nonce is issued for the worker that will verify the answer and is accepted
        # only there, so its nonce-count lives in one place and a replay with another
        # Call-ID (another owner) is re-challenged instead of slipping through.
        self.worker_index: int | None = None
        self.owner_of: Callable[[Request], int] = lambda req: 0

    def set_trunks(self, trunks: Iterable[tuple[str, Iterable[str]]]) -> None:
        self.trunks = [(name, NetworkSet(nets)) for name, nets in trunks]

    def trunk_for(self, host: str) -> str | None:
        """Name of the trunk whose networks contain `host`: trusted without digest."""
        for name, nets in self.trunks:
            if host in nets:
                return name
        return None

    def credentials(self, req: Request, *, proxy: bool) -> DigestCredentials | None:
        """The request's first parsable Digest credentials for our realm, if any."""
        realm = self.authenticator.realm
        for value in req.headers.get_all("proxy-authorization" if proxy else "authorization"):
            try:
                parsed = parse_credentials(value)
            except DigestParseError:
                continue
            if parsed.realm == realm:
                return parsed
        return None

    def answers_our_nonce(self, req: Request, source: str, *, proxy: bool) -> bool:
        """Whether the request carries credentials for a nonce we issued to `source`.

        Anything else can only be refused or challenged, whatever it carries, so it can
        be answered statelessly; and a spoofer never has such a nonce, because the
        challenge went to the address it forges.
        """
        credentials = self.credentials(req, proxy=proxy)
        return credentials is not None and (
            self.authenticator.nonces.validate(credentials.nonce, source) is not NonceStatus.INVALID
        )

    def check(self, inc: Incoming, *, proxy: bool) -> str | None:
        """The username the request proved it is, or None (already answered)."""
        req = inc.request
        source = inc.peer.host
        monitor = self.monitor
        if monitor.is_banned(source):
            # Banned sources are refused before parsing (RegistrarFeature._ban_filter);
            # this is the owner's own check for requests another worker forwarded, and
            # for a ban this worker applied ahead of worker 0's broadcast.
            inc.respond(403, "Forbidden (source banned)")
            return None
        credentials = self.credentials(req, proxy=proxy)
        if credentials is None:
            # None, unparsable, or for another realm: no password of ours was tested,
            # and anyone can send this with a forged source, so it counts for nothing.
            self._challenge(inc, proxy, stale=False)
            return None
        nonces = self.authenticator.nonces
        if nonces.validate(credentials.nonce, source) is NonceStatus.INVALID or (
            self.worker_index is not None and nonces.verifier(credentials.nonce, source) != self.worker_index
        ):
            # Not a nonce we issued to this address (forged, from before a restart, fetched
            # from another address, or for another worker): the password was never tested,
            # so this is no guess and does not count towards a ban.
            self._challenge(inc, proxy, stale=False)
            return None
        outcome = self.authenticator.authenticate(req.method, credentials, request_uri=req.uri_text, source=source)
        if outcome is AuthOutcome.OK:
            return credentials.username
        if outcome is AuthOutcome.STALE:
            self._challenge(inc, proxy, stale=True)
            return None
        if outcome is AuthOutcome.URI_MISMATCH:
            # RFC 7616 §3.4.6 / RFC 2617 §3.2.2.5: "SHOULD return a 400 Bad Request".  A
            # fresh challenge would be answered with the same uri again: a loop.
            inc.respond(400, "Bad Request (digest uri does not match the Request-URI)")
            return None
        if outcome is AuthOutcome.FAILED:
            monitor.record_failure(source, credentials.username)
        self._challenge(inc, proxy, stale=False)
        return None

    def _challenge(self, inc: Incoming, proxy: bool, *, stale: bool) -> None:
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        verifier = None if self.worker_index is None else self.owner_of(inc.request)
        values = self.authenticator.challenges(stale=stale, verifier=verifier, source=inc.peer.host)
        headers = [(name, value) for value in values]
        inc.respond(407 if proxy else 401, headers=headers)
