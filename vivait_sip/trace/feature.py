"""SIP trace: `ctl trace` sessions over the admin API and HEP v3 export, like Kamailio's
siptrace module.

Every worker installs a trace hook on its transports (`Host.set_trace`) only while it
has something to do with it: a HEP export is configured, or worker 0 has told it that
`ctl trace` sessions are running.  With neither, the transports pay one `is None` test
per message and nothing else (tests/server/test_trace.py measures it).

Sessions live in worker 0, which holds the admin API.  When one starts or stops, worker 0
broadcasts the filters of every running session (`TraceFilters`); each other worker then
hands the messages that match any of them to worker 0 (`TraceRecord`), which gives each
session the ones matching its own filter.  Every message is traced once, by the worker
whose socket it crossed, and says which worker that was.  HEP packets are sent by every
worker from its own socket, straight to the collectors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..config import CoreConfig
from ..contract import Feature, Host, WorkerMessage, worker_message
from ..logs import throttle
from ..metrics import family, single
from ..sip.peer import Peer
from .config import HepConfig, TraceConfig
from .hep import HepExporter
from .match import MessageInfo, TraceFilter, scan

log = logging.getLogger("vivait_sip.trace")

KEEPALIVE_S = 2.0  # an idle stream still writes a line this often: a gone client is noticed
SESSION_QUEUE = 5000  # records waiting for a slow `ctl trace` reader; beyond, dropped and counted
BATCH_S = 0.02  # a trace shows messages at most this late


@worker_message("trace.filters")
@dataclass(frozen=True)
class TraceFilters(WorkerMessage):
    """Worker 0 → all: the filters of the running `ctl trace` sessions (empty: none)."""

    filters: list[dict[str, str | None]]


@worker_message("trace.record")
@dataclass(frozen=True)
class TraceRecord(WorkerMessage):
    """A worker → worker 0: one traced message that matches a running session's filter."""

    record: dict[str, Any]


def make_record(ts: float, worker: int, direction: str, data: bytes, peer: Peer, local: tuple[str, int]) -> dict[str, Any]:
    """One line of the `/api/trace` stream (the message's bytes survive a JSON round trip:
    invalid UTF-8 travels as surrogate escapes)."""
    return {
        "ts": round(ts, 6),
        "worker": worker,
        "direction": direction,
        "transport": peer.transport,
        "local_host": local[0],
        "local_port": local[1],
        "remote_host": peer.host,
        "remote_port": peer.port,
        "message": data.decode("utf-8", "surrogateescape"),
    }


def record_bytes(record: dict[str, Any]) -> bytes:
    return str(record.get("message", "")).encode("utf-8", "surrogateescape")


def json_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class TraceSession:
    """One `ctl trace` client: its filter and the records waiting to be written to it."""

    def __init__(self, trace_filter: TraceFilter) -> None:
        self.filter = trace_filter
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(SESSION_QUEUE)
        self.dropped = 0

    def offer(self, record: dict[str, Any]) -> bool:
        try:
            self.queue.put_nowait(record)
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            return False

    def close(self) -> None:
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()


