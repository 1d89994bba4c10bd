"""Anchored calls in the in-memory harness: the B2BUA's `Call` with `media.anchor.AnchoringSeam`
over a fake backend that rewrites SDP (and answers `media_delay` later on the fake clock).

What it proves: an anchored call's SDP is rewritten on both sides and the relay of each
SDP waits for the backend; hold re-INVITEs go through the backend (direction by tags);
the session is deleted on hang-up; a backend failure on the first offer fails the call
with 503 (on the answer: the callee is hung up, 503 to the caller; on a re-offer: 503 to
that request, the call goes on); unanchored calls are untouched; the policy anchors by
rule, user and feature."""

from __future__ import annotations

import re

from call_harness import Pbx, dest_to
from ua_harness import SDP, SDP_ANSWER, SDP_OFFER, Callee, Net, Node

from vivait_sip.b2bua.call import Call, CallState, LegState
from vivait_sip.media.anchor import AnchoringPolicy, AnchoringSeam
from vivait_sip.media.control import Answer, Delete, LegStats, MediaCommand, MediaReply, Offer
from vivait_sip.sip.message import Request, Response
from vivait_sip.sip.ua import AckReceived, DialogEnded, RequestReceived, ResponseReceived

RELAY = "192.0.2.99"
HOLD = SDP_ANSWER.replace(b"t=0 0\r\n", b"t=0 0\r\na=sendonly\r\n")


class FakeBackend:
    """Rewrites o= and c= addresses to RELAY and m= ports to 30000 + n (n: the request's number); answers
    'error' for the commands in `fail`."""

    name = "fake"

    def __init__(self) -> None:
        self.requests: list[MediaCommand] = []
        self.fail: set[str] = set()
        self.tags: list[str] = []  # the parties' tags, in the order the backend met them

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    @property
    def healthy(self) -> bool:
        return True

    def status(self) -> dict[str, object]:
        return {"backend": self.name, "sessions": 0}

    async def request(self, msg: MediaCommand) -> MediaReply:
        self.requests.append(msg)
        if msg.command in self.fail:
            return MediaReply.failure(f"fake: {msg.command} refused")
        if isinstance(msg, Delete):  # what the relay saw of each party it had a tag for
            legs = tuple(LegStats(tag, packets=50 - i, bytes=8000 - 160 * i, loss=0.0, jitter_ms=1.5,
                                  address=f"10.0.0.{i + 1}:4000") for i, tag in enumerate(self.tags))
            return MediaReply("ok", legs=legs, backend=self.name)
        if isinstance(msg, Offer) and msg.key.from_tag not in self.tags:
            self.tags.append(msg.key.from_tag)
        if isinstance(msg, Answer) and msg.key.to_tag is not None and msg.key.to_tag not in self.tags:
            self.tags.append(msg.key.to_tag)
        if isinstance(msg, (Offer, Answer)):
            port = 30000 + 2 * len(self.requests)
            sdp = re.sub(rb"IN IP4 \S+", f"IN IP4 {RELAY}".encode(), msg.sdp)
            sdp = re.sub(rb"m=audio \d+", f"m=audio {port}".encode(), sdp)
            return MediaReply("ok", sdp=sdp, backend=self.name)
        return MediaReply("ok", backend=self.name)

    def of(self, cls: type) -> list:
        return [m for m in self.requests if isinstance(m, cls)]


def setup(policy: AnchoringPolicy | None = None, rule: str | None = "anchored", **callee: object) -> tuple[
    Net, Node, Node, Pbx, FakeBackend, AnchoringSeam, Callee
]:
    net = Net()
    alice = net.add("alice")
    Callee(alice)  # answers what reaches it inside its dialogs (re-INVITEs with SDP_ANSWER)
    pbx = Pbx(net, net.add("pbx"))
    bob = net.add("bob")
    script = Callee(bob, **callee)  # type: ignore[arg-type]
    backend = FakeBackend()
    seam = AnchoringSeam(backend, policy or AnchoringPolicy(rules={"anchored": "anchor", "direct": "pass"}))
    pbx.media = seam

    def route(call: Call) -> None:
        call.rule = rule
        call.ring([[dest_to(bob, pbx)]])

    pbx.route = route
    return net, alice, bob, pbx, backend, seam, script


def received(node: Node, method: str) -> list[Request]:
    return [e.request for e in node.of(RequestReceived) if e.request.method == method]


def finals(node: Node) -> list[Response]:
    return [e.response for e in node.of(ResponseReceived) if e.response.status >= 200 and e.response.cseq.method == "INVITE"]


def relayed(body: bytes) -> bool:
    return f"c=IN IP4 {RELAY}".encode() in body and b"10.0.0." not in body


