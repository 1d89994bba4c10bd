"""UserAgent: reliable provisional responses and PRACK (RFC 3262), both sides."""

from __future__ import annotations

import itertools

import pytest
from ua_harness import SDP, SDP_ANSWER, Callee, Net, match, raw_request

from vivait_sip.sip.message import Response
from vivait_sip.sip.ua import (
    DialogEnded,
    RequestCancelled,
    RequestReceived,
    ResponseReceived,
)


def reliable_call(net: Net, **callee_kwargs: object) -> tuple:
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob, provisional=0, status=None, **callee_kwargs)  # type: ignore[arg-type]
    request_id = alice.invite(bob)
    net.run(duration=0.05)

    def ring(status: int = 183) -> None:
        dialog_id = bob.act(
            lambda ua, now: ua.respond(
                callee.invites[0], status, headers=SDP, body=SDP_ANSWER, reliable=True, now=now
            )
        )
        if dialog_id not in callee.dialogs:
            callee.dialogs.append(dialog_id)

    return alice, bob, callee, request_id, ring


def sent(net: Net, line: str) -> list:
    return [w for w in net.sent if w.line == line]


def test_reliable_183_is_pracked_and_the_prack_reaches_the_callee() -> None:
    net = Net()
    alice, bob, callee, _request_id, ring = reliable_call(net)
    ring()
    net.run(duration=1)
    assert net.lines() == [
        "alice->bob INVITE",
        "bob->alice 100 INVITE",
        "bob->alice 183 INVITE",
        "alice->bob PRACK",
        "bob->alice 200 PRACK",
    ]
    progress = net.delivered[2].msg
    assert progress.headers.get("require") == "100rel"
    rseq = int(progress.headers.get("rseq"))
    prack = net.delivered[3].msg
    assert prack.headers.get("rack") == f"{rseq} 1 INVITE"
    assert prack.cseq.number == 2 and prack.to.tag == progress.to.tag
    (reported,) = alice.of(ResponseReceived)
    assert reported.response.status == 183 and reported.response.body == SDP_ANSWER
    prack_event = bob.of(RequestReceived)[-1]
    assert prack_event.request.method == "PRACK" and prack_event.dialog_id == callee.dialogs[0]
    assert bob.ua.respond(prack_event.request_id, 200, now=net.now) is None  # answered by the UA
    callee.answer(callee.invites[0])
    net.run()
    assert alice.of(ResponseReceived)[-1].response.status == 200
    assert alice.ua.dialog(reported.dialog_id).state == "confirmed"


def test_lost_prack_is_retransmitted_and_the_repeated_183_is_neither_pracked_nor_reported() -> None:
    net = Net()
    alice, bob, _callee, _request_id, ring = reliable_call(net)
    net.drop(match(src="alice", method="PRACK"))
    ring()
    net.run(duration=3)
    progress = sent(net, "bob->alice 183 INVITE")
    assert len(progress) == 2  # the first retransmission at T1, then the PRACK arrived
    assert progress[1].sent_at - progress[0].sent_at == pytest.approx(0.5)
    assert progress[0].data == progress[1].data
    pracks = sent(net, "alice->bob PRACK")
    assert len(pracks) == 2 and pracks[0].data == pracks[1].data  # Timer E, same transaction
    assert [e.response.status for e in alice.of(ResponseReceived)] == [183]
    assert len([e for e in bob.of(RequestReceived) if e.request.method == "PRACK"]) == 1


def test_lost_reliable_183_is_retransmitted_until_pracked() -> None:
    net = Net()
    alice, _bob, _callee, _request_id, ring = reliable_call(net)
    net.drop(match(src="bob", status=183), count=2)
    ring()
    net.run(duration=3)
    progress = sent(net, "bob->alice 183 INVITE")
    assert [round(w.sent_at - progress[0].sent_at, 3) for w in progress] == [0.0, 0.5, 1.5]  # T1 doubling
    assert len(sent(net, "alice->bob PRACK")) == 1
    assert [e.response.status for e in alice.of(ResponseReceived)] == [183]


def test_a_second_reliable_provisional_waits_for_the_first_prack() -> None:
    net = Net()
    alice, bob, _callee, _request_id, ring = reliable_call(net)
    net.drop(match(src="alice", method="PRACK"))
    ring(180)
    ring(183)
    net.run(duration=3)
    lines = net.lines()
    first_prack = lines.index("alice->bob PRACK")
    assert lines.index("bob->alice 183 INVITE") > first_prack
    ringing, progress = alice.of(ResponseReceived)
    assert (ringing.response.status, progress.response.status) == (180, 183)
    assert int(progress.response.headers.get("rseq")) == int(ringing.response.headers.get("rseq")) + 1
    pracks = [w.msg for w in net.delivered if w.line == "alice->bob PRACK"]
    assert [p.headers.get("rack").split()[0] for p in pracks] == [
        ringing.response.headers.get("rseq"),
        progress.response.headers.get("rseq"),
    ]
    assert len([e for e in bob.of(RequestReceived) if e.request.method == "PRACK"]) == 2


