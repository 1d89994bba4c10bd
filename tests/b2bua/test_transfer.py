"""Hold and transfer in the in-memory harness (fake clock, no sockets): blind transfer by
REFER (NOTIFY progress, Referred-By, failure leaves the call as it was), attended transfer
by REFER with Replaces (one worker and across two), INVITE with Replaces, the consultation
call gone before the REFER, the transferor hanging up early; every table drained after."""

from __future__ import annotations

from transfer_harness import Cluster, Phone, TransferPbx, dest, responses
from ua_harness import Net

from vivait_sip.b2bua.call import Call, CallState
from vivait_sip.b2bua.routing import Source
from vivait_sip.b2bua.transfer import TransferCall
from vivait_sip.sip.ua import DialogEnded


def office(*, workers: int = 1, **phone_kwargs: dict[str, object]) -> tuple[Net, list[TransferPbx], dict[str, Phone]]:
    """alice, bob, carol and dave, and a pbx (one node per worker) ringing them by name."""
    net = Net()
    cluster = Cluster(net)
    pbxs = [TransferPbx(net, net.add(f"pbx{i}"), cluster) for i in range(workers)]
    phones = {name: Phone(net.add(name), **phone_kwargs.get(name, {})) for name in ("alice", "bob", "carol", "dave")}  # type: ignore[arg-type]

    def route_to(call: Call, number: str, source: Source) -> None:
        phone = phones.get(number)
        if phone is None:
            call.fail(404)
            return
        call.callee_user = number
        call.ring([[dest(phone)]])

    for pbx in pbxs:
        pbx.route_to = route_to
    return net, pbxs, phones


def connected(net: Net, pbx: TransferPbx, caller: Phone, callee: str) -> Call:
    before = len(pbx.every_call)
    caller.call(pbx, callee)
    net.run(duration=2)
    call = pbx.every_call[before]
    assert call.state is CallState.ANSWERED
    return call


def drained(net: Net, pbxs: list[TransferPbx]) -> None:
    net.run()
    for pbx in pbxs:
        assert pbx.leftovers() == {}, pbx.leftovers()
    net.assert_idle()


def notifies(phone: Phone) -> list[tuple[int, str]]:
    return [(n.status, n.state.split(";")[0]) for n in phone.notifies]


def test_blind_transfer_connects_the_transferee_to_the_target_and_the_transferor_leaves() -> None:
    net, (pbx,), p = office()
    alice, bob, carol = p["alice"], p["bob"], p["carol"]
    call = connected(net, pbx, alice, "bob")
    (b_dialog,) = bob.dialogs
    bob.refer(b_dialog, "<sip:carol@pbx.example>", referred_by="<sip:bob@pbx.example>")
    net.run(duration=0.1)
    assert call.snapshot()["state"] == "transferring"
    net.run(duration=3)
    assert bob.finals("REFER") == [202]
    assert notifies(bob) == [(100, "active"), (180, "active"), (200, "terminated")]
    assert all(n.event.startswith("refer;id=") and n.body.startswith(b"SIP/2.0 ") for n in bob.notifies)
    (invite,) = carol.invites
    assert invite.body == b"" and invite.headers.get("referred-by") == "<sip:bob@pbx.example>"  # late offer
    assert alice.talks_to() == {"carol"} and carol.talks_to() == {"alice"}
    assert bob.dialogs == [] and [e.reason for e in bob.ended()] == ["bye"]  # the pbx hung bob up
    assert call.state is CallState.ENDED and call.hangup_cause == "transferred" and call.hangup_side == "callee"
    assert call.extra["transfers"][0]["result"] == "ok"  # type: ignore[index]
    (new,) = [c for c in pbx.every_call if c is not call]
    assert isinstance(new, TransferCall) and new.linked_to == call.call_uuid and new.state is CallState.ANSWERED
    assert (new.caller, new.callee, new.user) == ("alice", "carol", "bob")
    assert pbx.routed[-1] == ("carol", Source("bob", None, bob.node.host))  # the transferor's authority
    (alice_dialog,) = alice.dialogs
    alice.bye(alice_dialog)
    net.run(duration=1)
    assert carol.dialogs == [] and new.state is CallState.ENDED and new.hangup_side == "caller"
    drained(net, [pbx])


