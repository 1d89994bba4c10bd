"""Prompts and music on hold for rtpengine: a `PlayMedia` naming a sound becomes one
rtpengine can play.

The B2BUA asks for sounds by name (`PlayMedia(file="test-1k")`, `file="moh:CLASS"`,
`file="ringback"`): the built-in media workers look those up themselves, but rtpengine's
`play media` wants the audio (`blob`: a media file's bytes inside the NG message), a
path on the daemon's machine (`file`) or a database id.  `RtpengineSounds.resolve`
renders the named sound here (the same prompt directories, music-on-hold classes and
built-in sounds as the built-in backend: `prompts.Prompts`) and sends it as a blob:

1. a **µ-law WAV** (8 kHz mono, 8 kB a second) when it fits in `blob_max` bytes (one NG
   message is one UDP datagram: rtpengine 10.5 takes up to about 64 KiB, so about 7.5 s
   of sound);
2. else an **Ogg/Opus** file (PyAV's libopus, 16 kbit/s, about 30 s within the same
   limit) when PyAV is there;
3. else, with `media_dir` (a directory on the daemon's machine, as the daemon sees it),
   the path `media_dir/NAME.wav` (a prompt) or `media_dir/moh/CLASS.wav` (a class): the
   operator puts the files there;
4. else a prompt is refused with the reason, and a music-on-hold class plays its first
   `blob_max` bytes in a loop (logged: `event=moh_truncated`).

Both rtpengine 10.5 formats were measured against the Debian daemon (its ffmpeg decodes
µ-law WAV and Ogg/Opus; a 65 KiB datagram is refused: "Message too long").  A `PlayMedia`
with `repeat=0` (until stopped) becomes `repeat-times` covering `LOOP_S` (rtpengine 10.5
has no "forever"); `StopMedia` (a resume, the call's delete) ends it earlier.  A `blob`,
or a `file` that is an absolute path (a file on the daemon's machine, chosen by the
caller), passes through unchanged.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import threading
from collections import OrderedDict
from dataclasses import replace

import numpy as np

from .audio import g711
from .control import PlayMedia
from .prompts import PromptError, Prompts

log = logging.getLogger("vivait_sip.media")

MOH = "moh:"  # PlayMedia(file="moh:CLASS"): a music-on-hold class (b2bua.mediawire.MOH)
BLOB_MAX = 60_000  # bytes of sound in one NG message over UDP (rtpengine 10.5 refused 65,658)
LOOP_S = 4 * 3600  # repeat=0 ("until stopped"): rtpengine loops this long at most
OPUS_BITRATE = 16_000
CACHE_SIZE = 32


class SoundError(LookupError):
    """A sound that cannot be played through rtpengine (the sentence says why)."""


def ulaw_wav(pcmu: bytes) -> bytes:
    """A WAV file (WAVE_FORMAT_MULAW, 8 kHz mono) holding G.711 µ-law bytes."""
    fmt = struct.pack("<4sIHHIIHHH", b"fmt ", 18, 7, 1, 8000, 8000, 1, 8, 0)
    fact = struct.pack("<4sII", b"fact", 4, len(pcmu))
    data = struct.pack("<4sI", b"data", len(pcmu)) + pcmu
    body = b"WAVE" + fmt + fact + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def ogg_opus(pcmu: bytes, bitrate: int = OPUS_BITRATE) -> bytes | None:
    """An Ogg/Opus file of the same sound (None when PyAV or its libopus is missing)."""
    try:
        import av
    except ImportError:  # pragma: no cover - PyAV is a dependency
        return None
    samples = g711.decode(pcmu, "PCMU").astype(np.int16)
    buffer = io.BytesIO()
    try:
        with av.open(buffer, "w", format="ogg") as out:
            stream = out.add_stream("libopus", rate=48000)
            stream.bit_rate = bitrate
            stream.layout = "mono"
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = 8000
            for packet in stream.encode(frame):
                out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
    except Exception as exc:  # an encoder PyAV was built without: WAV or a file instead
        log.warning("event=opus_encode_failed error=%r", str(exc))
        return None
    return buffer.getvalue()


class RtpengineSounds:
    """`resolve(msg)`: the `PlayMedia` rtpengine can play for a named sound (see the
    module docstring); `SoundError` when there is none.  Thread-safe (the backend
    renders in a thread: reading WAV files and encoding Opus take milliseconds)."""

    def __init__(self, prompts: Prompts, *, media_dir: str | None = None, blob_max: int = BLOB_MAX,
                 opus: bool = True) -> None:
        self.prompts = prompts
        self.media_dir = media_dir.rstrip("/") if media_dir else None
        self.blob_max = blob_max
        self.opus = opus
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[str, bytes | str, float]] = OrderedDict()

    def resolve(self, msg: PlayMedia) -> PlayMedia:
        if msg.blob is not None or msg.file is None or msg.file.startswith("/"):
            return msg
        name = msg.file
        with self._lock:
            kind, source, seconds = self._render(name)
        repeat = msg.repeat
        if repeat == 0:  # until stopped
            repeat = max(1, min(100_000, math.ceil(LOOP_S / max(seconds, 1.0))))
        if kind == "file":
            return replace(msg, file=str(source), repeat=repeat)
        assert isinstance(source, bytes)
        return replace(msg, file=None, blob=source, repeat=repeat)

    def _render(self, name: str) -> tuple[str, bytes | str, float]:
        hit = self._cache.get(name)
        if hit is not None:
            self._cache.move_to_end(name)
            return hit
        found = self._load(name)
        self._cache[name] = found
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return found

    def _load(self, name: str) -> tuple[str, bytes | str, float]:
        moh = name.startswith(MOH)
        try:
            encoded, seconds = self.prompts.moh(name[len(MOH):]) if moh else self.prompts.prompt(name)
        except PromptError as exc:
            raise SoundError(str(exc)) from None
        pcmu = encoded["PCMU"]
        wav = ulaw_wav(pcmu)
        if len(wav) <= self.blob_max:
            return "blob", wav, seconds
        opus = ogg_opus(pcmu) if self.opus else None
        if opus is not None and len(opus) <= self.blob_max:
            return "blob", opus, seconds
        if self.media_dir is not None:
            base = name[len(MOH):] if moh else name.removesuffix(".wav")
            return "file", f"{self.media_dir}/moh/{base}.wav" if moh else f"{self.media_dir}/{base}.wav", seconds
        too_long = (f"{seconds:.1f} s of sound is too long for one NG message over UDP ({self.blob_max} bytes; "
                    "set media.rtpengine.media_dir to play files on the daemon's machine)")
        if not moh:
            raise SoundError(f"prompt {name!r}: {too_long}")
        kept = pcmu[: self.blob_max - 64]
        log.warning("event=moh_truncated class=%s seconds=%.1f played_s=%.1f reason=%r", name[len(MOH):], seconds,
                    len(kept) / 8000, too_long)
        return "blob", ulaw_wav(kept), len(kept) / 8000
