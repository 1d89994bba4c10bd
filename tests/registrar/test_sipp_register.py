"""SIPp REGISTER scenarios against the real server (tests/peers/sipp/reg_*.xml).

SIPp 3.6 answers only the first challenge and only MD5: the default `registrar.algorithms`
(MD5 alone) suits it; SHA-256 is covered by test_register.py with our own client.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server, free_port
from reg_helpers import registrations, start_server

pytestmark = pytest.mark.timeout(60)

SCENARIOS = Path(__file__).resolve().parent.parent / "peers" / "sipp"
NONCE_LIFETIME_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    assert shutil.which("sipp"), "sipp is required (Debian package sip-tester)"
    srv = start_server(
        tmp_path_factory.mktemp("srv"),
        {
            "nonce_lifetime_s": NONCE_LIFETIME_S,
            "min_expires": 30,
            "users": [{"number": n, "password": f"pw-{n}"} for n in ("6140", "6141", "6142", "6143", "6144", "6145")],
        },
    )
    yield srv
    srv.kill()


def sipp(server: Server, tmp: Path, scenario: str, user: str, password: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        "sipp", f"127.0.0.1:{server.sip_port('udp')}",
        "-sf", str(SCENARIOS / scenario),
        "-s", user, "-au", user, "-ap", password,
        "-i", "127.0.0.1", "-p", str(free_port()),
        "-m", "1", "-nostdin", "-trace_err", "-timeout", "20s", "-timeout_error",
    ]
    result = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=40, check=False)
    errors = "".join(p.read_text() for p in tmp.glob("*_errors.log"))
    assert result.returncode == 0, f"{scenario}: sipp rc {result.returncode}\n{errors}\n{result.stdout[-2000:]}"
    return result


def test_register_401_then_200(server: Server, tmp_path: Path) -> None:
    sipp(server, tmp_path, "reg_auth_ok.xml", "6140", "pw-6140")
    bindings = registrations(server, "sip:6140@127.0.0.1")
    assert len(bindings) == 1 and bindings[0]["transport"] == "udp"


def test_wrong_password_gets_a_fresh_401(server: Server, tmp_path: Path) -> None:
    sipp(server, tmp_path, "reg_wrong_password.xml", "6141", "not-the-password")
    assert registrations(server, "sip:6141@127.0.0.1") == []


def test_stale_nonce_is_rechallenged_with_stale_true(server: Server, tmp_path: Path) -> None:
    sipp(server, tmp_path, "reg_stale.xml", "6142", "pw-6142")
    assert len(registrations(server, "sip:6142@127.0.0.1")) == 1


def test_interval_too_brief_423(server: Server, tmp_path: Path) -> None:
    sipp(server, tmp_path, "reg_423.xml", "6143", "pw-6143")
    assert registrations(server, "sip:6143@127.0.0.1") == []


def test_wildcard_removal(server: Server, tmp_path: Path) -> None:
    sipp(server, tmp_path, "reg_wildcard.xml", "6144", "pw-6144")
    assert registrations(server, "sip:6144@127.0.0.1") == []


def test_two_contacts_with_q_values(server: Server, tmp_path: Path) -> None:
    sipp(server, tmp_path, "reg_two_contacts.xml", "6145", "pw-6145")
    bindings = registrations(server, "sip:6145@127.0.0.1")
    assert sorted(b["q"] for b in bindings) == [0.5, 1.0]
    assert bindings[0]["q"] == 1.0  # best first