def test_blind_transfer_to_a_busy_target_is_notified_and_the_call_stays() -> None:
    net, (pbx,), p = office(carol={"status": 486})
    alice, bob, carol = p["alice"], p["bob"], p["carol"]
    call = connected(net, pbx, alice, "bob")
    bob.refer(bob.dialogs[0], "<sip:carol@pbx.example>")
    net.run(duration=3)
    assert notifies(bob) == [(100, "active"), (180, "active"), (486, "terminated")]
    assert call.state is CallState.ANSWERED and call.transfer is None and call.snapshot()["state"] == "answered"
    assert alice.talks_to() == {"bob"} and bob.talks_to() == {"alice"}
    (failed,) = [c for c in pbx.ended_calls if c is not call]
    assert failed.linked_to == call.call_uuid and failed.final_status == 486
    assert call.extra["transfers"] == [{"kind": "blind", "by": "bob", "to": "carol", "result": "failed",  # type: ignore[index]
                                        "status": 486, "call": failed.call_uuid}]
    bob.refer(bob.dialogs[0], "<sip:dave@pbx.example>")  # a second try in the same call works
    net.run(duration=3)
    assert alice.talks_to() == {"dave"} and call.state is CallState.ENDED
    assert not carol.dialogs
    alice.bye(alice.dialogs[0])
    drained(net, [pbx])


def replaces_of(pbx_node_dialog: object) -> str:
    """The Replaces value (escaped for a Refer-To URI) naming a phone's dialog."""
    info = pbx_node_dialog
    value = f"{info.call_id};to-tag={info.remote_tag};from-tag={info.local_tag}"  # type: ignore[attr-defined]
    return value.replace("@", "%40").replace(";", "%3B").replace("=", "%3D")


def consult(net: Net, pbxs: list[TransferPbx], p: dict[str, Phone], *, second_worker: int = 0) -> tuple[Call, Call]:
    """alice calls bob (worker 0); bob calls carol (worker `second_worker`): bob holds both."""
    first = connected(net, pbxs[0], p["alice"], "bob")
    second = connected(net, pbxs[second_worker], p["bob"], "carol")
    return first, second


def test_attended_transfer_joins_the_two_remaining_parties() -> None:
    net, pbxs, p = office()
    alice, bob, carol = p["alice"], p["bob"], p["carol"]
    first, second = consult(net, pbxs, p)
    b_first, b_second = bob.dialogs
    info = bob.node.ua.dialog(b_second)
    bob.refer(b_first, f"<sip:carol@pbx.example?Replaces={replaces_of(info)}>")
    net.run(duration=3)
    assert notifies(bob) == [(100, "active"), (200, "terminated")]
    assert alice.talks_to() == {"carol"} and carol.talks_to() == {"alice"}
    assert carol.invites and len(carol.invites) == 1  # nobody rang: carol got a re-INVITE, not a new call
    assert bob.dialogs == [] and sorted(e.reason for e in bob.ended()) == ["bye", "bye"]  # both of bob's legs
    assert first.hangup_cause == "transferred" and second.hangup_cause == "transferred"
    (joined,) = [c for c in pbxs[0].calls.values()]
    assert joined.linked_to == first.call_uuid and second.extra["transferred_into"] == joined.call_uuid
    assert joined.extra["transfer"]["replaced_call"] == second.call_uuid  # type: ignore[index]
    assert (joined.caller, joined.callee) == ("alice", "carol")
    # The joined call is an ordinary call: hold passes, then carol hangs up.
    carol.hold(carol.dialogs[0])
    net.run(duration=1)
    assert joined.snapshot()["state"] == "on_hold"
    carol.bye(carol.dialogs[0])
    net.run(duration=1)
    assert alice.dialogs == [] and joined.hangup_side == "callee"
    drained(net, pbxs)


