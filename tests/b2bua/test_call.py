"""The call state machine over the UA layer, in the in-memory harness: relay of 1xx and
finals, CANCEL, BYE both ways, forking and races, failover, re-INVITE/UPDATE/INFO relay,
hold, late offers, ring timeout, redirects.  Milliseconds each, no sockets."""

from __future__ import annotations

from call_harness import Pbx, dest_to
from ua_harness import SDP, SDP_ANSWER, SDP_OFFER, Callee, Net, Node, match

from vivait_sip.b2bua.call import COMPLETED_ELSEWHERE, Call, CallState, LegState
from vivait_sip.sip.message import Request, Response
from vivait_sip.sip.ua import (
    AckReceived,
    DialogEnded,
    RequestCancelled,
    RequestReceived,
    ResponseReceived,
)

HOLD = SDP_ANSWER.replace(b"t=0 0\r\n", b"t=0 0\r\na=sendonly\r\n")


def setup(*callees: str, **callee_kwargs: object) -> tuple[Net, Node, Pbx, list[Node], list[Callee]]:
    net = Net()
    alice = net.add("alice")
    Callee(alice)  # answers what reaches it inside its dialogs
    pbx = Pbx(net, net.add("pbx"))
    nodes = [net.add(name) for name in callees]
    scripts = [Callee(node, **callee_kwargs) for node in nodes]  # type: ignore[arg-type]
    pbx.route = lambda call: call.ring([[dest_to(node, pbx) for node in nodes]])
    return net, alice, pbx, nodes, scripts


def received(node: Node, method: str) -> list[Request]:
    """Requests of `method` the node's TU saw; BYE and CANCEL, which the UA answers
    itself, through the events it reports for them."""
    if method == "BYE":
        return [e.request for e in node.of(DialogEnded) if e.reason == "bye" and e.request is not None]
    if method == "CANCEL":
        return [e.request for e in node.of(RequestCancelled) if e.reason == "cancel" and e.request is not None]
    return [e.request for e in node.of(RequestReceived) if e.request.method == method]


def finals(node: Node) -> list[Response]:
    return [e.response for e in node.of(ResponseReceived) if e.response.status >= 200]


def test_a_call_is_relayed_and_the_caller_hangs_up() -> None:
    net, alice, pbx, (bob,), _ = setup("bob")
    alice.invite(pbx.node)
    net.run(duration=3)
    statuses = [e.response.status for e in alice.of(ResponseReceived)]
    assert statuses == [180, 200]
    ok = alice.of(ResponseReceived)[-1]
    assert ok.response.body == SDP_ANSWER  # the callee's answer, unchanged
    (invite,) = received(bob, "INVITE")
    assert invite.body == SDP_OFFER and invite.call_id.startswith("out-")  # a new Call-ID for the leg
    assert invite.max_forwards == 69
    call = pbx.calls[0]
    assert call.state is CallState.ANSWERED and bob.of(AckReceived)
    alice.act(lambda ua, now: ua.bye(ok.dialog_id, now))
    net.run()
    assert received(bob, "BYE")
    assert pbx.ended_calls == [call] and call.hangup_side == "caller"
    assert call.winner is not None and call.winner.state is LegState.ENDED
    assert call.billable_s > 0 and call.answered_at is not None
    net.assert_idle()


def test_the_callee_hangs_up_with_a_reason_that_crosses() -> None:
    net, alice, pbx, (bob,), (callee,) = setup("bob")
    alice.invite(pbx.node)
    net.run(duration=3)
    bob.act(lambda ua, now: ua.bye(callee.dialogs[0], now, headers=[("Reason", "Q.850;cause=16")]))
    net.run()
    (bye,) = received(alice, "BYE")
    assert bye.headers.get("reason") == "Q.850;cause=16"
    assert pbx.ended_calls[0].hangup_side == "callee"
    net.assert_idle()


