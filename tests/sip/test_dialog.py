"""Dialogs (RFC 3261 §12) on both sides, in-dialog requests and the UAS 2xx retransmitter."""

from __future__ import annotations

import pytest

from vivait_sip.sip.dialog import (
    Dialog,
    DialogId,
    DialogRegistry,
    DialogState,
    DialogTableFull,
    UasInviteResponder,
)
from vivait_sip.sip.message import Request, Response, make_response, parse_message
from vivait_sip.sip.peer import Peer
from vivait_sip.sip.transaction import (
    AckReceived,
    RequestReceived,
    TransactionLayer,
    push_via,
)

UDP = Peer("udp", "192.0.2.20", 5060)

INVITE = (
    "INVITE sips:bob@biloxi.com SIP/2.0\r\n"
    "Via: SIP/2.0/TLS proxy2.biloxi.com;branch=z9hG4bKp2\r\n"
    "Via: SIP/2.0/TLS pc33.atlanta.com;branch=z9hG4bKuac\r\n"
    "Record-Route: <sip:p2.biloxi.com;lr>\r\n"
    "Record-Route: <sip:p1.atlanta.com;lr>\r\n"
    "Max-Forwards: 68\r\n"
    "To: Bob <sips:bob@biloxi.com>\r\n"
    'From: "Alice" <sips:alice@atlanta.com>;tag=a73kszlfl\r\n'
    "Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Contact: <sips:alice@pc33.atlanta.com>\r\n"
    "Content-Length: 0\r\n\r\n"
)


def invite() -> Request:
    msg = parse_message(INVITE.encode())
    assert isinstance(msg, Request)
    return msg


def answer(
    req: Request, status: int = 200, tag: str = "1928301774", contact: str | None = None
) -> Response:
    """Bob's answer as it leaves Bob, Record-Route copied (§12.1.1)."""
    headers = [("Record-Route", rr) for rr in req.headers.get_all("record-route")]
    headers.append(("Contact", contact or "<sips:bob@192.0.2.4>"))
    resp = make_response(req, status, to_tag=tag, headers=headers)
    msg = parse_message(resp.to_bytes())
    assert isinstance(msg, Response)
    return msg


def parse_req(req: Request) -> Request:
    msg = parse_message(req.to_bytes())
    assert isinstance(msg, Request)
    return msg


def in_dialog_request(method: str, cseq: int, contact: str | None = None) -> Request:
    text = (
        f"{method} sips:bob@192.0.2.4 SIP/2.0\r\n"
        "Via: SIP/2.0/TLS pc33.atlanta.com;branch=z9hG4bKx\r\n"
        "Max-Forwards: 70\r\n"
        "To: Bob <sips:bob@biloxi.com>;tag=1928301774\r\n"
        'From: "Alice" <sips:alice@atlanta.com>;tag=a73kszlfl\r\n'
        "Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n"
        f"CSeq: {cseq} {method}\r\n"
        + (f"Contact: {contact}\r\n" if contact else "")
        + "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def test_uas_dialog_keeps_record_route_order() -> None:
    req = invite()
    d = Dialog.from_uas(req, answer(req), tls=True)
    assert d.id == DialogId("a84b4c76e66710@pc33.atlanta.com", "1928301774", "a73kszlfl")
    assert [str(r.uri) for r in d.route_set] == ["sip:p2.biloxi.com;lr", "sip:p1.atlanta.com;lr"]
    assert str(d.remote_target) == "sips:alice@pc33.atlanta.com"
    assert (d.local_seq, d.remote_seq) == (None, 314159)
    assert str(d.local_uri) == "sips:bob@biloxi.com"
    assert str(d.remote_uri) == "sips:alice@atlanta.com"
    assert d.secure and not d.is_uac
    assert d.state is DialogState.CONFIRMED
    assert not Dialog.from_uas(req, answer(req)).secure  # sips but not over TLS


def test_uac_dialog_reverses_record_route() -> None:
    req = invite()
    d = Dialog.from_uac(req, answer(req))
    assert d.id == DialogId("a84b4c76e66710@pc33.atlanta.com", "a73kszlfl", "1928301774")
    assert [str(r.uri) for r in d.route_set] == ["sip:p1.atlanta.com;lr", "sip:p2.biloxi.com;lr"]
    assert str(d.remote_target) == "sips:bob@192.0.2.4"
    assert (d.local_seq, d.remote_seq) == (314159, None)
    assert d.secure and d.is_uac


def test_dialog_creation_rejects_unfit_responses() -> None:
    req = invite()
    with pytest.raises(ValueError):
        Dialog.from_uac(req, answer(req, 486))
    no_tag = make_response(req, 200)
    with pytest.raises(ValueError, match="To tag"):
        Dialog.from_uac(req, no_tag)
    with pytest.raises(ValueError, match="To tag"):
        Dialog.from_uas(req, no_tag)


def test_early_uac_dialog_confirmed_by_2xx_recomputes_route_set() -> None:
    req = invite()
    early = Dialog.from_uac(req, answer(req, 180))
    assert early.state is DialogState.EARLY
    ok = answer(req, 200, contact="<sips:bob@198.51.100.7>")
    ok.headers.remove("record-route")
    ok.headers.add("Record-Route", "<sip:only.example.com;lr>")
    early.update_from_response(ok)
    assert early.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in early.route_set] == ["sip:only.example.com;lr"]
    assert str(early.remote_target) == "sips:bob@198.51.100.7"


