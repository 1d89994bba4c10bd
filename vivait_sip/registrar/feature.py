"""Wires the registrar into the running server (users, location, REGISTER, guards, bans).

Listed in `vivait_sip/features.py`; everything it brings is declared through the
`contract.Feature` methods below.

User precedence: the store (DATA_DIR/vivait.db) holds every user.  Users and ranges
from the config file are re-imported at start and on every reload as "config" users
(overwriting a CLI-added user with the same number: the config wins; config users no
longer in the file are deleted); users added with `vivait-sip user add/import` stay.

Demo users: in demo mode (no --config), or with `registrar.demo_users: true`, users
6140..6143 get random passwords, kept in DATA_DIR/demo-passwords.json (0600,
registrar/demo.py) so they survive restarts, and printed in the start-up banner when they
are made.  They are stored with origin "demo": a server started with a config file (and
without `demo_users`) leaves them in the store untouched but does not load them, and says
so at start; nothing is deleted behind the operator's back (`vivait-sip user remove`
does it on purpose).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..config import CoreConfig
from ..contract import (
    Feature,
    Host,
    InputFilter,
    RequestHandler,
    StatelessCheck,
    WorkerMessage,
    worker_message,
)
from ..sip.message import Request
from ..sip.peer import Peer
from ..sip.uri import aor_user
from ..store import Store
from . import cli as registrar_cli
from . import demo
from .admin import add_routes, list_bindings, remove_bindings
from .config import RegistrarConfig, UserConfig
from .digest import Algorithm, Authenticator, NonceManager
from .guard import GUARDED_METHODS, CallGuard
from .location import LocationService
from .metrics import failure_status, merge_failures, registrar_metrics
from .register import Registrar
from .security import AuthGate, SecurityMonitor
from .users import UserDirectory, UserRecord, config_users, records_from_rows, user_from_config

log = logging.getLogger("vivait_sip.registrar")

DEMO_USERS = ("6140", "6141", "6142", "6143")
LEGACY_DEMO_KEY = "demo_passwords"  # where versions before 0.2 kept them, in clear
_ACK = b"ACK "


# ---- messages between workers (contract.WorkerMessage) -------------------------------------
@worker_message("registrar.flow_lost")
@dataclass(frozen=True)
class FlowLost(WorkerMessage):
    """Worker 0 → all: a connection closed; bindings over it (RFC 5626 flows) go."""

    conn_id: int
    peer: str


@worker_message("registrar.auth_failure")
@dataclass(frozen=True)
class AuthFailure(WorkerMessage):
    """A worker → worker 0, which counts failures and decides bans."""

    source: str
    user: str | None


@worker_message("registrar.ban")
@dataclass(frozen=True)
class Ban(WorkerMessage):
    source: str
    seconds: float


@worker_message("registrar.unban")
@dataclass(frozen=True)
class Unban(WorkerMessage):
    source: str


@worker_message("registrar.users_changed")
@dataclass(frozen=True)
class UsersChanged(WorkerMessage):
    """Worker 0 wrote the users to the store: read them again."""


@worker_message("registrar.locate")
@dataclass(frozen=True)
class Locate(WorkerMessage):
    """A worker → the owner of `user`: its current contacts, please (answered by Located)."""

    ticket: int
    user: str


@worker_message("registrar.located")
@dataclass(frozen=True)
class Located(WorkerMessage):
    ticket: int
    contacts: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Contact:
    """Where to reach one registered device: its Contact URI, the flow it registered over
    (send there: it may be behind NAT, or a connection only worker 0 holds) and the Path
    to put in Route (RFC 3327)."""

    uri: str
    transport: str
    host: str
    port: int
    conn_id: int | None
    path: tuple[str, ...]
    q: float
    instance: str | None
    user_agent: str

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri, "transport": self.transport, "host": self.host, "port": self.port,
            "conn_id": self.conn_id, "path": list(self.path), "q": self.q, "instance": self.instance,
            "user_agent": self.user_agent,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Contact:
        return cls(
            str(raw["uri"]), str(raw["transport"]), str(raw["host"]), int(raw["port"]),
            None if raw.get("conn_id") is None else int(raw["conn_id"]), tuple(raw.get("path") or ()),
            float(raw.get("q", 1.0)), raw.get("instance"), str(raw.get("user_agent", "")),
        )

    @property
    def peer(self) -> Peer:
        return Peer(self.transport, self.host, self.port, self.conn_id)


Located_ = Callable[[list[Contact]], None]


class RegistrarFeature(Feature[RegistrarConfig]):
    """Users, location service, REGISTER, digest authentication, bans."""

    name = "registrar"
    config_key = "registrar"
    config_model = RegistrarConfig
    order = 10
    messages = (FlowLost, AuthFailure, Ban, Unban, UsersChanged, Locate, Located)

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        config = host.config
        settings = self.settings
        self.realm = config.effective_realm()
        self.store = Store.open(host.data_dir)
        self.users = UserDirectory(self.realm)
        self.location = LocationService(self.store)
        self.monitor = SecurityMonitor(config.security)
        # Worker processes share one nonce secret: a challenge from one verifies in another.
        self.nonces = NonceManager(host.secret, settings.nonce_lifetime_s, time.time, random_bytes=unique_bytes)
        self.authenticator = Authenticator(
            self.realm,
            self.nonces,
            self.users.ha1_lookup,
            algorithms=[Algorithm(a) for a in settings.algorithms],
        )
        self.gate = AuthGate(self.authenticator, self.monitor)
        self.gate.set_trunks((t.name, t.networks) for t in settings.trunks)
        self.registrar = Registrar(host, self.gate, self.users, self.location, settings)
        self.guard = CallGuard(host, self.gate, self.users)
        self._demo_made: list[str] = []
        self._demo_passwords: dict[str, str] = self._demo_users() if self._demo_on(config) else {}
        self._demo_notes: list[str] = []  # what start-up says about demo users
        self._task: asyncio.Task[None] | None = None
        self._tickets = itertools.count(1)
        self._locating: dict[int, tuple[int, Located_]] = {}  # ticket → (owner, callback)
        if host.worker_count > 1:
            self._wire_workers()

    # ---- the location service for calls (the B2BUA) ------------------------------------
    def contacts(self, user: str) -> list[Contact]:
        """This process's live contacts of every AOR whose user part is `user` (an
        extension or user number, in any of our domains), best first; only the worker
        owning `user` has any."""
        return [
            Contact(
                b.contact, b.transport, b.source_host, b.source_port, b.conn_id, tuple(b.path), b.q, b.instance, b.user_agent
            )
            for b in self.location.bindings_of_user(user)
        ]

    def locate(self, user: str, on_result: Located_) -> None:
        """The contacts registered as `user` (`contacts`), from the worker that owns them;
        `on_result` runs later (never inside this call), with [] when the owner is gone."""
        owner = self.host.owner_of(user)
        if owner == self.host.worker_index:
            asyncio.get_running_loop().call_soon(on_result, self.contacts(user))
            return
        ticket = next(self._tickets)
        self._locating[ticket] = (owner, on_result)
        self.host.send_to_worker(owner, Locate(ticket, user))

    def on_worker_lost(self, index: int) -> None:
        for ticket, (owner, callback) in list(self._locating.items()):
            if owner == index:
                del self._locating[ticket]
                callback([])

    # ---- users ----------------------------------------------------------------------
    def _demo_users(self) -> dict[str, str]:
        """Random demo passwords, created once and kept in DATA_DIR/demo-passwords.json.
        Older versions kept them in clear in the store's meta table: moved out, and erased."""
        if not self.host.is_primary:
            return demo.load(self.host.data_dir)
        legacy_text = self.store.get_meta(LEGACY_DEMO_KEY)
        try:
            legacy = {str(k): str(v) for k, v in json.loads(legacy_text or "{}").items()}
        except (ValueError, AttributeError):
            legacy = {}
        passwords, self._demo_made = demo.ensure(self.host.data_dir, DEMO_USERS, legacy)
        if legacy_text is not None:
            self.store.delete_meta(LEGACY_DEMO_KEY)
            log.info("event=demo_passwords_moved to=%s", demo.demo_file(self.host.data_dir))
        return passwords

    def _demo_on(self, config: CoreConfig) -> bool:
        """Are the demo users loaded: the embedded demo, or `registrar.demo_users`."""
        return self.host.demo or self.settings_of(config).demo_users

    def _config_users(self, settings: RegistrarConfig) -> list[UserRecord]:
        records = config_users(settings, self.realm)
        if self._demo_passwords:
            # Re-read: `vivait-sip user password 6140` changes the file, then asks for a reload.
            self._demo_passwords.update(demo.load(self.host.data_dir))
        configured = {r.number for r in records}
        replaced = [n for n in self._demo_passwords if n in configured]
        self._demo_notes = []
        if replaced:
            note = f"demo user(s) {', '.join(replaced)} replaced by the config's user(s) of that number"
            self._demo_notes = [note]
            log.info("event=demo_users_replaced users=%s", ",".join(replaced))
        for number, password in self._demo_passwords.items():
            if number not in configured:
                user = UserConfig(number=number, name=f"Demo {number}", password=password)
                records.append(user_from_config(user, self.realm, origin="demo"))
        return records

    def _mark_demo_rows(self) -> None:
        """Stores written before demo users had their own origin hold them as "config"
        users, which a config-file start would delete: give them back their origin."""
        known = demo.load(self.host.data_dir)
        rows = [r for r in records_from_rows(self.store.list_users()) if r.origin == "config" and r.number in known]
        for row in rows:
            row.origin = "demo"
        if rows:
            self.store.upsert_users(rows)

    def _load_directory(self) -> None:
        """The directory: every stored user, but demo users only while they are on."""
        rows = records_from_rows(self.store.list_users())
        if not self._demo_on(self.host.config):
            rows = [r for r in rows if r.origin != "demo"]
        if self.host.demo:
            rows = [r for r in rows if r.origin != "config"]
        self.users.load(rows)

    def users_left_out(self) -> list[str]:
        """What start-up says about stored users this server does not load: demo users
        under a config file, a config file's users under the demo."""
        rows = self.store.list_users()
        if self.host.demo:
            numbers = [r.number for r in rows if r.origin == "config"]
            if numbers:
                return [
                    f"{len(numbers)} user(s) of a config file ({_numbers(numbers)}) are kept in the store but not "
                    "loaded: this server runs the embedded demo (start it with that --config to use them)"
                ]
            return []
        if self._demo_on(self.host.config):
            return []
        numbers = [r.number for r in rows if r.origin == "demo"]
        if not numbers:
            return []
        return [
            f"demo users {', '.join(numbers)} are kept in the store but not loaded: this server runs from its config "
            "file (registrar.demo_users: true loads them; `vivait-sip user remove NUMBER` deletes them)"
        ]

    def reload_users(self) -> int:
        """Config users replace the store's config-managed ones (a CLI user with the same
        number is overwritten: config wins); the directory is then the whole store (demo
        users only while they are on).

        With worker processes, worker 0 writes the store and the others then read it.
        """
        host = self.host
        if host.is_primary:
            self._mark_demo_rows()
            if host.demo:
                # No config file: the users of one (from an earlier configured run) are left
                # as they are, and not loaded.
                self.store.upsert_users(self._config_users(self.settings))
            else:
                self.store.replace_config_users(self._config_users(self.settings))
        self._load_directory()
        if host.is_primary:
            host.broadcast(UsersChanged())
        return len(self.users)

    # ---- SIP --------------------------------------------------------------------------
    def request_handlers(self) -> Mapping[str, RequestHandler]:
        handlers: dict[str, RequestHandler] = {"REGISTER": self.registrar.handle}
        for method in GUARDED_METHODS:
            handlers[method] = self.guard.handle
        return handlers

    def stateless_checks(self) -> Mapping[str, StatelessCheck]:
        # A REGISTER without credentials from a non-trunk source can only be answered
        # (401, or 403/400/423 before that) and changes nothing: no transaction needed.
        gate = self.gate

        def register_challenge(req: Request, peer: Peer) -> bool:
            return "authorization" not in req.headers and gate.trunk_for(peer.host) is None

        checks: dict[str, StatelessCheck] = {"REGISTER": register_challenge}
        for method in GUARDED_METHODS:
            checks[method] = self.guard.challenge_only
        return checks

    def input_filter(self) -> InputFilter:
        """Banned sources get a stateless 403 before any parsing or transaction state."""
        from ..sip.stateless import stateless_error

        monitor = self.monitor
        host = self.host

        def banned(data: bytes, peer: Peer) -> bool:
            if not monitor.is_banned(peer.host):
                return False
            head = data.lstrip(b"\r\n")
            if head.startswith((b"SIP/", _ACK)):
                return True
            response = stateless_error(data, 403, "Forbidden (source banned)")
            if response is not None:
                host.send_raw(response, peer)
            return True

        return banned

    def on_connection_lost(self, peer: Peer) -> None:
        if peer.conn_id is not None:
            self._flow_failed(peer.conn_id, str(peer))
            self.host.broadcast(FlowLost(peer.conn_id, str(peer)))

    def _flow_failed(self, conn_id: int, peer: str) -> None:
        removed = self.location.remove_flow(conn_id)
        if removed:
            log.info("event=flow_failed peer=%s bindings_removed=%d", peer, removed)

    # ---- workers ----------------------------------------------------------------------
    def _wire_workers(self) -> None:
        host = self.host
        self.gate.worker_index = host.worker_index
        self.gate.owner_of = host.owner_of_message
        host.on_call("registrar_bindings", lambda a: self.local_registrations(a.get("aor")))
        host.on_call("registrar_unregister", lambda a: self.local_unregister(str(a["aor"])))
        host.on_call("registrar_counts", lambda a: self._local_counts())
        monitor = self.monitor
        if host.is_primary:
            monitor.on_ban = lambda ip, seconds: host.broadcast(Ban(ip, seconds))
            monitor.on_unban = lambda ip: host.broadcast(Unban(ip))
        else:
            monitor.failure_sink = lambda ip, user: host.send_to_worker(0, AuthFailure(ip, user))

    def on_worker_message(self, source: int, msg: WorkerMessage) -> None:
        if isinstance(msg, FlowLost):
            self._flow_failed(msg.conn_id, msg.peer)
        elif isinstance(msg, AuthFailure):
            self.monitor.record_failure(msg.source, msg.user)
        elif isinstance(msg, Ban):
            self.monitor.apply_ban(msg.source, msg.seconds)
        elif isinstance(msg, Unban):
            self.monitor.lift_ban(msg.source)
        elif isinstance(msg, UsersChanged):
            self._load_directory()
        elif isinstance(msg, Locate):
            self.host.send_to_worker(source, Located(msg.ticket, [c.to_json() for c in self.contacts(msg.user)]))
        elif isinstance(msg, Located):
            pending = self._locating.pop(msg.ticket, None)
            if pending is not None:
                pending[1]([Contact.from_json(raw) for raw in msg.contacts])

    # ---- admin: every worker's bindings ------------------------------------------------
    def local_registrations(self, aor: str | None) -> list[dict[str, object]]:
        return list_bindings(self.location, aor)

    def local_unregister(self, aor: str) -> int:
        return remove_bindings(self.location, aor)

    def _local_counts(self) -> dict[str, int]:
        return {"bindings": self.location.count(), "aors": len(self.location.all_aors())}

    async def registrations(self, aor: str | None) -> list[dict[str, object]]:
        """Bindings of every worker, sorted by AOR (`aor` as `list_bindings` takes it)."""
        found = self.local_registrations(aor)
        if self.host.worker_count > 1:
            for part in await self.host.call_workers("registrar_bindings", aor=aor):
                found.extend(part)
            found.sort(key=lambda b: str(b["aor"]))
        return found

    async def unregister(self, aor: str) -> int:
        removed = self.local_unregister(aor)
        if self.host.worker_count > 1:
            removed += sum(int(n) for n in await self.host.call_workers("registrar_unregister", aor=aor))
        return removed

    async def counts(self) -> dict[str, int]:
        """Bindings and registered AORs in all workers."""
        totals = self._local_counts()
        if self.host.worker_count > 1:
            for part in await self.host.call_workers("registrar_counts"):
                totals["bindings"] += int(part["bindings"])
                totals["aors"] += int(part["aors"])
        return totals

    def admin_routes(self, app: web.Application) -> None:
        add_routes(app, self)

    # ---- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self._start()
        for number in self._demo_made:
            self.host.banner.append(
                f"demo user {number} password {self._demo_passwords[number]} "
                f"(register sip:{number}@127.0.0.1, auth user {number}, realm {self.realm})"
            )
        if self._demo_passwords:
            numbers = ", ".join(n for n in self._demo_passwords if n not in self._demo_made)
            if numbers:
                self.host.banner.append(
                    f"demo users {numbers}: passwords in {demo.demo_file(self.host.data_dir)} "
                    f"(shown when made; `vivait-sip user password NUMBER` sets a new one)"
                )
        self.host.banner.extend(self.users_left_out())
        self.host.banner.extend(self._demo_notes)
        self._demo_notes = []

    async def start_worker(self) -> None:
        self._start()

    def _start(self) -> None:
        host = self.host
        count = self.reload_users()
        self.location.load(None if host.worker_count == 1 else lambda aor: host.owner_of(aor_user(aor)) == host.worker_index)
        settings = self.settings
        self._task = asyncio.get_running_loop().create_task(
            self.location.start(settings.flush_interval_ms / 1000, settings.purge_interval_s)
        )
        log.info("event=registrar_started users=%d bindings=%d realm=%s", count, self.location.count(), self.realm)

    async def stop(self) -> None:
        """Final flush: every binding reaches the store before the process exits."""
        if self._task is not None:
            await self._task
        await self.location.stop()
        self.store.close()

    def reload(self, config: CoreConfig) -> None:
        """Limits, trunks, security thresholds and config users apply live; the realm does not."""
        settings = self.settings_of(config)
        self.registrar.settings = settings
        if self.host.is_primary:
            if self._demo_on(config) and not self._demo_passwords:
                self._demo_passwords = self._demo_users()  # registrar.demo_users turned on
                log.info("event=demo_users_loaded users=%s", ",".join(self._demo_passwords))
            elif not self._demo_on(config):
                self._demo_passwords = {}
        self.monitor.reconfigure(config.security)
        self.gate.set_trunks((t.name, t.networks) for t in settings.trunks)
        # Other workers reload users on worker 0's UsersChanged, sent once it has
        # written them to the store: reading them here too would do it twice.
        count = self.reload_users() if self.host.is_primary else len(self.users)
        log.info("event=registrar_reloaded users=%d", count)

    def status(self) -> dict[str, object]:
        return {
            "registrar": {
                "realm": self.realm,
                "users": len(self.users),
                "registered_aors": len(self.location.all_aors()),
                "bindings": self.location.count(),
                **self.monitor.status(),
                **failure_status(self.monitor, self.users),
            }
        }

    def metrics(self, status: dict[str, object]) -> list[str]:
        return registrar_metrics(status)

    def merge_status(self, mine: dict[str, object], workers: list[dict[str, object]]) -> None:
        _merge_status(mine, workers)

    @classmethod
    def add_commands(cls, sub: argparse._SubParsersAction[Any], ctl_sub: argparse._SubParsersAction[Any]) -> None:
        registrar_cli.add_commands(sub, ctl_sub)


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
            merge_failures(mine, theirs)


def _numbers(numbers: list[str], shown: int = 5) -> str:
    more = len(numbers) - shown
    return ", ".join(numbers[:shown]) + (f" and {more} more" if more > 0 else "")


_unique_base = int.from_bytes(secrets.token_bytes(16), "big")
_unique_counter = itertools.count()


def unique_bytes(size: int) -> bytes:
    """Distinct bytes per call without a syscall: a random start plus a counter.

    Nonces need uniqueness (nonce-count tracking); unforgeability comes from their HMAC,
    so the random part need not be unpredictable, and the urandom call per challenge
    was 4 % of a REGISTER-with-digest profile.
    """
    return ((_unique_base + next(_unique_counter)) % (1 << (8 * size))).to_bytes(size, "big")
