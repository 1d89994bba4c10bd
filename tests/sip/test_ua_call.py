"""UserAgent: basic calls both ways and the answers the UA gives by itself (481, 405,
501, 500, 400, 503), through the in-memory harness."""

from __future__ import annotations

import pytest
from ua_harness import SDP, SDP_ANSWER, SDP_OFFER, Callee, Net, match, raw_request

from vivait_sip.sip.message import Response
from vivait_sip.sip.peer import Peer
from vivait_sip.sip.ua import (
    AckReceived,
    DialogEnded,
    RequestPending,
    RequestReceived,
    ResponseReceived,
    UaError,
    UaOverloaded,
    UnknownDialog,
    UserAgent,
)


def call(net: Net, **callee_kwargs: object) -> tuple:
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob, **callee_kwargs)  # type: ignore[arg-type]
    request_id = alice.invite(bob)
    net.run(duration=5)
    return alice, bob, callee, request_id


def answers_from(net: Net, src: str) -> list[Response]:
    return [w.msg for w in net.delivered if w.src == src and isinstance(w.msg, Response)]


def test_invite_ringing_answer_ack_bye_from_the_caller() -> None:
    net = Net()
    alice, bob, callee, request_id = call(net)
    ringing, ok = alice.of(ResponseReceived)
    assert (ringing.response.status, ok.response.status) == (180, 200)
    assert ringing.request_id == ok.request_id == request_id
    assert ringing.dialog_id == ok.dialog_id is not None  # the early dialog got confirmed
    assert ok.response.body == SDP_ANSWER
    (invite,) = bob.of(RequestReceived)
    assert invite.dialog_id is None and invite.request.body == SDP_OFFER and invite.owner == "callee"
    (ack,) = bob.of(AckReceived)
    assert (ack.request_id, ack.dialog_id, ack.owner) == (invite.request_id, callee.dialogs[0], "callee")
    info = alice.ua.dialog(ok.dialog_id)
    assert info is not None and info.state == "confirmed" and info.peer == bob.peer and info.is_uac
    assert info.remote_target == "sip:bob@10.0.0.2:5060;transport=udp"
    binfo = bob.ua.dialog(callee.dialogs[0])
    assert binfo is not None and (binfo.local_tag, binfo.remote_tag) == (info.remote_tag, info.local_tag)

    alice.act(lambda ua, now: ua.bye(ok.dialog_id, now))
    net.run()
    assert net.lines() == [
        "alice->bob INVITE",
        "bob->alice 100 INVITE",
        "bob->alice 180 INVITE",
        "bob->alice 200 INVITE",
        "alice->bob ACK",
        "alice->bob BYE",
        "bob->alice 200 BYE",
    ]
    assert alice.events[-1] == DialogEnded("tu", ok.dialog_id, "bye_sent", None)
    ended = bob.events[-1]
    assert isinstance(ended, DialogEnded) and ended.reason == "bye" and ended.request is not None
    assert ended.request.method == "BYE"
    assert alice.kinds() == ["ResponseReceived", "ResponseReceived", "DialogEnded"]
    assert bob.kinds() == ["RequestReceived", "AckReceived", "DialogEnded"]
    net.assert_idle()


def test_the_callee_hangs_up() -> None:
    net = Net()
    alice, bob, callee, _ = call(net)
    bob.act(lambda ua, now: ua.bye(callee.dialogs[0], now))
    net.run()
    assert net.lines()[-2:] == ["bob->alice BYE", "alice->bob 200 BYE"]
    assert bob.events[-1] == DialogEnded("callee", callee.dialogs[0], "bye_sent", None)
    assert isinstance(alice.events[-1], DialogEnded) and alice.events[-1].reason == "bye"
    net.assert_idle()


def test_wire_format_of_invite_and_2xx() -> None:
    net = Net()
    _alice, _bob, _callee, _ = call(net)
    invite = net.delivered[0].msg
    ok = net.delivered[3].msg
    assert invite.headers.get("max-forwards") == "70"
    assert invite.headers.get("contact") == "<sip:alice@10.0.0.1:5060;transport=udp>"
    assert invite.headers.get("supported") == "100rel, timer"
    assert "UPDATE" in invite.headers.get_all("allow")
    assert invite.headers.get("user-agent") == "vivait-sip"
    assert invite.top_via.transport == "UDP" and invite.top_via.sent_by == "10.0.0.1:5060"
    assert invite.cseq.number == 1 and invite.from_.tag
    assert ok.headers.get("contact") == "<sip:bob@10.0.0.2:5060;transport=udp>"
    assert ok.headers.get("server") == "vivait-sip"
    ack = net.delivered[4].msg
    assert ack.cseq.number == 1 and ack.cseq.method == "ACK"
    assert ack.top_via.branch != invite.top_via.branch


