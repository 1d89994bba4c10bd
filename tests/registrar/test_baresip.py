"""baresip registers with digest auth over UDP and TCP, re-registers and unregisters."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server
from peer_phones import Baresip
from reg_helpers import registrations, start_server

pytestmark = pytest.mark.timeout(60)


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
    # regint=4 makes baresip refresh within a few seconds; the tone is never sent
    account = f"<sip:{user}@127.0.0.1:{port};transport={transport}>;auth_pass=s3cret-{user};regint=4"
    phone = Baresip(tmp_path, user, 440.0, account=account, seconds=1, quit_after=50, sip_trace=False)
    try:
        phone.register()
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
