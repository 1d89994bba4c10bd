"""UserAgent: the implicit subscription of an in-dialog REFER (RFC 3515) lives in the
INVITE dialog: the REFER reaches the TU with its dialog, NOTIFYs go with `send_in_dialog`,
and a 481 to a NOTIFY ends the subscription only, never the call (RFC 5057 §5.1).
`DialogInfo.local_sdp` is the last session description we sent in a dialog."""

from __future__ import annotations

from ua_harness import SDP, SDP_ANSWER, SDP_OFFER, Callee, Net, Node

from vivait_sip.sip.ua import DialogEnded, RequestReceived, ResponseReceived, UaEvent

SIPFRAG = [("Content-Type", "message/sipfrag;version=2.0")]


def established(net: Net) -> tuple[Node, Node, int, int]:
    alice = net.add("alice")
    bob = net.add("bob")
    callee = Callee(bob, answer_in_dialog=False)
    alice.invite(bob)
    net.run(duration=3)
    return alice, bob, alice.of(ResponseReceived)[-1].dialog_id, callee.dialogs[0]


def test_refer_in_a_dialog_is_the_tus_and_its_notifies_travel_in_that_dialog() -> None:
    net = Net()
    alice, bob, a_dialog, b_dialog = established(net)
    statuses: dict[str, int] = {"REFER": 202, "NOTIFY": 200}

    def answer(node: Node, event: UaEvent) -> None:
        if isinstance(event, RequestReceived) and event.request.method in statuses:
            node.ua.respond(event.request_id, statuses[event.request.method], now=node.net.now)

    alice.handler = answer
    bob.handler = answer
    refer_id = alice.act(lambda ua, now: ua.send_in_dialog(
        a_dialog, "REFER", headers=[("Refer-To", "<sip:carol@example.com>"), ("Referred-By", "<sip:alice@example.com>")],
        now=now))
    net.run(duration=1)
    (refer,) = [e for e in bob.of(RequestReceived) if e.request.method == "REFER"]
    assert refer.dialog_id == b_dialog and refer.request.headers.get("refer-to") == "<sip:carol@example.com>"
    assert [e.response.status for e in alice.of(ResponseReceived) if e.request_id == refer_id] == [202]
    for body, state in ((b"SIP/2.0 100 Trying\r\n", "active;expires=60"),
                        (b"SIP/2.0 200 OK\r\n", "terminated;reason=noresubscription")):
        bob.act(lambda ua, now, b=body, s=state: ua.send_in_dialog(
            b_dialog, "NOTIFY", headers=[("Event", f"refer;id={refer.request.cseq.number}"),
                                         ("Subscription-State", s), *SIPFRAG], body=b, now=now))
        net.run(duration=1)
    notifies = [e for e in alice.of(RequestReceived) if e.request.method == "NOTIFY"]
    assert [n.dialog_id for n in notifies] == [a_dialog, a_dialog]
    assert [n.request.body for n in notifies] == [b"SIP/2.0 100 Trying\r\n", b"SIP/2.0 200 OK\r\n"]
    assert notifies[0].request.headers.get("event") == "refer;id=2"
    assert notifies[1].request.cseq.number > notifies[0].request.cseq.number
    assert notifies[0].request.headers.get("contact")  # NOTIFY is a target refresh request
    assert [e.response.status for e in bob.of(ResponseReceived) if e.response.cseq.method == "NOTIFY"] == [200, 200]
    alice.act(lambda ua, now: ua.bye(a_dialog, now))
    net.run()
    net.assert_idle()


def test_a_481_to_a_notify_ends_the_subscription_not_the_call() -> None:
    net = Net()
    alice, bob, _a_dialog, b_dialog = established(net)

    def no_subscription(node: Node, event: UaEvent) -> None:
        if isinstance(event, RequestReceived):
            notify = event.request.method == "NOTIFY"
            node.ua.respond(event.request_id, 481 if notify else 200, now=node.net.now)

    alice.handler = no_subscription
    bob.act(lambda ua, now: ua.send_in_dialog(
        b_dialog, "NOTIFY", headers=[("Event", "refer"), ("Subscription-State", "terminated"), *SIPFRAG],
        body=b"SIP/2.0 200 OK\r\n", now=now))
    net.run(duration=1)
    assert [e.response.status for e in bob.of(ResponseReceived) if e.response.cseq.method == "NOTIFY"] == [481]
    assert not bob.of(DialogEnded) and bob.ua.dialog(b_dialog) is not None
    info_id = bob.act(lambda ua, now: ua.send_in_dialog(b_dialog, "INFO", now=now))  # the call goes on
    net.run(duration=1)
    assert [e.response.status for e in bob.of(ResponseReceived) if e.request_id == info_id] == [200]
    bob.act(lambda ua, now: ua.bye(b_dialog, now))
    net.run()
    assert [e.reason for e in bob.of(DialogEnded)] == ["bye_sent"]
    net.assert_idle()


def test_dialog_info_shows_the_last_sdp_we_sent() -> None:
    net = Net()
    alice, bob, a_dialog, b_dialog = established(net)
    assert alice.ua.dialog(a_dialog).local_sdp == SDP_OFFER  # type: ignore[union-attr]
    assert bob.ua.dialog(b_dialog).local_sdp == SDP_ANSWER  # type: ignore[union-attr]
    held = SDP_OFFER.replace(b"t=0 0\r\n", b"t=0 0\r\na=sendonly\r\n")

    def answer(node: Node, event: UaEvent) -> None:
        if isinstance(event, RequestReceived) and event.request.method == "INVITE":
            node.ua.respond(event.request_id, 200, headers=SDP, body=SDP_ANSWER, now=node.net.now)

    bob.handler = answer
    alice.act(lambda ua, now: ua.send_in_dialog(a_dialog, "INVITE", headers=SDP, body=held, now=now))
    net.run(duration=1)
    assert alice.ua.dialog(a_dialog).local_sdp == held  # type: ignore[union-attr]
    alice.act(lambda ua, now: ua.bye(a_dialog, now))
    net.run()
    net.assert_idle()
