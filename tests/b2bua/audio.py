"""Test tones and a check of what a phone recorded (stdlib only: no numpy in the project).

`write_tone` makes the WAV a baresip phone sends (aufile needs S16LE at the codec's rate:
8000 Hz mono for G.711); `analyse` finds the dominant frequency of a recording with a
Hann-windowed FFT, refined by parabolic interpolation, and how much of the spectrum's
energy lies within 50 Hz of it (a clean tone: most of it; noise or silence: little).
"""

from __future__ import annotations

import cmath
import math
import struct
import wave
from dataclasses import dataclass
from pathlib import Path


def write_tone(path: Path, hz: float, seconds: float, rate: int = 8000, level: float = 0.5) -> Path:
    """A sine of `hz` at `level` of full scale (0.5: -6 dBFS peak, -9 dBFS RMS)."""
    amplitude = int(32767 * level)
    frames = b"".join(
        struct.pack("<h", int(amplitude * math.sin(2 * math.pi * hz * i / rate))) for i in range(int(seconds * rate))
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return path


def _fft(values: list[complex]) -> list[complex]:
    """Iterative radix-2 FFT (len(values) a power of two)."""
    n = len(values)
    out = list(values)
    j = 0
    for i in range(1, n):  # bit reversal
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            out[i], out[j] = out[j], out[i]
    size = 2
    while size <= n:
        step = cmath.exp(-2j * math.pi / size)
        half = size // 2
        for start in range(0, n, size):
            w = 1 + 0j
            for k in range(start, start + half):
                t = w * out[k + half]
                out[k + half] = out[k] - t
                out[k] += t
                w *= step
        size *= 2
    return out


@dataclass(frozen=True)
class Analysis:
    seconds: float  # length of the recording
    rms_dbfs: float  # level of what was analysed
    peak_hz: float  # dominant frequency
    tone_share: float  # energy within 50 Hz of the peak / all energy (0..1)

    def has_tone(self, hz: float, tolerance_hz: float = 15.0, min_dbfs: float = -30.0) -> bool:
        return abs(self.peak_hz - hz) <= tolerance_hz and self.rms_dbfs >= min_dbfs and self.tone_share >= 0.5


def analyse(path: Path, skip_s: float = 0.5, window: int = 8192) -> Analysis:
    """The dominant frequency of a 16-bit PCM WAV (first channel), leaving out the first
    `skip_s` (jitter buffer filling, the call being set up)."""
    with wave.open(str(path), "rb") as src:
        channels, width, rate = src.getnchannels(), src.getsampwidth(), src.getframerate()
        raw = src.readframes(src.getnframes())
    assert width == 2, f"{path}: 16-bit PCM expected, got {8 * width}-bit"
    samples = struct.unpack(f"<{len(raw) // 2}h", raw)[::channels]
    seconds = len(samples) / rate
    body = samples[int(skip_s * rate):]
    n = 1
    while n * 2 <= min(len(body), window):
        n *= 2
    if n < 256:
        return Analysis(seconds, -200.0, 0.0, 0.0)
    segment = body[:n]
    rms = math.sqrt(sum(s * s for s in segment) / n)
    rms_dbfs = 20 * math.log10(rms / 32768) if rms > 0 else -200.0
    windowed = [complex(segment[i] * (0.5 - 0.5 * math.cos(2 * math.pi * i / (n - 1)))) for i in range(n)]
    magnitude = [abs(c) for c in _fft(windowed)[: n // 2]]
    magnitude[0] = 0.0
    k = max(range(1, n // 2 - 1), key=lambda i: magnitude[i])
    a, b, c = magnitude[k - 1], magnitude[k], magnitude[k + 1]
    den = a - 2 * b + c
    peak_hz = (k + (0.5 * (a - c) / den if den else 0.0)) * rate / n
    band = int(50 * n / rate)
    energy = sum(m * m for m in magnitude) or 1.0
    tone = sum(m * m for m in magnitude[max(1, k - band): k + band + 1])
    return Analysis(round(seconds, 2), round(rms_dbfs, 1), round(peak_hz, 1), round(tone / energy, 3))
