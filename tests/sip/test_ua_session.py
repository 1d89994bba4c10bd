"""UserAgent: session timers (RFC 4028): negotiation, refresh by UPDATE or re-INVITE, expiry
on either side, 422 and its retry."""

from __future__ import annotations

import pytest
from ua_harness import SDP, SDP_ANSWER, SDP_OFFER, Callee, Net, Node, match

from vivait_sip.sip.message import Request, Response
from vivait_sip.sip.ua import (
    AckReceived,
    DialogEnded,
    RequestReceived,
    ResponseReceived,
    SessionTimerConfig,
    UaEvent,
)

NO_UPDATE = [("Allow", "INVITE, ACK, CANCEL, BYE"), *SDP]


def call(net: Net, *, alice_kwargs: dict | None = None, bob_kwargs: dict | None = None, **invite: object) -> tuple:
    alice = net.add("alice", **(alice_kwargs or {}))
    bob = net.add("bob", **(bob_kwargs or {}))
    callee = Callee(bob, provisional=0, answer_after=1.0)
    alice.handler = answer_in_dialog
    request_id = alice.invite(bob, **invite)
    net.run(duration=2)
    return alice, bob, callee, request_id


def answer_in_dialog(node: Node, event: UaEvent) -> None:
    if isinstance(event, RequestReceived) and event.dialog_id is not None and event.request.method != "PRACK":
        body = SDP_OFFER if event.request.method == "INVITE" else b""
        node.ua.respond(event.request_id, 200, headers=SDP if body else (), body=body, now=node.net.now)


def wires(net: Net, line: str) -> list:
    return [w for w in net.sent if w.line == line]


def test_uac_asks_uas_grants_and_the_uac_refreshes_with_update() -> None:
    net = Net()
    alice, bob, callee, _ = call(net, session_expires=120)
    invite = net.delivered[0].msg
    assert invite.headers.get("session-expires") == "120"
    assert invite.headers.get("supported") == "100rel, timer"
    ok = alice.of(ResponseReceived)[-1].response
    assert ok.headers.get("session-expires") == "120;refresher=uac"
    assert ok.headers.get("require") == "timer"
    dialog_id = alice.of(ResponseReceived)[-1].dialog_id
    info = alice.ua.dialog(dialog_id)
    assert info is not None and (info.session_expires, info.we_refresh) == (120, True)
    events_before = len(alice.events)
    net.run(until=300)
    updates = wires(net, "alice->bob UPDATE")
    assert [round(w.sent_at, 2) for w in updates] == [61.02, 121.04, 181.06, 241.08]  # each from its 2xx
    assert all(w.msg.headers.get("session-expires") == "120;refresher=uac" for w in updates)
    assert all(w.msg.body == b"" for w in updates)
    assert len(alice.events) == events_before  # refreshes are reported to nobody
    assert [e.request.method for e in bob.of(RequestReceived)][1:] == ["UPDATE"] * 4
    assert alice.ua.dialog(dialog_id) is not None and bob.ua.dialog(callee.dialogs[0]) is not None


def test_refresh_by_re_invite_with_the_last_sdp_when_the_peer_does_not_allow_update() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob, provisional=0, status=None)
    request_id = alice.invite(bob, session_expires=100)
    net.run(duration=0.1)
    bob.act(lambda ua, now: ua.respond(callee.invites[0], 200, headers=NO_UPDATE, body=SDP_ANSWER, now=now))
    net.run(until=60)
    (reinvite,) = wires(net, "alice->bob INVITE")[1:]
    assert reinvite.sent_at == pytest.approx(0.11 + 50)  # half the interval after the 2xx
    assert reinvite.msg.body == SDP_OFFER and reinvite.msg.content_type == "application/sdp"
    assert reinvite.msg.headers.get("session-expires") == "100;refresher=uac"
    assert "alice->bob ACK" in [w.line for w in net.delivered if w.sent_at > 50]
    assert [type(e).__name__ for e in alice.events] == ["ResponseReceived"]  # only the call's 200
    assert alice.events[0].request_id == request_id
    assert [e.request.method for e in bob.of(RequestReceived)] == ["INVITE", "INVITE"]
    assert len(bob.of(AckReceived)) == 2


def test_the_uas_refreshes_when_the_uac_asks_it_to() -> None:
    net = Net()
    alice, bob, callee, _ = call(net, headers=[*SDP, ("Session-Expires", "120;refresher=uas")])
    net.run(until=70)
    (update,) = wires(net, "bob->alice UPDATE")
    assert update.msg.headers.get("session-expires") == "120;refresher=uac"  # uac of the UPDATE
    assert update.sent_at == pytest.approx(1.01 + 60)
    assert alice.of(RequestReceived)[-1].request.method == "UPDATE"
    info = bob.ua.dialog(callee.dialogs[0])
    assert info is not None and info.we_refresh
    # After the refresh the roles hold: bob refreshes again 60 s later.
    net.run(until=130)
    assert len(wires(net, "bob->alice UPDATE")) == 2


