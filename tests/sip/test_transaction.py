"""Transaction layer state machines driven by a fake clock (plain floats, no sleeping)."""

from __future__ import annotations

import pytest

from vivait_sip.sip.message import Request, Response, make_response, parse_message
from vivait_sip.sip.peer import Peer
from vivait_sip.sip.transaction import (
    AckReceived,
    CancelReceived,
    Event,
    InviteClientTransaction,
    InviteServerTransaction,
    Overloaded,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    State,
    StrayResponse,
    TimerConfig,
    TransactionLayer,
    TransactionTableFull,
    TransactionTerminated,
    TransactionTimeout,
    TransportError,
    build_cancel,
    push_via,
    too_many_hops,
)

UDP = Peer("udp", "192.0.2.10", 5060)
TCP = Peer("tcp", "192.0.2.10", 5060, conn_id=7)
BRANCH = "z9hG4bK74bf9"


def request(
    method: str = "INVITE",
    *,
    branch: str | None = BRANCH,
    cseq: int = 1,
    to_tag: str | None = None,
    max_forwards: int = 70,
    via_host: str = "pc33.atlanta.com",
) -> Request:
    via = f"SIP/2.0/UDP {via_host}" + (f";branch={branch}" if branch else "")
    to = "Bob <sip:bob@biloxi.com>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} sip:bob@biloxi.com SIP/2.0\r\n"
        f"Via: {via}\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        f"To: {to}\r\n"
        "From: Alice <sip:alice@atlanta.com>;tag=9fxced76sl\r\n"
        "Call-ID: 3848276298220188511@atlanta.com\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Route: <sip:p1.example.com;lr>\r\n"
        "Contact: <sip:alice@pc33.atlanta.com>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def outgoing_request(method: str = "INVITE") -> Request:
    """A request as the TU builds it: no Via yet."""
    req = request(method)
    req.headers.remove("via")
    push_via(req, "10.0.0.1", 5060, "udp", branch=f"z9hG4bKout{method}")
    return req


def reparse(resp: Response) -> Response:
    msg = parse_message(resp.to_bytes())
    assert isinstance(msg, Response)
    return msg


def drain(layer: TransactionLayer) -> list[Event]:
    events: list[Event] = []
    while (event := layer.next_event()) is not None:
        events.append(event)
    return events


def run_until(layer: TransactionLayer, end: float) -> list[tuple[float, SendMessage]]:
    """Jump from deadline to deadline up to `end`, collecting what was sent and when."""
    sent: list[tuple[float, SendMessage]] = []
    while (deadline := layer.next_deadline()) is not None and deadline <= end:
        layer.handle_timers(deadline)
        sent += [(deadline, m) for m in layer.messages_to_send()]
    return sent


# ---- client transactions ------------------------------------------------------------------


def test_invite_client_retransmits_with_doubling_until_timer_b() -> None:
    layer = TransactionLayer()
    req = outgoing_request()
    tx = layer.send_request(req, UDP, 0.0)
    first = layer.messages_to_send()
    assert [(m.data, m.peer, m.tx_id) for m in first] == [(req.to_bytes(), UDP, tx.id)]

    sent = run_until(layer, 100.0)
    times = [t for t, _ in sent]
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(m.data == first[0].data for _, m in sent)
    events = drain(layer)
    assert events == [TransactionTimeout(tx), TransactionTerminated(tx)]
    assert tx.state is State.TERMINATED
    assert len(layer) == 0
    assert layer.next_deadline() is None


def test_timer_b_fires_at_64_t1_with_custom_config() -> None:
    layer = TransactionLayer(TimerConfig.from_ms(t1_ms=100, t2_ms=1000, t4_ms=1000))
    tx = layer.send_request(outgoing_request(), UDP, 10.0)
    layer.handle_timers(16.39)
    assert tx.state is State.CALLING
    layer.handle_timers(16.4)
    assert tx.state is State.TERMINATED
    assert TransactionTimeout(tx) in drain(layer)


