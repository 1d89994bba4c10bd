"""UserAgent: the 2xx/ACK exchange end to end (RFC 3261 §13.2.2.4, §13.3.1.4, RFC 6026):
2xx retransmission until the ACK, ACK re-sent for every retransmission (also after
Timer M), BYE when no ACK comes, and forked 2xx reported one by one."""

from __future__ import annotations

import itertools

import pytest
from ua_harness import Callee, Net, Wire, match

from vivait_sip.sip.ua import AckReceived, DialogEnded, RequestReceived, ResponseReceived


def test_lost_ack_the_2xx_is_retransmitted_and_the_same_ack_re_sent() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob)
    net.drop(match(src="alice", method="ACK"))
    alice.invite(bob)
    net.run(duration=5)
    acks = [w for w in net.sent if w.line == "alice->bob ACK"]
    assert len(acks) == 2 and acks[0].data == acks[1].data  # byte-identical ACK
    oks = [w for w in net.sent if w.line == "bob->alice 200 INVITE"]
    assert len(oks) == 2 and oks[1].sent_at - oks[0].sent_at == pytest.approx(0.5)  # T1
    assert oks[0].data == oks[1].data
    assert [e.response.status for e in alice.of(ResponseReceived)] == [180, 200]  # not re-reported
    assert len(bob.of(AckReceived)) == 1
    alice.act(lambda ua, now: ua.bye(alice.of(ResponseReceived)[-1].dialog_id, now))
    net.run()
    assert bob.events[-1].dialog_id == callee.dialogs[0]
    net.assert_idle()


def test_no_ack_within_64_t1_the_callee_sends_bye_and_reports_ack_timeout() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob)
    net.drop(match(src="alice", method="ACK"), count=None)
    alice.invite(bob)
    net.run(until=40)
    oks = [w.sent_at for w in net.sent if w.line == "bob->alice 200 INVITE"]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(oks)]
    assert gaps[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]  # T1 doubling, capped at T2
    assert all(g == 4.0 for g in gaps[3:])
    assert bob.events[-1] == DialogEnded("callee", callee.dialogs[0], "ack_timeout", None)
    assert not bob.of(AckReceived)
    bye = next(w for w in net.sent if w.line == "bob->alice BYE")
    assert bye.sent_at == pytest.approx(1.01 + 32)
    ended = alice.events[-1]
    assert isinstance(ended, DialogEnded) and ended.reason == "bye"
    net.run()
    net.assert_idle()


def test_late_2xx_after_timer_m_is_re_acked() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    Callee(bob)
    net.drop(match(src="alice", method="ACK"))  # so bob retransmits its 200 ...
    oks: list[Wire] = []

    def second_ok(wire: Wire) -> bool:  # ... and its first retransmission arrives 40 s late
        if wire.line == "bob->alice 200 INVITE":
            oks.append(wire)
            return len(oks) == 2
        return False

    net.delay(second_ok, 40.0)
    alice.invite(bob)
    net.run()
    delivered = [w for w in net.delivered if w.line == "bob->alice 200 INVITE"]
    assert delivered[-1] is oks[1] and net.now > 41
    acks = [w for w in net.sent if w.line == "alice->bob ACK"]
    assert len(acks) == 3
    late_ack = acks[-1]
    assert late_ack.sent_at == pytest.approx(oks[1].sent_at + 40.01)
    assert late_ack.sent_at > 1.02 + 32  # after Timer M: the INVITE transaction is gone
    assert late_ack.data == acks[0].data
    assert [e.response.status for e in alice.of(ResponseReceived)] == [180, 200]
    assert len(bob.of(AckReceived)) == 1


