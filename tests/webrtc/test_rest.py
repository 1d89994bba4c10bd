"""The webfon's REST API through a running server: login, logout, session, cookies,
security headers, the Origin check on /sip and /api/, login rate limiting with the
registrar's bans, and the short-lived SIP credentials of the web extension."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
import pytest
from harness import Server, loopback_args
from webfon_helpers import Api, WsPhone, base_config, tls_context

BUTTONS = [
    {"id": "BI_01", "label": "Retrollamada", "dial": "*43#"},
    {"id": "BI_02", "label": "Cancelar retrollamada", "dial": "*44#", "users": ["6140"]},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = base_config(smart_buttons=BUTTONS, allowed_origins=["https://portal.example.com"], local_nodo_id="web7")
    srv = Server(tmp_path_factory.mktemp("srv"), config, loopback_args(http=True, tls=False)).start()
    yield srv
    srv.kill()


def http_port(server: Server) -> int:
    return server.ports[("http", "https")]


async def test_the_page_and_the_api_carry_the_security_headers(server: Server) -> None:
    api = Api(http_port(server))
    status, headers, body = await api.call("GET", "/")
    assert status == 200 and "<html" in body
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert "Strict-Transport-Security" not in headers  # loopback: no HSTS pinning of localhost
    assert "Server" not in headers
    status, headers, _ = await api.call("GET", "/api/config")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    # HSTS once the page is reached by a name that is not loopback
    status, headers, _ = await api.call("GET", "/", headers={"Host": "pbx.example.com"})
    assert headers["Strict-Transport-Security"].startswith("max-age=")


async def test_static_files_stay_inside_web(server: Server) -> None:
    api = Api(http_port(server))
    for path in ("/web/../pyproject.toml", "/web/%2e%2e/pyproject.toml", "/web/.hidden", "/web/nothing.js"):
        status, _, _ = await api.call("GET", path)
        assert status == 404, path


async def test_config_gives_global_buttons_and_the_users_own_once_logged_in(server: Server) -> None:
    api = Api(http_port(server))
    status, _, config = await api.call("GET", "/api/config")
    assert status == 200
    assert config["node"] == "web7" and config["max_digits"] == 32
    assert config["smart_buttons"] == [{"id": "BI_01", "label": "Retrollamada", "dial": "*43#"}]
    await api.login("6140", "pw-6140")
    _, _, config = await api.call("GET", "/api/config")
    assert [b["id"] for b in config["smart_buttons"]] == ["BI_01", "BI_02"]
    await api.call("POST", "/api/logout")


async def test_login_gives_a_pool_extension_and_its_own_sip_password(server: Server) -> None:
    api = Api(http_port(server))
    status, headers, data = await api.call("POST", "/api/login", {"user": "6140", "password": "pw-6140"})
    assert status == 200, data
    cookie = headers["Set-Cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attribute.lower() in cookie.lower(), cookie
    assert data["user"] == "6140" and data["extension"] == "7000"
    sip = data["sip"]
    assert sip["username"] == "7000" and sip["uri"].startswith("sip:7000@")
    assert sip["password"] and sip["password"] != "pw-6140" and len(sip["password"]) >= 24
    assert sip["ws_url"] == f"wss://127.0.0.1:{http_port(server)}/sip"
    # the session survives a reload of the page, and gives the same credentials
    status, _, again = await api.call("GET", "/api/session")
    assert status == 200 and again["sip"]["password"] == sip["password"]
    # a second user gets the next member of the pool; a fixed web extension is its own
    other = Api(http_port(server))
    assert (await other.login("6143", "pw-6143"))["extension"] == "7001"
    third = Api(http_port(server))
    assert (await third.login("6141", "pw-6141"))["extension"] == "7141"
    # logout: the session and its cookie are gone
    status, headers, _ = await api.call("POST", "/api/logout")
    assert status == 200 and "max-age=0" in headers["Set-Cookie"].lower()
    api.cookie = None
    status, _, _ = await api.call("GET", "/api/session")
    assert status == 401
    await other.call("POST", "/api/logout")
    await third.call("POST", "/api/logout")


async def test_wrong_passwords_unknown_users_and_bad_bodies(server: Server) -> None:
    api = Api(http_port(server))
    for body in ({"user": "6140", "password": "nope"}, {"user": "9999", "password": "pw-6140"},
                 {"user": "7000", "password": "pw-6140"}):
        status, _, data = await api.call("POST", "/api/login", body)
        assert status == 401 and data == {"error": "wrong user or password"}
    status, _, _ = await api.call("POST", "/api/login", {"user": "6140"})
    assert status == 400
    async with aiohttp.ClientSession() as http, http.post(
        api.base + "/api/login", data="user=6140&password=pw-6140", ssl=tls_context(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": api.base},
    ) as resp:
        assert resp.status == 415


async def test_cross_origin_writes_and_websockets_are_refused(server: Server) -> None:
    port = http_port(server)
    evil = Api(port, origin="https://evil.example")
    status, _, data = await evil.call("POST", "/api/login", {"user": "6140", "password": "pw-6140"})
    assert status == 403 and "cross-origin" in data["error"]
    status, _, _ = await Api(port).call("POST", "/api/login", {"user": "6140", "password": "pw-6140"},
                                        headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    # /sip: a page of another origin cannot open it; the configured portal can; a SIP
    # phone (no Origin at all) still can
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"https://127.0.0.1:{port}/sip", protocols=("sip",), ssl=tls_context(),
                                  headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
        for headers in ({"Origin": "https://portal.example.com"}, {"Origin": f"https://127.0.0.1:{port}"}, {}):
            ws = await http.ws_connect(f"https://127.0.0.1:{port}/sip", protocols=("sip",), ssl=tls_context(),
                                       headers=headers)
            await ws.close()


async def test_the_sip_password_registers_the_web_extension_and_nothing_else(server: Server) -> None:
    port = http_port(server)
    api = Api(port)
    data = await api.login("6140", "pw-6140")
    ext, password = data["extension"], data["sip"]["password"]
    phone = WsPhone(port, cookie=api.cookie)
    await phone.connect()
    try:
        assert (await phone.register(ext, "pw-6140")).status == 401  # the user's password is not the extension's
        assert (await phone.register(ext, password, aor="6140")).status == 403  # only its own extension
        assert (await phone.register(ext, password, aor="5140")).status == 403
        ok = await phone.register(ext, password)
        assert ok.status == 200 and ok.get("Require") == "outbound"
        lines = ctl(server, "webfon")
        assert "7000" in lines and "6140" in lines and "open" in lines
        reply = json.loads(ctl(server, "webfon", "--json"))
        row = next(s for s in reply["sessions"] if s["user"] == "6140")
        assert row["registered"] == 1 and row["pool"] == "web" and row["id"].startswith("web7-")
        # logout: the lease and its bindings go; the password no longer works
        await api.call("POST", "/api/logout")
        assert await wait_for(lambda: not registrations(server, ext))
        assert (await phone.register(ext, password)).status == 401
    finally:
        await phone.close()


async def test_a_lost_websocket_ends_the_session_after_the_grace_period(server: Server) -> None:
    port = http_port(server)
    api = Api(port)
    data = await api.login("6143", "pw-6143")
    phone = WsPhone(port, cookie=api.cookie)
    await phone.connect()
    assert (await phone.register(data["extension"], data["sip"]["password"])).status == 200
    await phone.close()
    status, _, _ = await api.call("GET", "/api/session")
    assert status == 200  # within the grace period (1 s here) a reload finds its session
    assert await wait_for(lambda: "0 webfon session" in ctl(server, "webfon"), 5)
    status, _, _ = await api.call("GET", "/api/session")
    assert status == 401


def ctl(server: Server, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "vivait_sip", *server.ctl_args, *args],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return out.stdout


def registrations(server: Server, user: str) -> list[dict[str, object]]:
    reply = json.loads(ctl(server, "registrations", "--json"))
    return [b for b in reply["registrations"] if str(b["aor"]).startswith(f"sip:{user}@")]


async def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def banning_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = {**base_config(), "security": {"trusted_networks": [], "ban_failures": 3, "ban_window_s": 60, "ban_duration_s": 30}}
    srv = Server(tmp_path_factory.mktemp("ban"), config, loopback_args(http=True, tls=False)).start()
    yield srv
    srv.kill()


async def test_wrong_logins_ban_the_source_as_digest_failures_do(banning_server: Server) -> None:
    api = Api(http_port(banning_server))
    for _ in range(3):
        status, _, _ = await api.call("POST", "/api/login", {"user": "6140", "password": "guess"})
        assert status == 401
    status, headers, data = await api.call("POST", "/api/login", {"user": "6140", "password": "pw-6140"})
    assert status == 429 and headers["Retry-After"] == "30" and "try again later" in data["error"]
    bans = json.loads(subprocess.run([sys.executable, "-m", "vivait_sip", *banning_server.ctl_args, "bans", "--json"],
                                     capture_output=True, text=True, timeout=20).stdout)
    assert "127.0.0.1" in json.dumps(bans)
    output = "\n".join(banning_server.collect_output(0.5))
    assert "event=auth_ban source=127.0.0.1" in output
