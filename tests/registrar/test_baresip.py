"""baresip registers with digest auth over UDP and TCP, re-registers and unregisters."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server, free_port, free_ports
from reg_helpers import registrations, start_server

pytestmark = pytest.mark.timeout(60)

CONFIG = """\
poll_method epoll
sip_listen 127.0.0.1:{sip_port}
net_interface 127.0.0.1
module_path /usr/lib/baresip/modules
audio_player aubridge,play_{name}
audio_source ausine,440
audio_alert aubridge,play_{name}
rtp_ports {rtp}-{rtp_end}
module g711.so
module aubridge.so
module ausine.so
module_tmp account.so
module_app menu.so
module_app ctrl_tcp.so
ctrl_tcp_listen 127.0.0.1:{ctrl_port}
statmode_default off
"""


class Baresip:
    """One headless baresip driven over ctrl_tcp (netstring-framed JSON)."""

    def __init__(self, tmp: Path, account: str) -> None:
        self.dir = tmp / "baresip"
        self.dir.mkdir()
        self.ctrl_port = free_port()
        rtp = free_ports(12, even=True)
        (self.dir / "config").write_text(
            CONFIG.format(
                sip_port=free_ports(2),  # and the next for TLS
                name=tmp.name,
                rtp=rtp,
                rtp_end=rtp + 10,
                ctrl_port=self.ctrl_port,
            )
        )
        (self.dir / "accounts").write_text(account)
        (self.dir / "contacts").write_text("")
        self.log = (self.dir / "out.log").open("w")
        self.proc = subprocess.Popen(
            ["baresip", "-f", str(self.dir), "-t", "50"],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.buf = b""
        self.events: list[dict[str, object]] = []

    def _read(self, timeout: float) -> dict[str, object] | None:
        self.sock.settimeout(timeout)
        while True:
            head, colon, rest = self.buf.partition(b":")
            if colon and head.isdigit() and len(rest) > int(head):
                size = int(head)
                msg, self.buf = rest[:size], rest[size + 1 :]
                return dict(json.loads(msg))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def wait_event(self, kind: str, timeout: float = 10.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self._read(left)
            if msg is None:
                break
            if msg.get("event"):
                self.events.append(msg)
                if msg.get("type") == kind:
                    return msg
        raise AssertionError(f"no {kind} event; seen {[e.get('type') for e in self.events]}")

    def command(self, command: str, params: str = "") -> None:
        body = json.dumps({"command": command, "params": params, "token": command}).encode()
        self.sock.sendall(str(len(body)).encode() + b":" + body + b",")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.command("quit")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self.sock.close()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    assert shutil.which("baresip"), "baresip is required (Debian package baresip)"
    srv = start_server(
        tmp_path_factory.mktemp("srv"),
        {"min_expires": 4, "users": [{"number": "6140", "password": "s3cret-6140"}, {"number": "6141", "password": "s3cret-6141"}]},
    )
    yield srv
    srv.kill()


@pytest.mark.parametrize(("transport", "user"), [("udp", "6140"), ("tcp", "6141")])
def test_baresip_registers_reregisters_unregisters(server: Server, tmp_path: Path, transport: str, user: str) -> None:
    port = server.sip_port(transport)
    aor = f"sip:{user}@127.0.0.1"
    phone = Baresip(tmp_path, "")
    try:
        # Events are not replayed: add the account once we listen.  regint=4 makes
        # baresip refresh within a few seconds.
        phone.command("uanew", f"<sip:{user}@127.0.0.1:{port};transport={transport}>;auth_pass=s3cret-{user};regint=4")
        phone.wait_event("REGISTER_OK")
        bindings = registrations(server, aor)
        assert len(bindings) == 1
        first = bindings[0]
        assert first["transport"] == transport
        assert first["aor"] == aor
        assert "baresip" in str(first["user_agent"]).lower()
        assert 2 <= int(first["expires_in"]) <= 4

        phone.wait_event("REGISTER_OK")  # the refresh
        bindings = registrations(server, aor)
        assert [b["contact"] for b in bindings] == [first["contact"]]  # refreshed, not added

        phone.command("uadel", f"sip:{user}@127.0.0.1:{port}")  # unregister
        deadline = time.monotonic() + 5
        while registrations(server, aor) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert registrations(server, aor) == []
    finally:
        phone.close()