def test_forked_2xx_are_reported_one_by_one_with_their_own_dialogs() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    carol = net.add("carol")
    bob_callee = Callee(bob, answer_after=1.0)
    carol_callee = Callee(carol, answer_after=2.0)
    proxy = net.proxy("proxy", [bob, carol], record_route=True)
    request_id = alice.invite(proxy)
    net.run(duration=5)
    responses = alice.of(ResponseReceived)
    assert [e.response.status for e in responses] == [180, 180, 200, 200]
    assert all(e.request_id == request_id for e in responses)
    early_bob, early_carol, ok_bob, ok_carol = responses
    assert early_bob.dialog_id != early_carol.dialog_id
    assert (ok_bob.dialog_id, ok_carol.dialog_id) == (early_bob.dialog_id, early_carol.dialog_id)
    assert ok_bob.response.to.tag != ok_carol.response.to.tag
    assert len(bob.of(AckReceived)) == 1 and len(carol.of(AckReceived)) == 1
    for event in (ok_bob, ok_carol):
        info = alice.ua.dialog(event.dialog_id)
        assert info is not None and info.state == "confirmed" and info.peer == proxy.peer
        assert info.route_set == ("<sip:10.0.0.4:5060;lr>",)
    alice.act(lambda ua, now: ua.bye(ok_bob.dialog_id, now))
    alice.act(lambda ua, now: ua.bye(ok_carol.dialog_id, now))
    net.run()
    byes = [w.msg for w in net.delivered if w.line.endswith(" BYE") and w.src == "alice"]
    assert len(byes) == 2 and all(b.headers.get("route") == "<sip:10.0.0.4:5060;lr>" for b in byes)
    assert bob.events[-1].reason == "bye" and carol.events[-1].reason == "bye"
    assert bob_callee.dialogs and carol_callee.dialogs
    assert [e.reason for e in alice.of(DialogEnded)] == ["bye_sent", "bye_sent"]
    net.assert_idle()


def test_a_fork_that_never_answers_ends_64_t1_after_the_first_2xx() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    carol = net.add("carol")
    Callee(bob, answer_after=1.0)
    Callee(carol, status=None)  # rings forever
    proxy = net.proxy("proxy", [bob, carol])
    alice.invite(proxy)
    net.run(until=30)
    assert not alice.of(DialogEnded)
    net.run(until=40)
    ok = alice.of(ResponseReceived)[-1]
    carol_early = next(e.dialog_id for e in alice.of(ResponseReceived) if e.dialog_id != ok.dialog_id)
    assert alice.of(DialogEnded) == [DialogEnded("tu", carol_early, "early_timeout", None)]
    assert alice.ua.dialog(ok.dialog_id) is not None and alice.ua.dialog(carol_early) is None


def test_a_fork_answering_after_the_tu_cancelled_is_acked_and_hung_up_silently() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    carol = net.add("carol")
    Callee(bob, answer_after=1.0)
    Callee(carol, answer_after=1.0)
    proxy = net.proxy("proxy", [bob, carol])
    request_id = alice.invite(proxy)
    net.at(1.02, lambda: alice.act(lambda ua, now: ua.cancel(request_id, now)))
    net.run()
    assert len(bob.of(AckReceived)) == 1 and len(carol.of(AckReceived)) == 1
    assert bob.events[-1].reason == "bye" and carol.events[-1].reason == "bye"
    failed = [e for e in alice.events if type(e).__name__ == "RequestFailed"]
    assert len(failed) == 1 and failed[0].status == 487
    net.assert_idle()


def test_re_invite_before_the_first_ack_keeps_both_2xx_acknowledged() -> None:
    """Found by the property test: the first ACK is lost, a re-INVITE follows at once and
    the first 2xx's retransmission arrives late.  The caller re-ACKs it (CSeq 1) without
    reporting it again; the callee still reports that ACK for the first INVITE."""
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob)
    net.drop(match(src="alice", method="ACK"))
    seen: list[Wire] = []

    def first_retransmission(wire: Wire) -> bool:
        if wire.line == "bob->alice 200 INVITE" and wire.msg.cseq.number == 1:
            seen.append(wire)
            return len(seen) == 2
        return False

    net.delay(first_retransmission, 0.7)
    request_id = alice.invite(bob)
    net.run(until=1.1)
    dialog_id = alice.of(ResponseReceived)[-1].dialog_id
    reinvite = alice.act(lambda ua, now: ua.send_in_dialog(dialog_id, "INVITE", now=now))
    net.run(duration=5)
    finals = [(e.request_id, e.response.status) for e in alice.of(ResponseReceived) if e.response.status >= 200]
    assert finals == [(request_id, 200), (reinvite, 200)]
    acks = [w.msg.cseq.number for w in net.delivered if w.line == "alice->bob ACK"]
    assert acks == [2, 1]  # the re-INVITE's ACK, then the late re-ACK of the first 2xx
    reinvite_at_bob = bob.of(RequestReceived)[-1].request_id
    assert [e.request_id for e in bob.of(AckReceived)] == [reinvite_at_bob, callee.invites[0]]
    alice.act(lambda ua, now: ua.bye(dialog_id, now))
    net.run()
    assert bob.events[-1].reason == "bye"
    net.assert_idle()
