"""The relay as a pure state machine: datagrams and times in, datagrams and events out."""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rtputil import parse_rtp, party_sdp, receiver_report, rtp, sender_report

from vivait_sip.media.audio import g711
from vivait_sip.media.audio.dtmf import DtmfDetector, encode_event
from vivait_sip.media.relay import (
    DtmfDetected,
    MediaError,
    PlayDone,
    PortPool,
    PortsExhausted,
    Relay,
    RtpTimeout,
)
from vivait_sip.sip.sdp import parse_sdp

US = "192.0.2.1"
A_ADDR = ("198.51.100.10", 4000)
B_ADDR = ("198.51.100.20", 5000)
C_ADDR = ("198.51.100.30", 6000)


def make_relay(pairs: int = 50, **kwargs: float) -> Relay:
    return Relay(US, PortPool(30000, 30000 + 2 * pairs), **kwargs)


def call(relay: Relay, call_id: str = "c1", *, a_sdp: str | None = None, b_sdp: str | None = None, now: float = 0.0) -> tuple[int, int]:
    """Offer from A (tag a), answer from B (tag b); returns (port facing A, port facing B)."""
    to_b = relay.offer(call_id, "a", a_sdp or party_sdp(*A_ADDR), now)
    to_a = relay.answer(call_id, "a", "b", b_sdp or party_sdp(*B_ADDR), now)
    return parse_sdp(to_a).media[0].port, parse_sdp(to_b).media[0].port


# ---- SDP --------------------------------------------------------------------------------------


def test_offer_and_answer_point_each_party_at_its_own_port_of_ours() -> None:
    relay = make_relay()
    to_b = parse_sdp(relay.offer("c1", "a", party_sdp(*A_ADDR, ice=True, rtcp_port=4001), 0.0))
    to_a = parse_sdp(relay.answer("c1", "a", "b", party_sdp(*B_ADDR), 0.0))
    assert to_b.connection is not None and to_b.connection.address == US
    assert to_b.origin.address == US
    assert to_a.connection is not None and to_a.connection.address == US
    port_b, port_a = to_b.media[0].port, to_a.media[0].port
    assert port_a != port_b and port_a % 2 == 0 and port_b % 2 == 0
    assert 30000 <= port_a < 30100
    media = to_b.media[0]
    assert media.formats == ["0", "8", "101"]
    assert media.attribute("rtcp") == f"{port_b + 1} IN IP4 {US}"
    assert not media.has_attribute("candidate") and not media.has_attribute("ice-ufrag")
    assert relay.status()["ports_in_use"] == 4


def test_a_bad_sdp_is_a_clear_error_and_creates_nothing() -> None:
    relay = make_relay()
    with pytest.raises(MediaError) as info:
        relay.offer("c1", "a", "this is not sdp", 0.0)
    assert info.value.code == "bad_sdp"
    assert relay.sessions == {} and relay.status()["ports_in_use"] == 0
    with pytest.raises(MediaError) as info:
        relay.answer("nope", "a", "b", party_sdp(*B_ADDR), 0.0)
    assert info.value.code == "not_found"


# ---- forwarding, symmetric RTP, latching -----------------------------------------------------


def test_rtp_is_forwarded_untouched_from_the_port_facing_the_receiver() -> None:
    relay = make_relay()
    port_a, port_b = call(relay)
    packet = rtp(1, 160, 0x1111)
    out = relay.receive(port_a, packet, A_ADDR, 0.02)
    assert out == (port_b, packet, B_ADDR)
    back = rtp(7, 999, 0x2222)
    assert relay.receive(port_b, back, B_ADDR, 0.03) == (port_a, back, A_ADDR)


