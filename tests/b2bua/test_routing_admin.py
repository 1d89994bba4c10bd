"""The dialplan's config checks across sections (`check_references`, `reference_warnings`),
the `GET /api/route` admin route and `vivait-sip ctl route`, against an aiohttp test
server with a stand-in for the B2BUA feature (the registrar's admin routes are tested the
same way in tests/registrar/test_user_cli.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import Field, create_model

from vivait_sip import cli
from vivait_sip.b2bua.admin import add_routes, check_references, reference_warnings
from vivait_sip.b2bua.cli import add_commands
from vivait_sip.b2bua.config import B2buaConfig
from vivait_sip.b2bua.routing import Router
from vivait_sip.config import CoreConfig, config_model
from vivait_sip.contract import Feature

Client = TestClient[web.Request, web.Application]


@cache
def composed() -> type[CoreConfig]:
    """The whole config's model with a `b2bua` section, whether or not the B2BUA feature
    is listed in vivait_sip/features.py yet."""
    base = config_model()
    if "b2bua" in base.model_fields:
        return base
    model: type[CoreConfig] = create_model(
        "ConfigWithB2bua", __base__=base, b2bua=(B2buaConfig, Field(default_factory=B2buaConfig))
    )
    return model


def config(data: dict[str, Any]) -> CoreConfig:
    return composed().model_validate(data)


FLOW = {"flujo": "Cen_Inicio_SIP", "tasa_sal_seg": 2, "dnis_max": 2, "dnis_umbral_masivo": 10, "to_desborda_seg": 5}
USERS = {
    "users": [
        {"number": "6140", "password": "x", "extension": "5140", "web_extension": "7140"},
        {"number": "6141", "password": "y"},
    ],
    "user_ranges": [{"first": "3000", "last": "3099", "password_template": "p{number}", "extension_offset": 1000}],
}


# ---- check_references -----------------------------------------------------------------------


def test_every_mistake_is_reported_at_once_with_its_path() -> None:
    mistaken = config(
        {
            "registrar": USERS,
            "mdflow": {"flows": [FLOW]},
            "b2bua": {
                "trunks": [{"name": "pri", "host": "10.0.0.5"}, {"name": "pri", "host": "10.0.0.6", "inbound_user": "5140"}],
                "groups": {"ventas": ["6140", "5140", "4005", "ana"]},
                "dids": {"913346140": "6140", "6141": "6140", "7140": "6140", "915553000": "4000",
                         "915553001": "+34915553001"},
                "caller_ids": {"6140": "913346140", "5140": "913346141"},
                "dialplan": [
                    {"name": "outside", "match": {"number": {"prefix": "0"}},
                     "action": {"type": "trunk", "trunks": ["pri", "pri2"]}},
                    {"name": "sales", "match": {"source": {"groups": ["ventas", "soporte"], "trunks": ["carrier"],
                                                           "users": ["7140"]}},
                     "action": {"type": "user"}},
                    {"name": "inbound",
                     "action": {"type": "flow", "flow": "Cen_Inicio", "then": {"type": "user", "user": "ana"},
                                "desborda": {"type": "flow", "flow": "Cen_Inicio_SIP", "then": {"type": "user"}}}},
                    {"name": "outside", "action": {"type": "extension", "extension": "5140#"}},
                ],
            },
        }
    )
    assert check_references(mistaken) == [
        'b2bua.dialplan[3].name: rule name "outside" is used twice (first at b2bua.dialplan[0])',
        'b2bua.trunks[1].name: trunk name "pri" is used twice (first at b2bua.trunks[0])',
        "b2bua.groups.ventas[1]: 5140 is user 6140's extension; groups list user numbers",
        "b2bua.groups.ventas[2]: 4005 is user 3005's extension; groups list user numbers",
        "b2bua.groups.ventas[3]: 'ana' is not a user number (2 to 15 digits)",
        "b2bua.trunks[1].inbound_user: 5140 is user 6140's extension; trunks list user numbers",
        "b2bua.caller_ids.5140: 5140 is user 6140's extension; caller IDs list user numbers",
        "b2bua.dids.6141: 6141 is user 6141's number; as a DID of 6140 it would take that user's calls",
        "b2bua.dids.915553001: '+34915553001' is not a user number (2 to 15 digits)",
        'b2bua.dialplan[0].action.trunks[1]: no trunk named "pri2" (b2bua.trunks[].name)',
        'b2bua.dialplan[1].match.source.trunks[0]: no trunk named "carrier" (b2bua.trunks[].name)',
        'b2bua.dialplan[1].match.source.groups[1]: no group named "soporte" (b2bua.groups)',
        "b2bua.dialplan[1].match.source.users[0]: 7140 is user 6140's web extension; sources list user numbers",
        'b2bua.dialplan[2].action.flow: no mdflow flow named "Cen_Inicio" (mdflow.flows[].flujo)',
        "b2bua.dialplan[2].action.then.user: 'ana' is not a user number or extension (2 to 15 digits)",
        "b2bua.dialplan[2].action.desborda: a flow's outcome cannot go through another flow (one admission per call)",
        "b2bua.dialplan[3].action.extension: '5140#' is not a user number or extension (2 to 15 digits)",
    ]


def test_a_caller_id_must_be_a_number() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="caller ID 'ventas' of user 6140 must be digits"):
        config({"registrar": USERS, "b2bua": {"caller_ids": {"6140": "ventas"}}})


def test_a_sound_config_has_no_errors() -> None:
    sound = config(
        {
            "registrar": USERS,
            "mdflow": {"flows": [FLOW]},
            "b2bua": {
                "trunks": [{"name": "pri", "host": "10.0.0.5"}],
                "groups": {"ventas": ["6140", "3005"]},
                # Its own user's number or extension may be a DID of that user.
                "dids": {"913346140": "6140", "5140": "6140", "3000": "3000"},
                "caller_ids": {"6140": "913346140", "3005": "+34913343005"},
                "dialplan": [
                    {"name": "inbound", "match": {"source": {"trunks": ["pri"], "groups": ["ventas"]}},
                     "action": {"type": "flow", "flow": "Cen_Inicio_SIP", "then": {"type": "user"},
                                "agujero": {"type": "trunk", "trunks": ["pri"]}}},
                ],
            },
        }
    )
    assert check_references(sound) == []
    assert reference_warnings(sound) == []


def test_without_a_b2bua_section_there_is_nothing_to_check() -> None:
    plain = CoreConfig()
    assert check_references(plain) == [] and reference_warnings(plain) == []


def test_a_rule_naming_a_music_on_hold_class_that_does_not_exist_is_an_error() -> None:
    rules = [{"name": "ventas", "moh": "ventas", "action": {"type": "user"}},
             {"name": "soporte", "moh": "default", "record": True, "action": {"type": "user"}}]
    wrong = config({"b2bua": {"dialplan": rules}, "media": {}})
    assert check_references(wrong) == ['b2bua.dialplan[0].moh: no music-on-hold class "ventas" (media.moh_classes, or "default")']
    right = config({"b2bua": {"dialplan": rules}, "media": {"moh_classes": {"ventas": "/srv/moh/ventas"}}})
    assert check_references(right) == []


def test_announcements_are_checked_like_targets_and_unknown_prompts_are_warnings() -> None:
    rules = [{"name": "a", "action": {"type": "announcement", "prompt": "no-such-prompt",
                                      "then": {"type": "trunk", "trunks": ["nope"]}}},
             {"name": "b", "action": {"type": "announcement", "prompt": "bienvenida"}},
             {"name": "c", "action": {"type": "announcement", "prompt": "beep"}}]
    checked = config({"b2bua": {"dialplan": rules}, "media": {}})
    assert check_references(checked) == ['b2bua.dialplan[0].action.then.trunks[0]: no trunk named "nope" (b2bua.trunks[].name)']
    [warning] = reference_warnings(checked)
    assert warning.startswith('b2bua.dialplan[0].action.prompt: no prompt "no-such-prompt" in ')


def test_flows_need_the_mdflow_section() -> None:
    bare = config({"b2bua": {"dialplan": [{"name": "f", "action": {"type": "flow", "flow": "x", "then": {"type": "user"}}}]}})
    assert check_references(bare) == ['b2bua.dialplan[0].action.flow: no mdflow flow named "x" (mdflow.flows[].flujo)']


def test_numbers_no_config_user_has_are_warnings_when_the_config_defines_users() -> None:
    data = {
        "b2bua": {
            "groups": {"ventas": ["6140", "6150"]},
            "dids": {"913346199": "6199", "913343000": "3000"},
            "dialplan": [
                {"name": "boss", "match": {"source": {"users": ["6160"]}},
                 "action": {"type": "flow", "flow": "Cen_Inicio_SIP", "then": {"type": "user", "user": "6170"},
                            "agujero": {"type": "extension", "extension": "5180"}}},
                {"name": "desk", "action": {"type": "extension", "extension": "4099"}},
            ],
        },
        "mdflow": {"flows": [FLOW]},
    }
    assert reference_warnings(config({**data, "registrar": USERS})) == [
        "b2bua.dids.913346199: 6199 is no user or extension of the config (only the store can have it)",
        "b2bua.groups.ventas[1]: 6150 is no user or extension of the config (only the store can have it)",
        "b2bua.dialplan[0].match.source.users[0]: 6160 is no user or extension of the config (only the store can have it)",
        "b2bua.dialplan[0].action.then.user: 6170 is no user or extension of the config (only the store can have it)",
        "b2bua.dialplan[0].action.agujero.extension: 5180 is no user or extension of the config (only the store can have it)",
    ]
    assert check_references(config({**data, "registrar": USERS})) == []
    # Users only in the store (added with `vivait-sip user add`): nothing to compare with.
    assert reference_warnings(config(data)) == []


# ---- GET /api/route ---------------------------------------------------------------------------

ROUTING = B2buaConfig.model_validate(
    {
        "dids": {"913346140": "6140"},
        "trunks": [{"name": "pri", "host": "10.0.0.5", "networks": ["10.0.0.0/24"]}],
        "dialplan": [
            {"name": "outside", "match": {"number": {"prefix": "0"}, "source": {"any_user": True}},
             "action": {"type": "trunk", "trunks": ["pri"], "strip": 1, "caller_id": "913346000"}},
            {"name": "night", "match": {"calendar": {"time": "22:00-06:00"}},
             "action": {"type": "hangup", "status": 480, "reason": "Closed"}},
            {"name": "inbound", "match": {"source": {"trunks": ["pri"]}},
             "action": {"type": "flow", "flow": "Cen_Inicio_SIP", "ringing": True, "then": {"type": "user"},
                        "agujero": {"type": "hangup", "status": 486}}},
            {"name": "internal", "match": {"number": {"regex": "[0-9]{4}"}, "source": {"networks": ["192.0.2.0/24"]}},
             "action": {"type": "user"}},
        ],
    }
)
MORNING = "2026-03-30T10:15:00+02:00"


class Users:
    def __init__(self) -> None:
        self.users = {"6140": ("5140",), "6141": ("6141",)}

    def user_of(self, number: str) -> str | None:
        if number in self.users:
            return number
        return next((u for u, exts in self.users.items() if number in exts), None)

    def is_extension(self, number: str) -> bool:
        return any(number in exts for exts in self.users.values())


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    directory = Users()
    feature = SimpleNamespace(router=Router(ROUTING, directory), directory=directory)
    app = web.Application()
    add_routes(app, feature)
    async with TestClient(TestServer(app)) as c:
        yield c


async def route(client: Client, number: str, source: str = "", at: str = MORNING) -> tuple[int, dict[str, Any]]:
    params = {"number": number, "at": at}
    if source:
        params["from"] = source
    resp = await client.get("/api/route", params=params)
    return resp.status, await resp.json()


async def test_route_answers_the_decision_and_its_trace(client: Client) -> None:
    status, body = await route(client, "6140", "6141@192.0.2.7")
    assert status == 200
    assert body == {
        "number": "6140",
        "source": {"user": "6141", "trunk": None, "host": "192.0.2.7"},
        "at": MORNING,
        "rule": "internal",
        "flow": None,
        "ringing": False,
        "target": {"kind": "user", "user": "6140", "extension": None, "trunks": [], "number": "6140",
                   "caller_id": None, "status": 0, "reason": None, "retry_after": None, "ring_s": 60.0,
                   "prompt": None, "then": None},
        "on_agujero": None,
        "on_desborda": None,
        "did": None,
        "trace": [
            'rule "outside" (0): number 6140 does not start with "0"',
            'rule "night" (1): calendar: 10:15 is not in 22:00-06:00',
            'rule "inbound" (2): source: user 6141 (192.0.2.7) is not on trunks pri',
            'rule "internal" (3): matches → user 6140',
        ],
    }


async def test_route_recognises_trunks_by_address_or_name(client: Client) -> None:
    for source, host in (("10.0.0.5", "10.0.0.5"), ("trunk:pri", ""), ("trunk:pri@10.0.0.9", "10.0.0.9")):
        status, body = await route(client, "913346140", source)
        assert status == 200 and body["source"] == {"user": None, "trunk": "pri", "host": host}
        assert (body["rule"], body["flow"], body["did"], body["ringing"]) == ("inbound", "Cen_Inicio_SIP", "913346140", True)
        assert body["target"]["user"] == "6140" and body["on_agujero"]["status"] == 486
    status, body = await route(client, "913346140", "[2001:db8::1]")
    assert body["source"] == {"user": None, "trunk": None, "host": "2001:db8::1"} and body["rule"] is None
    status, body = await route(client, "5140", "5140")  # an extension calls as its user
    assert body["source"]["user"] == "6140"


async def test_route_reads_the_time_it_is_given_or_now(client: Client) -> None:
    status, body = await route(client, "6140", at="2026-03-30T21:30:00Z")  # 23:30 in Madrid
    assert status == 200 and body["rule"] == "night" and body["target"]["reason"] == "Closed"
    resp = await client.get("/api/route", params={"number": "6140"})
    body = await resp.json()
    assert resp.status == 200
    assert abs(datetime.fromisoformat(body["at"]) - datetime.now(UTC)) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({}, "number is required"),
        ({"number": " "}, "number is required"),
        ({"number": "6140", "from": "6199"}, "from: no user 6199"),
        ({"number": "6140", "from": "trunk:carrier"}, 'from: no trunk named "carrier"'),
        ({"number": "6140", "from": "6140@pbx"}, "from: 'pbx' does not appear to be an IPv4 or IPv6 address"),
        ({"number": "6140", "at": "2026-03-30T10:15"}, "at: at '2026-03-30T10:15' needs a UTC offset"),
        ({"number": "6140", "at": "mañana"}, "at: Invalid isoformat string"),
    ],
)
async def test_route_refuses_bad_questions(client: Client, params: dict[str, str], error: str) -> None:
    resp = await client.get("/api/route", params=params)
    assert resp.status == 400
    assert (await resp.json())["error"].startswith(error)


# ---- ctl route ----------------------------------------------------------------------------------


class RouteCommands(Feature[Any]):
    """The B2BUA feature's command hook, until vivait_sip/features.py lists that feature."""

    name = "route-commands"

    @classmethod
    def add_commands(cls, sub: Any, ctl_sub: Any) -> None:
        add_commands(sub, ctl_sub)


