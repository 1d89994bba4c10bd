"""Location service: AOR → bindings, held in memory, written behind to SQLite.

Lookups and REGISTER never wait for the disk.  Every change marks its binding dirty;
one task writes the dirty set in a single transaction every flush interval (≤ 1 s), so
a crash — even kill -9 — loses at most the changes of the last interval.  Bindings are
reloaded at start; expired ones are purged on a timer (and skipped when loading).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..events import (
    REGISTRATION_ADDED,
    REGISTRATION_EXPIRED,
    REGISTRATION_REFRESHED,
    REGISTRATION_REMOVED,
    emit,
)
from ..sip.errors import SipParseError
from ..sip.uri import aor_user, parse_uri, unescape
from ..store import BindingRow, Store

log = logging.getLogger(__name__)

BindingKey = tuple[str, int] | str


def normalise_contact(contact: str) -> str:
    """A contact URI in a canonical form for §19.1.4 comparison.

    Scheme, host and parameters compare case-insensitively, the user part (unescaped)
    case-sensitively, parameter order does not matter.  Stricter than §19.1.4 in one
    way: a parameter present in only one URI makes them differ — a key must be
    transitive, and phones resend their Contact unchanged.
    """
    try:
        uri = parse_uri(contact)
    except SipParseError:
        return contact
    if uri.opaque is not None:
        return f"{uri.scheme}:{uri.opaque}"
    user = unescape(uri.user) if uri.user is not None else ""
    if uri.password is not None:
        user += ":" + unescape(uri.password)
    out = f"{uri.scheme}:{user}@" if uri.user is not None else f"{uri.scheme}:"
    out += uri.host.lower()
    if uri.port is not None:
        out += f":{uri.port}"
    params = sorted(
        (unescape(k).lower(), unescape(v).lower() if v is not None else None) for k, v in uri.params
    )
    for name, value in params:
        out += f";{name}" if value is None else f";{name}={value}"
    if uri.headers:
        out += "?" + "&".join(sorted(uri.headers.split("&")))
    return out


def key_text(key: BindingKey) -> str:
    """A key as one string (dict key in memory and primary key in the store)."""
    if isinstance(key, tuple):
        # A space cannot occur in a URI scheme, so this never equals a contact key.
        return f"flow {key[0]} {key[1]}"
    return key


@dataclass(slots=True, init=False)
class Binding:
    """One contact registered for an AOR (RFC 3261 §10, RFC 5626 flows)."""

    aor: str
    contact: str
    expires_at: float
    q: float
    call_id: str
    cseq: int
    instance: str | None
    reg_id: int | None
    path: list[str]
    transport: str
    source_host: str
    source_port: int
    conn_id: int | None
    user_agent: str
    registered_at: float
    # key_text() cache: the contact and flow identity of a binding never change, a
    # refresh is a new Binding or the same one with new expiry/CSeq.
    _key: str | None = field(init=False, repr=False, compare=False)  # init=False: replace() works

    # An explicit __init__: mypyc compiles it (a dataclass-made one runs as Python).
    def __init__(
        self,
        aor: str,
        contact: str,
        expires_at: float,
        q: float = 1.0,
        call_id: str = "",
        cseq: int = 0,
        instance: str | None = None,
        reg_id: int | None = None,
        path: list[str] | None = None,
        transport: str = "udp",
        source_host: str = "",
        source_port: int = 0,
        conn_id: int | None = None,
        user_agent: str = "",
        registered_at: float = 0.0,
    ) -> None:
        self.aor = aor
        self.contact = contact
        self.expires_at = expires_at
        self.q = q
        self.call_id = call_id
        self.cseq = cseq
        self.instance = instance
        self.reg_id = reg_id
        self.path = [] if path is None else path
        self.transport = transport
        self.source_host = source_host
        self.source_port = source_port
        self.conn_id = conn_id
        self.user_agent = user_agent
        self.registered_at = registered_at
        self._key = None

    @property
    def key(self) -> BindingKey:
        """RFC 5626 flow identity (instance, reg-id) when both are set, else the contact."""
        if self.instance is not None and self.reg_id is not None:
            return (self.instance, self.reg_id)
        return self.key_text()  # the normalised contact, computed once

    def key_text(self) -> str:
        """`key` as one string: the dict key in memory and the primary key in the store."""
        if self._key is None:
            if self.instance is not None and self.reg_id is not None:
                self._key = key_text((self.instance, self.reg_id))
            else:
                self._key = normalise_contact(self.contact)
        return self._key

    def expires_in(self, now: float) -> int:
        return max(0, round(self.expires_at - now))


def _binding_event(name: str, level: int, b: Binding, reason: str | None, now: float) -> None:
    """One event line about a binding (docs/admin.md, Event logs); values from the
    network (AOR, contact, user agent) are quoted and escaped (%r)."""
    if not log.isEnabledFor(level):
        return
    host = f"[{b.source_host}]" if ":" in b.source_host else b.source_host
    fields = "aor=%r contact=%r transport=%s source=%s user_agent=%r"
    if reason is None:
        emit(log, level, name, fields + " expires=%d", b.aor, b.contact, b.transport, f"{host}:{b.source_port}", b.user_agent, b.expires_in(now))
    else:
        emit(log, level, name, fields + " reason=%s", b.aor, b.contact, b.transport, f"{host}:{b.source_port}", b.user_agent, reason)


def binding_row(b: Binding) -> BindingRow:
    """What the store keeps of a binding (not its connection: none survives a restart)."""
    return BindingRow(
        b.aor,
        b.key_text(),
        b.contact,
        b.expires_at,
        b.q,
        b.call_id,
        b.cseq,
        b.instance,
        b.reg_id,
        b.path,
        b.transport,
        b.source_host,
        b.source_port,
        b.user_agent,
        b.registered_at,
    )


def binding_from_row(row: BindingRow) -> Binding:
    binding = Binding(
        row.aor,
        row.contact,
        row.expires_at,
        row.q,
        row.call_id,
        row.cseq,
        row.instance,
        row.reg_id,
        row.path,
        row.transport,
        row.source_host,
        row.source_port,
        None,
        row.user_agent,
        row.registered_at,
    )
    binding._key = row.key  # saved by key_text(); skips re-parsing every contact
    return binding


class LocationService:
    """Bindings by AOR with write-behind persistence.

    `store` None keeps everything in memory (tests, benches).  `clock` is wall-clock
    seconds: expiry times survive a restart, so they must be absolute.
    """

    def __init__(self, store: Store | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._aors: dict[str, dict[str, Binding]] = {}
        self._flows: dict[int, set[tuple[str, str]]] = {}
        self._by_user: dict[str, list[str]] = {}  # AOR user part → its AORs (any domain)
        self._count = 0
        self._dirty: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None

    # ---- queries ----------------------------------------------------------------------
    def bindings(self, aor: str, now: float | None = None) -> list[Binding]:
        """Unexpired bindings, best first: q descending, then the most recently registered."""
        entries = self._aors.get(aor)
        if not entries:
            return []
        now = self.clock() if now is None else now
        live = [b for b in entries.values() if b.expires_at > now]
        live.sort(key=lambda b: (-b.q, -b.registered_at))
        return live

    def bindings_of_user(self, user: str, now: float | None = None) -> list[Binding]:
        """Unexpired bindings of every AOR with this user part (`sip:6140@pbx`,
        `sip:6140@10.0.0.1`...), best first: how calls find a user's devices."""
        aors = self._by_user.get(user)
        if not aors:
            return []
        now = self.clock() if now is None else now
        live = [b for aor in aors for b in self._aors.get(aor, {}).values() if b.expires_at > now]
        live.sort(key=lambda b: (-b.q, -b.registered_at))
        return live

    def get(self, aor: str, key: BindingKey) -> Binding | None:
        entries = self._aors.get(aor)
        return entries.get(key_text(key)) if entries else None

    def all_aors(self) -> list[str]:
        return list(self._aors)

    def count(self) -> int:
        """Bindings held, including expired ones not purged yet."""
        return self._count

    def snapshot(self) -> list[Binding]:
        return [b for entries in self._aors.values() for b in entries.values()]

    # ---- changes ----------------------------------------------------------------------
    def put(self, binding: Binding, event: bool = True) -> None:
        """Add or refresh a binding (same AOR and key replaces); call again after mutating one.
        `event`: log it (registration_added at info, registration_refreshed at debug)."""
        ktext = binding.key_text()
        aor = binding.aor
        entries = self._aors.get(aor)
        if entries is None:
            entries = {}
            self._aors[aor] = entries
            self._by_user.setdefault(aor_user(aor), []).append(aor)
        old = entries.get(ktext)
        if old is None:
            self._count += 1
        elif old.conn_id is not None and old.conn_id != binding.conn_id:
            self._unlink_flow(old.conn_id, binding.aor, ktext)
        entries[ktext] = binding
        if binding.conn_id is not None:
            self._flows.setdefault(binding.conn_id, set()).add((binding.aor, ktext))
        self._dirty.add((binding.aor, ktext))
        if event:
            if old is None:
                _binding_event(REGISTRATION_ADDED, logging.INFO, binding, None, self.clock())
            else:
                _binding_event(REGISTRATION_REFRESHED, logging.DEBUG, binding, None, self.clock())

    def remove(self, aor: str, key: BindingKey, reason: str = "unregistered") -> bool:
        """`reason` goes into the registration_removed line (docs/admin.md, Event logs)."""
        return self._remove(aor, key_text(key), reason)

    def remove_aor(self, aor: str, reason: str = "unregistered") -> int:
        entries = self._aors.get(aor)
        if not entries:
            return 0
        return sum(self._remove(aor, ktext, reason) for ktext in list(entries))

    def remove_flow(self, conn_id: int) -> int:
        """A connection carrying RFC 5626 flows failed: its bindings go with it."""
        members = self._flows.pop(conn_id, set())
        return sum(self._remove(aor, ktext, "flow_failed") for aor, ktext in members)

    def purge_expired(self, now: float | None = None) -> int:
        now = self.clock() if now is None else now
        expired = [
            (aor, ktext)
            for aor, entries in self._aors.items()
            for ktext, b in entries.items()
            if b.expires_at <= now
        ]
        for aor, ktext in expired:
            self._remove(aor, ktext, "expired")
        return len(expired)

    def _remove(self, aor: str, ktext: str, reason: str) -> bool:
        entries = self._aors.get(aor)
        if entries is None:
            return False
        binding = entries.pop(ktext, None)
        if binding is None:
            return False
        if not entries:
            del self._aors[aor]
            user = aor_user(aor)
            aors = self._by_user.get(user)
            if aors is not None:
                aors.remove(aor)
                if not aors:
                    del self._by_user[user]
        if binding.conn_id is not None:
            self._unlink_flow(binding.conn_id, aor, ktext)
        self._count -= 1
        self._dirty.add((aor, ktext))
        if reason == "expired":
            _binding_event(REGISTRATION_EXPIRED, logging.INFO, binding, reason, 0.0)
        else:
            _binding_event(REGISTRATION_REMOVED, logging.INFO, binding, reason, 0.0)
        return True

    def _unlink_flow(self, conn_id: int, aor: str, ktext: str) -> None:
        members = self._flows.get(conn_id)
        if members is not None:
            members.discard((aor, ktext))
            if not members:
                del self._flows[conn_id]

    # ---- persistence ------------------------------------------------------------------
    def load(self, owns: Callable[[str], bool] | None = None) -> int:
        """Replace the memory with the store's unexpired bindings; returns how many.

        `owns(aor)`: with several worker processes, each loads only the AORs it owns.
        """
        # New containers, not clear(): the compiled-code rule of tests/native_shapes.py.
        self._aors = {}
        self._flows = {}
        self._by_user = {}
        self._dirty = set()
        self._count = 0
        if self.store is None:
            return 0
        now = self.clock()
        stale: list[tuple[str, str]] = []
        for row in self.store.load_bindings():
            if owns is not None and not owns(row.aor):
                continue
            binding = binding_from_row(row)  # no conn_id: connections do not survive a restart
            if binding.expires_at <= now:
                stale.append((binding.aor, binding.key_text()))
                continue
            self.put(binding, False)
        self._dirty = set()
        if stale:
            self.store.save_bindings([], stale)
        return self._count

    def flush(self) -> int:
        """Write dirty bindings and removals in one transaction; returns rows written."""
        if self.store is None or not self._dirty:
            self._dirty = set()
            return 0
        dirty, self._dirty = self._dirty, set()
        upserts: list[BindingRow] = []
        removals: list[tuple[str, str]] = []
        for aor, ktext in dirty:
            binding = self._aors.get(aor, {}).get(ktext)
            if binding is None:
                removals.append((aor, ktext))
            else:
                upserts.append(binding_row(binding))
        try:
            self.store.save_bindings(upserts, removals)
        except sqlite3.Error:
            self._dirty |= dirty  # retried at the next interval
            raise
        return len(dirty)

    async def start(self, flush_interval_s: float = 1.0, purge_interval_s: float = 10.0) -> None:
        """Run the write-behind/purge task; the flush interval may not exceed 1 s."""
        if not 0 < flush_interval_s <= 1.0:
            raise ValueError("flush_interval_s must be in (0, 1] seconds")
        if purge_interval_s <= 0:
            raise ValueError("purge_interval_s must be positive")
        if self._task is not None:
            raise RuntimeError("LocationService already started")
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(
            self._run(flush_interval_s, purge_interval_s), name="location-write-behind"
        )

    async def _run(self, flush_interval_s: float, purge_interval_s: float) -> None:
        assert self._stopping is not None
        next_purge = time.monotonic() + purge_interval_s
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), flush_interval_s)
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + purge_interval_s
                purged = self.purge_expired()
                if purged:
                    log.info("event=bindings_purged count=%d", purged)
            try:
                self.flush()
            except sqlite3.Error as exc:
                log.error(
                    "event=bindings_flush_failed error=%r pending=%d", str(exc), len(self._dirty)
                )

    async def stop(self) -> None:
        """Stop the task and write what is still dirty."""
        if self._task is not None and self._stopping is not None:
            self._stopping.set()
            await self._task
            self._task = None
        self.flush()