def test_a_phone_behind_nat_is_latched_to_where_its_packets_come_from() -> None:
    relay = make_relay(relatch_s=1.0)
    private = ("10.0.0.5", 4000)
    nat = ("203.0.113.7", 61000)
    port_a, port_b = call(relay, a_sdp=party_sdp(*private))
    # before A sends anything, B's packets go to the advertised (unreachable) address
    assert relay.receive(port_b, rtp(1, 0, 2), B_ADDR, 0.0) == (port_a, rtp(1, 0, 2), private)
    assert relay.receive(port_a, rtp(1, 0, 1), nat, 0.01) is not None
    out = relay.receive(port_b, rtp(2, 160, 2), B_ADDR, 0.02)
    assert out is not None and out[2] == nat
    # a stranger on A's port is dropped while A is alive
    assert relay.receive(port_a, rtp(9, 0, 9), ("203.0.113.66", 1234), 0.5) is None
    assert relay.query("c1", 0.5)["legs"][0]["streams"][0]["foreign_dropped"] == 1
    # A's NAT mapping changes: after relatch_s of silence the new source latches
    assert relay.receive(port_a, rtp(2, 160, 1), ("203.0.113.7", 62000), 1.2) is not None
    out = relay.receive(port_b, rtp(3, 320, 2), B_ADDR, 1.21)
    assert out is not None and out[2] == ("203.0.113.7", 62000)
    legs = relay.query("c1", 1.3)["legs"]
    assert legs[0]["streams"][0]["latched"] == "203.0.113.7:62000"
    assert legs[0]["streams"][0]["advertised"] == "10.0.0.5:4000"


def test_a_new_address_in_a_reoffer_latches_again() -> None:
    relay = make_relay()
    port_a, port_b = call(relay)
    relay.receive(port_a, rtp(1, 0, 1), ("203.0.113.7", 61000), 0.0)
    relay.offer("c1", "a", party_sdp("198.51.100.99", 4100, version=2), 0.5)
    out = relay.receive(port_b, rtp(1, 0, 2), B_ADDR, 0.6)
    assert out is not None and out[2] == ("198.51.100.99", 4100)
    assert relay.receive(port_a, rtp(2, 160, 1), ("198.51.100.99", 4100), 0.61) is not None


def test_stray_datagrams_and_garbage_are_counted_not_forwarded() -> None:
    relay = make_relay()
    port_a, _ = call(relay)
    assert relay.receive(40000, rtp(1, 0, 1), A_ADDR, 0.0) is None
    assert relay.receive(port_a, b"\x00" * 20, A_ADDR, 0.0) is None
    assert relay.receive(port_a, b"\x80\x00\x00", A_ADDR, 0.0) is None
    assert relay.status()["stray"] == 1
    assert relay.query("c1", 0.0)["legs"][0]["streams"][0]["malformed"] == 2


# ---- leg replacement: one continuous stream ---------------------------------------------------------


def test_after_a_transfer_the_remaining_phone_sees_one_continuous_stream() -> None:
    relay = make_relay()
    port_a, port_b = call(relay)
    now = 0.0
    for i in range(50):
        now = i * 0.02
        out = relay.receive(port_b, rtp(65500 + i, 1000 + 160 * i, 0xB0B), B_ADDR, now)
        assert out is not None
    last_seq, last_ts = (65500 + 49) & 0xFFFF, 1000 + 160 * 49
    # B is replaced by C (blind transfer): C gets new ports, A keeps its own
    offer_c = parse_sdp(relay.replace("c1", "b", "c", 1.5))
    port_c = offer_c.media[0].port
    assert port_c not in (port_a, port_b) and offer_c.media[0].formats == ["0", "8", "101"]
    relay.answer("c1", "a", "c", party_sdp(*C_ADDR), 1.6)
    assert relay.receive(port_b, rtp(1, 1, 0xB0B), B_ADDR, 1.7) is None  # B's old port is gone
    outs = [relay.receive(port_c, rtp(7 + i, 90000 + 160 * i, 0xC0C), C_ADDR, 2.0 + 0.02 * i) for i in range(5)]
    seen = [parse_rtp(o[1]) for o in outs if o is not None]
    assert len(seen) == 5
    assert {s[4] for s in seen} == {0xB0B}  # A still sees B's SSRC
    assert [s[2] for s in seen] == [(last_seq + 1 + i) & 0xFFFF for i in range(5)]
    elapsed = round((2.0 - now) * 8000)
    assert [s[3] for s in seen] == [last_ts + elapsed + 160 * i for i in range(5)]
    assert [s[1] for s in seen] == [True, False, False, False, False]
    assert all(o is not None and o[0] == port_a and o[2] == A_ADDR for o in outs)
    # the other way, C hears A's stream as it is
    packet = rtp(300, 48000, 0xAAA)
    assert relay.receive(port_a, packet, A_ADDR, 2.1) == (port_c, packet, C_ADDR)
    stats = relay.query("c1", 2.2)
    assert stats["replaced"][0]["tag"] == "b" and stats["legs"][1]["tag"] == "c"