def test_in_dialog_requests_reach_the_dialog_owner_and_cseq_order_is_enforced() -> None:
    net = Net()
    alice, bob, callee, _ = call(net)
    dialog_id = alice.of(ResponseReceived)[-1].dialog_id
    info_id = alice.act(
        lambda ua, now: ua.send_in_dialog(
            dialog_id, "INFO", headers=[("Content-Type", "application/dtmf")], body=b"5", now=now
        )
    )
    net.run(duration=1)
    info = bob.of(RequestReceived)[-1]
    assert info.dialog_id == callee.dialogs[0] and info.request.method == "INFO" and info.request.body == b"5"
    assert info.request.cseq.number == 2
    assert alice.of(ResponseReceived)[-1].request_id == info_id
    assert alice.of(ResponseReceived)[-1].response.status == 200
    # A request with a lower CSeq than the last one: 500 by the UA, the TU never sees it.
    binfo = bob.ua.dialog(callee.dialogs[0])
    assert binfo is not None
    stale = raw_request(
        "INFO", call_id=binfo.call_id, from_tag=binfo.remote_tag, to_tag=binfo.local_tag, cseq=1, branch="z9hG4bKold"
    )
    before = len(bob.events)
    net.send_raw(alice, bob, stale, None)
    net.run(duration=1)
    assert len(bob.events) == before
    last = answers_from(net, "bob")[-1]
    assert (last.status, last.reason, last.cseq.method) == (500, "CSeq Out of Order", "INFO")


def test_unknown_dialog_gets_481_but_register_with_a_to_tag_goes_to_its_handler() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    bob.ua.set_handler("REGISTER", "registrar")
    net.send_raw(alice, bob, raw_request("BYE", to_tag="nosuch"), None)
    net.send_raw(alice, bob, raw_request("REGISTER", to_tag="x", branch="z9hG4bKreg"), None)
    net.run(duration=1)
    bye_answer = answers_from(net, "bob")[0]
    assert (bye_answer.status, bye_answer.cseq.method) == (481, "BYE")
    (register,) = bob.of(RequestReceived)
    assert register.owner == "registrar" and register.dialog_id is None
    bob.act(lambda ua, now: ua.respond(register.request_id, 200, now=now))
    net.run(duration=1)
    assert answers_from(net, "bob")[-1].status == 200


def test_unhandled_methods_get_405_with_allow_and_unknown_ones_501() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    bob.ua.set_handler("MESSAGE", "im")
    net.send_raw(alice, bob, raw_request("OPTIONS", branch="z9hG4bK1"), None)
    net.send_raw(alice, bob, raw_request("FOO", branch="z9hG4bK2"), None)
    net.send_raw(alice, bob, raw_request("BYE", branch="z9hG4bK3"), None)
    net.send_raw(alice, bob, raw_request("MESSAGE", branch="z9hG4bK4"), None)
    net.run(duration=1)
    by_method = {r.cseq.method: r for r in answers_from(net, "bob")}
    assert by_method["OPTIONS"].status == 405
    assert by_method["OPTIONS"].headers.get("allow") == "ACK, BYE, CANCEL, INVITE, MESSAGE, PRACK, UPDATE"
    assert by_method["OPTIONS"].to.tag
    assert by_method["FOO"].status == 501
    assert by_method["BYE"].status == 481  # a BYE outside any dialog
    assert "MESSAGE" not in by_method  # waits for its owner
    assert [e.request.method for e in bob.of(RequestReceived)] == ["MESSAGE"]


def test_invite_without_contact_is_accepted_as_rfc2543_did() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    Callee(bob)
    data = raw_request("INVITE").replace(b"Contact: <sip:carol@10.0.0.1:5060>\r\n", b"")
    net.send_raw(alice, bob, data, None)
    net.run(duration=3)
    answers = [r.status for r in answers_from(net, "bob")]
    assert answers[0] == 100 and 200 in answers
    dialog_ids = [e.dialog_id for e in bob.of(RequestReceived)]
    assert dialog_ids == [None]
    assert [e.request.method for e in bob.of(RequestReceived)] == ["INVITE"]


