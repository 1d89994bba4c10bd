"""REGISTER and the 407 guards against the real server, with our own client (SHA-256 too)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from harness import Server
from reg_helpers import Phone, registrations, start_server

pytestmark = pytest.mark.timeout(60)

USERS = [
    {"number": "6140", "password": "pw-6140"},
    {"number": "6141", "password": "pw-6141", "extension": "5141"},
    {"number": "6142", "password": "pw-6142"},
    {"number": "6143", "password": "pw-6143"},
    {"number": "6144", "password": "pw-6144"},
    {"number": "6145", "password": "pw-6145"},
    {"number": "6199", "password": "pw-6199"},  # never registers: calls to it fail at once
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("srv"),
        {"min_expires": 60, "max_expires": 3600, "default_expires": 1800, "max_contacts_per_aor": 3, "users": USERS,
         "algorithms": ["SHA-256", "MD5"],
         "trunks": [{"name": "carrier", "networks": ["127.0.0.4/32"]}]},
        domains=["pbx.test"],
    )
    yield srv
    srv.kill()


@pytest.fixture
def phones() -> Iterator[list[Phone]]:
    made: list[Phone] = []
    yield made
    for phone in made:
        phone.close()


def phone(server: Server, made: list[Phone], user: str, **kw: object) -> Phone:
    transport = str(kw.get("transport", "udp"))
    p = Phone(server.sip_port(transport), user, f"pw-{user}", **kw)  # type: ignore[arg-type]
    made.append(p)
    return p


def test_sha256_challenge_first_and_answered(server: Server, phones: list[Phone]) -> None:
    p = phone(server, phones, "6140")
    first = p.send(p.request("REGISTER", "sip:6140@127.0.0.1", [("Contact", p.contact())]))
    assert first.status == 401
    assert [c.algorithm for c in first.challenges()] == ["SHA-256", "MD5"]  # RFC 8760 order
    assert all(c.qop == ("auth",) and c.realm == "pbx.test" for c in first.challenges())
    reply = p.register(600)
    assert reply.status == 200
    assert reply.get_all("Contact") == [f"{p.contact()};expires=600"]
    assert str(reply.get("Date")).endswith("GMT")


def test_md5_and_expiry_rules(server: Server, phones: list[Phone]) -> None:
    p = phone(server, phones, "6142", algorithm="MD5")
    assert p.register(None).get_all("Contact") == [f"{p.contact()};expires=1800"]  # default
    assert p.register(99999).get_all("Contact") == [f"{p.contact()};expires=3600"]  # capped at max
    too_brief = p.register(10)
    assert too_brief.status == 423 and too_brief.get("Min-Expires") == "60"
    # The contact's expires parameter wins over the Expires header.
    reply = p.register(600, contacts=[p.contact() + ";expires=120"])
    assert reply.get_all("Contact") == [f"{p.contact()};expires=120"]
    # Expires 0 on one contact removes only that binding.
    p.register(600, contacts=[p.contact("-b")])
    reply = p.register(0, contacts=[p.contact()])
    assert reply.status == 200 and reply.get_all("Contact") == [f"{p.contact('-b')};expires=600"]
    # A REGISTER without Contact is a query.
    assert p.register(None, contacts=[]).get_all("Contact") == [f"{p.contact('-b')};expires=600"]


def test_nonce_count_replay_is_rechallenged_not_forbidden(server: Server, phones: list[Phone]) -> None:
    p = phone(server, phones, "6143")
    assert p.register(600).status == 200
    target, headers = "sip:6143@pbx.test", [("Contact", p.contact()), ("Expires", "600")]
    replay = p.send(p.request("REGISTER", target, headers, auth=p.reauthorization("REGISTER", "sip:127.0.0.1", nc=1)))
    assert replay.status == 401 and len(replay.challenges()) == 2
    fresh = p.send(p.request("REGISTER", target, headers, auth=p.reauthorization("REGISTER", "sip:127.0.0.1", nc=2)))
    assert fresh.status == 200


def test_call_id_cseq_ordering(server: Server, phones: list[Phone]) -> None:
    p = phone(server, phones, "6144")
    assert p.register(600).status == 200
    p.cseq = 0  # same Call-ID, CSeq not above the stored binding: the request fails
    assert p.register(600).status == 500
    p.call_id = "another-call-id"  # a different Call-ID may update the binding (§10.3 step 7)
    p.cseq = 1
    assert p.register(900).get_all("Contact") == [f"{p.contact()};expires=900"]


def test_aor_must_be_local_and_owned(server: Server, phones: list[Phone]) -> None:
    p = phone(server, phones, "6140")
    # Own hard extension 6140 via its number: fine.  Someone else's AOR, or one that does
    # not exist: 403, but only after authentication (both first get the same 401).
    assert p.register(600, aor_user="6141").status == 403
    assert p.register(600, aor_user="7777").status == 403
    foreign = Phone(server.sip_port("udp"), "6140", "pw-6140", domain="example.com")
    phones.append(foreign)
    assert foreign.register(600).status == 403
    # A user registers its hard extension and authenticates with its number.
    q = Phone(server.sip_port("udp"), "5141", "pw-6141", auth_user="6141")
    phones.append(q)
    assert q.register(600).status == 200
    assert len(registrations(server, "sip:5141@127.0.0.1")) == 1


def test_path_stored_and_echoed_when_supported(server: Server, phones: list[Phone]) -> None:
    p = phone(server, phones, "6145")
    path = "<sip:edge.example.net;lr>"
    reply = p.register(600, extra=[("Path", path), ("Supported", "path")])
    assert reply.status == 200 and reply.get_all("Path") == [path]
    assert registrations(server, "sip:6145@127.0.0.1")[0]["path"] == [path]
    assert p.register(600, extra=[("Path", path)]).get_all("Path") == []


def test_max_contacts_evicts_the_stalest(server: Server, phones: list[Phone]) -> None:
    p = phone(server, phones, "6142")
    p.register(0, contacts=["*"])
    for i in range(4):
        assert p.register(600 + i, contacts=[p.contact(f"-{i}")]).status == 200
    contacts = sorted(b["contact"] for b in registrations(server, "sip:6142@127.0.0.1"))
    assert len(contacts) == 3 and not any("6142-0@" in c for c in contacts)


def test_outbound_flow_binding_removed_when_connection_drops(server: Server, phones: list[Phone]) -> None:
    p = phone(server, phones, "6140", transport="tcp")
    ob = p.contact() + ';+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000006140>";reg-id=1'
    reply = p.register(600, contacts=[ob], extra=[("Supported", "outbound, path")])
    assert reply.status == 200 and reply.get("Require") == "outbound"
    assert any(b["reg_id"] == 1 for b in registrations(server, "sip:6140@127.0.0.1"))
    # Over UDP there is no flow (no STUN keep-alive): no Require: outbound.
    u = phone(server, phones, "6140")
    reply = u.register(600, contacts=[u.contact() + ';+sip.instance="<urn:uuid:1>";reg-id=1'])
    assert reply.status == 200 and reply.get("Require") is None
    # Two Vias and no Path;ob: the first hop lacks outbound support.
    assert p.register(600, contacts=[ob], vias=2).status == 439
    p.close()
    deadline = time.monotonic() + 5
    while any(b["reg_id"] == 1 and b["transport"] == "tcp" for b in registrations(server, "sip:6140@127.0.0.1")):
        assert time.monotonic() < deadline, "flow binding not removed"
        time.sleep(0.05)


def test_wildcard_needs_expires_zero(server: Server, phones: list[Phone]) -> None:
    p = phone(server, phones, "6145")
    assert p.register(600).status == 200
    assert p.register(600, contacts=["*"]).status == 400
    reply = p.register(0, contacts=["*"])
    assert reply.status == 200 and reply.get_all("Contact") == []
    assert registrations(server, "sip:6145@127.0.0.1") == []


def test_guarded_methods_need_proxy_auth(server: Server, phones: list[Phone]) -> None:
    p = phone(server, phones, "6140")
    p.register(600)
    for method in ("INVITE", "MESSAGE", "SUBSCRIBE", "REFER"):
        first = p.send(p.request(method, "sip:6199@127.0.0.1", [], ruri="sip:6199@127.0.0.1"))
        assert first.status == 407 and len(first.get_all("Proxy-Authenticate")) == 2
        assert p.invite("6199", method=method).status == 480  # authenticated; 6199 has no phone registered
    for method in ("MESSAGE", "SUBSCRIBE", "REFER"):  # not routed yet: only calls are
        reply = p.invite("6140", method=method)
        assert reply.status == 480 and "not yet routed" in reply.reason
    assert p.invite("5141").status == 480  # a hard extension, nothing registered
    assert p.invite("9999").status == 404
    assert p.invite("6142", domain="example.com").status == 403  # no open relay


def test_trunk_is_trusted_by_source_address(server: Server, phones: list[Phone]) -> None:
    trunk = phone(server, phones, "carrier", source="127.0.0.4")
    reply = trunk.send(trunk.request("INVITE", "sip:6199@127.0.0.1", [], ruri="sip:6199@127.0.0.1"))
    assert reply.status == 480  # trusted, routed, and 6199 has no phone registered
    # Any other loopback address is not a trunk: challenged.
    other = phone(server, phones, "carrier", source="127.0.0.5")
    assert other.send(other.request("INVITE", "sip:6140@127.0.0.1", [], ruri="sip:6140@127.0.0.1")).status == 407


def test_malformed_contact_is_400(server: Server, phones: list[Phone]) -> None:
    p = phone(server, phones, "6140")
    assert p.register(600, contacts=[p.contact() + ";q=7"]).status == 400