def test_replacing_with_the_new_partys_offer_rewrites_it_for_the_remaining_one() -> None:
    relay = make_relay()
    port_a, _ = call(relay)
    to_a = parse_sdp(relay.replace("c1", "b", "c", 1.0, sdp=party_sdp(*C_ADDR, codecs="8 101")))
    assert to_a.media[0].port == port_a and to_a.media[0].formats == ["8", "101"]
    with pytest.raises(MediaError):
        relay.replace("c1", "zz", "c2", 1.0)


def test_sequence_continuity_survives_reordering_within_the_new_source() -> None:
    relay = make_relay()
    _port_a, port_b = call(relay)
    relay.receive(port_b, rtp(10, 100, 1), B_ADDR, 0.0)
    relay.replace("c1", "b", "c", 0.1)
    relay.answer("c1", "a", "c", party_sdp(*C_ADDR), 0.1)
    port_c = relay.sessions["c1"].legs[1].streams[0].port
    order = [500, 502, 501, 503]
    seqs = []
    for i, seq in enumerate(order):
        out = relay.receive(port_c, rtp(seq, 160 * seq, 2), C_ADDR, 0.2 + 0.02 * i)
        assert out is not None
        seqs.append(parse_rtp(out[1])[2])
    assert seqs == [11, 13, 12, 14]


# ---- RTCP --------------------------------------------------------------------------------------------


def test_rtcp_is_relayed_between_a_demuxed_and_a_muxed_party() -> None:
    relay = make_relay()
    to_b = relay.offer("c1", "a", party_sdp(*A_ADDR, rtcp_mux=True), 0.0)
    relay.answer("c1", "a", "b", party_sdp(*B_ADDR, rtcp_mux=True), 0.0)
    assert parse_sdp(to_b).media[0].has_attribute("rtcp-mux")
    relay.offer("c1", "b", party_sdp(*B_ADDR, version=2), 1.0)  # B re-offers without mux
    relay.answer("c1", "b", "a", party_sdp(*A_ADDR, rtcp_mux=True, version=2), 1.0)
    session = relay.sessions["c1"]
    port_a, port_b = session.legs[0].streams[0].port, session.legs[1].streams[0].port
    sr = sender_report(0x1111, 5000)
    # A sends RTCP muxed on its RTP port; B (demuxed now) gets it on its RTCP port from ours
    relay.receive(port_a, rtp(1, 0, 0x1111), A_ADDR, 1.1)
    assert relay.receive(port_a, sr, A_ADDR, 1.2) == (port_b + 1, sr, (B_ADDR[0], B_ADDR[1] + 1))
    rr = receiver_report(0x2222, 0x1111, fraction=64, cumulative=5, jitter=80)
    out = relay.receive(port_b + 1, rr, (B_ADDR[0], B_ADDR[1] + 1), 1.3)
    assert out == (port_a, rr, A_ADDR)  # muxed towards A: its RTP port, from ours


def test_receiver_reports_give_the_loss_and_jitter_each_party_sees() -> None:
    relay = make_relay()
    port_a, port_b = call(relay)
    relay.receive(port_a, rtp(1, 0, 0x1111), A_ADDR, 0.0)  # B's out stream now has SSRC 0x1111
    rr = receiver_report(0x2222, 0x1111, fraction=128, cumulative=12, jitter=160)
    relay.receive(port_b + 1, rr, (B_ADDR[0], B_ADDR[1] + 1), 0.5)
    reported = relay.query("c1", 1.0)["legs"][1]["streams"][0]["reported_by_party"]
    assert reported == {"reports": 1, "fraction_lost_pct": 50.0, "cumulative_lost": 12, "jitter_ms": 20.0}


def test_rtcp_ssrcs_follow_the_rewritten_stream() -> None:
    relay = make_relay()
    _port_a, port_b = call(relay)
    relay.receive(port_b, rtp(10, 1000, 0xB0B), B_ADDR, 0.0)
    relay.replace("c1", "b", "c", 0.1)
    relay.answer("c1", "a", "c", party_sdp(*C_ADDR), 0.1)
    port_c = relay.sessions["c1"].legs[1].streams[0].port
    out = relay.receive(port_c, rtp(500, 7000, 0xC0C), C_ADDR, 0.2)
    assert out is not None
    _, _, _, mapped_ts, _, _ = parse_rtp(out[1])
    relayed = relay.receive(port_c + 1, sender_report(0xC0C, 7000), (C_ADDR[0], C_ADDR[1] + 1), 0.3)
    assert relayed is not None
    ssrc, ts = struct.unpack_from("!I", relayed[1], 4)[0], struct.unpack_from("!I", relayed[1], 16)[0]
    assert ssrc == 0xB0B and ts == mapped_ts


