"""Certificates named in the config, and SIP over plain WebSocket behind a TLS proxy."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from harness import Server, StreamClient, options_request, status_code

from vivait_sip.certs import ensure_self_signed


def test_tls_uses_the_certificate_from_the_config(tmp_path: Path) -> None:
    cert, key = ensure_self_signed(tmp_path / "mycerts", ["sip.example.test"])
    config = {"tls": {"cert_file": str(cert), "key_file": str(key)}}
    srv = Server(tmp_path, config, ["--listen", "tls:127.0.0.1:0", "--no-http", "--admin", "127.0.0.1:0"]).start()
    try:
        port = srv.sip_port("tls")
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False  # the certificate names sip.example.test and localhost
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            presented = tls.getpeercert(binary_form=True)
        assert presented is not None
        names = x509.load_der_x509_certificate(presented).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
        assert "sip.example.test" in names
        assert not (srv.data_dir / "certs").exists()  # no self-signed one was made
        client = StreamClient(port, tls=True)
        try:
            client.send(options_request(port, "TLS", call_id="tls-cfg", local_port=client.port))
            assert status_code(client.recv()) == 200
        finally:
            client.close()
    finally:
        assert srv.stop() == 0


def test_unreadable_certificate_is_a_clear_start_error(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate")
    config = {"tls": {"cert_file": str(tmp_path / "bad.pem"), "key_file": str(tmp_path / "bad.pem")}}
    srv = Server(tmp_path, config, ["--listen", "tls:127.0.0.1:0", "--no-http", "--admin", "127.0.0.1:0"])
    with pytest.raises(RuntimeError, match="cannot load TLS certificate"):
        srv.start()


async def test_plain_websocket_when_http_tls_is_off(tmp_path: Path) -> None:
    srv = Server(tmp_path, {"http": {"tls": False}}, ["--listen", "udp:127.0.0.1:0", "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"]).start()
    try:
        port = srv.ports[("sip", "ws")]
        async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/sip", protocols=("sip",)) as ws:
            await ws.send_str(
                f"OPTIONS sip:127.0.0.1:{port};transport=ws SIP/2.0\r\n"
                "Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKws1\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=w1\r\nTo: <sip:127.0.0.1>\r\n"
                "Call-ID: ws-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            )
            reply = await ws.receive(timeout=5)
            assert reply.type == aiohttp.WSMsgType.TEXT
            assert reply.data.startswith("SIP/2.0 200 ")
            assert "received=127.0.0.1" in reply.data
    finally:
        assert srv.stop() == 0