@pytest.fixture(autouse=True)
def route_command(monkeypatch: pytest.MonkeyPatch) -> None:
    classes = cli.feature_classes()
    if not any(c.name == "b2bua" for c in classes):
        monkeypatch.setattr(cli, "feature_classes", lambda: (*classes, RouteCommands))


async def ctl(client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    admin = f"{client.host}:{client.port}"
    code = await asyncio.to_thread(cli.main, ["ctl", "--admin", admin, "--data-dir", str(tmp_path), "route", *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def test_ctl_route_explains_a_call_through_a_flow(
    client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await ctl(client, tmp_path, capsys, "913346140", "--from", "trunk:pri", "--at", MORNING)
    assert code == 0
    assert out.splitlines() == [
        f"Calling 913346140 (a DID) from trunk pri at {MORNING}:",
        '  rule "outside" (0): number 913346140 does not start with "0"; source: trunk pri is not an authenticated user',
        '  rule "night" (1): calendar: 10:15 is not in 22:00-06:00',
        '  rule "inbound" (2): matches → flow Cen_Inicio_SIP (180 while queued), then user 6140 (DID 913346140); '
        "agujero: hangup 486; desborda: 503 + Retry-After (default)",
        'Rule "inbound" matches: the call goes through mdflow flow Cen_Inicio_SIP, ringing (180) while it waits '
        "in its queue; once admitted, it rings user 6140's active devices.",
        "If the flow has no queue for it (agujero): it is refused with 486.",
        "If it waits too long (desborda): it is refused with 503 and Retry-After (the default).",
    ]


async def test_ctl_route_to_a_trunk(client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await ctl(client, tmp_path, capsys, "0912345678", "--from", "6140", "--at", MORNING)
    assert code == 0
    assert out.splitlines()[-1] == (
        'Rule "outside" matches: it leaves on trunk pri as 912345678 with caller ID 913346000.'
    )


async def test_ctl_route_exits_1_when_the_call_is_refused(
    client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await ctl(client, tmp_path, capsys, "6140", "--at", "2026-03-30T23:30+02:00")
    assert code == 1 and out.splitlines()[-1] == 'Rule "night" matches: it is refused with 480 Closed.'
    code, out, _ = await ctl(client, tmp_path, capsys, "alice", "--at", MORNING)
    assert code == 1
    assert out.splitlines()[-2:] == ["  no rule matches alice → hangup 404", "No rule matches: it is refused with 404."]
    code, out, _ = await ctl(client, tmp_path, capsys, "6199", "--from", "192.0.2.1", "--at", MORNING)
    assert code == 1 and out.splitlines()[-2:] == [
        '  rule "internal" (3): matches → hangup 404 (6199 is no user or extension)',
        'Rule "internal" matches: it is refused with 404.',
    ]


async def test_ctl_route_json(client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await ctl(client, tmp_path, capsys, "6140", "--from", "6141@192.0.2.7", "--at", MORNING, "--json")
    body = json.loads(out)
    assert code == 0 and body["rule"] == "internal" and body["target"]["user"] == "6140"


async def test_ctl_route_times_without_an_offset_are_local(
    client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused at any hour: an anonymous caller reaches no one in this dialplan.
    code, out, _ = await ctl(client, tmp_path, capsys, "6140", "--at", "2026-03-30T23:00", "--json")
    assert code == 1 and json.loads(out)["at"] == datetime(2026, 3, 30, 23, 0).astimezone().isoformat()
    code, out, _ = await ctl(client, tmp_path, capsys, "6140", "--at", "23:30", "--json")
    assert code == 1 and datetime.fromisoformat(json.loads(out)["at"]).strftime("%H:%M") == "23:30"


async def test_ctl_route_mistakes(client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await ctl(client, tmp_path, capsys, "6140", "--at", "mañana")
    assert code == 2 and "error: --at 'mañana' is not a time" in err
    code, _, err = await ctl(client, tmp_path, capsys, "6140", "--from", "6199")
    assert code == 1 and "HTTP 400" in err and "from: no user 6199" in err
