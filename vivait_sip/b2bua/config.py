"""The `b2bua` section of the config: calls, DIDs, trunks and the dialplan.

```json
"b2bua": {
  "dids": {"913346140": "6140"},
  "caller_ids": {"6140": "913346140"},
  "groups": {"ventas": ["6140", "6141"]},
  "trunks": [{"name": "pri", "host": "10.0.0.5", "networks": ["10.0.0.5/32"]}],
  "dialplan": [
    {"name": "outside", "match": {"number": {"prefix": "0"}},
     "action": {"type": "trunk", "trunks": ["pri"], "strip": 1}}
  ]
}
```

The dialplan is an ordered list of rules; the first whose `match` holds decides the
`action`.  Without rules, a dialled user number, extension or DID reaches its user and
anything else gets 404 (`DEFAULT_DIALPLAN`).  Every model forbids unknown keys, so a
typo is an error with its JSON path (`b2bua.dialplan[2].action.trunks[0]: ...`).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DIGITS_RE = re.compile(r"[0-9*#+]{1,32}")
CALLER_ID_RE = re.compile(r"\+?[0-9]{2,20}")
TIME_RANGE_RE = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d-(?:(?:[01]\d|2[0-3]):[0-5]\d|24:00)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _network(value: str) -> str:
    return str(ipaddress.ip_network(value.replace(" ", ""), strict=False))


# ---- trunks ---------------------------------------------------------------------------------


class TrunkAuth(_Strict):
    """Digest credentials we answer the far end's challenges with (and register with)."""

    username: str = Field(min_length=1)
    password: str = Field(min_length=1)
    realm: str | None = None


