"""Wires the registrar into the running server (users, location, REGISTER, guards, bans).

`vivait_sip.cli` imports this module through FEATURE_MODULES; code that builds an
`Application` directly (tests, embedding) must `import vivait_sip.registrar.feature`
first so the starter below is registered.

User precedence: the store (DATA_DIR/vivait.db) holds every user.  Users and ranges
from the config file are re-imported at start and on every reload as "config" users
(overwriting a CLI-added user with the same number: the config wins; config users no
longer in the file are deleted); users added with `vivait-sip user add/import` stay.
In demo mode (no --config) users 6140..6143 get random passwords, kept in the store so
they survive restarts, and printed in the start-up banner.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import time

from aiohttp import web

from ..admin import route_hooks
from ..app import Application, feature_starter
from ..config import Config
from ..core import owner_key
from ..sip.peer import Peer
from ..store import Store
from ..transport.manager import MessageHandler
from . import cli as _registrar_cli  # noqa: F401  (registers the user/ctl commands)
from .admin import add_routes, list_bindings, remove_bindings
from .config import RegistrarConfig, UserConfig
from .digest import Algorithm, Authenticator, NonceManager
from .guard import CallGuard
from .location import LocationService
from .register import Registrar
from .security import AuthGate, SecurityMonitor
from .users import UserDirectory, UserRecord, config_users, user_from_config

log = logging.getLogger("vivait_sip.registrar")

DEMO_USERS = ("6140", "6141", "6142", "6143")
_ACK = b"ACK "


class RegistrarFeature:
    """Owns the registrar's state for one Application; `status()` feeds `ctl status`."""

    def __init__(self, app: Application) -> None:
        self.app = app
        config = app.config
        self.realm = config.effective_realm()
        self.store = Store.open(app.data_dir)
        self.users = UserDirectory(self.realm)
        self.location = LocationService(self.store)
        self.monitor = SecurityMonitor(config.security)
        settings = config.registrar
        # Worker processes share one nonce secret: a challenge from one verifies in another.
        secret = app.cluster.secret if app.cluster is not None else secrets.token_bytes(32)
        self.nonces = NonceManager(secret, settings.nonce_lifetime_s, time.time, random_bytes=unique_bytes)
        self.authenticator = Authenticator(
            self.realm,
            self.nonces,
            self.users.ha1_lookup,
            algorithms=[Algorithm(a) for a in settings.algorithms],
        )
        self.gate = AuthGate(self.authenticator, self.monitor)
        self.gate.set_trunks((t.name, t.networks) for t in settings.trunks)
        self.registrar = Registrar(app.core, self.gate, self.users, self.location, settings)
        self.guard = CallGuard(app.core, self.gate, self.users)
        self._demo_passwords: dict[str, str] = self._demo_users() if app.demo else {}
        self._task: asyncio.Task[None] | None = None

    # ---- users ----------------------------------------------------------------------
    def _demo_users(self) -> dict[str, str]:
        """Random demo passwords, created once and kept in the store's meta table."""
        try:
            stored = json.loads(self.store.get_meta("demo_passwords") or "{}")
        except ValueError:
            stored = {}
        passwords = {n: str(stored.get(n) or secrets.token_urlsafe(9)) for n in DEMO_USERS}
        if passwords != stored:
            self.store.set_meta("demo_passwords", json.dumps(passwords))
        return passwords

    def _config_users(self, settings: RegistrarConfig) -> list[UserRecord]:
        records = config_users(settings, self.realm)
        for number, password in self._demo_passwords.items():
            demo = UserConfig(number=number, name=f"Demo {number}", password=password)
            records.append(user_from_config(demo, self.realm))
        return records

    def reload_users(self) -> int:
        """Config users replace the store's config-managed ones (a CLI user with the same
        number is overwritten: config wins); the directory is then the whole store.

        With worker processes, worker 0 writes the store and the others then read it.
        """
        app = self.app
        if app.is_primary:
            self.store.replace_config_users(self._config_users(app.config.registrar))
        self.users.load(self.store.list_users())
        if app.cluster is not None and app.cluster.is_primary:
            app.cluster.broadcast("registrar_reload_users")
        return len(self.users)

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        app = self.app
        count = self.reload_users()
        cluster = app.cluster
        self.location.load(None if cluster is None else cluster.owns)
        if cluster is not None:
            self._wire_cluster()
        settings = app.config.registrar
        self._task = asyncio.get_running_loop().create_task(
            self.location.start(settings.flush_interval_ms / 1000, settings.purge_interval_s)
        )
        app.core.register("REGISTER", self.registrar.handle)
        # A REGISTER without credentials from a non-trunk source can only be answered
        # (401, or 403/400/423 before that) and changes nothing: no transaction needed.
        gate = self.gate
        app.core.stateless_when["REGISTER"] = lambda req, peer: (
            "authorization" not in req.headers and gate.trunk_for(peer.host) is None
        )
        self.guard.register()
        app.transports.on_message = self._ban_filter(app.transports.on_message)
        previous_lost = app.transports.on_connection_lost

        def connection_lost(peer: Peer) -> None:
            previous_lost(peer)
            if peer.conn_id is not None:
                self._flow_failed(peer.conn_id, str(peer))
                if cluster is not None:
                    cluster.broadcast("registrar_flow_lost", conn_id=peer.conn_id, peer=str(peer))

        app.transports.on_connection_lost = connection_lost
        app.stop_hooks.append(self.stop)
        app.reload_hooks.append(self.reload)
        app.status_merges.append(_merge_status)
        app.features.append(self)
        for number, password in self._demo_passwords.items():
            app.banner.append(
                f"demo user {number} password {password} "
                f"(register sip:{number}@127.0.0.1, auth user {number}, realm {self.realm})"
            )
        log.info("event=registrar_started users=%d bindings=%d realm=%s", count, self.location.count(), self.realm)

    def _flow_failed(self, conn_id: int, peer: str) -> None:
        removed = self.location.remove_flow(conn_id)
        if removed:
            log.info("event=flow_failed peer=%s bindings_removed=%d", peer, removed)

    def _wire_cluster(self) -> None:
        """Events and calls between worker processes (vivait_sip/workers.py)."""
        cluster = self.app.cluster
        assert cluster is not None
        monitor = self.monitor
        self.gate.worker_index = cluster.index
        self.gate.owner_of = lambda req: cluster.owner(owner_key(req))
        cluster.on_event("registrar_flow_lost", lambda a: self._flow_failed(int(a["conn_id"]), str(a["peer"])))
        cluster.on_call("registrar_bindings", lambda a: self.local_registrations(a.get("aor")))
        cluster.on_call("registrar_unregister", lambda a: self.local_unregister(str(a["aor"])))
        cluster.on_call("registrar_counts", lambda a: {"bindings": self.location.count(), "aors": len(self.location.all_aors())})
        if cluster.is_primary:
            cluster.on_event("registrar_auth_failure", lambda a: monitor.record_failure(str(a["source"]), a.get("user")))
            monitor.on_ban = lambda ip, seconds: cluster.broadcast("registrar_ban", source=ip, seconds=seconds)
            monitor.on_unban = lambda ip: cluster.broadcast("registrar_unban", source=ip)
        else:
            monitor.failure_sink = lambda ip, user: cluster.emit(0, "registrar_auth_failure", source=ip, user=user)
            cluster.on_event("registrar_ban", lambda a: monitor.apply_ban(str(a["source"]), float(a["seconds"])))
            cluster.on_event("registrar_unban", lambda a: monitor.lift_ban(str(a["source"])))
            cluster.on_event("registrar_reload_users", lambda a: self.users.load(self.store.list_users()))

    # ---- admin: every worker's bindings ------------------------------------------------
    def local_registrations(self, aor: str | None) -> list[dict[str, object]]:
        return list_bindings(self.location, aor)

    def local_unregister(self, aor: str) -> int:
        return remove_bindings(self.location, aor)

    async def registrations(self, aor: str | None) -> list[dict[str, object]]:
        """Bindings of every worker, sorted by AOR (`aor` as `list_bindings` takes it)."""
        found = self.local_registrations(aor)
        cluster = self.app.cluster
        if cluster is not None:
            for part in await cluster.call_all("registrar_bindings", aor=aor):
                found.extend(part)
            found.sort(key=lambda b: str(b["aor"]))
        return found

    async def unregister(self, aor: str) -> int:
        removed = self.local_unregister(aor)
        cluster = self.app.cluster
        if cluster is not None:
            removed += sum(int(n) for n in await cluster.call_all("registrar_unregister", aor=aor))
        return removed

    async def counts(self) -> dict[str, int]:
        """Bindings and registered AORs in all workers."""
        totals = {"bindings": self.location.count(), "aors": len(self.location.all_aors())}
        cluster = self.app.cluster
        if cluster is not None:
            for part in await cluster.call_all("registrar_counts"):
                totals["bindings"] += int(part["bindings"])
                totals["aors"] += int(part["aors"])
        return totals

    def _ban_filter(self, inner: MessageHandler) -> MessageHandler:
        """Banned sources get a stateless 403 before any parsing or transaction state."""
        from ..core import stateless_error

        monitor = self.monitor
        transports = self.app.transports

        def on_message(data: bytes, peer: Peer) -> None:
            if not monitor.is_banned(peer.host):
                inner(data, peer)
                return
            head = data.lstrip(b"\r\n")
            if head.startswith((b"SIP/", _ACK)):
                return
            response = stateless_error(data, 403, "Forbidden (source banned)")
            if response is not None:
                try:
                    transports.send(response, peer)
                except Exception as exc:  # a dead connection: nothing to answer on
                    log.debug("event=ban_reply_failed peer=%s error=%r", peer, str(exc))

        return on_message

    async def stop(self) -> None:
        """Final flush: every binding reaches the store before the process exits."""
        if self._task is not None:
            await self._task
        await self.location.stop()
        self.store.close()

    def reload(self, config: Config) -> None:
        """Limits, trunks, security thresholds and config users apply live; the realm does not."""
        settings = config.registrar
        self.registrar.settings = settings
        self.monitor.reconfigure(config.security)
        self.gate.set_trunks((t.name, t.networks) for t in settings.trunks)
        # Other workers reload users on worker 0's registrar_reload_users, sent once it
        # has written them to the store: reading them here too would do it twice.
        count = self.reload_users() if self.app.is_primary else len(self.users)
        log.info("event=registrar_reloaded users=%d", count)

    def status(self) -> dict[str, object]:
        return {
            "registrar": {
                "realm": self.realm,
                "users": len(self.users),
                "registered_aors": len(self.location.all_aors()),
                "bindings": self.location.count(),
                **self.monitor.status(),
            }
        }


