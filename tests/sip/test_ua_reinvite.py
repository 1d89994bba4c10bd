"""UserAgent: re-INVITE and UPDATE (RFC 3261 §14, RFC 3311): glare (491), overlapping
re-INVITEs (500 + Retry-After), target refresh, UPDATE in early and confirmed dialogs,
and the in-dialog failures that end a dialog (RFC 5057)."""

from __future__ import annotations

import pytest
from ua_harness import SDP, SDP_ANSWER, SDP_OFFER, Callee, Net, Node, match, raw_request

from vivait_sip.sip.message import Response
from vivait_sip.sip.ua import (
    AckReceived,
    DialogEnded,
    RequestFailed,
    RequestPending,
    RequestReceived,
    ResponseReceived,
    UaError,
    UaEvent,
)


def established(net: Net, **callee_kwargs: object) -> tuple[Node, Node, int, int]:
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob, **callee_kwargs)  # type: ignore[arg-type]
    alice.invite(bob)
    net.run(duration=3)
    return alice, bob, alice.of(ResponseReceived)[-1].dialog_id, callee.dialogs[0]


def answer_everything(node: Node, event: UaEvent) -> None:
    if isinstance(event, RequestReceived) and event.request.method != "PRACK":
        body = SDP_OFFER if event.request.method == "INVITE" else b""
        node.ua.respond(event.request_id, 200, headers=SDP if body else (), body=body, now=node.net.now)


def test_re_invite_is_answered_acked_and_reported_on_both_sides() -> None:
    net = Net()
    alice, bob, a_dialog, b_dialog = established(net)
    request_id = alice.act(
        lambda ua, now: ua.send_in_dialog(
            a_dialog, "INVITE", headers=[*SDP, ("Contact", "<sip:alice@10.0.0.1:5062>")], body=SDP_OFFER, now=now
        )
    )
    net.run(duration=2)
    reinvite = bob.of(RequestReceived)[-1]
    assert reinvite.dialog_id == b_dialog and reinvite.request.method == "INVITE"
    assert reinvite.request.cseq.number == 2
    final = alice.of(ResponseReceived)[-1]
    assert (final.request_id, final.dialog_id, final.response.status) == (request_id, a_dialog, 200)
    ack = bob.of(AckReceived)[-1]
    assert (ack.request_id, ack.dialog_id) == (reinvite.request_id, b_dialog)
    assert ack.request.cseq.number == 2
    # The re-INVITE was a target refresh: bob now sends to alice's new Contact.
    info = bob.ua.dialog(b_dialog)
    assert info is not None and info.remote_target == "sip:alice@10.0.0.1:5062"


def test_glare_both_sides_get_491_and_neither_tu_sees_the_other_re_invite() -> None:
    net = Net()
    alice, bob, a_dialog, b_dialog = established(net)
    before = (len(alice.of(RequestReceived)), len(bob.of(RequestReceived)))
    a_request = alice.act(lambda ua, now: ua.send_in_dialog(a_dialog, "INVITE", headers=SDP, body=SDP_OFFER, now=now))
    b_request = bob.act(lambda ua, now: ua.send_in_dialog(b_dialog, "INVITE", headers=SDP, body=SDP_ANSWER, now=now))
    net.run(duration=2)
    assert "bob->alice 491 INVITE" in net.lines() and "alice->bob 491 INVITE" in net.lines()
    assert [(e.request_id, e.response.status) for e in alice.of(ResponseReceived)][-1] == (a_request, 491)
    assert [(e.request_id, e.response.status) for e in bob.of(ResponseReceived)][-1] == (b_request, 491)
    assert (len(alice.of(RequestReceived)), len(bob.of(RequestReceived))) == before
    assert alice.ua.dialog(a_dialog) is not None and bob.ua.dialog(b_dialog) is not None  # 491 ends nothing
    # Once the glare is over a new re-INVITE goes through.
    alice.act(lambda ua, now: ua.send_in_dialog(a_dialog, "INVITE", headers=SDP, body=SDP_OFFER, now=now))
    net.run(duration=2)
    assert alice.of(ResponseReceived)[-1].response.status == 200


def test_update_glare_with_a_pending_re_invite_gets_491() -> None:
    net = Net()
    alice, bob, a_dialog, b_dialog = established(net)
    alice.act(lambda ua, now: ua.send_in_dialog(a_dialog, "INVITE", headers=SDP, body=SDP_OFFER, now=now))
    bob.act(lambda ua, now: ua.send_in_dialog(b_dialog, "UPDATE", headers=SDP, body=SDP_ANSWER, now=now))
    net.run(duration=2)
    assert "alice->bob 491 UPDATE" in net.lines()
    assert "bob->alice 491 INVITE" in net.lines()