class TrunkConfig(_Strict):
    """A SIP trunk: the PRI gateway (SPEC §1) or a carrier."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    host: str = Field(min_length=1)  # IP or DNS name (RFC 3263: NAPTR/SRV/A when no port)
    port: int | None = Field(default=None, ge=1, le=65535)
    transport: Literal["udp", "tcp", "tls"] = "udp"
    # Inbound calls from these networks are this trunk's (no digest: trusted by address).
    networks: list[str] = Field(default_factory=list)
    # Inbound calls authenticated (digest) as this registrar user are this trunk's: a far
    # end without a fixed address; its credentials are that user's (HA1, bans, nonces).
    inbound_user: str | None = Field(default=None, pattern=r"^[0-9]{2,15}$")
    auth: TrunkAuth | None = None
    registration: bool = False  # register to the far end and keep it registered (needs auth)
    register_expires_s: int = Field(default=600, ge=60, le=86400)
    # Outgoing identity: the caller-ID presented on this trunk unless a user has its own.
    caller_id: str | None = None
    from_domain: str | None = None
    privacy: bool = False  # RFC 3323 Privacy: id, anonymous From
    trust_pai: bool = True  # RFC 3325: P-Asserted-Identity from this trunk is believed
    max_calls: int = Field(default=0, ge=0)  # concurrent calls; 0: unlimited
    options_interval_s: float = Field(default=30.0, ge=0)  # 0: no OPTIONS health checks
    down_after: int = Field(default=3, ge=1)  # consecutive failed OPTIONS → down
    up_after: int = Field(default=2, ge=1)  # consecutive answered OPTIONS → up again

    @field_validator("networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return [_network(v) for v in value]

    @model_validator(mode="after")
    def _register_needs_auth(self) -> TrunkConfig:
        if self.registration and self.auth is None:
            raise ValueError("registration: true needs auth (username and password)")
        return self


# ---- dialplan: matching -----------------------------------------------------------------------


class NumberMatch(_Strict):
    """Exactly one of exact, prefix or regex (full match) on the dialled number."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one(self) -> NumberMatch:
        given = [k for k in ("exact", "prefix", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of exact, prefix or regex")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None
        return self


class SourceMatch(_Strict):
    """Who calls: any of these holds (an empty match holds for everyone)."""

    users: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    trunks: list[str] = Field(default_factory=list)
    networks: list[str] = Field(default_factory=list)
    any_user: bool = False  # any authenticated user (not a trunk)

    @field_validator("networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return [_network(v) for v in value]


class CalendarMatch(_Strict):
    """When: every given field holds (times are local to `timezone`)."""

    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(default_factory=list)
    time: str | None = None  # "08:00-20:00" (may wrap midnight: "22:00-06:00")
    dates: list[str] = Field(default_factory=list)  # "2026-12-25" or "12-25" (every year)
    not_dates: list[str] = Field(default_factory=list)
    timezone: str = "Europe/Madrid"

    @field_validator("time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not TIME_RANGE_RE.fullmatch(value):
            raise ValueError("time must be HH:MM-HH:MM (00:00 to 24:00)")
        start, end = value.split("-")
        if start == end:
            raise ValueError(f"time {value} is empty (leave time out for the whole day)")
        return value

    @field_validator("dates", "not_dates")
    @classmethod
    def _dates(cls, value: list[str]) -> list[str]:
        for item in value:
            # MM-DD is checked against a leap year so that 02-29 is allowed.
            text = item if len(item) == 10 else f"2000-{item}"
            try:
                if not re.fullmatch(r"\d{4}-\d\d-\d\d", text):
                    raise ValueError
                date.fromisoformat(text)
            except ValueError:
                raise ValueError(f"date {item!r} must be a real YYYY-MM-DD or MM-DD") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a directory
            raise ValueError(f"unknown time zone {value!r} (an IANA name: Europe/Madrid, Atlantic/Canary, UTC)") from None
        return value


class RuleMatch(_Strict):
    number: NumberMatch | None = None
    source: SourceMatch | None = None
    calendar: CalendarMatch | None = None


# ---- dialplan: actions ----------------------------------------------------------------------


class ToUser(_Strict):
    """Ring the user's active devices (SPEC §4: the hard extension; the web one when
    logged in).  `user` absent: the dialled number (or the DID it maps to) names it."""

    type: Literal["user"]
    user: str | None = None
    ring_s: float | None = Field(default=None, gt=0)


class ToExtension(_Strict):
    """Ring one extension's registered contacts, whoever its user is."""

    type: Literal["extension"]
    extension: str | None = None
    ring_s: float | None = Field(default=None, gt=0)


class ToTrunk(_Strict):
    """Out on the first available trunk of the list (failover on 503, timeout or down);
    the number is rewritten: `strip` leading digits removed, then `prefix` added."""

    type: Literal["trunk"]
    trunks: list[str] = Field(min_length=1)
    strip: int = Field(default=0, ge=0, le=32)
    prefix: str = Field(default="", pattern=r"^[0-9*#+]{0,32}$")
    caller_id: str | None = None  # overrides the trunk's and the user's


class Hangup(_Strict):
    type: Literal["hangup"]
    status: int = Field(default=404, ge=400, le=699)
    reason: str | None = None
    retry_after: int | None = Field(default=None, ge=1, le=86400)


PROMPT_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*$"


class Announcement(_Strict):
    """Answer the call ourselves (anchored: the caller's leg is answered with the relay's
    SDP, no callee leg), play `prompt` to the caller (a name in media.prompt_dirs, the
    generated default prompts or the built-in sounds), then hang up (`then` null) or go on
    to `then` (the caller rings that target in a new call linked to this one)."""

    type: Literal["announcement"]
    prompt: str = Field(min_length=1, max_length=128, pattern=PROMPT_RE)
    then: Annotated[ToUser | ToExtension | ToTrunk | Hangup, Field(discriminator="type")] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if ".." in value.split("/"):
            raise ValueError("a prompt name never climbs out of the prompt directories (..)")
        return value


class ThroughFlow(_Strict):
    """Measure and pace the call through an mdflow flow (SPEC §2), then go on by outcome:
    `then` when admitted; `agujero` / `desborda` otherwise (default: 503 + Retry-After)."""

    type: Literal["flow"]
    flow: str
    then: Action
    agujero: Action | None = None
    desborda: Action | None = None
    ringing: bool = False  # send 180 while the call waits in its DNIS queue


Action = Annotated[ToUser | ToExtension | ToTrunk | Hangup | Announcement | ThroughFlow, Field(discriminator="type")]


class Rule(_Strict):
    name: str = Field(min_length=1, max_length=64)
    match: RuleMatch = Field(default_factory=RuleMatch)
    action: Action
    # Anchoring of this rule's calls (docs/media.md): "anchor" through the media backend;
    # "pass" not by the rule (media.default does not apply; users and features still may).
    media: Literal["anchor", "pass"] | None = None
    # The music-on-hold class this route's callers hear when held (media.moh_classes, or
    # "default"); it anchors the rule's calls unless media.moh is "off".
    moh: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Record every call of this route (stereo WAV, docs/media.md); anchors them.
    record: bool = False


# ---- the section ----------------------------------------------------------------------------


class B2buaConfig(_Strict):
    """Calls: routing, trunks, limits (docs/b2bua.md)."""

    dialplan: list[Rule] = Field(default_factory=list)
    dids: dict[str, str] = Field(default_factory=dict)  # DID → user number
    # user number → the number its calls present on trunks (usually one of its DIDs)
    caller_ids: dict[str, str] = Field(default_factory=dict)
    groups: dict[str, list[str]] = Field(default_factory=dict)  # group name → user numbers
    trunks: list[TrunkConfig] = Field(default_factory=list)
    max_calls: int = Field(default=10_000, ge=1)  # beyond: 503 + Retry-After
    max_digi_llam_sal: int = Field(default=32, ge=1, le=32)  # digits of an outgoing number
    ring_s: float = Field(default=60.0, gt=0)  # no answer after this: 480
    max_redirects: int = Field(default=3, ge=0, le=10)  # 3xx followed at most this often
    drain_s: float = Field(default=30.0, ge=0)  # SIGTERM: calls may run this long, then BYE
    cdr: bool = True
    # CDRs of calls started longer ago are removed as new calls are written; 0 keeps them all.
    cdr_retention_days: int = Field(default=0, ge=0, le=36_500)

    @field_validator("dids")
    @classmethod
    def _dids(cls, value: dict[str, str]) -> dict[str, str]:
        for did, user in value.items():
            if not DIGITS_RE.fullmatch(did):
                raise ValueError(f"DID {did!r} must be digits")
            if not DIGITS_RE.fullmatch(user):
                raise ValueError(f"DID {did!r} maps to {user!r}, not a number")
        return value

    @field_validator("caller_ids")
    @classmethod
    def _caller_ids(cls, value: dict[str, str]) -> dict[str, str]:
        for user, number in value.items():
            if not DIGITS_RE.fullmatch(user):
                raise ValueError(f"caller ID key {user!r} must be a user number")
            if not CALLER_ID_RE.fullmatch(number):
                raise ValueError(f"caller ID {number!r} of user {user} must be digits, optionally after a +")
        return value


ThroughFlow.model_rebuild()
Rule.model_rebuild()
B2buaConfig.model_rebuild()

DEFAULT_DIALPLAN = [Rule(name="local", action=ToUser(type="user"))]