def test_no_prack_within_64_t1_rejects_the_invite_with_500() -> None:
    net = Net()
    alice, bob, callee, request_id, ring = reliable_call(net)
    net.drop(match(src="alice", method="PRACK"), count=None)
    ring()
    net.run(until=40)
    progress = sent(net, "bob->alice 183 INVITE")
    gaps = [round(b.sent_at - a.sent_at, 3) for a, b in itertools.pairwise(progress)]
    assert gaps == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    cancelled = bob.of(RequestCancelled)
    assert [(e.request_id, e.reason) for e in cancelled] == [(callee.invites[0], "prack_timeout")]
    assert bob.events[-1] == DialogEnded("callee", callee.dialogs[0], "prack_timeout", None)
    final = alice.of(ResponseReceived)[-1]
    assert final.request_id == request_id and final.response.status == 500
    assert alice.events[-1].reason == "rejected"


def test_the_2xx_may_go_before_the_prack_and_stops_the_retransmissions() -> None:
    net = Net()
    alice, _bob, callee, _request_id, ring = reliable_call(net)
    net.drop(match(src="alice", method="PRACK"), count=None)
    ring()
    net.run(duration=0.6)
    callee.answer(callee.invites[0])
    net.run(duration=10)
    assert len(sent(net, "bob->alice 183 INVITE")) == 2
    assert alice.of(ResponseReceived)[-1].response.status == 200


def test_no_100rel_support_means_an_unreliable_provisional_and_require_forces_it() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob, provisional=0, status=None)
    net.send_raw(alice, bob, raw_request("INVITE", branch="z9hG4bKa"), None)
    net.send_raw(
        alice, bob,
        raw_request("INVITE", branch="z9hG4bKb", call_id="c2", headers="Require: 100rel\r\n"), None,
    )
    net.run(duration=0.05)
    bob.act(lambda ua, now: ua.respond(callee.invites[0], 180, reliable=True, now=now))
    bob.act(lambda ua, now: ua.respond(callee.invites[1], 180, now=now))
    net.run(duration=0.05)
    plain, forced = [w.msg for w in net.delivered if w.src == "bob" and isinstance(w.msg, Response) and w.msg.status == 180]
    assert "rseq" not in plain.headers and "require" not in plain.headers
    assert forced.headers.get("require") == "100rel" and "rseq" in forced.headers


def test_an_invite_without_an_offer_does_not_offer_100rel() -> None:
    """The callee's offer in a reliable provisional would need its answer in the PRACK,
    and the automatic PRACK carries no body: so such an INVITE supports `timer` only, and
    the callee's provisional comes unreliable."""
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob, provisional=0, status=None)
    alice.invite(bob, headers=(), body=b"")
    alice.invite(bob)
    net.run(duration=0.05)
    late, early = (w.msg for w in net.delivered if w.src == "alice" and w.method == "INVITE")
    assert late.headers.get("supported") == "timer" and not late.body
    assert early.headers.get("supported") == "100rel, timer"
    for request_id in callee.invites:
        bob.act(lambda ua, now, request_id=request_id: ua.respond(
            request_id, 183, headers=SDP, body=SDP_ANSWER, reliable=True, now=now))
    net.run(duration=1)
    to_late, to_early = (w.msg for w in net.delivered if w.src == "bob" and isinstance(w.msg, Response) and w.msg.status == 183)
    assert "rseq" not in to_late.headers and "require" not in to_late.headers
    assert to_early.headers.get("require") == "100rel"
    assert len(sent(net, "alice->bob PRACK")) == 1


def test_prack_matching_nothing_gets_481() -> None:
    net = Net()
    alice, bob, callee, _request_id, ring = reliable_call(net)
    ring()
    net.run(duration=1)
    info = bob.ua.dialog(callee.dialogs[0])
    assert info is not None
    stray = raw_request(
        "PRACK", call_id=info.call_id, from_tag=info.remote_tag, to_tag=info.local_tag, cseq=9,
        branch="z9hG4bKstray", headers="RAck: 1 1 INVITE\r\n",
    )
    net.send_raw(alice, bob, stray, None)
    net.run(duration=1)
    answer = [w.msg for w in net.delivered if w.src == "bob" and w.msg.cseq.number == 9]
    assert [a.status for a in answer] == [481]


def test_a_prack_arriving_after_the_2xx_gets_481_which_ends_nothing() -> None:
    """Found by the property test: the PRACK's first copy is lost and its retransmission
    arrives after the 200; the 481 (RFC 3262 §3) must not end the caller's dialog."""
    net = Net()
    alice, _bob, callee, request_id, ring = reliable_call(net)
    net.drop(match(src="alice", method="PRACK"))
    ring()
    net.run(duration=0.1)
    callee.answer(callee.invites[0])  # before the PRACK retransmission (Timer E, T1)
    net.run(duration=2)
    assert "bob->alice 481 PRACK" in net.lines()
    ok = alice.of(ResponseReceived)[-1]
    assert ok.response.status == 200 and ok.request_id == request_id
    assert alice.ua.dialog(ok.dialog_id) is not None
    assert not alice.of(DialogEnded)
