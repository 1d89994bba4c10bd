"""The SQLite store: schema, users, bindings, concurrency and crash durability."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vivait_sip.registrar.location import Binding, binding_from_row, binding_row
from vivait_sip.registrar.users import UserRecord, make_user
from vivait_sip.store import DB_NAME, SCHEMA_VERSION, Store, StoreError

REALM = "example.com"


def test_open_creates_the_data_dir_in_wal_mode(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "var")
    assert store.path == tmp_path / "var" / DB_NAME
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert set(store.db.table_names()) >= {"users", "bindings", "meta", "schema_version"}
    store.close()
    again = Store.open(tmp_path / "var")  # reopening keeps one schema row
    assert again.conn.execute("SELECT version FROM schema_version").fetchall() == [
        (SCHEMA_VERSION,)
    ]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    with conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(StoreError, match="newer vivait-sip"):
        Store.open(tmp_path)


def test_not_a_database(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot use"):
        Store.open(tmp_path)


def test_users_crud_and_no_plaintext_password(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    password = "Plaintext-Secret-4711"
    store.upsert_users(
        [make_user("6140", password, REALM, name="Ana", extension="5140", web_extension="7140")]
    )
    store.upsert_users([make_user("6141", password, REALM)])
    got = store.get_user("6140")
    assert got is not None and (got.name, got.extension, got.web_extension, got.realm) == (
        "Ana",
        "5140",
        "7140",
        REALM,
    )
    assert UserRecord(*got) == make_user(
        "6140", password, REALM, name="Ana", extension="5140", web_extension="7140"
    )
    assert [u.number for u in store.list_users()] == ["6140", "6141"]
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for path in tmp_path.iterdir():
        assert password.encode() not in path.read_bytes(), path
    assert store.remove_user("6140")
    assert not store.remove_user("6140")
    assert store.get_user("6140") is None


def test_replace_config_users_keeps_cli_users(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.upsert_users([make_user("6199", "cli", REALM)])
    first = [make_user(n, "pw", REALM, origin="config") for n in ("6140", "6141")]
    assert store.replace_config_users(first) == 2
    store.replace_config_users([make_user("6141", "changed", REALM, origin="config")])
    users = {u.number: u for u in store.list_users()}
    assert set(users) == {"6141", "6199"}
    assert UserRecord(*users["6141"]) == make_user("6141", "changed", REALM, origin="config")
    assert users["6199"].origin == "cli"


def test_bindings_save_load_delete(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    b1 = Binding(
        aor="sip:6140@h", contact="sip:6140@192.0.2.1", expires_at=2e9, call_id="x", cseq=3
    )
    b2 = Binding(
        aor="sip:6140@h", contact="sip:6140@192.0.2.2", expires_at=2e9, instance="i", reg_id=1
    )
    store.save_bindings([binding_row(b1), binding_row(b2)], [])
    store.save_bindings([], [("sip:6140@h", b1.key_text())])
    loaded = [binding_from_row(row) for row in store.load_bindings()]
    assert [b.contact for b in loaded] == ["sip:6140@192.0.2.2"]
    assert loaded[0].key == ("i", 1) and loaded[0].key_text() == b2.key_text()
    assert store.delete_all_bindings() == 1
    assert store.load_bindings() == []


def test_meta(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    assert store.get_meta("demo") is None
    store.set_meta("demo", "a")
    store.set_meta("demo", "b")
    assert Store.open(tmp_path).get_meta("demo") == "b"


def test_two_connections_read_and_write_concurrently(tmp_path: Path) -> None:
    """The CLI writes users while the server holds the store open and flushes bindings."""
    server = Store.open(tmp_path)
    cli = Store.open(tmp_path)
    reader = server.conn.execute("SELECT number FROM users")  # an open read does not block writers
    server.save_bindings([binding_row(Binding(aor="sip:a@h", contact="sip:a@h", expires_at=2e9))], [])
    cli.upsert_users([make_user("6140", "pw", REALM)])
    reader.fetchall()
    assert [u.number for u in server.list_users()] == ["6140"]
    assert len(cli.load_bindings()) == 1
    # a writer holding the lock makes the other wait (busy timeout), not fail at once
    cli.conn.execute("BEGIN IMMEDIATE")
    cli.conn.execute("DELETE FROM users")
    server.conn.execute("PRAGMA busy_timeout = 200")
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        server.upsert_users([make_user("6141", "pw", REALM)])
    assert time.monotonic() - started >= 0.15
    cli.conn.commit()
    server.upsert_users([make_user("6141", "pw", REALM)])
    assert [u.number for u in cli.list_users()] == ["6141"]


def test_kill_9_loses_at_most_the_last_flush_interval(tmp_path: Path) -> None:
    """A process killed with SIGKILL keeps every binding older than one flush interval."""
    child = textwrap.dedent(
        f"""
        import asyncio, os, signal, time
        from vivait_sip.registrar.location import Binding, LocationService
        from vivait_sip.store import Store

        async def main():
            loc = LocationService(Store.open({str(tmp_path)!r}))
            await loc.start(flush_interval_s=0.1, purge_interval_s=60)
            for i in range(50):
                loc.put(Binding(aor=f"sip:{{i}}@h", contact=f"sip:{{i}}@192.0.2.1", expires_at=time.time() + 600))
            await asyncio.sleep(0.35)  # more than a flush interval
            loc.put(Binding(aor="sip:late@h", contact="sip:late@192.0.2.1", expires_at=time.time() + 600))
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=30)
    assert proc.returncode == -9, proc.stderr.decode()
    aors = {b.aor for b in Store.open(tmp_path).load_bindings()}
    assert {f"sip:{i}@h" for i in range(50)} <= aors
