"""The running server: config → transports, SIP core, features, HTTP and admin servers.

`Application.start()` opens every listener (failing loudly when a port is taken),
`run_forever()` serves until SIGTERM/SIGINT, drains, flushes and returns; SIGHUP reloads.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import signal
import ssl
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from aiohttp import web

from . import __version__, native
from .admin import build_admin_app, routes
from .admin.auth import TokenError, exposure_warning, protect_admin_app
from .certs import client_context, ensure_self_signed, server_context
from .config import ConfigError, CoreConfig, load_config
from .contract import CallHandler, Feature, InputFilter, StartError, TraceHook, WorkerMessage
from .core import SipCore, owner_key
from .features import feature_classes
from .gcpolicy import GcKeeper, tune_gc
from .gcpolicy import stats as gc_stats
from .overload import LagMonitor
from .sip.address import Listener
from .sip.message import Limits, Request
from .sip.peer import Peer
from .sip.transaction import TimerConfig
from .sip.ua import SessionTimerConfig
from .sip.uri import SipUri
from .store.private import private_dir
from .transport.accept import ConnectionGate, parse_networks
from .transport.fdlimit import accept_budget, raise_nofile_limit
from .transport.httpserver import HttpLimits, HttpServer
from .transport.manager import TransportManager
from .transport.resolver import ResolveError, Resolver
from .transport.ws import make_ws_handler
from .workers import (
    BOOTSTRAP_CALL,
    ENV_SPEC,
    SECRET_BYTES,
    Cluster,
    ReloadConfig,
    SendFailed,
    WorkerReady,
    WorkerSpec,
    make_links,
)

F = TypeVar("F", bound=Feature[Any])
MAX_WORKERS = 64  # send-failure tokens carry the worker index in their low 6 bits

log = logging.getLogger("vivait_sip.app")

WORKER_START_TIMEOUT_S = 30.0
WORKER_STOP_TIMEOUT_S = 10.0


class StartupError(Exception):
    """The server cannot start (port taken, unreadable certificate…)."""


@dataclass
class OpenedListener:
    kind: str  # "sip", "http", "admin"
    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind} {self.transport} {host}:{self.port}"


class Application:
    """The server; it is the `contract.Host` its features see."""

    def __init__(
        self,
        config: CoreConfig,
        config_path: str | None = None,
        *,
        demo: bool = False,
        worker: tuple[WorkerSpec, Cluster] | None = None,
    ) -> None:
        """`worker`: set in workers 1..N-1 (their spec and already connected links)."""
        self.config = config
        self.config_path = config_path
        self.demo = demo
        self.worker_spec = worker[0] if worker is not None else None
        self.cluster: Cluster | None = None
        if worker is not None:
            self.cluster = worker[1]
        elif config.sip.workers > 1:
            self.cluster = Cluster(0, config.sip.workers, secrets.token_bytes(SECRET_BYTES))
        self.secret = self.cluster.secret if self.cluster is not None else secrets.token_bytes(SECRET_BYTES)
        self.worker_procs: dict[int, subprocess.Popen[bytes]] = {}
        self.exit_code = 0
        self.banner: list[str] = []
        self.data_dir = Path(config.data_dir)
        self.opened: list[OpenedListener] = []
        self.stopping = asyncio.Event()
        self._http_servers: list[HttpServer] = []
        # Connections admitted at accept (per source, per service, descriptor budget).
        self.gate = ConnectionGate()
        limits = config.sip.limits
        self.limits = Limits(
            max_message_bytes=limits.max_message_bytes,
            max_body_bytes=limits.max_body_bytes,
            max_headers=limits.max_headers,
            max_line_bytes=limits.max_line_bytes,
            max_uri_bytes=limits.max_uri_bytes,
        )
        self.ssl_server: ssl.SSLContext | None = None
        self.transports = TransportManager(
            self._on_message,
            limits=self.limits,
            max_connections_per_ip=limits.max_connections_per_ip,
            max_connections=limits.max_connections,
            idle_timeout_s=limits.tcp_idle_timeout_s,
            udp_receive_buffer_bytes=limits.udp_receive_buffer_bytes,
            ssl_client=client_context(),  # outgoing TLS verifies the peer's certificate
            gate=self.gate,
            tls_handshake_timeout_s=limits.tls_handshake_timeout_s,
        )
        timers = config.sip.timers
        self._local_cache: dict[tuple[str, str], tuple[str, int]] = {}
        self.core = SipCore(
            send=self._send,
            timers=TimerConfig(t1=timers.t1_ms / 1000, t2=timers.t2_ms / 1000, t4=timers.t4_ms / 1000),
            limits=self.limits,
            local=self._local_address,
            domains=config.domains,
            user_agent=config.sip.user_agent,  # verbatim; "" sends no Server header
            max_transactions=limits.max_transactions,
            max_completed_transactions=limits.max_completed_transactions,
            max_dialogs=limits.max_dialogs,
            session_timer=session_timer_config(config),
            retry_after_s=limits.retry_after_s,
        )
        self.lag = LagMonitor(limits.overload_lag_ms / 1000, on_change=self.core.set_shedding)
        # Full collections when few transactions are alive (vivait_sip/gcpolicy.py).
        self.gc_keeper = GcKeeper(lambda: self.core.ua.active_transactions + self.core.ua.lingering_transactions)
        self.core.cluster = self.cluster
        self.transports.on_connection_lost = self._connection_lost
        self.transports.on_send_failed = self._send_failed
        self.transports.on_framing_error = self.core.reject_unframeable
        self._calls: dict[str, CallHandler] = {}
        self._resolver = Resolver()
        self._ready: dict[int, asyncio.Future[None]] = {}
        if self.cluster is not None:
            self._wire_cluster(self.cluster)
        private_dir(self.data_dir)  # 0700: HA1s, keys and tokens live here
        self.features: list[Feature[Any]] = [cls(self) for cls in feature_classes()]
        self._message_owner: dict[type[WorkerMessage], Feature[Any]] = {}
        self._input_filters: list[InputFilter] = []
        for feature in self.features:
            self._plug(feature)

    def _plug(self, feature: Feature[Any]) -> None:
        """What the feature declares goes where the core looks for it."""
        core = self.core
        for method, handler in feature.request_handlers().items():
            core.register(method, handler, feature.name)
            core.stateless_when.pop(method, None)  # a feature taking a method over decides alone
        core.add_owner(feature.name, feature.on_ua_event)
        core.stateless_when.update(feature.stateless_checks())
        input_filter = feature.input_filter()
        if input_filter is not None:
            self._input_filters.append(input_filter)
        for message_type in feature.messages:
            self._message_owner[message_type] = feature

    # ---- contract.Host ----------------------------------------------------------------------
    @property
    def sip(self) -> SipCore:
        return self.core

    @property
    def counters(self) -> Counter[str]:
        return self.core.counters

    @property
    def worker_index(self) -> int:
        return 0 if self.cluster is None else self.cluster.index

    @property
    def worker_count(self) -> int:
        return 1 if self.cluster is None else self.cluster.count

    def owner_of(self, key: str) -> int:
        return 0 if self.cluster is None else self.cluster.owner(key)

    def owner_of_message(self, req: Request) -> int:
        return self.owner_of(owner_key(req))

    def send_to_worker(self, worker: int, msg: WorkerMessage) -> None:
        if self.cluster is None or worker == self.cluster.index:
            self._on_typed(self.worker_index, msg)
        else:
            self.cluster.send(worker, msg)

    def broadcast(self, msg: WorkerMessage) -> None:
        if self.cluster is not None:
            self.cluster.broadcast(msg)

    def on_call(self, name: str, handler: CallHandler) -> None:
        self._calls[name] = handler
        if self.cluster is not None:
            self.cluster.on_call(name, handler)

    async def call_workers(self, name: str, **args: Any) -> list[Any]:
        if self.cluster is None or not self.cluster.links:
            return []
        return await self.cluster.call_all(name, **args)

    def is_local_domain(self, host: str) -> bool:
        return self.core.is_local_domain(host)

    def send_raw(self, data: bytes, peer: Peer) -> None:
        try:
            self._send(data, peer)
        except Exception as exc:  # a dead connection: nothing to answer on
            log.debug("event=send_raw_failed peer=%s error=%r", peer, str(exc))

    def inherited_fds(self, feature: str) -> dict[str, int]:
        spec = self.worker_spec
        return dict(spec.feature_fds.get(feature, {})) if spec is not None else {}

    async def resolve(self, uri: SipUri) -> list[Peer]:
        try:
            targets = await self._resolver.resolve(uri)
        except ResolveError as exc:
            log.info("event=resolve_failed uri=%r error=%r", str(uri), str(exc))
            return []
        return [Peer(t.transport, t.host, t.port) for t in targets]

    def feature(self, cls: type[F]) -> F | None:
        for feature in self.features:
            if isinstance(feature, cls):
                return feature
        return None

    def set_trace(self, hook: TraceHook | None) -> None:
        self.transports.trace = hook

    @property
    def is_primary(self) -> bool:
        """True in a single-process server and in worker 0 (listeners, admin, HTTP)."""
        return self.cluster is None or self.cluster.is_primary

    def _local_address(self, peer: Peer) -> tuple[str, int]:
        """(host, port) we write into Via, Contact, Record-Route and SDP towards `peer`:
        the listener of its transport (the HTTP one for WebSocket), advertised address
        first; for a wildcard bind, the source address the routing table would use."""
        key = (peer.transport, peer.host)
        found = self._local_cache.get(key)
        if found is not None:
            return found
        listeners = [lst for lst in self.transports.listeners if lst.transport == peer.transport]
        family_v6 = ":" in peer.host
        listener = next((lst for lst in listeners if (":" in lst.host) == family_v6), None) or (listeners[0] if listeners else None)
        if listener is None:
            host, port = "127.0.0.1", 5060
        elif listener.is_wildcard:
            host, port = self.transports.source_address(peer.host) or listener.host, listener.port
        else:
            host, port = listener.sent_by
        if len(self._local_cache) >= 4096:
            self._local_cache = {}
        self._local_cache[key] = (host, port)
        return host, port

    def _on_message(self, data: bytes, peer: Peer) -> None:
        for input_filter in self._input_filters:
            if input_filter(data, peer):
                return
        self.core.on_message(data, peer)

    def _send(self, data: bytes, peer: Peer, tx_id: int | None = None) -> None:
        cluster = self.cluster
        if cluster is not None and not cluster.is_primary and peer.transport != "udp":
            cluster.send_via(0, data, peer, tx_id)  # worker 0 holds every connection
            return
        self.transports.send(data, peer, None if tx_id is None else tx_id * MAX_WORKERS + self.worker_index)

    def _send_failed(self, peer: Peer, token: int, error: str) -> None:
        """A connection could not be opened for a transaction's message: tell its owner."""
        worker, tx_id = token % MAX_WORKERS, token // MAX_WORKERS
        if worker == self.worker_index:
            self.core.transport_failed(tx_id)
        elif self.cluster is not None:
            self.cluster.send(worker, SendFailed(tx_id, str(peer), error))

    def _connection_lost(self, peer: Peer) -> None:
        for feature in self.features:
            feature.on_connection_lost(peer)

    # ---- workers ------------------------------------------------------------------------
    def _wire_cluster(self, cluster: Cluster) -> None:
        core = self.core

        def forwarded(data: bytes, peer: Peer) -> None:
            core.on_message(data, peer, forwarded=True)

        def send_for_worker(source: int, data: bytes, peer: Peer, tx_id: int | None) -> None:
            try:
                self.transports.send(data, peer, None if tx_id is None else tx_id * MAX_WORKERS + source)
            except Exception as exc:
                self.transports.stats.send_errors += 1
                log.debug("event=send_failed peer=%s error=%r", peer, str(exc))
                if tx_id is not None:
                    cluster.send(source, SendFailed(tx_id, str(peer), str(exc)))

        cluster.on_message = forwarded
        cluster.on_send = send_for_worker
        cluster.on_typed = self._on_typed
        cluster.on_link_lost = self._worker_link_lost
        cluster.on_call("status", lambda args: self.status())

    def _on_typed(self, source: int, msg: WorkerMessage) -> None:
        if isinstance(msg, SendFailed):
            self.core.transport_failed(msg.tx_id)
        elif isinstance(msg, ReloadConfig):
            self.reload()
        elif isinstance(msg, WorkerReady):
            _resolve(self._ready.get(msg.index))
        else:
            owner = self._message_owner.get(type(msg))
            if owner is None:
                log.warning("event=worker_message_unhandled kind=%s", msg.kind)
                return
            owner.on_worker_message(source, msg)

    def _worker_link_lost(self, other: int) -> None:
        for feature in self.features:
            feature.on_worker_lost(other)
        if self.stopping.is_set():
            return
        if self.is_primary:
            log.error("event=worker_exited index=%d action=stopping_server", other)
            self.exit_code = 1
        else:
            log.info("event=worker0_gone action=stopping")
        self.stopping.set()

    async def _spawn_workers(self, cluster: Cluster) -> None:
        """Start workers 1..N-1 with the UDP sockets and their socketpair ends; wait until ready."""
        ends = make_links(cluster.count)
        udp_fds = self.transports.udp_sockets()
        local_hosts = sorted(self.core.local_domains)
        loop = asyncio.get_running_loop()
        ready = self._ready
        for index in range(1, cluster.count):
            ready[index] = loop.create_future()
        cluster.on_call(BOOTSTRAP_CALL, lambda args: {"secret": cluster.secret.hex(), "config": self.config.model_dump_json()})
        await cluster.connect({other: sock.detach() for other, sock in ends[0].items()})
        for index in range(1, cluster.count):
            link_fds = {other: sock.fileno() for other, sock in ends[index].items()}
            feature_fds = {f.name: given for f in self.features if (given := f.fds_for_worker(index))}
            spec = WorkerSpec(
                index=index,
                count=cluster.count,
                udp_fds=udp_fds,
                local_hosts=local_hosts,
                link_fds=link_fds,
                config_path=self.config_path,
                demo=self.demo,
                feature_fds=feature_fds,
            )
            env = dict(os.environ, **{ENV_SPEC: spec.to_env()})
            fds = [fd for _, _, fd in udp_fds] + list(link_fds.values())
            fds += [fd for named in feature_fds.values() for fd in named.values()]
            self.worker_procs[index] = subprocess.Popen(
                [sys.executable, "-m", "vivait_sip", "worker"], env=env, pass_fds=fds, stdin=subprocess.DEVNULL
            )
            for sock in ends[index].values():
                sock.close()
            for feature in self.features:
                feature.worker_spawned(index)
        try:
            await asyncio.wait_for(asyncio.gather(*ready.values()), WORKER_START_TIMEOUT_S)
        except (TimeoutError, ConnectionError) as exc:
            raise StartupError(f"worker processes did not start: {exc or 'timeout'}") from None
        log.info("event=workers_started count=%d pids=%s", cluster.count, ",".join(str(p.pid) for p in self.worker_procs.values()))

    async def _adopt_worker_sockets(self, spec: WorkerSpec) -> None:
        for host, port, fd in spec.udp_fds:
            await self.transports.adopt_udp(Listener("udp", host, port), fd)
        for host in spec.local_hosts:
            self.core.add_local_address(host)

    async def _stop_workers(self, grace: float = 0.0) -> None:
        for proc in self.worker_procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + WORKER_STOP_TIMEOUT_S + grace
        for index, proc in self.worker_procs.items():
            while proc.poll() is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                log.error("event=worker_kill index=%d pid=%d reason=stop_timeout", index, proc.pid)
                proc.kill()
                proc.wait()

    # ---- start-up -----------------------------------------------------------------------
    def _tls_context(self) -> ssl.SSLContext:
        if self.ssl_server is None:
            tls = self.config.tls
            if tls.cert_file and tls.key_file:
                cert, key = Path(tls.cert_file), Path(tls.key_file)
            else:
                hosts = [lst.host for lst in self.config.listeners] + list(self.config.domains)
                hosts += [self.config.http.host, self.config.admin.host]
                cert, key = ensure_self_signed(self.data_dir / "certs", hosts)
            try:
                self.ssl_server = server_context(cert, key)
            except (OSError, ssl.SSLError) as exc:
                raise StartupError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
            self.transports.ssl_server = self.ssl_server
        return self.ssl_server

    async def start(self) -> None:
        spec, cluster = self.worker_spec, self.cluster
        file_limit = raise_nofile_limit()
        if spec is not None and cluster is not None:
            # Features first: a datagram read from the shared socket before them would be
            # answered 405 (worker 0 is already serving).
            for feature in self.features:
                try:
                    await feature.start_worker()
                except StartError as exc:
                    raise StartupError(f"{feature.name}: {exc}") from None
            await self._adopt_worker_sockets(spec)
            self.lag.start()
            tune_gc()
            self.gc_keeper.start()
            cluster.send(0, WorkerReady(cluster.index))
            return
        for feature in self.features:
            try:
                await feature.start()
            except StartError as exc:
                raise StartupError(f"{feature.name}: {exc}") from None
        reserved = self.config.sip.limits.reserved_fds
        self.gate.set_budget(accept_budget(file_limit, reserved), reserved)
        for listener in self.config.listeners:
            if listener.transport in ("ws", "wss"):
                continue
            if listener.transport == "tls":
                self._tls_context()
            try:
                real = await self.transports.listen(listener)
            except OSError as exc:
                raise StartupError(_bind_message(str(listener), exc)) from None
            self.core.add_local_address(real.host)
            self.opened.append(OpenedListener("sip", real.transport, real.host, real.port))
        await self._start_http()
        await self._start_admin()
        self.lag.start()
        self.core.counters["starts"] += 1
        if cluster is not None:
            await self._spawn_workers(cluster)
        tune_gc()
        self.gc_keeper.start()

    async def _serve(self, server: HttpServer, host: str, port: int) -> int:
        try:
            real_port = await server.start(host, port)
        except OSError as exc:
            raise StartupError(_bind_message(f"{server.service} {host}:{port}", exc)) from None
        self._http_servers.append(server)
        return real_port

    async def _start_http(self) -> None:
        http = self.config.http
        if not http.enabled:
            return
        context = self._tls_context() if http.tls else None
        ws_name: Literal["ws", "wss"] = "wss" if http.tls else "ws"
        app = web.Application()
        app.router.add_get("/sip", make_ws_handler(self.transports, ws_name))
        for feature in self.features:
            feature.web_routes(app)
        if "GET /" not in routes(app):  # the webfon takes the root when it is served
            app.router.add_get("/", _index)
        limits = HttpLimits(
            max_connections_per_ip=http.max_connections_per_ip,
            tls_handshake_timeout_s=http.tls_handshake_timeout_s,
            header_timeout_s=http.header_timeout_s,
            keepalive_timeout_s=http.keepalive_timeout_s,
            trusted_proxies=parse_networks(http.trusted_proxies),
        )
        server = HttpServer(app, service="http", gate=self.gate, limits=limits, ssl_context=context)
        port = await self._serve(server, http.host, http.port)
        self.opened.append(OpenedListener("http", "https" if http.tls else "http", http.host, port))
        self.opened.append(OpenedListener("sip", ws_name, http.host, port))
        self.transports.add_listener_record(Listener(ws_name, http.host, port))
        self.core.add_local_address(http.host)

    async def _start_admin(self) -> None:
        admin = self.config.admin
        if not admin.enabled:
            return
        app = build_admin_app(self)
        try:
            protect_admin_app(app, admin, self.data_dir)
        except TokenError as exc:
            raise StartupError(str(exc)) from None
        http = self.config.http
        limits = HttpLimits(
            max_connections_per_ip=admin.max_connections_per_ip,
            tls_handshake_timeout_s=http.tls_handshake_timeout_s,
            header_timeout_s=http.header_timeout_s,
            keepalive_timeout_s=http.keepalive_timeout_s,
        )
        context = self._tls_context() if admin.tls else None
        server = HttpServer(app, service="admin", gate=self.gate, limits=limits, ssl_context=context, privileged=True)
        port = await self._serve(server, admin.host, admin.port)
        self.opened.append(OpenedListener("admin", "https" if admin.tls else "http", admin.host, port))
        warning = exposure_warning(admin.host, port, admin.tls)
        if warning is not None:
            log.warning("event=admin_exposed host=%s port=%d tls=%s", admin.host, port, admin.tls)
            self.banner.append(warning)

    # ---- running --------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> list[str]:
        """Re-read the config file and apply what can change live; returns error lines."""
        if self.config_path is None:
            log.info("event=reload_skipped reason=no_config_file")
            return []
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            for line in exc.errors:
                log.error("event=reload_failed error=%r", line)
            return exc.errors
        self.config = new
        self.core.set_user_agent(new.sip.user_agent)
        for feature in self.features:
            feature.reload(new)
        if self.cluster is not None and self.cluster.is_primary:
            self.cluster.broadcast(ReloadConfig())
        self.core.counters["reloads"] += 1
        log.info("event=reloaded path=%s", self.config_path)
        return []

    async def run_forever(self) -> None:
        await self.stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        """Drain: stop accepting, let transactions finish briefly, flush the store."""
        log.info("event=stopping")
        self.stopping.set()
        # Every feature stops taking new work at once (the B2BUA: 503 to new calls) and
        # says how long its stop may drain; the other workers drain meanwhile.
        grace = max((feature.stopping() for feature in self.features), default=0.0)
        if self.worker_procs:
            await self._stop_workers(grace)
        deadline = asyncio.get_running_loop().time() + 2.0
        while self.core.ua.active_transactions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await self.lag.stop()
        await self.gc_keeper.stop()
        for feature in reversed(self.features):
            await feature.stop()
        await self.transports.close()
        for server in self._http_servers:
            await server.close()
        if self.cluster is not None:
            self.cluster.close()
        log.info("event=stopped")

    def status(self) -> dict[str, object]:
        out = self.core.status()
        counters = out["counters"]
        assert isinstance(counters, dict)
        for transport, count in self.transports.stats.by_transport.items():
            counters[f"connections_{transport}"] = count
        out["version"] = __version__
        out["pid"] = os.getpid()
        out["native"] = native.state  # compiled hot modules in use? (vivait_sip/native.py)
        out["listeners"] = [str(o) for o in self.opened]
        out["connections"] = self.transports.connection_count
        out["gc"] = dict(gc_stats)
        out["overload"] = {"shedding": self.lag.overloaded, "lag_ms": round(self.lag.lag_s * 1000, 1), "episodes": self.lag.episodes}
        out["transport"] = {
            "received": self.transports.stats.received,
            "sent": self.transports.stats.sent,
            "connections_refused": self.transports.stats.connections_refused,
            "send_errors": self.transports.stats.send_errors,
            **self.gate.counters,  # refusals at accept, handshake and header timeouts
        }
        if self.cluster is not None:
            out["worker_link_drops"] = self.cluster.dropped
        for feature in self.features:
            out.update(feature.status())
        return out

    async def status_all(self) -> dict[str, object]:
        """`status()`, with every worker's counters added up when there are several."""
        out = self.status()
        cluster = self.cluster
        if cluster is None or not cluster.is_primary or not cluster.links:
            return out
        parts: list[dict[str, object]] = await cluster.call_all("status")
        workers = [_worker_row(0, os.getpid(), out)]
        workers += [_worker_row(i, self.worker_procs[i].pid, part) for i, part in zip(sorted(cluster.links), parts, strict=True)]
        counters = out["counters"]
        transport = out["transport"]
        assert isinstance(counters, dict) and isinstance(transport, dict)
        for part in parts:
            for name, value in dict(part["counters"]).items():  # type: ignore[call-overload]
                counters[name] = counters.get(name, 0) + value
            for name, value in dict(part["transport"]).items():  # type: ignore[call-overload]
                transport[name] = transport.get(name, 0) + value
            for key in ("transactions", "transactions_completed_waiting"):
                out[key] = int(out[key]) + int(part[key])  # type: ignore[call-overload]
        for feature in self.features:
            feature.merge_status(out, parts)
        out["counters"] = dict(sorted(counters.items()))
        out["workers"] = workers
        out["worker_link_drops"] = cluster.dropped + sum(int(p.get("worker_link_drops", 0)) for p in parts)  # type: ignore[call-overload]
        return out


