"""The pure parts of b2bua/mediawire.py: the placeholder party's answer (and, to a
late-offer caller, its offer) of a call the B2BUA answers itself, and DTMF read from SIP
INFO bodies."""

from __future__ import annotations

from vivait_sip.b2bua.mediawire import (
    PLACEHOLDER_OFFER,
    info_digit,
    placeholder_address,
    placeholder_answer,
)
from vivait_sip.sip.message import Request
from vivait_sip.sip.sdp import parse_sdp

OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 9 8 0 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
    b"m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
)


def test_the_placeholder_answers_the_first_g711_codec_at_an_unspecified_address() -> None:
    answer = placeholder_answer(OFFER)
    assert answer is not None
    parsed = parse_sdp(answer)
    assert parsed.connection is not None and parsed.connection.address == "0.0.0.0"
    audio, video = parsed.media
    assert audio.port == 9 and audio.formats == ["8", "101"]  # PCMA (the caller's first G.711), DTMF kept
    assert video.port == 0  # other streams rejected
    assert placeholder_answer(OFFER.replace(b"8 0 101", b"101").replace(b"PCM", b"XXX")) is None
    assert placeholder_answer(b"not sdp") is None


def test_the_placeholder_offer_to_a_late_offer_caller_is_g711_at_an_unspecified_address() -> None:
    parsed = parse_sdp(PLACEHOLDER_OFFER)
    assert parsed.connection is not None and parsed.connection.address == "0.0.0.0"
    [audio] = parsed.media
    assert audio.proto == "RTP/AVP" and audio.formats == ["0", "8", "101"]
    assert {c.encoding for c in audio.codecs()} == {"PCMU", "PCMA", "telephone-event"}


def info(content_type: str, body: bytes) -> Request:
    req = Request(method="INFO", uri_text="sip:6141@pbx")
    req.headers.add("Content-Type", content_type)
    req.body = body
    return req


def test_dtmf_in_sip_info_bodies() -> None:
    assert info_digit(info("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n")) == ("5", 160)
    assert info_digit(info("application/dtmf-relay", b"Signal= #\r\n")) == ("#", None)
    assert info_digit(info("application/dtmf-relay", b"Signal=11\r\nDuration=100\r\n")) == ("#", 100)
    assert info_digit(info("Application/DTMF", b"7\r\n")) == ("7", None)
    assert info_digit(info("application/dtmf", b"a")) == ("A", None)
    for ctype, body in (("application/dtmf-relay", b"Signal=55"), ("application/dtmf", b"12"),
                        ("application/media_control+xml", b"<x/>"), ("application/dtmf-relay", b"Duration=1")):
        assert info_digit(info(ctype, body)) == (None, None)


def test_the_placeholder_for_rtpengine_is_the_discard_port_of_its_loopback() -> None:
    """rtpengine 10.5 hands a zero address on as `a=sendonly` (a hold): with it the
    placeholder is 127.0.0.1:9 instead (nothing leaves the daemon's machine)."""
    assert placeholder_address("builtin") == "0.0.0.0" and placeholder_address("rtpengine") == "127.0.0.1"
    answer = placeholder_answer(OFFER, placeholder_address("rtpengine"))
    assert answer is not None and b"c=IN IP4 127.0.0.1" in answer and b"m=audio 9 " in answer
