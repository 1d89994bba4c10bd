"""Private data at rest (issue 9, item 5): the data directory 0700, the database with its
-wal/-shm, the TLS key, the admin token and the demo passwords 0600 whatever the umask;
no clear password in the store; passwords kept out of the command line."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from harness import Server, loopback_args

from vivait_sip.registrar import cli as user_cli
from vivait_sip.registrar.digest import Algorithm, ha1
from vivait_sip.store import Store

CLI = [sys.executable, "-m", "vivait_sip"]


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def user_cmd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    with umask(0o022):
        return subprocess.run(
            [*CLI, "user", *args], input=stdin, capture_output=True, text=True, timeout=30,
            stdin=subprocess.DEVNULL if stdin is None else None,
        )


def test_serve_under_umask_022_keeps_everything_private(tmp_path: Path) -> None:
    with umask(0o022):
        srv = Server(tmp_path, None, loopback_args()).start()
    try:
        data = srv.data_dir
        assert mode(data) == 0o700
        for name in ("vivait.db", "vivait.db-wal", "vivait.db-shm", "admin-token", "demo-passwords.json"):
            assert (data / name).exists(), name
            assert mode(data / name) == 0o600, name
        assert mode(data / "certs") == 0o700
        assert mode(data / "certs" / "server.key") == 0o600
        passwords = json.loads((data / "demo-passwords.json").read_text())
        assert sorted(passwords) == ["6140", "6141", "6142", "6143"]
        # Shown once, when made.
        assert f"demo user 6140 password {passwords['6140']} " in "\n".join(srv.output)
    finally:
        assert srv.stop() == 0
    store = Store.open(srv.data_dir)
    try:
        assert store.get_meta("demo_passwords") is None  # never in the store
        row = store.get_user("6140")
        assert row is not None and row.ha1_sha256 == ha1(Algorithm.SHA256, "6140", "vivait", passwords["6140"])
    finally:
        store.close()
    # The next start names the file instead of printing them again.
    with umask(0o022):
        again = Server(tmp_path, None, loopback_args(http=False, tls=False)).start()
    assert again.stop() == 0
    text = "\n".join(again.output)
    assert passwords["6140"] not in text
    assert "demo users 6140, 6141, 6142, 6143: passwords in " in text


def test_an_old_data_directory_is_narrowed_and_its_clear_demo_passwords_erased(tmp_path: Path) -> None:
    """What versions before this one left: 0755/0644 and the passwords in the meta table."""
    data = tmp_path / "data"
    with umask(0o022):
        data.mkdir()
        store = Store.open(data)
        legacy = {"6140": "Legacy-Secret-6140", "6141": "Legacy-Secret-6141"}
        store.set_meta("demo_passwords", json.dumps(legacy))
        store.close()
    os.chmod(data, 0o755)
    os.chmod(data / "vivait.db", 0o644)
    with umask(0o022):
        srv = Server(tmp_path, None, loopback_args(http=False, tls=False)).start()
    try:
        assert mode(data) == 0o700
        for name in ("vivait.db", "vivait.db-wal", "vivait.db-shm"):
            assert mode(data / name) == 0o600, name
        kept = json.loads((data / "demo-passwords.json").read_text())
        assert kept["6140"] == "Legacy-Secret-6140" and kept["6141"] == "Legacy-Secret-6141"
        assert set(kept) == {"6140", "6141", "6142", "6143"}
    finally:
        assert srv.stop() == 0
    for name in ("vivait.db", "vivait.db-wal"):
        path = data / name
        if path.exists():
            assert b"Legacy-Secret" not in path.read_bytes(), name
    with sqlite3.connect(data / "vivait.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM meta WHERE key = 'demo_passwords'").fetchone() == (0,)


def test_store_files_are_0600_while_open_under_umask_022(tmp_path: Path) -> None:
    with umask(0o022):
        store = Store.open(tmp_path / "fresh")
        try:
            store.set_meta("k", "v")
            assert mode(tmp_path / "fresh") == 0o700
            for name in ("vivait.db", "vivait.db-wal", "vivait.db-shm"):
                assert mode(tmp_path / "fresh" / name) == 0o600, name
        finally:
            store.close()


def test_user_add_reads_the_password_from_stdin_and_keeps_files_private(tmp_path: Path) -> None:
    data = tmp_path / "var"
    nobody = "127.0.0.1:9"
    out = user_cmd("add", "6200", "--data-dir", str(data), "--admin", nobody, stdin="s3cret-from-stdin\n")
    assert out.returncode == 0, out.stderr
    assert "user 6200 saved" in out.stdout and "s3cret" not in out.stdout + out.stderr
    assert mode(data) == 0o700 and mode(data / "vivait.db") == 0o600
    for name in ("vivait.db-wal", "vivait.db-shm"):
        if (data / name).exists():
            assert mode(data / name) == 0o600
    store = Store.open(data)
    try:
        row = store.get_user("6200")
        assert row is not None and row.ha1_md5 == ha1(Algorithm.MD5, "6200", "vivait", "s3cret-from-stdin")
    finally:
        store.close()
    empty = user_cmd("add", "6201", "--data-dir", str(data), "--admin", nobody, stdin="\n")
    assert empty.returncode == 2 and "empty password" in empty.stderr
    # A new password, from stdin too; the other fields stay.
    user_cmd("add", "6202", "--name", "Ana", "--extension", "5202", "--data-dir", str(data), "--admin", nobody, stdin="first\n")
    changed = user_cmd("password", "6202", "--data-dir", str(data), "--admin", nobody, stdin="second\n")
    assert changed.returncode == 0, changed.stderr
    assert "password of user 6202 changed" in changed.stdout
    store = Store.open(data)
    try:
        row = store.get_user("6202")
        assert row is not None and row.name == "Ana" and row.extension == "5202"
        assert row.ha1_sha256 == ha1(Algorithm.SHA256, "6202", "vivait", "second")
        assert row.ext_ha1_sha256 == ha1(Algorithm.SHA256, "5202", "vivait", "second")
    finally:
        store.close()
    unknown = user_cmd("password", "6999", "--data-dir", str(data), "--admin", nobody, stdin="x\n")
    assert unknown.returncode == 1 and "no user 6999" in unknown.stderr


def test_user_password_for_demo_and_config_users(tmp_path: Path) -> None:
    """A demo user's new password survives restarts (the file changes); a config user's
    password belongs to the config file."""
    with umask(0o022):
        srv = Server(tmp_path, None, loopback_args(http=False, tls=False)).start()
    try:
        changed = subprocess.run(
            [*CLI, "user", "password", "6141", "--data-dir", str(srv.data_dir), "--admin", srv.admin],
            input="brand-new-6141\n", capture_output=True, text=True, timeout=30,
        )
        assert changed.returncode == 0, changed.stderr
        assert "running server at" in changed.stdout and "notified" in changed.stdout
        assert json.loads((srv.data_dir / "demo-passwords.json").read_text())["6141"] == "brand-new-6141"
        assert mode(srv.data_dir / "demo-passwords.json") == 0o600
    finally:
        assert srv.stop() == 0
    with umask(0o022):
        srv = Server(tmp_path, None, loopback_args(http=False, tls=False)).start()
    assert srv.stop() == 0
    store = Store.open(srv.data_dir)
    try:
        row = store.get_user("6141")
        assert row is not None and row.ha1_md5 == ha1(Algorithm.MD5, "6141", "vivait", "brand-new-6141")
    finally:
        store.close()

    config_dir = tmp_path / "configured"
    config_dir.mkdir()
    with umask(0o022):
        cfg = Server(config_dir, {"registrar": {"users": [{"number": "6300", "password": "cfg"}]}}, loopback_args(http=False, tls=False)).start()
    assert cfg.stop() == 0
    refused = user_cmd("password", "6300", "--data-dir", str(cfg.data_dir), "--admin", "127.0.0.1:9", stdin="x\n")
    assert refused.returncode == 2 and "comes from the config file" in refused.stderr


def test_read_password_prompts_twice_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["one", "one", "one", "two"])
    monkeypatch.setattr(user_cli.getpass, "getpass", lambda prompt="": next(answers))
    assert user_cli.read_password(None, stdin=Tty()) == "one"
    with pytest.raises(user_cli.PasswordError, match="do not match"):
        user_cli.read_password(None, stdin=Tty())
    assert user_cli.read_password("given", stdin=Tty()) == "given"
    assert user_cli.read_password(None, stdin=io.StringIO("piped\r\nignored\n")) == "piped"
