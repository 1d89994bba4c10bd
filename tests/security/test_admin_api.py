"""The admin API against a running server: a token for every call, no cross-site or
DNS-rebinding requests, JSON bodies only, no Server banner (issue 9, items 4 and 9)."""

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
from typing import Any

import pytest
from harness import Server, loopback_args

CLI = [sys.executable, "-m", "vivait_sip"]
FLOWS = {"mdflow": {"tick_ms": 50, "estad_interv_seg": 5, "flows": [{"flujo": "Live", "en_paso": 0, "tasa_sal_seg": 5, "dnis_max": 2, "dnis_umbral_masivo": 3, "to_desborda_seg": 1}]}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("admin"), FLOWS, loopback_args(tls=False)).start()
    yield srv
    assert srv.stop() == 0


def call(
    url: str,
    method: str = "GET",
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], Any]:
    """Status, headers and decoded body (JSON when it is JSON)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as resp:
            status, head, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, head, raw = exc.code, dict(exc.headers), exc.read()
    try:
        return status, head, json.loads(raw)
    except ValueError:
        return status, head, raw.decode()


def insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def raw_http(port: int, request: bytes, tls: bool = False) -> bytes:
    """One request as written (a browser's Host and Origin), the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        sock = insecure().wrap_socket(plain) if tls else plain
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def flows(server: Server) -> list[str]:
    _, _, body = call(f"http://{server.admin}/api/mdflow/config?format=json", headers=server.admin_headers())
    return [f["flujo"] for f in body["flows"]]


def test_token_file_is_made_private_and_a_call_without_it_is_401(server: Server) -> None:
    token_file = server.data_dir / "admin-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert len(server.admin_token) >= 40
    status, head, body = call(f"http://{server.admin}/api/status")
    assert status == 401
    assert head["Content-Type"].startswith("application/json")
    assert "admin token required" in body["error"] and "Authorization: Bearer" in body["error"]
    assert head["WWW-Authenticate"].startswith("Bearer")
    status, _, body = call(f"http://{server.admin}/api/status", headers={"Authorization": "Bearer " + "x" * 43})
    assert (status, body["error"]) == (401, "wrong admin token")
    status, _, body = call(f"http://{server.admin}/api/status", headers=server.admin_headers())
    assert status == 200 and body["version"]
    for path in ("/metrics", "/api/registrations", "/api/users", "/api/bans", "/api/mdflow/stats"):
        assert call(f"http://{server.admin}{path}")[0] == 401, path


def test_cross_site_text_plain_post_cannot_replace_flows(server: Server) -> None:
    """What a page on another site can make a browser send: a `text/plain` POST (no
    preflight), with its Origin and without the token."""
    port = int(server.admin.rsplit(":", 1)[1])
    evil = json.dumps({"flows": [{"flujo": "Evil", "en_paso": 0, "tasa_sal_seg": 1, "dnis_max": 1, "dnis_umbral_masivo": 2, "to_desborda_seg": 1}]}).encode()
    for path in ("/api/mdflow/reload", "/api/reload", "/api/users/reload"):
        answer = raw_http(
            port,
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: https://evil.example\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(evil)}\r\nConnection: close\r\n\r\n".encode() + evil,
        )
        assert answer.startswith(b"HTTP/1.1 403 "), answer
        assert b"cross-origin request refused" in answer
    # Even with the token, a foreign Origin or a text/plain body is refused.
    status, _, _ = call(
        f"http://{server.admin}/api/mdflow/reload", "POST", body=evil,
        headers={**server.admin_headers(), "Origin": "https://evil.example", "Content-Type": "application/json"},
    )
    assert status == 403
    status, _, body = call(
        f"http://{server.admin}/api/mdflow/reload", "POST", body=evil,
        headers={**server.admin_headers(), "Content-Type": "text/plain"},
    )
    assert status == 415 and "application/json" in body["error"]
    status, _, _ = call(
        f"http://{server.admin}/api/mdflow/reload", "POST", body=evil,
        headers={**server.admin_headers(), "Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"},
    )
    assert status == 403
    # Another port of the same host is another origin (a local dev server, another service).
    status, _, _ = call(
        f"http://{server.admin}/api/mdflow/reload", "POST", body=evil,
        headers={**server.admin_headers(), "Origin": "http://127.0.0.1:3000", "Content-Type": "application/json"},
    )
    assert status == 403
    status, _, _ = call(
        f"http://{server.admin}/api/mdflow/config", headers={**server.admin_headers(), "Origin": f"http://{server.admin}"},
    )
    assert status == 200  # its own origin
    assert flows(server) == ["Live"]
    # The same call as ctl makes it (token, JSON) works.
    status, _, body = call(
        f"http://{server.admin}/api/mdflow/reload", "POST", body=evil,
        headers={**server.admin_headers(), "Content-Type": "application/json"},
    )
    assert status == 200 and body["flows"] == ["Evil"]
    status, _, _ = call(f"http://{server.admin}/api/mdflow/reload", "POST", headers=server.admin_headers())
    assert status == 200 and flows(server) == ["Live"]  # back to the config file's flows


def test_dns_rebinding_host_is_refused(server: Server) -> None:
    """A rebinding page reaches 127.0.0.1 under its own name: its Host gives it away."""
    port = int(server.admin.rsplit(":", 1)[1])
    for host in (f"evil.example:{port}", "127.0.0.1.nip.io", ""):
        answer = raw_http(
            port,
            f"GET /api/registrations HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {server.admin_token}\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        assert answer.startswith(b"HTTP/1.1 403 "), (host, answer)
        assert b"DNS rebinding" in answer
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST"):
        answer = raw_http(
            port,
            f"GET /api/registrations HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {server.admin_token}\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        assert answer.startswith(b"HTTP/1.1 200 "), (host, answer)


def test_ctl_reads_the_token_from_the_data_directory(server: Server, tmp_path: Path) -> None:
    ok = subprocess.run([*CLI, *server.ctl_args, "status", "--json"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["version"]
    # Another directory (no token there): the server's 401, and what to do about it.
    lost = subprocess.run(
        [*CLI, "ctl", "--admin", server.admin, "--data-dir", str(tmp_path), "status"],
        capture_output=True, text=True, timeout=30,
    )
    assert lost.returncode == 1
    assert "HTTP 401" in lost.stderr and "--data-dir DIR" in lost.stderr and "--admin-token-file" in lost.stderr
    # --admin-token-file, for a token kept elsewhere.
    copy = tmp_path / "token"
    copy.write_text(server.admin_token + "\n")
    ok = subprocess.run(
        [*CLI, "ctl", "--admin", server.admin, "--admin-token-file", str(copy), "mdflow", "show", "config"],
        capture_output=True, text=True, timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(
        [*CLI, "ctl", "--admin", server.admin, "--admin-token-file", str(tmp_path / "nope"), "status"],
        capture_output=True, text=True, timeout=30,
    )
    assert missing.returncode == 1 and "cannot read the admin token file" in missing.stderr


def test_no_server_banner_on_admin_and_https(server: Server) -> None:
    _, head, _ = call(f"http://{server.admin}/api/status", headers=server.admin_headers())
    assert "Server" not in head
    _, head, _ = call(f"http://{server.admin}/nothing-here", headers=server.admin_headers())
    assert "Server" not in head
    http_port = server.ports[("http", "https")]
    _, head, body = call(f"https://127.0.0.1:{http_port}/", context=insecure())
    # The webfon (VIVAit Call Web) or, with webrtc off, the plain vivait-sip index.
    assert "Server" not in head and "vivait" in body.lower()
    # What aiohttp answers before any route sees the request says nothing either.
    answer = raw_http(http_port, b"GARBAGE\r\n\r\n", tls=True)
    assert answer.startswith(b"HTTP/1.0 400 ")
    server_lines = [line for line in answer.split(b"\r\n\r\n")[0].split(b"\r\n") if line.lower().startswith(b"server:")]
    assert all(line.split(b":", 1)[1].strip() == b"" for line in server_lines)


def test_metrics_public_and_admin_over_tls_with_a_loud_warning(tmp_path: Path) -> None:
    """`admin.metrics_public` opens /metrics only; a wildcard admin address warns and,
    with `admin.tls`, speaks HTTPS with the server certificate; ctl follows with https://."""
    config = {"admin": {"metrics_public": True, "tls": True, "token_file": str(tmp_path / "secrets" / "admin.token")}}
    args = ["--listen", "udp:127.0.0.1:0", "--no-http", "--admin", "0.0.0.0:0"]
    srv = Server(tmp_path, config, args).start()
    try:
        port = srv.ports[("admin", "https")]
        assert any(line.startswith("WARNING: the admin API listens on 0.0.0.0:") for line in srv.output)
        token_file = tmp_path / "secrets" / "admin.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert not (srv.data_dir / "admin-token").exists()
        context = ssl.create_default_context(cafile=str(srv.data_dir / "certs" / "server.crt"))
        context.check_hostname = False
        status, _, text = call(f"https://127.0.0.1:{port}/metrics", context=context)
        assert status == 200 and "vivait_uptime_seconds" in text
        assert call(f"https://127.0.0.1:{port}/api/status", context=context)[0] == 401
        ctl = subprocess.run(
            [*CLI, "ctl", "--admin", f"https://127.0.0.1:{port}", "--data-dir", str(srv.data_dir),
             "--admin-token-file", str(token_file), "status", "--json"],
            capture_output=True, text=True, timeout=30,
        )
        assert ctl.returncode == 0, ctl.stderr
        # Bound to the wildcard: any IP literal is a Host of ours, names are not.
        status, _, _ = call(
            f"https://127.0.0.1:{port}/api/status", context=context,
            headers={"Authorization": f"Bearer {token_file.read_text().strip()}", "Host": "10.1.2.3"},
        )
        assert status == 200
        status, _, _ = call(
            f"https://127.0.0.1:{port}/api/status", context=context,
            headers={"Authorization": f"Bearer {token_file.read_text().strip()}", "Host": "pbx.evil.example"},
        )
        assert status == 403
    finally:
        assert srv.stop() == 0
    log = "\n".join(srv.output)
    assert "event=admin_exposed" in log
