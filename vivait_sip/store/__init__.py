"""The SQLite store (DATA_DIR/vivait.db): users, bindings and small settings.

WAL mode lets the CLI write users while a server reads and flushes bindings; a busy
timeout makes the rare writer collision wait instead of failing.  `synchronous=NORMAL`
in WAL mode survives a killed process (every commit is in the OS before returning);
only a power cut can lose the last commits.  All SQL is parameterised.
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

SCHEMA_VERSION = 1
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


class StoreError(Exception):
    """The database cannot be used (newer schema, unreadable file)."""


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
            if row[0] is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION])

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
