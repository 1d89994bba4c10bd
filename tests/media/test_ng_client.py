"""The NG client and `RtpengineBackend` against fake daemons on loopback UDP:
retransmission with back-off (same cookie), timeout, replies with a foreign cookie
ignored, malformed replies, the bounded pending table, a refused port failing at once;
health by ping with hysteresis, failover of new sessions, sessions pinned to their
daemon, clear errors."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from typing import Any

import pytest
from ng_fake import FakeDaemon, rtpengine_like

from vivait_sip.media.anchor import party_stats
from vivait_sip.media.control import (
    Answer,
    CallKey,
    Delete,
    Ice,
    MediaFlags,
    MediaReply,
    Offer,
    Ping,
    PlayDtmf,
    PlayMedia,
    Query,
    ReplaceParty,
    StopMedia,
    TransportProtocol,
)
from vivait_sip.media.ng import NgClient, NgError, RtpengineBackend, bdecode, bencode, parse_daemon
from vivait_sip.media.prompts import Prompts
from vivait_sip.media.rtpe_sounds import LOOP_S, RtpengineSounds

SDP = b"v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


async def client_for(daemon: FakeDaemon, **kwargs: Any) -> NgClient:
    client = NgClient("127.0.0.1", daemon.port, **kwargs)
    await client.start()
    return client


async def test_a_request_gets_its_reply() -> None:
    daemon = await FakeDaemon.start()
    client = await client_for(daemon)
    assert await client.request({"command": "ping"}) == {"result": b"pong"}
    (_, data), = daemon.received
    cookie, _, body = data.partition(b" ")
    assert body == b"d7:command4:pinge" and cookie and b" " not in cookie
    assert client.pending == 0 and client.counters["requests"] == 1
    await client.stop()
    daemon.close()


async def test_lost_requests_are_resent_with_back_off_under_the_same_cookie() -> None:
    daemon = await FakeDaemon.start()
    daemon.drop = 3
    client = await client_for(daemon, retransmit_s=0.05, max_retransmit_s=1.0, timeout_s=2.0)
    assert await client.request({"command": "ping"}) == {"result": b"pong"}
    assert len(daemon.received) == 4 and len({data for _, data in daemon.received}) == 1  # one cookie
    times = [t for t, _ in daemon.received]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.04 < gaps[0] < 0.09 and 0.09 < gaps[1] < 0.16 and 0.18 < gaps[2] < 0.3  # doubling
    assert client.counters["retransmissions"] == 3 and client.counters["timeouts"] == 0
    await client.stop()
    daemon.close()


async def test_no_reply_times_out_and_leaves_nothing_pending() -> None:
    daemon = await FakeDaemon.start(lambda msg: None)
    client = await client_for(daemon, retransmit_s=0.05, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(NgError, match=r"no reply in 0\.3 s"):
        await client.request({"command": "ping"})
    assert 0.28 < time.monotonic() - started < 0.6
    assert client.pending == 0 and client.counters["timeouts"] == 1 and len(daemon.received) >= 3
    await client.stop()
    daemon.close()


async def test_a_reply_with_a_foreign_cookie_is_ignored() -> None:
    daemon = await FakeDaemon.start()
    daemon.before = lambda transport, cookie, addr: (
        transport.sendto(b"other_1 " + bencode({"result": "error", "error-reason": "not yours"}), addr),
        transport.sendto(cookie + b"x " + bencode({"result": "error"}), addr),
        transport.sendto(b"nospace", addr),
    )
    client = await client_for(daemon)
    assert await client.request({"command": "ping"}) == {"result": b"pong"}
    assert client.counters["unmatched_replies"] == 3
    # A late duplicate of an answered request is unmatched too.
    daemon.transport.sendto(daemon.received[0][1].partition(b" ")[0] + b" de", ("127.0.0.1", _local_port(client)))  # type: ignore[union-attr]
    await asyncio.sleep(0.05)
    assert client.counters["unmatched_replies"] == 4
    await client.stop()
    daemon.close()


def _local_port(client: NgClient) -> int:
    assert client._transport is not None
    return int(client._transport.get_extra_info("sockname")[1])


async def test_a_malformed_reply_fails_the_request_clearly() -> None:
    daemon = await FakeDaemon.start()
    daemon.before = lambda transport, cookie, addr: transport.sendto(cookie + b" d6:result", addr)
    client = await client_for(daemon)
    with pytest.raises(NgError, match="malformed reply"):
        await client.request({"command": "ping"})
    assert client.counters["malformed_replies"] == 1
    await client.stop()
    daemon.close()


async def test_the_pending_table_is_bounded() -> None:
    daemon = await FakeDaemon.start(lambda msg: None)
    client = await client_for(daemon, max_pending=3, retransmit_s=0.05, timeout_s=0.5)
    waiting = [asyncio.create_task(client.request({"command": "ping"})) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert client.pending == 3
    with pytest.raises(NgError, match="3 requests already waiting"):
        await client.request({"command": "ping"})
    assert client.counters["overflow"] == 1
    for task in waiting:
        with pytest.raises(NgError):
            await task
    assert client.pending == 0
    assert await asyncio.wait_for(asyncio.shield(asyncio.sleep(0)), 1) is None
    await client.stop()
    daemon.close()


async def test_a_port_nobody_listens_on_fails_at_once() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    client = NgClient("127.0.0.1", port, timeout_s=5.0, retransmit_s=0.2)
    await client.start()
    started = time.monotonic()
    with pytest.raises(NgError, match="refused"):
        await client.request({"command": "ping"})
    assert time.monotonic() - started < 1.0  # the ICMP error, not the 5 s timeout
    await client.stop()


def test_daemon_addresses_parse() -> None:
    assert parse_daemon("127.0.0.1:2223") == ("127.0.0.1", 2223)
    assert parse_daemon("[::1]:2223") == ("::1", 2223)
    assert parse_daemon("rtp1.example:22222") == ("rtp1.example", 22222)
    for bad in ("127.0.0.1", ":2223", "host:0", "host:70000", "::1:2223", "[::1]2223", "host:x"):
        with pytest.raises(ValueError):
            parse_daemon(bad)


# ---- the backend --------------------------------------------------------------------------


def backend_for(*daemons: FakeDaemon, **kwargs: Any) -> RtpengineBackend:
    options: dict[str, Any] = {"timeout_s": 0.3, "retransmit_s": 0.05, "ping_interval_s": 0, "down_after": 2, "up_after": 2}
    options.update(kwargs)
    return RtpengineBackend([d.address for d in daemons], **options)


def offer(call_id: str) -> Offer:
    return Offer(CallKey(call_id, "ft"), SDP)


async def test_sessions_are_pinned_and_spread_over_the_daemons() -> None:
    one, two = await FakeDaemon.start(), await FakeDaemon.start()
    backend = backend_for(one, two)
    await backend.start()
    assert [d.state for d in backend.daemons] == ["up", "up"] and backend.healthy
    reply = await backend.request(offer("c1"))
    assert reply.ok and reply.sdp is not None and b"203.0.113.5" in reply.sdp
    assert reply.backend == f"rtpengine {one.address}"
    assert (await backend.request(offer("c2"))).backend == f"rtpengine {two.address}"  # fewest sessions first
    answer = await backend.request(Answer(CallKey("c1", "ft", "tt"), SDP))
    assert answer.backend == f"rtpengine {one.address}"  # c1 stays where it is
    assert backend.daemon_of("c1") == one.address and backend.sessions == 2
    assert (await backend.request(Delete("c1"))).ok
    assert backend.daemon_of("c1") is None and backend.sessions == 1
    assert [c for c in one.commands() if c != "ping"] == ["offer", "answer", "query", "delete"]  # query: the statistics
    await backend.stop()
    one.close()
    two.close()


async def test_a_daemon_that_does_not_answer_fails_over_for_new_calls_only() -> None:
    one, two = await FakeDaemon.start(), await FakeDaemon.start()
    backend = backend_for(one, two, down_after=1)
    await backend.start()
    assert (await backend.request(offer("kept"))).backend == f"rtpengine {one.address}"
    one.reply = lambda msg: None  # one stops answering
    reply = await backend.request(offer("new"))
    assert reply.ok and reply.backend == f"rtpengine {two.address}" and backend.counters["failovers"] == 0
    # "new" went to two (fewer sessions); the next new call tries one first, which is silent:
    reply = await backend.request(offer("next"))
    assert reply.ok and reply.backend == f"rtpengine {two.address}" and backend.counters["failovers"] == 1
    assert backend.daemons[0].state == "down"
    # "next" timed out on one before two took it: its delete goes to both (one may have made it late).
    assert (await backend.request(Delete("next"))).ok
    assert one.commands()[-1] == "delete" and two.commands()[-1] == "delete"
    kept = await backend.request(Answer(CallKey("kept", "ft", "tt"), SDP))
    assert not kept.ok and kept.error is not None and f"rtpengine {one.address} holding call kept is down" in kept.error
    await backend.stop()
    one.close()
    two.close()


async def test_health_has_hysteresis() -> None:
    daemon = await FakeDaemon.start()
    backend = backend_for(daemon, down_after=2, up_after=2)
    await backend.start()
    state = backend.daemons[0]
    assert state.state == "up"
    daemon.reply = lambda msg: None
    await backend.check_health()
    assert state.state == "up" and state.failures == 1  # one miss is not down
    await backend.check_health()
    assert state.state == "down" and not backend.healthy
    daemon.reply = rtpengine_like
    await backend.check_health()
    assert state.state == "down"  # one pong is not up again
    await backend.check_health()
    assert state.state == "up" and backend.healthy
    await backend.stop()
    daemon.close()


async def test_the_ping_loop_marks_a_silent_daemon_down() -> None:
    daemon = await FakeDaemon.start()
    backend = backend_for(daemon, ping_interval_s=0.05, down_after=2, timeout_s=0.1)
    await backend.start()
    daemon.reply = lambda msg: None
    for _ in range(40):
        await asyncio.sleep(0.05)
        if backend.daemons[0].state == "down":
            break
    assert backend.daemons[0].state == "down"
    await backend.stop()
    daemon.close()


async def test_errors_are_answered_in_sentences() -> None:
    daemon = await FakeDaemon.start(lambda msg: {"result": "error", "error-reason": "Unknown call-id"}
                                    if msg["command"] == b"query" else rtpengine_like(msg))
    backend = backend_for(daemon, max_sessions=1)
    await backend.start()
    reply = await backend.request(Query("nobody"))
    assert reply == MediaReply.failure("rtpengine: no media session for call nobody", "rtpengine")
    assert (await backend.request(offer("a"))).ok
    refused = await backend.request(offer("b"))
    assert not refused.ok and "1 sessions in use (media.rtpengine.max_sessions)" in (refused.error or "")
    queried = await backend.request(Query("a"))
    assert queried.error == f"rtpengine {daemon.address}: Unknown call-id"
    assert (await backend.request(Delete("nobody"))).warning == "call nobody has no media session"
    assert (await backend.request(PlayDtmf(CallKey("a", "ft"), "5"))).ok  # to the daemon holding "a"
    assert daemon.commands()[-1] == "play DTMF"
    assert (await backend.request(Delete("a"))).ok
    daemon.reply = lambda msg: None
    await backend.check_health()
    await backend.check_health()
    nobody = await backend.request(offer("c"))
    assert not nobody.ok and (nobody.error or "").startswith("rtpengine: no daemon up (")
    assert not (await backend.request(Ping())).ok
    await backend.stop()
    daemon.close()


async def test_a_delete_racing_the_first_offer_waits_for_it() -> None:
    daemon = await FakeDaemon.start()
    backend = backend_for(daemon)
    await backend.start()
    daemon.drop = 1  # the offer's first datagram is lost: it takes a resend
    placing = asyncio.create_task(backend.request(offer("race")))
    await asyncio.sleep(0.01)
    deleted = await backend.request(Delete("race"))
    assert (await placing).ok and deleted.ok and deleted.warning is None
    assert [c for c in daemon.commands() if c != "ping"] == ["offer", "offer", "query", "delete"] and backend.sessions == 0
    await backend.stop()
    daemon.close()


async def test_replace_party_is_an_offer_then_the_old_branchs_delete_and_later_sdp_keeps_the_ports() -> None:
    daemon = await FakeDaemon.start()
    backend = backend_for(daemon)
    await backend.start()
    assert (await backend.request(Offer(CallKey("x", "a"), SDP))).ok
    assert (await backend.request(Answer(CallKey("x", "a", "b"), SDP.replace(b"4000", b"4002")))).ok
    # the kept party offers next (no SDP from the new party): its last SDP is offered to the new one
    replaced = await backend.request(ReplaceParty("x", "b", "c", None, kept_tag="a"))
    assert replaced.ok and replaced.sdp
    sent = [bdecode(data.partition(b" ")[2]) for _, data in daemon.received]
    offer, delete = [m for m in sent if isinstance(m, dict) and m["command"] in (b"offer", b"delete")][-2:]
    assert isinstance(offer, dict) and isinstance(delete, dict)
    assert (offer["from-tag"], offer["to-tag"], offer["sdp"]) == (b"a", b"c", SDP)
    assert b"port-latching" in offer["flags"]  # type: ignore[operator]
    assert (delete["from-tag"], delete["delete-delay"]) == (b"b", 0)
    # later offers and answers of the call keep the kept party's ports too
    assert (await backend.request(Answer(CallKey("x", "a", "c"), SDP))).ok
    last = bdecode(daemon.received[-1][1].partition(b" ")[2])
    assert isinstance(last, dict) and b"port-latching" in last["flags"]  # type: ignore[operator]
    # without kept_tag the backend finds the one other party it knows
    assert (await backend.request(ReplaceParty("x", "c", "d", SDP))).ok
    last_offer = [m for m in (bdecode(d.partition(b" ")[2]) for _, d in daemon.received)
                  if isinstance(m, dict) and m["command"] == b"offer"][-1]
    assert isinstance(last_offer, dict) and (last_offer["from-tag"], last_offer["to-tag"]) == (b"d", b"a")
    unknown = await backend.request(ReplaceParty("nobody", "b", "c", SDP, kept_tag="a"))
    assert not unknown.ok and "no media session for call nobody" in (unknown.error or "")
    assert (await backend.request(Delete("x"))).ok and backend.sessions == 0
    await backend.stop()
    daemon.close()


WEB_SDP = (b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\n"
           b"c=IN IP4 127.0.0.1\r\na=ice-ufrag:x\r\na=ice-pwd:yyyyyyyyyyyyyyyyyyyyyy\r\n"
           b"a=fingerprint:sha-256 AA:BB\r\na=setup:actpass\r\na=mid:0\r\na=rtcp-mux\r\n")
WEB_FLAGS = MediaFlags(transport_protocol=TransportProtocol.UDP_TLS_RTP_SAVPF, ice=Ice.FORCE)


async def test_a_transfers_new_webrtc_party_gets_the_certificate_under_another_fingerprint_hash() -> None:
    """rtpengine gives every leg one certificate: a browser moved onto a new leg (the
    target of an attended transfer, which offers in its re-INVITE's 2xx) is given it
    hashed another way (`DTLS-fingerprint`).  rtpengine 10.5 takes that flag only in an
    offer for a leg without a hash yet, so a priming offer (the kept party's last SDP,
    from the kept tag to the new one) comes first; a later transfer of the same peer
    connection (its own fingerprint) gets yet another hash."""
    daemon = await FakeDaemon.start()
    backend = backend_for(daemon)
    await backend.start()

    def sent() -> list[dict[str, Any]]:
        out = [bdecode(data.partition(b" ")[2]) for _, data in daemon.received]
        return [m for m in out if isinstance(m, dict) and m["command"] != b"ping"]

    kept_sdp = WEB_SDP.replace(b"AA:BB", b"0A:0A")
    assert (await backend.request(Offer(CallKey("x", "a"), WEB_SDP.replace(b"AA:BB", b"01:01"), WEB_FLAGS))).ok
    assert (await backend.request(Answer(CallKey("x", "a", "b"), kept_sdp, WEB_FLAGS))).ok
    before = len(sent())
    target = WEB_SDP.replace(b"AA:BB", b"0C:0C")
    assert (await backend.request(ReplaceParty("x", "a", "c", target, WEB_FLAGS, kept_tag="b"))).ok
    prime, offer, delete = sent()[before:]
    assert (prime["command"], prime["from-tag"], prime["to-tag"], prime["sdp"]) == (b"offer", b"b", b"c", kept_sdp)
    assert prime["DTLS-fingerprint"] == b"sha-384" and b"port-latching" in prime["flags"]
    assert prime["ICE-lite"] == b"forward"  # the new party restarts ICE as the controlling agent
    assert prime["transport-protocol"] == b"UDP/TLS/RTP/SAVPF" and prime["ICE"] == b"force"
    assert (offer["from-tag"], offer["to-tag"], offer["sdp"]) == (b"c", b"b", target)
    assert "DTLS-fingerprint" not in offer  # that offer's SDP goes to the kept party: its hash unchanged
    assert (delete["command"], delete["from-tag"]) == (b"delete", b"a")
    # the kept party's answer: its reply goes to the new party, with the new party's hash
    assert (await backend.request(Answer(CallKey("x", "c", "b"), kept_sdp, WEB_FLAGS))).ok
    assert sent()[-1]["DTLS-fingerprint"] == b"sha-384"
    # the same browser (its fingerprint) moved again, in another call: another hash
    assert (await backend.request(Offer(CallKey("y", "d"), WEB_SDP.replace(b"AA:BB", b"0D:0D"), WEB_FLAGS))).ok
    assert (await backend.request(Answer(CallKey("y", "d", "e"), WEB_SDP, WEB_FLAGS))).ok
    assert (await backend.request(ReplaceParty("y", "d", "f", target, WEB_FLAGS, kept_tag="e"))).ok
    assert [m for m in sent() if m["command"] == b"offer"][-2]["DTLS-fingerprint"] == b"sha-512"
    # a plain phone as the new party: no priming offer, no hash
    assert (await backend.request(Offer(CallKey("z", "g"), SDP))).ok
    assert (await backend.request(Answer(CallKey("z", "g", "h"), SDP))).ok
    before = len(sent())
    assert (await backend.request(ReplaceParty("z", "g", "i", SDP, kept_tag="h"))).ok
    assert [m["command"] for m in sent()[before:]] == [b"offer", b"delete"]
    assert "DTLS-fingerprint" not in sent()[before]
    for call in ("x", "y", "z"):
        assert (await backend.request(Delete(call))).ok
    assert backend._hashes == {}
# ---- statistics of a whole call's delete, play media ------------------------------------------


def _stream(address: str, port: int, packets: int, rtcp: bool = False, ssrc: int | None = None) -> dict[str, Any]:
    stream: dict[str, Any] = {
        "local port": 30000, "endpoint": {"family": "IPv4", "address": address, "port": port},
        "flags": ["RTCP" if rtcp else "RTP", "filled"],
        "stats": {"packets": packets, "bytes": packets * 172, "errors": 0},
    }
    if ssrc is not None:
        stream["SSRC"] = ssrc
    return stream


QUERY_REPLY: dict[str, Any] = {  # what rtpengine 10.5's query answers (trimmed), with RTCP statistics for one SSRC
    "result": "ok",
    "tags": {
        "ft": {"tag": "ft", "medias": [{"index": 1, "streams": [_stream("192.0.2.7", 4000, 150, ssrc=1111),
                                                                _stream("192.0.2.7", 4001, 3, rtcp=True)]}]},
        "tt": {"tag": "tt", "medias": [{"index": 1, "streams": [_stream("192.0.2.8", 4002, 149, ssrc=2222),
                                                                _stream("192.0.2.8", 4003, 0, rtcp=True)]}]},
    },
    "SSRC": {"1111": {"packets lost": 2, "MOS progression": {"entries": [{"packet loss": 1, "jitter": 3}]}}},
}


async def test_a_whole_calls_delete_carries_the_statistics_of_a_query_just_before() -> None:
    """rtpengine 10.5 answers the delete of a whole call without statistics: the backend
    asks `query` first and puts its legs into the delete's reply; the seam's
    `party_stats` makes the CDR's `media_stats` of them (caller, callee)."""

    def reply(msg: dict[str, Any]) -> dict[str, Any] | None:
        if msg.get("command") == b"query":
            return QUERY_REPLY
        return rtpengine_like(msg)

    daemon = await FakeDaemon.start(reply)
    backend = backend_for(daemon)
    await backend.start()
    assert (await backend.request(offer("s1"))).ok
    deleted = await backend.request(Delete("s1"))
    assert deleted.ok and [c for c in daemon.commands() if c != "ping"] == ["offer", "query", "delete"]
    assert party_stats(deleted.legs, "ft", "tt") == {
        "caller": {"packets": 150, "bytes": 25800, "errors": 0, "packets_lost": 2, "loss": 0.01, "jitter_ms": 3.0,
                   "address": "192.0.2.7:4000"},
        "callee": {"packets": 149, "bytes": 25628, "errors": 0, "address": "192.0.2.8:4002"},
    }
    # a branch delete (one tag) is not queried; a query that fails leaves the delete as it is
    assert (await backend.request(offer("s2"))).ok
    assert (await backend.request(Delete("s2", from_tag="ft"))).ok
    assert daemon.commands()[-1] == "delete" and daemon.commands()[-2] == "offer"
    daemon.reply = lambda msg: {"result": "error", "error-reason": "Unknown call-id"} if msg.get("command") == b"query" \
        else rtpengine_like(msg)
    deleted = await backend.request(Delete("s2"))
    assert deleted.ok and deleted.legs == () and backend.sessions == 0
    await backend.stop()
    daemon.close()


async def test_play_media_renders_a_named_sound_and_blocks_the_other_party_until_stop() -> None:
    """`PlayMedia(file="test-1k")` goes out as `play media` with the sound as a µ-law WAV
    blob, after `block media` of the other party; `StopMedia` is `stop media` then
    `unblock media`.  repeat=0 (until stopped) becomes a repeat count covering hours."""
    daemon = await FakeDaemon.start(lambda msg: {"result": "ok", "duration": 1000} if msg.get("command") == b"play media"
                                    else rtpengine_like(msg))
    backend = backend_for(daemon, sounds=RtpengineSounds(Prompts()).resolve)
    await backend.start()
    assert (await backend.request(offer("p1"))).ok
    assert (await backend.request(Answer(CallKey("p1", "ft", "tt"), SDP))).ok
    played = await backend.request(PlayMedia(CallKey("p1", "ft"), file="test-1k", repeat=0))
    assert played.ok and played.duration_ms == 1000
    assert (await backend.request(StopMedia(CallKey("p1", "ft")))).ok
    sent = [bdecode(data.partition(b" ")[2]) for _, data in daemon.received]
    sent = [m for m in sent if isinstance(m, dict) and m["command"] != b"ping"]
    assert [(m["command"], m.get("from-tag")) for m in sent[2:]] == [
        (b"block media", b"tt"), (b"play media", b"ft"), (b"stop media", b"ft"), (b"unblock media", b"tt")]
    play = sent[3]
    assert isinstance(play, dict) and "file" not in play
    blob = play["blob"]
    assert isinstance(blob, bytes) and blob[:4] == b"RIFF" and blob[8:12] == b"WAVE" and len(blob) == 8000 + 58
    assert play["repeat-times"] == LOOP_S  # a 1 s sound, looped for LOOP_S
    missing = await backend.request(PlayMedia(CallKey("p1", "ft"), file="no-such-prompt"))
    assert not missing.ok and "no prompt 'no-such-prompt'" in (missing.error or "")
    await backend.stop()
    daemon.close()
