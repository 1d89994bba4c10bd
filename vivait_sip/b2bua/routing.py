"""The dialplan: which rule a call matches and where it then goes (docs/b2bua.md, "Routing").

Pure: no asyncio, no I/O, no clock (the call's time is part of the request), so every
decision can be replayed by `ctl route` and tested exhaustively.  A `Router` is built from
one config — regexes compiled, time zones loaded, groups expanded, flow outcomes checked —
and rebuilt on every reload, so `route` only reads.  Users are looked up through
`Directory`, which the B2BUA feature implements over the registrar's users: they change
without a config reload (`vivait-sip user add`), so they are never copied here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from .config import (
    DEFAULT_DIALPLAN,
    WEEKDAYS,
    Announcement,
    B2buaConfig,
    CalendarMatch,
    Hangup,
    NumberMatch,
    Rule,
    SourceMatch,
    ThroughFlow,
    ToExtension,
    ToTrunk,
    ToUser,
)

NOT_FOUND = 404
# RFC 3398 maps Q.850 cause 28 (invalid number format) to 484; Asterisk answers a number
# its dialplan cannot send the same way.  Too many digits is not a permission problem (403).
ADDRESS_INCOMPLETE = 484
TOO_LONG_REASON = "Number Too Long"

Leaf = ToUser | ToExtension | ToTrunk | Hangup | Announcement
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Source:
    """Who calls: an authenticated user, a trunk recognised by its network, or neither."""

    user: str | None  # the authenticated user's number (None for a trunk or anonymous)
    trunk: str | None  # the trunk name the call came in on (recognised by network)
    host: str  # source IP ("" when unknown, e.g. `ctl route --from trunk:pri`)

    def describe(self) -> str:
        if self.user is not None:
            who = f"user {self.user}"
        elif self.trunk is not None:
            who = f"trunk {self.trunk}"
        else:
            who = "an anonymous caller"
        return f"{who} ({self.host})" if self.host else who


@dataclass(frozen=True, slots=True)
class RouteRequest:
    number: str  # the dialled number (Request-URI user part, unescaped)
    source: Source
    at: datetime  # timezone-aware: calendars compare it in each rule's own time zone


class Directory(Protocol):
    """The users as routing sees them (the registrar's directory, adapted by the feature)."""

    def user_of(self, number: str) -> str | None:
        """A user number or a hard/web extension → that user's number."""
        ...

    def is_extension(self, number: str) -> bool:
        """A registered-or-not extension number of some user."""
        ...


@dataclass(frozen=True, slots=True)
class Target:
    """What the call does once routing is done: resolved, no flow left."""

    kind: Literal["user", "extension", "trunk", "hangup", "announcement"]
    user: str | None = None  # kind user: the user number to ring (its active devices)
    extension: str | None = None  # kind extension
    trunks: tuple[str, ...] = ()  # kind trunk: in failover order
    number: str = ""  # kind trunk: the outgoing number after strip/prefix; else the dialled one
    caller_id: str | None = None  # kind trunk: rule override
    status: int = 0  # kind hangup
    reason: str | None = None
    retry_after: int | None = None
    ring_s: float | None = None  # user, extension, trunk: no answer after this → 480
    prompt: str | None = None  # kind announcement: what the caller hears
    then: Target | None = None  # kind announcement: where the caller goes next (None: hang up)

    def describe(self) -> str:
        """A few words for traces and `ctl route`: `user 6140`, `trunk pri, pri2 as 0913...`."""
        if self.kind == "user":
            return f"user {self.user}"
        if self.kind == "extension":
            return f"extension {self.extension}"
        if self.kind == "trunk":
            text = f"trunk {', '.join(self.trunks)} as {self.number}"
            return text + (f" (caller ID {self.caller_id})" if self.caller_id else "")
        if self.kind == "announcement":
            return f"announcement {self.prompt}, then " + (self.then.describe() if self.then is not None else "hang up")
        text = f"hangup {self.status}" + (f" {self.reason}" if self.reason else "")
        return text + (f" (Retry-After {self.retry_after})" if self.retry_after is not None else "")


@dataclass(frozen=True, slots=True)
class Decision:
    rule: str | None  # the matching rule's name (None: no rule matched → 404)
    flow: str | None  # non-None: admit through this mdflow flow first, then:
    target: Target  # ... this target when admitted (or directly when flow is None)
    on_agujero: Target | None  # flow outcomes (None: 503 + Retry-After, the default)
    on_desborda: Target | None
    ringing: bool  # 180 while queued in the flow
    did: str | None  # the DID the dialled number was, if any
    trace: tuple[str, ...]  # one line per rule tried: why it did not match, then which matched


# ---- matching -----------------------------------------------------------------------------------

# None: the part holds; otherwise why it does not, in words.
Check = Callable[[RouteRequest], str | None]


def _number_check(match: NumberMatch) -> Check:
    if match.regex is not None:
        pattern = re.compile(match.regex)
        text = match.regex

        def by_regex(req: RouteRequest) -> str | None:
            if pattern.fullmatch(req.number):
                return None
            return f'number {req.number} does not match regex "{text}"'

        return by_regex
    if match.prefix is not None:
        prefix = match.prefix

        def by_prefix(req: RouteRequest) -> str | None:
            if req.number.startswith(prefix):
                return None
            return f'number {req.number} does not start with "{prefix}"'

        return by_prefix
    exact = match.exact

    def by_exact(req: RouteRequest) -> str | None:
        return None if req.number == exact else f'number {req.number} is not "{exact}"'

    return by_exact


def _in_networks(host: str, networks: tuple[IpNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return any(ip in net for net in networks)


def _source_check(match: SourceMatch, groups: Mapping[str, frozenset[str]]) -> Check | None:
    """Any listed kind of caller holds; None when nothing is listed (everyone holds)."""
    users = frozenset(match.users)
    # A group no one defined (check_references refuses it) holds for no one.
    members = frozenset().union(*(groups.get(g, frozenset()) for g in match.groups))
    trunks = frozenset(match.trunks)
    networks = tuple(ipaddress.ip_network(n) for n in match.networks)
    wanted = [
        label
        for label, given in (
            (f"one of users {', '.join(match.users)}", match.users),
            (f"in groups {', '.join(match.groups)}", match.groups),
            (f"on trunks {', '.join(match.trunks)}", match.trunks),
            (f"in networks {', '.join(match.networks)}", match.networks),
            ("an authenticated user", match.any_user),
        )
        if given
    ]
    if not wanted:
        return None
    listed = " or ".join(wanted)
    any_user = match.any_user

    def by_source(req: RouteRequest) -> str | None:
        src = req.source
        if src.user is not None and (any_user or src.user in users or src.user in members):
            return None
        if src.trunk is not None and src.trunk in trunks:
            return None
        if networks and _in_networks(src.host, networks):
            return None
        return f"source: {src.describe()} is not {listed}"

    return by_source


@dataclass(frozen=True, slots=True)
class _Day:
    """A `dates` entry: one day, or with `year` None the same day every year."""

    year: int | None
    month: int
    day: int
    text: str

    @classmethod
    def parse(cls, text: str) -> _Day:
        parts = [int(p) for p in text.split("-")]
        if len(parts) == 3:
            return cls(parts[0], parts[1], parts[2], text)
        return cls(None, parts[0], parts[1], text)

    def holds(self, day: date) -> bool:
        return day.month == self.month and day.day == self.day and self.year in (None, day.year)


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


class _Calendar:
    """When a rule holds, in its own time zone.  A time range that wraps midnight belongs
    to the day it starts on: with `fri` and `22:00-06:00`, Saturday 02:00 holds (Friday's
    night) and Friday 02:00 does not (Thursday's); the dates are read the same way."""

    __slots__ = ("dates", "not_dates", "span", "time", "weekday_text", "weekdays", "zone")

    def __init__(self, match: CalendarMatch) -> None:
        self.zone = ZoneInfo(match.timezone)
        self.weekdays = frozenset(WEEKDAYS.index(d) for d in match.weekdays)
        self.weekday_text = ", ".join(match.weekdays)
        self.time = match.time
        self.span: tuple[int, int] | None = None
        if match.time is not None:
            start, end = match.time.split("-")
            self.span = (_minutes(start), _minutes(end))
        self.dates = tuple(_Day.parse(d) for d in match.dates)
        self.not_dates = tuple(_Day.parse(d) for d in match.not_dates)

    def __call__(self, req: RouteRequest) -> str | None:
        local = req.at.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        clock = f"{local:%H:%M}"
        day = local.date()
        why = []
        if self.span is not None:
            start, end = self.span
            if start < end:
                inside = start <= minute < end
            else:
                inside = minute >= start or minute < end
                if minute < end:
                    day -= timedelta(days=1)
            if not inside:
                why.append(f"{clock} is not in {self.time}")
        day_is = f"{day.isoformat()} ({WEEKDAYS[day.weekday()]}) is"
        if day != local.date():
            day_is = f"{clock} belongs to the night of {day_is.removesuffix(' is')}, which is"
        if self.weekdays and day.weekday() not in self.weekdays:
            why.append(f"{day_is} not on {self.weekday_text}")
        if self.dates and not any(d.holds(day) for d in self.dates):
            why.append(f"{day_is} not one of the dates {', '.join(d.text for d in self.dates)}")
        excluded = [d.text for d in self.not_dates if d.holds(day)]
        if excluded:
            why.append(f"{day_is} in not_dates ({', '.join(excluded)})")
        return f"calendar: {'; '.join(why)}" if why else None


# ---- rules --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    """A rule ready to try: its checks and its action split into flow and outcomes."""

    name: str
    label: str
    checks: tuple[Check, ...]
    then: Leaf
    flow: str | None
    ringing: bool
    agujero: Leaf | None
    desborda: Leaf | None


def _leaf(action: Leaf | ThroughFlow, where: str) -> Leaf:
    if isinstance(action, ThroughFlow):
        raise ValueError(f"{where}: a flow's outcome cannot go through another flow ({action.flow})")
    return action


def _compile(index: int, rule: Rule, groups: Mapping[str, frozenset[str]]) -> _Rule:
    checks: list[Check] = []
    if rule.match.number is not None:
        checks.append(_number_check(rule.match.number))
    if rule.match.source is not None:
        source = _source_check(rule.match.source, groups)
        if source is not None:
            checks.append(source)
    if rule.match.calendar is not None:
        checks.append(_Calendar(rule.match.calendar))
    label = f'rule "{rule.name}" ({index})'
    action = rule.action
    if not isinstance(action, ThroughFlow):
        return _Rule(rule.name, label, tuple(checks), action, None, False, None, None)
    where = f"b2bua.dialplan[{index}].action"
    return _Rule(
        rule.name,
        label,
        tuple(checks),
        _leaf(action.then, f"{where}.then"),
        action.flow,
        action.ringing,
        None if action.agujero is None else _leaf(action.agujero, f"{where}.agujero"),
        None if action.desborda is None else _leaf(action.desborda, f"{where}.desborda"),
    )


def _digits(number: str) -> int:
    """Digits of an outgoing number as `max_digi_llam_sal` counts them: all but `+`."""
    return len(number) - number.count("+")


class Router:
    """Routes calls by one config's dialplan (`DEFAULT_DIALPLAN` when it has none)."""

    def __init__(self, config: B2buaConfig, directory: Directory) -> None:
        """Compile every rule once; ValueError for a flow nested in a flow's outcome
        (`admin.check_references` reports it with the others before it gets here)."""
        self._config = config
        self._directory = directory
        groups = {name: frozenset(members) for name, members in config.groups.items()}
        rules = config.dialplan or DEFAULT_DIALPLAN
        self._rules = tuple(_compile(i, rule, groups) for i, rule in enumerate(rules))

    @property
    def config(self) -> B2buaConfig:
        return self._config

    def route(self, req: RouteRequest) -> Decision:
        """The first rule whose number, source and calendar all hold decides."""
        if req.at.utcoffset() is None:
            raise ValueError("RouteRequest.at must be timezone-aware")
        did = req.number if req.number in self._config.dids else None
        trace: list[str] = []
        for rule in self._rules:
            why = [w for check in rule.checks if (w := check(req)) is not None]
            if why:
                trace.append(f"{rule.label}: {'; '.join(why)}")
                continue
            target, note = self._resolve(rule.then, req.number)
            if rule.flow is None:
                trace.append(f"{rule.label}: matches → {target.describe()}{note}")
                return Decision(rule.name, None, target, None, None, False, did, tuple(trace))
            agujero = self._outcome(rule.agujero, req.number)
            desborda = self._outcome(rule.desborda, req.number)
            trace.append(
                f"{rule.label}: matches → flow {rule.flow}{' (180 while queued)' if rule.ringing else ''}, "
                f"then {target.describe()}{note}; agujero: {_outcome_text(agujero)}; "
                f"desborda: {_outcome_text(desborda)}"
            )
            return Decision(rule.name, rule.flow, target, agujero, desborda, rule.ringing, did, tuple(trace))
        trace.append(f"no rule matches {req.number} → hangup {NOT_FOUND}")
        target = Target("hangup", number=req.number, status=NOT_FOUND)
        return Decision(None, None, target, None, None, False, did, tuple(trace))

    def _outcome(self, action: Leaf | None, number: str) -> Target | None:
        return None if action is None else self._resolve(action, number)[0]

    def _to_user(self, action: ToUser, number: str) -> tuple[Target, str]:
        """The user the rule names, else the one the dialled number (or its DID) names."""
        did = action.user is None and number in self._config.dids
        named = action.user if action.user is not None else self._config.dids.get(number, number)
        user = self._directory.user_of(named)
        if user is None:
            via = f"DID {number} → {named}" if did else named
            return Target("hangup", number=number, status=NOT_FOUND), f" ({via} is no user or extension)"
        note = ""
        if did:
            note = f" (DID {number})" if named == user else f" (DID {number} → {named})"
        elif action.user is None and number != user:
            note = f" (dialled {number})"
        ring_s = action.ring_s or self._config.ring_s
        return Target("user", user=user, number=number, ring_s=ring_s), note

    def _resolve(self, action: Leaf, number: str) -> tuple[Target, str]:
        """The target and a note for the trace ("" or " (why)")."""
        config = self._config
        if isinstance(action, Hangup):
            target = Target("hangup", number=number, status=action.status, reason=action.reason, retry_after=action.retry_after)
            return target, ""
        if isinstance(action, ToUser):
            return self._to_user(action, number)
        if isinstance(action, Announcement):
            then, note = self._resolve(action.then, number) if action.then is not None else (None, "")
            return Target("announcement", number=number, prompt=action.prompt, then=then), note
        if isinstance(action, ToExtension):
            # Without `extension`, the dialled number as it is: a DID names a user, not a device.
            extension = action.extension if action.extension is not None else number
            if not self._directory.is_extension(extension):
                return Target("hangup", number=number, status=NOT_FOUND), f" ({extension} is no extension)"
            ring_s = action.ring_s or config.ring_s
            return Target("extension", extension=extension, number=number, ring_s=ring_s), ""
        kept = number[action.strip :]
        if not kept:
            note = f" (stripping {action.strip} digit(s) leaves nothing of {number})"
            return Target("hangup", number=number, status=ADDRESS_INCOMPLETE), note
        outgoing = action.prefix + kept
        if _digits(outgoing) > config.max_digi_llam_sal:
            note = f" ({outgoing} has {_digits(outgoing)} digits, more than max_digi_llam_sal {config.max_digi_llam_sal})"
            return Target("hangup", number=number, status=ADDRESS_INCOMPLETE, reason=TOO_LONG_REASON), note
        target = Target(
            "trunk", trunks=tuple(action.trunks), number=outgoing, caller_id=action.caller_id, ring_s=config.ring_s
        )
        return target, ""


def _outcome_text(target: Target | None) -> str:
    return "503 + Retry-After (default)" if target is None else target.describe()


__all__ = ["Decision", "Directory", "RouteRequest", "Router", "Source", "Target"]