def test_the_caller_cancels_while_ringing() -> None:
    net, alice, pbx, (bob,), _ = setup("bob", status=None)
    request_id = alice.invite(pbx.node)
    net.run(duration=1)
    alice.act(lambda ua, now: ua.cancel(request_id, now))
    net.run()
    assert [r.status for r in finals(alice)] == [487]
    assert received(bob, "CANCEL")
    call = pbx.calls[0]
    assert call.cancelled and call.hangup_side == "caller" and call.legs[0].state is LegState.CANCELLED
    assert pbx.ended_calls == [call]
    net.assert_idle()


def test_a_busy_callee_is_relayed() -> None:
    net, alice, pbx, _, _ = setup("bob", status=486)
    alice.invite(pbx.node)
    net.run()
    assert [r.status for r in finals(alice)] == [486]
    assert pbx.calls[0].legs[0].status == 486
    assert pbx.calls[0].hangup_side == "callee"  # the callee refused: its side ended the call
    net.assert_idle()


def test_a_leg_that_times_out_ends_the_call_on_our_side() -> None:
    net, alice, pbx, _, _ = setup("bob", status=None, provisional=0)
    net.drop(match(src="pbx", dst="bob"), count=None)  # bob never hears the INVITE: Timer B
    alice.invite(pbx.node)
    net.run()
    assert [r.status for r in finals(alice)] == [408]
    assert pbx.calls[0].hangup_side == "system"


def test_forked_legs_ring_in_parallel_and_the_loser_is_cancelled() -> None:
    net = Net()
    alice = net.add("alice")
    pbx = Pbx(net, net.add("pbx"))
    desk, soft = net.add("desk"), net.add("soft")
    Callee(desk, answer_after=1.0)
    Callee(soft, status=None)
    pbx.route = lambda call: call.ring([[dest_to(desk, pbx), dest_to(soft, pbx)]])
    alice.invite(pbx.node)
    net.run()
    assert [e.response.status for e in alice.of(ResponseReceived)] == [180, 200]  # one ringing for both
    (cancel,) = received(soft, "CANCEL")
    assert cancel.headers.get("reason") == COMPLETED_ELSEWHERE
    call = pbx.calls[0]
    assert [leg.state for leg in call.legs] == [LegState.ANSWERED, LegState.CANCELLED]
    alice.act(lambda ua, now: ua.bye(alice.of(ResponseReceived)[-1].dialog_id, now))
    net.run()
    net.assert_idle()


def test_a_second_2xx_that_races_in_is_acked_and_hung_up() -> None:
    net = Net()
    alice = net.add("alice")
    pbx = Pbx(net, net.add("pbx"))
    one, two = net.add("one"), net.add("two")
    Callee(one, answer_after=1.0)
    Callee(two, answer_after=1.0)  # both answer in the same instant
    pbx.route = lambda call: call.ring([[dest_to(one, pbx), dest_to(two, pbx)]])
    alice.invite(pbx.node)
    net.run(duration=5)
    assert [r.status for r in finals(alice)] == [200]
    loser = two if pbx.calls[0].winner and pbx.calls[0].winner.dest.label == "one" else one
    assert loser.of(AckReceived) and received(loser, "BYE")
    ended = [e for e in loser.of(DialogEnded)]
    assert ended and ended[0].reason == "bye"


def test_503_fails_over_to_the_next_group() -> None:
    net = Net()
    alice = net.add("alice")
    pbx = Pbx(net, net.add("pbx"))
    first, second = net.add("first"), net.add("second")
    Callee(first, provisional=0, status=503, answer_after=0.1)
    Callee(second)
    pbx.route = lambda call: call.ring([[dest_to(first, pbx, trunk="a")], [dest_to(second, pbx, trunk="b")]])
    alice.invite(pbx.node)
    net.run(duration=5)
    assert [r.status for r in finals(alice)] == [200]
    assert [leg.dest.trunk for leg in pbx.calls[0].legs] == ["a", "b"]
    assert pbx.calls[0].legs[0].status == 503