def test_in_dialog_request_loose_routing() -> None:
    req = invite()
    d = Dialog.from_uac(req, answer(req))
    bye = parse_req(d.create_request("BYE", headers=[("Reason", "SIP;cause=200")]))
    assert bye.method == "BYE"
    assert bye.uri_text == "sips:bob@192.0.2.4"
    assert bye.headers.get_all("route") == ["<sip:p1.atlanta.com;lr>", "<sip:p2.biloxi.com;lr>"]
    assert (bye.cseq.number, bye.cseq.method) == (314160, "BYE")
    assert bye.max_forwards == 70
    assert bye.from_.tag == "a73kszlfl" and bye.from_.display == '"Alice"'
    assert bye.to.tag == "1928301774"
    assert bye.call_id == "a84b4c76e66710@pc33.atlanta.com"
    assert bye.vias == []  # the caller adds it
    assert "contact" not in bye.headers
    assert bye.headers.get("reason") == "SIP;cause=200"
    reinvite = parse_req(d.create_request("INVITE", body=b"v=0\r\n"))
    assert reinvite.cseq.number == 314161
    assert reinvite.headers.get("contact") == "<sips:alice@pc33.atlanta.com>"
    assert reinvite.body == b"v=0\r\n"


def test_uas_in_dialog_request_starts_local_cseq() -> None:
    req = invite()
    d = Dialog.from_uas(req, answer(req))
    bye = parse_req(d.create_request("BYE"))
    assert bye.cseq.number == 1
    assert bye.uri_text == "sips:alice@pc33.atlanta.com"
    assert bye.headers.get_all("route") == ["<sip:p2.biloxi.com;lr>", "<sip:p1.atlanta.com;lr>"]
    assert bye.from_.tag == "1928301774" and bye.to.tag == "a73kszlfl"
    assert parse_req(d.create_request("INFO")).cseq.number == 2


def test_strict_route_fallback() -> None:
    req = invite()
    req.headers.set("Record-Route", "<sip:strict.example.com;method=INVITE;maddr=10.0.0.1>")
    req.headers.add("Record-Route", "<sip:p1.atlanta.com;lr>")
    d = Dialog.from_uas(req, answer(req))
    bye = parse_req(d.create_request("BYE"))
    assert bye.uri_text == "sip:strict.example.com;maddr=10.0.0.1"
    assert bye.headers.get_all("route") == [
        "<sip:p1.atlanta.com;lr>",
        "<sips:alice@pc33.atlanta.com>",
    ]


def test_ack_for_2xx_comes_from_the_dialog_and_is_sent_without_transaction() -> None:
    req = invite()
    ok = answer(req)
    d = Dialog.from_uac(req, ok)
    d.create_request("INFO")  # later requests must not change the ACK's CSeq number
    ack = d.create_ack(ok)
    push_via(ack, "pc33.atlanta.com", None, "tls")
    ack = parse_req(ack)
    assert (ack.cseq.number, ack.cseq.method) == (314159, "ACK")
    assert ack.uri_text == "sips:bob@192.0.2.4"
    assert ack.headers.get_all("route") == ["<sip:p1.atlanta.com;lr>", "<sip:p2.biloxi.com;lr>"]
    assert ack.top_via.branch != "z9hG4bKuac"
    assert "contact" not in ack.headers
    layer = TransactionLayer()
    layer.send_stateless(ack, UDP)
    assert [m.data for m in layer.messages_to_send()] == [ack.to_bytes()]
    assert len(layer) == 0
    with pytest.raises(ValueError):
        d.create_ack(answer(req, 180))
    with pytest.raises(ValueError):
        d.create_request("ACK")


def test_remote_cseq_ordering() -> None:
    req = invite()
    d = Dialog.from_uas(req, answer(req))
    assert d.receive_request(in_dialog_request("INFO", 314160))
    assert d.remote_seq == 314160
    assert not d.receive_request(in_dialog_request("INFO", 314150))  # lower → 500
    assert d.remote_seq == 314160
    assert d.receive_request(in_dialog_request("ACK", 314159))  # ACK reuses the INVITE's
    assert d.receive_request(in_dialog_request("BYE", 314161))


