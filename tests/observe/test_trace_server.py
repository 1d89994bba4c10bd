"""`ctl trace` and HEP export against the real server.

baresip registers while `ctl trace` runs: the trace shows its REGISTERs and the answers,
the pcap opens in tshark and sngrep, and two HEP collectors (a socket of ours, and
Debian's sngrep in HEP mode) receive the very same messages.  With `--workers 2` the
trace includes what worker 1 sent, relayed by worker 0.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
from harness import Server, StreamClient, UdpClient, free_port, loopback_args, options_request
from obs_helpers import ctl_prefix

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "registrar"))
from peer_phones import Baresip
from reg_helpers import Phone, ctl

from vivait_sip.trace.hep import PROTO_UDP, decode
from vivait_sip.workers import owner_index

pytestmark = pytest.mark.timeout(90)


def _lines(stream: IO[str]) -> queue.Queue[str | None]:
    out: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            out.put(line.rstrip("\n"))
        out.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return out


class Trace:
    """`vivait-sip ctl trace ... --json` running in the background."""

    def __init__(self, server: Server, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vivait_sip", *ctl_prefix(server), "trace", "--json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.stdout = _lines(self.proc.stdout)
        self.stderr = _lines(self.proc.stderr)
        first = self.stderr.get(timeout=15)
        assert first is not None and first.startswith("tracing "), first

    def wait(self, timeout: float = 30) -> tuple[int, list[dict[str, Any]], list[str]]:
        """Exit code, the records printed, and stderr."""
        rc = self.proc.wait(timeout)
        records = []
        while (line := self.stdout.get(timeout=5)) is not None:
            records.append(json.loads(line))
        errors = []
        while (line := self.stderr.get(timeout=5)) is not None:
            errors.append(line)
        return rc, records, errors

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class SngrepCollector:
    """Debian's sngrep as a HEP collector: no capture device, HEP on udp, saved to a pcap."""

    def __init__(self, tmp: Path) -> None:
        assert shutil.which("sngrep"), "sngrep is required (Debian package sngrep)"
        self.port = free_port()
        self.pcap = tmp / "sngrep-hep.pcap"
        self.proc = subprocess.Popen(
            ["sngrep", "-N", "-q", "-L", f"udp:127.0.0.1:{self.port}", "-O", str(self.pcap)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not self._bound():  # listening once our own bind fails
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "sngrep did not listen"
            time.sleep(0.05)

    def _bound(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", self.port))
            except OSError:
                return True
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class UdpCollector:
    """A bare socket receiving HEP packets (and noting which process sent each)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])

    def drain(self, timeout: float = 1.0) -> list[tuple[bytes, tuple[str, int]]]:
        out = []
        self.sock.settimeout(timeout)
        while True:
            try:
                out.append(self.sock.recvfrom(70000))
            except TimeoutError:
                return out

    def close(self) -> None:
        self.sock.close()


def tshark_sip(path: Path, *fields: str) -> list[list[str]]:
    args = ["tshark", "-r", str(path), "-Y", "sip", "-T", "fields"]
    for name in fields:
        args += ["-e", name]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return [line.split("\t") for line in out.stdout.splitlines()]


def call_id(message: str) -> str:
    match = re.search(r"^(?:Call-ID|i):\s*(\S+)", message, re.M | re.I)
    assert match, message
    return match.group(1)


@pytest.fixture(scope="module")
def collectors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UdpCollector, SngrepCollector]]:
    mine = UdpCollector()
    sngrep = SngrepCollector(tmp_path_factory.mktemp("sngrep"))
    yield mine, sngrep
    sngrep.stop()
    mine.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, collectors: tuple[UdpCollector, SngrepCollector]) -> Iterator[Server]:
    assert shutil.which("baresip"), "baresip is required (Debian package baresip)"
    mine, sngrep = collectors
    config = {
        "registrar": {"min_expires": 4, "users": [{"number": "6140", "password": "s3cret-6140"}]},
        "trace": {"hep": {"collectors": [f"127.0.0.1:{mine.port}", f"127.0.0.1:{sngrep.port}"], "capture_id": 4242, "auth_key": "hep-secret"}},
        "http": {"tls": False},  # SIP over plain WebSocket on /sip
    }
    srv = Server(tmp_path_factory.mktemp("srv"), config, loopback_args(http=True, tls=False)).start()
    yield srv
    srv.kill()


def test_ctl_trace_shows_baresip_registering_and_hep_collectors_get_the_same(
    server: Server, collectors: tuple[UdpCollector, SngrepCollector], tmp_path: Path
) -> None:
    mine, sngrep = collectors
    mine.drain(0.2)
    pcap = tmp_path / "trace.pcap"
    trace = Trace(server, "--user", "6140", "--method", "REGISTER", "--count", "4", "--pcap", str(pcap))
    port = server.sip_port("udp")
    account = f"<sip:6140@127.0.0.1:{port};transport=udp>;auth_pass=s3cret-6140;regint=600"
    phone = Baresip(tmp_path, "6140", 440.0, account=account, seconds=1, quit_after=50, sip_trace=False)
    try:
        phone.register()
        rc, records, errors = trace.wait()
    finally:
        trace.kill()
        phone.close()
    assert rc == 0, errors
    assert errors[-1] == f"4 message(s) written to {pcap}"

    # What `ctl trace` showed while it happened: the challenge, then the registration.
    firsts = [r["message"].split("\r\n", 1)[0] for r in records]
    request = f"REGISTER sip:127.0.0.1:{port};transport=udp SIP/2.0"
    assert firsts == [request, "SIP/2.0 401 Unauthorized", request, "SIP/2.0 200 OK"]
    assert [r["direction"] for r in records] == ["in", "out", "in", "out"]
    assert {(r["transport"], r["local_port"], r["worker"]) for r in records} == {("udp", port, 0)}
    assert "baresip" in records[0]["message"].lower()  # User-Agent: the phone's own bytes
    dialog = call_id(records[0]["message"])
    assert records[1]["ts"] >= records[0]["ts"]

    # The pcap opens in tshark and sngrep.
    assert tshark_sip(pcap, "sip.Method", "sip.Status-Code", "sip.Call-ID") == [
        ["REGISTER", "", dialog], ["", "401", dialog], ["REGISTER", "", dialog], ["", "200", dialog],
    ]
    out = subprocess.run(["sngrep", "-N", "-I", str(pcap)], capture_output=True, text=True, timeout=60, check=True)
    assert re.findall(r"Dialog count: (\d+)", out.stdout)[-1] == "1"

    # Our HEP collector got every one of them, byte for byte, with the configured identity.
    packets = [decode(data) for data, _ in mine.drain()]
    hep = [p for p in packets if dialog.encode() in p.payload and b"CSeq: " in p.payload]
    assert [p.payload.decode() for p in hep if p.payload.decode() in [r["message"] for r in records]] == [r["message"] for r in records]
    assert {(p.proto, p.capture_id, p.auth_key) for p in hep} == {(PROTO_UDP, 4242, b"hep-secret")}
    register = next(p for p in hep if p.payload.startswith(b"REGISTER"))
    assert register.dst == ("127.0.0.1", port) and register.src == (records[0]["remote_host"], records[0]["remote_port"])

    # And so did sngrep in HEP mode (saved in its pcap when it stops).
    sngrep.stop()
    rows = tshark_sip(sngrep.pcap, "sip.Method", "sip.Status-Code", "sip.Call-ID", "udp.dstport")
    mine_rows = [row for row in rows if row[2] == dialog]
    assert ["REGISTER", "", dialog, str(port)] in mine_rows
    assert ["", "200", dialog, str(records[0]["remote_port"])] in mine_rows


async def test_trace_shows_tcp_and_websocket_messages(server: Server) -> None:
    trace = Trace(server, "--method", "OPTIONS", "--count", "4")
    try:
        tcp = StreamClient(server.sip_port("tcp"))
        tcp.send(options_request(server.sip_port("tcp"), "TCP", call_id="trace-tcp", local_port=tcp.port))
        assert tcp.recv() is not None
        tcp.close()
        port = server.ports[("http", "http")]
        async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/sip", protocols=("sip",)) as ws:
            await ws.send_str(options_request(port, "WS", call_id="trace-ws").decode())
            answer = await ws.receive(timeout=5)
            assert answer.data.startswith("SIP/2.0 200")
        rc, records, errors = await asyncio.to_thread(trace.wait)
    finally:
        trace.kill()
    assert rc == 0, errors
    seen = [(r["transport"], r["direction"], r["local_port"], call_id(r["message"])) for r in records]
    assert seen == [
        ("tcp", "in", server.sip_port("tcp"), "trace-tcp"), ("tcp", "out", server.sip_port("tcp"), "trace-tcp"),
        ("ws", "in", port, "trace-ws"), ("ws", "out", port, "trace-ws"),
    ]


def test_trace_filters_are_checked(server: Server) -> None:
    out = ctl(server, "trace", "--ip", "999.1.1.1", "--count", "1")
    assert out.returncode == 1
    assert "ip: '999.1.1.1' is not an IP address or network" in out.stderr


def test_trace_metrics_and_status(server: Server, collectors: tuple[UdpCollector, SngrepCollector]) -> None:
    _, sngrep = collectors
    sngrep.stop()  # a collector that is down shows as send errors (ICMP refused), nothing worse
    client = UdpClient()
    try:
        for n in range(3):
            client.send(options_request(server.sip_port("udp"), call_id=f"hep-down-{n}", local_port=client.port), server.sip_port("udp"))
            assert client.recv() is not None
    finally:
        client.close()
    status = json.loads(ctl(server, "status", "--json").stdout)
    hep = status["trace"]["hep"]
    assert hep["packets_sent"] >= 8 and hep["send_errors"] >= 1 and hep["capture_id"] == 4242
    text = ctl(server, "status").stdout
    assert re.search(r"^  hep:\n(    .*\n)*    packets_sent +\d+", text, re.M), text


# ---- two workers ---------------------------------------------------------------------------
USERS = [{"number": str(n), "password": f"pw-{n}"} for n in range(7000, 7008)]


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, UdpCollector]]:
    collector = UdpCollector()
    config = {"registrar": {"users": USERS, "algorithms": ["MD5"]}, "trace": {"hep": {"collectors": [f"127.0.0.1:{collector.port}"]}}}
    srv = Server(tmp_path_factory.mktemp("workers"), config, [*loopback_args(http=False, tls=False), "--workers", "2"]).start()
    yield srv, collector
    srv.kill()
    collector.close()


def test_two_workers_trace_includes_what_worker_1_handled(workers: tuple[Server, UdpCollector]) -> None:
    server, collector = workers
    user = next(u["number"] for u in USERS if owner_index(u['number'], 2) == 1)
    collector.drain(0.2)
    trace = Trace(server, "--user", user, "--count", "4")
    phone = Phone(server.sip_port("udp"), user, f"pw-{user}", algorithm="MD5")
    try:
        assert phone.register(60).status == 200
        rc, records, errors = trace.wait()
    finally:
        trace.kill()
        phone.close()
    assert rc == 0, errors
    # The 200 comes from worker 1, which owns the AOR, whoever read the REGISTER.
    ok = [r for r in records if r["message"].startswith("SIP/2.0 200 OK")]
    assert len(ok) == 1 and ok[0]["worker"] == 1 and ok[0]["direction"] == "out"
    assert len(records) == 4
    # Each worker exports HEP from its own socket: the 200 only worker 1 ever saw is there.
    payloads = [decode(data).payload for data, _ in collector.drain()]
    assert any(p.startswith(b"SIP/2.0 200 OK") and phone.call_id.encode() in p for p in payloads)