def test_dialog_table_full_gives_503_with_retry_after() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob", max_dialogs=1)
    callee = Callee(bob, status=None)  # rings, never answers: one early dialog
    alice.invite(bob)
    net.run(duration=1)
    assert len(callee.dialogs) == 1
    second = alice.invite(bob)
    net.run(duration=1)
    final = alice.of(ResponseReceived)[-1]
    assert final.request_id == second and final.response.status == 503
    assert final.response.reason == "Service Unavailable (too many dialogs)"
    assert final.response.headers.get("retry-after") == "5"
    assert len(callee.invites) == 1
    # The caller's side is bounded too.
    small = UserAgent(local=lambda peer: ("10.0.0.9", 5060), max_dialogs=0)
    with pytest.raises(UaOverloaded):
        small.send_request("INVITE", "sip:x@y", owner="t", destinations=[bob.peer], now=0.0, from_="<sip:a@b>")


def test_respond_stateless_and_errors_for_misuse() -> None:
    net = Net()
    alice, bob, _callee, _ = call(net)
    dialog_id = alice.of(ResponseReceived)[-1].dialog_id
    with pytest.raises(UnknownDialog):
        alice.ua.send_in_dialog(999, "INFO", now=net.now)
    with pytest.raises(UaError):
        alice.ua.send_in_dialog(dialog_id, "BYE", now=net.now)
    with pytest.raises(UaError):
        alice.ua.send_request("ACK", "sip:x@y", owner="t", destinations=[bob.peer], now=0.0, from_="<sip:a@b>")
    with pytest.raises(UaError):
        alice.ua.send_request("OPTIONS", "sip:x@y", owner="t", destinations=[], now=0.0, from_="<sip:a@b>")
    with pytest.raises(UaError):
        alice.ua.ack(dialog_id, now=net.now)  # auto_ack already did
    with pytest.raises(UnknownDialog):
        alice.ua.bye(12345, net.now)
    assert alice.ua.respond(424242, 200, now=net.now) is None
    with pytest.raises(ValueError):
        alice.ua.respond(424242, 99, now=net.now)
    # Stateless answer: no transaction, To tag as given.
    request = net.delivered[0].msg
    bob.ua.respond_stateless(request, Peer("udp", "10.0.0.1", 5060), 200, to_tag="abc", headers=[("Allow", "INVITE")])
    (out,) = bob.ua.messages_to_send()
    assert out.tx_id is None and out.data.startswith(b"SIP/2.0 200 OK\r\n")
    assert b"To: <sip:bob@10.0.0.2:5060>;tag=abc\r\n" in out.data and b"Server: vivait-sip\r\n" in out.data


def test_out_of_dialog_request_and_its_response_with_explicit_call_id_and_cseq() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    bob.ua.set_handler("OPTIONS", "pinger")
    bob.handler = lambda node, ev: (
        node.ua.respond(ev.request_id, 200, headers=[("Accept", "application/sdp")], now=net.now)
        if isinstance(ev, RequestReceived)
        else None
    )
    request_id = alice.act(
        lambda ua, now: ua.send_request(
            "OPTIONS", bob.uri, owner="pinger", destinations=[bob.peer], now=now,
            from_="sip:alice@example.com", call_id="ping-1", cseq=7,
        )
    )
    net.run()
    (resp,) = alice.of(ResponseReceived)
    assert resp.request_id == request_id and resp.dialog_id is None and resp.owner == "pinger"
    assert resp.response.status == 200 and resp.response.headers.get("accept") == "application/sdp"
    sent = net.delivered[0].msg
    assert sent.call_id == "ping-1" and sent.cseq.number == 7 and "contact" not in sent.headers
    assert sent.headers.get("from").startswith("<sip:alice@example.com>;tag=")
    net.assert_idle()


def test_a_non_2xx_final_ends_the_early_dialog_on_both_sides() -> None:
    net = Net()
    alice, bob, callee, _request_id = call(net, status=486, answer_after=0.5)
    ringing, busy = alice.of(ResponseReceived)
    assert busy.response.status == 486 and busy.dialog_id is None
    assert alice.events[-1] == DialogEnded("tu", ringing.dialog_id, "rejected", None)
    assert bob.events[-1] == DialogEnded("callee", callee.dialogs[0], "rejected", None)
    assert "alice->bob ACK" in net.lines()  # the transaction layer's ACK for the 486
    net.run()
    net.assert_idle()


def test_sdp_and_contact_over_tcp_and_a_dropped_first_200_is_retransmitted() -> None:
    net = Net()
    alice = net.add("alice", transport="tcp")
    bob = net.add("bob", transport="tcp")
    Callee(bob)
    net.drop(match(src="bob", status=200, method="INVITE"))
    alice.invite(bob)
    net.run(duration=5)
    invite = net.delivered[0].msg
    assert invite.top_via.transport == "TCP"
    assert invite.headers.get("contact") == "<sip:alice@10.0.0.1:5060;transport=tcp>"
    # The 2xx is retransmitted end to end even over TCP (RFC 3261 §13.3.1.4).
    assert [e.response.status for e in alice.of(ResponseReceived)] == [180, 200]
    assert len(bob.of(AckReceived)) == 1
    dialog_id = alice.of(ResponseReceived)[-1].dialog_id
    alice.act(lambda ua, now: ua.bye(dialog_id, now))
    net.run()
    net.assert_idle()


