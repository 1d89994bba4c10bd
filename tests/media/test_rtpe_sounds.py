"""`RtpengineSounds`: a named prompt or music-on-hold class made into what rtpengine's
`play media` takes — a µ-law WAV blob when it fits in one NG datagram, else Ogg/Opus,
else a file under `media_dir` on the daemon's machine, else refused (a prompt) or cut
to fit and looped (music on hold).  The real daemon plays each form:
tests/media/test_rtpengine.py."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vivait_sip.media.audio import g711
from vivait_sip.media.audio.tones import tone
from vivait_sip.media.audio.wav import write_wav
from vivait_sip.media.control import CallKey, PlayMedia
from vivait_sip.media.prompts import Prompts
from vivait_sip.media.rtpe_sounds import LOOP_S, RtpengineSounds, SoundError, ulaw_wav

KEY = CallKey("c1", "caller-tag")


def test_the_wav_blob_is_mulaw_8khz_mono_with_sizes_that_agree() -> None:
    pcmu = g711.encode(tone(1000, 0.5), "PCMU")
    wav = ulaw_wav(pcmu)
    assert wav[:4] == b"RIFF" and struct.unpack_from("<I", wav, 4)[0] == len(wav) - 8 and wav[8:12] == b"WAVE"
    tag, channels, rate, byte_rate, align, bits = struct.unpack_from("<HHIIHH", wav, 20)
    assert (tag, channels, rate, byte_rate, align, bits) == (7, 1, 8000, 8000, 1, 8)
    assert wav.endswith(pcmu) and struct.unpack_from("<I", wav, len(wav) - len(pcmu) - 4)[0] == len(pcmu)


def test_each_form_in_turn(tmp_path: Path) -> None:
    write_wav(tmp_path / "short.wav", tone(440, 2.0))
    write_wav(tmp_path / "long.wav", tone(440, 20.0))
    sounds = RtpengineSounds(Prompts([tmp_path]))
    short = sounds.resolve(PlayMedia(KEY, file="short"))
    assert short.file is None and short.blob is not None and short.blob[8:12] == b"WAVE" and short.repeat == 1
    long = sounds.resolve(PlayMedia(KEY, file="long", repeat=0))  # 160 kB of µ-law: Ogg/Opus instead
    assert long.blob is not None and long.blob[:4] == b"OggS" and len(long.blob) <= 60_000
    assert long.repeat == LOOP_S // 20
    passed = PlayMedia(KEY, file="/var/lib/sounds/x.wav")
    assert sounds.resolve(passed) is passed  # a path on the daemon's machine, as asked

    no_opus = RtpengineSounds(Prompts([tmp_path]), opus=False)
    with pytest.raises(SoundError, match="too long for one NG message"):
        no_opus.resolve(PlayMedia(KEY, file="long"))
    cut = no_opus.resolve(PlayMedia(KEY, file="moh:default", repeat=0))  # the 12 s built-in tune: cut to fit, looped
    assert cut.blob is not None and len(cut.blob) <= 60_000 and cut.repeat > 1
    with_dir = RtpengineSounds(Prompts([tmp_path]), opus=False, media_dir="/srv/rtpengine/sounds/")
    assert with_dir.resolve(PlayMedia(KEY, file="long")).file == "/srv/rtpengine/sounds/long.wav"
    moh = with_dir.resolve(PlayMedia(KEY, file="moh:default", repeat=0))
    assert moh.file == "/srv/rtpengine/sounds/moh/default.wav" and moh.blob is None and moh.repeat == LOOP_S // 12
    assert with_dir.resolve(PlayMedia(KEY, file="short")).blob is not None  # still a blob when it fits
    with pytest.raises(SoundError, match="no prompt"):
        sounds.resolve(PlayMedia(KEY, file="nothing-here"))
