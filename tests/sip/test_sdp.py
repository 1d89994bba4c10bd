"""Tests for SDP parsing, serialisation and RFC 3264 answer generation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vivait_sip.sip.sdp import (
    Connection,
    Direction,
    RtpMap,
    SdpError,
    build_answer,
    make_reoffer,
    parse_sdp,
)


def crlf(text: str) -> bytes:
    """Join lines with CRLF the way a UA sends them."""
    return ("\r\n".join(text.strip().splitlines()) + "\r\n").encode()


SIPP_OFFER = crlf(
    """
v=0
o=user1 53655765 2353687637 IN IP4 192.0.2.10
s=-
c=IN IP4 192.0.2.10
t=0 0
m=audio 6000 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
"""
)

BARESIP_OFFER = crlf(
    """
v=0
o=- 1418330286 3405627218 IN IP4 198.51.100.7
s=-
c=IN IP4 198.51.100.7
t=0 0
a=tool:baresip 3.10.1
m=audio 10328 RTP/AVP 96 9 0 8 97 98
b=AS:64
a=rtpmap:96 opus/48000/2
a=fmtp:96 stereo=1;sprop-stereo=1
a=rtpmap:9 G722/8000
a=rtpmap:97 telephone-event/48000
a=rtpmap:98 telephone-event/8000
a=fmtp:97 0-15
a=fmtp:98 0-15
a=rtcp-mux
a=sendrecv
a=label:1
"""
)

WEBRTC_OFFER = crlf(
    """
v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
a=extmap-allow-mixed
a=msid-semantic: WMS stream1
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:1 1 udp 2122260223 192.168.1.20 54321 typ host generation 0 network-id 1
a=ice-ufrag:EsAw
a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y
a=ice-options:trickle
a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=sendrecv
a=msid:stream1 track1
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:3735928559 cname:4TOk42mSjXCkVIa6
"""
)

HOLD_OFFER = crlf(
    """
v=0
o=user1 53655765 2353687638 IN IP4 192.0.2.10
s=-
c=IN IP4 192.0.2.10
t=0 0
m=audio 6000 RTP/AVP 0 101
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=sendonly
"""
)

MULTI_MEDIA_OFFER = crlf(
    """