# ---- statistics -------------------------------------------------------------------------------------


def test_loss_and_jitter_from_the_rtp_received() -> None:
    relay = make_relay()
    port_a, _ = call(relay)
    for i in range(100):
        if i in (10, 11, 50):
            continue
        relay.receive(port_a, rtp(i, 160 * i, 1), A_ADDR, 0.02 * i)
    stats = relay.query("c1", 2.0)["legs"][0]["streams"][0]["received"]
    assert stats["lost"] == 3 and stats["packets"] == 97
    assert stats["loss_pct"] == 3.0
    assert stats["jitter_ms"] < 0.001  # perfectly paced


def test_jitter_follows_rfc3550_a8() -> None:
    relay = make_relay()
    port_a, _ = call(relay)
    # arrivals alternately 5 ms late: |D| = 5 ms for every packet after the first
    for i in range(400):
        relay.receive(port_a, rtp(i, 160 * i, 1), A_ADDR, 0.02 * i + (0.005 if i % 2 else 0.0))
    jitter = relay.query("c1", 9.0)["legs"][0]["streams"][0]["received"]["jitter_ms"]
    assert jitter == pytest.approx(5.0, abs=0.01)


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, 65535),
    count=st.integers(2, 400),
    drop=st.sets(st.integers(1, 399), max_size=60),
    swaps=st.lists(st.integers(1, 398), max_size=30),
)
def test_loss_accounting_with_wraparound_and_reordering(start: int, count: int, drop: set[int], swaps: list[int]) -> None:
    relay = make_relay()
    port_a, _ = call(relay)
    order = [i for i in range(count) if i not in drop]
    for k in swaps:  # neighbours exchanged: reordering by one place (never the first packet)
        if 1 <= k < len(order) - 1:
            order[k], order[k + 1] = order[k + 1], order[k]
    for n, i in enumerate(order):
        relay.receive(port_a, rtp(start + i, 160 * i, 1), A_ADDR, 0.02 * n)
    highest = max(order)
    expected_lost = sum(1 for i in range(highest + 1) if i not in set(order))
    stats = relay.query("c1", 99.0)["legs"][0]["streams"][0]["received"]
    assert stats["lost"] == expected_lost
    assert stats["packets"] == len(order)


@settings(max_examples=100, deadline=None)
@given(
    sources=st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 65535), st.integers(0, 2**32 - 1), st.integers(1, 40)),
        min_size=1,
        max_size=6,
    )
)
def test_whatever_the_sources_the_receiver_sees_one_stream(sources: list[tuple[int, int, int, int]]) -> None:
    """Sources (SSRC, first seq, first ts, packets) follow one another on B's side, each
    a replacement: A sees one SSRC, sequence +1 each packet, timestamps never going back."""
    relay = make_relay()
    _port_a, port_b = call(relay)
    now = 0.0
    seen = []
    tag = "b"
    for n, (ssrc, seq, ts, packets) in enumerate(sources):
        if n:
            new_tag = f"p{n}"
            relay.replace("c1", tag, new_tag, now)
            relay.answer("c1", "a", new_tag, party_sdp(*B_ADDR), now)
            tag = new_tag
            port_b = relay.sessions["c1"].legs[1].streams[0].port
        for i in range(packets):
            now += 0.02
            out = relay.receive(port_b, rtp(seq + i, ts + 160 * i, ssrc), B_ADDR, now)
            assert out is not None
            seen.append(parse_rtp(out[1]))
    assert len({s[4] for s in seen}) == 1
    seqs = [s[2] for s in seen]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    stamps = [s[3] for s in seen]
    assert all(0 < (b - a) & 0xFFFFFFFF < 2**31 for a, b in itertools.pairwise(stamps))


# ---- RTP timeout --------------------------------------------------------------------------------------


def test_a_silent_party_gives_one_rtp_timeout_event() -> None:
    relay = make_relay(rtp_timeout_s=5.0)
    port_a, port_b = call(relay)
    for i in range(100):  # A talks for 2 s then goes silent; B keeps talking
        relay.receive(port_a, rtp(i, 160 * i, 1), A_ADDR, 0.02 * i)
    now = 0.0
    events = []
    while now < 12.0:
        relay.receive(port_b, rtp(int(now * 50), int(now * 8000), 2), B_ADDR, now)
        deadline = relay.deadline()
        assert deadline is not None
        if deadline <= now:
            relay.on_timer(now)
        events += relay.pop_events()
        now += 0.02
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, RtpTimeout) and event.tag == "a" and event.leg == "A"
    assert 5.0 <= event.idle_s <= 6.1


