"""One trunk's state, pure: health with hysteresis, its calls, and when to probe, register
and resolve it.

Every input takes `now` (seconds on any monotonic clock).  Nothing here reads a clock,
sleeps, resolves or sends: the driver (`trunks.TrunkManager`) asks what is due, does it,
and reports the outcome.  That keeps every timing rule testable without sockets
(tests/b2bua/test_trunk_state.py).
"""

from __future__ import annotations

import ipaddress

from .config import TrunkConfig
from .slots import LocalSlots, Slots

UNKNOWN = "unknown"  # nothing heard yet, or no OPTIONS checks: calls are placed
UP = "up"
DOWN = "down"  # skipped by `TrunkManager.candidates`

# The shortest OPTIONS interval honoured: a typo like 0.001 must not flood a gateway.
MIN_PROBE_INTERVAL_S = 0.1
# Unanswered OPTIONS transactions kept per trunk (each lives until Timer F, 32 s): beyond
# this a due probe is not sent and only counts as failed, so a dead trunk with a short
# interval holds at most this many transactions.
MAX_PROBES_IN_FLIGHT = 16
# A trunk without OPTIONS checks that failed calls took down is tried again after this:
# nothing else could ever bring it back.
HOLD_DOWN_S = 30.0
# DNS names are resolved again this often (dnspython's resolver does not hand us the TTL),
# and this soon after a failed resolution or when the trunk goes down (the SRV records
# may name another gateway by now).
RESOLVE_EVERY_S = 300.0
RESOLVE_RETRY_S = 10.0
# Registration: refresh at 90 % of the granted expiry (never sooner than 1 s after the
# 200); after a failure retry at 30 s, doubling up to 30 min (RFC 5626 §4.5's shape).
REFRESH_FRACTION = 0.9
MIN_REFRESH_S = 1.0
RETRY_BASE_S = 30.0
RETRY_MAX_S = 1800.0


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class Health:
    """Up/down from consecutive outcomes: `down_after` failures in a row take the trunk
    down, `up_after` successes in a row bring it back.  From `unknown` the first success
    is enough (there was no flapping to damp), and failures count as from `up`."""

    __slots__ = ("down_after", "failures", "since", "state", "successes", "up_after")

    def __init__(self, down_after: int, up_after: int, now: float) -> None:
        self.down_after = down_after
        self.up_after = up_after
        self.state = UNKNOWN
        self.failures = 0  # consecutive
        self.successes = 0  # consecutive
        self.since = now  # when `state` last changed

    def success(self, now: float) -> bool:
        """Record an answered probe; True when the state changed."""
        self.failures = 0
        if self.state == UP:
            return False
        self.successes += 1
        if self.state == UNKNOWN or self.successes >= self.up_after:
            self._enter(UP, now)
            return True
        return False

    def failure(self, now: float) -> bool:
        """Record a failed probe or call; True when the state changed."""
        self.successes = 0
        if self.state == DOWN:
            return False
        self.failures += 1
        if self.failures >= self.down_after:
            self._enter(DOWN, now)
            return True
        return False

    def reset(self, now: float) -> None:
        """Back to `unknown` (the trunk's address changed, or its hold-down ended)."""
        self._enter(UNKNOWN, now)

    def _enter(self, state: str, now: float) -> None:
        self.state = state
        self.since = now
        self.failures = 0
        self.successes = 0


