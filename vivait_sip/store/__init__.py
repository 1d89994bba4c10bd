"""The SQLite store (DATA_DIR/vivait.db): users, bindings, call detail records and small
settings.

WAL mode lets the CLI write users while a server reads and flushes bindings; a busy
timeout makes the rare writer collision wait instead of failing.  `synchronous=NORMAL`
in WAL mode survives a killed process (every commit is in the OS before returning);
only a power cut can lose the last commits.  All SQL is parameterised.

Schema history (`schema_version` holds one row): 1 users, bindings, meta; 2 adds the CDR
tables `cdr_calls` and `cdr_legs`.  Opening an older database migrates it in place: the
new tables are added and every row is kept.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import sqlite_utils

from .private import narrow_existing, private_dir, private_file

SCHEMA_VERSION = 2
DB_NAME = "vivait.db"
BUSY_TIMEOUT_MS = 5000

_USER_COLUMNS = (
    "number",
    "name",
    "ha1_md5",
    "ha1_sha256",
    "extension",
    "web_extension",
    "web_pool",
    "class_of_service",
    "realm",
    "ext_ha1_md5",
    "ext_ha1_sha256",
    "origin",
)
_BINDING_COLUMNS = (
    "aor",
    "key",
    "contact",
    "expires_at",
    "q",
    "call_id",
    "cseq",
    "instance",
    "reg_id",
    "path",
    "transport",
    "source_host",
    "source_port",
    "user_agent",
    "registered_at",
)

_CDR_CALL_COLUMNS = (
    "call_uuid",
    "linked_to",
    "caller",
    "callee",
    "user",
    "callee_user",
    "did",
    "trunk",
    "rule",
    "flow",
    "flow_outcome",
    "started_at",
    "answered_at",
    "ended_at",
    "duration_s",
    "billable_s",
    "disposition",
    "hangup_cause",
    "hangup_side",
    "extra",
)
_CDR_LEG_COLUMNS = (
    "leg_id",
    "call_id",
    "direction",
    "peer",
    "target",
    "contact",
    "trunk",
    "started_at",
    "answered_at",
    "ended_at",
    "status",
    "cause",
)
# Schema 2.  Calls are found by start time (exports, retention) and by party (the hotel
# PMS downloads billing per extension: calls made by a user, or from/to a number); legs
# live clustered under their call (WITHOUT ROWID: one b-tree, no second index).
_CDR_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS cdr_calls (
        call_uuid TEXT PRIMARY KEY,
        linked_to TEXT,
        caller TEXT NOT NULL,
        callee TEXT NOT NULL,
        user TEXT,
        callee_user TEXT,
        did TEXT,
        trunk TEXT,
        rule TEXT,
        flow TEXT,
        flow_outcome TEXT,
        started_at REAL NOT NULL,
        answered_at REAL,
        ended_at REAL NOT NULL,
        duration_s REAL NOT NULL,
        billable_s REAL NOT NULL,
        disposition TEXT NOT NULL,
        hangup_cause TEXT NOT NULL,
        hangup_side TEXT NOT NULL,
        extra TEXT NOT NULL DEFAULT '{}'
    )""",
    """CREATE TABLE IF NOT EXISTS cdr_legs (
        call_uuid TEXT NOT NULL,
        seq INTEGER NOT NULL,
        leg_id TEXT NOT NULL,
        call_id TEXT NOT NULL,
        direction TEXT NOT NULL,
        peer TEXT NOT NULL,
        target TEXT NOT NULL,
        contact TEXT,
        trunk TEXT,
        started_at REAL NOT NULL,
        answered_at REAL,
        ended_at REAL,
        status INTEGER,
        cause TEXT,
        PRIMARY KEY (call_uuid, seq)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS cdr_calls_started ON cdr_calls (started_at, call_uuid)",
    "CREATE INDEX IF NOT EXISTS cdr_calls_user ON cdr_calls (user, started_at)",
    "CREATE INDEX IF NOT EXISTS cdr_calls_caller ON cdr_calls (caller, started_at)",
    "CREATE INDEX IF NOT EXISTS cdr_calls_callee ON cdr_calls (callee, started_at)",
    "CREATE INDEX IF NOT EXISTS cdr_calls_linked ON cdr_calls (linked_to) WHERE linked_to IS NOT NULL",
)
_INSERT_CDR_CALL = (
    f"INSERT INTO cdr_calls ({', '.join(_CDR_CALL_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _CDR_CALL_COLUMNS)})"
)
_INSERT_CDR_LEG = (
    f"INSERT INTO cdr_legs (call_uuid, seq, {', '.join(_CDR_LEG_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in range(len(_CDR_LEG_COLUMNS) + 2))})"
)
# Expired calls removed by one write when a retention is set: a bounded, small cost per
# call that still outpaces any call rate (each write removes up to this many).
CDR_PRUNE_PER_WRITE = 4
_SQL_PARAMS_PER_QUERY = 500  # well under SQLite's smallest host-parameter limit (999)


class StoreError(Exception):
    """The database cannot be used (newer schema, unreadable file), or a CDR was not saved."""


def _upsert_sql(table: str, columns: tuple[str, ...], pk: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in pk)
    return f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT ({', '.join(pk)}) DO UPDATE SET {updates}"


_UPSERT_USER = _upsert_sql("users", (*_USER_COLUMNS, "updated_at"), ("number",))
_UPSERT_BINDING = _upsert_sql("bindings", _BINDING_COLUMNS, ("aor", "key"))


class UserRow(NamedTuple):
    """A user as stored (the store's own row type; features convert)."""

    number: str
    name: str
    ha1_md5: str
    ha1_sha256: str
    extension: str
    web_extension: str | None
    web_pool: str | None
    class_of_service: str
    realm: str
    ext_ha1_md5: str | None
    ext_ha1_sha256: str | None
    origin: str


class UserFields(Protocol):
    """Anything with a user's columns as attributes can be written."""

    @property
    def number(self) -> str: ...


class BindingRow(NamedTuple):
    """A registered contact as stored; `key` identifies it within its AOR."""

    aor: str
    key: str
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
    user_agent: str
    registered_at: float


class CdrLegRow(NamedTuple):
    """One leg of a call as stored, in the order the call made them."""

    leg_id: str
    call_id: str
    direction: str
    peer: str
    target: str
    contact: str | None
    trunk: str | None
    started_at: float
    answered_at: float | None
    ended_at: float | None
    status: int | None
    cause: str | None


class CdrCallRow(NamedTuple):
    """One call detail record as stored; `extra` is a JSON object's text."""

    call_uuid: str
    linked_to: str | None
    caller: str
    callee: str
    user: str | None
    callee_user: str | None
    did: str | None
    trunk: str | None
    rule: str | None
    flow: str | None
    flow_outcome: str | None
    started_at: float
    answered_at: float | None
    ended_at: float
    duration_s: float
    billable_s: float
    disposition: str
    hangup_cause: str
    hangup_side: str
    extra: str


def _binding_values(row: BindingRow) -> tuple[Any, ...]:
    return (*row[:9], json.dumps(row.path) if row.path else "", *row[10:])


class Store:
    """One connection to the database; open one per process (server, CLI)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            # 0600 before SQLite opens it: the -wal and -shm files take the database's mode.
            private_file(self.path)
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.db = sqlite_utils.Database(self.conn, execute_plugins=False)
            self.db.enable_wal()
            self.conn.execute("PRAGMA synchronous = NORMAL")
            narrow_existing(f"{self.path}-wal", f"{self.path}-shm")  # left 0644 by older versions
            self._create()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise StoreError(f"cannot use {self.path}: {exc}") from None
        except StoreError:
            self.conn.close()
            raise

    @classmethod
    def open(cls, data_dir: Path | str) -> Store:
        """DATA_DIR/vivait.db, creating the directory (0700) on first use."""
        return cls(private_dir(data_dir) / DB_NAME)

    def close(self) -> None:
        self.conn.close()

    def _create(self) -> None:
        db = self.db
        with db.conn:
            db["schema_version"].create({"version": int}, if_not_exists=True)  # type: ignore[union-attr]
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            if row[0] is not None and row[0] > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema {row[0]}, made by a newer vivait-sip")
            db["users"].create(  # type: ignore[union-attr]
                {**{c: str for c in _USER_COLUMNS}, "updated_at": float},
                pk="number",
                not_null={"ha1_md5", "ha1_sha256", "extension"},
                if_not_exists=True,
            )
            db["bindings"].create(  # type: ignore[union-attr]
                {
                    **{c: str for c in _BINDING_COLUMNS},
                    "expires_at": float,
                    "q": float,
                    "cseq": int,
                    "reg_id": int,
                    "source_port": int,
                    "registered_at": float,
                },
                pk=("aor", "key"),
                column_order=list(_BINDING_COLUMNS),
                if_not_exists=True,
            )
            db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)  # type: ignore[union-attr]
            for statement in _CDR_SCHEMA:  # schema 2
                db.execute(statement)
            # Every step above is idempotent (IF NOT EXISTS), so the version is written
            # last: a migration cut short is finished by the next open.
            if row[0] is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION])
            elif row[0] < SCHEMA_VERSION:
                db.execute("UPDATE schema_version SET version = ?", [SCHEMA_VERSION])

    # ---- users ------------------------------------------------------------------------
    def upsert_users(self, records: Iterable[UserFields]) -> int:
        now = time.time()
        rows = [(*(getattr(r, c) for c in _USER_COLUMNS), now) for r in records]
        with self.conn:
            self.conn.executemany(_UPSERT_USER, rows)
        return len(rows)

    def replace_config_users(self, records: Iterable[UserFields]) -> int:
        """Make the config-managed users exactly `records` (users added by the CLI stay)."""
        records = list(records)
        now = time.time()
        rows = [(*(getattr(r, c) for c in _USER_COLUMNS), now) for r in records]
        keep = {r.number for r in records}
        with self.conn:
            gone = [
                (number,)
                for (number,) in self.conn.execute(
                    "SELECT number FROM users WHERE origin = ?", ("config",)
                )
                if number not in keep
            ]
            self.conn.executemany("DELETE FROM users WHERE number = ?", gone)
            self.conn.executemany(_UPSERT_USER, rows)
        return len(rows)

    def remove_user(self, number: str) -> bool:
        with self.conn:
            cur = self.conn.execute("DELETE FROM users WHERE number = ?", (number,))
        return cur.rowcount > 0

    def list_users(self) -> list[UserRow]:
        cur = self.conn.execute(f"SELECT {', '.join(_USER_COLUMNS)} FROM users ORDER BY number")
        return [UserRow(*row) for row in cur]

    def get_user(self, number: str) -> UserRow | None:
        cur = self.conn.execute(
            f"SELECT {', '.join(_USER_COLUMNS)} FROM users WHERE number = ?", (number,)
        )
        row = cur.fetchone()
        return UserRow(*row) if row else None

    # ---- bindings ---------------------------------------------------------------------
    def save_bindings(self, upserts: Iterable[BindingRow], removals: Iterable[tuple[str, str]]) -> None:
        """Write-behind batch: upserts and (aor, key) removals in one transaction."""
        rows = [_binding_values(b) for b in upserts]
        with self.conn:
            self.conn.executemany("DELETE FROM bindings WHERE aor = ? AND key = ?", removals)
            self.conn.executemany(_UPSERT_BINDING, rows)

    def load_bindings(self) -> list[BindingRow]:
        cur = self.conn.execute(f"SELECT {', '.join(_BINDING_COLUMNS)} FROM bindings")
        out = []
        for row in cur:
            values = list(row)
            values[9] = json.loads(values[9]) if values[9] else []
            out.append(BindingRow(*values))
        return out

    def delete_all_bindings(self) -> int:
        with self.conn:
            cur = self.conn.execute("DELETE FROM bindings")
        return cur.rowcount

    # ---- small settings (e.g. demo credentials kept stable across restarts) -------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def delete_meta(self, key: str) -> bool:
        """Remove a setting and overwrite its bytes (secure_delete, WAL truncated): for
        values that must not linger in free pages, like the old demo passwords."""
        self.conn.execute("PRAGMA secure_delete = ON")
        try:
            with self.conn:
                cur = self.conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.conn.execute("PRAGMA secure_delete = OFF")
        return cur.rowcount > 0

    def set_meta(self, key: str, value: str) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # ---- call detail records ------------------------------------------------------------
    def save_cdr(
        self, call: CdrCallRow, legs: Iterable[CdrLegRow], *, prune_before: float | None = None
    ) -> None:
        """One call and its legs in one transaction, committed before returning.  With
        `prune_before`, up to CDR_PRUNE_PER_WRITE calls started before it go in the same
        transaction (retention).  A call_uuid already stored raises StoreError."""
        try:
            with self.conn:
                self.conn.execute(_INSERT_CDR_CALL, call)
                self.conn.executemany(
                    _INSERT_CDR_LEG, [(call.call_uuid, seq, *leg) for seq, leg in enumerate(legs)]
                )
                if prune_before is not None:
                    self._delete_cdrs_before(prune_before, CDR_PRUNE_PER_WRITE)
        except sqlite3.Error as exc:  # a duplicate call_uuid, a full disk, a lock held too long
            raise StoreError(f"call {call.call_uuid} not saved: {exc}") from None

    def amend_cdr_extra(self, call_uuid: str, extra: dict[str, object]) -> bool:
        """Merge `extra` into a stored call's `extra` (what is learned after its record
        was written: its media session's statistics, known once the session is deleted).
        False when no such call is stored."""
        try:
            with self.conn:
                row = self.conn.execute("SELECT extra FROM cdr_calls WHERE call_uuid = ?", (call_uuid,)).fetchone()
                if row is None:
                    return False
                merged = {**json.loads(row[0] or "{}"), **extra}
                self.conn.execute(
                    "UPDATE cdr_calls SET extra = ? WHERE call_uuid = ?",
                    (json.dumps(merged, separators=(",", ":"), default=str), call_uuid),
                )
        except (sqlite3.Error, ValueError) as exc:
            raise StoreError(f"call {call_uuid} not amended: {exc}") from None
        return True

    def _delete_cdrs_before(self, cutoff: float, limit: int) -> None:
        gone = [
            (uuid,)
            for (uuid,) in self.conn.execute(
                "SELECT call_uuid FROM cdr_calls WHERE started_at < ? ORDER BY started_at LIMIT ?",
                (cutoff, limit),
            )
        ]
        self.conn.executemany("DELETE FROM cdr_legs WHERE call_uuid = ?", gone)
        self.conn.executemany("DELETE FROM cdr_calls WHERE call_uuid = ?", gone)

    def query_cdrs(
        self,
        since: float,
        until: float,
        limit: int | None = None,
        *,
        user: str | None = None,
        after: tuple[float, str] | None = None,
    ) -> list[tuple[CdrCallRow, list[CdrLegRow]]]:
        """Calls started in [since, until), oldest first (then by call_uuid), with their
        legs.  `user`: only calls made by that user.  `after`: the (started_at, call_uuid)
        of the last call of a previous page, so exports read in pages."""
        where = ["started_at >= ?", "started_at < ?"]
        args: list[Any] = [since, until]
        if user is not None:
            where.append("user = ?")
            args.append(user)
        if after is not None:
            where.append("(started_at, call_uuid) > (?, ?)")
            args.extend(after)
        sql = (
            f"SELECT {', '.join(_CDR_CALL_COLUMNS)} FROM cdr_calls WHERE {' AND '.join(where)} "
            "ORDER BY started_at, call_uuid"
        )
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        calls = [CdrCallRow(*row) for row in self.conn.execute(sql, args)]
        legs: dict[str, list[CdrLegRow]] = {c.call_uuid: [] for c in calls}
        uuids = list(legs)
        for start in range(0, len(uuids), _SQL_PARAMS_PER_QUERY):
            chunk = uuids[start : start + _SQL_PARAMS_PER_QUERY]
            cur = self.conn.execute(
                f"SELECT call_uuid, {', '.join(_CDR_LEG_COLUMNS)} FROM cdr_legs "
                f"WHERE call_uuid IN ({', '.join('?' for _ in chunk)}) ORDER BY call_uuid, seq",
                chunk,
            )
            for uuid, *leg in cur:
                legs[uuid].append(CdrLegRow(*leg))
        return [(c, legs[c.call_uuid]) for c in calls]
