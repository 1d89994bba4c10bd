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
from typing import Any

import sqlite_utils

from ..registrar.location import Binding
from ..registrar.users import UserRecord

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


def _binding_row(b: Binding) -> tuple[Any, ...]:
    return (
        b.aor,
        b.key_text(),
        b.contact,
        b.expires_at,
        b.q,
        b.call_id,
        b.cseq,
        b.instance,
        b.reg_id,
        json.dumps(b.path) if b.path else "",
        b.transport,
        b.source_host,
        b.source_port,
        b.user_agent,
        b.registered_at,
    )


class Store:
    """One connection to the database; open one per process (server, CLI)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.db = sqlite_utils.Database(self.conn, execute_plugins=False)
            self.db.enable_wal()
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self._create()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise StoreError(f"cannot use {self.path}: {exc}") from None
        except StoreError:
            self.conn.close()
            raise

    @classmethod
    def open(cls, data_dir: Path | str) -> Store:
        """DATA_DIR/vivait.db, creating the directory on first use."""
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory / DB_NAME)

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
    def upsert_users(self, records: Iterable[UserRecord]) -> int:
        now = time.time()
        rows = [(*(getattr(r, c) for c in _USER_COLUMNS), now) for r in records]
        with self.conn:
            self.conn.executemany(_UPSERT_USER, rows)
        return len(rows)

    def replace_config_users(self, records: Iterable[UserRecord]) -> int:
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

    def list_users(self) -> list[UserRecord]:
        cur = self.conn.execute(f"SELECT {', '.join(_USER_COLUMNS)} FROM users ORDER BY number")
        return [UserRecord(*row) for row in cur]

    def get_user(self, number: str) -> UserRecord | None:
        cur = self.conn.execute(
            f"SELECT {', '.join(_USER_COLUMNS)} FROM users WHERE number = ?", (number,)
        )
        row = cur.fetchone()
        return UserRecord(*row) if row else None

    # ---- bindings ---------------------------------------------------------------------
    def save_bindings(
        self, upserts: Iterable[Binding], removals: Iterable[tuple[str, str]]
    ) -> None:
        """Write-behind batch: upserts and (aor, key text) removals in one transaction."""
        rows = [_binding_row(b) for b in upserts]
        with self.conn:
            self.conn.executemany("DELETE FROM bindings WHERE aor = ? AND key = ?", removals)
            self.conn.executemany(_UPSERT_BINDING, rows)

    def load_bindings(self) -> list[Binding]:
        cur = self.conn.execute(
            "SELECT aor, key, contact, expires_at, q, call_id, cseq, instance, reg_id, path,"
            " transport, source_host, source_port, user_agent, registered_at FROM bindings"
        )
        out = []
        for (
            aor,
            key,
            contact,
            expires_at,
            q,
            call_id,
            cseq,
            instance,
            reg_id,
            path,
            transport,
            source_host,
            source_port,
            user_agent,
            registered_at,
        ) in cur:
            binding = Binding(
                aor=aor,
                contact=contact,
                expires_at=expires_at,
                q=q,
                call_id=call_id,
                cseq=cseq,
                instance=instance,
                reg_id=reg_id,
                path=json.loads(path) if path else [],
                transport=transport,
                source_host=source_host,
                source_port=source_port,
                user_agent=user_agent,
                registered_at=registered_at,
            )
            binding._key = key  # saved by key_text(); skips re-parsing every contact
            out.append(binding)
        return out

    def delete_all_bindings(self) -> int:
        with self.conn:
            cur = self.conn.execute("DELETE FROM bindings")
        return cur.rowcount

    # ---- small settings (e.g. demo credentials kept stable across restarts) -------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
