"""Operator experience (issue 13, items 4, 6, 8) against the embedded demo as it ships:
honest `ctl` commands, the size limits of the defaults over UDP and TCP, the admin and
HTTPS roots, the data directory line."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server, UdpClient, loopback_args, options_request, status_code, status_line

pytestmark = pytest.mark.timeout(90)

CLI = [sys.executable, "-m", "vivait_sip"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The embedded demo: no config file, every limit at its default."""
    srv = Server(tmp_path_factory.mktemp("demo"), None, loopback_args()).start()
    yield srv
    srv.stop()


def ctl(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*server.ctl_args, *args)


# ---- start-up ---------------------------------------------------------------------------


def test_start_prints_the_data_directory_before_ready(demo: Server) -> None:
    lines = [line for line in demo.output if not line.startswith("ts=")]
    assert f"data dir {demo.data_dir}" in lines
    assert lines.index(f"data dir {demo.data_dir}") < lines.index("ready")


# ---- honest commands --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reload"], "error: nothing to reload: the server runs without a config file (the embedded demo); "
         "start it with --config FILE to reload that file (HTTP 409)"),
        (["mdflow", "reload"], "error: nothing to reload: the server runs without a config file (the embedded "
         "demo); start it with --config FILE (HTTP 409)"),
        (["unregister", "bogus"], "error: no binding found for bogus; nothing removed"),
        (["registrations", "6140"], "no binding for 6140"),
        (["unban", "192.0.2.1"], "error: 192.0.2.1 was not banned; nothing done"),
        # The API's own error sentence, not its JSON.
        (["registrations", "sip:%%"], "error: aor is not a SIP URI (HTTP 400)"),
    ],
    ids=["reload", "mdflow-reload", "unregister", "registrations", "unban", "api-error"],
)
def test_commands_that_do_nothing_exit_1_with_a_sentence(demo: Server, args: list[str], message: str) -> None:
    proc = ctl(demo, *args)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr.strip() == message
    assert "{" not in proc.stdout + proc.stderr


def test_listing_nothing_is_not_an_error(demo: Server) -> None:
    proc = ctl(demo, "registrations")
    assert proc.returncode == 0 and proc.stdout.strip() == "no bindings: no phone is registered"
    proc = ctl(demo, "bans")
    assert proc.returncode == 0 and "0 banned source(s)" in proc.stdout


def test_a_command_without_its_subcommand_lists_them() -> None:
    for args, expected in ((["ctl"], "status"), (["ctl", "mdflow"], "reload"), (["user"], "import"), ([], "check-config")):
        proc = run_cli(*args)
        assert proc.returncode == 2, args
        assert expected in proc.stderr and "a command is needed" in proc.stderr, args
        assert "required" not in proc.stderr, args


# ---- the size limits of the defaults --------------------------------------------------------


def message(*, filler: int = 0, body: int = 0) -> bytes:
    """A MESSAGE with a `filler`-byte header and a `body`-byte body."""
    head = (
        "MESSAGE sip:127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 127.0.0.1:9;rport;branch=z9hG4bKsize\r\n"
        "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: size-1\r\n"
        "CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: text/plain\r\n"
    )
    if filler:
        head += "X-Filler: " + "f" * filler + "\r\n"
    return (head + f"Content-Length: {body}\r\n\r\n").encode() + b"x" * body


CASES = [
    pytest.param(message(body=20_000), "413 Request Entity Too Large", id="body-20000-413"),
    pytest.param(message(filler=40_000), "513 Message Too Large", id="message-40000-513"),
]


@pytest.mark.parametrize(("data", "answer"), CASES)
def test_default_limits_are_answered_over_udp(demo: Server, data: bytes, answer: str) -> None:
    """Body limit (16 KiB) < message limit (32 KiB) < the largest datagram: both answers
    can happen over UDP with the defaults."""
    assert len(data) < 65_507
    client = UdpClient()
    try:
        client.send(data, demo.sip_port("udp"))
        assert status_line(client.recv_final()) == f"SIP/2.0 {answer}"
        client.send(options_request(demo.sip_port("udp"), call_id="after-udp-limit"), demo.sip_port("udp"))
        assert status_code(client.recv_final()) == 200
    finally:
        client.close()