def test_no_timeout_before_answer_nor_for_a_party_on_hold() -> None:
    relay = make_relay(rtp_timeout_s=2.0)
    relay.offer("c1", "a", party_sdp(*A_ADDR), 0.0)
    relay.on_timer(10.0)
    assert relay.pop_events() == []
    relay.answer("c1", "a", "b", party_sdp(*B_ADDR, direction="recvonly"), 10.0)
    relay.offer("c1", "a", party_sdp(*A_ADDR, direction="sendonly", version=2), 10.0)
    port_a = relay.sessions["c1"].legs[0].streams[0].port
    for i in range(300):
        relay.receive(port_a, rtp(i, 160 * i, 1), A_ADDR, 10.0 + 0.02 * i)
        relay.on_timer(10.0 + 0.02 * i)
    assert relay.pop_events() == []


def test_a_party_holding_the_call_gets_the_hold_timeout_instead() -> None:
    """B holds (sendonly) and, like most phones, sends nothing: not the 2 s RTP timeout but
    the hold timeout ends the call (rtpengine's silent-timeout)."""
    relay = make_relay(rtp_timeout_s=2.0, rtp_hold_timeout_s=30.0)
    call(relay)
    relay.offer("c1", "b", party_sdp(*B_ADDR, direction="sendonly", version=2), 1.0)
    relay.answer("c1", "b", "a", party_sdp(*A_ADDR, direction="recvonly", version=2), 1.0)
    events = []
    now = 1.0
    while now < 40.0:
        relay.on_timer(now)
        events += relay.pop_events()
        now += 0.5
    assert len(events) == 1
    assert isinstance(events[0], RtpTimeout) and events[0].tag == "b" and 30.0 <= events[0].idle_s <= 31.5


def test_a_party_at_an_unspecified_address_gets_nothing_and_is_not_timed_out() -> None:
    """c=0.0.0.0 (RFC 2543 hold, or the placeholder of a call the B2BUA answers itself):
    nothing is sent to it and its silence ends nothing."""
    relay = make_relay(rtp_timeout_s=2.0)
    placeholder = party_sdp(*A_ADDR).replace(f"IN IP4 {A_ADDR[0]}", "IN IP4 0.0.0.0")
    port_a, _ = call(relay, b_sdp=placeholder)
    for i in range(300):
        assert relay.receive(port_a, rtp(i, 160 * i, 1), A_ADDR, 0.02 * i) is None
        relay.on_timer(0.02 * i)
    assert relay.pop_events() == []


# ---- ports ---------------------------------------------------------------------------------------------


def test_port_exhaustion_refuses_the_new_call_and_keeps_the_others() -> None:
    relay = make_relay(pairs=3)  # 30000-30006: pairs 30000, 30002, 30004
    port_a, _port_b = call(relay, "c1")
    with pytest.raises(PortsExhausted) as info:
        relay.offer("c2", "x", party_sdp(*C_ADDR), 0.0)
    assert info.value.code == "ports_exhausted"
    assert "c2" not in relay.sessions and relay.status()["ports_in_use"] == 4
    assert relay.receive(port_a, rtp(1, 0, 1), A_ADDR, 0.1) is not None  # c1 unaffected
    relay.delete("c1", 1.0)
    assert relay.status()["ports_in_use"] == 0
    assert relay.receive(port_a, rtp(2, 160, 1), A_ADDR, 1.1) is None
    call(relay, "c2")


def test_delete_returns_the_final_statistics_and_keeps_the_totals() -> None:
    relay = make_relay()
    port_a, _ = call(relay)
    for i in range(10):
        if i != 4:
            relay.receive(port_a, rtp(i, 160 * i, 1), A_ADDR, 0.02 * i)
    final = relay.delete("c1", 1.0)
    assert final["legs"][0]["streams"][0]["received"]["lost"] == 1
    assert final["summary"]["A"] == {
        "tag": "a", "packets": 9, "lost": 1, "loss_pct": 10.0, "jitter_ms": 0.0, "reported_loss_pct": None, "reported_jitter_ms": None
    }
    assert final["summary"]["B"]["packets"] == 0
    status = relay.status()
    assert status["sessions"] == 0 and status["lost"] == 1 and status["packets_in"] == 9
    with pytest.raises(MediaError):
        relay.delete("c1", 1.0)


