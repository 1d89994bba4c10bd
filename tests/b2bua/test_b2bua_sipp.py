"""The B2BUA against real peers: SIPp plays the PRI gateway (a trunk trusted by its
address) calling a user whose registered phone is a SIPp UAS; with one and two workers.
Every call is answered end to end, leaves a CDR, and `ctl calls` is empty afterwards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server, free_port, loopback_args
from peer_env import check_times
from registrar.reg_helpers import Phone

pytestmark = pytest.mark.timeout(120)

CALLS = 10
GATEWAY = "127.0.0.5"  # SIPp's source address: the trunk's network


def config(workers: int) -> dict[str, object]:
    return {
        "sip": {"workers": workers},
        "registrar": {"algorithms": ["MD5"], "users": [
            {"number": "6140", "password": "pw-6140"}, {"number": "6141", "password": "pw-6141", "extension": "5141"},
            {"number": "6199", "password": "pw-carrier"},  # the credentials of the carrier below
        ]},
        "b2bua": {
            "trunks": [{"name": "gw", "host": GATEWAY, "port": 5999, "networks": [f"{GATEWAY}/32"], "options_interval_s": 0},
                       {"name": "carrier", "host": "127.0.0.9", "port": 5999, "inbound_user": "6199",
                        "options_interval_s": 0}],
            "dids": {"913346141": "6141"},
        },
    }


@pytest.fixture(params=[1, 2], ids=["1worker", "2workers"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    assert shutil.which("sipp"), "sipp is required (Debian package sip-tester)"
    (tmp_path / "srv").mkdir()
    srv = Server(tmp_path / "srv", config(int(request.param)), loopback_args(http=False, tls=False)).start()
    yield srv
    srv.stop()


def ctl(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vivait_sip", *server.ctl_args, *args],
                          capture_output=True, text=True, timeout=30, check=False)


def start_uas(cwd: Path) -> tuple[int, subprocess.Popen[str]]:
    port = free_port()
    proc = subprocess.Popen(
        ["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(port), "-m", str(CALLS), "-nostdin", "-timeout", "40s"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(0.3)
    return port, proc


def register_phone_at(server: Server, extension: str, password: str, port: int) -> None:
    """A phone registers the extension; its Contact is the SIPp UAS (same host: no NAT
    rewriting, the call goes to the Contact)."""
    phone = Phone(server.sip_port("udp"), extension, password, algorithm="MD5")
    try:
        assert phone.register(600, contacts=[f"<sip:{extension}@127.0.0.1:{port}>"]).status == 200
    finally:
        phone.close()


def test_gateway_calls_reach_the_users_phone_by_did(server: Server, tmp_path: Path) -> None:
    uas_port, uas = start_uas(tmp_path)
    register_phone_at(server, "5141", "pw-6141", uas_port)  # user 6141's hard extension
    uac = subprocess.run(
        ["sipp", f"127.0.0.1:{server.sip_port('udp')}", "-sn", "uac", "-s", "913346141", "-i", GATEWAY,
         "-p", str(free_port(GATEWAY)), "-m", str(CALLS), "-r", "5", "-d", "300",
         "-nostdin", "-timeout", "40s", "-timeout_error", "-trace_err"],
        cwd=tmp_path, capture_output=True, text=True, timeout=90, check=False,
    )
    errors = "".join(p.read_text() for p in tmp_path.glob("*_errors.log"))
    assert uac.returncode == 0, f"{errors[-3000:]}\n{uac.stdout[-3000:]}\n{chr(10).join(server.collect_output())[-3000:]}"
    uas_out, _ = uas.communicate(timeout=30)
    assert uas.returncode == 0, uas_out[-2000:]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        calls = json.loads(ctl(server, "calls", "--json").stdout)["calls"]
        if not calls:
            break
        time.sleep(0.2)
    assert calls == []
    cdrs = json.loads(ctl(server, "cdr", "--since", "0", "--format", "json").stdout)
    records = cdrs["calls"] if isinstance(cdrs, dict) else cdrs
    assert len(records) == CALLS
    for record in records:
        assert record["disposition"] == "answered" and record["trunk"] == "gw"
        assert record["did"] == "913346141" and record["callee_user"] == "6141"
        assert record["hangup_side"] == "caller" and record["billable_s"] > 0.2
        assert [leg["direction"] for leg in record["legs"]] == ["in", "out"]
        # field by field: a call from a trunk bills no user; the caller is who the gateway says
        assert record["caller"] == "sipp" and record["callee"] == "913346141" and record["user"] is None
        assert record["rule"] == "local" and record["flow"] is None and record["flow_outcome"] is None
        assert record["linked_to"] is None and record["hangup_cause"].startswith("bye")
        check_times(record, answered=True)
        assert 0.2 < record["billable_s"] < 2.0  # SIPp hangs up after 300 ms
        inbound, outbound = record["legs"]
        assert inbound["trunk"] == "gw" and inbound["status"] == 200 and inbound["target"] == "913346141"
        assert inbound["peer"].startswith("sip:sipp@") and inbound["call_id"].endswith(f"@{GATEWAY}")
        assert outbound["trunk"] is None and outbound["status"] == 200
        assert outbound["target"] == "5141"  # the device: the hard extension it registered as
        assert outbound["contact"] == f"sip:5141@127.0.0.1:{uas_port}"
        assert outbound["call_id"] != inbound["call_id"]
    assert len({r["legs"][0]["call_id"] for r in records}) == CALLS


def test_a_call_to_nobody_registered_is_480_and_recorded(server: Server, tmp_path: Path) -> None:
    phone = Phone(server.sip_port("udp"), "6140", "pw-6140", algorithm="MD5")
    try:
        reply = phone.invite("6141")
        assert reply.status == 480
        reply = phone.invite("7777")
        assert reply.status == 404
    finally:
        phone.close()
    records = json.loads(ctl(server, "cdr", "--since", "0", "--format", "json").stdout)
    records = records["calls"] if isinstance(records, dict) else records
    assert sorted(r["disposition"] for r in records) == ["failed", "no_answer"]
    assert {r["user"] for r in records} == {"6140"}  # the authenticated caller


def test_a_trunk_recognised_by_its_credentials(server: Server, tmp_path: Path) -> None:
    """A carrier without a fixed address authenticates (digest, 407) as its inbound_user:
    its call is the trunk's (routed by DID, no user billed), not that user's."""
    uas_port, uas = start_uas(tmp_path)
    register_phone_at(server, "5141", "pw-6141", uas_port)
    scenario = Path(__file__).parent.parent / "peers" / "sipp" / "b2b_uac_auth.xml"
    port = server.sip_port("udp")
    uac = subprocess.run(
        ["sipp", f"127.0.0.1:{port}", "-sf", str(scenario), "-s", "913346141", "-set", "user", "6199",
         "-au", "6199", "-ap", "pw-carrier", "-auth_uri", f"913346141@127.0.0.1:{port}",
         "-i", "127.0.0.1", "-p", str(free_port()),
         "-m", "1", "-d", "300", "-nostdin", "-timeout", "30s", "-timeout_error", "-trace_err"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    errors = "".join(p.read_text() for p in tmp_path.glob("*_errors.log"))
    assert uac.returncode == 0, f"{errors[-3000:]}\n{uac.stdout[-3000:]}"
    uas.terminate()
    uas.communicate(timeout=10)
    deadline = time.monotonic() + 5
    records: list[dict[str, object]] = []
    while time.monotonic() < deadline and not records:
        out = json.loads(ctl(server, "cdr", "--since", "0", "--format", "json").stdout)
        records = out["calls"] if isinstance(out, dict) else out
        time.sleep(0.2)
    [record] = records
    assert record["trunk"] == "carrier" and record["user"] is None  # the trunk's call, no user billed
    assert record["did"] == "913346141" and record["callee_user"] == "6141"
    assert record["disposition"] == "answered"