def test_attended_transfer_across_two_workers_joins_by_messages() -> None:
    net, pbxs, p = office(workers=2)
    alice, bob, carol = p["alice"], p["bob"], p["carol"]
    _first, second = consult(net, pbxs, p, second_worker=1)
    b_first, b_second = bob.dialogs
    bob.refer(b_first, f"<sip:carol@pbx.example?Replaces={replaces_of(bob.node.ua.dialog(b_second))}>")
    net.run(duration=3)
    assert notifies(bob) == [(100, "active"), (200, "terminated")]
    assert alice.talks_to() == {"carol"} and carol.talks_to() == {"alice"}
    assert bob.dialogs == []
    kinds = {kind for _, _, kind in pbxs[0].cluster.messages}
    assert {"b2bua.xfer_take", "b2bua.xfer_taken", "b2bua.xfer_release", "b2bua.rd_command", "b2bua.rd_event"} <= kinds
    (joined,) = pbxs[0].calls.values()  # worker 0 holds the joined call, worker 1 carol's dialog
    assert pbxs[1].calls == {} and second.hangup_cause == "transferred"
    assert joined.out_dialog is not None and joined.out_dialog < 0  # carol's dialog is remote
    # Both directions keep working across the workers: a hold from alice, then carol's BYE.
    alice.hold(alice.dialogs[0])
    net.run(duration=1)
    assert carol.media[carol.dialogs[0]] == "alice" and joined.held == {"caller"}
    alice.hold(alice.dialogs[0], held=False)
    net.run(duration=1)
    assert joined.held == set()
    carol.bye(carol.dialogs[0])
    net.run(duration=1)
    assert alice.dialogs == [] and joined.state is CallState.ENDED and joined.hangup_side == "callee"
    drained(net, pbxs)


def test_attended_transfer_refer_sent_to_the_other_call_works_too() -> None:
    """The transferor may REFER in the consultation call, naming the first one."""
    net, pbxs, p = office(workers=2)
    alice, bob, carol = p["alice"], p["bob"], p["carol"]
    consult(net, pbxs, p, second_worker=1)
    b_first, b_second = bob.dialogs
    bob.refer(b_second, f"<sip:alice@pbx.example?Replaces={replaces_of(bob.node.ua.dialog(b_first))}>")
    net.run(duration=3)
    assert alice.talks_to() == {"carol"} and carol.talks_to() == {"alice"} and bob.dialogs == []
    alice.bye(alice.dialogs[0])
    drained(net, pbxs)


def test_the_consultation_call_ended_before_the_refer_is_notified_481() -> None:
    for workers in (1, 2):
        net, pbxs, p = office(workers=workers)
        alice, bob, carol = p["alice"], p["bob"], p["carol"]
        first, _second = consult(net, pbxs, p, second_worker=workers - 1)
        b_first, b_second = bob.dialogs
        stale = bob.node.ua.dialog(b_second)
        carol.bye(carol.dialogs[0])  # carol hangs up the consultation
        net.run(duration=1)
        bob.refer(b_first, f"<sip:carol@pbx.example?Replaces={replaces_of(stale)}>")
        net.run(duration=2)
        assert notifies(bob) == [(100, "active"), (481, "terminated")]
        assert first.state is CallState.ANSWERED and first.transfer is None
        assert alice.talks_to() == {"bob"}
        alice.bye(alice.dialogs[0])
        drained(net, pbxs)


def test_invite_with_replaces_takes_the_replaced_partys_place() -> None:
    for workers in (1, 2):
        net, pbxs, p = office(workers=workers)
        alice, bob, dave = p["alice"], p["bob"], p["dave"]
        call = connected(net, pbxs[0], alice, "bob")
        info = bob.node.ua.dialog(bob.dialogs[0])
        replaces = f"{info.call_id};to-tag={info.remote_tag};from-tag={info.local_tag}"
        dave.call(pbxs[workers - 1], "bob", headers=[("Replaces", replaces)])
        net.run(duration=2)
        assert dave.talks_to() == {"alice"} and alice.talks_to() == {"dave"}
        assert bob.dialogs == [] and call.hangup_cause == "replaced"
        (new,) = pbxs[workers - 1].calls.values()
        assert new.linked_to == call.call_uuid and call.extra["transferred_into"] == new.call_uuid
        assert dave.finals("INVITE") == [200]
        dave.bye(dave.dialogs[0])
        drained(net, pbxs)