class Registration:
    """When to REGISTER to the far end: at once, then at `REFRESH_FRACTION` of each
    granted expiry; after a failure with exponential back-off.  A 423 raises the expiry
    we ask for to its Min-Expires and retries at once.  A binding stays counted as
    registered until its granted expiry passes, even while a refresh fails."""

    __slots__ = ("due_at", "expires", "expires_at", "failures", "in_flight", "last_status", "state")

    def __init__(self, expires: int, now: float) -> None:
        self.expires = expires  # what we ask for
        self.state = "registering"  # "registering", "registered" or "failed"
        self.due_at = now
        self.expires_at: float | None = None  # end of the binding the far end granted
        self.failures = 0  # consecutive
        self.in_flight = False
        self.last_status: int | None = None

    def due(self, now: float) -> bool:
        return not self.in_flight and now >= self.due_at

    def sent(self) -> None:
        self.in_flight = True

    def succeeded(self, granted: int, now: float) -> None:
        """A 2xx granting `granted` seconds (0: the far end kept no binding: a failure)."""
        self.in_flight = False
        self.last_status = 200
        if granted <= 0:
            self._retry_later(now)
            return
        self.state = "registered"
        self.failures = 0
        self.expires_at = now + granted
        self.due_at = now + max(MIN_REFRESH_S, granted * REFRESH_FRACTION)

    def failed(self, status: int, now: float, min_expires: int | None = None) -> None:
        """A final non-2xx, a timeout (408) or a transport failure (503)."""
        self.in_flight = False
        self.last_status = status
        if status == 423 and min_expires is not None and self.expires < min_expires <= 86400:
            self.expires = min_expires  # RFC 3261 §10.2.8: ask again with what it accepts
            self.due_at = now
            return
        self._retry_later(now)

    def _retry_later(self, now: float) -> None:
        self.state = "failed"
        self.failures += 1
        self.due_at = now + min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (self.failures - 1))

    def registered(self, now: float) -> bool:
        return self.expires_at is not None and now < self.expires_at

    def next_wakeup(self) -> float | None:
        return None if self.in_flight else self.due_at


