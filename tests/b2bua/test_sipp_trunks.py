"""Trunks against real peers, in a running server (one and two workers): SIPp plays the
PRI gateway (tests/peers/sipp/trunk_*.xml) for a test feature that owns a
`TrunkManager` (tests/b2bua/trunk_probe.py).

* OPTIONS answered → the trunk is up; the gateway gone → down after `down_after`
  unanswered checks; one answer is not enough to come back (`up_after` 2), two are.
  Over TCP a gateway gone refuses the connection: down as many checks later, no waiting.
* Registration to a far end that challenges (401, the digest checked by SIPp's
  `verifyauth`) and grants 2 s: registered, refreshed before it lapses, and Expires: 0
  when the server stops.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Server, free_port, loopback_args

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE.parent / "peers" / "sipp"
INTERVAL = 0.3


@pytest.fixture(params=[1, 2], ids=["1worker", "2workers"])
def workers(request: pytest.FixtureRequest) -> int:
    assert shutil.which("sipp"), "sipp is required (Debian package sip-tester)"
    return int(request.param)


class Gateway:
    """SIPp UAS processes playing the far end on one UDP port, started and stopped at will."""

    def __init__(self, scenario: str, cwd: Path, tcp: bool = False) -> None:
        self.scenario = str(SCENARIOS / scenario)
        self.cwd = cwd
        self.tcp = tcp
        self.port = free_port()
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *extra: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["sipp", "-sf", self.scenario, "-i", "127.0.0.1", "-p", str(self.port), "-nostdin", "-trace_err",
             "-t", "t1" if self.tcp else "u1", *extra],
            cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.procs.append(proc)
        time.sleep(0.3)  # bound to its port
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)

    def log_lines(self) -> list[str]:
        return [line for p in sorted(self.cwd.glob("*_logs.log")) for line in p.read_text().splitlines() if line.strip()]


@pytest.fixture
def gateway(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    gw = Gateway(request.param, tmp_path)
    yield gw
    gw.stop()


def probe_server(tmp: Path, trunks: list[dict[str, Any]], workers: int) -> Server:
    tmp.mkdir()
    return Server(
        tmp,
        {"trunkprobe": {"trunks": trunks}},
        args=[*loopback_args(http=False, tls=False), "--workers", str(workers)],
        env={"VIVAIT_SIP_FEATURES": "trunk_probe:TrunkProbe", "PYTHONPATH": str(HERE)},
    ).start()


def admin_get(server: Server, path: str) -> str:
    req = urllib.request.Request(f"http://{server.admin}{path}", headers=server.admin_headers())
    with urllib.request.urlopen(req, timeout=5) as reply:
        return str(reply.read().decode())


def trunk(server: Server, name: str) -> dict[str, Any]:
    status = json.loads(admin_get(server, "/api/status"))
    return dict(status["trunkprobe"]["trunks"][name])


def wait_for(server: Server, name: str, holds: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = trunk(server, name)
        if holds(state):
            return state
        assert time.monotonic() < deadline, f"still {state}"
        time.sleep(0.05)


def counter(state: dict[str, Any], name: str) -> int:
    return int(state["counters"].get(name, 0))


@pytest.mark.parametrize("gateway", ["trunk_options_uas.xml"], indirect=True)
def test_options_health_with_hysteresis(tmp_path: Path, workers: int, gateway: Gateway) -> None:
    gateway.start()
    config = {"name": "pri", "host": "127.0.0.1", "port": gateway.port, "options_interval_s": INTERVAL,
              "down_after": 3, "up_after": 2}
    server = probe_server(tmp_path / "srv", [config], workers)
    try:
        up = wait_for(server, "pri", lambda s: s["state"] == "up")
        assert up["destinations"] == [f"udp:127.0.0.1:{gateway.port}"]
        assert 'vivait_trunk_up{trunk="pri"} 1' in admin_get(server, "/metrics").splitlines()

        gateway.stop()  # the PRI gateway goes away
        gone = time.monotonic()
        down = wait_for(server, "pri", lambda s: s["state"] == "down")
        took = time.monotonic() - gone
        # three checks unanswered, each counted when the next is due: not before 2 intervals
        assert 2 * INTERVAL <= took < 5.0, took
        assert counter(down, "options_failed") >= 3
        metrics = admin_get(server, "/metrics").splitlines()
        assert 'vivait_trunk_up{trunk="pri"} 0' in metrics
        assert 'vivait_trunk_state{trunk="pri",state="down"} 1' in metrics

        once = gateway.start("-m", "1")  # answers one OPTIONS, then leaves
        assert once.wait(15) == 0
        answered_once = trunk(server, "pri")
        time.sleep(4 * INTERVAL)
        still = trunk(server, "pri")
        assert still["state"] == "down", still  # one answer is not enough (up_after 2)
        assert counter(still, "options_ok") - counter(down, "options_ok") <= 1

        gateway.start()  # back for good
        back = wait_for(server, "pri", lambda s: s["state"] == "up")
        assert counter(back, "options_ok") - counter(answered_once, "options_ok") >= 2
        out = subprocess.run([sys.executable, "-m", "vivait_sip", *server.ctl_args, "status", "--json"],
                             capture_output=True, text=True, timeout=20, check=True)
        assert json.loads(out.stdout)["trunkprobe"]["trunks"]["pri"]["state"] == "up"
    finally:
        server.stop()


@pytest.mark.parametrize("gateway", ["trunk_register_uas.xml"], indirect=True)
def test_registration_refresh_and_unregister(tmp_path: Path, workers: int, gateway: Gateway) -> None:
    gateway.start("-trace_logs")
    config = {"name": "carrier", "host": "127.0.0.1", "port": gateway.port, "registration": True,
              "auth": {"username": "trunkuser", "password": "s3cret"}, "options_interval_s": 0}
    server = probe_server(tmp_path / "srv", [config], workers)
    try:
        first = wait_for(server, "carrier", lambda s: s["registered"])
        assert first["registration"]["state"] == "registered"
        assert first["registration"]["expires_in_s"] <= 2.0  # what the far end granted
        # refreshed at 90 % of the 2 s granted: still registered, again and again
        refreshed = wait_for(server, "carrier", lambda s: counter(s, "registrations_ok") >= 3)
        assert refreshed["registered"]
        assert counter(refreshed, "registrations_failed") == 0
        assert 'vivait_trunk_registered{trunk="carrier"} 1' in admin_get(server, "/metrics").splitlines()
    finally:
        assert server.stop() == 0
    lines = gateway.log_lines()
    registers = [line for line in lines if "expires=600" in line]
    # every REGISTER answered the challenge right; one worker registers, not each
    assert all(line.endswith("auth=1") or line.endswith("auth=true") for line in lines), lines
    assert len(registers) >= 3
    assert len(registers) <= counter(refreshed, "registrations_ok") + 2, lines
    assert [line for line in lines if "expires=0 " in line] == [lines[-1]], lines


def test_options_over_tcp_and_a_refused_connection(tmp_path: Path) -> None:
    assert shutil.which("sipp"), "sipp is required (Debian package sip-tester)"
    gateway = Gateway("trunk_options_uas.xml", tmp_path, tcp=True)
    gateway.start()
    config = {"name": "pri", "host": "127.0.0.1", "port": gateway.port, "transport": "tcp",
              "options_interval_s": INTERVAL, "down_after": 2, "up_after": 2}
    server = probe_server(tmp_path / "srv", [config], 1)
    try:
        up = wait_for(server, "pri", lambda s: s["state"] == "up")
        assert up["destinations"] == [f"tcp:127.0.0.1:{gateway.port}"]
        gateway.stop()
        down = wait_for(server, "pri", lambda s: s["state"] == "down")
        assert counter(down, "options_failed") >= 2
        gateway.start()
        wait_for(server, "pri", lambda s: s["state"] == "up")
    finally:
        gateway.stop()
        server.stop()
