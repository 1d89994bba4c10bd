"""The dialplan (vivait_sip/b2bua/routing.py): every match kind, rule order, DIDs, the
default dialplan, targets and rewriting, the digit cap, calendars (midnight wrap, DST in
Europe/Madrid, yearly dates), and properties over random numbers and times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from vivait_sip.b2bua.config import B2buaConfig
from vivait_sip.b2bua.routing import Decision, Router, RouteRequest, Source, Target

MADRID = ZoneInfo("Europe/Madrid")
# A Monday (2026-03-30) at 10:15 in Madrid (CEST, UTC+2).
MONDAY = datetime(2026, 3, 30, 10, 15, tzinfo=MADRID)
USER_6140 = Source("6140", None, "192.0.2.10")
PRI = Source(None, "pri", "10.0.0.5")
ANONYMOUS = Source(None, None, "198.51.100.7")


class Users:
    """A directory: user number → its extensions (hard and web)."""

    def __init__(self, users: dict[str, tuple[str, ...]] | None = None) -> None:
        self.users = users if users is not None else {"6140": ("5140", "7140"), "6141": ("6141",), "6142": ()}

    def user_of(self, number: str) -> str | None:
        if number in self.users:
            return number
        return next((u for u, exts in self.users.items() if number in exts), None)

    def is_extension(self, number: str) -> bool:
        return any(number in exts for exts in self.users.values())


def router(*rules: dict[str, Any], **section: Any) -> Router:
    return Router(B2buaConfig.model_validate({"dialplan": list(rules), **section}), Users())


def route(r: Router, number: str, source: Source = USER_6140, at: datetime = MONDAY) -> Decision:
    return r.route(RouteRequest(number, source, at))


def rule(name: str, action: dict[str, Any] | None = None, **match: Any) -> dict[str, Any]:
    return {"name": name, "match": match, "action": action or {"type": "user"}}


def madrid(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=MADRID)


# ---- the default dialplan and rule order ----------------------------------------------------


def test_default_dialplan_reaches_users_by_number_extension_and_did() -> None:
    r = router(dids={"913346140": "6140"})
    d = route(r, "6140")
    assert d == Decision(
        rule="local",
        flow=None,
        target=Target("user", user="6140", number="6140", ring_s=60.0),
        on_agujero=None,
        on_desborda=None,
        ringing=False,
        did=None,
        trace=('rule "local" (0): matches → user 6140',),
    )
    assert route(r, "5140").target.user == "6140"  # hard extension → its user
    assert route(r, "7140").trace == ('rule "local" (0): matches → user 6140 (dialled 7140)',)
    d = route(r, "913346140", PRI)
    assert (d.target.user, d.target.number, d.did) == ("6140", "913346140", "913346140")
    assert d.trace == ('rule "local" (0): matches → user 6140 (DID 913346140)',)


def test_default_dialplan_refuses_unknown_numbers_with_404() -> None:
    d = route(router(), "9999")
    assert d.rule == "local"  # the rule decided; its user does not exist
    assert d.target == Target("hangup", number="9999", status=404)
    assert d.trace == ('rule "local" (0): matches → hangup 404 (9999 is no user or extension)',)


def test_no_rule_matching_is_404_with_every_reason() -> None:
    r = router(
        rule("outside", {"type": "trunk", "trunks": ["pri"]}, number={"prefix": "0"}),
        rule("ventas", number={"exact": "800"}),
        rule("mobiles", number={"regex": r"6\d{8}"}),
    )
    d = route(r, "6140")
    assert d.rule is None and d.flow is None and d.did is None
    assert d.target == Target("hangup", number="6140", status=404)
    assert d.trace == (
        'rule "outside" (0): number 6140 does not start with "0"',
        'rule "ventas" (1): number 6140 is not "800"',
        'rule "mobiles" (2): number 6140 does not match regex "6\\d{8}"',
        "no rule matches 6140 → hangup 404",
    )


def test_first_matching_rule_decides() -> None:
    r = router(
        rule("emergency", {"type": "trunk", "trunks": ["pri"]}, number={"exact": "112"}),
        rule("short", {"type": "hangup", "status": 403}, number={"regex": r"\d{3}"}),
        rule("all"),
    )
    assert route(r, "112").rule == "emergency"
    assert route(r, "113").rule == "short" and route(r, "113").target.status == 403
    d = route(r, "6140")
    assert d.rule == "all" and len(d.trace) == 3


def test_regex_is_a_full_match_and_prefix_a_start() -> None:
    r = router(rule("r", number={"regex": r"61\d\d"}), rule("p", {"type": "hangup"}, number={"prefix": "61"}))
    assert route(r, "6140").rule == "r"
    assert route(r, "61400").rule == "p"  # "61\d\d" does not fullmatch five digits
    assert route(r, "76140").rule is None


def test_dids_are_kept_whatever_rule_applies() -> None:
    r = router(
        rule("inbound-outside", {"type": "trunk", "trunks": ["pri"], "prefix": "0"}, number={"prefix": "91"}),
        dids={"913346140": "6140"},
    )
    d = route(r, "913346140", PRI)
    assert d.did == "913346140" and d.target.kind == "trunk" and d.target.number == "0913346140"
    assert route(r, "913346141", PRI).did is None


# ---- sources ---------------------------------------------------------------------------------


def test_source_by_user_group_trunk_network_and_any_user() -> None:
    r = router(
        rule("boss", source={"users": ["6142"]}),
        rule("sales", source={"groups": ["ventas"]}),
        rule("from-pri", source={"trunks": ["pri"]}),
        rule("office", source={"networks": ["192.0.2.0/24", "2001:db8::/32"]}),
        rule("staff", source={"any_user": True}),
        groups={"ventas": ["6140", "6141"]},
    )
    assert route(r, "6140", Source("6142", None, "203.0.113.1")).rule == "boss"
    assert route(r, "6140", Source("6141", None, "203.0.113.1")).rule == "sales"
    assert route(r, "6140", PRI).rule == "from-pri"
    assert route(r, "6140", Source(None, None, "192.0.2.99")).rule == "office"
    assert route(r, "6140", Source(None, None, "2001:db8::7")).rule == "office"
    assert route(r, "6140", Source(None, None, "::ffff:192.0.2.99")).rule == "office"  # dual-stack socket
    assert route(r, "6140", Source("6199", None, "203.0.113.1")).rule == "staff"
    d = route(r, "6140", Source(None, "other", "203.0.113.1"))  # a trunk is not a user
    assert d.rule is None
    assert d.trace[:5] == (
        'rule "boss" (0): source: trunk other (203.0.113.1) is not one of users 6142',
        'rule "sales" (1): source: trunk other (203.0.113.1) is not in groups ventas',
        'rule "from-pri" (2): source: trunk other (203.0.113.1) is not on trunks pri',
        'rule "office" (3): source: trunk other (203.0.113.1) is not in networks 192.0.2.0/24, 2001:db8::/32',
        'rule "staff" (4): source: trunk other (203.0.113.1) is not an authenticated user',
    )


def test_source_kinds_combine_with_or_and_unknown_hosts_match_no_network() -> None:
    r = router(rule("mixed", source={"users": ["6142"], "networks": ["10.0.0.0/8"]}))
    assert route(r, "6140", Source("6142", None, "")).rule == "mixed"
    assert route(r, "6140", Source(None, None, "10.1.2.3")).rule == "mixed"
    d = route(r, "6140", Source(None, None, ""))
    assert d.trace[0] == 'rule "mixed" (0): source: an anonymous caller is not one of users 6142 or in networks 10.0.0.0/8'
    assert route(r, "6140", Source(None, None, "not-an-ip")).rule is None


def test_an_empty_source_match_holds_for_everyone() -> None:
    r = router(rule("everyone", source={}))
    for source in (USER_6140, PRI, ANONYMOUS, Source(None, None, "")):
        assert route(r, "6140", source).rule == "everyone"


def test_all_parts_of_a_match_must_hold_and_all_failures_are_told() -> None:
    r = router(
        rule(
            "night-sales",
            number={"prefix": "9"},
            source={"groups": ["ventas"]},
            calendar={"time": "22:00-06:00"},
        ),
        groups={"ventas": ["6141"]},
    )
    assert route(r, "6140").trace[0] == (
        'rule "night-sales" (0): number 6140 does not start with "9"; '
        "source: user 6140 (192.0.2.10) is not in groups ventas; "
        "calendar: 10:15 is not in 22:00-06:00"
    )
    assert route(r, "900", Source("6141", None, ""), madrid("2026-03-30T23:00")).rule == "night-sales"


# ---- calendars -------------------------------------------------------------------------------


def test_weekdays_and_time_of_day() -> None:
    r = router(rule("office", calendar={"weekdays": ["mon", "tue", "wed", "thu", "fri"], "time": "08:00-20:00"}))
    assert route(r, "6140", at=madrid("2026-03-30T08:00")).rule == "office"
    assert route(r, "6140", at=madrid("2026-03-30T19:59")).rule == "office"
    d = route(r, "6140", at=madrid("2026-03-30T20:00"))  # the end is excluded
    assert d.trace[0] == 'rule "office" (0): calendar: 20:00 is not in 08:00-20:00'
    d = route(r, "6140", at=madrid("2026-04-04T12:00"))
    assert d.trace[0] == 'rule "office" (0): calendar: 2026-04-04 (sat) is not on mon, tue, wed, thu, fri'


def test_a_range_wrapping_midnight_belongs_to_the_day_it_starts() -> None:
    r = router(rule("friday-night", calendar={"weekdays": ["fri"], "time": "22:00-06:00"}))
    assert route(r, "6140", at=madrid("2026-04-03T22:00")).rule == "friday-night"  # fri
    assert route(r, "6140", at=madrid("2026-04-03T23:59")).rule == "friday-night"
    assert route(r, "6140", at=madrid("2026-04-04T02:00")).rule == "friday-night"  # sat, friday's night
    assert route(r, "6140", at=madrid("2026-04-04T05:59")).rule == "friday-night"
    d = route(r, "6140", at=madrid("2026-04-04T06:00"))
    assert d.trace[0] == 'rule "friday-night" (0): calendar: 06:00 is not in 22:00-06:00; 2026-04-04 (sat) is not on fri'
    d = route(r, "6140", at=madrid("2026-04-03T02:00"))  # fri 02:00 is thursday's night
    assert d.trace[0] == (
        'rule "friday-night" (0): calendar: 02:00 belongs to the night of 2026-04-02 (thu), which is not on fri'
    )


def test_a_range_may_end_at_midnight() -> None:
    r = router(rule("evening", calendar={"time": "18:00-24:00"}))
    assert route(r, "6140", at=madrid("2026-03-30T23:59")).rule == "evening"
    assert route(r, "6140", at=madrid("2026-03-31T00:00")).rule is None


def test_dates_once_and_every_year_and_not_dates() -> None:
    r = router(
        rule("christmas", {"type": "hangup", "status": 480}, calendar={"dates": ["12-25", "2026-01-06"]}),
        rule("working", calendar={"weekdays": ["mon", "tue", "wed", "thu", "fri"], "not_dates": ["05-01"]}),
    )
    assert route(r, "6140", at=madrid("2026-12-25T10:00")).rule == "christmas"
    assert route(r, "6140", at=madrid("2031-12-25T10:00")).rule == "christmas"  # every year
    assert route(r, "6140", at=madrid("2026-01-06T10:00")).rule == "christmas"
    d = route(r, "6140", at=madrid("2027-01-06T10:00"))  # that one only in 2026 (a wednesday in 2027)
    assert d.rule == "working"
    assert d.trace[0] == 'rule "christmas" (0): calendar: 2027-01-06 (wed) is not one of the dates 12-25, 2026-01-06'
    d = route(r, "6140", at=madrid("2026-05-01T10:00"))  # a friday, but May Day
    assert d.rule is None
    assert d.trace[1] == 'rule "working" (1): calendar: 2026-05-01 (fri) is in not_dates (05-01)'


def test_dates_follow_a_wrapping_range_into_the_next_morning() -> None:
    r = router(rule("nochebuena", calendar={"dates": ["12-24"], "time": "20:00-08:00"}))
    assert route(r, "6140", at=madrid("2026-12-25T03:00")).rule == "nochebuena"
    assert route(r, "6140", at=madrid("2026-12-24T03:00")).rule is None  # the night of the 23rd


def test_each_rule_has_its_own_time_zone() -> None:
    at = datetime(2026, 3, 30, 7, 30, tzinfo=UTC)  # 09:30 in Madrid, 08:30 in the Canaries
    r = router(
        rule("canarias", calendar={"time": "09:00-18:00", "timezone": "Atlantic/Canary"}),
        rule("peninsula", calendar={"time": "09:00-18:00"}),
    )
    d = route(r, "6140", at=at)
    assert d.rule == "peninsula"
    assert d.trace[0] == 'rule "canarias" (0): calendar: 08:30 is not in 09:00-18:00'
    assert route(r, "6140", at=at + timedelta(hours=1)).rule == "canarias"


def test_daylight_saving_days_in_madrid() -> None:
    r = router(rule("office", calendar={"time": "08:00-20:00"}), rule("night", calendar={"time": "02:00-03:00"}))
    # 2026-03-29: clocks go from 02:00 CET to 03:00 CEST. 06:30 UTC is 08:30 local that day,
    # 07:30 the day before.
    assert route(r, "6140", at=datetime(2026, 3, 29, 6, 30, tzinfo=UTC)).rule == "office"
    d = route(r, "6140", at=datetime(2026, 3, 28, 6, 30, tzinfo=UTC))
    assert d.trace[0] == 'rule "office" (0): calendar: 07:30 is not in 08:00-20:00'
    # 02:00-03:00 does not exist that night: 00:59 UTC is 01:59 CET, 01:00 UTC is 03:00 CEST.
    assert route(r, "6140", at=datetime(2026, 3, 29, 0, 59, tzinfo=UTC)).rule is None
    assert route(r, "6140", at=datetime(2026, 3, 29, 1, 0, tzinfo=UTC)).rule is None
    # 2026-10-25: 02:00-03:00 happens twice (CEST, then CET); both hold.
    assert route(r, "6140", at=datetime(2026, 10, 25, 0, 30, tzinfo=UTC)).rule == "night"
    assert route(r, "6140", at=datetime(2026, 10, 25, 1, 30, tzinfo=UTC)).rule == "night"
    assert route(r, "6140", at=datetime(2026, 10, 25, 2, 0, tzinfo=UTC)).rule is None  # 03:00 CET


def test_calendars_read_the_instant_whatever_offset_it_comes_with() -> None:
    r = router(rule("office", calendar={"time": "08:00-20:00"}))
    instant = datetime(2026, 3, 30, 17, 59, tzinfo=UTC)  # 19:59 in Madrid
    for offset in (0, -5, 9):
        at = instant.astimezone(timezone(timedelta(hours=offset)))
        assert route(r, "6140", at=at).rule == "office"


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        route(router(), "6140", at=datetime(2026, 3, 30, 10, 15))


# ---- targets ---------------------------------------------------------------------------------


def test_user_targets_name_a_user_or_an_extension_of_one() -> None:
    r = router(
        rule("boss", {"type": "user", "user": "6142", "ring_s": 20}, number={"exact": "1"}),
        rule("by-ext", {"type": "user", "user": "5140"}, number={"exact": "2"}),
        rule("gone", {"type": "user", "user": "6199"}, number={"exact": "3"}),
    )
    assert route(r, "1").target == Target("user", user="6142", number="1", ring_s=20)
    assert route(r, "2").target == Target("user", user="6140", number="2", ring_s=60.0)
    d = route(r, "3")
    assert d.rule == "gone" and d.target == Target("hangup", number="3", status=404)
    assert d.trace[-1] == 'rule "gone" (2): matches → hangup 404 (6199 is no user or extension)'


def test_a_did_to_an_unknown_user_is_404_and_says_why() -> None:
    d = route(router(dids={"913346199": "6199"}), "913346199", PRI)
    assert d.target.status == 404 and d.did == "913346199"
    assert d.trace == ('rule "local" (0): matches → hangup 404 (DID 913346199 → 6199 is no user or extension)',)
    d = route(router(dids={"913345140": "5140"}), "913345140", PRI)  # a DID to an extension
    assert d.trace == ('rule "local" (0): matches → user 6140 (DID 913345140 → 5140)',)


def test_extension_targets() -> None:
    r = router(
        rule("desk", {"type": "extension", "extension": "5140", "ring_s": 15}, number={"exact": "1"}),
        rule("nobody", {"type": "extension", "extension": "5999"}, number={"exact": "2"}),
        rule("dialled", {"type": "extension"}),
        dids={"913346140": "6140"},
    )
    assert route(r, "1").target == Target("extension", extension="5140", number="1", ring_s=15)
    d = route(r, "2")
    assert d.target == Target("hangup", number="2", status=404)
    assert d.trace[-1] == 'rule "nobody" (1): matches → hangup 404 (5999 is no extension)'
    assert route(r, "7140").target == Target("extension", extension="7140", number="7140", ring_s=60.0)
    assert route(r, "6142").target.status == 404  # a user without extensions
    assert route(r, "913346140", PRI).target.status == 404  # a DID names a user, not a device


def test_trunk_targets_strip_then_prefix() -> None:
    r = router(
        rule(
            "outside",
            {"type": "trunk", "trunks": ["pri", "carrier"], "strip": 1, "prefix": "+34", "caller_id": "913346000"},
            number={"prefix": "0"},
        ),
        ring_s=45,
    )
    d = route(r, "0912345678")
    assert d.target == Target(
        "trunk", trunks=("pri", "carrier"), number="+34912345678", caller_id="913346000", ring_s=45
    )
    assert d.trace == ('rule "outside" (0): matches → trunk pri, carrier as +34912345678 (caller ID 913346000)',)


def test_nothing_left_after_strip_is_484() -> None:
    r = router(rule("outside", {"type": "trunk", "trunks": ["pri"], "strip": 1, "prefix": "9"}, number={"prefix": "0"}))
    d = route(r, "0")
    assert d.target == Target("hangup", number="0", status=484)
    assert d.trace == ('rule "outside" (0): matches → hangup 484 (stripping 1 digit(s) leaves nothing of 0)',)


def test_outgoing_numbers_longer_than_max_digi_llam_sal_are_484() -> None:
    r = router(
        rule("outside", {"type": "trunk", "trunks": ["pri"], "strip": 1, "prefix": "+0034"}, number={"prefix": "0"}),
        max_digi_llam_sal=13,
    )
    assert route(r, "0912345678").target.number == "+0034912345678"  # 14 characters, 13 digits
    d = route(r, "09123456789")
    assert d.target == Target("hangup", number="09123456789", status=484, reason="Number Too Long")
    assert d.trace == (
        'rule "outside" (0): matches → hangup 484 Number Too Long '
        "(+00349123456789 has 14 digits, more than max_digi_llam_sal 13)",
    )


def test_hangup_targets() -> None:
    r = router(rule("closed", {"type": "hangup", "status": 503, "reason": "Closed", "retry_after": 3600}))
    d = route(r, "6140")
    assert d.target == Target("hangup", number="6140", status=503, reason="Closed", retry_after=3600)
    assert d.trace == ('rule "closed" (0): matches → hangup 503 Closed (Retry-After 3600)',)


def test_announcement_targets_play_then_hang_up_or_go_on() -> None:
    r = router(
        rule("closed", {"type": "announcement", "prompt": "fuera-de-horario"}, number={"exact": "900"}),
        rule("welcome", {"type": "announcement", "prompt": "es/bienvenida", "then": {"type": "user", "user": "6141"}}),
    )
    d = route(r, "900")
    assert d.target == Target("announcement", number="900", prompt="fuera-de-horario")
    assert d.trace[-1] == 'rule "closed" (0): matches → announcement fuera-de-horario, then hang up'
    d = route(r, "6140")
    assert d.target == Target("announcement", number="6140", prompt="es/bienvenida",
                              then=Target("user", user="6141", number="6140", ring_s=60.0))
    assert d.trace[-1].endswith("→ announcement es/bienvenida, then user 6141")
    for bad in ("../etc/passwd", "/abs", "a/../b", "", "x y"):
        with pytest.raises(ValidationError):
            B2buaConfig.model_validate({"dialplan": [rule("r", {"type": "announcement", "prompt": bad})]})
    with pytest.raises(ValidationError):  # then is a target, not another announcement or a flow
        B2buaConfig.model_validate({"dialplan": [rule("r", {"type": "announcement", "prompt": "a",
                                                            "then": {"type": "announcement", "prompt": "b"}})]})


def test_flows_resolve_their_outcomes() -> None:
    r = router(
        rule(
            "inbound",
            {
                "type": "flow",
                "flow": "Cen_Inicio_SIP",
                "ringing": True,
                "then": {"type": "user"},
                "desborda": {"type": "trunk", "trunks": ["pri"], "prefix": "0"},
            },
            source={"trunks": ["pri"]},
        ),
        rule("measured", {"type": "flow", "flow": "Cen_TrunkInternos", "then": {"type": "extension"},
                          "agujero": {"type": "hangup", "status": 486}}),
        dids={"913346140": "6140"},
    )
    d = route(r, "913346140", PRI)
    assert d == Decision(
        rule="inbound",
        flow="Cen_Inicio_SIP",
        target=Target("user", user="6140", number="913346140", ring_s=60.0),
        on_agujero=None,
        on_desborda=Target("trunk", trunks=("pri",), number="0913346140", ring_s=60.0),
        ringing=True,
        did="913346140",
        trace=(
            'rule "inbound" (0): matches → flow Cen_Inicio_SIP (180 while queued), then user 6140 '
            "(DID 913346140); agujero: 503 + Retry-After (default); desborda: trunk pri as 0913346140",
        ),
    )
    d = route(r, "5140")
    assert (d.flow, d.ringing, d.target.kind, d.on_agujero, d.on_desborda) == (
        "Cen_TrunkInternos", False, "extension", Target("hangup", number="5140", status=486), None
    )


def test_a_flow_inside_a_flow_is_refused_when_the_router_is_built() -> None:
    nested = {"type": "flow", "flow": "a", "then": {"type": "user"},
              "agujero": {"type": "flow", "flow": "b", "then": {"type": "user"}}}
    with pytest.raises(ValueError, match=r"b2bua.dialplan\[0\].action.agujero: a flow's outcome cannot go through another flow"):
        router(rule("r", nested))


# ---- the config's own checks -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("calendar", "error"),
    [
        ({"time": "22:00-24:30"}, "time must be HH:MM-HH:MM"),
        ({"time": "24:00-06:00"}, "time must be HH:MM-HH:MM"),
        ({"time": "08:00-08:00"}, "is empty"),
        ({"dates": ["02-30"]}, "must be a real YYYY-MM-DD or MM-DD"),
        ({"dates": ["2026-02-29"]}, "must be a real"),
        ({"not_dates": ["2026-1-06"]}, "must be a real"),
        ({"timezone": "Europe/Madird"}, "unknown time zone"),
        ({"timezone": "Europe"}, "unknown time zone"),
    ],
)
def test_calendar_mistakes_are_config_errors(calendar: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        B2buaConfig.model_validate({"dialplan": [rule("r", calendar=calendar)]})


def test_leap_days_every_year_and_whole_days_are_accepted() -> None:
    r = router(rule("leap", calendar={"dates": ["02-29"], "time": "00:00-24:00"}))
    assert route(r, "6140", at=madrid("2028-02-29T00:00")).rule == "leap"
    assert route(r, "6140", at=madrid("2027-03-01T00:00")).rule is None


def test_trunk_prefixes_are_dialable() -> None:
    with pytest.raises(ValidationError, match="prefix"):
        B2buaConfig.model_validate({"dialplan": [rule("r", {"type": "trunk", "trunks": ["pri"], "prefix": "0-"})]})


# ---- properties ------------------------------------------------------------------------------

numbers = st.text("0123456789*#+", min_size=1, max_size=32)


@settings(max_examples=300, deadline=None)
@given(
    number=numbers,
    strip=st.integers(0, 32),
    prefix=st.text("0123456789+", max_size=12),
    cap=st.integers(1, 32),
)
def test_rewriting_never_sends_more_digits_than_the_cap(number: str, strip: int, prefix: str, cap: int) -> None:
    r = router(rule("out", {"type": "trunk", "trunks": ["pri"], "strip": strip, "prefix": prefix}), max_digi_llam_sal=cap)
    target = route(r, number).target
    kept = number[strip:]
    if target.kind == "trunk":
        assert target.number == prefix + kept and kept
        assert len(target.number) - target.number.count("+") <= cap
    else:
        assert target.status == 484 and target.number == number
        assert not kept or len(prefix + kept) - (prefix + kept).count("+") > cap


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, 1439),
    end=st.integers(1, 1440),
    moment=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31)),
)
def test_a_range_and_its_complement_split_every_day(start: int, end: int, moment: datetime) -> None:
    assume(start != end)

    def hhmm(m: int) -> str:
        return f"{m // 60:02d}:{m % 60:02d}"

    r = router(rule("in", calendar={"time": f"{hhmm(start)}-{hhmm(end)}", "timezone": "UTC"}))
    at = moment.replace(tzinfo=UTC)
    minute = at.hour * 60 + at.minute
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    assert (route(r, "6140", at=at).rule == "in") is inside
    if end < 1440:  # the complement "end-start" holds exactly when "start-end" does not
        other = router(rule("out", calendar={"time": f"{hhmm(end)}-{hhmm(start)}", "timezone": "UTC"}))
        assert (route(other, "6140", at=at).rule == "out") is not inside


sources = st.sampled_from([USER_6140, PRI, ANONYMOUS, Source("6141", None, "10.0.0.9"), Source(None, None, "")])


@settings(max_examples=300, deadline=None)
@given(number=numbers, source=sources, moment=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2030, 1, 1)))
def test_routing_is_total_and_traces_every_rule_tried(number: str, source: Source, moment: datetime) -> None:
    r = router(
        rule("emergency", {"type": "trunk", "trunks": ["pri"]}, number={"exact": "112"}),
        rule("outside", {"type": "trunk", "trunks": ["pri"], "strip": 1}, number={"regex": r"0[0-9]+"},
             source={"any_user": True}),
        rule("night", {"type": "hangup", "status": 480}, calendar={"time": "22:00-07:00"}),
        rule("inbound", {"type": "flow", "flow": "f", "then": {"type": "user"}}, source={"trunks": ["pri"]}),
        rule("internal", number={"regex": r"[0-9]{4}"}, source={"networks": ["10.0.0.0/8"]}),
        dids={"913346140": "6140"},
    )
    at = moment.replace(tzinfo=MADRID)
    d = route(r, number, source, at)
    names = ["emergency", "outside", "night", "inbound", "internal"]
    if d.rule is None:
        assert len(d.trace) == len(names) + 1 and d.target.status == 404
    else:
        assert len(d.trace) == names.index(d.rule) + 1 and "matches →" in d.trace[-1]
    assert all(line.startswith(f'rule "{n}" ({i}): ') for i, (n, line) in enumerate(zip(names, d.trace, strict=False)))
    assert d.did == (number if number == "913346140" else None)
    # The same instant in UTC decides the same.
    assert route(r, number, source, at.astimezone(UTC)) == d