def test_a_trunk_filled_meanwhile_is_skipped_and_none_left_is_503() -> None:
    """The trunk had room when the call was routed, but another call (another worker's)
    took its last slot before this INVITE left: the next group is tried, and with no
    trunk left the caller gets 503; no INVITE leaves on a full trunk."""
    net = Net()
    alice = net.add("alice")
    pbx = Pbx(net, net.add("pbx"))
    first, second = net.add("first"), net.add("second")
    Callee(first)
    Callee(second)
    pbx.full_trunks.add("a")
    pbx.route = lambda call: call.ring([[dest_to(first, pbx, trunk="a")], [dest_to(second, pbx, trunk="b")]])
    alice.invite(pbx.node)
    net.run(duration=5)
    assert [r.status for r in finals(alice)] == [200]
    assert received(first, "INVITE") == [] and [leg.dest.trunk for leg in pbx.calls[0].legs] == ["b"]
    pbx.full_trunks.add("b")
    alice.invite(pbx.node)
    net.run(duration=5)
    assert finals(alice)[-1].status == 503 and "no trunk available" in finals(alice)[-1].reason
    assert received(first, "INVITE") == [] and len(received(second, "INVITE")) == 1


def test_a_486_does_not_fail_over() -> None:
    net = Net()
    alice = net.add("alice")
    pbx = Pbx(net, net.add("pbx"))
    first, second = net.add("first"), net.add("second")
    Callee(first, provisional=0, status=486, answer_after=0.1)
    Callee(second)
    pbx.route = lambda call: call.ring([[dest_to(first, pbx)], [dest_to(second, pbx)]])
    alice.invite(pbx.node)
    net.run()
    assert [r.status for r in finals(alice)] == [486]
    assert received(second, "INVITE") == []


def test_no_answer_times_out_with_480_and_cancels() -> None:
    net, alice, pbx, (bob,), _ = setup("bob", status=None)
    pbx.calls.clear()
    pbx.route = lambda call: call.ring([[dest_to(bob, pbx)]], ring_s=5)
    alice.invite(pbx.node)
    net.run()
    (final,) = finals(alice)
    assert final.status == 480 and "no answer" in final.reason
    assert received(bob, "CANCEL")
    assert pbx.calls[0].hangup_cause == "no answer"
    net.assert_idle()


def test_hold_and_resume_by_reinvite_cross_the_bridge() -> None:
    net, alice, pbx, (bob,), (callee,) = setup("bob")
    alice.invite(pbx.node)
    net.run(duration=3)
    bob.act(lambda ua, now: ua.send_in_dialog(callee.dialogs[0], "INVITE", headers=SDP, body=HOLD, now=now))
    net.run(duration=2)
    reinvites = received(alice, "INVITE")
    assert len(reinvites) == 1 and b"a=sendonly" in reinvites[0].body
    call = pbx.calls[0]
    assert call.held == {"callee"} and call.snapshot()["state"] == "on_hold"
    hold_answer = [e.response for e in bob.of(ResponseReceived) if e.response.cseq.method == "INVITE"][-1]
    assert hold_answer.status == 200  # alice's answer relayed back
    assert pbx.holds == [(call.call_uuid, "callee", True)]  # told once the 200 was relayed (music on hold)
    bob.act(lambda ua, now: ua.send_in_dialog(callee.dialogs[0], "INVITE", headers=SDP, body=SDP_ANSWER, now=now))
    net.run(duration=2)
    assert call.held == set() and call.snapshot()["state"] == "answered"
    assert pbx.holds[1:] == [(call.call_uuid, "callee", False)]


