"""UserAgent: RFC 3263 §4.3 failover over the given destinations, transport failures on
both sides, and the 503 that goes to the TU as it is."""

from __future__ import annotations

import pytest
from ua_harness import Callee, Net, match

from vivait_sip.sip.message import Request
from vivait_sip.sip.ua import (
    DialogEnded,
    RequestCancelled,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
)


def test_transport_failure_moves_on_to_the_next_destination_at_once() -> None:
    net = Net()
    alice = net.add("alice", transport="tcp")
    dead = net.add("dead", transport="tcp")
    bob = net.add("bob", transport="tcp")
    Callee(bob)
    net.fail(dead)
    request_id = alice.invite(dead, destinations=[dead.peer, bob.peer])
    assert net.sent and net.sent[0].dst == "bob" and net.sent[0].sent_at == 0.0  # no waiting
    net.run(duration=3)
    assert [e.response.status for e in alice.of(ResponseReceived)] == [180, 200]
    assert {e.request_id for e in alice.of(ResponseReceived)} == {request_id}
    assert alice.ua.dialog(alice.of(ResponseReceived)[-1].dialog_id).peer == bob.peer
    invite = net.delivered[0].msg
    assert isinstance(invite, Request) and invite.cseq.number == 1


def test_every_destination_failing_gives_503_at_once() -> None:
    net = Net()
    alice = net.add("alice", transport="tcp")
    one = net.add("one", transport="tcp")
    two = net.add("two", transport="tcp")
    net.fail(one)
    net.fail(two)
    request_id = alice.invite(one, destinations=[one.peer, two.peer])
    assert alice.events == [RequestFailed("tu", request_id, 503, "Service Unavailable")]
    assert net.now == 0.0
    net.run()
    net.assert_idle()


def test_a_timeout_moves_on_to_the_next_destination_with_a_new_branch() -> None:
    net = Net()
    alice = net.add("alice")
    silent = net.add("silent")
    bob = net.add("bob")
    bob.ua.set_handler("OPTIONS", "ping")
    bob.handler = lambda node, ev: (
        node.ua.respond(ev.request_id, 200, now=net.now) if isinstance(ev, RequestReceived) else None
    )
    net.drop(match(dst="silent"), count=None)
    request_id = alice.act(
        lambda ua, now: ua.send_request(
            "OPTIONS", "sip:bob@example.com", owner="ping", destinations=[silent.peer, bob.peer], now=now,
            from_="<sip:alice@example.com>",
        )
    )
    net.run()
    tries = [w for w in net.sent if w.method == "OPTIONS" and w.status is None]
    to_silent = [w for w in tries if w.dst == "silent"]
    to_bob = [w for w in tries if w.dst == "bob"]
    assert len(to_silent) == 11  # Timer E retransmissions until Timer F
    assert to_bob[0].sent_at == pytest.approx(32.0)  # 64*T1
    assert to_bob[0].msg.top_via.branch != to_silent[0].msg.top_via.branch
    assert to_bob[0].msg.cseq.number == to_silent[0].msg.cseq.number
    assert [(e.request_id, e.response.status) for e in alice.of(ResponseReceived)] == [(request_id, 200)]
    net.assert_idle()


def test_last_destination_timing_out_gives_408() -> None:
    net = Net()
    alice = net.add("alice")
    silent = net.add("silent")
    net.drop(match(dst="silent"), count=None)
    request_id = alice.invite(silent)
    net.run()
    assert alice.events == [RequestFailed("tu", request_id, 408, "Request Timeout")]
    assert net.now >= 32.0
    net.assert_idle()


def test_a_503_response_goes_to_the_tu_without_failover() -> None:
    net = Net()
    alice = net.add("alice")
    busy = net.add("busy")
    bob = net.add("bob")
    Callee(busy, provisional=0, status=503, answer_after=0.0)
    Callee(bob)
    alice.invite(busy, destinations=[busy.peer, bob.peer])
    net.run()
    assert [e.response.status for e in alice.of(ResponseReceived)] == [503]
    assert not bob.events


def test_in_dialog_transport_failure_fails_the_request_but_keeps_the_dialog() -> None:
    net = Net()
    alice = net.add("alice", transport="tcp")
    bob = net.add("bob", transport="tcp")
    Callee(bob)
    alice.invite(bob)
    net.run(duration=2)
    dialog_id = alice.of(ResponseReceived)[-1].dialog_id
    net.fail(bob)
    request_id = alice.act(lambda ua, now: ua.send_in_dialog(dialog_id, "INFO", now=now))
    assert alice.events[-1] == RequestFailed("tu", request_id, 503, "Service Unavailable")
    assert alice.ua.dialog(dialog_id) is not None


def test_a_response_that_cannot_be_delivered_ends_the_pending_request() -> None:
    net = Net()
    alice = net.add("alice", transport="tcp")
    bob = net.add("bob", transport="tcp")
    callee = Callee(bob, status=None)
    alice.invite(bob)
    net.run(duration=1)
    net.fail(alice)  # the caller's connection is gone
    bob.act(lambda ua, now: ua.respond(callee.invites[0], 183, now=now))
    assert bob.events[-2:] == [
        RequestCancelled("callee", callee.invites[0], None, "transport_error"),
        DialogEnded("callee", callee.dialogs[0], "transport_error", None),
    ]
    assert bob.ua.respond(callee.invites[0], 200, now=net.now) is None