class TrunkState:
    """Everything the driver needs to know about one trunk, but its addresses and the
    ids of its requests.

    With several worker processes each keeps its own state: `register` is True in one
    of them only (one binding at the far end).  The calls in progress are counted in
    `slots` (slots.py), which the workers share: `max_calls` is the node's."""

    __slots__ = (
        "addressed", "awaiting_probe", "config", "counters", "health", "looking_up", "probe_at",
        "probes_in_flight", "registration", "resolve_at", "slots",
    )

    def __init__(self, config: TrunkConfig, now: float, *, register: bool = True, slots: Slots | None = None) -> None:
        self.config = config
        self.slots: Slots = slots if slots is not None else LocalSlots()
        self.health = Health(config.down_after, config.up_after, now)
        self.counters: dict[str, int] = {}
        self.probe_at: float | None = now if config.options_interval_s > 0 else None
        self.awaiting_probe = False  # the last OPTIONS sent has no answer yet
        self.probes_in_flight = 0  # OPTIONS transactions not finished (late ones included)
        self.registration = Registration(config.register_expires_s, now) if config.registration and register else None
        self.resolve_at: float | None = now  # None: resolved for good (an IP) or resolving
        self.looking_up = False
        self.addressed = False  # a resolution ever found an address

    # ---- configuration --------------------------------------------------------------------
    def same_address(self, config: TrunkConfig) -> bool:
        """Does `config` reach the same far end the same way (no new resolution, health or
        registration needed)?"""
        old = self.config
        return (
            (old.host, old.port, old.transport, old.auth, old.registration, old.register_expires_s, old.from_domain)
            == (config.host, config.port, config.transport, config.auth, config.registration,
                config.register_expires_s, config.from_domain)
            and ("transport" in old.model_fields_set) == ("transport" in config.model_fields_set)
        )

    def reconfigure(self, config: TrunkConfig, now: float) -> None:
        """Apply a reloaded config of the same far end: thresholds, limits and the probe
        interval change; health, calls and the registration are kept."""
        self.config = config
        self.health.down_after = config.down_after
        self.health.up_after = config.up_after
        if config.options_interval_s <= 0:
            self.probe_at = None
            self.awaiting_probe = False
        elif self.probe_at is None or self.probe_at > now + self.interval:
            self.probe_at = now

    @property
    def interval(self) -> float:
        return max(MIN_PROBE_INTERVAL_S, self.config.options_interval_s)

    # ---- calls ----------------------------------------------------------------------------
    @property
    def max_calls(self) -> int:
        """The node's limit (0: unlimited)."""
        return self.config.max_calls

    @property
    def calls(self) -> int:
        """Calls in progress on the trunk, every worker's."""
        return self.slots.total(self.config.name)

    @property
    def has_room(self) -> bool:
        return self.max_calls == 0 or self.calls < self.max_calls

    @property
    def available(self) -> bool:
        """Up (or unknown) and under `max_calls`: a candidate for a new call."""
        return self.health.state != DOWN and self.has_room

    def acquire(self) -> bool:
        if not self.slots.take(self.config.name, self.max_calls):
            self.count("calls_limit")
            return False
        self.count("calls_placed")
        return True

    def release(self) -> None:
        self.slots.give_back(self.config.name)

    def call_failed(self, status: int, now: float) -> bool:
        """A call got 503, 408 or a transport failure here; True when the trunk went down."""
        self.count("calls_failed")
        self.count(f"calls_failed_{status}")
        return self._failure(now)

    # ---- OPTIONS --------------------------------------------------------------------------
    @property
    def locating(self) -> bool:
        """Its first resolution is under way: probing or registering now would only fail."""
        return self.looking_up and not self.addressed

    def probe_due(self, now: float) -> bool:
        return self.probe_at is not None and now >= self.probe_at and not self.locating

    def probe(self, now: float, reachable: bool) -> bool:
        """A probe is due: the previous one, still unanswered, has failed (an OPTIONS
        unanswered when the next is due is a timeout).  True: send a new OPTIONS now;
        False: this probe fails at once (no address, or too many in flight)."""
        self.probe_at = now + self.interval
        if self.awaiting_probe:
            self.awaiting_probe = False
            self._probe_result(False, now)
        if not reachable or self.probes_in_flight >= MAX_PROBES_IN_FLIGHT:
            self._probe_result(False, now)
            return False
        self.awaiting_probe = True
        self.probes_in_flight += 1
        return True

    def probe_answered(self, ok: bool, current: bool, now: float) -> bool:
        """The final outcome of an OPTIONS; a late one (`current` False: already counted
        as failed) only frees its place.  True when the state changed."""
        self.probes_in_flight = max(0, self.probes_in_flight - 1)
        if not current or not self.awaiting_probe:
            return False
        self.awaiting_probe = False
        return self._probe_result(ok, now)

    def _probe_result(self, ok: bool, now: float) -> bool:
        self.count("options_ok" if ok else "options_failed")
        if ok:
            return self.health.success(now)
        return self._failure(now)

    def _failure(self, now: float) -> bool:
        changed = self.health.failure(now)
        if changed and not is_ip(self.config.host):
            self.resolve_at = now  # maybe the name points elsewhere by now
        return changed

    # ---- resolution -----------------------------------------------------------------------
    def resolve_due(self, now: float) -> bool:
        return self.resolve_at is not None and now >= self.resolve_at

    def resolving(self) -> None:
        self.resolve_at = None
        self.looking_up = True

    def resolved(self, found: bool, now: float) -> None:
        self.looking_up = False
        self.addressed = self.addressed or found
        if found and is_ip(self.config.host):
            self.resolve_at = None
        else:
            self.resolve_at = now + (RESOLVE_EVERY_S if found else RESOLVE_RETRY_S)

    def resolve_soon(self, now: float) -> None:
        """A request to it failed at transport level: look the name up again, without
        hammering DNS (at most every `RESOLVE_RETRY_S`)."""
        if is_ip(self.config.host):
            return
        soon = now + RESOLVE_RETRY_S
        if self.resolve_at is not None and self.resolve_at > soon:
            self.resolve_at = soon

    # ---- time -----------------------------------------------------------------------------
    def expire(self, now: float) -> bool:
        """Without OPTIONS checks a down trunk gets another chance after `HOLD_DOWN_S`;
        True when that happened."""
        if self.probe_at is None and self.health.state == DOWN and now >= self.health.since + HOLD_DOWN_S:
            self.health.reset(now)
            return True
        return False

    def next_wakeup(self) -> float | None:
        """The earliest moment something is due (the driver sleeps until then)."""
        if self.locating:
            return None  # the resolution's end wakes the driver
        times = [self.probe_at, self.resolve_at]
        if self.registration is not None:
            times.append(self.registration.next_wakeup())
        if self.probe_at is None and self.health.state == DOWN:
            times.append(self.health.since + HOLD_DOWN_S)
        return min((t for t in times if t is not None), default=None)

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1