def _merge_status(out: dict[str, object], workers: list[dict[str, object]]) -> None:
    """Bindings are partitioned between workers: the totals are sums (the rest is worker 0's)."""
    mine = out.get("registrar")
    if not isinstance(mine, dict):
        return
    for part in workers:
        theirs = part.get("registrar")
        if isinstance(theirs, dict):
            for key in ("bindings", "registered_aors"):
                mine[key] = int(mine.get(key, 0)) + int(theirs.get(key, 0))


_unique_base = int.from_bytes(secrets.token_bytes(16), "big")
_unique_counter = itertools.count()


def unique_bytes(size: int) -> bytes:
    """Distinct bytes per call without a syscall: a random start plus a counter.

    Nonces need uniqueness (nonce-count tracking); unforgeability comes from their HMAC,
    so the random part need not be unpredictable, and the urandom call per challenge
    was 4 % of a REGISTER-with-digest profile.
    """
    return ((_unique_base + next(_unique_counter)) % (1 << (8 * size))).to_bytes(size, "big")


@feature_starter
def start_registrar(app: Application) -> None:
    RegistrarFeature(app).start()


def _admin_routes(web_app: web.Application, app: Application) -> None:
    for feature in app.features:
        if isinstance(feature, RegistrarFeature):
            add_routes(web_app, feature)


route_hooks.append(_admin_routes)
