"""WebRTC ↔ plain RTP anchoring: the policy anchors such calls, each SDP gets the flags
of the side it goes to (NG as rtpengine takes them), and the real rtpengine daemon turns
a browser's DTLS-SRTP offer into plain RTP for a phone and a phone's answer into DTLS-SRTP
with ICE for the browser."""

from __future__ import annotations

from dataclasses import dataclass, field

from rtpengine_proc import Rtpengine

from vivait_sip.media.anchor import (
    AnchoringPolicy,
    AnchoringSeam,
    flags_by_side,
    is_webrtc_sdp,
    webrtc_flags,
    webrtc_sides,
)
from vivait_sip.media.control import Ice, MediaFlags, Replace, RtcpMux, TransportProtocol
from vivait_sip.media.ng import RtpengineBackend, to_ng
from vivait_sip.sip.peer import Peer

BROWSER_OFFER = (
    b"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    b"a=group:BUNDLE 0\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS stream\r\n"
    b"m=audio 40000 UDP/TLS/RTP/SAVPF 111 0 8 126\r\nc=IN IP4 127.0.0.1\r\n"
    b"a=rtcp:9 IN IP4 0.0.0.0\r\n"
    b"a=candidate:1 1 udp 2113937151 127.0.0.1 40000 typ host generation 0\r\n"
    b"a=ice-ufrag:Ab3d\r\na=ice-pwd:4f9hXmJ6cT1pZKq8dW2vEy0r\r\na=ice-options:trickle\r\n"
    b"a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\n"
    b"a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=msid:stream track\r\na=rtcp-mux\r\n"
    b"a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:126 telephone-event/8000\r\n"
    b"a=ssrc:1001 cname:webfon\r\n"
)
PHONE_ANSWER = (
    b"v=0\r\no=baresip 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 41000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


@dataclass
class FakeRequest:
    body: bytes
    call_id: str = "webrtc-call-1"

    @property
    def from_(self) -> FakeFrom:
        return FakeFrom()


@dataclass
class FakeFrom:
    tag: str = "browser-tag"


@dataclass
class FakeDest:
    destinations: tuple[Peer, ...]


@dataclass
class FakeLeg:
    dest: FakeDest


@dataclass
class FakeCall:
    request: FakeRequest
    peer: Peer
    placing: tuple[FakeDest, ...] = ()
    winner: FakeLeg | None = None
    call_uuid: str = "0123456789abcdef0123456789abcdef"
    rule: str | None = None
    user: str | None = "6140"
    callee_user: str | None = "6141"
    extra: dict[str, object] = field(default_factory=dict)


def browser_to_phone() -> FakeCall:
    return FakeCall(FakeRequest(BROWSER_OFFER), Peer("wss", "127.0.0.1", 50000, 7),
                    placing=(FakeDest((Peer("udp", "127.0.0.1", 5062),)),))


def phone_to_browser() -> FakeCall:
    return FakeCall(FakeRequest(PHONE_ANSWER), Peer("udp", "127.0.0.1", 5062),
                    placing=(FakeDest((Peer("wss", "127.0.0.1", 50000, 7),)),))


def test_sides_and_the_policy() -> None:
    assert is_webrtc_sdp(BROWSER_OFFER) and not is_webrtc_sdp(PHONE_ANSWER)
    assert webrtc_sides(browser_to_phone()) == (True, False)
    assert webrtc_sides(phone_to_browser()) == (False, True)
    policy = AnchoringPolicy()
    assert policy.decide(browser_to_phone()) == "webrtc"
    assert policy.decide(phone_to_browser()) == "webrtc"
    both = phone_to_browser()
    both.peer = Peer("wss", "127.0.0.1", 50001, 8)
    # browser to browser: anchored too, so each browser's one ICE/DTLS peer is the relay
    # and a transfer replaces the party behind it, never the browser's peer
    assert policy.decide(both) == "webrtc"
    assert webrtc_sides(both) == (True, True)
    assert AnchoringPolicy(webrtc=False).decide(browser_to_phone()) is None
    assert not policy.could_anchor()  # no backend started for this alone (the embedded demo is unchanged)


def test_flags_per_direction_in_ng() -> None:
    base = MediaFlags(ice=Ice.REMOVE, replace=(Replace.ORIGIN, Replace.SESSION_CONNECTION))
    browser = webrtc_flags(base, True)
    assert (browser.transport_protocol, browser.ice, browser.dtls) == (TransportProtocol.UDP_TLS_RTP_SAVPF, Ice.FORCE, None)
    assert browser.rtcp_mux == (RtcpMux.OFFER, RtcpMux.REQUIRE) and browser.replace == base.replace
    phone = webrtc_flags(base, False)
    assert (phone.transport_protocol, phone.ice, phone.dtls, phone.rtcp_mux) == (TransportProtocol.RTP_AVP, Ice.REMOVE, None, (RtcpMux.DEMUX,))
    flags_for = flags_by_side(lambda: base)
    call = browser_to_phone()
    assert flags_for(call, "callee") == phone and flags_for(call, "caller") == browser
    plain = FakeCall(FakeRequest(PHONE_ANSWER), Peer("udp", "127.0.0.1", 5062), placing=(FakeDest((Peer("udp", "127.0.0.1", 5063),)),))
    assert flags_for(plain, "callee") == base
    from vivait_sip.media.control import CallKey, Offer

    ng = to_ng(Offer(CallKey("c", "a"), BROWSER_OFFER, phone))
    assert ng["transport-protocol"] == "RTP/AVP" and ng["ICE"] == "remove" and "DTLS" not in ng
    assert ng["rtcp-mux"] == ["demux"] and "SDES-off" in ng["flags"]  # type: ignore[operator]
    ng = to_ng(Offer(CallKey("c", "a"), PHONE_ANSWER, browser))
    assert ng["transport-protocol"] == "UDP/TLS/RTP/SAVPF" and ng["ICE"] == "force" and "DTLS" not in ng
    assert ng["rtcp-mux"] == ["offer", "require"]


async def test_rtpengine_bridges_a_browser_offer_and_a_phone_answer() -> None:
    daemon = await Rtpengine().start()
    backend = RtpengineBackend([daemon.address])
    await backend.start()
    try:
        call = browser_to_phone()
        seam = AnchoringSeam(backend, AnchoringPolicy(), flags_for=flags_by_side(lambda: MediaFlags(ice=Ice.REMOVE)))
        to_phone = await seam.offer(call, "callee", BROWSER_OFFER)  # type: ignore[misc]
        assert call.extra["media"] == "anchored (webrtc)"
        text = to_phone.decode()
        assert "m=audio" in text and " RTP/AVP " in text, text
        for webrtc_only in ("a=ice-ufrag", "a=fingerprint", "a=candidate", "a=setup", "UDP/TLS"):
            assert webrtc_only not in text, (webrtc_only, text)
        assert "PCMU/8000" in text
        to_browser = await seam.answer(call, "caller", PHONE_ANSWER)  # type: ignore[misc]
        text = to_browser.decode()
        assert "UDP/TLS/RTP/SAVPF" in text, text
        for webrtc_needs in ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=candidate:", "a=rtcp-mux", "a=setup:"):
            assert webrtc_needs in text, (webrtc_needs, text)
        release = seam.release(call)
        assert release is not None
        await release
    finally:
        await backend.stop()
        daemon.stop()