def test_an_anchored_call_gets_rewritten_sdp_both_ways_and_is_deleted_on_hang_up() -> None:
    net, alice, bob, pbx, backend, seam, _ = setup()
    alice.invite(pbx.node)
    net.run(duration=3)
    (invite,) = received(bob, "INVITE")
    assert relayed(invite.body)  # the callee sees the relay, not alice
    (ok,) = finals(alice)
    assert ok.status == 200 and relayed(ok.body)  # and alice sees the relay, not bob
    offer, answer = backend.requests
    assert isinstance(offer, Offer) and isinstance(answer, Answer)
    call = pbx.calls[0]
    caller_tag = call.request.from_.tag
    assert offer.key.call_id == call.request.call_id and offer.key.from_tag == caller_tag and offer.key.to_tag is None
    assert offer.sdp == SDP_OFFER and answer.sdp == SDP_ANSWER  # the parties' own SDP went in
    assert answer.key.from_tag == caller_tag and answer.key.to_tag == seam.tag_of(call, "callee")
    assert call.extra["media"] == "anchored (rule anchored)" and seam.active == 1
    alice.act(lambda ua, now: ua.bye(alice.of(ResponseReceived)[-1].dialog_id, now))
    net.run()
    (delete,) = backend.of(Delete)
    assert delete.call_id == call.request.call_id
    assert pbx.ended_calls == [call] and seam.active == 0 and seam.status()["deletes"] == 1
    # the delete's statistics reach the feature by party, for the call's record
    assert pbx.media_stats[call.call_uuid] == {
        "caller": {"packets": 50, "bytes": 8000, "errors": 0, "loss": 0.0, "jitter_ms": 1.5, "address": "10.0.0.1:4000"},
        "callee": {"packets": 49, "bytes": 7840, "errors": 0, "loss": 0.0, "jitter_ms": 1.5, "address": "10.0.0.2:4000"},
    }
    net.assert_idle()


def test_the_relay_of_each_sdp_waits_for_the_backend() -> None:
    net, alice, bob, pbx, backend, _, _ = setup()
    pbx.media_delay = 0.5  # the offer's step ends at 0.51, bob answers at ~1.52, that answer's step ends at ~2.03
    alice.invite(pbx.node)
    net.run(until=0.3)
    assert received(bob, "INVITE") == [] and pbx.calls[0].state is CallState.RINGING  # the offer is with the backend
    net.run(until=0.8)
    assert len(received(bob, "INVITE")) == 1 and len(backend.requests) == 1
    net.run(until=1.8)
    assert finals(alice) == [] and pbx.calls[0].winner is not None  # bob answered; his 200 waits for the answer
    net.run(until=2.8)
    assert [r.status for r in finals(alice)] == [200] and len(backend.requests) == 2


def test_hold_and_resume_reinvites_go_through_the_backend_by_direction() -> None:
    net, alice, bob, pbx, backend, seam, callee = setup()
    alice.invite(pbx.node)
    net.run(duration=3)
    call = pbx.calls[0]
    caller_tag, callee_tag = seam.tag_of(call, "caller"), seam.tag_of(call, "callee")
    bob.act(lambda ua, now: ua.send_in_dialog(callee.dialogs[0], "INVITE", headers=SDP, body=HOLD, now=now))
    net.run(duration=2)
    (reinvite,) = received(alice, "INVITE")
    assert relayed(reinvite.body) and b"a=sendonly" in reinvite.body  # the hold, anchored
    hold_offer, hold_answer = backend.requests[2:4]
    assert isinstance(hold_offer, Offer) and hold_offer.sdp == HOLD
    assert (hold_offer.key.from_tag, hold_offer.key.to_tag) == (callee_tag, caller_tag)  # bob offered
    assert isinstance(hold_answer, Answer) and (hold_answer.key.from_tag, hold_answer.key.to_tag) == (callee_tag, caller_tag)
    ok = [e.response for e in bob.of(ResponseReceived) if e.response.cseq.method == "INVITE"][-1]
    assert ok.status == 200 and relayed(ok.body)
    assert call.held == {"callee"}
    assert pbx.holds == [(call.call_uuid, "callee", True)]  # after the anchored answer was relayed
    alice.act(lambda ua, now: ua.send_in_dialog(alice.of(ResponseReceived)[1].dialog_id, "INVITE", headers=SDP,
                                                 body=SDP_OFFER, now=now))
    net.run(duration=2)
    resume_offer = backend.requests[4]
    assert isinstance(resume_offer, Offer) and (resume_offer.key.from_tag, resume_offer.key.to_tag) == (caller_tag, callee_tag)
    assert relayed(received(bob, "INVITE")[-1].body)
    assert len(backend.requests) == 6 and call.state is CallState.ANSWERED