def test_invite_client_over_reliable_transport_does_not_retransmit() -> None:
    layer = TransactionLayer()
    tx = layer.send_request(outgoing_request(), TCP, 0.0)
    assert len(layer.messages_to_send()) == 1
    assert layer.next_deadline() == 32.0
    assert run_until(layer, 100.0) == []
    assert drain(layer) == [TransactionTimeout(tx), TransactionTerminated(tx)]


def test_invite_client_provisional_stops_retransmission_and_timer_b() -> None:
    layer = TransactionLayer()
    req = outgoing_request()
    tx = layer.send_request(req, UDP, 0.0)
    layer.messages_to_send()
    ringing = reparse(make_response(req, 180, to_tag="b1"))
    layer.receive_response(ringing, UDP, 0.2)
    assert tx.state is State.PROCEEDING
    assert drain(layer) == [ResponseReceived(tx, ringing)]
    assert run_until(layer, 1000.0) == []
    assert tx.state is State.PROCEEDING


def test_invite_client_non_2xx_builds_ack_and_absorbs_retransmissions() -> None:
    layer = TransactionLayer()
    req = outgoing_request()
    tx = layer.send_request(req, UDP, 0.0)
    layer.messages_to_send()
    busy = reparse(make_response(req, 486, to_tag="xyz"))
    layer.receive_response(busy, UDP, 0.1)
    assert tx.state is State.COMPLETED
    assert drain(layer) == [ResponseReceived(tx, busy)]
    [ack_msg] = layer.messages_to_send()
    ack = parse_message(ack_msg.data)
    assert isinstance(ack, Request)
    assert ack.method == "ACK"
    assert ack.uri_text == req.uri_text
    assert [str(v) for v in ack.vias] == [str(req.top_via)]
    assert ack.top_via.branch == "z9hG4bKoutINVITE"
    assert ack.to.tag == "xyz"
    assert ack.from_.tag == "9fxced76sl"
    assert (ack.cseq.number, ack.cseq.method) == (1, "ACK")
    assert ack.call_id == req.call_id
    assert ack.headers.get_all("route") == ["<sip:p1.example.com;lr>"]

    layer.receive_response(busy, UDP, 1.0)  # retransmitted 486: ACK again, TU not told
    assert [m.data for m in layer.messages_to_send()] == [ack_msg.data]
    assert drain(layer) == []
    assert layer.next_deadline() == pytest.approx(32.1)
    layer.handle_timers(32.1)
    assert drain(layer) == [TransactionTerminated(tx)]


def test_invite_client_non_2xx_over_tcp_terminates_at_once() -> None:
    layer = TransactionLayer()
    req = outgoing_request()
    tx = layer.send_request(req, TCP, 0.0)
    layer.receive_response(reparse(make_response(req, 404, to_tag="x")), TCP, 0.1)
    assert tx.state is State.TERMINATED
    assert [type(e) for e in drain(layer)] == [ResponseReceived, TransactionTerminated]


def test_invite_client_accepted_passes_2xx_retransmissions_until_timer_m() -> None:
    layer = TransactionLayer()
    req = outgoing_request()
    tx = layer.send_request(req, UDP, 0.0)
    layer.messages_to_send()
    ok = reparse(make_response(req, 200, to_tag="b2"))
    layer.receive_response(ok, UDP, 1.0)
    assert tx.state is State.ACCEPTED
    assert layer.messages_to_send() == []  # the ACK for 2xx is the TU's
    layer.receive_response(ok, UDP, 2.0)
    forked = reparse(make_response(req, 200, to_tag="other-branch"))
    layer.receive_response(forked, UDP, 3.0)
    layer.receive_response(reparse(make_response(req, 180, to_tag="b2")), UDP, 3.5)
    assert drain(layer) == [
        ResponseReceived(tx, ok),
        ResponseReceived(tx, ok),
        ResponseReceived(tx, forked),
    ]
    assert run_until(layer, 100.0) == []  # no more INVITE retransmissions after the 2xx
    assert drain(layer) == [TransactionTerminated(tx)]
    layer.receive_response(ok, UDP, 40.0)  # after Timer M (1 + 32 s): stray
    assert drain(layer) == [StrayResponse(ok, UDP)]