class TraceFeature(Feature[TraceConfig]):
    """`ctl trace`, `GET /api/trace` and HEP v3 export."""

    name = "trace"
    config_key = "trace"
    config_model = TraceConfig
    order = 5  # before the registrar: the first REGISTER is traced too
    messages = (TraceFilters, TraceRecord)

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self.sessions: list[TraceSession] = []
        self.filters: list[TraceFilter] = []  # any of them selects a message for the sessions
        self.hep: HepExporter | None = None
        self._hep_settings: HepConfig | None = None
        self.max_per_s = self.settings.max_messages_per_s
        self.traced = 0  # messages handed to sessions (or to worker 0 for them)
        self.dropped = 0  # over max_messages_per_s, or a session's queue was full
        self._second = 0
        self._in_second = 0
        self._installed = False

    # ---- the hook ---------------------------------------------------------------------------
    def _hook(self, direction: str, data: bytes, peer: Peer, local: tuple[str, int]) -> None:
        """Called by the transports for every message while installed; never raises."""
        try:
            ts = time.time()
            hep = self.hep
            if hep is not None:
                hep.export(direction, data, peer, local, ts)
            if self.filters:
                self._select(ts, direction, data, peer, local)
        except Exception as exc:
            throttle.log(log, logging.WARNING, "trace_error", "event=trace_error error=%r", repr(exc))

    def _select(self, ts: float, direction: str, data: bytes, peer: Peer, local: tuple[str, int]) -> None:
        host = peer.host
        candidates = [f for f in self.filters if f.may_match(data, host)]
        if not candidates:
            return
        info = scan(data)
        if not any(f.matches(info, host) for f in candidates):
            return
        second = int(ts)
        if second != self._second:
            self._second = second
            self._in_second = 0
        if self._in_second >= self.max_per_s:
            self.dropped += 1
            return
        self._in_second += 1
        self.traced += 1
        record = make_record(ts, self.host.worker_index, direction, data, peer, local)
        if self.host.is_primary:
            self._dispatch(record, info)
        else:
            self.host.send_to_worker(0, TraceRecord(record))

    def _dispatch(self, record: dict[str, Any], info: MessageInfo) -> None:
        """Worker 0: each session gets the records its own filter selects."""
        remote = str(record["remote_host"])
        for session in self.sessions:
            if session.filter.matches(info, remote) and not session.offer(record):
                self.dropped += 1

    def _update_hook(self) -> None:
        wanted = self.hep is not None or bool(self.filters)
        if wanted != self._installed:
            self.host.set_trace(self._hook if wanted else None)
            self._installed = wanted
            log.debug("event=trace_hook installed=%s", wanted)

    # ---- sessions (worker 0) ------------------------------------------------------------------
    def open_session(self, trace_filter: TraceFilter) -> TraceSession:
        session = TraceSession(trace_filter)
        self.sessions.append(session)
        self._filters_changed()
        return session

    def close_session(self, session: TraceSession) -> None:
        if session in self.sessions:
            self.sessions.remove(session)
            self._filters_changed()

    def _filters_changed(self) -> None:
        self.filters = [s.filter for s in self.sessions]
        self.host.broadcast(TraceFilters([f.to_dict() for f in self.filters]))
        self._update_hook()

    def on_worker_message(self, source: int, msg: WorkerMessage) -> None:
        if isinstance(msg, TraceFilters):
            self.filters = [TraceFilter.from_dict(d) for d in msg.filters]
            self._update_hook()
        elif isinstance(msg, TraceRecord):
            record = msg.record
            self._dispatch(record, scan(record_bytes(record)))

    def admin_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/trace", self._stream)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/trace?user=&call=&ip=&method=`: one JSON object per line until the
        client goes (ndjson): `{"event": "started"}`, then the records, with a
        `{"event": "keepalive"}` every KEEPALIVE_S and `{"event": "dropped", "count": n}`
        when records were lost because the client read too slowly."""
        query = request.query
        try:
            trace_filter = TraceFilter.create(
                user=query.get("user") or None,
                call_id=query.get("call") or None,
                ip=query.get("ip") or None,
                method=query.get("method") or None,
            )
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        limit = self.settings.max_sessions
        if len(self.sessions) >= limit:
            return web.json_response({"error": f"{limit} trace sessions are already running (trace.max_sessions)"}, status=503)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"})
        await response.prepare(request)
        session = self.open_session(trace_filter)
        log.info("event=trace_started filter=%r sessions=%d", trace_filter.describe(), len(self.sessions))
        try:
            started = {"event": "started", "filter": trace_filter.to_dict(), "workers": self.host.worker_count, "ts": time.time()}
            await response.write(json_line(started))
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        record = await session.queue.get()
                except TimeoutError:
                    await response.write(json_line({"event": "keepalive", "ts": time.time()}))
                    continue
                if record is None:
                    break
                # Let more arrive, then write them all at once: under load the stream wakes
                # up and writes every BATCH_S, not once per message.
                await asyncio.sleep(BATCH_S)
                batch = [json_line(record)]
                ended = False
                while not session.queue.empty() and len(batch) < SESSION_QUEUE:
                    more = session.queue.get_nowait()
                    if more is None:
                        ended = True
                        break
                    batch.append(json_line(more))
                if session.dropped:
                    batch.append(json_line({"event": "dropped", "count": session.dropped}))
                    session.dropped = 0
                await response.write(b"".join(batch))
                if ended:
                    break
        except ConnectionError:
            pass  # the client went away
        finally:
            self.close_session(session)
            log.info("event=trace_stopped filter=%r sessions=%d", trace_filter.describe(), len(self.sessions))
        return response

    # ---- lifecycle ------------------------------------------------------------------------------
    def _configure(self, settings: TraceConfig) -> None:
        self.max_per_s = settings.max_messages_per_s
        if settings.hep == self._hep_settings:
            return
        if self.hep is not None:
            self.hep.close()
            self.hep = None
        self._hep_settings = settings.hep
        hep = settings.hep
        if hep.collectors:
            exporter = HepExporter(hep.collectors, sample_percent=hep.sample_percent, capture_id=hep.capture_id, auth_key=hep.auth_key)
            if exporter.targets:
                self.hep = exporter
                log.info(
                    "event=hep_export collectors=%s sample_percent=%g capture_id=%d",
                    ",".join(hep.collectors), hep.sample_percent, hep.capture_id,
                )
        self._update_hook()

    async def start(self) -> None:
        self._configure(self.settings)

    async def start_worker(self) -> None:
        self._configure(self.settings)

    def reload(self, config: CoreConfig) -> None:
        self._configure(self.settings_of(config))

    async def stop(self) -> None:
        for session in list(self.sessions):
            session.close()  # the streams end; their handlers remove the sessions
        self.filters = []
        if self.hep is not None:
            self.hep.close()
            self.hep = None
        self._update_hook()

    def status(self) -> dict[str, object]:
        out: dict[str, object] = {"sessions": len(self.sessions), "messages_traced": self.traced, "messages_dropped": self.dropped}
        if self.hep is not None:
            out["hep"] = self.hep.status()
        return {"trace": out}

    def merge_status(self, mine: dict[str, object], workers: list[dict[str, object]]) -> None:
        total = mine.get("trace")
        if not isinstance(total, dict):
            return
        for part in workers:
            theirs = part.get("trace")
            if not isinstance(theirs, dict):
                continue
            for key in ("messages_traced", "messages_dropped"):
                total[key] = int(total.get(key, 0)) + int(theirs.get(key, 0))
            hep, their_hep = total.get("hep"), theirs.get("hep")
            if isinstance(hep, dict) and isinstance(their_hep, dict):
                for key in ("packets_sent", "send_errors", "sampled_out"):
                    hep[key] = int(hep.get(key, 0)) + int(their_hep.get(key, 0))

    def metrics(self, status: dict[str, object]) -> list[str]:
        trace = status.get("trace")
        if not isinstance(trace, dict):
            return []
        hep = trace.get("hep") if isinstance(trace.get("hep"), dict) else {}
        assert isinstance(hep, dict)
        return [
            *single("vivait_trace_sessions", "gauge", "Running `ctl trace` sessions.", trace.get("sessions", 0)),
            *single("vivait_trace_messages_total", "counter", "SIP messages handed to trace sessions, all workers.", trace.get("messages_traced", 0)),
            *single(
                "vivait_trace_dropped_total",
                "counter",
                "Traced messages dropped (over trace.max_messages_per_s, or a session read too slowly).",
                trace.get("messages_dropped", 0),
            ),
            *single("vivait_hep_packets_total", "counter", "HEP packets sent to the collectors, all workers.", hep.get("packets_sent", 0)),
            *single("vivait_hep_send_errors_total", "counter", "HEP packets that could not be sent.", hep.get("send_errors", 0)),
            *single("vivait_hep_sampled_out_total", "counter", "Messages not exported because of trace.hep.sample_percent.", hep.get("sampled_out", 0)),
            *family(
                "vivait_hep_info",
                "gauge",
                "The HEP collectors in use (value 1).",
                [({"collector": c}, 1) for c in hep.get("collectors", [])],
            ),
        ]

    @classmethod
    def add_commands(cls, sub: argparse._SubParsersAction[Any], ctl_sub: argparse._SubParsersAction[Any]) -> None:
        from .cli import add_commands

        add_commands(ctl_sub)