def test_second_incoming_re_invite_before_the_first_is_answered_gets_500_with_retry_after() -> None:
    net = Net()
    alice, bob, a_dialog, b_dialog = established(net, answer_in_dialog=False)
    alice.act(lambda ua, now: ua.send_in_dialog(a_dialog, "INVITE", headers=SDP, body=SDP_OFFER, now=now))
    net.run(duration=1)
    first = bob.of(RequestReceived)[-1]
    assert first.request.method == "INVITE"
    # Our own re-INVITE while theirs is unanswered: refused locally (RFC 3261 §14.1).
    with pytest.raises(RequestPending):
        bob.ua.send_in_dialog(b_dialog, "INVITE", now=net.now)
    with pytest.raises(RequestPending):
        alice.ua.send_in_dialog(a_dialog, "INVITE", now=net.now)
    info = bob.ua.dialog(b_dialog)
    assert info is not None
    second = raw_request(
        "INVITE", uri="sip:bob@10.0.0.2:5060", call_id=info.call_id, from_tag=info.remote_tag,
        to_tag=info.local_tag, cseq=5, branch="z9hG4bKsecond", headers="Content-Type: application/sdp\r\n",
        body=SDP_OFFER,
    )
    net.send_raw(alice, bob, second, None)
    net.run(duration=1)
    answer = next(
        w.msg for w in net.delivered if w.src == "bob" and isinstance(w.msg, Response) and w.msg.cseq.number == 5 and w.msg.status > 100
    )
    assert answer.status == 500
    retry_after = answer.headers.get("retry-after")
    assert retry_after is not None and 0 <= int(retry_after) <= 10
    assert bob.of(RequestReceived)[-1] is first
    bob.act(lambda ua, now: ua.respond(first.request_id, 200, headers=SDP, body=SDP_ANSWER, now=now))
    net.run(duration=1)
    assert bob.of(AckReceived)[-1].request_id == first.request_id


def test_update_in_an_early_dialog_both_ways_keeps_it_early() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob, status=None)
    alice.handler = answer_everything
    request_id = alice.invite(bob)
    net.run(duration=1)
    early = alice.of(ResponseReceived)[-1].dialog_id
    update_id = alice.act(
        lambda ua, now: ua.send_in_dialog(early, "UPDATE", headers=SDP, body=SDP_OFFER, now=now)
    )
    net.run(duration=1)
    update = bob.of(RequestReceived)[-1]
    assert update.request.method == "UPDATE" and update.dialog_id == callee.dialogs[0]
    assert update.request.headers.get("contact") == "<sip:alice@10.0.0.1:5060;transport=udp>"
    final = alice.of(ResponseReceived)[-1]
    assert (final.request_id, final.response.status) == (update_id, 200)
    assert final.response.headers.get("contact") == "<sip:bob@10.0.0.2:5060;transport=udp>"
    assert alice.ua.dialog(early).state == "early"  # a 2xx to UPDATE does not confirm it
    # The callee updates the early session too.
    bob.act(lambda ua, now: ua.send_in_dialog(callee.dialogs[0], "UPDATE", headers=SDP, body=SDP_ANSWER, now=now))
    net.run(duration=1)
    assert alice.of(RequestReceived)[-1].request.method == "UPDATE"
    assert bob.of(ResponseReceived)[-1].response.status == 200
    # A re-INVITE needs a confirmed dialog.
    with pytest.raises(UaError):
        alice.ua.send_in_dialog(early, "INVITE", now=net.now)
    callee.answer(callee.invites[0])
    net.run(duration=1)
    ok = alice.of(ResponseReceived)[-1]
    assert (ok.request_id, ok.dialog_id, ok.response.status) == (request_id, early, 200)
    assert alice.ua.dialog(early).state == "confirmed"


def test_update_in_a_confirmed_dialog_refreshes_the_target() -> None:
    net = Net()
    alice, bob, a_dialog, b_dialog = established(net)
    alice.handler = answer_everything
    bob.act(
        lambda ua, now: ua.send_in_dialog(
            b_dialog, "UPDATE", headers=[("Contact", "<sip:bob@10.0.0.2:5099>")], now=now
        )
    )
    net.run(duration=1)
    update = alice.of(RequestReceived)[-1]
    assert update.request.method == "UPDATE" and update.dialog_id == a_dialog
    assert bob.of(ResponseReceived)[-1].response.status == 200
    info = alice.ua.dialog(a_dialog)
    assert info is not None and info.remote_target == "sip:bob@10.0.0.2:5099"
    # The next request goes to the new target, over the same peer (symmetric signalling).
    alice.act(lambda ua, now: ua.send_in_dialog(a_dialog, "INFO", now=now))
    net.run(duration=1)
    info_request = bob.of(RequestReceived)[-1].request
    assert info_request.uri_text == "sip:bob@10.0.0.2:5099"
    with pytest.raises(RequestPending):
        bob.ua.send_in_dialog(b_dialog, "UPDATE", now=net.now)  # the INFO is not in the way ...
        bob.ua.send_in_dialog(b_dialog, "UPDATE", now=net.now)  # ... but a pending UPDATE is


def test_481_to_an_in_dialog_request_ends_the_dialog() -> None:
    net = Net()
    alice, bob, a_dialog, b_dialog = established(net)
    net.drop(match(src="bob", method="BYE"), count=None)  # bob forgets the call, alice never hears
    bob.act(lambda ua, now: ua.bye(b_dialog, now))
    net.run(duration=40)
    assert bob.events[-1] == DialogEnded("callee", b_dialog, "bye_sent", None)
    request_id = alice.act(lambda ua, now: ua.send_in_dialog(a_dialog, "INFO", now=now))
    net.run(duration=1)
    assert alice.events[-2:] == [
        ResponseReceived("tu", request_id, a_dialog, alice.of(ResponseReceived)[-1].response),
        DialogEnded("tu", a_dialog, "481", None),
    ]
    assert alice.of(ResponseReceived)[-1].response.status == 481
    net.run()
    net.assert_idle()


def test_timeout_of_an_in_dialog_request_ends_the_dialog_408() -> None:
    net = Net()
    alice, _bob, a_dialog, _b_dialog = established(net)
    net.drop(match(src="alice", method="INFO"), count=None)
    request_id = alice.act(lambda ua, now: ua.send_in_dialog(a_dialog, "INFO", now=now))
    net.run(duration=40)
    assert alice.events[-2:] == [
        RequestFailed("tu", request_id, 408, "Request Timeout"),
        DialogEnded("tu", a_dialog, "408", None),
    ]