def test_pending_incoming_request_is_answered_487_when_the_dialog_ends() -> None:
    net = Net()
    alice, bob, callee, _ = call(net, answer_in_dialog=False)
    dialog_id = alice.of(ResponseReceived)[-1].dialog_id
    alice.act(lambda ua, now: ua.send_in_dialog(dialog_id, "INFO", now=now))
    net.run(duration=1)
    pending = bob.of(RequestReceived)[-1]
    assert pending.request.method == "INFO"
    bob.act(lambda ua, now: ua.bye(callee.dialogs[0], now))
    net.run(duration=1)
    # BYE sent: the dialog ends when it completes; the unanswered INFO then gets 487.
    info_final = [e for e in alice.of(ResponseReceived) if e.response.cseq.method == "INFO"]
    assert [e.response.status for e in info_final] == [487]
    assert bob.kinds()[-2:] == ["RequestCancelled", "DialogEnded"]
    assert bob.ua.respond(pending.request_id, 200, now=net.now) is None
    net.run()
    net.assert_idle()


def test_caller_with_sdp_in_ack_when_auto_ack_is_off() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob)
    alice.invite(bob, body=b"", headers=(), auto_ack=False)
    net.run(duration=2)
    ok = alice.of(ResponseReceived)[-1]
    assert ok.response.status == 200
    assert "alice->bob ACK" not in net.lines()
    net.run(duration=1)  # the 2xx is retransmitted, still no ACK until the TU sends one
    assert net.lines().count("bob->alice 200 INVITE") >= 2
    assert "alice->bob ACK" not in net.lines()
    alice.act(lambda ua, now: ua.ack(ok.dialog_id, body=SDP_OFFER, headers=SDP, now=now))
    net.run(duration=1)
    (ack,) = bob.of(AckReceived)
    assert ack.request.body == SDP_OFFER and ack.dialog_id == callee.dialogs[0]
    alice.act(lambda ua, now: ua.bye(ok.dialog_id, now))
    net.run()
    net.assert_idle()


def test_bye_before_the_manual_ack_acks_first() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    Callee(bob)
    alice.invite(bob, auto_ack=False)
    net.run(duration=1.2)
    dialog_id = alice.of(ResponseReceived)[-1].dialog_id
    alice.act(lambda ua, now: ua.bye(dialog_id, now))
    net.run()
    assert net.lines()[-3:] == ["alice->bob ACK", "alice->bob BYE", "bob->alice 200 BYE"]
    assert len(bob.of(AckReceived)) == 1
    net.assert_idle()


def test_the_callee_cannot_re_invite_before_its_2xx_is_acked() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob)
    alice.handler = lambda node, ev: (
        node.ua.respond(ev.request_id, 200, headers=SDP, body=SDP_OFFER, now=net.now)
        if isinstance(ev, RequestReceived)
        else None
    )
    net.drop(match(src="alice", method="ACK"))
    alice.invite(bob)
    net.run(until=1.2)
    with pytest.raises(RequestPending):
        bob.ua.send_in_dialog(callee.dialogs[0], "INVITE", now=net.now)
    net.run(duration=1)  # the 2xx retransmission brings the ACK
    bob.act(lambda ua, now: ua.send_in_dialog(callee.dialogs[0], "INVITE", headers=SDP, body=SDP_ANSWER, now=now))
    net.run(duration=1)
    assert bob.of(ResponseReceived)[-1].response.status == 200


def test_a_full_transaction_table_answers_503_statelessly_and_refuses_to_send() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob", max_transactions=1)
    callee = Callee(bob, status=None)
    alice.invite(bob)
    net.run(duration=1)
    net.send_raw(alice, bob, raw_request("OPTIONS", branch="z9hG4bKfull"), None)
    net.run(duration=1)
    answer = next(w.msg for w in net.delivered if w.src == "bob" and w.method == "OPTIONS")
    assert isinstance(answer, Response) and answer.status == 503
    assert answer.reason == "Service Unavailable (overloaded)"
    assert answer.headers.get("retry-after") == "5" and answer.to.tag
    assert len(callee.invites) == 1
    with pytest.raises(UaOverloaded):
        bob.ua.send_request("OPTIONS", alice.uri, owner="t", destinations=[alice.peer], now=net.now, from_="<sip:b@c>")
