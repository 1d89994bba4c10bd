"""The running server: listeners, OPTIONS over every transport, answering rules, limits."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from harness import (
    Server,
    StreamClient,
    UdpClient,
    free_port,
    header,
    loopback_args,
    options_request,
    status_code,
    status_line,
)

HERE = Path(__file__).resolve().parent
SIPP_OPTIONS = HERE.parent / "peers" / "sipp" / "options.xml"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("srv")
    config = {
        "domains": ["pbx.test"],
        "sip": {
            "limits": {
                "max_body_bytes": 4096,
                "max_uri_bytes": 256,
                "max_headers": 40,
                "max_line_bytes": 1024,
                "max_message_bytes": 8192,
            }
        },
    }
    srv = Server(tmp, config, loopback_args()).start()
    yield srv
    srv.kill()


def request(method: str, uri: str, *, call_id: str, port: int, extra: str = "", body: bytes = b"", via_port: int = 5999) -> bytes:
    head = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{via_port};branch=z9hG4bK{call_id};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=t{call_id}\r\n"
        f"To: <sip:{uri.split(':', 1)[1]}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def udp_exchange(server: Server, data: bytes, timeout: float = 2.0) -> bytes | None:
    client = UdpClient()
    try:
        client.send(data, server.sip_port("udp"))
        return client.recv_final(timeout)
    finally:
        client.close()


def test_startup_prints_one_line_per_listener(server: Server) -> None:
    listening = [line for line in server.output if line.startswith("listening ")]
    kinds = {(line.split()[1], line.split()[2]) for line in listening}
    assert {("sip", "udp"), ("sip", "tcp"), ("sip", "tls"), ("sip", "wss"), ("http", "https"), ("admin", "http")} <= kinds


def test_options_over_udp_has_capabilities(server: Server) -> None:
    resp = udp_exchange(server, options_request(server.sip_port("udp"), call_id="u1"))
    assert status_code(resp) == 200
    assert resp is not None
    assert "OPTIONS" in (header(resp, "Allow") or "")
    assert header(resp, "Accept") == "application/sdp"
    assert "outbound" in (header(resp, "Supported") or "")
    via = header(resp, "Via") or ""
    assert "received=127.0.0.1" in via and "rport=" in via


def test_options_over_tcp_and_tls_reuse_the_connection(server: Server) -> None:
    for transport, tls in (("tcp", False), ("tls", True)):
        client = StreamClient(server.sip_port(transport), tls=tls)
        try:
            for n in range(3):
                client.send(options_request(server.sip_port(transport), transport.upper(), call_id=f"{transport}{n}", local_port=client.port))
                resp = client.recv()
                assert status_code(resp) == 200, transport
        finally:
            client.close()


def test_response_without_rport_goes_to_via_port(server: Server) -> None:
    receiver = UdpClient()
    sender = UdpClient()
    try:
        data = request("OPTIONS", f"sip:127.0.0.1:{server.sip_port('udp')}", call_id="norport", port=0, via_port=receiver.port)
        data = data.replace(b";rport", b"")
        sender.send(data, server.sip_port("udp"))
        assert status_code(receiver.recv_final()) == 200
        assert sender.recv(0.3) is None
    finally:
        receiver.close()
        sender.close()


def run_sipp_options(port: int, transport: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sipp", f"127.0.0.1:{port}", "-sf", str(SIPP_OPTIONS), "-t", transport, "-m", "30", "-r", "100",
         "-i", "127.0.0.1", "-p", str(free_port()), "-nostdin", "-timeout", "20s", "-timeout_error"],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_options(server: Server, transport: str, tmp_path: Path) -> None:
    proc = run_sipp_options(server.sip_port({"u1": "udp", "t1": "tcp"}[transport]), transport, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Successful call" in proc.stdout


def test_sipp_options_over_tls(server: Server, tmp_path: Path) -> None:
    """Debian's SIPp is built without OpenSSL, so socat carries its TCP stream over real TLS."""
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
        before = tls_connections(server)
        proc = run_sipp_options(bridge_port, "t1", tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert tls_connections(server) > before
    finally:
        bridge.terminate()
        bridge.wait(5)


def tls_connections(server: Server) -> int:
    raw = subprocess.run(
        [sys.executable, "-m", "vivait_sip", *server.ctl_args, "status", "--json"],
        capture_output=True, text=True, timeout=30,
    )
    return int(json.loads(raw.stdout)["counters"].get("connections_tls", 0))


async def test_options_over_wss(server: Server) -> None:
    port = server.ports[("sip", "wss")]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"https://127.0.0.1:{port}/sip", protocols=("sip",), ssl=ctx) as ws:
            assert ws.protocol == "sip"
            msg = (
                f"OPTIONS sip:127.0.0.1:{port};transport=ws SIP/2.0\r\n"
                "Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKwss1\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:probe@pbx.test>;tag=w1\r\nTo: <sip:pbx.test>\r\n"
                "Call-ID: wss-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            )
            await ws.send_str(msg)
            reply = await ws.receive(timeout=5)
            assert reply.type == aiohttp.WSMsgType.TEXT
            assert reply.data.startswith("SIP/2.0 200 ")
        # Without the "sip" subprotocol the upgrade is refused (RFC 7118 §4.1).
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(f"https://127.0.0.1:{port}/sip", ssl=ctx)


def test_unknown_method_gets_501_with_allow(server: Server) -> None:
    resp = udp_exchange(server, request("FROBNICATE", "sip:pbx.test", call_id="m501", port=0))
    assert status_code(resp) == 501
    assert resp is not None and "OPTIONS" in (header(resp, "Allow") or "")


def test_foreign_domain_is_not_relayed(server: Server) -> None:
    resp = udp_exchange(server, request("MESSAGE", "sip:bob@elsewhere.example", call_id="relay1", port=0))
    assert status_code(resp) == 403


def test_unknown_require_gets_420(server: Server) -> None:
    resp = udp_exchange(server, request("OPTIONS", "sip:pbx.test", call_id="r420", port=0, extra="Require: nosuchext\r\n"))
    assert status_code(resp) == 420
    assert resp is not None and header(resp, "Unsupported") == "nosuchext"


def test_max_forwards_zero_gets_483(server: Server) -> None:
    data = request("MESSAGE", "sip:6140@pbx.test", call_id="mf0", port=0).replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    assert status_code(udp_exchange(server, data)) == 483


def test_retransmission_is_absorbed(server: Server) -> None:
    client = UdpClient()
    try:
        data = request("FROBNICATE", "sip:pbx.test", call_id="retx1", port=0)
        client.send(data, server.sip_port("udp"))
        first = client.recv_final()
        client.send(data, server.sip_port("udp"))
        second = client.recv_final()
        assert first == second  # the transaction re-sent its response, byte for byte (same To tag)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (request("OPTIONS", "sip:" + "a" * 300 + "@pbx.test", call_id="l414", port=0), 414),
        (request("MESSAGE", "sip:pbx.test", call_id="l413", port=0, extra="Content-Type: text/plain\r\n", body=b"x" * 5000), 413),
        (request("OPTIONS", "sip:pbx.test", call_id="l400h", port=0, extra="".join(f"X-H{i}: v\r\n" for i in range(50))), 400),
        (request("OPTIONS", "sip:pbx.test", call_id="l400l", port=0, extra="X-Long: " + "v" * 2000 + "\r\n"), 400),
        (request("OPTIONS", "sip:pbx.test", call_id="l513", port=0, extra="X-Big: " + "v" * 900 + "\r\n" + "".join(f"X-B{i}: " + "v" * 900 + "\r\n" for i in range(9))), 513),
    ],
    ids=["uri-414", "body-413", "headers-400", "line-400", "size-513"],
)
def test_limits_answer_with_their_status(server: Server, data: bytes, status: int) -> None:
    resp = udp_exchange(server, data)
    assert status_code(resp) == status, status_line(resp)
    # and the server keeps serving
    assert status_code(udp_exchange(server, options_request(server.sip_port("udp"), call_id=f"after{status}-{len(data)}"))) == 200