def test_non_invite_client_timer_e_caps_at_t2_then_timer_f() -> None:
    layer = TransactionLayer()
    tx = layer.send_request(outgoing_request("OPTIONS"), UDP, 0.0)
    layer.messages_to_send()
    times = [t for t, _ in run_until(layer, 100.0)]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert drain(layer) == [TransactionTimeout(tx), TransactionTerminated(tx)]


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    layer = TransactionLayer()
    req = outgoing_request("REGISTER")
    tx = layer.send_request(req, UDP, 0.0)
    layer.messages_to_send()
    layer.handle_timers(0.5)
    assert len(layer.messages_to_send()) == 1
    layer.receive_response(reparse(make_response(req, 100)), UDP, 0.6)
    assert tx.state is State.PROCEEDING
    times = [t for t, _ in run_until(layer, 10.0)]
    assert times == [1.5, 5.5, 9.5]  # the armed 2*T1 timer, then T2 each


def test_non_invite_client_final_then_timer_k() -> None:
    layer = TransactionLayer()
    req = outgoing_request("BYE")
    tx = layer.send_request(req, UDP, 0.0)
    ok = reparse(make_response(req, 200, to_tag="t"))
    layer.receive_response(ok, UDP, 0.2)
    layer.receive_response(ok, UDP, 0.3)  # retransmission absorbed in Completed
    assert drain(layer) == [ResponseReceived(tx, ok)]
    assert layer.next_deadline() == pytest.approx(5.2)
    layer.messages_to_send()
    assert run_until(layer, 10.0) == []
    assert drain(layer) == [TransactionTerminated(tx)]


def test_non_invite_client_reliable_completes_immediately() -> None:
    layer = TransactionLayer()
    req = outgoing_request("BYE")
    tx = layer.send_request(req, TCP, 0.0)
    layer.receive_response(reparse(make_response(req, 200)), TCP, 0.1)
    assert tx.state is State.TERMINATED


def test_send_request_rejects_missing_branch_ack_and_duplicate() -> None:
    layer = TransactionLayer()
    with pytest.raises(ValueError, match="branch"):
        layer.send_request(request(branch="old2543"), UDP, 0.0)
    with pytest.raises(ValueError, match="ACK"):
        layer.send_request(request("ACK"), UDP, 0.0)
    layer.send_request(request(), UDP, 0.0)
    with pytest.raises(ValueError, match="already in use"):
        layer.send_request(request(), UDP, 0.0)


def test_cancel_is_its_own_client_transaction() -> None:
    layer = TransactionLayer()
    invite = outgoing_request()
    invite_tx = layer.send_request(invite, UDP, 0.0)
    cancel = build_cancel(invite)
    assert cancel.top_via.branch == invite.top_via.branch
    assert (cancel.cseq.number, cancel.cseq.method) == (1, "CANCEL")
    assert cancel.to.tag is None
    cancel_tx = layer.send_request(cancel, UDP, 0.1)
    ok = reparse(make_response(cancel, 200, to_tag="c"))
    layer.receive_response(ok, UDP, 0.2)
    assert cancel_tx.state is State.COMPLETED
    assert invite_tx.state is State.CALLING


def test_transport_failure_terminates_with_event() -> None:
    layer = TransactionLayer()
    tx = layer.send_request(outgoing_request(), TCP, 0.0)
    [msg] = layer.messages_to_send()
    assert msg.tx_id is not None
    layer.transport_failed(msg.tx_id, 0.1)
    layer.transport_failed(msg.tx_id, 0.2)  # already gone: ignored
    assert drain(layer) == [TransportError(tx), TransactionTerminated(tx)]
    assert layer.next_deadline() is None


