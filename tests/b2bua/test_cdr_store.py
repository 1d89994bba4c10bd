"""The CDR tables in the store: migration from schema 1, private files, indexes, and no
CDR lost to `kill -9` once `write` has returned."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cdr_samples import T0, sample_call

from vivait_sip.b2bua.cdr import CdrWriter
from vivait_sip.registrar.location import binding_from_row
from vivait_sip.store import DB_NAME, SCHEMA_VERSION, Store
from vivait_sip.store.private import private_dir

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def cdr_schema(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE name LIKE 'cdr%' ORDER BY name"
        ).fetchall()
    finally:
        conn.close()


def test_a_schema_1_database_is_migrated_keeping_users_and_bindings(tmp_path: Path) -> None:
    """tests/b2bua/store_v1.sql was dumped from a database the schema-1 store made."""
    data = private_dir(tmp_path / "var")
    conn = sqlite3.connect(data / DB_NAME)
    conn.executescript((HERE / "store_v1.sql").read_text())
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    assert SCHEMA_VERSION == 2

    store = Store.open(data)
    assert store.conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
    users = {u.number: u for u in store.list_users()}
    assert set(users) == {"6140", "6141"}
    assert (users["6140"].name, users["6140"].extension, users["6140"].realm) == ("Ana", "5140", "vivait")
    assert users["6140"].ha1_md5 == "0d00f53cefc92dadb142b1011cfdf221"
    (binding,) = [binding_from_row(row) for row in store.load_bindings()]
    assert (binding.aor, binding.contact, binding.cseq, binding.path) == (
        "sip:6140@vivait",
        "sip:6140@192.0.2.1:5060",
        7,
        ["<sip:edge;lr>"],
    )
    assert store.get_meta("k") == "v"
    writer = CdrWriter(store)
    writer.write(sample_call())
    assert writer.query(T0, T0 + 1) == [sample_call()]
    store.close()

    again = Store.open(data)  # a second open changes nothing
    assert again.conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
    assert len(again.list_users()) == 2 and len(CdrWriter(again).query(T0, T0 + 1)) == 1
    again.close()
    Store.open(tmp_path / "fresh").close()
    assert cdr_schema(data / DB_NAME) == cdr_schema(tmp_path / "fresh" / DB_NAME)  # same as new


def test_the_cdr_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = Store.open(tmp_path / "var")
        CdrWriter(store).write(sample_call())
        data = tmp_path / "var"
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
        store.close()
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    ("where", "args", "index"),
    [
        ("started_at >= ? AND started_at < ?", (T0, T0 + 1), "cdr_calls_started"),
        ("user = ? AND started_at >= ? AND started_at < ?", ("6140", T0, T0 + 1), "cdr_calls_user"),
        ("caller = ? AND started_at >= ?", ("6140", T0), "cdr_calls_caller"),
        ("callee = ? AND started_at >= ?", ("6140", T0), "cdr_calls_callee"),
        ("linked_to = ?", ("call-1",), "cdr_calls_linked"),
    ],
)
def test_exports_and_billing_per_extension_use_an_index(
    tmp_path: Path, where: str, args: tuple[object, ...], index: str
) -> None:
    store = Store.open(tmp_path)
    plan = store.conn.execute(f"EXPLAIN QUERY PLAN SELECT * FROM cdr_calls WHERE {where}", args).fetchall()
    assert any(f"USING INDEX {index}" in row[-1] for row in plan), plan


CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[3])
    from cdr_samples import sample_call
    from vivait_sip.b2bua.cdr import CdrWriter
    from vivait_sip.store import Store

    writer = CdrWriter(Store.open(sys.argv[1]))
    prefix = sys.argv[2]
    i = 0
    while True:
        record = sample_call(f"{prefix}-{i}", 1_772_352_000.0 + i)
        writer.write(record)
        print(record.call_uuid, flush=True)  # reported ended only once written
        i += 1
    """
)


def test_kill_9_loses_no_written_cdr(tmp_path: Path) -> None:
    """Two processes (like two workers) write CDRs in a loop and are killed with SIGKILL
    mid-stream: every call either reported as written is in the database, whole."""
    Store.open(tmp_path).close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), f"w{n}", str(HERE)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for n in range(2)
    ]
    reported: list[str] = []
    for child in children:  # each is past its start-up and writing
        assert child.stdout is not None
        reported.append(child.stdout.readline().decode().strip())
    time.sleep(0.5)
    for child in children:
        child.send_signal(signal.SIGKILL)
    for child in children:
        out, err = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, err.decode()
        reported += out.decode().split("\n")[:-1]  # the last line may be cut
    assert len(reported) > 100, "the writers barely ran"
    store = Store.open(tmp_path)
    stored = {c.call_uuid: c for c in CdrWriter(store).query(0, 2e9)}
    missing = [uuid for uuid in reported if uuid and uuid not in stored]  # a killed write may leave a blank line
    assert missing == []
    assert all(len(call.legs) == 2 for call in stored.values())  # no call without its legs
    assert store.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_what_is_learned_after_the_record_is_amended_into_its_extra(tmp_path: Path) -> None:
    store = Store.open(private_dir(tmp_path / "var"))
    writer = CdrWriter(store)
    writer.write(sample_call(extra={"media": "anchored (default)"}))
    stats = {"caller": {"packets": 250, "loss": 0.0}, "callee": {"packets": 249, "jitter_ms": 1.2}}
    assert writer.amend("call-1", {"media_stats": stats}) is True
    assert writer.amend("no-such-call", {"media_stats": stats}) is False
    [record] = writer.query(T0 - 1, T0 + 1)
    assert record.extra == {"media": "anchored (default)", "media_stats": stats}  # merged, nothing lost
    store.close()