def session_timer_config(config: CoreConfig) -> SessionTimerConfig | None:
    timers = config.sip.session_timers
    return SessionTimerConfig(timers.expires_s, timers.min_se_s) if timers.enabled else None


def _worker_row(index: int, pid: int, status: dict[str, object]) -> dict[str, object]:
    counters = status["counters"]
    assert isinstance(counters, dict)
    return {
        "index": index,
        "pid": pid,
        "requests_in": counters.get("requests_in", 0),
        "forwarded_to_worker": counters.get("forwarded_to_worker", 0),
        "transactions": status["transactions"],
        "overload": dict(status["overload"]),  # type: ignore[call-overload]
        "transport": dict(status["transport"]),  # type: ignore[call-overload]
    }


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


async def _index(request: web.Request) -> web.Response:
    """The HTTPS root: what is served here (the webfon will replace this page)."""
    lines = [f"vivait-sip {__version__}", "SIP over WebSocket: GET /sip (subprotocol 'sip', RFC 7118)"]
    others = [route for route in routes(request.app) if route not in ("GET /", "GET /sip")]
    lines += [f"also: {route}" for route in others]
    return web.Response(text="\n".join(lines) + "\n")


def _bind_message(what: str, exc: OSError) -> str:
    if exc.errno is None and isinstance(exc.__cause__, OSError):
        exc = exc.__cause__  # uvloop wraps the errno-carrying error
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {what}: address already in use (is another server running?)"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {what}: permission denied"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {what}: address not available on this host"
    return f"cannot listen on {what}: {exc.strerror or exc}"
