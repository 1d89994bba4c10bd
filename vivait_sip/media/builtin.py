"""The built-in media backend: the media worker processes behind the control API.

SIP worker 0 starts the M media workers (`client.spawn_media_workers`) when the backend
starts, before the other SIP workers exist; each of those inherits its own socketpair
ends to every media worker (`MediaFeature.fds_for_worker` → `Host.inherited_fds`) and
connects a `MediaClient` of its own.  RTP never passes through a SIP process.

`BuiltinBackend.request` maps the rtpengine-shaped commands of `control.py` onto the
media workers' commands (`protocol.py`): offer, answer, delete, query, play media (a
prompt name or a music-on-hold class), stop media, start/stop recording, play DTMF.
Events the media workers report (RTP timeout, DTMF, a player done, a recording closed)
go to the listeners the feature registered (`listen`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..contract import Host
from .client import MediaClient, MediaRequestError, MediaWorkerSet, spawn_media_workers
from .control import (
    Answer,
    Delete,
    LegStats,
    MediaCommand,
    MediaReply,
    Offer,
    Ping,
    PlayDtmf,
    PlayMedia,
    Query,
    ReplaceParty,
    StartRecording,
    StopMedia,
    StopRecording,
)
from .protocol import (
    MediaAnswer,
    MediaDelete,
    MediaEvent,
    MediaOffer,
    MediaPlay,
    MediaQuery,
    MediaRecordStart,
    MediaRecordStop,
    MediaReplace,
    MediaSendDtmf,
    MediaStopPlay,
)
from .settings import BuiltinMediaSettings

log = logging.getLogger("vivait_sip.media")

FEATURE = "media"  # the feature whose descriptors the SIP workers inherit
MOH_PREFIX = "moh:"  # PlayMedia(file="moh:CLASS") plays a music-on-hold class, looping


class BuiltinBackend:
    """`control.MediaBackend` over the media worker processes."""

    name = "builtin"

    def __init__(self, host: Host, settings: BuiltinMediaSettings) -> None:
        self.host = host
        self.settings = settings
        self.workers: MediaWorkerSet | None = None  # worker 0 only: the processes
        self.client: MediaClient | None = None
        self.listeners: list[Callable[[MediaEvent], None]] = []
        self.lost_sessions = 0

    # ---- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        host = self.host
        config = host.config
        if host.is_primary:
            self.workers, self.client = await spawn_media_workers(
                self.settings,
                data_dir=host.data_dir,
                sip_workers=host.worker_count,
                log_level=config.log.level,
                log_format=config.log.format,
                on_event=self._event,
                on_worker_lost=self._lost,
            )
            return
        fds = host.inherited_fds(FEATURE)
        if not fds:
            raise MediaRequestError("bad_request", "worker 0 started no media workers for this SIP worker")
        client = MediaClient(len(fds), on_event=self._event, on_worker_lost=self._lost)
        await client.connect({int(index): fd for index, fd in fds.items()})
        await client.wait_ready()
        self.client = client

    async def stop(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()
        workers, self.workers = self.workers, None
        if workers is not None:
            await workers.stop()

    def fds_for_worker(self, index: int) -> dict[str, int]:
        if self.workers is None:
            return {}
        return {str(media): fd for media, fd in self.workers.fds_for(index).items()}

    def worker_spawned(self, index: int) -> None:
        if self.workers is not None:
            self.workers.close_fds_for(index)

    def listen(self, callback: Callable[[MediaEvent], None]) -> None:
        self.listeners.append(callback)

    def _event(self, event: MediaEvent) -> None:
        for callback in self.listeners:
            try:
                callback(event)
            except Exception:
                log.exception("event=media_event_failed kind=%s", event.kind)

    def _lost(self, index: int, call_ids: list[str]) -> None:
        self.lost_sessions += len(call_ids)
        log.error("event=media_worker_lost index=%d sessions=%d", index, len(call_ids))

    # ---- commands ---------------------------------------------------------------------------------
    async def request(self, msg: MediaCommand) -> MediaReply:
        client = self.client
        if client is None:
            return MediaReply.failure("the built-in media backend is not running", self.name)
        try:
            return await self._request(client, msg)
        except MediaRequestError as exc:
            return MediaReply.failure(f"{exc.code}: {exc}", self.name)

    async def _request(self, client: MediaClient, msg: MediaCommand) -> MediaReply:
        if isinstance(msg, Offer):
            flags = msg.flags
            result = await client.request(MediaOffer(
                msg.key.call_id, msg.key.from_tag, msg.sdp.decode("utf-8", "replace"), msg.key.to_tag,
                transport_protocol=_value(flags.transport_protocol),
                rtcp_mux=_value(flags.rtcp_mux[0]) if flags.rtcp_mux else None,
            ))
            return self._sdp_reply(result)
        if isinstance(msg, Answer):
            assert msg.key.to_tag is not None  # checked by Answer itself
            result = await client.request(
                MediaAnswer(msg.key.call_id, msg.key.from_tag, msg.key.to_tag, msg.sdp.decode("utf-8", "replace"))
            )
            return self._sdp_reply(result)
        if isinstance(msg, ReplaceParty):
            result = await client.request(MediaReplace(
                msg.call_id, msg.old_tag, msg.new_tag, msg.sdp.decode("utf-8", "replace") if msg.sdp is not None else None,
                transport_protocol=_value(msg.flags.transport_protocol),
            ))
            return self._sdp_reply(result)
        if isinstance(msg, Delete):
            result = await client.request(MediaDelete(msg.call_id))
            return MediaReply("ok", legs=_legs(result.get("stats")), backend=self.name)
        if isinstance(msg, Query):
            result = await client.request(MediaQuery(msg.call_id))
            return MediaReply("ok", legs=_legs(result.get("stats")), backend=self.name)
        if isinstance(msg, PlayMedia):
            if msg.file is None:
                return MediaReply.failure("the built-in backend plays prompts by name, not WAV blobs", self.name)
            moh = msg.file[len(MOH_PREFIX):] if msg.file.startswith(MOH_PREFIX) else None
            result = await client.request(MediaPlay(
                msg.key.call_id, msg.key.from_tag, prompt=None if moh is not None else msg.file, moh=moh,
                loop=moh is not None or msg.repeat == 0,
            ))
            seconds = result.get("seconds")
            duration = int(float(seconds) * 1000) if isinstance(seconds, (int, float)) else None
            return MediaReply("ok", duration_ms=duration, backend=self.name)
        if isinstance(msg, StopMedia):
            await client.request(MediaStopPlay(msg.key.call_id, msg.key.from_tag))
            return MediaReply("ok", backend=self.name)
        if isinstance(msg, StartRecording):
            result = await client.request(MediaRecordStart(msg.call_id, msg.name))
            return MediaReply("ok", path=str(result.get("path", "")) or None, backend=self.name)
        if isinstance(msg, StopRecording):
            result = await client.request(MediaRecordStop(msg.call_id))
            seconds = result.get("seconds")
            return MediaReply("ok", path=str(result.get("path", "")) or None, backend=self.name,
                              seconds=float(seconds) if isinstance(seconds, (int, float)) else None)
        if isinstance(msg, PlayDtmf):
            await client.request(MediaSendDtmf(msg.key.call_id, msg.key.from_tag, msg.code, duration_ms=msg.duration_ms))
            return MediaReply("ok", backend=self.name)
        if isinstance(msg, Ping):
            return MediaReply("pong" if self.healthy else "error", backend=self.name)
        return MediaReply.failure(f"the built-in backend does not do {msg.command!r}", self.name)

    def _sdp_reply(self, result: Mapping[str, Any]) -> MediaReply:
        sdp = result.get("sdp")
        if not isinstance(sdp, str):
            return MediaReply.failure("the media worker answered without SDP", self.name)
        return MediaReply("ok", sdp=sdp.encode(), backend=f"{self.name} worker {result.get('worker', '?')}")

    # ---- state ----------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        client = self.client
        return client is not None and any(link.is_open for link in client.links.values())

    def status(self) -> Mapping[str, object]:
        client = self.client
        return {
            "backend": self.name,
            "healthy": self.healthy,
            "sessions": len(client.pins) if client is not None else 0,
            "media_workers": list(self.workers.pids) if self.workers is not None else [],
            "lost_sessions": self.lost_sessions,
        }


def create_backend(host: Host, settings: BuiltinMediaSettings) -> BuiltinBackend:
    """`media.feature.BUILTIN_FACTORY`: the backend of `"backend": "builtin"`."""
    return BuiltinBackend(host, settings)


def _value(flag: object) -> str | None:
    value = getattr(flag, "value", flag)
    return str(value) if value is not None else None


def _legs(stats: object) -> tuple[LegStats, ...]:
    """Per party: what the relay received from it (the first stream's figures)."""
    if not isinstance(stats, dict):
        return ()
    out = []
    for leg in stats.get("legs", []) if isinstance(stats.get("legs"), list) else []:
        if not isinstance(leg, dict) or not leg.get("tag"):
            continue
        streams = leg.get("streams") or [{}]
        first = streams[0] if isinstance(streams[0], dict) else {}
        received = first.get("received") if isinstance(first.get("received"), dict) else {}
        assert isinstance(received, dict)
        jitter = received.get("jitter_ms")
        loss_pct = received.get("loss_pct")
        out.append(LegStats(
            tag=str(leg["tag"]),
            packets=int(received.get("packets", 0) or 0),
            bytes=int(received.get("bytes", 0) or 0),
            packets_lost=int(received["lost"]) if isinstance(received.get("lost"), int) else None,
            loss=float(loss_pct) / 100 if isinstance(loss_pct, (int, float)) else None,
            jitter_ms=float(jitter) if isinstance(jitter, (int, float)) else None,
            address=str(first["latched"]) if first.get("latched") else None,
        ))
    return tuple(out)