# ---- DTMF ---------------------------------------------------------------------------------------------


def _event_packets(digit_code: int, ts: int, seq: int, ssrc: int = 1) -> list[bytes]:
    packets = [rtp(seq, ts, ssrc, encode_event(digit_code, 160 * (k + 1)), pt=101, marker=k == 0) for k in range(5)]
    end = encode_event(digit_code, 960, end=True)
    packets += [rtp(seq + 5 + k, ts, ssrc, end, pt=101) for k in range(3)]
    return packets


def test_rfc4733_events_are_detected_once_and_still_forwarded() -> None:
    relay = make_relay()
    port_a, _ = call(relay)
    seq = 0
    forwarded = 0
    for code, ts in ((5, 1000), (11, 9000)):
        for packet in _event_packets(code, ts, seq):
            forwarded += relay.receive(port_a, packet, A_ADDR, seq * 0.02) is not None
            seq += 1
    events = relay.pop_events()
    assert [(e.digit, e.duration_ms, e.tag) for e in events if isinstance(e, DtmfDetected)] == [("5", 120, "a"), ("#", 120, "a")]
    assert forwarded == 16


def test_sent_dtmf_is_well_formed_and_detected_by_a_receiver() -> None:
    relay = make_relay()
    port_a, _ = call(relay)
    relay.receive(port_a, rtp(1, 0, 7), A_ADDR, 0.0)  # A is latched
    relay.send_dtmf("c1", "a", "1#", 0.1, duration_ms=100, pause_ms=60)
    packets = []
    now = 0.1
    while (deadline := relay.deadline()) is not None and now < 2.0:
        now = max(now, deadline)
        packets += [parse_rtp(o[1]) for o in relay.on_timer(now) if o[0] == port_a]
        now += 0.001
    events = [p for p in packets if p[0] == 101]
    assert events and {p[4] for p in packets} == {events[0][4]}
    assert all((b[2] - a[2]) & 0xFFFF == 1 for a, b in itertools.pairwise(events))
    detector = DtmfDetector()
    found = [d for p in events for d in detector.feed(p[3], p[5])]
    assert [d.digit for d in found] == ["1", "#"] and [d.duration for d in found] == [800, 800]
    assert events[0][1] is True and sum(p[1] for p in events) == 2
    with pytest.raises(MediaError):
        relay.send_dtmf("c1", "a", "x", 1.0)


# ---- players -------------------------------------------------------------------------------------------


def test_a_player_replaces_the_forwarded_stream_and_then_gives_it_back() -> None:
    relay = make_relay()
    port_a, port_b = call(relay)
    relay.receive(port_b, rtp(100, 8000, 0xB0B), B_ADDR, 0.0)
    sound = g711.encode([1000] * 800, "PCMU")  # 100 ms: 5 packets
    relay.play("c1", "a", 0.1, name="beep", encoded={"PCMU": sound, "PCMA": b""}, loop=False)
    assert relay.receive(port_b, rtp(101, 8160, 0xB0B), B_ADDR, 0.11) is None  # suppressed
    out = []
    now = 0.1
    while (deadline := relay.deadline()) is not None and deadline < 1.0:
        now = deadline
        out += relay.on_timer(now)
    played = [parse_rtp(o[1]) for o in out]
    assert len(played) == 5 and all(o[0] == port_a and o[2] == A_ADDR for o in out)
    assert [p[2] for p in played] == [101, 102, 103, 104, 105]
    assert {p[4] for p in played} == {0xB0B} and played[0][1] is True
    assert [p[3] - played[0][3] for p in played] == [0, 160, 320, 480, 640]
    assert all(p[5] == sound[:160] for p in played)
    assert [e.name for e in relay.pop_events() if isinstance(e, PlayDone)] == ["beep"]
    back = relay.receive(port_b, rtp(120, 20000, 0xB0B), B_ADDR, 0.3)
    assert back is not None
    _, marker, seq, ts, ssrc, _ = parse_rtp(back[1])
    assert (seq, ssrc, marker) == (106, 0xB0B, True) and ts > played[-1][3]


