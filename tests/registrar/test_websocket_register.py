"""A browser-like UA registers over WSS with RFC 5626 outbound; closing the socket ends the flow."""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import Iterator

import aiohttp
import pytest
from harness import Server, loopback_args
from reg_helpers import parse_reply, registrations

from vivait_sip.registrar.digest import client_response, parse_challenge

INSTANCE = '"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = {"registrar": {"users": [{"number": "6150", "password": "pw-6150"}]}}
    srv = Server(tmp_path_factory.mktemp("srv"), config, loopback_args(http=True, tls=False)).start()
    yield srv
    srv.kill()


def register(call_id: str, cseq: int, auth: str | None = None) -> str:
    lines = [
        "REGISTER sip:127.0.0.1 SIP/2.0",
        f"Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK{secrets.token_hex(6)}",
        "Max-Forwards: 70",
        "From: <sip:6150@127.0.0.1>;tag=wsreg",
        "To: <sip:6150@127.0.0.1>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:k3l9@df7jal23ls0d.invalid;transport=ws;ob>;+sip.instance={INSTANCE};reg-id=1;expires=600",
        "Supported: outbound, path",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines)


async def test_wss_register_binds_the_flow_and_closing_removes_it(server: Server) -> None:
    port = server.ports[("sip", "wss")]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    call_id = secrets.token_hex(8)
    url = f"https://127.0.0.1:{port}/sip"
    async with aiohttp.ClientSession() as session, session.ws_connect(url, protocols=("sip",), ssl=ctx) as ws:
        await ws.send_str(register(call_id, 1))
        challenge_reply = parse_reply((await ws.receive(timeout=5)).data.encode())
        assert challenge_reply.status == 401
        challenge = parse_challenge(challenge_reply.get_all("WWW-Authenticate")[0])
        auth = client_response(challenge, "REGISTER", "sip:127.0.0.1", "6150", "pw-6150")
        await ws.send_str(register(call_id, 2, auth))
        ok = parse_reply((await ws.receive(timeout=5)).data.encode())
        assert ok.status == 200
        assert ok.get("Require") == "outbound"
        bindings = registrations(server, "6150")
        assert len(bindings) == 1
        assert bindings[0]["transport"] == "wss" and bindings[0]["reg_id"] == 1
    # The browser went away: its flow, and with it the binding, is gone (RFC 5626 §5.4).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and registrations(server, "6150"):
        time.sleep(0.1)
    assert registrations(server, "6150") == []