def test_invite_with_replaces_late_offer_and_errors() -> None:
    net, pbxs, p = office()
    alice, bob, dave, carol = p["alice"], p["bob"], p["dave"], p["carol"]
    connected(net, pbxs[0], alice, "bob")
    info = bob.node.ua.dialog(bob.dialogs[0])
    dave.call(pbxs[0], "bob", headers=[("Replaces", f"nope@x;to-tag={info.remote_tag};from-tag={info.local_tag}")])
    dave.call(pbxs[0], "bob", headers=[("Replaces", f"{info.call_id};to-tag=a;from-tag=b")])
    carol.call(pbxs[0], "bob", headers=[("Replaces", f"{info.call_id};to-tag={info.remote_tag};from-tag={info.local_tag};early-only")])
    net.run(duration=2)
    assert dave.finals("INVITE") == [481, 481] and carol.finals("INVITE") == [486]
    dave.call(pbxs[0], "bob", offer=False,
              headers=[("Replaces", f"{info.call_id};to-tag={info.remote_tag};from-tag={info.local_tag}")])
    net.run(duration=2)
    assert dave.talks_to() == {"alice"} and alice.talks_to() == {"dave"}  # offer in the 200, answer in the ACK
    alice.bye(alice.dialogs[0])
    drained(net, pbxs)


def test_the_transferor_hanging_up_at_once_leaves_the_transferee_waiting_for_the_target() -> None:
    net, (pbx,), p = office(carol={"answer_after": 2.0})
    alice, bob, carol = p["alice"], p["bob"], p["carol"]
    call = connected(net, pbx, alice, "bob")
    bob.refer(bob.dialogs[0], "<sip:carol@pbx.example>")
    net.run(duration=0.2)
    bob.bye(bob.dialogs[0])  # many phones hang up right after the 202
    net.run(duration=0.5)
    assert call.state is CallState.ENDED and call.hangup_cause == "transferred" and alice.dialogs
    (new,) = pbx.calls.values()
    assert new.state is CallState.RINGING and new.snapshot()["state"] == "ringing"
    net.run(duration=3)
    assert alice.talks_to() == {"carol"} and carol.talks_to() == {"alice"}
    carol.bye(carol.dialogs[0])
    drained(net, [pbx])


def test_the_transferor_gone_and_the_target_busy_hangs_the_transferee_up() -> None:
    net, (pbx,), p = office(carol={"status": 486, "answer_after": 1.0})
    alice, bob = p["alice"], p["bob"]
    connected(net, pbx, alice, "bob")
    bob.refer(bob.dialogs[0], "<sip:carol@pbx.example>")
    net.run(duration=0.2)
    bob.bye(bob.dialogs[0])
    net.run(duration=3)
    assert alice.dialogs == [] and [e.reason for e in alice.ended()] == ["bye"]
    (failed,) = [c for c in pbx.ended_calls if isinstance(c, TransferCall)]
    assert failed.final_status == 486
    drained(net, [pbx])


def test_the_transferee_hanging_up_cancels_the_target() -> None:
    net, (pbx,), p = office(carol={"status": None})
    alice, bob, carol = p["alice"], p["bob"], p["carol"]
    call = connected(net, pbx, alice, "bob")
    bob.refer(bob.dialogs[0], "<sip:carol@pbx.example>")
    net.run(duration=0.5)
    alice.bye(alice.dialogs[0])
    net.run(duration=1)
    assert bob.dialogs == [] and call.hangup_side == "caller"
    assert carol.node.of(DialogEnded) and not carol.dialogs  # the ringing INVITE was cancelled
    (abandoned,) = [c for c in pbx.ended_calls if isinstance(c, TransferCall)]
    assert abandoned.hangup_cause == "transfer abandoned"
    assert call.extra["transfers"][0]["result"] == "abandoned"  # type: ignore[index]
    drained(net, [pbx])