def test_a_looping_player_runs_until_stopped_and_is_paced_in_real_time() -> None:
    relay = make_relay()
    _port_a, _ = call(relay)
    rng = random.Random(1)
    relay.play("c1", "a", 0.0, name="moh", encoded={"PCMU": bytes(range(256)) * 2, "PCMA": b""}, loop=True)
    sent = 0
    now = 0.0
    while now < 2.0:
        now += rng.uniform(0.001, 0.03)
        sent += len(relay.on_timer(now))
    assert abs(sent - 100) <= 2
    assert relay.stop_play("c1", "a") is True
    assert relay.on_timer(3.0) == [] and relay.stop_play("c1", "a") is False
    assert relay.query("c1", 3.0)["legs"][0]["streams"][0]["sent"]["packets"] == sent


def test_play_needs_a_g711_party() -> None:
    relay = make_relay()
    call(relay, b_sdp=party_sdp(*B_ADDR, codecs="9"))
    with pytest.raises(MediaError) as info:
        relay.play("c1", "b", 0.0, name="x", encoded={"PCMU": b"", "PCMA": b""}, loop=False)
    assert info.value.code == "no_codec"


# ---- more SDP shapes ------------------------------------------------------------------------------


def test_audio_and_video_streams_get_their_own_ports() -> None:
    relay = make_relay()
    video = "m=video {port} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    to_b = parse_sdp(relay.offer("c1", "a", party_sdp(*A_ADDR) + video.format(port=4002), 0.0))
    to_a = parse_sdp(relay.answer("c1", "a", "b", party_sdp(*B_ADDR) + video.format(port=5002), 0.0))
    assert len({m.port for m in to_b.media} | {m.port for m in to_a.media}) == 4
    out = relay.receive(to_a.media[1].port, rtp(1, 0, 5, pt=96), ("198.51.100.10", 4002), 0.0)
    assert out == (to_b.media[1].port, rtp(1, 0, 5, pt=96), ("198.51.100.20", 5002))


def test_a_forked_answer_takes_the_leg_over() -> None:
    relay = make_relay()
    to_b = parse_sdp(relay.offer("c1", "a", party_sdp(*A_ADDR), 0.0))
    port_b = to_b.media[0].port
    relay.answer("c1", "a", "b1", party_sdp(*B_ADDR), 0.0)  # early media from one fork
    relay.receive(port_b, rtp(1, 0, 1), B_ADDR, 0.1)
    relay.answer("c1", "a", "b2", party_sdp(*C_ADDR), 0.5)  # another fork answers
    port_a = relay.sessions["c1"].legs[0].streams[0].port
    out = relay.receive(port_a, rtp(1, 0, 2), A_ADDR, 0.6)
    assert out is not None and out[2] == C_ADDR
    assert relay.query("c1", 0.7)["legs"][1]["tag"] == "b2"


def test_t38_is_forwarded_as_plain_udp() -> None:
    relay = make_relay()
    fax = "m=image {port} udptl t38\r\na=T38FaxVersion:0\r\n"
    head = party_sdp(*A_ADDR).split("m=audio")[0]
    to_b = parse_sdp(relay.offer("c1", "a", head + fax.format(port=4000), 0.0))
    to_a = parse_sdp(relay.answer("c1", "a", "b", party_sdp(*B_ADDR).split("m=audio")[0] + fax.format(port=5000), 0.0))
    assert to_b.media[0].proto == "udptl"
    datagram = b"\x00\x01not-rtp"
    assert relay.receive(to_a.media[0].port, datagram, A_ADDR, 0.0) == (to_b.media[0].port, datagram, B_ADDR)


def test_ipv6_parties_and_an_ipv6_relay() -> None:
    relay = Relay("2001:db8::1", PortPool(30000, 30100))
    v6 = party_sdp("2001:db8::10", 4000).replace("IN IP4", "IN IP6")
    to_b = parse_sdp(relay.offer("c1", "a", v6, 0.0))
    assert to_b.connection is not None and str(to_b.connection) == "IN IP6 2001:db8::1"
    to_a = parse_sdp(relay.answer("c1", "a", "b", party_sdp(*B_ADDR), 0.0))
    out = relay.receive(to_a.media[0].port, rtp(1, 0, 1), ("2001:db8::10", 4000), 0.0)
    assert out is not None and out[2] == B_ADDR
    back = relay.receive(to_b.media[0].port, rtp(1, 0, 2), B_ADDR, 0.0)
    assert back is not None and back[2] == ("2001:db8::10", 4000)


