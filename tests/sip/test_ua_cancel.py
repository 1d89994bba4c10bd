"""UserAgent: CANCEL both ways (RFC 3261 §9), the held CANCEL, CANCEL racing a 2xx,
Timer C and a CANCEL nobody answers."""

from __future__ import annotations

import pytest
from ua_harness import Callee, Net, match, raw_request

from vivait_sip.sip.message import Response
from vivait_sip.sip.ua import (
    AckReceived,
    DialogEnded,
    RequestCancelled,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
    UaError,
)


def test_cancel_after_a_provisional() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob, status=None)
    request_id = alice.invite(bob)
    net.run(duration=1)
    alice.act(lambda ua, now: ua.cancel(request_id, now, reason='SIP;cause=200;text="elsewhere"'))
    net.run()
    assert net.lines() == [
        "alice->bob INVITE",
        "bob->alice 100 INVITE",
        "bob->alice 180 INVITE",
        "alice->bob CANCEL",
        "bob->alice 200 CANCEL",
        "bob->alice 487 INVITE",
        "alice->bob ACK",
    ]
    cancel = net.delivered[3].msg
    assert cancel.headers.get("reason") == 'SIP;cause=200;text="elsewhere"'
    assert cancel.top_via.branch == net.delivered[0].msg.top_via.branch
    ringing, terminated = alice.of(ResponseReceived)
    assert terminated.response.status == 487 and terminated.request_id == request_id
    assert alice.events[-1] == DialogEnded("tu", ringing.dialog_id, "rejected", None)
    (invite,) = bob.of(RequestReceived)
    cancelled = bob.events[1]
    assert isinstance(cancelled, RequestCancelled)
    assert (cancelled.request_id, cancelled.reason, cancelled.owner) == (invite.request_id, "cancel", "callee")
    assert cancelled.request is not None and cancelled.request.method == "CANCEL"
    assert bob.events[2] == DialogEnded("callee", callee.dialogs[0], "cancel", cancelled.request)
    # The TU answering late changes nothing.
    assert bob.ua.respond(invite.request_id, 200, now=net.now) is None
    net.assert_idle()


def test_cancel_is_held_until_a_provisional_arrives() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob, provisional=0, status=None)
    net.drop(match(src="bob", status=100), count=None)  # no 100 Trying ever arrives
    request_id = alice.invite(bob)
    net.run(duration=0.1)
    alice.act(lambda ua, now: ua.cancel(request_id, now))
    net.run(until=3.0)
    assert "alice->bob CANCEL" not in net.lines(delivered=False)  # §9.1: not before a provisional
    assert net.lines().count("alice->bob INVITE") > 1  # Timer A still retransmits
    net.at(3.0, lambda: bob.act(lambda ua, now: ua.respond(callee.invites[0], 183, now=now)))
    net.run()
    lines = net.lines()
    assert lines.index("alice->bob CANCEL") > lines.index("bob->alice 183 INVITE")
    assert [e.response.status for e in alice.of(ResponseReceived)] == [487]  # no 183 after cancel()
    assert bob.kinds() == ["RequestReceived", "RequestCancelled", "DialogEnded"]
    net.assert_idle()


def test_cancel_after_the_final_response_sends_nothing() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    Callee(bob, provisional=0, status=486, answer_after=0.0)
    request_id = alice.invite(bob)
    net.run(duration=1)
    alice.act(lambda ua, now: ua.cancel(request_id, now))
    net.run()
    assert "alice->bob CANCEL" not in net.lines(delivered=False)
    assert [e.response.status for e in alice.of(ResponseReceived)] == [486]
    net.assert_idle()


def test_cancel_racing_a_2xx_acks_and_hangs_up() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob, answer_after=1.0)
    request_id = alice.invite(bob)
    net.at(1.015, lambda: alice.act(lambda ua, now: ua.cancel(request_id, now)))  # 200 in flight
    net.run()
    lines = net.lines()
    assert lines[3:] == [
        "bob->alice 200 INVITE",
        "alice->bob CANCEL",
        "alice->bob ACK",
        "alice->bob BYE",
        "bob->alice 200 CANCEL",  # the INVITE is answered already: nothing else
        "bob->alice 200 BYE",
    ]
    ringing = alice.of(ResponseReceived)[0]
    assert ringing.response.status == 180
    assert alice.events[1:] == [
        RequestFailed("tu", request_id, 487, "Request Terminated (answered after CANCEL, hung up)"),
        DialogEnded("tu", ringing.dialog_id, "cancel", None),
    ]
    assert bob.kinds() == ["RequestReceived", "AckReceived", "DialogEnded"]
    ended = bob.events[-1]
    assert isinstance(ended, DialogEnded) and ended.reason == "bye" and ended.dialog_id == callee.dialogs[0]
    net.assert_idle()


