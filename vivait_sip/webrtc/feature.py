"""The WebRTC gateway as a feature: the webfon (static files at `/`), its REST API under
`/api/`, webfon sessions and the web extensions they lease (docs/webrtc.md).

The browser is an ordinary SIP user agent over WSS (`/sip`, served by the application):
it registers its web extension with the short-lived credentials its login gave it and
calls through the B2BUA like any phone.  What this feature adds:

* **login** (`POST /api/login`): the user's number and password, checked against the
  registrar's stored HA1 (never stored or passed on); failures count towards the
  registrar's source bans (`SecurityMonitor`), as wrong digest answers do;
* **a web extension** per user (fixed `web_extension`, or leased from `web_pool`) and a
  random SIP password for it, valid while the user has a session: every worker's
  registrar accepts it for that extension only (`WebLease`, sent as typed messages);
* **hard XOR web**: while the web extension is registered the B2BUA rings it instead of
  the hard phone (`b2bua.feature.UserDirectoryView.devices`);
* **sessions end** at logout, at `session_ttl_s`, or when the session's `/sip`
  WebSocket has been gone `grace_s`: the lease goes (the pool extension returns), the
  extension's bindings are removed, and the hard phone rings again.

Sessions live in worker 0 (it serves HTTP); leases are copied to every worker.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import secrets
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..config import CoreConfig
from ..contract import Feature, Host, WorkerMessage, worker_message
from ..metrics import single
from ..registrar.digest import Algorithm, ha1
from ..registrar.feature import RegistrarFeature
from ..registrar.users import UserRecord, WebLease
from . import cli as webrtc_cli
from .config import WebrtcConfig
from .http import add_routes, client_of, read_json
from .sessions import SESSION_COOKIE, Lease, NoExtension, Session, Sessions

log = logging.getLogger("vivait_sip.webrtc")

SWEEP_S = 1.0


@worker_message("webrtc.lease")
@dataclass(frozen=True)
class LeaseGranted(WorkerMessage):
    """Worker 0 → all: `extension` is `user`'s web extension with these credentials."""

    extension: str
    user: str
    ha1_md5: str
    ha1_sha256: str
    expires_at: float


@worker_message("webrtc.release")
@dataclass(frozen=True)
class LeaseReleased(WorkerMessage):
    extension: str


@worker_message("webrtc.sync")
@dataclass(frozen=True)
class LeaseSync(WorkerMessage):
    """A worker that started → worker 0: send me every lease."""


