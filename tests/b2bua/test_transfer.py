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
from vivait_sip.sip.ua import DialogEnded, RequestReceived


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