def test_timer_c_cancels_and_reports_408_and_is_reset_by_provisionals() -> None:
    net = Net()
    alice = net.add("alice", timer_c=10.0)
    bob = net.add("bob")
    callee = Callee(bob, status=None)
    request_id = alice.invite(bob)
    net.at(6.0, lambda: bob.act(lambda ua, now: ua.respond(callee.invites[0], 183, now=now)))
    net.run(until=15.9)
    assert "alice->bob CANCEL" not in net.lines()
    net.run()
    cancel_at = next(w.sent_at for w in net.sent if w.line == "alice->bob CANCEL")
    assert cancel_at == pytest.approx(16.01)
    assert [e.response.status for e in alice.of(ResponseReceived)] == [180, 183]
    assert alice.of(RequestFailed) == [RequestFailed("tu", request_id, 408, "Request Timeout (Timer C)")]
    assert isinstance(alice.events[-1], DialogEnded) and alice.events[-1].reason == "rejected"
    assert bob.of(RequestCancelled)[0].reason == "cancel"
    net.assert_idle()


def test_no_final_response_after_cancel_fails_with_408_after_64_t1() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    Callee(bob, status=None)
    request_id = alice.invite(bob)
    net.run(duration=1)
    net.fail(bob)  # bob's answers no longer arrive ...
    net.drop(match(src="bob"), count=None)
    net.fail(bob, False)
    alice.act(lambda ua, now: ua.cancel(request_id, now))
    cancelled_at = net.now
    net.run()
    failed = alice.of(RequestFailed)
    assert len(failed) == 1 and failed[0].status == 408 and failed[0].request_id == request_id
    assert net.lines(delivered=False).count("alice->bob CANCEL") > 1  # Timer E retransmits it
    # Reported when the 64*T1 wait after the CANCEL ran out.
    assert alice.ua.table_sizes()["client_requests"] == 0
    assert net.now >= cancelled_at + 32
    net.assert_idle()


def test_cancel_for_nothing_gets_481_and_only_invites_can_be_cancelled() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    net.send_raw(alice, bob, raw_request("CANCEL", branch="z9hG4bKnothing"), None)
    net.run(duration=1)
    (answer,) = [w.msg for w in net.delivered if w.src == "bob"]
    assert isinstance(answer, Response) and (answer.status, answer.cseq.method) == (481, "CANCEL")
    bob.ua.set_handler("OPTIONS", "x")
    request_id = alice.act(
        lambda ua, now: ua.send_request("OPTIONS", bob.uri, owner="t", destinations=[bob.peer], now=now, from_="<sip:a@b>")
    )
    with pytest.raises(UaError):
        alice.ua.cancel(request_id, net.now)
    alice.ua.cancel(99999, net.now)  # unknown: nothing happens


def test_bye_on_an_early_dialog_from_the_caller_ends_it_and_the_invite_gets_487() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob, status=None)
    request_id = alice.invite(bob)
    net.run(duration=1)
    early = alice.of(ResponseReceived)[0].dialog_id
    alice.act(lambda ua, now: ua.bye(early, now))
    net.run()
    assert "bob->alice 487 INVITE" in net.lines()
    assert bob.kinds() == ["RequestReceived", "RequestCancelled", "DialogEnded"]
    assert bob.events[1].reason == "bye" and bob.events[2].dialog_id == callee.dialogs[0]
    statuses = [e.response.status for e in alice.of(ResponseReceived) if e.request_id == request_id]
    assert statuses == [180, 487]
    assert DialogEnded("tu", early, "bye_sent", None) in alice.events
    # The callee cannot BYE an early dialog: it answers the INVITE instead.
    callee2 = Callee(bob, status=None)
    alice.invite(bob)
    net.run(duration=1)
    with pytest.raises(UaError):
        bob.ua.bye(callee2.dialogs[0], net.now)
    assert not bob.of(AckReceived)
