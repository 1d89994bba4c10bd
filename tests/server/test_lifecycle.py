"""Start-up, shutdown, reload, bad configs, connection limits."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness import (
    Server,
    StreamClient,
    UdpClient,
    free_port,
    header,
    loopback_args,
    options_request,
    status_code,
)

from vivait_sip.registrar.digest import client_response, parse_challenge

CLI = [sys.executable, "-m", "vivait_sip"]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


BAD_CONFIG = {
    "listen": ["udp:127.0.0.1:5060", "smtp:127.0.0.1:25"],
    "sip": {"timers": {"t1_ms": -1}, "limits": {"max_headerz": 3}},
    "mdflow": {"flows": [{"flujo": "A", "en_paso": 0, "tasa_sal_seg": 0, "dnis_max": 1, "dnis_umbral_masivo": 1, "to_desborda_seg": 5}]},
    "colour": "blue",
}


def test_check_config_lists_every_error_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(BAD_CONFIG))
    proc = run_cli("check-config", str(path))
    assert proc.returncode == 2
    err = proc.stderr
    assert f"{path}: listen[1]: must be TRANSPORT:HOST:PORT" in err and "smtp" in err
    assert f"{path}: sip.timers.t1_ms: " in err
    assert f"{path}: sip.limits.max_headerz: unknown key" in err
    assert f"{path}: mdflow.flows[0].tasa_sal_seg: " in err
    assert f"{path}: colour: unknown key" in err
    assert err.endswith(f"{path}: 5 errors\n")


def test_check_config_accepts_a_good_file_and_reports_bad_json(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"_comment": "demo", "domains": ["pbx.test"]}))
    assert run_cli("check-config", str(good)).returncode == 0
    broken = tmp_path / "broken.json"
    broken.write_text('{"domains": [}')
    proc = run_cli("check-config", str(broken))
    assert proc.returncode == 2
    assert "invalid JSON at line 1" in proc.stderr


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "config.json"
    proc = run_cli("check-config", str(example))
    assert proc.returncode == 0, proc.stderr


def test_serve_with_bad_config_exits_2_without_listening(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(BAD_CONFIG))
    proc = run_cli("serve", "--config", str(path), "--data-dir", str(tmp_path / "d"))
    assert proc.returncode == 2
    assert "listening" not in proc.stdout
    assert f"config error: {path}: sip.timers.t1_ms" in proc.stderr
    assert f"{path}: 5 errors; nothing started" in proc.stderr


def test_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        proc = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--listen", f"udp:127.0.0.1:{port}",
                       "--no-http", "--admin", f"127.0.0.1:{free_port()}")
    finally:
        holder.close()
    assert proc.returncode == 1
    assert f"cannot listen on udp:127.0.0.1:{port}: address already in use" in proc.stderr


def test_embedded_default_makes_a_self_signed_certificate(tmp_path: Path) -> None:
    srv = Server(tmp_path, None, loopback_args()).start()
    try:
        assert (srv.data_dir / "certs" / "server.crt").exists()
        key = srv.data_dir / "certs" / "server.key"
        assert key.stat().st_mode & 0o077 == 0
    finally:
        assert srv.stop() == 0


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    srv = Server(tmp_path, {"log": {"format": "json"}}, loopback_args(tls=False, http=False)).start()
    client = UdpClient()
    try:
        client.send(options_request(srv.sip_port("udp"), call_id="pre-term"), srv.sip_port("udp"))
        assert status_code(client.recv_final()) == 200
    finally:
        client.close()
    assert srv.stop(signal.SIGTERM) == 0
    logs = [json.loads(line) for line in srv.output if line.startswith("{")]
    assert any(entry.get("event") == "stopped" for entry in logs)


def test_sighup_reloads_config(tmp_path: Path) -> None:
    flow = {"flujo": "Cen_TrunkInternos", "en_paso": 0, "tasa_sal_seg": 2, "dnis_max": 1, "dnis_umbral_masivo": 8, "to_desborda_seg": 5}
    srv = Server(tmp_path, {"mdflow": {"flows": [flow]}}, loopback_args(tls=False, http=False)).start()
    try:
        before = run_cli(*srv.ctl_args, "mdflow", "show", "config", "--json")
        assert json.loads(before.stdout)["flows"][0]["tasa_sal_seg"] == 2
        flow["tasa_sal_seg"] = 7
        srv.config_path.write_text(json.dumps({"mdflow": {"flows": [flow]}}))
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        value = None
        while time.monotonic() < deadline:
            after = run_cli(*srv.ctl_args, "mdflow", "show", "config", "--json")
            value = json.loads(after.stdout)["flows"][0]["tasa_sal_seg"]
            if value == 7:
                break
            time.sleep(0.1)
        assert value == 7
        # a broken file on reload is reported and the running config stays
        srv.config_path.write_text('{"mdflow": {"tick_ms": -5}}')
        proc = run_cli(*srv.ctl_args, "reload")
        assert proc.returncode == 1
        assert "mdflow.tick_ms" in proc.stderr
    finally:
        assert srv.stop() == 0


def test_connection_cap_per_ip_and_idle_timeout(tmp_path: Path) -> None:
    config = {"sip": {"limits": {"max_connections_per_ip": 2, "tcp_idle_timeout_s": 1.0}}}
    srv = Server(tmp_path, config, loopback_args(tls=False, http=False)).start()
    clients: list[StreamClient] = []
    try:
        port = srv.sip_port("tcp")
        clients = [StreamClient(port) for _ in range(3)]
        time.sleep(0.3)
        closed = [c.closed() for c in clients]
        assert closed == [False, False, True]
        # idle connections are closed after the timeout
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not clients[0].closed():
            time.sleep(0.1)
        assert clients[0].closed()
        fresh = StreamClient(port)
        fresh.send(options_request(port, "TCP", call_id="after-idle", local_port=fresh.port))
        assert status_code(fresh.recv()) == 200
        fresh.close()
    finally:
        for c in clients:
            c.close()
        srv.stop()


def test_serve_help_documents_overrides() -> None:
    proc = run_cli("serve", "--help")
    assert proc.returncode == 0
    for flag in ("--config", "--listen", "--http", "--admin", "--data-dir", "--log-level", "--log-format"):
        assert flag in proc.stdout
    assert "udp:127.0.0.1:5070" in proc.stdout


def test_flow_import_output_is_a_valid_config(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "MDflow.conf"
    proc = run_cli("flow", "import", str(example))
    assert proc.returncode == 0, proc.stderr
    converted = json.loads(proc.stdout)
    names = [flow["flujo"] for flow in converted["mdflow"]["flows"]]
    assert names == ["Cen_Inicio_SIP", "Cen_TrunkInternos"]
    path = tmp_path / "flows.json"
    path.write_text(proc.stdout)
    assert run_cli("check-config", str(path)).returncode == 0
    bad = tmp_path / "bad.conf"
    bad.write_text("[general]\ntick_ms=100\nestad_interv_seg=10\n[flujo_1]\nflujo=X\nen_paso=2\n")
    proc = run_cli("flow", "import", str(bad))
    assert proc.returncode == 2
    assert "[flujo_1]" in proc.stderr and "en_paso" in proc.stderr


def test_full_transaction_table_answers_503_with_retry_after(tmp_path: Path) -> None:
    config = {"sip": {"limits": {"max_transactions": 100, "retry_after_s": 7}}}
    srv = Server(tmp_path, config, loopback_args(tls=False, http=False)).start()
    client = UdpClient()
    try:
        port = srv.sip_port("udp")
        # Completed non-INVITE transactions only wait out Timer J and do not count: a
        # burst of them never looks like an overload.
        for n in range(150):
            client.send(options_request(port, call_id=f"done{n}").replace(b"OPTIONS", b"FROBNICATE"), port)
            assert status_code(client.recv_final()) == 501
        # An INVITE without credentials is challenged statelessly (no transaction); one
        # answering our nonce with a wrong password gets its 407 from an INVITE server
        # transaction, which after the ACK lives on (Timer I).  127.0.0.1 is trusted
        # (never banned), so it can fail 130 times.
        first = options_request(port, call_id="nonce").replace(b"OPTIONS", b"INVITE")
        client.send(first, port)
        challenge = parse_challenge(header(client.recv_final() or b"", "Proxy-Authenticate") or "")
        statuses = []
        for n in range(130):
            auth = client_response(challenge, "INVITE", f"sip:127.0.0.1:{port}", "6140", "wrong", nc=n + 1)
            invite = options_request(port, call_id=f"fill{n}").replace(b"OPTIONS", b"INVITE")
            invite = invite.replace(b"Content-Length: 0", f"Proxy-Authorization: {auth}\r\nContent-Length: 0".encode())
            client.send(invite, port)
            reply = client.recv_final()
            assert reply is not None
            statuses.append(status_code(reply))
            if statuses[-1] == 503:
                assert b"Retry-After: 7\r\n" in reply
            to = next(line for line in reply.split(b"\r\n") if line.startswith(b"To:"))
            ack = invite.replace(b"INVITE sip:", b"ACK sip:").replace(b"CSeq: 1 INVITE", b"CSeq: 1 ACK")
            client.send(ack.replace(f"To: <sip:127.0.0.1:{port}>".encode(), to), port)
        assert statuses[:100] == [407] * 100
        assert set(statuses[100:]) == {503}
        # stateless OPTIONS keep working while the table is full
        client.send(options_request(port, call_id="still-there"), port)
        assert status_code(client.recv_final()) == 200
    finally:
        client.close()
        srv.stop()