def test_refer_sub_false_sends_no_notify() -> None:
    net, (pbx,), p = office()
    alice, bob, carol = p["alice"], p["bob"], p["carol"]
    connected(net, pbx, alice, "bob")
    bob.refer(bob.dialogs[0], "<sip:carol@pbx.example>", headers=[("Refer-Sub", "false"), ("Supported", "norefersub")])
    net.run(duration=3)
    (accepted,) = [r for r in responses(bob.node, "REFER")]
    assert accepted.status == 202 and accepted.headers.get("refer-sub") == "false"
    assert bob.notifies == [] and bob.dialogs == [] and alice.talks_to() == {"carol"}
    carol.bye(carol.dialogs[0])
    drained(net, [pbx])


def test_refers_the_b2bua_refuses() -> None:
    net, (pbx,), p = office(carol={"status": None})
    alice, bob = p["alice"], p["bob"]
    call = connected(net, pbx, alice, "bob")
    dialog = bob.dialogs[0]
    bob.node.act(lambda ua, now: ua.send_in_dialog(dialog, "REFER", now=now))  # no Refer-To
    bob.refer(dialog, "<sip:carol@elsewhere.example>")
    bob.refer(dialog, "<sip:carol@pbx.example;method=BYE>")
    bob.refer(dialog, "<mailto:carol@pbx.example>")
    net.run(duration=1)
    assert bob.finals("REFER") == [400, 403, 403, 403]
    bob.refer(dialog, "<tel:carol>")  # tel: names a number too
    net.run(duration=0.5)
    bob.refer(dialog, "<sip:dave@pbx.example>")
    net.run(duration=0.5)
    assert bob.finals("REFER")[4:] == [202, 491]  # one transfer at a time
    assert call.snapshot()["state"] == "transferring"
    bob.bye(dialog)
    net.run(duration=0.5)
    alice.bye(alice.dialogs[0])
    drained(net, [pbx])


def test_a_join_that_fails_leaves_both_calls_as_they_were() -> None:
    net, pbxs, p = office(workers=2, carol={"answer_reinvite": 488})
    alice, bob, carol = p["alice"], p["bob"], p["carol"]
    first, second = consult(net, pbxs, p, second_worker=1)
    b_first, b_second = bob.dialogs
    bob.refer(b_first, f"<sip:carol@pbx.example?Replaces={replaces_of(bob.node.ua.dialog(b_second))}>")
    net.run(duration=3)
    assert notifies(bob) == [(100, "active"), (488, "terminated")]
    assert first.state is CallState.ANSWERED and second.state is CallState.ANSWERED
    assert first.transfer is None and second.transfer is None and second.snapshot()["state"] == "answered"
    assert alice.talks_to() == {"bob"} and carol.talks_to() == {"bob"}
    carol.answer_reinvite = 200
    carol.hold(carol.dialogs[0])  # the consultation call works again: carol's re-INVITE reaches bob
    net.run(duration=1)
    assert bob.media[b_second] == "carol" and second.held == {"callee"}
    for phone in (alice, carol):
        phone.bye(phone.dialogs[0])
    drained(net, pbxs)


def test_glare_on_the_join_is_retried() -> None:
    net, (pbx,), p = office()
    alice, bob, carol = p["alice"], p["bob"], p["carol"]
    connected(net, pbx, alice, "bob")
    alice.answer_reinvite = 491
    net.at(net.now + 1.4, lambda: setattr(alice, "answer_reinvite", 200))
    bob.refer(bob.dialogs[0], "<sip:carol@pbx.example>")
    net.run(duration=5)
    assert alice.talks_to() == {"carol"} and carol.talks_to() == {"alice"}
    assert [s for s in responses(pbx.node, "INVITE") if s.status == 491]
    carol.bye(carol.dialogs[0])
    drained(net, [pbx])


def test_a_transferred_call_can_be_transferred_again() -> None:
    net, pbxs, p = office(workers=2)
    alice, bob, carol, dave = p["alice"], p["bob"], p["carol"], p["dave"]
    _first, _second = consult(net, pbxs, p, second_worker=1)
    b_first, b_second = bob.dialogs
    bob.refer(b_first, f"<sip:carol@pbx.example?Replaces={replaces_of(bob.node.ua.dialog(b_second))}>")
    net.run(duration=3)
    (joined,) = pbxs[0].calls.values()
    carol.refer(carol.dialogs[0], "<sip:dave@pbx.example>")  # carol's dialog is held by worker 1
    net.run(duration=3)
    assert notifies(carol) == [(100, "active"), (180, "active"), (200, "terminated")]
    assert alice.talks_to() == {"dave"} and dave.talks_to() == {"alice"} and carol.dialogs == []
    (again,) = pbxs[0].calls.values()
    assert again.linked_to == joined.call_uuid and joined.hangup_cause == "transferred"
    dave.bye(dave.dialogs[0])
    drained(net, pbxs)