v=0
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com
s=
c=IN IP4 host.atlanta.example.com
t=0 0
a=recvonly
m=audio 49170 RTP/AVP 0 8 97
a=rtpmap:97 iLBC/8000
m=video 51372 RTP/AVP 31 32
a=rtpmap:31 H261/90000
a=rtpmap:32 MPV/90000
m=audio 49180 RTP/AVP 8
c=IN IP4 203.0.113.9
a=inactive
"""
)

ALL_OFFERS = [SIPP_OFFER, BARESIP_OFFER, WEBRTC_OFFER, HOLD_OFFER, MULTI_MEDIA_OFFER]

G711 = [("PCMU", 8000), ("PCMA", 8000)]


class TestParse:
    def test_sipp_offer_fields(self) -> None:
        sdp = parse_sdp(SIPP_OFFER)
        assert sdp.version == 0
        assert sdp.origin.username == "user1"
        assert sdp.origin.session_id == "53655765"
        assert sdp.origin.session_version == 2353687637
        assert sdp.origin.address == "192.0.2.10"
        assert sdp.session_name == "-"
        assert sdp.connection == Connection("IN", "IP4", "192.0.2.10")
        assert [(t.start, t.stop) for t in sdp.timings] == [(0, 0)]
        (audio,) = sdp.media
        assert (audio.media, audio.port, audio.proto) == ("audio", 6000, "RTP/AVP")
        assert audio.formats == ["0", "8", "101"]
        assert audio.rtpmap(101) == RtpMap(101, "telephone-event", 8000)
        assert audio.fmtp(101) == "0-16"
        assert audio.fmtp(0) is None
        assert audio.ptime == 20.0
        assert audio.telephone_event_payload() == 101
        assert sdp.media_direction(audio) is Direction.SENDRECV

    def test_static_payloads_known_without_rtpmap(self) -> None:
        sdp = parse_sdp(HOLD_OFFER)
        audio = sdp.media[0]
        assert audio.rtpmap(0) == RtpMap(0, "PCMU", 8000)
        assert audio.rtpmap(8) == RtpMap(8, "PCMA", 8000)
        assert audio.rtpmap(96) is None

    def test_baresip_opus_channels_and_bandwidth(self) -> None:
        sdp = parse_sdp(BARESIP_OFFER)
        audio = sdp.media[0]
        assert audio.rtpmap(96) == RtpMap(96, "opus", 48000, 2)
        assert audio.fmtp(96) == "stereo=1;sprop-stereo=1"
        assert audio.bandwidths == [("AS", 64)]
        assert audio.telephone_event_payload(8000) == 98
        assert audio.telephone_event_payload(48000) == 97
        assert audio.ptime is None
        assert sdp.attribute("tool") == "baresip 3.10.1"
        assert audio.has_attribute("rtcp-mux")
        assert audio.attribute("rtcp-mux") is None

    def test_webrtc_offer_keeps_ice_and_dtls_attributes(self) -> None:
        sdp = parse_sdp(WEBRTC_OFFER)
        assert sdp.connection is None
        assert sdp.attribute("group") == "BUNDLE 0"
        assert sdp.attribute("msid-semantic") == " WMS stream1"
        audio = sdp.media[0]
        assert audio.proto == "UDP/TLS/RTP/SAVPF"
        assert sdp.media_connection(audio) == Connection("IN", "IP4", "0.0.0.0")
        assert audio.attribute("ice-ufrag") == "EsAw"
        assert audio.attribute("setup") == "actpass"
        assert (audio.attribute("fingerprint") or "").startswith("sha-256 D2:FA:0E")
        assert audio.attributes_named("candidate") == [
            "1 1 udp 2122260223 192.168.1.20 54321 typ host generation 0 network-id 1"
        ]
        assert [c.encoding for c in audio.codecs()] == [
            "opus",
            "red",
            "G722",
            "PCMU",
            "PCMA",
            "CN",
            "telephone-event",
            "telephone-event",
        ]

    def test_hold_offer_direction(self) -> None:
        sdp = parse_sdp(HOLD_OFFER)
        assert sdp.media_direction(sdp.media[0]) is Direction.SENDONLY

    def test_multiple_media_lines_and_media_level_connection(self) -> None:
        sdp = parse_sdp(MULTI_MEDIA_OFFER)
        assert sdp.session_name == ""
        assert [m.media for m in sdp.media] == ["audio", "video", "audio"]
        assert sdp.direction is Direction.RECVONLY
        first, video, last = sdp.media
        assert sdp.media_direction(first) is Direction.RECVONLY  # inherited
        assert sdp.media_direction(last) is Direction.INACTIVE  # overridden
        assert video.rtpmap(31) == RtpMap(31, "H261", 90000)
        assert sdp.media_connection(first) == sdp.connection
        assert sdp.media_connection(last) == Connection("IN", "IP4", "203.0.113.9")

    def test_lf_only_line_endings_accepted(self) -> None:
        lf = SIPP_OFFER.replace(b"\r\n", b"\n")
        assert parse_sdp(lf) == parse_sdp(SIPP_OFFER)
        assert parse_sdp(lf).to_bytes() == SIPP_OFFER

    def test_str_input_accepted(self) -> None:
        assert parse_sdp(SIPP_OFFER.decode()) == parse_sdp(SIPP_OFFER)

    def test_unknown_lines_and_attributes_are_kept(self) -> None:
        data = crlf(
            """
v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
t=0 0
a=x-vendor-flag
x=something odd
m=audio 4000/2 RTP/AVP 0
a=x-custom:with:colons
y=media extra
"""
        )
        sdp = parse_sdp(data)
        assert sdp.unknown_lines == [("x", "something odd")]
        assert sdp.has_attribute("x-vendor-flag")
        audio = sdp.media[0]
        assert audio.port_count == 2
        assert audio.attribute("x-custom") == "with:colons"
        assert audio.unknown_lines == [("y", "media extra")]
        assert sdp.to_bytes() == data

    def test_non_utf8_bytes_survive_round_trip(self) -> None:
        data = crlf("v=0\no=- 1 1 IN IP4 192.0.2.1\ns=caf\u00e9\nt=0 0").replace(
            "é".encode(), b"\xe9"
        )
        assert parse_sdp(data).to_bytes() == data

    def test_repeat_lines_belong_to_their_timing(self) -> None:
        data = crlf(
            """
