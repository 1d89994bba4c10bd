"""Tones made in Python (no file needed): test tones, Spanish call-progress tones, and the
default music on hold, all 8 kHz 16-bit mono."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .wav import RATE, Samples


def tone(freqs: float | Sequence[float], seconds: float, *, amplitude: float = 0.3, rate: int = RATE, fade_s: float = 0.0) -> Samples:
    """A sine (or the sum of several) at `amplitude` of full scale, optionally faded in/out."""
    freq_list = [freqs] if isinstance(freqs, (int, float)) else list(freqs)
    t = np.arange(round(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * f * t) for f in freq_list) / max(1, len(freq_list))
    signal = np.asarray(wave, dtype=np.float64) * amplitude
    if fade_s > 0 and signal.size:
        n = min(signal.size // 2, round(fade_s * rate))
        ramp = np.linspace(0.0, 1.0, n)
        signal[:n] *= ramp
        signal[signal.size - n :] *= ramp[::-1]
    return np.round(signal * 32767).astype(np.int16)


def silence(seconds: float, rate: int = RATE) -> Samples:
    return np.zeros(round(seconds * rate), dtype=np.int16)


def cadence(freq: float, pattern: Sequence[tuple[float, float]], repeats: int = 1, amplitude: float = 0.3) -> Samples:
    """on/off pattern in seconds, e.g. Spanish ringback 425 Hz 1.5 s on, 3 s off."""
    parts: list[Samples] = []
    for _ in range(repeats):
        for on, off in pattern:
            parts.append(tone(freq, on, amplitude=amplitude))
            parts.append(silence(off))
    return np.concatenate(parts) if parts else silence(0)


def default_moh() -> Samples:
    """A calm 12-second phrase of soft notes (A minor arpeggio, faded), looped by the player."""
    notes = [220.0, 261.63, 329.63, 440.0, 329.63, 261.63, 246.94, 293.66, 349.23, 440.0, 349.23, 293.66]
    parts = [tone([f, f * 2], 0.9, amplitude=0.2, fade_s=0.12) for f in notes]
    parts = [np.concatenate([p, silence(0.1)]) for p in parts]
    return np.concatenate(parts)


# Built-in sounds by name: always available, generated on demand (`prompt` lookups).
BUILTIN: dict[str, Callable[[], Samples]] = {
    "moh": default_moh,
    "ringback": lambda: cadence(425, [(1.5, 3.0)]),
    "busy": lambda: cadence(425, [(0.2, 0.2)], repeats=3),
    "congestion": lambda: cadence(425, [(0.2, 0.2), (0.2, 0.2), (0.2, 0.6)]),
    "beep": lambda: tone(1000, 0.25, fade_s=0.01),
    "test-1k": lambda: tone(1000, 1.0),
}
