"""The data directory (issue 13, item 6): one default for `serve`, `ctl` and `user`,
whatever the working directory, printed at start; and demo users kept out of a configured
server's directory without deleting anything."""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from harness import Server, free_port, loopback_args

from vivait_sip.paths import DATA_DIR_ENV, SYSTEM_DATA_DIR, default_data_dir, resolve_data_dir

pytestmark = pytest.mark.timeout(120)

CLI = [sys.executable, "-m", "vivait_sip"]
DEMO = ["6140", "6141", "6142", "6143"]


def test_the_default_depends_on_the_user_not_the_working_directory(tmp_path: Path) -> None:
    assert default_data_dir({"HOME": "/home/ana"}, euid=1000) == Path("/home/ana/.local/share/vivait-sip")
    assert default_data_dir({"HOME": "/home/ana", "XDG_DATA_HOME": "/data/ana"}, euid=1000) == Path("/data/ana/vivait-sip")
    # A relative XDG_DATA_HOME is invalid (XDG spec): ignored.
    assert default_data_dir({"HOME": "/home/ana", "XDG_DATA_HOME": "rel"}, euid=1000) == Path("/home/ana/.local/share/vivait-sip")
    assert default_data_dir({"HOME": "/root", "XDG_DATA_HOME": "/x"}, euid=0) == Path(SYSTEM_DATA_DIR)
    assert default_data_dir({DATA_DIR_ENV: str(tmp_path / "svc"), "HOME": "/root"}, euid=0) == tmp_path / "svc"
    # Given by the operator: relative to the config file, or to the working directory.
    assert resolve_data_dir("state", tmp_path / "etc" / "site.json") == tmp_path / "etc" / "state"
    assert resolve_data_dir("/srv/pbx", tmp_path / "site.json") == Path("/srv/pbx")
    assert resolve_data_dir("var") == Path.cwd() / "var"


@contextmanager
def serve(*args: str, cwd: Path, env: dict[str, str]) -> Iterator[list[str]]:
    """`vivait-sip serve ARGS` run from `cwd`; yields its lines up to `ready`."""
    proc = subprocess.Popen([*CLI, "serve", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                break
            seen.append(line)
            if line == "ready":
                break
        assert seen and seen[-1] == "ready", seen
        yield seen
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_serve_ctl_and_user_find_the_same_default_from_anywhere(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    env = {**os.environ, DATA_DIR_ENV: str(shared), "PYTHONPATH": os.pathsep.join(sys.path)}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    admin = f"127.0.0.1:{free_port()}"
    with serve(*loopback_args(http=False, tls=False, admin=False), "--admin", admin, cwd=tmp_path / "a", env=env) as lines:
        assert f"data dir {shared}" in lines
        # From another directory, without --data-dir: the same token, the same store.
        status = subprocess.run([*CLI, "ctl", "--admin", admin, "status", "--json"], cwd=tmp_path / "b", env=env,
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stderr
        users = subprocess.run([*CLI, "user", "list", "--json"], cwd=tmp_path / "b", env=env,
                               capture_output=True, text=True, timeout=30)
        assert [u["number"] for u in json.loads(users.stdout)] == DEMO
    assert not (tmp_path / "a" / "var").exists() and not (tmp_path / "b" / "var").exists()


def test_a_relative_data_dir_in_a_config_file_is_next_to_it_and_ctl_finds_it(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    site = etc / "site.json"
    admin_port = free_port()
    site.write_text(json.dumps({
        "data_dir": "state",
        "admin": {"port": admin_port},
        "registrar": {"users": [{"number": "7000", "password": "seven"}]},
    }))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with serve("--config", str(site), *loopback_args(http=False, tls=False, admin=False), cwd=tmp_path, env=env) as lines:
        assert f"data dir {etc / 'state'}" in lines
        # `ctl --config` and `user --config`: the config's admin address, data directory, token.
        status = subprocess.run([*CLI, "ctl", "--config", str(site), "status", "--json"], cwd=elsewhere, env=env,
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["registrar"]["users"] == 1
        users = subprocess.run([*CLI, "user", "list", "--config", str(site), "--json"], cwd=elsewhere, env=env,
                               capture_output=True, text=True, timeout=30)
        assert [u["number"] for u in json.loads(users.stdout)] == ["7000"]
    assert (etc / "state" / "vivait.db").exists() and (etc / "state" / "admin-token").exists()


def origins(data_dir: Path) -> dict[str, str]:
    with sqlite3.connect(data_dir / "vivait.db") as db:
        return dict(db.execute("SELECT number, origin FROM users ORDER BY number"))


def test_a_configured_server_keeps_the_demo_users_out_without_deleting_them(tmp_path: Path) -> None:
    args = loopback_args(http=False, tls=False)
    demo = Server(tmp_path, None, args).start()
    assert demo.stop() == 0
    passwords = json.loads((demo.data_dir / "demo-passwords.json").read_text())
    assert origins(demo.data_dir) == dict.fromkeys(DEMO, "demo")
    # A store written before demo users had their own origin: they were "config" users,
    # which a config-file start used to delete.
    with sqlite3.connect(demo.data_dir / "vivait.db") as db:
        db.execute("UPDATE users SET origin = 'config'")

    users = [{"number": "7000", "password": "seven"}]
    configured = Server(tmp_path, {"registrar": {"users": users}}, args).start()
    try:
        status = json.loads(subprocess.run([*CLI, *configured.ctl_args, "status", "--json"],
                                           capture_output=True, text=True, timeout=30).stdout)
        assert status["registrar"]["users"] == 1  # 7000 only
    finally:
        assert configured.stop() == 0
    assert (
        "demo users 6140, 6141, 6142, 6143 are kept in the store but not loaded: this server runs from its config "
        "file (registrar.demo_users: true loads them; `vivait-sip user remove NUMBER` deletes them)"
    ) in configured.output
    assert origins(configured.data_dir) == {**dict.fromkeys(DEMO, "demo"), "7000": "config"}

    # registrar.demo_users: true loads them with a config file too.
    with_demo = Server(tmp_path, {"registrar": {"users": users, "demo_users": True}}, args).start()
    try:
        status = json.loads(subprocess.run([*CLI, *with_demo.ctl_args, "status", "--json"],
                                           capture_output=True, text=True, timeout=30).stdout)
        assert status["registrar"]["users"] == 5
    finally:
        assert with_demo.stop() == 0

    # The demo again: the same users, the same passwords, none printed as new; the config
    # file's user is left alone too (kept, not loaded).
    again = Server(tmp_path, None, args).start()
    try:
        status = json.loads(subprocess.run([*CLI, *again.ctl_args, "status", "--json"],
                                           capture_output=True, text=True, timeout=30).stdout)
        assert status["registrar"]["users"] == 4
    finally:
        assert again.stop() == 0
    assert (
        "1 user(s) of a config file (7000) are kept in the store but not loaded: this server runs the embedded demo "
        "(start it with that --config to use them)"
    ) in again.output
    assert json.loads((again.data_dir / "demo-passwords.json").read_text()) == passwords
    assert not any(line.startswith("demo user 6140 password") for line in again.output)
    assert origins(again.data_dir) == {**dict.fromkeys(DEMO, "demo"), "7000": "config"}