def test_a_backend_failure_on_the_offer_fails_the_call_with_503() -> None:
    net, alice, bob, pbx, backend, seam, _ = setup()
    backend.fail = {"offer"}
    alice.invite(pbx.node)
    net.run()
    (final,) = finals(alice)
    assert final.status == 503 and "media" in final.reason
    assert received(bob, "INVITE") == []  # nothing was placed
    call = pbx.calls[0]
    assert call.state is CallState.ENDED and call.hangup_cause.startswith("media: fake: offer refused")
    assert pbx.ended_calls == [call] and seam.active == 0
    net.assert_idle()


def test_a_backend_failure_on_the_answer_hangs_up_the_callee_and_gives_503() -> None:
    net, alice, bob, pbx, backend, _, _ = setup()
    backend.fail = {"answer"}
    alice.invite(pbx.node)
    net.run()
    assert [r.status for r in finals(alice)] == [503]
    assert bob.of(AckReceived)  # its 200 was acknowledged ...
    (ended,) = bob.of(DialogEnded)  # ... and hung up
    assert ended.reason == "bye"
    call = pbx.calls[0]
    assert call.answered_at is None and call.final_status == 503 and call.winner is not None
    assert call.winner.state is LegState.ENDED
    net.assert_idle()


def test_a_failed_reoffer_gets_503_and_the_call_goes_on() -> None:
    net, alice, bob, pbx, backend, _, callee = setup()
    alice.invite(pbx.node)
    net.run(duration=3)
    backend.fail = {"offer"}
    bob.act(lambda ua, now: ua.send_in_dialog(callee.dialogs[0], "INVITE", headers=SDP, body=HOLD, now=now))
    net.run(duration=2)
    answer = [e.response for e in bob.of(ResponseReceived) if e.response.cseq.method == "INVITE"][-1]
    assert answer.status == 503 and received(alice, "INVITE") == []
    assert pbx.calls[0].state is CallState.ANSWERED
    backend.fail = set()
    bob.act(lambda ua, now: ua.send_in_dialog(callee.dialogs[0], "INVITE", headers=SDP, body=HOLD, now=now))
    net.run(duration=2)
    assert len(received(alice, "INVITE")) == 1


def test_unanchored_calls_are_untouched() -> None:
    for policy, rule in ((AnchoringPolicy(), None), (AnchoringPolicy(default="anchor", rules={"direct": "pass"}), "direct")):
        net, alice, bob, pbx, backend, seam, callee = setup(policy, rule)
        alice.invite(pbx.node)
        net.run(duration=3)
        assert received(bob, "INVITE")[0].body == SDP_OFFER
        assert finals(alice)[0].body == SDP_ANSWER
        bob.act(lambda ua, now, c=callee: ua.send_in_dialog(c.dialogs[0], "INVITE", headers=SDP, body=HOLD, now=now))
        net.run(duration=2)
        assert received(alice, "INVITE")[0].body == HOLD
        alice.act(lambda ua, now, a=alice: ua.bye(a.of(ResponseReceived)[1].dialog_id, now))
        net.run()
        assert backend.requests == [] and seam.status()["passed"] == 1 and "media" not in pbx.calls[0].extra
        net.assert_idle()


def test_the_policy_anchors_by_user_and_by_feature() -> None:
    by_user = AnchoringPolicy(users=["alice"])
    net, alice, bob, pbx, _, _, _ = setup(by_user, None)
    pbx.route = lambda call: (setattr(call, "user", "alice"), call.ring([[dest_to(bob, pbx)]]))  # type: ignore[func-returns-value]
    alice.invite(pbx.node)
    net.run(duration=3)
    assert relayed(received(bob, "INVITE")[0].body) and pbx.calls[0].extra["media"] == "anchored (user alice)"

    by_feature = AnchoringPolicy()
    by_feature.require("recording", lambda call: call.callee_user == "bob")
    net, alice, bob, pbx, _, _, _ = setup(by_feature, None)
    pbx.route = lambda call: (setattr(call, "callee_user", "bob"), call.ring([[dest_to(bob, pbx)]]))  # type: ignore[func-returns-value]
    alice.invite(pbx.node)
    net.run(duration=3)
    assert relayed(received(bob, "INVITE")[0].body) and pbx.calls[0].extra["media"] == "anchored (feature recording)"
    assert by_feature.anchor_required(pbx.calls[0]) == "recording"