def test_tcp_keepalive_ping_gets_pong(server: Server) -> None:
    client = StreamClient(server.sip_port("tcp"))
    try:
        client.send(b"\r\n\r\n")
        assert client.recv_raw(2.0) == b"\r\n"
    finally:
        client.close()


def test_tcp_framing_error_closes_connection(server: Server) -> None:
    client = StreamClient(server.sip_port("tcp"))
    try:
        client.send(b"OPTIONS sip:pbx.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKx\r\nContent-Length: abc\r\n\r\n")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not client.closed():
            time.sleep(0.05)
        assert client.closed()
    finally:
        client.close()


def test_ctl_status(server: Server) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vivait_sip", *server.ctl_args, "status"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "uptime:" in proc.stdout
    assert f"sip udp 127.0.0.1:{server.sip_port('udp')}" in proc.stdout
    assert "requests_in" in proc.stdout
    raw = subprocess.run(
        [sys.executable, "-m", "vivait_sip", *server.ctl_args, "status", "--json"],
        capture_output=True, text=True, timeout=30,
    )
    data = json.loads(raw.stdout)
    assert data["counters"]["requests_in"] >= 1


async def test_metrics_endpoint(server: Server) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"http://{server.admin}/metrics", headers=server.admin_headers()) as resp:
        text = await resp.text()
    assert resp.status == 200
    assert "# TYPE vivait_sip_events_total counter" in text
    assert 'vivait_sip_events_total{event="requests_in"}' in text