# ---- server transactions ------------------------------------------------------------------


def receive_new(layer: TransactionLayer, req: Request, peer: Peer = UDP) -> RequestReceived:
    layer.receive_request(req, peer, 0.0)
    [event] = drain(layer)
    assert isinstance(event, RequestReceived)
    return event


def test_non_invite_server_absorbs_retransmissions_and_resends_final_until_timer_j() -> None:
    layer = TransactionLayer()
    req = request("OPTIONS")
    event = receive_new(layer, req)
    tx = event.tx
    assert event.peer == UDP and event.request is req
    layer.receive_request(request("OPTIONS"), UDP, 0.4)  # Trying: absorbed silently
    assert layer.messages_to_send() == [] and drain(layer) == []

    assert layer.send_response(tx.id, make_response(req, 200, to_tag="s"), 1.0)
    [final] = layer.messages_to_send()
    assert final.peer == UDP
    assert tx.state is State.COMPLETED
    assert not layer.send_response(tx, make_response(req, 500), 1.1)  # second final discarded
    layer.receive_request(request("OPTIONS"), UDP, 2.0)
    assert [m.data for m in layer.messages_to_send()] == [final.data]
    assert drain(layer) == []
    assert layer.next_deadline() == 33.0
    layer.handle_timers(33.0)
    assert drain(layer) == [TransactionTerminated(tx)]
    layer.receive_request(request("OPTIONS"), UDP, 34.0)  # after J: a new transaction
    assert isinstance(layer.next_event(), RequestReceived)


def test_non_invite_server_resends_last_provisional_in_proceeding() -> None:
    layer = TransactionLayer()
    req = request("SUBSCRIBE")
    tx = receive_new(layer, req).tx
    layer.send_response(tx, make_response(req, 183, to_tag="s"), 0.1)
    [prov] = layer.messages_to_send()
    layer.receive_request(request("SUBSCRIBE"), UDP, 0.5)
    assert layer.messages_to_send() == [prov]


def test_non_invite_server_over_tcp_terminates_after_final() -> None:
    layer = TransactionLayer()
    req = request("OPTIONS")
    tx = receive_new(layer, req, TCP).tx
    layer.send_response(tx, make_response(req, 200), 0.1)
    assert [m.peer for m in layer.messages_to_send()] == [TCP]
    assert drain(layer) == [TransactionTerminated(tx)]


def test_invite_server_sends_100_at_once_and_resends_last_provisional() -> None:
    layer = TransactionLayer()
    req = request()
    tx = receive_new(layer, req).tx
    assert isinstance(tx, InviteServerTransaction)
    [trying] = layer.messages_to_send()
    assert trying.data.startswith(b"SIP/2.0 100 Trying\r\n")
    layer.receive_request(request(), UDP, 0.5)
    assert layer.messages_to_send() == [trying]
    layer.send_response(tx, make_response(req, 180, to_tag="s"), 1.0)
    [ringing] = layer.messages_to_send()
    layer.receive_request(request(), UDP, 1.5)
    assert layer.messages_to_send() == [ringing]
    assert drain(layer) == []


def test_invite_server_timer_g_then_ack_confirms_and_timer_i_ends() -> None:
    layer = TransactionLayer()
    req = request()
    tx = receive_new(layer, req).tx
    layer.messages_to_send()
    layer.send_response(tx, make_response(req, 486, to_tag="s"), 0.0)
    [final] = layer.messages_to_send()
    assert tx.state is State.COMPLETED
    sent = run_until(layer, 8.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5]
    assert all(m.data == final.data for _, m in sent)
    layer.receive_request(request(), UDP, 8.0)  # INVITE retransmission: final again
    assert layer.messages_to_send() == [final]

    layer.receive_request(request("ACK", to_tag="s"), UDP, 9.0)
    assert tx.state is State.CONFIRMED
    assert drain(layer) == []  # the ACK was absorbed
    layer.receive_request(request("ACK", to_tag="s"), UDP, 9.5)
    assert drain(layer) == []
    assert run_until(layer, 13.9) == []
    assert tx.state is State.CONFIRMED
    layer.handle_timers(14.0)  # Timer I = T4
    assert drain(layer) == [TransactionTerminated(tx)]


