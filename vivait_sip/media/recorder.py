"""Recording a call to a stereo WAV: party A on the left channel, party B on the right.

The relay's tap hands every received RTP packet of the session to `CallRecorder.tap`;
only here is G.711 decoded.  Each channel places its samples by RTP timestamp, anchored
to the arrival time of its first packet (and again when the source changes or drifts by
more than a second), so silence, loss and late starts keep both channels aligned in
wall-clock time.  Audio is written `LAG_S` behind real time (late packets still land)
at every `flush`; the WAV header's sizes are rewritten at every flush, so the file in the
spool is valid even if the process is killed outright.  `close` writes the rest, fixes
the header, fsyncs and moves the file to the archive (a rename on one file system)."""

from __future__ import annotations

import logging
import os
import shutil
import struct
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import numpy as np

from .audio import g711
from .audio.wav import RATE, Samples, WavWriter

log = logging.getLogger("vivait_sip.media.recorder")

LAG_S = 0.3
REANCHOR_S = 1.0
_U32 = struct.Struct("!I")
CodecsOf = Callable[[int], dict[int, str]]  # leg index → {payload type: "PCMU"|"PCMA"}


class _Channel:
    __slots__ = ("chunks", "packets", "pos0", "ssrc", "ts0")

    def __init__(self) -> None:
        self.ssrc: int | None = None
        self.ts0 = 0
        self.pos0 = 0
        self.chunks: list[tuple[int, Samples]] = []  # (sample position, samples)
        self.packets = 0


class CallRecorder:
    def __init__(
        self, call_id: str, spool_path: Path, archive_dir: Path, start: float, codecs_of: CodecsOf, executor: Executor | None = None
    ) -> None:
        self.call_id = call_id
        self.spool_path = spool_path
        self.archive_dir = archive_dir
        self.start = start
        self.codecs_of = codecs_of
        self.channels = (_Channel(), _Channel())
        self.written = 0  # frames on disk
        self.writer = WavWriter(spool_path, channels=2, rate=RATE)
        self.closed_path: Path | None = None
        self.executor = executor  # the worker's writer thread: disk stalls never hold the relay
        self.failed: str | None = None

    def tap(self, leg: int, pt: int, ts: int, seq: int, data: bytes, now: float) -> None:
        codec = self.codecs_of(leg).get(pt)
        if codec is None:
            return  # telephone-event, comfort noise, another codec: not audio we decode
        offset = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10 and len(data) >= offset + 4:
            offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
        payload = data[offset:]
        if not payload:
            return
        channel = self.channels[leg]
        ssrc = _U32.unpack_from(data, 8)[0]
        arrival = round((now - self.start) * RATE)
        pos = arrival
        if channel.ssrc == ssrc:
            delta = (ts - channel.ts0) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta -= 1 << 32
            pos = channel.pos0 + delta
            if abs(pos - arrival) > REANCHOR_S * RATE:
                pos = arrival
        if pos == arrival:
            channel.ssrc, channel.ts0, channel.pos0 = ssrc, ts, arrival
        channel.chunks.append((pos, g711.decode(payload, "PCMU" if codec == "PCMU" else "PCMA")))
        channel.packets += 1

    def flush(self, now: float, *, final: bool = False) -> Future[None] | None:
        """Write every frame older than LAG_S (all of them when `final`) and sync the
        header: in the writer thread when there is one (the returned future), else here."""
        if self.closed_path is not None:
            return None
        return self._submit(self._write, self._take(now, final))

    def _take(self, now: float, final: bool) -> Samples | None:
        """The frames from `written` to now - LAG_S (or to the end), placed by channel."""
        upto = round((now - self.start - LAG_S) * RATE)
        if final:
            ends = [pos + len(s) for ch in self.channels for pos, s in ch.chunks]
            upto = max([upto + round(LAG_S * RATE), *ends])
        if upto <= self.written:
            return None
        frames = np.zeros((upto - self.written, 2), dtype=np.int16)
        for index, channel in enumerate(self.channels):
            keep: list[tuple[int, Samples]] = []
            for pos, samples in channel.chunks:
                end = pos + len(samples)
                if end <= self.written:
                    continue  # too late: that time is already on disk
                lo, hi = max(pos, self.written), min(end, upto)
                if hi > lo:
                    frames[lo - self.written : hi - self.written, index] = samples[lo - pos : hi - pos]
                if end > upto:
                    keep.append((pos, samples))
            channel.chunks = keep
        self.written = upto
        return frames

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any] | None:
        if self.executor is None:
            fn(*args)
            return None
        return self.executor.submit(fn, *args)

    def _write(self, frames: Samples | None) -> None:
        """(writer thread) Append, rewrite the header's sizes, flush to the kernel."""
        try:
            if frames is not None:
                self.writer.write(frames)
            self.writer.sync()
        except (OSError, ValueError) as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            log.error("event=recording_write_failed path=%s error=%s", self.spool_path, exc)

    @property
    def seconds(self) -> float:
        return self.written / RATE

    def close(self, now: float) -> tuple[Path, Future[Path] | None]:
        """Write the rest, close (header right, fsync) and move to the archive; returns the
        archive path and, with a writer thread, the future of that work (its result is
        where the file ended up: the spool if the move failed)."""
        if self.closed_path is not None:
            return self.closed_path, None
        target = self.archive_dir / self.spool_path.name
        self.closed_path = target
        frames = self._take(now, True)
        if self.executor is None:
            self.closed_path = self._finish(frames, target)
            return self.closed_path, None
        return target, self.executor.submit(self._finish, frames, target)

    def _finish(self, frames: Samples | None, target: Path) -> Path:
        try:
            self._write(frames)
        finally:
            self.writer.close()
        try:
            self.archive_dir.mkdir(parents=True, exist_ok=True)
            os.replace(self.spool_path, target)
        except OSError:
            try:
                shutil.move(str(self.spool_path), str(target))
            except OSError as exc:
                log.error("event=recording_archive_failed path=%s error=%s", self.spool_path, exc)
                return self.spool_path
        return target


def sweep_spool(spool_dir: Path, archive_dir: Path, prefix: str) -> list[Path]:
    """Move what a killed worker left in the spool (valid WAVs up to their last sync) to
    the archive; returns the moved files."""
    moved: list[Path] = []
    if not spool_dir.is_dir():
        return moved
    archive_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(spool_dir.glob(f"{prefix}*.wav")):
        target = archive_dir / path.name
        try:
            os.replace(path, target)
            moved.append(target)
        except OSError as exc:
            log.error("event=recording_sweep_failed path=%s error=%s", path, exc)
    return moved
