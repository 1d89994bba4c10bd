"""WebRTC ↔ plain RTP through the built-in media backend, browser-free: a webfon stand-in
(aiortc's peer connection for ICE, DTLS-SRTP and codecs as a browser has them; SIP over
WSS to `/sip` with the leased web extension) calls a baresip phone and is called by it.
Audio both ways is checked by tone (what each side decodes), the relay forwarded G.711
without decoding, and a browser that vanishes ends its call with the cause in the CDR."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiortc_ua import WebrtcUa, loopback_only
from audio import analyse
from harness import Server, loopback_args, port_block
from peer_env import ctl, wait_cdrs, wait_no_calls
from peer_phones import Baresip
from webfon_helpers import Api, base_config

pytestmark = pytest.mark.timeout(120)

MEDIA_PORTS = port_block(100)
WEB_HZ, PHONE_HZ = 1000.0, 400.0


def server_config(workers: int = 1, **media: Any) -> dict[str, Any]:
    config = base_config()
    config["sip"] = {"workers": workers}
    config["registrar"]["algorithms"] = ["MD5"]  # baresip does MD5 only
    config["media"] = {"backend": "builtin", "workers": 1, "port_min": MEDIA_PORTS[0], "port_max": MEDIA_PORTS[1],
                       **media}
    return config


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "srv").mkdir()
    srv = Server(tmp_path / "srv", server_config(), loopback_args(http=True, tls=False)).start()
    yield srv
    srv.stop()


@pytest.fixture
async def web(server: Server) -> AsyncIterator[WebrtcUa]:
    loopback_only()
    port = server.ports[("http", "https")]
    api = Api(port)
    data = await api.login("6140", "pw-6140")
    ua = WebrtcUa(port, api.cookie, data["extension"], data["sip"]["password"])
    await ua.start()
    yield ua
    await ua.stop()


def phone(tmp_path: Path, server: Server, number: str = "6142", hz: float = PHONE_HZ) -> Baresip:
    port = server.sip_port("udp")
    account = f"<sip:{number}@127.0.0.1:{port}>;auth_user={number};auth_pass=pw-{number};regint=600"
    bare = Baresip(tmp_path, f"phone{number}", hz, account=account, auto_answer=True)
    bare.register()
    return bare


def media_status(server: Server) -> dict[str, Any]:
    return dict(json.loads(ctl(server, "media", "--json").stdout))


async def talk(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def test_a_web_extension_calls_a_phone_with_audio_both_ways(server: Server, web: WebrtcUa, tmp_path: Path) -> None:
    bare = phone(tmp_path, server)
    try:
        call = await web.call("6142", tone_hz=WEB_HZ)
        await asyncio.to_thread(bare.wait_event, "CALL_ESTABLISHED")
        await talk(3.0)
        assert call.heard.frames > 100, call.heard.frames
        assert call.heard.tone_share(PHONE_HZ) > 0.5, call.heard.tone_share(PHONE_HZ)
        status = media_status(server)
        await call.hangup()
        await asyncio.to_thread(bare.wait_event, "CALL_CLOSED")
        await asyncio.to_thread(wait_no_calls, server)
        heard = analyse(bare.recordings()[-1])
        assert heard.has_tone(WEB_HZ), heard
        # the phone was offered plain RTP at the relay, with no WebRTC attribute
        invite = bare.sip_received("INVITE")[0]
        assert "RTP/AVP" in invite and "fingerprint" not in invite and "ice-ufrag" not in invite
        assert any(f"m=audio {port} " in invite for port in range(MEDIA_PORTS[0], MEDIA_PORTS[1] + 1)), invite
        [record] = await asyncio.to_thread(wait_cdrs, server, 1)
        assert record["disposition"] == "answered"
        assert "anchored (webrtc)" in json.dumps(record), record
        assert status["backend"] == "builtin", status
    finally:
        bare.close()


async def test_a_phone_calls_the_user_and_the_web_extension_answers(server: Server, web: WebrtcUa, tmp_path: Path) -> None:
    bare = phone(tmp_path, server)
    try:
        bare.dial("6140")
        call = await web.answer(tone_hz=WEB_HZ)
        await asyncio.to_thread(bare.wait_event, "CALL_ESTABLISHED")
        await talk(3.0)
        assert call.heard.tone_share(PHONE_HZ) > 0.5, call.heard.tone_share(PHONE_HZ)
        bare.hangup()
        await asyncio.wait_for(call.ended.wait(), 10)
        heard = analyse(bare.recordings()[-1])
        assert heard.has_tone(WEB_HZ), heard
    finally:
        bare.close()


async def test_a_web_extension_that_closes_its_peer_connection_ends_the_call(
        server: Server, web: WebrtcUa, tmp_path: Path) -> None:
    """The page goes without a BYE (its peer connection closed: DTLS close_notify): the
    call ends on the SIP side at once, the phone gets BYE, the CDR says why."""
    bare = phone(tmp_path, server)
    try:
        call = await web.call("6142")
        await asyncio.to_thread(bare.wait_event, "CALL_ESTABLISHED")
        await talk(1.0)
        started = time.monotonic()
        await call.pc.close()
        await asyncio.to_thread(bare.wait_event, "CALL_CLOSED", 10.0)
        assert time.monotonic() - started < 10.0
        [record] = await asyncio.to_thread(wait_cdrs, server, 1)
        assert "WebRTC: DTLS closed by the browser" in json.dumps(record), record
    finally:
        bare.close()


async def test_an_opus_only_client_is_transcoded_to_the_g711_phone(server: Server, web: WebrtcUa, tmp_path: Path) -> None:
    """No codec in common (the client offers Opus alone, baresip has G.711 alone): the
    phone is offered PCMU/PCMA as well, answers G.711, and the relay transcodes both ways."""
    bare = phone(tmp_path, server)
    try:
        call = await web.call("6142", tone_hz=WEB_HZ, codecs=("opus",))
        await asyncio.to_thread(bare.wait_event, "CALL_ESTABLISHED")
        await talk(3.0)
        calls = json.loads(ctl(server, "calls", "--json").stdout)["calls"]
        assert call.heard.frames > 100, call.heard.frames
        assert call.heard.tone_share(PHONE_HZ) > 0.5, call.heard.tone_share(PHONE_HZ)
        await call.hangup()
        await asyncio.to_thread(bare.wait_event, "CALL_CLOSED")
        heard = analyse(bare.recordings()[-1])
        assert heard.has_tone(WEB_HZ), heard
        invite = bare.sip_received("INVITE")[0]
        assert "opus" in invite and "PCMU/8000" in invite, invite
        answer = call.pc.remoteDescription.sdp
        assert "opus/48000" in answer and "PCMU" not in answer, answer  # the client got its Opus
        assert calls, calls
    finally:
        bare.close()


def go_silent(call: Any) -> None:
    """The client vanishes without a word (a killed browser): every datagram it would send
    from now on is dropped (test-only reach into aiortc/aioice)."""
    for transceiver in call.pc.getTransceivers():
        connection = transceiver.sender.transport.transport._connection
        for protocol in connection._protocols:
            protocol.transport.sendto = lambda *args, **kwargs: None


async def test_a_web_extension_that_goes_silent_ends_the_call_by_ice_consent(
        server: Server, web: WebrtcUa, tmp_path: Path) -> None:
    bare = phone(tmp_path, server)
    try:
        call = await web.call("6142")
        await asyncio.to_thread(bare.wait_event, "CALL_ESTABLISHED")
        await talk(1.0)
        started = time.monotonic()
        go_silent(call)
        await asyncio.to_thread(bare.wait_event, "CALL_CLOSED", 12.0)
        took = time.monotonic() - started
        assert took < 10.0, took
        [record] = await asyncio.to_thread(wait_cdrs, server, 1)
        assert record["hangup_cause"].startswith("WebRTC: ICE consent lost"), record
        assert record["hangup_side"] == "system", record
    finally:
        bare.close()


async def test_two_sip_workers_bridge_a_web_call(tmp_path: Path) -> None:
    """With two SIP workers the media workers start with the server (only SIP worker 0 can
    spawn them), so a WebRTC call owned by either worker is bridged."""
    loopback_only()
    (tmp_path / "srv").mkdir()
    server = Server(tmp_path / "srv", server_config(workers=2), loopback_args(http=True, tls=False)).start()
    try:
        port = server.ports[("http", "https")]
        api = Api(port)
        data = await api.login("6140", "pw-6140")
        ua = WebrtcUa(port, api.cookie, data["extension"], data["sip"]["password"])
        await ua.start()
        bare = phone(tmp_path, server)
        try:
            for worker in (0, 1):  # a call owned by each SIP worker (crc32 of its Call-ID)
                call_id = next(c for c in (secrets.token_hex(10) for _ in range(100)) if zlib.crc32(c.encode()) % 2 == worker)
                call = await ua.call("6142", tone_hz=WEB_HZ, call_id=call_id)
                await asyncio.to_thread(bare.wait_event, "CALL_ESTABLISHED")
                await talk(1.5)
                assert call.heard.tone_share(PHONE_HZ) > 0.5, call.heard.tone_share(PHONE_HZ)
                await call.hangup()
                await asyncio.to_thread(bare.wait_event, "CALL_CLOSED")
        finally:
            bare.close()
            await ua.stop()
    finally:
        server.stop()