def test_expiry_on_the_side_not_refreshing_sends_bye() -> None:
    net = Net()
    alice, bob, _callee, _ = call(net, headers=[*SDP, ("Session-Expires", "120;refresher=uas")])
    dialog_id = alice.of(ResponseReceived)[-1].dialog_id
    net.drop(match(src="bob", method="UPDATE"), count=None)  # bob's refreshes never arrive
    net.run(until=100)
    assert alice.events[-1] == DialogEnded("tu", dialog_id, "session_expired", None)
    bye = wires(net, "alice->bob BYE")[0]
    assert bye.sent_at == pytest.approx(1.02 + 120 - 32)
    ended = bob.events[-1]
    assert isinstance(ended, DialogEnded) and ended.reason == "bye"
    net.run()
    net.assert_idle()


def test_expiry_on_the_uas_side_when_the_uac_stops_refreshing() -> None:
    net = Net()
    alice, bob, callee, _ = call(net, session_expires=90)
    net.drop(match(src="alice", method="UPDATE"), count=None)
    net.run(until=100)
    assert bob.events[-1] == DialogEnded("callee", callee.dialogs[0], "session_expired", None)
    assert wires(net, "bob->alice BYE")[0].sent_at == pytest.approx(1.01 + 90 - 30)
    assert alice.events[-1].reason == "bye"


def test_a_failed_refresh_ends_the_dialog_with_bye() -> None:
    net = Net()
    alice, bob, callee, _ = call(net, session_expires=120)
    dialog_id = alice.of(ResponseReceived)[-1].dialog_id
    bob.handler = lambda node, event: (
        node.ua.respond(event.request_id, 481, now=net.now)
        if isinstance(event, RequestReceived) and event.request.method == "UPDATE"
        else callee(node, event)
    )
    net.run(until=70)
    assert alice.events[-1] == DialogEnded("tu", dialog_id, "481", None)
    assert wires(net, "alice->bob BYE")


def test_a_re_invite_from_either_side_restarts_the_interval() -> None:
    net = Net()
    _alice, bob, callee, _ = call(net, session_expires=120)
    net.at(50.0, lambda: bob.act(
        lambda ua, now: ua.send_in_dialog(callee.dialogs[0], "INVITE", headers=SDP, body=SDP_ANSWER, now=now)
    ))
    net.run(until=115)
    reinvite = wires(net, "bob->alice INVITE")[0]
    assert reinvite.msg.headers.get("session-expires") == "120;refresher=uas"  # alice keeps refreshing
    assert [round(w.sent_at, 2) for w in wires(net, "alice->bob UPDATE")] == [110.01]  # 60 s after alice's 2xx


def test_422_is_retried_once_with_the_min_se_and_the_same_request_id() -> None:
    net = Net()
    alice, _bob, callee, request_id = call(
        net, session_expires=120, bob_kwargs={"session_timer": SessionTimerConfig(expires=1800, min_se=300)}
    )
    assert [(w.line, w.msg.cseq.number) for w in net.delivered][:6] == [
        ("alice->bob INVITE", 1),
        ("bob->alice 100 INVITE", 1),
        ("bob->alice 422 INVITE", 1),
        ("alice->bob ACK", 1),
        ("alice->bob INVITE", 2),
        ("bob->alice 100 INVITE", 2),
    ]
    rejected = net.delivered[2].msg
    assert isinstance(rejected, Response) and rejected.headers.get("min-se") == "300"
    retry = net.delivered[4].msg
    assert isinstance(retry, Request)
    assert retry.headers.get("session-expires") == "300" and retry.headers.get("min-se") == "300"
    assert retry.call_id == net.delivered[0].msg.call_id and retry.from_.tag == net.delivered[0].msg.from_.tag
    assert retry.top_via.branch != net.delivered[0].msg.top_via.branch
    (ok,) = alice.of(ResponseReceived)
    assert ok.request_id == request_id and ok.response.status == 200
    assert ok.response.headers.get("session-expires") == "300;refresher=uac"
    assert len(callee.invites) == 1  # the TU never saw the refused INVITE


def test_the_uas_asks_for_a_timer_when_configured_and_the_uac_supports_it() -> None:
    net = Net()
    alice, _bob, _callee, _ = call(net, bob_kwargs={"session_timer": SessionTimerConfig(expires=600, min_se=90)})
    invite = net.delivered[0].msg
    assert "session-expires" not in invite.headers
    ok = alice.of(ResponseReceived)[-1]
    assert ok.response.headers.get("session-expires") == "600;refresher=uac"
    info = alice.ua.dialog(ok.dialog_id)
    assert info is not None and info.session_expires == 600 and info.we_refresh


def test_session_timer_config_is_checked() -> None:
    with pytest.raises(ValueError):
        SessionTimerConfig(expires=60, min_se=30)
    with pytest.raises(ValueError):
        SessionTimerConfig(expires=100, min_se=200)
