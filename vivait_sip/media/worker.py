"""A media worker process: UDP sockets feeding the pure relay, one timer, commands over
socketpairs from the SIP side.

Started by `client.spawn_media_workers` as `python -m vivait_sip.media.worker` with its
spec (settings.MediaWorkerSpec) in the environment and its socketpair ends inherited.
The asyncio side is thin: each RTP/RTCP port is a non-blocking socket read by a loop
reader (`loop.add_reader`, no transport objects), each datagram goes through
`Relay.receive` and what comes back is sent at once with `sendto` from the socket of the
port the relay names.  One timer runs at `Relay.deadline()` (players, DTMF, the RTP
timeout scan); one periodic task flushes recordings.

It exits when every link to the SIP side is closed (its parent died), and on SIGTERM or
SIGINT after closing every recording (WAV header right, file moved to the archive)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import resource
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..contract import WorkerMessage
from ..logs import setup_logging
from .link import Link, open_link
from .prompts import PromptError, Prompts
from .protocol import (
    MediaAnswer,
    MediaCommand,
    MediaDelete,
    MediaDtmf,
    MediaEvent,
    MediaOffer,
    MediaPlay,
    MediaPlayDone,
    MediaQuery,
    MediaReady,
    MediaRecordingClosed,
    MediaRecordStart,
    MediaRecordStop,
    MediaReplace,
    MediaReply,
    MediaRtpTimeout,
    MediaSendDtmf,
    MediaStatus,
    MediaStopPlay,
)
from .recorder import CallRecorder, sweep_spool
from .relay import (
    DtmfDetected,
    MediaError,
    PlayDone,
    PortPool,
    Relay,
    RelayEvent,
    RtpTimeout,
    Session,
)
from .settings import ENV_SPEC, BuiltinMediaSettings, MediaWorkerSpec
from .webrtc_bridge import WebrtcBridge

log = logging.getLogger("vivait_sip.media.worker")

READ_BATCH = 64  # datagrams read per readiness callback before yielding to the loop
FLUSH_TICK_S = 0.05  # recordings are flushed in turns at this pace
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class BoundPortPool(PortPool):
    """The relay's port pool with real sockets: a pair is bound when allocated (a port some
    other program holds is skipped for good) and closed when released."""

    def __init__(self, worker: MediaWorker, bind: str, port_min: int, port_max: int, buffer: int = 0) -> None:
        super().__init__(port_min, port_max)
        self.worker = worker
        self.bind = bind
        self.buffer = buffer
        self.family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.unusable = 0

    def _open(self, port: int) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if self.buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffer)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.buffer)
            sock.bind((self.bind, port))
        except OSError:
            sock.close()
            raise
        return sock

    def allocate(self) -> int:
        while True:
            port = super().allocate()  # PortsExhausted when none is left
            try:
                rtp = self._open(port)
            except OSError:
                self.in_use.discard(port)
                self.unusable += 1
                continue
            try:
                rtcp = self._open(port + 1)
            except OSError:
                rtp.close()
                self.in_use.discard(port)
                self.unusable += 1
                continue
            self.worker.add_socket(port, rtp)
            self.worker.add_socket(port + 1, rtcp)
            return port

    def release(self, port: int) -> None:
        if port in self.in_use:
            self.worker.remove_socket(port)
            self.worker.remove_socket(port + 1)
        super().release(port)


class MediaWorker:
    def __init__(self, spec: MediaWorkerSpec) -> None:
        self.spec = spec
        self.settings: BuiltinMediaSettings = spec.settings
        self.index = spec.index
        self.loop = asyncio.get_running_loop()
        self.socks: dict[int, socket.socket] = {}
        self.pool = BoundPortPool(self, self.settings.bind, spec.port_min, spec.port_max, self.settings.socket_buffer)
        self.relay = Relay(
            self.settings.advertised(), self.pool, rtp_timeout_s=self.settings.rtp_timeout_s,
            relatch_s=self.settings.relatch_s, rtp_hold_timeout_s=self.settings.rtp_hold_timeout_s,
        )
        # ICE and DTLS of WebRTC parties on the relay's ports (webrtc_bridge.py)
        self.bridge = WebrtcBridge(self.relay, self._send_from, consent_s=self.settings.webrtc_consent_s)
        self._bridge_timer: asyncio.TimerHandle | None = None
        self._bridge_at: float | None = None
        self.prompts = Prompts(self.settings.prompt_dirs, self.settings.moh_classes)
        self.spool, self.archive = self.settings.recording_dirs(spec.data_dir)
        self.recorders: dict[str, CallRecorder] = {}
        self._flush_due: dict[str, float] = {}
        self.owners: dict[str, Link] = {}
        self.links: list[Link] = []
        self.stopping = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.send_errors = 0
        self.errors = 0
        self.commands = 0
        # one writer thread for the recordings' file work (in submission order)
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="media-rec")

    # ---- sockets (called by the port pool) ----------------------------------------------------
    def add_socket(self, port: int, sock: socket.socket) -> None:
        self.socks[port] = sock
        self.loop.add_reader(sock.fileno(), self._readable, sock, port)

    def remove_socket(self, port: int) -> None:
        sock = self.socks.pop(port, None)
        if sock is not None:
            self.loop.remove_reader(sock.fileno())
            sock.close()

    def _send_from(self, port: int, data: bytes, addr: tuple[str, int]) -> None:
        sock = self.socks.get(port)
        if sock is not None:
            try:
                sock.sendto(data, addr)
            except OSError:
                self.send_errors += 1

    def _readable(self, sock: socket.socket, port: int) -> None:
        receive = self.relay.receive
        socks = self.socks
        monotonic = time.monotonic
        webrtc = self.bridge.endpoints
        bridged = False
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # ICMP errors of earlier sends surface here on Linux
            if len(addr) != 2:
                addr = addr[:2]
            if data and data[0] < 128 and port in webrtc:  # STUN or DTLS (RFC 7983): the bridge's
                bridged = True
                try:
                    self.bridge.receive(port, data, addr, monotonic())
                except Exception:
                    self.errors += 1
                    log.exception("event=webrtc_receive_failed port=%d", port)
                continue
            try:
                out = receive(port, data, addr, monotonic())
            except Exception:  # a bug must cost one datagram, never the reader
                self.errors += 1
                if self.errors <= 10 or self.errors % 1000 == 0:
                    log.exception("event=media_receive_failed port=%d errors=%d", port, self.errors)
                continue
            if out is not None:
                out_sock = socks.get(out[0])
                if out_sock is not None:
                    try:
                        out_sock.sendto(out[1], out[2])
                    except OSError:
                        self.send_errors += 1
        if self.relay.has_events:
            self._dispatch_events()
        if bridged:
            self._arm_bridge()

    # ---- the bridge's timer (DTLS retransmissions, ICE consent) ---------------------------------
    def _arm_bridge(self) -> None:
        deadline = self.bridge.deadline()
        if deadline == self._bridge_at:
            return
        if self._bridge_timer is not None:
            self._bridge_timer.cancel()
            self._bridge_timer = None
        self._bridge_at = deadline
        if deadline is not None:
            self._bridge_timer = self.loop.call_later(max(0.0, deadline - time.monotonic()), self._on_bridge_timer)

    def _on_bridge_timer(self) -> None:
        self._bridge_timer = None
        self._bridge_at = None
        try:
            self.bridge.on_timer(time.monotonic())
        except Exception:
            self.errors += 1
            log.exception("event=webrtc_timer_failed")
        self._dispatch_events()
        self._arm_bridge()

    # ---- the one timer ---------------------------------------------------------------------
    def _arm(self) -> None:
        deadline = self.relay.deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self.loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        socks = self.socks
        for port, packet, dest in self.relay.on_timer(time.monotonic()):
            sock = socks.get(port)
            if sock is not None:
                try:
                    sock.sendto(packet, dest)
                except OSError:
                    self.send_errors += 1
        self._dispatch_events()
        self._arm()

    # ---- events ------------------------------------------------------------------------------
    def _dispatch_events(self) -> None:
        for event in self.relay.pop_events():
            self._send_event(_event_message(event))

    def _send_event(self, msg: MediaEvent) -> None:
        link = self.owners.get(msg.call_id)
        if link is None or not link.send(msg):
            log.info("event=media_event_undelivered kind=%s call_id=%s", msg.kind, msg.call_id)

    # ---- commands ----------------------------------------------------------------------------
    def on_message(self, link: Link, msg: WorkerMessage) -> None:
        if not isinstance(msg, MediaCommand):
            log.warning("event=media_unexpected_message kind=%s", msg.kind)
            return
        self.commands += 1
        try:
            result = self._command(link, msg)
            pending = result.get("pending")
            if isinstance(pending, asyncio.Future):
                self.loop.create_task(self._reply_when_done(link, msg.req, pending))
                self._dispatch_events()
                self._arm()
                return
            reply = MediaReply(req=msg.req, ok=True, result=result)
        except MediaError as exc:
            reply = MediaReply(req=msg.req, ok=False, code=exc.code, error=str(exc))
        except PromptError as exc:
            reply = MediaReply(req=msg.req, ok=False, code="not_found", error=str(exc))
        except OSError as exc:
            log.error("event=media_command_io_error kind=%s error=%s", msg.kind, exc)
            reply = MediaReply(req=msg.req, ok=False, code="io_error", error=str(exc))
        except Exception as exc:
            log.exception("event=media_command_failed kind=%s", msg.kind)
            reply = MediaReply(req=msg.req, ok=False, code="internal", error=f"{type(exc).__name__}: {exc}")
        link.send(reply)
        self._dispatch_events()
        self._arm()
        self._arm_bridge()

    async def _reply_when_done(self, link: Link, req: int, pending: asyncio.Future[tuple[Path, float]]) -> None:
        path, seconds = await pending
        link.send(MediaReply(req=req, ok=True, result={"path": str(path), "seconds": seconds}))

    def _command(self, link: Link, msg: MediaCommand) -> dict[str, Any]:
        now = time.monotonic()
        relay = self.relay
        if isinstance(msg, MediaOffer):
            sdp = relay.offer(msg.call_id, msg.from_tag, msg.sdp, now, to_tag=msg.to_tag, transport=msg.transport_protocol, rtcp_mux=msg.rtcp_mux)
            self.owners[msg.call_id] = link
            return {"sdp": sdp, "worker": self.index}
        if isinstance(msg, MediaAnswer):
            return {"sdp": relay.answer(msg.call_id, msg.from_tag, msg.to_tag, msg.sdp, now), "worker": self.index}
        if isinstance(msg, MediaReplace):
            sdp = relay.replace(msg.call_id, msg.old_tag, msg.new_tag, now, msg.sdp, transport=msg.transport_protocol)
            return {"sdp": sdp, "worker": self.index}
        if isinstance(msg, MediaDelete):
            self._close_recording(msg.call_id, "call_ended", now)
            stats = relay.delete(msg.call_id, now)
            self.owners.pop(msg.call_id, None)
            return {"stats": stats}
        if isinstance(msg, MediaQuery):
            return {"stats": relay.query(msg.call_id, now)}
        if isinstance(msg, MediaPlay):
            if msg.moh is not None:
                encoded, seconds = self.prompts.moh(msg.moh)
                name, loop = f"moh:{msg.moh}", True
            elif msg.prompt is not None:
                encoded, seconds = self.prompts.prompt(msg.prompt)
                name, loop = msg.prompt, msg.loop
            else:
                raise MediaError("bad_request", "play needs a prompt or a moh class")
            relay.play(msg.call_id, msg.tag, now, name=name, encoded=encoded, loop=loop)
            return {"name": name, "seconds": round(seconds, 3), "loop": loop}
        if isinstance(msg, MediaStopPlay):
            return {"stopped": relay.stop_play(msg.call_id, msg.tag)}
        if isinstance(msg, MediaSendDtmf):
            relay.send_dtmf(msg.call_id, msg.tag, msg.digits, now, duration_ms=msg.duration_ms, pause_ms=msg.pause_ms, volume=msg.volume)
            return {"digits": msg.digits}
        if isinstance(msg, MediaRecordStart):
            return {"path": str(self._start_recording(msg.call_id, msg.name, now))}
        if isinstance(msg, MediaRecordStop):
            if msg.call_id not in self.recorders:
                relay.query(msg.call_id, now)  # not_found when there is no such call
                raise MediaError("not_recording", f"call {msg.call_id!r} is not being recorded")
            return {"pending": self._close_recording(msg.call_id, "stopped", now)}
        if isinstance(msg, MediaStatus):
            return self.status()
        raise MediaError("bad_request", f"unknown command {msg.kind}")

    # ---- recording ---------------------------------------------------------------------------
    def _start_recording(self, call_id: str, name: str | None, now: float) -> Path:
        session = self.relay.sessions.get(call_id)
        if session is None:
            raise MediaError("not_found", f"no media session for call {call_id!r}")
        existing = self.recorders.get(call_id)
        if existing is not None:
            return existing.spool_path
        stem = _SAFE_NAME.sub("_", name or f"{time.strftime('%Y%m%d-%H%M%S')}-{call_id}")[:120]
        self.spool.mkdir(parents=True, exist_ok=True)
        path = self.spool / f"w{self.index}-{stem}.wav"
        recorder = CallRecorder(call_id, path, self.archive, now, lambda leg: _g711_codecs(session, leg), self.writer)
        self.recorders[call_id] = recorder
        session.tap = recorder.tap
        log.info("event=recording_started call_id=%s path=%s", call_id, path)
        return path

    def _close_recording(self, call_id: str, reason: str, now: float) -> asyncio.Future[tuple[Path, float]]:
        """Stop recording `call_id`; the file work finishes in the writer thread, then the
        event goes out and the returned future has (where the file is, its seconds)."""
        done: asyncio.Future[tuple[Path, float]] = self.loop.create_future()
        recorder = self.recorders.pop(call_id, None)
        self._flush_due.pop(call_id, None)
        if recorder is None:
            done.set_result((Path(), 0.0))
            return done
        session = self.relay.sessions.get(call_id)
        if session is not None:
            session.tap = None
        path, pending = recorder.close(now)
        seconds = round(recorder.seconds, 3)
        owner = self.owners.get(call_id)  # the session may be gone when the file is done

        def finished(final: Path) -> None:
            log.info("event=recording_closed call_id=%s path=%s seconds=%.1f reason=%s", call_id, final, seconds, reason)
            event = MediaRecordingClosed(call_id=call_id, path=str(final), seconds=seconds, reason=reason)
            if owner is None or not owner.send(event):
                log.info("event=media_event_undelivered kind=%s call_id=%s", event.kind, call_id)
            if not done.done():
                done.set_result((final, seconds))

        if pending is None:
            finished(path)
        else:
            pending.add_done_callback(lambda f: self.loop.call_soon_threadsafe(finished, f.result() if not f.exception() else path))
        return done

    async def _flush_recordings(self) -> None:
        """Each recording is flushed every sync_s, but they are spread over the period
        (FLUSH_TICK_S wake-ups, a random first turn): a hundred recordings started
        together never stall the relay for one long flush."""
        period = self.settings.recording.sync_s
        tick = min(FLUSH_TICK_S, period)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for call_id, recorder in list(self.recorders.items()):
                due = self._flush_due.get(call_id)
                if due is None:
                    self._flush_due[call_id] = now + period * random.uniform(0.2, 1.0)
                    continue
                if due > now:
                    continue
                self._flush_due[call_id] = due + period if due + period > now else now + period
                if recorder.failed is not None:
                    self._close_recording(call_id, "io_error", now)
                    continue
                recorder.flush(now)

    # ---- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        status = self.relay.status()
        status.update(
            index=self.index,
            pid=os.getpid(),
            recordings=len(self.recorders),
            send_errors=self.send_errors,
            errors=self.errors,
            unusable_ports=self.pool.unusable,
            webrtc=self.bridge.status(),
            commands=self.commands,
            cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
        )
        return status

    # ---- life cycle --------------------------------------------------------------------------
    def _link_lost(self, link: Link) -> None:
        if link in self.links:
            self.links.remove(link)
        now = time.monotonic()
        for call_id in [c for c, owner in self.owners.items() if owner is link]:
            self._close_recording(call_id, "link_lost", now)
            self.relay.delete(call_id, now)
            del self.owners[call_id]
        if not self.links:
            log.info("event=media_worker_orphaned index=%d", self.index)
            self.stopping.set()

    async def run(self) -> None:
        # what a killed worker left: this worker's files, and worker 0 takes those of
        # indexes beyond the current count (the server ran with more media workers before)
        prefixes = [f"w{self.index}-"] + ([f"w{i}-" for i in range(self.spec.count, 64)] if self.index == 0 else [])
        moved = [path for prefix in prefixes for path in sweep_spool(self.spool, self.archive, prefix)]
        for path in moved:
            log.warning("event=recording_recovered path=%s", path)
        for n, fd in enumerate(self.spec.link_fds):
            link = await open_link(fd, self.on_message, self._link_lost, name=f"media{self.index}.{n}")
            self.links.append(link)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
        ready = MediaReady(index=self.index, pid=os.getpid(), port_min=self.spec.port_min, port_max=self.spec.port_max)
        for link in self.links:
            link.send(ready)
        log.info("event=media_worker_ready index=%d ports=%d-%d", self.index, self.spec.port_min, self.spec.port_max)
        flusher = self.loop.create_task(self._flush_recordings())
        try:
            await self.stopping.wait()
        finally:
            flusher.cancel()
            self.shutdown("shutdown")
            await asyncio.sleep(0.05)  # let the last events reach the SIP side

    def shutdown(self, reason: str) -> None:
        now = time.monotonic()
        for call_id in list(self.recorders):
            try:
                self._close_recording(call_id, reason, now)
            except Exception:
                log.exception("event=recording_close_failed call_id=%s", call_id)
        self.writer.shutdown(wait=True)  # every recording on disk, closed and moved
        if self._timer is not None:
            self._timer.cancel()
        if self._bridge_timer is not None:
            self._bridge_timer.cancel()
        for port in list(self.socks):
            self.remove_socket(port)


def _g711_codecs(session: Session, leg: int) -> dict[int, str]:
    streams = session.legs[leg].streams
    for stream in streams:
        info = stream.info
        if info is not None and info.media == "audio":
            return dict(info.g711)
    return {}


def _event_message(event: RelayEvent) -> MediaEvent:
    if isinstance(event, RtpTimeout):
        return MediaRtpTimeout(call_id=event.call_id, tag=event.tag, leg=event.leg, idle_s=event.idle_s, cause=event.cause)
    if isinstance(event, DtmfDetected):
        return MediaDtmf(
            call_id=event.call_id, tag=event.tag, leg=event.leg, digit=event.digit, duration_ms=event.duration_ms, volume=event.volume, ended=event.ended
        )
    if isinstance(event, PlayDone):
        return MediaPlayDone(call_id=event.call_id, tag=event.tag, leg=event.leg, name=event.name, stopped=event.stopped)
    raise TypeError(f"unknown relay event {event!r}")


def _install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def main() -> int:
    text = os.environ.get(ENV_SPEC)
    if not text:
        print("error: the media worker is started by the server (media.workers), not by hand", file=sys.stderr)
        return 2
    spec = MediaWorkerSpec.model_validate_json(text)
    setup_logging(spec.log_level, spec.log_format)
    _install_uvloop()

    async def run() -> None:
        worker = MediaWorker(spec)
        await worker.run()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
