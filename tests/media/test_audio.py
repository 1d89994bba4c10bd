"""G.711 against the reference tables, RFC 4733 payloads, WAV files, tones."""

from __future__ import annotations

import hashlib
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vivait_sip.media.audio import g711
from vivait_sip.media.audio.dtmf import (
    DtmfDetector,
    decode_event,
    encode_event,
    event_code,
    event_name,
    event_packets,
)
from vivait_sip.media.audio.tones import BUILTIN, tone
from vivait_sip.media.audio.wav import WavWriter, read_wav, write_wav

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
CODES = bytes(range(256))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_g711_is_bit_identical_to_audioop() -> None:
    """The digests are those of Python 3.11's audioop (lin2ulaw, lin2alaw, ulaw2lin,
    alaw2lin) over every 16-bit sample and every code: the same tables, without it."""
    assert sha(g711.encode(ALL_SAMPLES, "PCMU")) == "81d633c9e6972a18c74a58720b96cb8ca0bdd096d4060b646dd708c3b846019a"
    assert sha(g711.encode(ALL_SAMPLES, "PCMA")) == "38488f6fd710f4686360edc4d38639f96c491595ef93f8eb8d62d5e07ca6ce7b"
    assert sha(g711.decode(CODES, "PCMU").astype("<i2").tobytes()) == "3dab54339e520bb2c924826e3b72a917a2b612e9fd12fc867500f1d983a75827"
    assert sha(g711.decode(CODES, "PCMA").astype("<i2").tobytes()) == "e04788d110e58ff8c70c93b8480190d973e3b67876b6119abbaec766cc75c174"


def test_g711_known_values() -> None:
    assert g711.decode(b"\x00\x80\xff\x7f", "PCMU").tolist() == [-32124, 32124, 0, 0]
    assert g711.decode(b"\xd5\x55\xaa\x2a", "PCMA").tolist() == [8, -8, 32256, -32256]
    assert g711.encode([0, 32767, -32768], "PCMU") == b"\xff\x80\x00"
    assert g711.encode([0, 32767, -32768], "PCMA") == b"\xd5\xaa\x2a"
    assert g711.encode([1000], "PCMU") == b"\xce" and g711.encode([-1000], "PCMA") == b"\x7a"


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_g711_round_trips(codec: g711.Codec) -> None:
    decoded = g711.decode(CODES, codec)
    assert g711.encode(decoded, codec) == CODES or codec == "PCMU"  # µ-law has two zeros
    assert np.array_equal(g711.decode(g711.encode(decoded, codec), codec), decoded)
    err = np.abs(g711.decode(g711.encode(ALL_SAMPLES, codec), codec).astype(int) - ALL_SAMPLES.astype(int))
    # logarithmic quantisation: error within half a step of the segment
    assert np.all(err <= np.maximum(16, np.abs(ALL_SAMPLES.astype(int)) // 16 + 64))


def test_dtmf_payloads() -> None:
    assert encode_event(5, 800, end=True, volume=10) == b"\x05\x8a\x03\x20"
    event = decode_event(b"\x0b\x0a\x01\x40")
    assert event is not None and (event.digit, event.end, event.volume, event.duration) == ("#", False, 10, 320)
    assert [event_code(d) for d in "09*#AD!"] == [0, 9, 10, 11, 12, 15, 16]
    assert event_name(16) == "!" and event_name(40) == "event-40"
    with pytest.raises(ValueError):
        event_code("x")
    packets = event_packets(1, 800)
    assert [m for _, m in packets] == [True, False, False, False, False, False, False]
    assert [decode_event(p).duration for p, _ in packets] == [160, 320, 480, 640, 800, 800, 800]  # type: ignore[union-attr]
    assert [decode_event(p).end for p, _ in packets] == [False] * 4 + [True] * 3  # type: ignore[union-attr]


@given(st.lists(st.tuples(st.sampled_from("0123456789*#ABCD"), st.integers(2, 30), st.booleans()), max_size=10))
def test_detector_reports_each_event_once(events: list[tuple[str, int, bool]]) -> None:
    """Each event once, at its end; one whose end packets were lost at the next event."""
    detector = DtmfDetector()
    found = []
    ts = 0
    for digit, packets, lose_end in events:
        train = event_packets(event_code(digit), 160 * packets)
        if lose_end:
            train = train[:-3]
        for payload, _ in train:
            found += detector.feed(ts, payload)
        ts += 160 * (packets + 5)
    expected = [d for d, _, lost in events]
    if events and events[-1][2]:
        expected = expected[:-1]  # nothing came after it
    assert [f.digit for f in found] == expected
    assert all(f.ended != lost for f, (_, _, lost) in zip(found, events, strict=False))


def test_wav_round_trip_and_conversion(tmp_path: Path) -> None:
    samples = tone(440, 0.5)
    write_wav(tmp_path / "a.wav", samples)
    assert np.array_equal(read_wav(tmp_path / "a.wav"), samples)
    with wave.open(str(tmp_path / "b.wav"), "wb") as w:  # 16 kHz stereo → 8 kHz mono
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        stereo = np.repeat(tone(440, 0.5, rate=16000)[:, None], 2, axis=1)
        w.writeframes(stereo.astype("<i2").tobytes())
    converted = read_wav(tmp_path / "b.wav")
    assert abs(converted.size - 4000) <= 1
    spectrum = np.abs(np.fft.rfft(converted))
    assert abs(np.argmax(spectrum) * 8000 / converted.size - 440) < 5


def test_wav_writer_header_is_right_after_every_sync(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    writer = WavWriter(path, channels=2)
    writer.write(np.zeros((800, 2), dtype=np.int16))
    writer.sync()
    with wave.open(str(path)) as w:  # readable while still open
        assert (w.getnchannels(), w.getnframes(), w.getframerate()) == (2, 800, 8000)
    writer.write(np.ones((200, 2), dtype=np.int16))
    writer.close()
    with wave.open(str(path)) as w:
        assert w.getnframes() == 1000
    writer.close()  # idempotent


def test_builtin_sounds_exist() -> None:
    for name, make in BUILTIN.items():
        samples = make()
        assert samples.dtype == np.int16 and samples.size > 800, name
