"""Caller identity on trunks (vivait_sip/b2bua/trunks.py): presentation per user and per
trunk, P-Asserted-Identity only within the trust domain (RFC 3325), privacy (RFC 3323),
and the inbound side: whose number a call from a trunk carries."""

from __future__ import annotations

from typing import Any

import pytest

from vivait_sip.b2bua.config import TrunkConfig
from vivait_sip.b2bua.trunks import ANONYMOUS_FROM, inbound_identity, outgoing_identity
from vivait_sip.sip.message import Request, parse_message


def trunk(**overrides: Any) -> TrunkConfig:
    return TrunkConfig.model_validate({"name": "pri", "host": "10.0.0.5", **overrides})


PAI = "P-Asserted-Identity"

# (trunk overrides or None for a phone, user caller ID, privacy) → (From, extra headers)
OUTGOING: list[tuple[dict[str, Any] | None, str | None, bool, str, list[tuple[str, str]]]] = [
    # a trusted trunk (trust_pai, the default) gets the identity asserted
    ({}, None, False, '"Ana" <sip:6140@10.0.0.1>', [(PAI, '"Ana" <sip:6140@10.0.0.1>')]),
    # the trunk's caller ID replaces the extension number...
    ({"caller_id": "913346100"}, None, False, '"Ana" <sip:913346100@10.0.0.1>',
     [(PAI, '"Ana" <sip:913346100@10.0.0.1>')]),
    # ...and the user's own caller ID (a direct DID) beats the trunk's
    ({"caller_id": "913346100"}, "913346140", False, '"Ana" <sip:913346140@10.0.0.1>',
     [(PAI, '"Ana" <sip:913346140@10.0.0.1>')]),
    # private: anonymous From, the real identity asserted with Privacy: id
    ({"caller_id": "913346100"}, None, True, ANONYMOUS_FROM,
     [(PAI, '"Ana" <sip:913346100@10.0.0.1>'), ("Privacy", "id")]),
    # the trunk itself may make every call private
    ({"privacy": True}, None, False, ANONYMOUS_FROM, [(PAI, '"Ana" <sip:6140@10.0.0.1>'), ("Privacy", "id")]),
    # an untrusted trunk: no PAI ever, so a private call leaks nothing
    ({"trust_pai": False}, None, False, '"Ana" <sip:6140@10.0.0.1>', []),
    ({"trust_pai": False}, None, True, ANONYMOUS_FROM, [("Privacy", "id")]),
    # from_domain names the From host
    ({"from_domain": "pbx.example.com", "trust_pai": False}, None, False, '"Ana" <sip:6140@pbx.example.com>', []),
    # towards a phone: the caller's own number, whatever outside caller ID it has
    (None, "913346140", False, '"Ana" <sip:6140@10.0.0.1>', []),
    (None, None, True, ANONYMOUS_FROM, [("Privacy", "id")]),
]


@pytest.mark.parametrize(("overrides", "user_cid", "private", "from_", "headers"), OUTGOING)
def test_outgoing_identity(
    overrides: dict[str, Any] | None, user_cid: str | None, private: bool, from_: str, headers: list[tuple[str, str]]
) -> None:
    config = None if overrides is None else trunk(**overrides)
    assert outgoing_identity(config, "6140", "Ana", user_cid, private, "10.0.0.1") == (from_, headers)


def test_outgoing_identity_escapes_what_it_writes() -> None:
    from_, headers = outgoing_identity(trunk(trust_pai=False), "+34#12", 'A "q" \\ b\r\n', None, False, "::1")
    assert from_ == '"A \\"q\\" \\\\ b" <sip:+34%2312@[::1]>'
    assert headers == []
    assert outgoing_identity(trunk(trust_pai=False), "6140", None, None, False, "h")[0] == "<sip:6140@h>"


def request(*headers: str, from_: str = "<sip:600111222@10.0.0.5>;tag=1") -> Request:
    lines = [
        "INVITE sip:913346140@10.0.0.1 SIP/2.0",
        "Via: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1",
        f"From: {from_}",
        "To: <sip:913346140@10.0.0.1>",
        "Call-ID: c1",
        "CSeq: 1 INVITE",
        "Max-Forwards: 70",
        *headers,
        "Content-Length: 0",
    ]
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


ANON = '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1'
# (headers, From or None for the default, trunk overrides or None: not from a trunk) → result
INBOUND: list[tuple[list[str], str | None, dict[str, Any] | None, tuple[str | None, bool]]] = [
    ([], None, {}, ("600111222", False)),
    # the asserted identity of a trusted trunk wins over From
    ([f"{PAI}: <sip:+34600999888@10.0.0.5>"], None, {}, ("+34600999888", False)),
    ([f"{PAI}: <tel:+34600999888;cpc=ordinary>"], None, {}, ("+34600999888", False)),
    ([f"{PAI}: <sip:anonymous@anonymous.invalid>, <tel:+34600999888>"], None, {}, ("+34600999888", False)),
    # ...and is ignored from an untrusted trunk or from anyone else
    ([f"{PAI}: <sip:+34600999888@10.0.0.5>"], None, {"trust_pai": False}, ("600111222", False)),
    ([f"{PAI}: <sip:+34600999888@10.0.0.5>"], None, None, ("600111222", False)),
    # privacy: the number is still known (routing, CDR), flagged private
    ([f"{PAI}: <sip:+34600999888@10.0.0.5>", "Privacy: id"], ANON, {}, ("+34600999888", True)),
    (["Privacy: header;user"], None, {}, ("600111222", True)),
    (["Privacy: none"], None, {}, ("600111222", False)),
    (["Privacy: session"], None, {}, ("600111222", False)),
    # anonymous without an asserted identity: nobody
    ([], ANON, {}, (None, True)),
    ([], "<sip:Anonymous@10.0.0.5>;tag=1", None, (None, True)),
    # user parameters of a number are not the number
    ([], "<sip:+34600111222;npdi@10.0.0.5;user=phone>;tag=1", {}, ("+34600111222", False)),
    # a broken PAI is ignored, not fatal
    ([f"{PAI}: <sip:"], None, {}, ("600111222", False)),
]


@pytest.mark.parametrize(("headers", "from_", "overrides", "expected"), INBOUND)
def test_inbound_identity(
    headers: list[str], from_: str | None, overrides: dict[str, Any] | None, expected: tuple[str | None, bool]
) -> None:
    req = request(*headers) if from_ is None else request(*headers, from_=from_)
    config = None if overrides is None else trunk(**overrides)
    assert inbound_identity(req, config) == expected