def test_invite_server_timer_h_without_ack() -> None:
    layer = TransactionLayer()
    req = request()
    tx = receive_new(layer, req).tx
    layer.send_response(tx, make_response(req, 603, to_tag="s"), 0.0)
    layer.messages_to_send()
    times = [t for t, _ in run_until(layer, 100.0)]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert drain(layer) == [TransactionTimeout(tx), TransactionTerminated(tx)]


def test_invite_server_over_tcp_no_timer_g_and_ack_terminates() -> None:
    layer = TransactionLayer()
    req = request()
    tx = receive_new(layer, req, TCP).tx
    layer.send_response(tx, make_response(req, 486, to_tag="s"), 0.0)
    assert layer.next_deadline() == 32.0  # only Timer H
    layer.receive_request(request("ACK", to_tag="s"), TCP, 1.0)
    assert drain(layer) == [TransactionTerminated(tx)]


def test_invite_server_2xx_accepted_absorbs_invite_passes_ack_until_timer_l() -> None:
    layer = TransactionLayer()
    req = request()
    tx = receive_new(layer, req).tx
    layer.messages_to_send()
    ok = make_response(req, 200, to_tag="s")
    layer.send_response(tx, ok, 1.0)
    assert tx.state is State.ACCEPTED
    [first] = layer.messages_to_send()
    layer.receive_request(request(), UDP, 1.5)  # INVITE retransmission absorbed
    assert layer.messages_to_send() == [] and drain(layer) == []
    assert layer.send_response(tx, ok, 1.5)  # the UAS core's 2xx retransmission
    assert layer.messages_to_send() == [first]

    same_branch_ack = request("ACK", to_tag="s")
    layer.receive_request(same_branch_ack, UDP, 2.0)
    new_branch_ack = request("ACK", to_tag="s", branch="z9hG4bKack2")
    layer.receive_request(new_branch_ack, UDP, 2.1)
    assert drain(layer) == [AckReceived(same_branch_ack, UDP), AckReceived(new_branch_ack, UDP)]
    assert tx.state is State.ACCEPTED
    assert run_until(layer, 32.9) == []
    layer.handle_timers(33.0)  # Timer L
    assert drain(layer) == [TransactionTerminated(tx)]


def test_cancel_matches_invite_server_transaction() -> None:
    layer = TransactionLayer()
    invite_tx = receive_new(layer, request()).tx
    cancel = request("CANCEL")
    layer.receive_request(cancel, UDP, 1.0)
    [event] = drain(layer)
    assert isinstance(event, CancelReceived)
    assert event.invite_tx is invite_tx and event.request is cancel
    assert event.tx is not invite_tx and event.tx.method == "CANCEL"
    layer.receive_request(request("CANCEL"), UDP, 1.1)  # retransmitted CANCEL absorbed
    assert drain(layer) == []


def test_cancel_without_invite_targets_nothing() -> None:
    layer = TransactionLayer()
    layer.receive_request(request("CANCEL", branch="z9hG4bKunknown"), UDP, 0.0)
    [event] = drain(layer)
    assert isinstance(event, CancelReceived) and event.invite_tx is None


def test_different_sent_by_is_a_different_transaction() -> None:
    layer = TransactionLayer()
    receive_new(layer, request())
    layer.receive_request(request(via_host="evil.example.com"), UDP, 0.1)
    assert isinstance(layer.next_event(), RequestReceived)
    assert len(layer) == 2