v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
t=3034423619 3042462419
r=604800 3600 0 90000
t=0 0
z=2882844526 -1h
"""
        )
        sdp = parse_sdp(data)
        assert [t.repeats for t in sdp.timings] == [["604800 3600 0 90000"], []]
        assert sdp.time_zones == "2882844526 -1h"
        assert sdp.to_bytes() == data


@pytest.mark.parametrize("data", ALL_OFFERS)
def test_round_trip_is_byte_identical(data: bytes) -> None:
    assert parse_sdp(data).to_bytes() == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "missing v="),
        (b"o=- 1 1 IN IP4 h\r\nv=0\r\ns=-\r\n", "missing v="),
        (b"v=0\r\ns=-\r\no=- 1 1 IN IP4 h\r\n", "missing o="),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\n", "missing s="),
        (b"v=1\r\no=- 1 1 IN IP4 h\r\ns=-\r\n", "unsupported SDP version"),
        (b"v=0\r\no=- 1 IN IP4 h\r\ns=-\r\n", "o= needs 6 fields"),
        (b"v=0\r\no=- 1 x IN IP4 h\r\ns=-\r\n", "session version"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nhello\r\n", "line 4 is not of the form"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nm=audio abc RTP/AVP 0\r\n", "m= port"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nm=audio 70000 RTP/AVP 0\r\n", "out of range"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nm=audio 5000/0 RTP/AVP 0\r\n", "port count"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nm=audio 5000\r\n", "m= needs"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4\r\n", "c= needs 3 fields"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nb=AS\r\n", "b= must be"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nb=AS:fast\r\n", "b= bandwidth"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0\r\n", "t= needs 2 fields"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nr=1 2 3\r\n", "r= line before any t="),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\na=:x\r\n", "empty attribute name"),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\ns=again\r\n", "duplicate s="),
        (
            b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\nt=0 0\r\n",
            "not allowed inside an m= section",
        ),
        (
            b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 a\r\nc=IN IP4 b\r\n",
            "more than one session-level c=",
        ),
        (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=a\rb\r\n", "CR or NUL"),
        (b"v=0\r\no=- 1 99999999999999999999999 IN IP4 h\r\ns=-\r\n", "at most 20 digits"),
    ],
)
def test_malformed_input_raises_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(SdpError, match=message):
        parse_sdp(data)


def test_sdp_error_is_value_error() -> None:
    assert issubclass(SdpError, ValueError)


@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_sdp_error(data: bytes) -> None:
    try:
        sdp = parse_sdp(data)
    except SdpError:
        return
    # Whatever parses must also serialise and re-parse to the same model.
    assert parse_sdp(sdp.to_bytes()) == sdp


@given(
    st.lists(
        st.sampled_from(["v=0", "o=- 1 1 IN IP4 h", "s=-", "t=0 0", "m=audio 1 RTP/AVP 0"])
        | st.text(max_size=30),
        max_size=12,
    )
)
def test_arbitrary_line_sequences_raise_only_sdp_error(lines: list[str]) -> None:
    try:
        sdp = parse_sdp("\r\n".join(["v=0", "o=- 1 1 IN IP4 h", "s=-", *lines]))
    except SdpError:
        return
    for media in sdp.media:
        media.codecs()
        _ = media.ptime


class TestBuildAnswer:
    def test_g711_answer_keeps_offerer_payloads_and_dtmf(self) -> None:
        offer = parse_sdp(SIPP_OFFER)
        answer = build_answer(offer, "203.0.113.5", [20000], [("PCMA", 8000)], "42", 1)
        assert answer.origin.session_id == "42"
        assert answer.origin.session_version == 1
        assert answer.origin.address == "203.0.113.5"
        assert answer.connection == Connection("IN", "IP4", "203.0.113.5")
        (audio,) = answer.media
        assert (audio.port, audio.proto, audio.formats) == (20000, "RTP/AVP", ["8", "101"])
        assert audio.rtpmap(101) == RtpMap(101, "telephone-event", 8000)
        assert audio.fmtp(101) == "0-16"
        assert audio.direction() is Direction.SENDRECV
        assert parse_sdp(answer.to_bytes()) == answer

    def test_answer_uses_our_preference_order(self) -> None:
        offer = parse_sdp(SIPP_OFFER)
        answer = build_answer(
            offer, "203.0.113.5", [20000], [("PCMA", 8000), ("PCMU", 8000)], "1", 1
        )
        assert answer.media[0].formats == ["8", "0", "101"]

    def test_dynamic_payload_numbers_are_the_offerers(self) -> None:
        offer = parse_sdp(BARESIP_OFFER)
        answer = build_answer(
            offer, "203.0.113.5", [20000], [("OPUS", 48000), ("PCMU", 8000)], "1", 1
        )
        audio = answer.media[0]
        assert audio.formats == ["96", "0", "97", "98"]
        assert audio.rtpmap(96) == RtpMap(96, "opus", 48000, 2)
        assert audio.fmtp(96) == "stereo=1;sprop-stereo=1"

    def test_telephone_event_dropped_when_clock_rate_does_not_match(self) -> None:
        offer = parse_sdp(BARESIP_OFFER)
        answer = build_answer(offer, "203.0.113.5", [20000], [("PCMU", 8000)], "1", 1)
        assert answer.media[0].formats == ["0", "98"]

    def test_no_common_codec_rejects_stream(self) -> None:
        offer = parse_sdp(SIPP_OFFER)
        answer = build_answer(offer, "203.0.113.5", [20000], [("G722", 8000)], "1", 1)
        (audio,) = answer.media
        assert audio.rejected
        assert audio.formats == ["0", "8", "101"]
        assert audio.attributes == []

    def test_unsupported_proto_rejects_stream(self) -> None:
        offer = parse_sdp(WEBRTC_OFFER)
        answer = build_answer(offer, "203.0.113.5", [20000], G711, "1", 1)
        assert answer.media[0].port == 0
        assert answer.media[0].proto == "UDP/TLS/RTP/SAVPF"

    def test_proto_allow_list_is_configurable(self) -> None:
        offer = parse_sdp(WEBRTC_OFFER)
        answer = build_answer(
            offer, "203.0.113.5", [20000], G711, "1", 1, protos={"UDP/TLS/RTP/SAVPF"}
        )
        assert answer.media[0].formats == ["0", "8", "126"]

    @pytest.mark.parametrize(
        ("offered", "answered"),
        [
            ("sendrecv", Direction.SENDRECV),
            ("sendonly", Direction.RECVONLY),
            ("recvonly", Direction.SENDONLY),
            ("inactive", Direction.INACTIVE),
        ],
    )
    def test_direction_answered_per_rfc3264(self, offered: str, answered: Direction) -> None:
        offer = parse_sdp(HOLD_OFFER.replace(b"a=sendonly", f"a={offered}".encode()))
        answer = build_answer(offer, "203.0.113.5", [20000], G711, "1", 1)
        assert answer.media[0].direction() is answered
        assert answer.media[0].attributes_named(answered.value) == [None]

    def test_multiple_media_same_order_with_rejections(self) -> None:
        offer = parse_sdp(MULTI_MEDIA_OFFER)
        answer = build_answer(
            offer, "2001:db8::5", [20000, 20002, 20004], [*G711, ("iLBC", 8000)], "1", 1
        )
        assert answer.origin.addrtype == "IP6"
        assert answer.connection == Connection("IN", "IP6", "2001:db8::5")
        assert [m.media for m in answer.media] == ["audio", "video", "audio"]
        first, video, last = answer.media
        assert (first.port, first.formats) == (20000, ["0", "8", "97"])
        assert first.direction() is Direction.SENDONLY  # session-level recvonly offered
        assert video.rejected and video.formats == ["31", "32"]
        assert (last.port, last.direction()) == (20004, Direction.INACTIVE)

    def test_missing_or_zero_local_port_rejects_stream(self) -> None:
        offer = parse_sdp(MULTI_MEDIA_OFFER)
        answer = build_answer(offer, "203.0.113.5", [0], [*G711, ("H261", 90000)], "1", 1)
        assert [m.port for m in answer.media] == [0, 0, 0]

    def test_stream_rejected_by_offerer_stays_rejected(self) -> None:
        offer = parse_sdp(SIPP_OFFER.replace(b"m=audio 6000", b"m=audio 0"))
        answer = build_answer(offer, "203.0.113.5", [20000], G711, "1", 1)
        assert answer.media[0].rejected


class TestReoffer:
    def test_bumps_version_without_touching_original(self) -> None:
        ours = build_answer(parse_sdp(SIPP_OFFER), "203.0.113.5", [20000], G711, "7", 3)
        reoffer = make_reoffer(ours)
        assert reoffer.origin.session_version == 4
        assert ours.origin.session_version == 3
        assert reoffer.media == ours.media

    @pytest.mark.parametrize("direction", [Direction.SENDONLY, Direction.INACTIVE])
    def test_hold_sets_direction_on_active_streams(self, direction: Direction) -> None:
        ours = parse_sdp(MULTI_MEDIA_OFFER)
        ours.media[1].port = 0
        held = make_reoffer(ours, direction)
        assert held.origin.session_version == ours.origin.session_version + 1
        assert not held.has_attribute("recvonly")
        assert held.media_direction(held.media[0]) is direction
        assert held.media_direction(held.media[2]) is direction
        assert held.media[2].attributes_named("inactive") == (
            [None] if direction is Direction.INACTIVE else []
        )
        assert held.media[1].attributes == ours.media[1].attributes

    def test_resume_after_hold(self) -> None:
        held = make_reoffer(parse_sdp(HOLD_OFFER), Direction.SENDONLY)
        resumed = make_reoffer(held, Direction.SENDRECV)
        assert resumed.media_direction(resumed.media[0]) is Direction.SENDRECV
        assert resumed.origin.session_version == 2353687640
