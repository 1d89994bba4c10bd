"""The user-agent layer and the adapter against real peers: SIPp's built-in UAC calls
through a test feature that originates the outbound leg (tests/ua/forwarder.py) to SIPp's
built-in UAS, over UDP, TCP and TLS, with one and two workers.  A refused TCP connect to
the callee fails the call with 503 at once (RFC 3263 failover has nowhere else to go)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server, UdpClient, free_port, loopback_args, status_code

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).resolve().parent
CALLS = 20


def forwarding_server(tmp: Path, target: str, workers: int) -> Server:
    return Server(
        tmp,
        args=[*loopback_args(http=False), "--workers", str(workers)],
        env={"VIVAIT_SIP_FEATURES": "forwarder:Forwarder", "PYTHONPATH": str(HERE), "FORWARD_TO": target},
    ).start()


def sipp(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["sipp", *args, "-nostdin", "-trace_err", "-timeout", "40s", "-timeout_error"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.fixture(params=[1, 2], ids=["1worker", "2workers"])
def workers(request: pytest.FixtureRequest) -> int:
    assert shutil.which("sipp"), "sipp is required (Debian package sip-tester)"
    return int(request.param)


@pytest.fixture
def uas(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    proc = sipp(["-sn", "uas", "-i", "127.0.0.1", "-p", str(port), "-m", str(CALLS)], tmp_path)
    time.sleep(0.3)
    yield port, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


def run_uac(port: int, transport: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    local = free_port()
    proc = sipp(
        [f"127.0.0.1:{port}", "-sn", "uac", "-s", "uas", "-t", transport, "-i", "127.0.0.1", "-p", str(local),
         "-m", str(CALLS), "-r", "10", "-d", "200"],
        cwd,
    )
    out, _ = proc.communicate(timeout=90)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def assert_all_calls_passed(uac: subprocess.CompletedProcess[str], uas: subprocess.Popen[str], cwd: Path) -> None:
    errors = "".join(p.read_text() for p in cwd.glob("*_errors.log"))
    assert uac.returncode == 0, f"sipp uac rc {uac.returncode}\n{errors[-3000:]}\n{uac.stdout[-3000:]}"
    uas_out, _ = uas.communicate(timeout=30)
    assert uas.returncode == 0, f"sipp uas rc {uas.returncode}\n{uas_out[-3000:]}"
    successful = [line for line in uac.stdout.splitlines() if line.strip().startswith("Successful call")]
    assert successful and successful[-1].split()[-1] == str(CALLS), successful


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_calls_are_forwarded_between_sipp_uac_and_uas(
    tmp_path: Path, workers: int, uas: tuple[int, subprocess.Popen[str]], transport: str
) -> None:
    uas_port, uas_proc = uas
    server = forwarding_server(tmp_path / "srv", f"udp:127.0.0.1:{uas_port}", workers)
    try:
        inbound = server.sip_port({"u1": "udp", "t1": "tcp"}[transport])
        assert_all_calls_passed(run_uac(inbound, transport, tmp_path), uas_proc, tmp_path)
    finally:
        server.stop()


def test_calls_arrive_over_tls(tmp_path: Path, workers: int, uas: tuple[int, subprocess.Popen[str]]) -> None:
    """Debian's SIPp is built without OpenSSL: socat carries its TCP stream over real TLS."""
    uas_port, uas_proc = uas
    server = forwarding_server(tmp_path / "srv", f"udp:127.0.0.1:{uas_port}", workers)
    bridge_port = free_port()
    bridge = subprocess.Popen(
        ["socat", f"TCP-LISTEN:{bridge_port},bind=127.0.0.1,reuseaddr,fork",
         f"OPENSSL:127.0.0.1:{server.sip_port('tls')},verify=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", bridge_port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        assert_all_calls_passed(run_uac(bridge_port, "t1", tmp_path), uas_proc, tmp_path)
    finally:
        bridge.terminate()
        bridge.wait(5)
        server.stop()


def test_a_refused_tcp_connect_fails_the_call_with_503_at_once(tmp_path: Path, workers: int) -> None:
    closed = free_port()  # nothing listens there: the connect is refused
    server = forwarding_server(tmp_path / "srv", f"tcp:127.0.0.1:{closed}", workers)
    client = UdpClient()
    try:
        for n in range(4):  # several Call-IDs: with two workers some belong to worker 1
            call_id = f"refused-{n}"
            invite = (
                f"INVITE sip:uas@127.0.0.1:{server.sip_port('udp')} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{client.port};branch=z9hG4bK{call_id};rport\r\n"
                f"From: <sip:caller@127.0.0.1>;tag={call_id}\r\nTo: <sip:uas@127.0.0.1>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:{client.port}>\r\n"
                "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            started = time.monotonic()
            client.send(invite, server.sip_port("udp"))
            reply = client.recv_final(5.0)
            assert reply is not None and status_code(reply) == 503, reply
            assert time.monotonic() - started < 1.0  # not after Timer B's 32 s
    finally:
        client.close()
        server.stop()