def test_rfc2543_fallback_matching() -> None:
    layer = TransactionLayer()
    req = request(branch=None)
    tx = receive_new(layer, req).tx
    layer.messages_to_send()
    layer.receive_request(request(branch=None), UDP, 0.5)
    assert len(layer.messages_to_send()) == 1  # the 100 again, no new transaction
    assert len(layer) == 1

    layer.receive_request(request(branch=None, cseq=2), UDP, 0.6)  # another CSeq: new
    assert isinstance(layer.next_event(), RequestReceived)

    layer.receive_request(request("CANCEL", branch=None), UDP, 0.7)
    cancel_event = layer.next_event()
    assert isinstance(cancel_event, CancelReceived) and cancel_event.invite_tx is tx

    layer.send_response(tx, make_response(req, 486, to_tag="s"), 1.0)
    wrong = request("ACK", branch=None, to_tag="other")
    layer.receive_request(wrong, UDP, 1.1)  # To tag differs from our response's
    assert drain(layer) == [AckReceived(wrong, UDP)]
    layer.receive_request(request("ACK", branch=None, to_tag="s"), UDP, 1.2)
    assert tx.state is State.CONFIRMED


def test_shedding_refuses_new_calls_but_not_what_ends_or_keeps_up_admitted_ones() -> None:
    layer = TransactionLayer()
    layer.refuse_new = True  # the core sheds load: its event loop lags
    invite = request("INVITE", branch="z9hG4bKs1")
    options = request("OPTIONS", branch="z9hG4bKs2")
    for refused in (invite, options):
        layer.receive_request(refused, UDP, 0.0)
        assert drain(layer) == [Overloaded(refused, UDP)]
    # a BYE, a re-INVITE or an INFO in a dialog, and a CANCEL, still get their transaction
    receive_new(layer, request("BYE", branch="z9hG4bKs3", to_tag="b1", cseq=2))
    receive_new(layer, request("INVITE", branch="z9hG4bKs4", to_tag="b1", cseq=3))
    receive_new(layer, request("INFO", branch="z9hG4bKs5", to_tag="b1", cseq=4))
    layer.receive_request(request("CANCEL", branch="z9hG4bKs6"), UDP, 0.0)
    assert [type(e) for e in drain(layer)] == [CancelReceived]
    layer.refuse_new = False
    receive_new(layer, request("INVITE", branch="z9hG4bKs7"))


def test_overload_limit() -> None:
    layer = TransactionLayer(max_transactions=2)
    receive_new(layer, request("OPTIONS", branch="z9hG4bK1"))
    receive_new(layer, request("OPTIONS", branch="z9hG4bK2"))
    third = request("OPTIONS", branch="z9hG4bK3")
    layer.receive_request(third, UDP, 0.0)
    assert drain(layer) == [Overloaded(third, UDP)]
    layer.receive_request(request("OPTIONS", branch="z9hG4bK1"), UDP, 0.0)  # retransmission ok
    ack = request("ACK", branch="z9hG4bK4")
    layer.receive_request(ack, UDP, 0.0)  # ACK never needs a transaction
    assert drain(layer) == [AckReceived(ack, UDP)]
    with pytest.raises(TransactionTableFull):
        layer.send_request(outgoing_request(), UDP, 0.0)
    reply = make_response(third, 503, headers=[("Retry-After", "5")])
    layer.send_stateless(reply, UDP)
    assert layer.messages_to_send() == [SendMessage(reply.to_bytes(), UDP)]


def test_send_response_by_unknown_or_client_id() -> None:
    layer = TransactionLayer()
    assert not layer.send_response(12345, make_response(request(), 200), 0.0)
    client = layer.send_request(outgoing_request(), UDP, 0.0)
    assert isinstance(client, InviteClientTransaction)
    with pytest.raises(TypeError):
        layer.send_response(client.id, make_response(request(), 200), 0.0)


def test_too_many_hops() -> None:
    assert too_many_hops(request("INVITE", max_forwards=0))
    assert not too_many_hops(request("OPTIONS", max_forwards=0))
    assert not too_many_hops(request("INVITE", max_forwards=1))


