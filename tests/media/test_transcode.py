"""Opus ↔ G.711 (media/transcode.py): the offer to the phone gains G.711 only when the
WebRTC client has none, the answer to the client names its Opus, and a tone survives
both directions with timestamps scaled and sequence numbers kept."""

from __future__ import annotations

import struct

import numpy as np

from vivait_sip.media import transcode
from vivait_sip.media.audio import g711
from vivait_sip.media.sdpinfo import parse, stream_infos

OPUS_ONLY = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 110\r\n"
             "c=IN IP4 127.0.0.1\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
             "a=rtpmap:110 telephone-event/48000\r\n")
WITH_G711 = OPUS_ONLY.replace("111 110\r\n", "111 0 110\r\n").replace("a=rtpmap:110", "a=rtpmap:0 PCMU/8000\r\na=rtpmap:110")
PHONE = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 101\r\n"
         "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n")


def tone(hz: float, start: int, n: int = 160) -> np.ndarray:
    return (8000 * np.sin(2 * np.pi * hz * np.arange(start, start + n) / 8000)).astype(np.int16)


def peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / 8000)[int(np.argmax(spectrum))])


def test_only_an_opus_only_client_gets_g711_added() -> None:
    parsed = parse(OPUS_ONLY)
    out = transcode.offer_with_g711(parsed, stream_infos(parsed))
    assert out is not None
    media = out.media[0]
    assert media.formats[:2] == ["111", "110"] and {"0", "8"} <= set(media.formats)
    assert any(c.encoding == "telephone-event" and c.clock_rate == 8000 for c in media.codecs())
    parsed = parse(WITH_G711)
    assert transcode.offer_with_g711(parsed, stream_infos(parsed)) is None


def test_the_plan_and_the_answer_in_opus() -> None:
    client = parse(OPUS_ONLY)
    phone = parse(PHONE)
    pair = transcode.plan(stream_infos(client)[0], client.media[0], stream_infos(phone)[0])
    assert pair is not None
    to_phone, _ = pair
    assert (to_phone.g711_pt, to_phone.codec, to_phone.dtmf) == (8, "PCMA", (110, 101))
    transcode.answer_in_opus(phone, 0, client.media[0])
    assert phone.media[0].formats == ["111", "110"]
    assert {c.encoding for c in phone.media[0].codecs()} == {"opus", "telephone-event"}
    with_g711 = parse(WITH_G711)
    assert transcode.plan(stream_infos(with_g711)[0], with_g711.media[0], stream_infos(parse(PHONE))[0]) is None


def test_a_tone_survives_g711_to_opus_and_back() -> None:
    to_opus = transcode.G711ToOpus(8, "PCMA", 111)
    to_g711 = transcode.OpusToG711(111, 8, "PCMA")
    heard: list[np.ndarray] = []
    for i in range(50):
        packet = struct.pack("!BBHII", 0x80, 8, 1000 + i, 160 * i, 0xABC) + g711.encode(tone(700, 160 * i), "PCMA")
        opus = to_opus.convert(packet)
        assert opus is not None and opus[1] & 0x7F == 111
        seq, ts = struct.unpack_from("!HI", opus, 2)
        assert ts == 960 * i and seq == 1000 + i
        back = to_g711.convert(opus)
        assert back is not None and back[1] & 0x7F == 8 and struct.unpack_from("!I", back, 4)[0] == 160 * i
        heard.append(g711.decode(back[12:], "PCMA"))
    assert abs(peak_hz(np.concatenate(heard[10:])) - 700) < 20


def test_telephone_events_are_mapped_between_clocks() -> None:
    to_client = transcode.G711ToOpus(8, "PCMA", 111, dtmf=(101, 110))
    event = struct.pack("!BBHII", 0x80, 0x80 | 101, 7, 800, 1) + bytes([5, 10]) + (320).to_bytes(2, "big")
    out = to_client.convert(event)
    assert out is not None and out[1] == 0x80 | 110
    assert struct.unpack_from("!I", out, 4)[0] == 4800 and int.from_bytes(out[14:16], "big") == 1920
