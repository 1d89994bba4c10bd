"""Settings of the built-in media backend: the keys it reads from the `media` section.

`BuiltinMediaSettings` is a pydantic model the `media` section's model includes (the
lead composes it with the control API's keys: backend choice, rtpengine daemons); the
media worker processes get it as JSON.  docs/config.md lists every key."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecordingSettings(_Strict):
    # Files being written; moved to `archive_dir` when closed.  None: DATA_DIR/recordings/spool
    spool_dir: str | None = None
    # Closed recordings.  None: DATA_DIR/recordings
    archive_dir: str | None = None
    # Seconds between header updates (sizes right on disk) and writes of buffered audio.
    sync_s: float = Field(default=1.0, gt=0, le=60)


class BuiltinMediaSettings(_Strict):
    # Media worker processes (one per core is the norm); None: one per CPU core.
    workers: int | None = Field(default=None, ge=1, le=64)
    # Address the RTP sockets bind to, and the one written into SDP (`advertise`, needed
    # when `bind` is 0.0.0.0 or behind 1:1 NAT).
    bind: str = "127.0.0.1"
    advertise: str | None = None
    # RTP port range (RTCP on port + 1), split into one contiguous slice per media worker.
    port_min: int = Field(default=30000, ge=1024, le=65534)
    port_max: int = Field(default=39999, ge=1025, le=65535)
    # No RTP from a party that should send for this long ends the call (0: never).
    rtp_timeout_s: float = Field(default=60.0, ge=0, le=86400)
    # ...and for a party holding the call (its SDP sendonly: many phones then send nothing).
    rtp_hold_timeout_s: float = Field(default=3600.0, ge=0, le=86400)
    # A latched source silent this long lets another source take over (NAT rebinding).
    relatch_s: float = Field(default=1.0, ge=0, le=60)
    # Prompt lookup: these directories first, then the generated default prompts.
    prompt_dirs: list[str] = Field(default_factory=list)
    # Music-on-hold classes: name → a WAV file or a directory of WAVs (played in name
    # order, looping).  "default" is built in (a generated tune) unless given here.
    moh_classes: dict[str, str] = Field(default_factory=dict)
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    # Kernel socket buffers per RTP socket (bytes); 0 leaves the system default.
    socket_buffer: int = Field(default=0, ge=0, le=16 * 1024 * 1024)
    # A WebRTC party (browser) whose ICE checks (its consent freshness, RFC 7675) stop for
    # this long is gone: its call ends both ways (0: never; DTLS close still ends it).
    webrtc_consent_s: float = Field(default=6.0, ge=0, le=300)

    @model_validator(mode="after")
    def _range(self) -> BuiltinMediaSettings:
        if self.port_max - self.port_min < 3:
            raise ValueError(f"port_max ({self.port_max}) must be at least port_min + 3 ({self.port_min + 3})")
        return self

    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    def advertised(self) -> str:
        if self.advertise:
            return self.advertise
        if self.bind in ("0.0.0.0", "::"):
            raise ValueError("media.advertise is needed when media.bind is 0.0.0.0 or ::")
        return self.bind

    def slices(self, count: int | None = None) -> list[tuple[int, int]]:
        """The port range cut into `count` contiguous slices, each starting on an even port."""
        count = count or self.worker_count()
        first = self.port_min + (self.port_min & 1)
        pairs = (self.port_max - first + 1) // 2
        if pairs < count:
            raise ValueError(f"media port range {self.port_min}-{self.port_max} has {pairs} pairs for {count} workers")
        out = []
        for i in range(count):
            lo = first + 2 * (pairs * i // count)
            hi = first + 2 * (pairs * (i + 1) // count) - 1
            out.append((lo, hi))
        return out

    def recording_dirs(self, data_dir: str | Path) -> tuple[Path, Path]:
        base = Path(data_dir) / "recordings"
        spool = Path(self.recording.spool_dir) if self.recording.spool_dir else base / "spool"
        archive = Path(self.recording.archive_dir) if self.recording.archive_dir else base
        return spool, archive


class MediaWorkerSpec(_Strict):
    """What a media worker process inherits from the process that spawned it (JSON in the
    environment variable `ENV_SPEC`): its place, its port slice, its socketpair ends (one
    per SIP worker that will talk to it) and the settings."""

    index: int
    count: int
    port_min: int
    port_max: int
    link_fds: list[int]
    data_dir: str
    settings: BuiltinMediaSettings
    log_level: str = "info"
    log_format: str = "kv"


ENV_SPEC = "VIVAIT_SIP_MEDIA_WORKER"