@settings(max_examples=300, deadline=None)
@given(
    datagrams=st.lists(
        st.tuples(
            st.sampled_from([0, 1, 2, 3]),  # A's RTP, A's RTCP, B's RTP, B's RTCP port
            st.one_of(st.binary(max_size=300), st.binary(min_size=4, max_size=120).map(lambda b: b"\x80" + b), st.binary(min_size=4, max_size=120).map(lambda b: b"\x81\xc9" + b)),
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_no_datagram_makes_the_relay_raise(datagrams: list[tuple[int, bytes, bool]]) -> None:
    relay = make_relay()
    port_a, port_b = call(relay)
    ports = [port_a, port_a + 1, port_b, port_b + 1]
    relay.send_dtmf("c1", "a", "1", 0.0)
    for n, (which, data, stranger) in enumerate(datagrams):
        src = ("203.0.113.1", 9) if stranger else (A_ADDR if which < 2 else B_ADDR)
        relay.receive(ports[which], data, src, 0.01 * n)
        relay.on_timer(0.01 * n)
    relay.query("c1", 1.0)
    relay.delete("c1", 1.0)


def test_each_party_sees_one_origin_of_ours_versioned_on_change() -> None:
    relay = make_relay()
    first = parse_sdp(relay.offer("c1", "a", party_sdp(*A_ADDR, session_id="111"), 0.0))
    to_a = parse_sdp(relay.answer("c1", "a", "b", party_sdp(*B_ADDR, session_id="222"), 0.0))
    assert first.origin.session_id != "111" and to_a.origin.session_id != "222"
    assert first.origin.username == "-" and first.origin.address == US
    same = parse_sdp(relay.offer("c1", "a", party_sdp(*A_ADDR, session_id="111", version=2), 1.0))
    assert (same.origin.session_id, same.origin.session_version) == (first.origin.session_id, first.origin.session_version)
    held = parse_sdp(relay.offer("c1", "a", party_sdp(*A_ADDR, session_id="111", version=3, direction="sendonly"), 2.0))
    assert held.origin.session_id == first.origin.session_id
    assert held.origin.session_version == first.origin.session_version + 1
    # a transfer: A is now offered C's SDP under the same origin, one version up
    to_a2 = parse_sdp(relay.replace("c1", "b", "c", 3.0, sdp=party_sdp(*C_ADDR, session_id="333", codecs="8")))
    assert to_a2.origin.session_id == to_a.origin.session_id
    assert to_a2.origin.session_version == to_a.origin.session_version + 1


@pytest.mark.parametrize(
    ("a_mux", "policy", "b_mux", "offered_to_b", "answered_to_a"),
    [
        (True, None, True, True, True),  # passed through
        (True, None, False, True, False),
        (False, None, False, False, False),
        (False, "offer", True, True, False),  # offered to B; A never offered it
        (True, "demux", False, False, True),  # accepted from A, not offered to B
        (True, "accept", False, True, True),
        (True, "reject", True, False, False),
    ],
)
def test_rtcp_mux_flags(a_mux: bool, policy: str | None, b_mux: bool, offered_to_b: bool, answered_to_a: bool) -> None:
    relay = make_relay()
    to_b = parse_sdp(relay.offer("c1", "a", party_sdp(*A_ADDR, rtcp_mux=a_mux), 0.0, rtcp_mux=policy))
    assert to_b.media[0].has_attribute("rtcp-mux") is offered_to_b
    to_a = parse_sdp(relay.answer("c1", "a", "b", party_sdp(*B_ADDR, rtcp_mux=b_mux and offered_to_b), 0.0))
    assert to_a.media[0].has_attribute("rtcp-mux") is answered_to_a
    port_a, port_b = to_a.media[0].port, to_b.media[0].port
    relay.receive(port_b, rtp(1, 0, 2), B_ADDR, 0.1)
    out = relay.receive(port_b if b_mux and offered_to_b else port_b + 1, sender_report(2, 0), B_ADDR if b_mux and offered_to_b else (B_ADDR[0], B_ADDR[1] + 1), 0.2)
    assert out is not None
    assert out[0] == (port_a if answered_to_a else port_a + 1)  # A's RTCP as agreed with A
    assert out[2] == (A_ADDR if answered_to_a else (A_ADDR[0], A_ADDR[1] + 1))
    with pytest.raises(MediaError):
        relay.offer("c1", "a", party_sdp(*A_ADDR), 1.0, rtcp_mux="sometimes")