class WebrtcFeature(Feature[WebrtcConfig]):
    """The webfon and its sessions (issue 12); see the module docstring."""

    name = "webrtc"
    config_key = "webrtc"
    config_model = WebrtcConfig
    order = 40  # after the registrar (10) and the B2BUA (30)
    messages = (LeaseGranted, LeaseReleased, LeaseSync)

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self.registrar: RegistrarFeature | None = None
        self.sessions = Sessions(
            realm=host.config.effective_realm(), node=self.settings.local_nodo_id, clock=time.time,
            on_lease=self._granted, on_release=self._released,
        )
        self.counters: Counter[str] = Counter()
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # A dummy HA1 for unknown users: the check costs the same as a wrong password.
        self._dummy = ha1(Algorithm.SHA256, "", "", secrets.token_hex(16))

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.registrar = self.host.feature(RegistrarFeature)
        self.host.on_call("webrtc_leases", lambda args: [lease.extension for lease in self._local_leases()])
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def start_worker(self) -> None:
        self.registrar = self.host.feature(RegistrarFeature)
        self.host.send_to_worker(0, LeaseSync())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)

    def reload(self, config: CoreConfig) -> None:
        self.sessions.node = self.settings_of(config).local_nodo_id

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                for session, why, lease in self.sessions.sweep(self.settings.grace_s):
                    self._ended(session, why, lease)
            except Exception:
                log.exception("event=webfon_sweep_failed")

    # ---- leases in every worker ---------------------------------------------------------------
    def _local_leases(self) -> list[WebLease]:
        return self.registrar.users.leases() if self.registrar is not None else []

    def _apply(self, lease: WebLease) -> None:
        if self.registrar is not None:
            self.registrar.users.lease(lease)

    def _granted(self, lease: Lease) -> None:
        msg = LeaseGranted(lease.extension, lease.user, lease.ha1_md5, lease.ha1_sha256, lease.expires_at)
        self._apply(WebLease(msg.extension, msg.user, msg.ha1_md5, msg.ha1_sha256, msg.expires_at))
        self.host.broadcast(msg)

    def _released(self, lease: Lease) -> None:
        if self.registrar is not None:
            self.registrar.users.release(lease.extension)
        self.host.broadcast(LeaseReleased(lease.extension))
        if self.settings.colas_limpiar_siempre:
            # Queues (the ACD) do not exist yet: this is where the extension's queue
            # membership will be cleaned (docs/webrtc.md).
            log.info("event=webfon_queues_cleaned extension=%s queues=0", lease.extension)
        self._spawn(self._unregister(lease.extension))

    async def _unregister(self, extension: str) -> None:
        """The extension's bindings go with its lease (a pool extension is someone else's next)."""
        if self.registrar is not None:
            removed = await self.registrar.unregister(extension)
            if removed:
                log.info("event=webfon_unregistered extension=%s bindings=%d", extension, removed)

    def _spawn(self, work: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:
            work.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_worker_message(self, source: int, msg: WorkerMessage) -> None:
        if isinstance(msg, LeaseGranted):
            self._apply(WebLease(msg.extension, msg.user, msg.ha1_md5, msg.ha1_sha256, msg.expires_at))
        elif isinstance(msg, LeaseReleased):
            if self.registrar is not None:
                self.registrar.users.release(msg.extension)
        elif isinstance(msg, LeaseSync):
            for lease in self.sessions.leases.values():
                self.host.send_to_worker(
                    source, LeaseGranted(lease.extension, lease.user, lease.ha1_md5, lease.ha1_sha256, lease.expires_at)
                )

    # ---- sessions ---------------------------------------------------------------------------
    def session_of(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))

    def ws_opened(self, session: Session) -> None:
        self.sessions.ws_opened(session)
        log.info("event=webfon_connected session=%s user=%s extension=%s", session.sid, session.user, session.extension)

    def ws_closed(self, session: Session) -> None:
        self.sessions.ws_closed(session)
        if session.websockets == 0:
            log.info("event=webfon_disconnected session=%s user=%s grace_s=%s", session.sid, session.user,
                     self.settings.grace_s)

    def _ended(self, session: Session, why: str, lease: Lease | None) -> None:
        log.info("event=webfon_logout session=%s user=%s extension=%s reason=%s released=%s", session.sid,
                 session.user, session.extension, why, lease is not None)

    def _check_password(self, record: UserRecord | None, number: str, password: str) -> bool:
        realm = self.sessions.realm
        given = ha1(Algorithm.SHA256, number, realm, password)
        stored = record.ha1_sha256 if record is not None and (not record.realm or record.realm == realm) else self._dummy
        return hmac.compare_digest(given, stored) and record is not None

    def _pool_members(self, pool: str | None) -> list[str]:
        if pool is None or self.registrar is None:
            return []
        for config in self.registrar.settings.web_pools:
            if config.name == pool:
                return list(config.numbers())
        return []

    def _taken(self, number: str) -> bool:
        """A pool member that is some user's number or extension is never leased."""
        users = self.registrar.users if self.registrar is not None else None
        return users is not None and (users.by_number(number) is not None or users.by_extension(number) is not None)

    def _max_digits(self) -> int:
        configured = self.settings.max_digi_llam_sal
        if configured is not None:
            return configured
        b2bua = getattr(self.host.config, "b2bua", None)
        return int(getattr(b2bua, "max_digi_llam_sal", 32))

    # ---- the REST API ---------------------------------------------------------------------------
    async def api_login(self, request: web.Request) -> web.StreamResponse:
        registrar = self.registrar
        if registrar is None:
            return _error(503, "the registrar is not loaded")
        client = client_of(request)
        monitor = registrar.monitor
        if monitor.is_banned(client):
            self.counters["login_refused_banned"] += 1
            return _error(429, "too many failed logins from your address; try again later",
                          headers={"Retry-After": str(int(self.host.config.security.ban_duration_s))})
        body = await read_json(request)
        number = body.get("user")
        password = body.get("password")
        lang = str(body["lang"]) if body.get("lang") in ("es", "en") else self.settings.default_lang
        if not isinstance(number, str) or not isinstance(password, str) or not number or not password \
                or len(number) > 64 or len(password) > 256:
            return _error(400, "user and password are required")
        users = registrar.users
        record = users.by_number(number) or users.by_extension(number)
        if record is not None and number not in (record.number, record.extension):
            record = None  # a web extension is no login name
        user = record.number if record is not None else number
        if not self._check_password(record, user, password):
            monitor.record_failure(client, number)
            self.counters["login_failed"] += 1
            log.info("event=webfon_login_failed user=%s client=%s", number, client)
            return _error(401, "wrong user or password")
        assert record is not None
        try:
            extension, pool = self.sessions.choose_extension(
                record.number, record.web_extension, record.web_pool, self._pool_members(record.web_pool), self._taken
            )
        except NoExtension as exc:
            self.sessions.counters["refused_no_extension"] += 1
            log.warning("event=webfon_no_extension user=%s reason=%r", record.number, str(exc))
            return _error(409, str(exc))
        token, session, lease = self.sessions.login(
            user=record.number, name=record.name, extension=extension, pool=pool, client=client,
            ttl_s=self.settings.session_ttl_s, lang=lang,
        )
        log.info("event=webfon_login session=%s user=%s extension=%s pool=%s client=%s", session.sid, session.user,
                 extension, pool or "-", client)
        response = web.json_response(self._session_json(request, session, lease))
        response.set_cookie(
            SESSION_COOKIE, token, max_age=self.settings.session_ttl_s, path="/", secure=True, httponly=True,
            samesite="Strict",
        )
        return response

    async def api_logout(self, request: web.Request) -> web.StreamResponse:
        session = self.session_of(request)
        response = web.json_response({"ok": True, "was_logged_in": session is not None})
        if session is not None:
            lease = self.sessions.end(session, "logout")
            self._ended(session, "logout", lease)
        response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        return response

    async def api_session(self, request: web.Request) -> web.StreamResponse:
        session = self.session_of(request)
        if session is None:
            return _error(401, "not logged in")
        return web.json_response(self._session_json(request, session, self.sessions.lease_for(session)))

    async def api_config(self, request: web.Request) -> web.StreamResponse:
        session = self.session_of(request)
        return web.json_response(self._page_config(session.user if session is not None else None))

    def _page_config(self, user: str | None) -> dict[str, Any]:
        settings = self.settings
        return {
            "title": settings.title,
            "logo": "/api/logo",
            "node": settings.local_nodo_id,
            "default_lang": settings.default_lang,
            "max_digits": self._max_digits(),
            "smart_buttons": [{"id": b.id, "label": b.label, "dial": b.dial} for b in settings.buttons_for(user)],
            "ice_servers": [s.model_dump(exclude_none=True) for s in settings.ice_servers],
        }

    def _session_json(self, request: web.Request, session: Session, lease: Lease | None) -> dict[str, Any]:
        domain = self.host.config.domains[0] if self.host.config.domains else (request.url.host or "127.0.0.1")
        scheme = "wss" if request.secure else "ws"
        return {
            "session": session.sid,
            "user": session.user,
            "name": session.name,
            "extension": session.extension,
            "expires_in": max(0, int(session.expires_at - time.time())),
            "lang": session.lang,
            "sip": {
                "uri": f"sip:{session.extension}@{domain}",
                "username": session.extension,
                "password": lease.password if lease is not None else None,
                "realm": self.sessions.realm,
                "ws_url": f"{scheme}://{request.host}/sip",
                "display_name": session.name or session.user,
                "register_expires_s": self.settings.register_expires_s,
                "user_agent": f"VIVAit Call Web (nodo {self.settings.local_nodo_id})",
            },
            "config": self._page_config(session.user),
        }

    # ---- status, admin, ctl --------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        if not self.host.is_primary:
            return {}
        return {"webrtc": {
            "node": self.settings.local_nodo_id, "sessions": len(self.sessions.sessions),
            "leases": len(self.sessions.leases),
            "connected": sum(1 for s in self.sessions.sessions.values() if s.websockets),
            **self.sessions.counters, **dict(self.counters),
        }}

    def metrics(self, status: dict[str, object]) -> list[str]:
        ours = status.get("webrtc")
        if not isinstance(ours, dict):
            return []
        lines = single("vivait_webfon_sessions", "gauge", "Webfon sessions logged in.", ours.get("sessions", 0))
        lines += single("vivait_webfon_connected", "gauge", "Webfon sessions with their WebSocket open.",
                        ours.get("connected", 0))
        lines += single("vivait_webfon_logins_total", "counter", "Webfon logins.", ours.get("logins", 0))
        lines += single("vivait_webfon_login_failures_total", "counter", "Webfon logins refused (wrong user or password).",
                        ours.get("login_failed", 0))
        return lines

    async def list_sessions(self) -> dict[str, Any]:
        now = time.time()
        rows = []
        for session in sorted(self.sessions.sessions.values(), key=lambda s: (s.user, s.created_at)):
            row = session.public(self.sessions.lease_for(session), now)
            registered = await self.registrar.registrations(session.extension) if self.registrar is not None else []
            row["registered"] = len(registered)
            rows.append(row)
        settings = self.settings
        return {"node": settings.local_nodo_id, "grace_s": settings.grace_s,
                "colas_limpiar_siempre": settings.colas_limpiar_siempre, "sessions": rows}

    def admin_routes(self, app: web.Application) -> None:
        async def webfon(request: web.Request) -> web.Response:
            return web.json_response(await self.list_sessions())

        app.router.add_get("/api/webfon", webfon)

    def web_routes(self, app: web.Application) -> None:
        if self.settings.enabled:
            add_routes(app, self)

    @classmethod
    def add_commands(cls, sub: argparse._SubParsersAction[Any], ctl_sub: argparse._SubParsersAction[Any]) -> None:
        webrtc_cli.add_commands(sub, ctl_sub)


def _error(status: int, text: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": text}, status=status, headers=headers)
