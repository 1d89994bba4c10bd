"""The running server: config → transports, SIP core, features, HTTP and admin servers.

`Application.start()` opens every listener (failing loudly when a port is taken),
`run_forever()` serves until SIGTERM/SIGINT, drains, flushes and returns; SIGHUP reloads.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiohttp import web

from . import __version__
from .admin import build_admin_app
from .certs import client_context, ensure_self_signed, server_context
from .config import Config, ConfigError, Listener, load_config
from .core import SipCore
from .flow.service import MdflowService
from .overload import LagMonitor
from .sip.message import Limits
from .sip.transaction import TimerConfig
from .transport.manager import TransportManager
from .transport.ws import make_ws_handler

log = logging.getLogger("vivait_sip.app")


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
    def __init__(self, config: Config, config_path: str | None = None, *, demo: bool = False) -> None:
        self.config = config
        self.config_path = config_path
        self.demo = demo
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
            ssl_client=client_context(),  # outgoing TLS verifies the peer's certificate
        )
        timers = config.sip.timers
        self.core = SipCore(
            send=self.transports.send,
            timers=TimerConfig(t1=timers.t1_ms / 1000, t2=timers.t2_ms / 1000, t4=timers.t4_ms / 1000),
            limits=self.limits,
            domains=config.domains,
            user_agent=f"{config.sip.user_agent}/{__version__}",
            max_transactions=limits.max_transactions,
            retry_after_s=limits.retry_after_s,
        )
        self.mdflow = MdflowService(config.mdflow)
        self.lag = LagMonitor(limits.overload_lag_ms / 1000, on_change=self.core.set_shedding)
        self.features: list[object] = []

    def _on_message(self, data: bytes, peer: object) -> None:
        self.core.on_message(data, peer)  # type: ignore[arg-type]

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
        tune_gc()

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
        self.core.counters["reloads"] += 1
        log.info("event=reloaded path=%s", self.config_path)
        return []

    async def run_forever(self) -> None:
        await self.stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        """Drain: stop accepting, let transactions finish briefly, flush the store."""
        log.info("event=stopping")
        deadline = asyncio.get_running_loop().time() + 2.0
        while len(self.core.tl) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await self.mdflow.stop()
        await self.lag.stop()
        for hook in reversed(self.stop_hooks):
            result = hook()
            if asyncio.iscoroutine(result):
                await result
        await self.transports.close()
        for runner in self._runners:
            await runner.cleanup()
        log.info("event=stopped")

    def status(self) -> dict[str, object]:
        out = self.core.status()
        counters = out["counters"]
        assert isinstance(counters, dict)
        for transport, count in self.transports.stats.by_transport.items():
            counters[f"connections_{transport}"] = count
        out["version"] = __version__
        out["listeners"] = [str(o) for o in self.opened]
        out["connections"] = self.transports.connection_count
        out["overload"] = {"shedding": self.lag.overloaded, "lag_ms": round(self.lag.lag_s * 1000, 1), "episodes": self.lag.episodes}
        out["transport"] = {
            "received": self.transports.stats.received,
            "sent": self.transports.stats.sent,
            "connections_refused": self.transports.stats.connections_refused,
            "send_errors": self.transports.stats.send_errors,
        }
        for feature in self.features:
            status = getattr(feature, "status", None)
            if callable(status):
                out.update(status())
        return out


# Features (registrar, …) register a starter here so the app wires them without import cycles.
_feature_starters: list[Callable[[Application], None]] = []


def feature_starter(fn: Callable[[Application], None]) -> Callable[[Application], None]:
    _feature_starters.append(fn)
    return fn


async def _index(request: web.Request) -> web.Response:
    return web.Response(text=f"vivait-sip {__version__}\nSIP over WebSocket: /sip (subprotocol 'sip')\n")


def tune_gc() -> None:
    """Move start-up objects out of the collector's sight and collect young objects less often.

    Under load the live set is mostly short-lived transactions; with CPython's defaults the
    full collections over that set paused the loop long enough for UDP retransmissions
    (measured in bench/options_bench.py: 1,500/s clean with defaults, 8,000/s without pauses).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


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