def test_many_transactions_are_cheap() -> None:
    layer = TransactionLayer()
    for i in range(2000):
        req = request("OPTIONS", branch=f"z9hG4bK{i}")
        layer.receive_request(req, UDP, 0.0)
        event = layer.next_event()
        assert isinstance(event, RequestReceived)
        layer.send_response(event.tx, make_response(req, 200), 0.0)
    assert len(layer) == 2000
    layer.handle_timers(32.0)
    assert len(layer) == 0
    assert layer.next_deadline() is None


def test_completed_udp_transactions_do_not_fill_the_table() -> None:
    """At thousands of REGISTERs a second most transactions only wait out Timer J; they
    must not make new requests look like an overload."""
    layer = TransactionLayer(max_transactions=2, max_lingering=100)
    for n in range(10):
        req = request("REGISTER", branch=f"z9hG4bKdone{n}")
        tx = receive_new(layer, req).tx
        assert layer.send_response(tx, make_response(req, 200, to_tag="s"), 0.0)
    layer.messages_to_send()
    assert (layer.active, layer.lingering, len(layer)) == (0, 10, 10)
    # Two live ones fill the table; the third is refused.
    live = [receive_new(layer, request("REGISTER", branch=f"z9hG4bKlive{n}")) for n in range(2)]
    layer.receive_request(request("REGISTER", branch="z9hG4bKthird"), UDP, 0.0)
    assert [type(e) for e in drain(layer)] == [Overloaded]
    assert layer.active == 2 and live[0].tx.state is State.TRYING


def test_past_max_lingering_the_oldest_completed_transaction_ends_early() -> None:
    layer = TransactionLayer(max_lingering=3)
    finals = []
    for n in range(4):
        req = request("REGISTER", branch=f"z9hG4bKold{n}")
        tx = receive_new(layer, req).tx
        layer.send_response(tx, make_response(req, 200, to_tag=f"t{n}"), float(n))
        [final] = layer.messages_to_send()
        finals.append(final.data)
    events = drain(layer)
    assert [type(e) for e in events] == [TransactionTerminated]  # the first, evicted
    assert layer.lingering == 3
    # A retransmission of the newest is still absorbed with its final response...
    layer.receive_request(request("REGISTER", branch="z9hG4bKold3"), UDP, 5.0)
    assert [m.data for m in layer.messages_to_send()] == [finals[3]]
    # ...one of the evicted is a new request again.
    layer.receive_request(request("REGISTER", branch="z9hG4bKold0"), UDP, 5.0)
    assert isinstance(layer.next_event(), RequestReceived)


# ---- hooks for the UA layer -----------------------------------------------------------------


def test_terminate_gives_up_an_invite_client_transaction_in_proceeding() -> None:
    """Proceeding has no timer of its own: the UA ends it when a CANCEL went unanswered."""
    layer = TransactionLayer()
    tx = layer.send_request(outgoing_request(), UDP, 0.0)
    layer.receive_response(reparse(make_response(tx.request, 180, to_tag="t")), UDP, 0.1)
    drain(layer)
    assert tx.state is State.PROCEEDING and layer.next_deadline() is None
    layer.terminate(tx.id)
    assert drain(layer) == [TransactionTerminated(tx)]
    assert len(layer) == 0 and layer.get(tx.id) is None
    layer.terminate(tx.id)  # already gone: nothing
    assert drain(layer) == []


def test_send_bytes_queues_them_as_they_are_with_the_transaction_to_blame() -> None:
    layer = TransactionLayer()
    layer.send_bytes(b"SIP/2.0 200 OK\r\n\r\n", UDP, 7)
    layer.send_bytes(b"ACK", TCP)
    assert [(m.data, m.peer, m.tx_id) for m in layer.messages_to_send()] == [
        (b"SIP/2.0 200 OK\r\n\r\n", UDP, 7),
        (b"ACK", TCP, None),
    ]
