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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiohttp import web

from . import __version__, native
from .admin import build_admin_app
from .certs import client_context, ensure_self_signed, server_context
from .config import Config, ConfigError, Listener, load_config
from .core import SipCore
from .flow.service import MdflowService
from .gcpolicy import GcKeeper, tune_gc
from .gcpolicy import stats as gc_stats
from .overload import LagMonitor
from .sip.message import Limits
from .sip.peer import Peer
from .sip.transaction import TimerConfig
from .transport.manager import TransportManager
from .transport.ws import make_ws_handler
from .workers import BOOTSTRAP_CALL, ENV_SPEC, SECRET_BYTES, Cluster, WorkerSpec, make_links

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
    def __init__(
        self,
        config: Config,
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
        self.worker_procs: dict[int, subprocess.Popen[bytes]] = {}
        self.exit_code = 0
        self.banner: list[str] = []
        self.data_dir = Path(config.data_dir)
        self.opened: list[OpenedListener] = []
        self.stopping = asyncio.Event()
        self.reload_hooks: list[Callable[[Config], None]] = []
        self.stop_hooks: list[Callable[[], object]] = []
        self._runners: list[web.AppRunner] = []
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
        )
        timers = config.sip.timers
        self.core = SipCore(
            send=self._send,
            timers=TimerConfig(t1=timers.t1_ms / 1000, t2=timers.t2_ms / 1000, t4=timers.t4_ms / 1000),
            limits=self.limits,
            domains=config.domains,
            user_agent=f"{config.sip.user_agent}/{__version__}",
            max_transactions=limits.max_transactions,
            max_completed_transactions=limits.max_completed_transactions,
            retry_after_s=limits.retry_after_s,
        )
        self.mdflow = MdflowService(config.mdflow)
        self.lag = LagMonitor(limits.overload_lag_ms / 1000, on_change=self.core.set_shedding)
        # Full collections when few transactions are alive (vivait_sip/gcpolicy.py).
        self.gc_keeper = GcKeeper(lambda: self.core.tl.active + self.core.tl.lingering)
        self.core.cluster = self.cluster
        self.features: list[object] = []
        # Per-worker status contributions, merged by worker 0 (features append here).
        self.status_merges: list[Callable[[dict[str, object], list[dict[str, object]]], None]] = []
        if self.cluster is not None:
            self._wire_cluster(self.cluster)

    @property
    def is_primary(self) -> bool:
        """True in a single-process server and in worker 0 (listeners, admin, HTTP)."""
        return self.cluster is None or self.cluster.is_primary

    def _on_message(self, data: bytes, peer: object) -> None:
        self.core.on_message(data, peer)  # type: ignore[arg-type]

    def _send(self, data: bytes, peer: Peer) -> None:
        cluster = self.cluster
        if cluster is not None and not cluster.is_primary and peer.transport != "udp":
            cluster.send_via(0, data, peer)  # worker 0 holds every connection
            return
        self.transports.send(data, peer)

    # ---- workers ------------------------------------------------------------------------
    def _wire_cluster(self, cluster: Cluster) -> None:
        core = self.core

        def forwarded(data: bytes, peer: Peer) -> None:
            core.on_message(data, peer, forwarded=True)

        def send_for_worker(data: bytes, peer: Peer) -> None:
            try:
                self.transports.send(data, peer)
            except Exception as exc:
                self.transports.stats.send_errors += 1
                log.debug("event=send_failed peer=%s error=%r", peer, str(exc))

        cluster.on_message = forwarded
        cluster.on_send = send_for_worker
        cluster.on_link_lost = self._worker_link_lost
        cluster.on_call("status", lambda args: self.status())
        cluster.on_event("reload", lambda args: self.reload())

    def _worker_link_lost(self, other: int) -> None:
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
        ready: dict[int, asyncio.Future[None]] = {}
        loop = asyncio.get_running_loop()
        for index in range(1, cluster.count):
            ready[index] = loop.create_future()
        cluster.on_event("ready", lambda args: _resolve(ready.get(int(args["index"]))))
        cluster.on_call(BOOTSTRAP_CALL, lambda args: {"secret": cluster.secret.hex(), "config": self.config.model_dump_json()})
        await cluster.connect({other: sock.detach() for other, sock in ends[0].items()})
        for index in range(1, cluster.count):
            link_fds = {other: sock.fileno() for other, sock in ends[index].items()}
            spec = WorkerSpec(
                index=index,
                count=cluster.count,
                udp_fds=udp_fds,
                local_hosts=local_hosts,
                link_fds=link_fds,
                config_path=self.config_path,
                demo=self.demo,
            )
            env = dict(os.environ, **{ENV_SPEC: spec.to_env()})
            fds = [fd for _, _, fd in udp_fds] + list(link_fds.values())
            self.worker_procs[index] = subprocess.Popen(
                [sys.executable, "-m", "vivait_sip", "worker"], env=env, pass_fds=fds, stdin=subprocess.DEVNULL
            )
            for sock in ends[index].values():
                sock.close()
        try:
            await asyncio.wait_for(asyncio.gather(*ready.values()), WORKER_START_TIMEOUT_S)
        except (TimeoutError, ConnectionError) as exc:
            raise StartupError(f"worker processes did not start: {exc or 'timeout'}") from None
        log.info("event=workers_started count=%d pids=%s", cluster.count, ",".join(str(p.pid) for p in self.worker_procs.values()))

    async def _adopt_worker_sockets(self, spec: WorkerSpec) -> None:
        for host, port, fd in spec.udp_fds:
            await self.transports.adopt_udp(Listener(transport="udp", host=host, port=port), fd)
        for host in spec.local_hosts:
            self.core.add_local_address(host)

    async def _stop_workers(self) -> None:
        for proc in self.worker_procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + WORKER_STOP_TIMEOUT_S
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
                cert, key = ensure_self_signed(self.data_dir / "certs", hosts)
            try:
                self.ssl_server = server_context(cert, key)
            except (OSError, ssl.SSLError) as exc:
                raise StartupError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
            self.transports.ssl_server = self.ssl_server
        return self.ssl_server

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        spec, cluster = self.worker_spec, self.cluster
        if spec is not None and cluster is not None:
            # Handlers first: a datagram read from the shared socket before them would be
            # answered 405 (worker 0 is already serving).
            for feature_start in _feature_starters:
                feature_start(self)
            await self._adopt_worker_sockets(spec)
            self.lag.start()
            tune_gc()
            self.gc_keeper.start()
            cluster.emit(0, "ready", index=cluster.index)
            return
        for feature_start in _feature_starters:
            feature_start(self)
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
        await self.mdflow.start()
        self.lag.start()
        self.core.counters["starts"] += 1
        if cluster is not None:
            await self._spawn_workers(cluster)
        tune_gc()
        self.gc_keeper.start()

    async def _serve(self, app: web.Application, host: str, port: int, what: str, context: ssl.SSLContext | None) -> int:
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=context, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(_bind_message(f"{what} {host}:{port}", exc)) from None
        self._runners.append(runner)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def _start_http(self) -> None:
        http = self.config.http
        if not http.enabled:
            return
        context = self._tls_context() if http.tls else None
        ws_name: Literal["ws", "wss"] = "wss" if http.tls else "ws"
        app = web.Application()
        app.router.add_get("/sip", make_ws_handler(self.transports, ws_name))
        app.router.add_get("/", _index)
        port = await self._serve(app, http.host, http.port, "http", context)
        self.opened.append(OpenedListener("http", "https" if http.tls else "http", http.host, port))
        self.opened.append(OpenedListener("sip", ws_name, http.host, port))
        self.transports.add_listener_record(Listener(transport=ws_name, host=http.host, port=port))
        self.core.add_local_address(http.host)

    async def _start_admin(self) -> None:
        admin = self.config.admin
        if not admin.enabled:
            return
        app = build_admin_app(self)
        port = await self._serve(app, admin.host, admin.port, "admin", None)
        self.opened.append(OpenedListener("admin", "http", admin.host, port))

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
        self.mdflow.reload(new.mdflow)
        for hook in self.reload_hooks:
            hook(new)
        if self.cluster is not None and self.cluster.is_primary:
            self.cluster.broadcast("reload")
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
        if self.worker_procs:
            await self._stop_workers()
        deadline = asyncio.get_running_loop().time() + 2.0
        while self.core.tl.active and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await self.mdflow.stop()
        await self.lag.stop()
        await self.gc_keeper.stop()
        for hook in reversed(self.stop_hooks):
            result = hook()
            if asyncio.iscoroutine(result):
                await result
        await self.transports.close()
        for runner in self._runners:
            await runner.cleanup()
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
        }
        if self.cluster is not None:
            out["worker_link_drops"] = self.cluster.dropped
        for feature in self.features:
            status = getattr(feature, "status", None)
            if callable(status):
                out.update(status())
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
        for merge in self.status_merges:
            merge(out, parts)
        out["counters"] = dict(sorted(counters.items()))
        out["workers"] = workers
        out["worker_link_drops"] = cluster.dropped + sum(int(p.get("worker_link_drops", 0)) for p in parts)  # type: ignore[call-overload]
        return out


# Features (registrar, …) register a starter here so the app wires them without import cycles.
_feature_starters: list[Callable[[Application], None]] = []


def feature_starter(fn: Callable[[Application], None]) -> Callable[[Application], None]:
    _feature_starters.append(fn)
    return fn


def _worker_row(index: int, pid: int, status: dict[str, object]) -> dict[str, object]:
    counters = status["counters"]
    assert isinstance(counters, dict)
    return {
        "index": index,
        "pid": pid,
        "requests_in": counters.get("requests_in", 0),
        "forwarded_to_worker": counters.get("forwarded_to_worker", 0),
        "transactions": status["transactions"],
    }


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


async def _index(request: web.Request) -> web.Response:
    return web.Response(text=f"vivait-sip {__version__}\nSIP over WebSocket: /sip (subprotocol 'sip')\n")


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