def test_a_lost_worker_ends_the_calls_joined_across_it() -> None:
    net, pbxs, p = office(workers=2)
    alice, bob, carol = p["alice"], p["bob"], p["carol"]
    consult(net, pbxs, p, second_worker=1)
    b_first, b_second = bob.dialogs
    bob.refer(b_first, f"<sip:carol@pbx.example?Replaces={replaces_of(bob.node.ua.dialog(b_second))}>")
    net.run(duration=3)
    assert alice.talks_to() == {"carol"}
    pbxs[0].cluster.lose(1)  # worker 0 sees worker 1 die: alice's call ends
    net.run(duration=1)
    assert alice.dialogs == [] and not pbxs[0].calls
    pbxs[0].cluster.lose(0)  # and, had worker 1 survived worker 0, it hangs carol up
    net.run(duration=1)
    assert carol.dialogs == []
    drained(net, pbxs)


def test_a_remote_transferee_is_reconnected_through_its_worker() -> None:
    """After an attended transfer across workers alice transfers carol (whose dialog worker
    1 holds) to dave: the new leg and the join re-INVITE go through the remote dialog."""
    net, pbxs, p = office(workers=2)
    alice, bob, carol, dave = p["alice"], p["bob"], p["carol"], p["dave"]
    consult(net, pbxs, p, second_worker=1)
    b_first, b_second = bob.dialogs
    bob.refer(b_first, f"<sip:carol@pbx.example?Replaces={replaces_of(bob.node.ua.dialog(b_second))}>")
    net.run(duration=3)
    alice.refer(alice.dialogs[0], "<sip:dave@pbx.example>")
    net.run(duration=3)
    assert notifies(alice) == [(100, "active"), (180, "active"), (200, "terminated")]
    assert carol.talks_to() == {"dave"} and dave.talks_to() == {"carol"} and alice.dialogs == []
    dave.bye(dave.dialogs[0])
    drained(net, pbxs)


def test_an_operator_hanging_up_the_new_call_ends_only_the_transfer() -> None:
    net, (pbx,), p = office(carol={"status": None})
    alice, bob = p["alice"], p["bob"]
    call = connected(net, pbx, alice, "bob")
    bob.refer(bob.dialogs[0], "<sip:carol@pbx.example>")
    net.run(duration=1)
    (new,) = [c for c in pbx.calls.values() if c is not call]
    net.at(net.now, lambda: new.hangup("admin"))
    net.run(duration=1)
    assert notifies(bob) == [(100, "active"), (180, "active"), (480, "terminated")]
    assert call.state is CallState.ANSWERED and alice.talks_to() == {"bob"}
    assert new.hangup_cause == "admin" and new.state is CallState.ENDED
    assert pbx.transfers.counters["blind_failed"] == 1
    alice.bye(alice.dialogs[0])
    drained(net, [pbx])


def test_the_caller_may_transfer_too() -> None:
    net, (pbx,), p = office()
    alice, bob, carol = p["alice"], p["bob"], p["carol"]
    call = connected(net, pbx, alice, "bob")
    alice.refer(alice.dialogs[0], "<sip:carol@pbx.example>")
    net.run(duration=3)
    assert notifies(alice) == [(100, "active"), (180, "active"), (200, "terminated")]
    assert bob.talks_to() == {"carol"} and carol.talks_to() == {"bob"} and alice.dialogs == []
    assert call.hangup_side == "caller" and call.hangup_cause == "transferred"
    (new,) = pbx.calls.values()
    assert (new.caller, new.callee, new.user) == ("bob", "carol", "alice")
    assert carol.invites[0].headers.get("referred-by") == f"<sip:alice@{pbx.node.host}>"  # none in the REFER
    carol.bye(carol.dialogs[0])
    drained(net, [pbx])