@pytest.mark.parametrize(("data", "answer"), CASES)
def test_default_limits_are_answered_over_tcp_before_the_close(demo: Server, data: bytes, answer: str) -> None:
    with socket.create_connection(("127.0.0.1", demo.sip_port("tcp")), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert received.split(b"\r\n", 1)[0].decode() == f"SIP/2.0 {answer}"


# ---- what is there ------------------------------------------------------------------------


def test_the_admin_root_lists_every_route_with_the_token(demo: Server) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://{demo.admin}/", timeout=10)
    assert refused.value.code == 401
    request = urllib.request.Request(f"http://{demo.admin}/", headers=demo.admin_headers())
    with urllib.request.urlopen(request, timeout=10) as answer:
        index = json.loads(answer.read())
    assert index["service"] == "vivait-sip admin API"
    for route in ("GET /api/status", "POST /api/reload", "GET /metrics", "GET /api/registrations", "GET /api/trace",
                  "GET /api/mdflow/stats", "POST /api/mdflow/reload"):
        assert route in index["routes"], route
    assert all(not route.startswith("HEAD ") for route in index["routes"])


def test_the_https_root_serves_the_webfon(demo: Server) -> None:
    """The root is the webfon's page (issue 12); the plain index of what is served comes
    back when `webrtc.enabled` is false (tests/webrtc cover the page itself)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    port = demo.ports[("http", "https")]
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/", timeout=10, context=context) as answer:
        text = answer.read().decode()
        assert answer.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert "<title>VIVAit Call Web</title>" in text and "/web/app/main.js" in text


def test_without_the_webfon_the_https_root_says_what_is_served(tmp_path: Path) -> None:
    srv = Server(tmp_path, {"webrtc": {"enabled": False}}, loopback_args(tls=False)).start()
    try:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        port = srv.ports[("http", "https")]
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/", timeout=10, context=context) as answer:
            text = answer.read().decode()
        assert text.splitlines()[0].startswith("vivait-sip ")
        assert "GET /sip" in text and len(text.splitlines()) < 20
    finally:
        srv.kill()


# ---- a config file: reload says what it did -------------------------------------------------


def test_reload_with_a_config_file_says_which(tmp_path: Path) -> None:
    flow = {"flujo": "A", "en_paso": 0, "tasa_sal_seg": 2, "dnis_max": 1, "dnis_umbral_masivo": 8, "to_desborda_seg": 5}
    srv = Server(tmp_path, {"mdflow": {"flows": [flow]}}, loopback_args(tls=False, http=False)).start()
    try:
        proc = ctl(srv, "reload")
        assert proc.returncode == 0 and proc.stdout.strip() == f"config reloaded from {srv.config_path}"
        proc = ctl(srv, "mdflow", "reload")
        assert proc.returncode == 0 and proc.stdout.strip() == "mdflow reloaded: nothing changed (1 flow)"
        added = {**flow, "flujo": "B"}
        srv.config_path.write_text(json.dumps({"mdflow": {"flows": [{**flow, "tasa_sal_seg": 4}, added]}}))
        proc = ctl(srv, "mdflow", "reload")
        assert proc.stdout.splitlines() == ["mdflow reloaded: 2 flows now", "  flow B added", "  flow A: tasa_sal_seg 2 -> 4"]
        srv.config_path.write_text(json.dumps({"mdflow": {"flows": [{**flow, "tasa_sal_seg": 0}]}}))
        for args in (["reload"], ["mdflow", "reload"]):
            proc = ctl(srv, *args)
            assert proc.returncode == 1
            first, *details = proc.stderr.splitlines()
            assert first.startswith(f"error: {srv.config_path}") and "1 error" in first and first.endswith("(HTTP 400)"), first
            assert details == ["  mdflow.flows[0].tasa_sal_seg: Input should be greater than 0"]
    finally:
        assert srv.stop() == 0
