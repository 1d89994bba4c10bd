"""What the real-peer B2BUA tests (test_peers_*.py) share: a server with users, trunks and
a dialplan on loopback with one or two workers; `ctl` and the CDRs it reads back; SIPp
started with our scenarios (tests/peers/sipp/b2b_*.xml), its message trace read back."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from harness import Server, free_port, loopback_args

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE.parent / "peers" / "sipp"
GATEWAY = "127.0.0.5"  # the PRI gateway's address (SIPp's source): the trunk's network
GATEWAY2 = "127.0.0.6"  # a second gateway (failover)

USERS = [
    {"number": "6140", "password": "pw-6140", "extension": "5140"},
    {"number": "6141", "password": "pw-6141", "extension": "5141"},
    {"number": "6142", "password": "pw-6142", "extension": "5142"},
]


def base_config(workers: int, **b2bua: Any) -> dict[str, Any]:
    return {
        # Load shedding has its own tests; here a loop stalled 250 ms on the loaded CI box
        # (the default threshold) would turn a call under test into a 503.
        "sip": {"workers": workers, "limits": {"overload_lag_ms": 2000}},
        "registrar": {"algorithms": ["MD5"], "users": USERS},  # baresip and SIPp do MD5 only
        "b2bua": b2bua,
    }


def start_server(tmp: Path, config: dict[str, Any]) -> Server:
    tmp.mkdir(parents=True, exist_ok=True)
    return Server(tmp, config, loopback_args(http=False, tls=False)).start()


@pytest.fixture(params=[1, 2], ids=["1worker", "2workers"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def ctl(server: Server, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vivait_sip", *server.ctl_args, *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def active_calls(server: Server) -> list[dict[str, Any]]:
    out = ctl(server, "calls", "--json")
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout)["calls"])


def wait_no_calls(server: Server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (calls := active_calls(server)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert calls == [], calls


def cdrs(server: Server) -> list[dict[str, Any]]:
    """Every CDR: `ctl cdr` alone shows today's, and a test may run across midnight."""
    out = ctl(server, "cdr", "--since", "0", "--format", "json", "--limit", "100000")
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout)["calls"])


