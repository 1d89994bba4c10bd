"""kill -9 after registrations: a restarted server still has every binding (write-behind ≤ 1 s)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from harness import Server, loopback_args
from reg_helpers import Phone, registrations

pytestmark = pytest.mark.timeout(60)

USERS = [{"number": str(n), "password": f"pw-{n}"} for n in range(6140, 6150)]


def test_bindings_survive_kill_9(tmp_path: Path) -> None:
    config = {"registrar": {"flush_interval_ms": 1000, "users": USERS}}
    server = Server(tmp_path, config, loopback_args(http=False, tls=False)).start()
    try:
        phones = [Phone(server.sip_port("udp"), u["number"], u["password"], algorithm="MD5") for u in USERS]
        tcp = Phone(server.sip_port("tcp"), "6140", "pw-6140", transport="tcp", algorithm="MD5")
        try:
            for p in phones:
                assert p.register(600).status == 200
            assert tcp.register(600).status == 200
            before = sorted((b["aor"], b["contact"]) for b in registrations(server))
            assert len(before) == len(USERS) + 1
            time.sleep(1.2)  # one flush interval (1 s) and a margin
            assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        finally:
            for p in phones:
                p.close()
            tcp.close()
        server = Server(tmp_path, config, loopback_args(http=False, tls=False)).start()
        after = registrations(server)
        assert sorted((b["aor"], b["contact"]) for b in after) == before
        assert all(480 <= int(b["expires_in"]) <= 600 for b in after)
    finally:
        server.kill()
