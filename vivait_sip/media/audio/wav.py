"""WAV in and out.

Reading: any PCM WAV the `wave` module opens (8- or 16-bit, mono or stereo, any rate),
turned into the 8 kHz mono 16-bit samples the players send.  Writing: `WavWriter`, a
16-bit PCM writer whose RIFF and data sizes are rewritten at every `sync()` and on
`close()`, so the file on disk is a valid WAV at all times but for the last unsynced
frames, whatever kills the process."""

from __future__ import annotations

import os
import struct
import wave
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

RATE = 8000
Samples = npt.NDArray[np.int16]
HEADER_SIZE = 44


def lowpass(samples: npt.NDArray[np.float64], cutoff: float, taps: int = 101) -> npt.NDArray[np.float64]:
    """Windowed-sinc FIR low-pass; `cutoff` as a fraction of the sample rate (< 0.5)."""
    n = np.arange(taps) - (taps - 1) / 2
    kernel = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(taps)
    kernel /= kernel.sum()
    return np.convolve(samples, kernel, mode="same")


def resample(samples: npt.NDArray[np.float64], rate: int, target: int = RATE) -> npt.NDArray[np.float64]:
    """To `target` Hz: low-pass below the new Nyquist first when going down (no aliasing
    of a 44.1 kHz music file into the telephone band), then linear interpolation."""
    if rate == target or samples.size == 0:
        return samples
    if target < rate:
        samples = lowpass(samples, 0.45 * target / rate)
    count = max(1, round(samples.size * target / rate))
    positions = np.arange(count) * (rate / target)
    return np.interp(positions, np.arange(samples.size), samples)


def read_wav(path: str | Path, rate: int = RATE) -> Samples:
    """A PCM WAV as mono 16-bit samples at `rate`."""
    with wave.open(str(path), "rb") as wav:
        width, channels, source_rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    if width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) * 256.0
    elif width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float64)
    else:
        raise ValueError(f"{path}: {width * 8}-bit WAV; use 8- or 16-bit PCM")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    data = resample(data, source_rate, rate)
    return np.clip(np.round(data), -32768, 32767).astype(np.int16)


def write_wav(path: str | Path, samples: npt.ArrayLike, rate: int = RATE) -> None:
    """Mono (1-D) or multi-channel ((frames, channels)) 16-bit samples to a WAV file."""
    data = np.asarray(samples, dtype=np.int16)
    channels = 1 if data.ndim == 1 else data.shape[1]
    with WavWriter(path, channels=channels, rate=rate) as out:
        out.write(data)


def _header(channels: int, rate: int, data_bytes: int) -> bytes:
    block = channels * 2
    return b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16
    ) + b"data" + struct.pack("<I", data_bytes)


class WavWriter:
    """16-bit PCM WAV, sizes kept right on disk by `sync()` (header rewritten in place)."""

    def __init__(self, path: str | Path, *, channels: int = 2, rate: int = RATE) -> None:
        self.path = Path(path)
        self.channels = channels
        self.rate = rate
        self.data_bytes = 0
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        self._file.write(_header(channels, rate, 0))
        self._synced = 0

    @property
    def frames(self) -> int:
        return self.data_bytes // (2 * self.channels)

    @property
    def closed(self) -> bool:
        return self._file is None

    def write(self, samples: npt.ArrayLike) -> None:
        if self._file is None:
            raise ValueError("WAV writer is closed")
        data = np.ascontiguousarray(samples, dtype="<i2")
        raw = data.tobytes()
        self._file.write(raw)
        self.data_bytes += len(raw)

    def sync(self, *, fsync: bool = False) -> None:
        """Write the sizes into the header, flush (and fsync) the file."""
        f = self._file
        if f is None:
            return
        if self._synced != self.data_bytes:
            f.seek(4)
            f.write(struct.pack("<I", 36 + self.data_bytes))
            f.seek(40)
            f.write(struct.pack("<I", self.data_bytes))
            f.seek(0, os.SEEK_END)
            self._synced = self.data_bytes
        f.flush()
        if fsync:
            os.fsync(f.fileno())

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self.sync(fsync=True)
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