def test_update_and_info_are_relayed_with_their_answers() -> None:
    net, alice, pbx, (bob,), _ = setup("bob")
    alice.invite(pbx.node)
    net.run(duration=3)
    dialog = alice.of(ResponseReceived)[-1].dialog_id
    alice.act(lambda ua, now: ua.send_in_dialog(dialog, "INFO", headers=[("Content-Type", "application/dtmf-relay")],
                                                 body=b"Signal=5\r\nDuration=160\r\n", now=now))
    alice.act(lambda ua, now: ua.send_in_dialog(dialog, "UPDATE", headers=SDP, body=SDP_OFFER, now=now))
    net.run(duration=2)
    (info,) = received(bob, "INFO")
    assert info.body.startswith(b"Signal=5") and info.headers.get("content-type") == "application/dtmf-relay"
    assert received(bob, "UPDATE")
    statuses = sorted((e.response.cseq.method, e.response.status) for e in alice.of(ResponseReceived)
                      if e.response.cseq.method in ("INFO", "UPDATE"))
    assert statuses == [("INFO", 200), ("UPDATE", 200)]


def test_a_late_offer_crosses_in_the_2xx_and_the_ack() -> None:
    net, alice, pbx, (bob,), _ = setup("bob")
    alice.invite(pbx.node, headers=[], body=b"", auto_ack=False)
    net.run(duration=3)
    (invite,) = received(bob, "INVITE")
    assert invite.body == b""  # no offer to pass on
    ok = alice.of(ResponseReceived)[-1]
    assert ok.response.status == 200 and ok.response.body == SDP_ANSWER  # bob's offer
    alice.act(lambda ua, now: ua.ack(ok.dialog_id, body=SDP_OFFER, headers=SDP, now=now))
    net.run(duration=1)
    (ack,) = bob.of(AckReceived)
    assert ack.request.body == SDP_OFFER  # alice's answer reached bob in the ACK


def test_a_redirect_is_routed_again_within_the_limit() -> None:
    net = Net()
    alice = net.add("alice")
    pbx = Pbx(net, net.add("pbx"))
    moved, there = net.add("moved"), net.add("there")
    Callee(there)
    attempts: list[int] = []

    def route(call: Call) -> None:
        attempts.append(1)
        target = moved if len(attempts) == 1 else there
        call.ring([[dest_to(target, pbx)]])

    pbx.route = route
    moved.ua.set_handler("INVITE", "moved")
    moved.handler = lambda node, event: (
        node.ua.respond(event.request_id, 302, headers=[("Contact", "<sip:6141@pbx.example>")], now=net.now)
        if isinstance(event, RequestReceived) and event.dialog_id is None else None
    )
    alice.invite(pbx.node)
    net.run(duration=5)
    assert [str(u) for u in pbx.redirects[0]] == ["sip:6141@pbx.example"]
    assert [r.status for r in finals(alice)] == [200]
    assert [leg.status for leg in pbx.calls[0].legs] == [302, 200]


def test_admin_hangup_ends_both_legs() -> None:
    net, alice, pbx, (bob,), _ = setup("bob")
    alice.invite(pbx.node)
    net.run(duration=3)
    pbx.net.at(net.now, lambda: pbx.calls[0].hangup("admin"))
    net.run()
    assert received(alice, "BYE") and received(bob, "BYE")
    call = pbx.ended_calls[0]
    assert call.hangup_side == "system" and call.hangup_cause == "admin"
    net.assert_idle()


def test_many_calls_leave_nothing_behind() -> None:
    net = Net(record=False)
    alice = net.add("alice")
    pbx = Pbx(net, net.add("pbx"))
    bob = net.add("bob")
    callee = Callee(bob, answer_after=0.2)
    pbx.route = lambda call: call.ring([[dest_to(bob, pbx)]])
    alice.keep_events = False
    for n in range(200):
        net.at(n * 0.05, lambda: alice.invite(pbx.node) and None)
    net.run(duration=20)
    for dialog in list(callee.dialogs):
        bob.act(lambda ua, now, d=dialog: ua.bye(d, now))
    net.run()
    assert len(pbx.ended_calls) == 200
    net.assert_idle()