def test_uac_side_gets_remote_seq_from_first_request() -> None:
    req = invite()
    d = Dialog.from_uac(req, answer(req))
    assert d.receive_request(in_dialog_request("BYE", 7))
    assert d.remote_seq == 7


def test_target_refresh() -> None:
    req = invite()
    d = Dialog.from_uas(req, answer(req))
    d.receive_request(in_dialog_request("INFO", 314160, contact="<sip:ignored@10.9.9.9>"))
    assert str(d.remote_target) == "sips:alice@pc33.atlanta.com"
    d.receive_request(in_dialog_request("INVITE", 314161, contact="<sips:alice@203.0.113.9>"))
    assert str(d.remote_target) == "sips:alice@203.0.113.9"
    d.receive_request(in_dialog_request("UPDATE", 314162, contact="<sips:alice@203.0.113.10>"))
    assert str(d.remote_target) == "sips:alice@203.0.113.10"
    assert d.create_request("BYE").uri_text == "sips:alice@203.0.113.10"

    uac = Dialog.from_uac(req, answer(req))
    reinvite_ok = answer(req, contact="<sips:bob@203.0.113.50>")
    uac.update_from_response(reinvite_ok)
    assert str(uac.remote_target) == "sips:bob@203.0.113.50"


def test_registry_matches_requests_and_responses_and_is_bounded() -> None:
    req = invite()
    ok = answer(req)
    registry = DialogRegistry(max_dialogs=2)
    uas = Dialog.from_uas(req, ok)
    uac = Dialog.from_uac(req, ok)
    registry.add(uas)
    registry.add(uac)
    registry.add(uas)  # re-adding a present dialog is fine when full
    assert len(registry) == 2
    assert registry.match_request(in_dialog_request("BYE", 314160)) is uas
    assert registry.match_response(ok) is uac
    assert registry.match_request(req) is None  # no To tag: not in a dialog
    forked = answer(req, tag="other")
    with pytest.raises(DialogTableFull):
        registry.add(Dialog.from_uac(req, forked))
    assert registry.remove(uas.id) is uas
    assert registry.get(uas.id) is None
    assert list(registry) == [uac]


def test_uas_invite_responder_retransmits_until_timeout() -> None:
    req = invite()
    ok = answer(req)
    responder = UasInviteResponder(ok, UDP, 100.0)
    sent: list[float] = []
    while (deadline := responder.next_deadline()) is not None:
        for msg in responder.handle_timer(deadline):
            assert msg.data == ok.to_bytes() and msg.peer == UDP
            sent.append(deadline - 100.0)
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert responder.timed_out and not responder.acked


def test_uas_invite_responder_stops_on_matching_ack() -> None:
    req = invite()
    ok = answer(req)
    responder = UasInviteResponder(ok, Peer("tcp", "192.0.2.20", 5061), 0.0)
    assert responder.handle_timer(0.4) == []
    assert len(responder.handle_timer(0.5)) == 1  # reliable transports too
    assert not responder.receive_ack(in_dialog_request("ACK", 1))
    assert responder.receive_ack(in_dialog_request("ACK", 314159))
    assert responder.acked and responder.next_deadline() is None
    assert responder.handle_timer(10.0) == []


def test_uas_flow_through_transaction_layer() -> None:
    """INVITE in, 2xx out through the transaction, ACK back to the TU, responder stops."""
    layer = TransactionLayer()
    req = invite()
    layer.receive_request(req, UDP, 0.0)
    event = layer.next_event()
    assert isinstance(event, RequestReceived)
    ok = answer(req)
    dialog = Dialog.from_uas(req, ok)
    layer.send_response(event.tx, ok, 0.0)
    responder = UasInviteResponder(ok, UDP, 0.0)
    layer.receive_request(in_dialog_request("ACK", 314159), UDP, 0.3)
    ack_event = layer.next_event()
    assert isinstance(ack_event, AckReceived)
    assert dialog.receive_request(ack_event.request)
    assert responder.receive_ack(ack_event.request)


def test_a_2xx_to_prack_or_update_leaves_an_early_dialog_early() -> None:
    """RFC 3311 §5.1 / RFC 3262: only a 2xx to the INVITE confirms the dialog."""
    req = invite()
    early = Dialog.from_uac(req, answer(req, 183))
    for method in ("PRACK", "UPDATE"):
        in_dialog = early.create_request(method)
        in_dialog.headers.add("Via", "SIP/2.0/TLS pc33.atlanta.com;branch=z9hG4bKe")
        early.update_from_response(answer(parse_req(in_dialog), 200, contact="<sips:bob@192.0.2.9>"))
        assert early.state is DialogState.EARLY
    assert str(early.remote_target) == "sips:bob@192.0.2.9"  # UPDATE still refreshes the target