def test_a_late_offer_is_anchored_in_the_2xx_and_the_ack() -> None:
    net, alice, bob, pbx, backend, seam, _ = setup()
    alice.invite(pbx.node, headers=[], body=b"", auto_ack=False)
    net.run(duration=3)
    assert received(bob, "INVITE")[0].body == b""
    (ok,) = finals(alice)
    assert relayed(ok.body)  # bob's offer, anchored
    call = pbx.calls[0]
    (offer,) = backend.requests
    assert isinstance(offer, Offer) and offer.key.from_tag == seam.tag_of(call, "callee")  # bob offered
    dialog = alice.of(ResponseReceived)[-1].dialog_id
    alice.act(lambda ua, now: ua.ack(dialog, body=SDP_OFFER, headers=SDP, now=now))
    net.run(duration=1)
    answer = backend.requests[1]
    assert isinstance(answer, Answer) and answer.key.from_tag == seam.tag_of(call, "callee")
    assert answer.key.to_tag == seam.tag_of(call, "caller")
    (ack,) = bob.of(AckReceived)
    assert relayed(ack.request.body)


def test_early_media_is_anchored_before_it_is_relayed() -> None:
    net, alice, bob, pbx, backend, _, callee = setup(status=None, provisional=0)
    alice.invite(pbx.node)
    net.run(duration=1)
    invite_id = callee.invites[0]
    bob.act(lambda ua, now: ua.respond(invite_id, 183, headers=SDP, body=SDP_ANSWER, now=now))
    net.run(duration=1)
    early = [e.response for e in alice.of(ResponseReceived) if e.response.status == 183]
    assert len(early) == 1 and relayed(early[0].body)
    callee.answer(invite_id, 200)
    net.run(duration=1)
    assert [r.status for r in finals(alice)] == [200] and relayed(finals(alice)[0].body)
    assert [m.command for m in backend.requests] == ["offer", "answer", "answer"]  # the 200 re-answers


def test_a_caller_who_cancels_while_the_offer_is_with_the_backend() -> None:
    net, alice, bob, pbx, backend, seam, _ = setup()
    pbx.media_delay = 1.0
    request_id = alice.invite(pbx.node)
    net.run(duration=0.5)
    alice.act(lambda ua, now: ua.cancel(request_id, now))
    net.run()
    assert [r.status for r in finals(alice)] == [487]
    assert received(bob, "INVITE") == []  # the offer came back after the call ended: nothing placed
    assert [m.command for m in backend.requests] == ["offer", "delete"] and seam.active == 0
    net.assert_idle()


def test_an_admin_hang_up_while_the_answer_is_with_the_backend() -> None:
    net, alice, bob, pbx, _, _, _ = setup()
    pbx.media_delay = 1.0
    alice.invite(pbx.node)
    net.run(duration=2.5)  # offer done at 1.0; bob answered at ~2.0, its answer with the backend
    call = pbx.calls[0]
    assert call.state is CallState.ANSWERED and call.final_status is None
    net.at(net.now, lambda: call.hangup("admin"))
    net.run()
    assert [r.status for r in finals(alice)] == [480]
    assert [e.reason for e in bob.of(DialogEnded)] == ["bye"]
    net.assert_idle()


def test_many_anchored_calls_leave_nothing_behind() -> None:
    net = Net(record=False)
    alice = net.add("alice")
    pbx = Pbx(net, net.add("pbx"))
    bob = net.add("bob")
    callee = Callee(bob, answer_after=0.2)
    backend = FakeBackend()
    seam = AnchoringSeam(backend, AnchoringPolicy(default="anchor"))
    pbx.media = seam
    pbx.route = lambda call: call.ring([[dest_to(bob, pbx)]])
    alice.keep_events = False
    for n in range(100):
        net.at(n * 0.05, lambda: alice.invite(pbx.node) and None)
    net.run(duration=20)
    for dialog in list(callee.dialogs):
        bob.act(lambda ua, now, d=dialog: ua.bye(d, now))
    net.run()
    assert len(pbx.ended_calls) == 100 and seam.active == 0 and len(backend.of(Delete)) == 100
    assert all(c.state is CallState.ENDED for c in pbx.calls)
    net.assert_idle()


def test_a_callee_who_hangs_up_while_its_answer_is_with_the_backend() -> None:
    net, alice, bob, pbx, backend, seam, callee = setup()
    pbx.media_delay = 1.0
    alice.invite(pbx.node)
    net.run(until=2.2)  # offer done at ~1.0; bob answered at ~2.02, its answer with the backend until ~3.03
    call = pbx.calls[0]
    assert call.state is CallState.ANSWERED and call.final_status is None and bob.of(AckReceived)
    bob.act(lambda ua, now: ua.bye(callee.dialogs[0], now))
    net.run()
    assert [r.status for r in finals(alice)] == [480]  # never a 200 for a call already gone
    assert call.answered_at is None and call.hangup_side == "callee"
    assert [m.command for m in backend.requests] == ["offer", "answer", "delete"] and seam.active == 0
    net.assert_idle()