def wait_cdrs(server: Server, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(records := cdrs(server)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(records) == count, records
    return records


def check_times(record: dict[str, Any], *, answered: bool) -> None:
    """The times of a call record agree with each other and with its legs."""
    started, ended = record["started_at"], record["ended_at"]
    assert started <= ended and abs(time.time() - ended) < 300
    assert record["duration_s"] == pytest.approx(ended - started, abs=0.002)
    if answered:
        assert started <= record["answered_at"] <= ended
        assert record["billable_s"] == pytest.approx(ended - record["answered_at"], abs=0.002)
        assert record["billable_s"] > 0
    else:
        assert record["answered_at"] is None and record["billable_s"] == 0
    for leg in record["legs"]:
        assert started - 0.001 <= leg["started_at"] <= leg["ended_at"] <= ended + 0.001, leg


def server_log(server: Server) -> str:
    return "\n".join(server.collect_output())


# ---- SIPp ------------------------------------------------------------------------------------


@dataclass
class Sipp:
    """One SIPp process playing a scenario of ours; its message trace (-trace_msg) is
    kept so a test can read what it received."""

    name: str
    cwd: Path
    args: list[str]
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    messages_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.messages_path = self.cwd / f"{self.name}_messages.log"

    def start(self, settle: float = 0.3) -> Sipp:
        assert shutil.which("sipp"), "sipp is required (Debian package sip-tester)"
        self.proc = subprocess.Popen(
            ["sipp", *self.args, "-nostdin", "-trace_msg", "-message_file", str(self.messages_path),
             "-trace_err", "-error_file", str(self.cwd / f"{self.name}_errors.log"),
             "-trace_stat", "-stf", str(self.cwd / f"{self.name}_stat.csv")],
            cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        time.sleep(settle)  # bound to its port
        assert self.proc.poll() is None or self.proc.returncode == 0, self.output()
        return self

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout} s:\n{self.report()}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # SIPp: stop, writing its stats
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def output(self) -> str:
        if self.proc is None or self.proc.stdout is None or self.proc.poll() is None:
            return ""
        return self.proc.stdout.read()

    def errors(self) -> str:
        path = self.cwd / f"{self.name}_errors.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def report(self) -> str:
        return f"--- {self.name} errors:\n{self.errors()[-3000:]}\n--- {self.name} output:\n{self.output()[-3000:]}"

    def received(self, start: str = "") -> list[str]:
        """The messages SIPp received that start with `start` (`"INVITE"`, `"SIP/2.0 200"`)."""
        return [message for _, message in self.received_at(start)]

    def received_at(self, start: str = "") -> list[tuple[float, str]]:
        """(epoch seconds, message) of what SIPp received, from its trace: `----- date
        time`, `UDP message received [N] bytes :`, a blank line, the message."""
        if not self.messages_path.exists():
            return []
        text = self.messages_path.read_text(errors="replace")
        found = []
        for block in re.split(r"(?:^|\n)-{20,} ", text)[1:]:
            lines = block.split("\n", 2)
            if len(lines) < 3 or " message received " not in lines[1]:
                continue
            message = lines[2].lstrip("\n")
            if message.startswith(start):
                when = datetime.strptime(lines[0].strip(), "%Y-%m-%d %H:%M:%S.%f").timestamp()
                found.append((when, message))
        return found

    def final_stats(self) -> dict[str, str]:
        """The last line of SIPp's statistics file (-trace_stat), by column."""
        path = self.cwd / f"{self.name}_stat.csv"
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        names = lines[0].rstrip(";").split(";")
        values = lines[-1].rstrip(";").split(";")
        return dict(zip(names, values, strict=False))


def sipp(name: str, cwd: Path, scenario: str, *args: str, local: str = "127.0.0.1", port: int | None = None,
         transport: str = "u1") -> Sipp:
    """A SIPp process with our scenario (a file name in tests/peers/sipp) or a built-in
    one (`"uas"`, `"uac"`), bound to `local:port` (a free UDP port when not given)."""
    port = port or free_port(local)
    scenario_args = ["-sn", scenario] if scenario in ("uas", "uac") else ["-sf", str(SCENARIOS / scenario)]
    runner = Sipp(name, cwd, [*scenario_args, "-i", local, "-p", str(port), "-t", transport, *args])
    runner.port = port
    return runner


def user_args(server: Server, user: str, number: str) -> list[str]:
    """SIPp arguments for b2b_uac_*.xml: user `user` (password pw-USER) dials `number`.
    The digest uri must be the Request-URI (RFC 2617 §3.2.2.5: the server checks it);
    SIPp's default is only `remote_ip:remote_port`."""
    port = server.sip_port("udp")
    return [f"127.0.0.1:{port}", "-s", number, "-set", "user", user, "-au", user, "-ap", f"pw-{user}",
            "-auth_uri", f"{number}@127.0.0.1:{port}"]


def header(message: str, name: str) -> str | None:
    for line in message.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def wait_for(what: Callable[[], Any], timeout: float, interval: float = 0.1, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, message or f"not true within {timeout} s"
        time.sleep(interval)


def register(server: Server, user: str, password: str, contact_port: int, *, expires: int = 600,
             aor: str | None = None, contact_host: str = "127.0.0.1") -> None:
    """Register a contact for `aor` (a user number or extension; default `user`): a SIPp UAS
    listening there gets the calls (same host: no NAT rewriting)."""
    from registrar.reg_helpers import Phone

    phone = Phone(server.sip_port("udp"), aor or user, password, algorithm="MD5", auth_user=user)
    try:
        reply = phone.register(expires, contacts=[f"<sip:{aor or user}@{contact_host}:{contact_port}>"])
        assert reply.status == 200, reply
    finally:
        phone.close()


def iter_legs(record: dict[str, Any], direction: str) -> Iterator[dict[str, Any]]:
    return (leg for leg in record["legs"] if leg["direction"] == direction)
