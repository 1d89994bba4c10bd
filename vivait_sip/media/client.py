"""The SIP side of the built-in media backend: spawning the media workers, and the client
each SIP process uses to talk to them.

    workers, client = await spawn_media_workers(settings, data_dir=..., sip_workers=N,
                                                on_event=handle)
    reply = await client.request(MediaOffer(call_id, from_tag, sdp))   # {"sdp": ..., "worker": n}
    ...
    await workers.stop()

`spawn_media_workers` runs in worker 0 before the SIP workers 1..N-1 exist: it makes one
socketpair per (SIP worker, media worker), starts the M media processes (each with its
slice of the port range and its ends of the pairs), connects worker 0's client and waits
until every media worker said it is ready.  `MediaWorkerSet.fds_for(i)` are the ends SIP
worker `i` inherits (`pass_fds`); there `MediaClient(count).connect(fds)` gives it its own
client.  RTP never passes through a SIP process: only these commands do.

**Pinning.**  A call's media lives in one media worker: the one `crc32(Call-ID) % M`
names, so every SIP process finds it without asking; when that worker's port slice is
full (or it is gone) a new call's offer goes to the next worker in turn, and the client
that created the session remembers where it went (the same SIP process owns the call's
Call-ID for all later commands, as in workers.py).  Only a new call whose every worker is
full gets `MediaRequestError("ports_exhausted")`: answer it 503; existing calls are never
touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..contract import WorkerMessage
from .link import Link, open_link
from .protocol import (
    MediaAnswer,
    MediaCommand,
    MediaDelete,
    MediaEvent,
    MediaOffer,
    MediaQuery,
    MediaReady,
    MediaReplace,
    MediaReply,
    MediaStatus,
)
from .settings import ENV_SPEC, BuiltinMediaSettings, MediaWorkerSpec

log = logging.getLogger("vivait_sip.media.client")

REQUEST_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


class MediaRequestError(Exception):
    """A media worker refused a command (`code` as in protocol.py) or could not be reached
    (`worker_lost`, `timeout`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def home_worker(call_id: str, count: int) -> int:
    return zlib.crc32(call_id.encode("utf-8", "surrogateescape")) % count if count > 1 else 0


class MediaClient:
    """One SIP process's links to the M media workers."""

    def __init__(
        self,
        count: int,
        *,
        on_event: Callable[[MediaEvent], None] | None = None,
        on_worker_lost: Callable[[int, list[str]], None] | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.count = count
        self.on_event = on_event or (lambda event: None)
        self.on_worker_lost = on_worker_lost or (lambda index, call_ids: None)
        self.timeout_s = timeout_s
        self.links: dict[int, Link] = {}
        self.pins: dict[str, int] = {}  # call → media worker, for the sessions this client created
        self.ready: dict[int, MediaReady] = {}
        self._ready_waiters: dict[int, asyncio.Future[MediaReady]] = {}
        self._pending: dict[int, tuple[int, asyncio.Future[MediaReply]]] = {}
        self._ids = itertools.count(1)
        self.closing = False

    async def connect(self, fds: dict[int, int | socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for index in range(self.count):
            self._ready_waiters[index] = loop.create_future()
        for index, fd in sorted(fds.items()):
            self.links[index] = await open_link(fd, self._message_handler(index), self._lost_handler(index), name=f"media{index}")

    def _message_handler(self, index: int) -> Callable[[Link, WorkerMessage], None]:
        return lambda link, msg: self._on_message(index, msg)

    def _lost_handler(self, index: int) -> Callable[[Link], None]:
        return lambda link: self._on_lost(index)

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> list[MediaReady]:
        return list(await asyncio.wait_for(asyncio.gather(*self._ready_waiters.values()), timeout_s))

    def worker_for(self, call_id: str) -> int:
        """The media worker holding (or that would hold) `call_id`'s session."""
        pinned = self.pins.get(call_id)
        return pinned if pinned is not None else home_worker(call_id, self.count)

    # ---- requests -----------------------------------------------------------------------------
    async def request(self, command: MediaCommand, *, worker: int | None = None) -> dict[str, Any]:
        """Send `command`, return its result; raise `MediaRequestError` on a refusal."""
        call_id = command.call_id
        if worker is None and isinstance(command, MediaOffer) and call_id not in self.pins:
            return await self._new_session(command)
        target = self.worker_for(call_id) if worker is None else worker
        try:
            result = await self._send(target, command)
        except MediaRequestError as exc:
            if isinstance(command, MediaDelete) and exc.code == "not_found":
                self.pins.pop(call_id, None)
            raise
        if isinstance(command, MediaDelete):
            self.pins.pop(call_id, None)
        return result

    async def _new_session(self, command: MediaOffer) -> dict[str, Any]:
        home = home_worker(command.call_id, self.count)
        error: MediaRequestError | None = None
        for step in range(self.count):
            target = (home + step) % self.count
            if target not in self.links:
                continue
            try:
                result = await self._send(target, command)
            except MediaRequestError as exc:
                if exc.code not in ("ports_exhausted", "worker_lost"):
                    raise
                error = exc
                continue
            self.pins[command.call_id] = target
            return result
        raise error or MediaRequestError("worker_lost", "no media worker is running")

    async def _send(self, worker: int, command: MediaCommand) -> dict[str, Any]:
        link = self.links.get(worker)
        if link is None or not link.is_open:
            raise MediaRequestError("worker_lost", f"media worker {worker} is not running")
        req = next(self._ids)
        future: asyncio.Future[MediaReply] = asyncio.get_running_loop().create_future()
        self._pending[req] = (worker, future)
        try:
            link.send(dataclasses.replace(command, req=req))  # type: ignore[type-var]
            reply = await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            raise MediaRequestError("timeout", f"media worker {worker} did not answer {command.kind} in {self.timeout_s} s") from None
        finally:
            self._pending.pop(req, None)
        if not reply.ok:
            raise MediaRequestError(reply.code or "internal", reply.error or "media command failed")
        return reply.result

    # convenience: the commands the B2BUA uses most
    async def offer(
        self, call_id: str, from_tag: str, sdp: str, to_tag: str | None = None, transport_protocol: str | None = None, rtcp_mux: str | None = None
    ) -> str:
        return str((await self.request(MediaOffer(call_id, from_tag, sdp, to_tag, transport_protocol, rtcp_mux)))["sdp"])

    async def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str) -> str:
        return str((await self.request(MediaAnswer(call_id, from_tag, to_tag, sdp)))["sdp"])

    async def replace(self, call_id: str, old_tag: str, new_tag: str, sdp: str | None = None, transport_protocol: str | None = None) -> str:
        return str((await self.request(MediaReplace(call_id, old_tag, new_tag, sdp, transport_protocol)))["sdp"])

    async def delete(self, call_id: str) -> dict[str, Any]:
        return dict((await self.request(MediaDelete(call_id)))["stats"])

    async def query(self, call_id: str) -> dict[str, Any]:
        return dict((await self.request(MediaQuery(call_id)))["stats"])

    async def status(self) -> list[dict[str, Any]]:
        """Every media worker's status, in worker order (`{"index", "error"}` for one that
        does not answer)."""

        async def one(index: int) -> dict[str, Any]:
            try:
                return await self._send(index, MediaStatus())
            except MediaRequestError as exc:
                return {"index": index, "error": str(exc)}

        return list(await asyncio.gather(*(one(i) for i in range(self.count))))

    # ---- input ----------------------------------------------------------------------------------
    def _on_message(self, worker: int, msg: WorkerMessage) -> None:
        if isinstance(msg, MediaReply):
            pending = self._pending.get(msg.req)
            if pending is not None and not pending[1].done():
                pending[1].set_result(msg)
        elif isinstance(msg, MediaReady):
            self.ready[worker] = msg
            waiter = self._ready_waiters.get(worker)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg)
        elif isinstance(msg, MediaEvent):
            self.on_event(msg)

    def _on_lost(self, worker: int) -> None:
        self.links.pop(worker, None)
        for req, (target, future) in list(self._pending.items()):
            if target == worker and not future.done():
                future.set_exception(MediaRequestError("worker_lost", f"media worker {worker} is gone"))
                self._pending.pop(req, None)
        waiter = self._ready_waiters.get(worker)
        if waiter is not None and not waiter.done():
            waiter.set_exception(MediaRequestError("worker_lost", f"media worker {worker} exited before it was ready"))
        lost = [call_id for call_id, target in self.pins.items() if target == worker]
        for call_id in lost:
            del self.pins[call_id]
        if self.closing:
            return
        log.error("event=media_worker_lost index=%d calls=%d", worker, len(lost))
        self.on_worker_lost(worker, lost)

    def close(self) -> None:
        self.closing = True
        for link in list(self.links.values()):
            link.close()


class MediaWorkerSet:
    """The media worker processes and the socketpair ends the SIP workers inherit."""

    def __init__(self, count: int, slices: list[tuple[int, int]]) -> None:
        self.count = count
        self.slices = slices
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._sip_ends: dict[int, dict[int, socket.socket]] = {}

    def fds_for(self, sip_index: int) -> dict[int, int]:
        """media worker index → fd, for SIP worker `sip_index` to inherit (pass_fds)."""
        return {m: sock.fileno() for m, sock in self._sip_ends.get(sip_index, {}).items()}

    def close_fds_for(self, sip_index: int) -> None:
        """Once SIP worker `sip_index` is started with its ends, close this process's copies."""
        for sock in self._sip_ends.pop(sip_index, {}).values():
            sock.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every media worker (each closes its recordings), then wait; kill the late."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for index, proc in self.procs.items():
            while proc.poll() is None and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                log.error("event=media_worker_kill index=%d pid=%d reason=stop_timeout", index, proc.pid)
                proc.kill()
                proc.wait()
        for sip_index in list(self._sip_ends):
            self.close_fds_for(sip_index)


async def spawn_media_workers(
    settings: BuiltinMediaSettings,
    *,
    data_dir: str | Path,
    count: int | None = None,
    sip_workers: int = 1,
    log_level: str = "info",
    log_format: str = "kv",
    on_event: Callable[[MediaEvent], None] | None = None,
    on_worker_lost: Callable[[int, list[str]], None] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> tuple[MediaWorkerSet, MediaClient]:
    """Start the media workers (`count`, default `settings.worker_count()`); returns the
    set and SIP worker 0's connected client, once every media worker is ready."""
    count = count or settings.worker_count()
    settings.advertised()  # a bind to 0.0.0.0 without `advertise` fails here, not in a child
    slices = settings.slices(count)
    workers = MediaWorkerSet(count, slices)
    media_ends: dict[int, list[socket.socket]] = {m: [] for m in range(count)}
    for s in range(sip_workers):
        workers._sip_ends[s] = {}
        for m in range(count):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            workers._sip_ends[s][m] = ours
            media_ends[m].append(theirs)
    try:
        for m in range(count):
            spec = MediaWorkerSpec(
                index=m,
                count=count,
                port_min=slices[m][0],
                port_max=slices[m][1],
                link_fds=[sock.fileno() for sock in media_ends[m]],
                data_dir=str(data_dir),
                settings=settings,
                log_level=log_level,
                log_format=log_format,
            )
            env = dict(os.environ, **{ENV_SPEC: spec.model_dump_json()})
            workers.procs[m] = subprocess.Popen(
                [sys.executable, "-m", "vivait_sip.media.worker"], env=env, pass_fds=spec.link_fds, stdin=subprocess.DEVNULL
            )
    finally:
        for ends in media_ends.values():
            for sock in ends:
                sock.close()
    client = MediaClient(count, on_event=on_event, on_worker_lost=on_worker_lost)
    first = workers._sip_ends.pop(0)
    try:
        await client.connect(dict(first.items()))
        await client.wait_ready(ready_timeout_s)
    except (TimeoutError, MediaRequestError) as exc:
        client.close()
        await workers.stop()
        raise RuntimeError(f"media workers did not start: {exc or 'timeout'}") from None
    log.info("event=media_workers_started count=%d pids=%s", count, ",".join(str(p) for p in workers.pids))
    return workers, client

