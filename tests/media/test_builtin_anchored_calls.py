"""Calls anchored in the built-in media backend (and, last, in real rtpengine), between
real phones, with one and two SIP workers: the media workers are started by SIP worker 0 and reached by every SIP worker over
its own socketpairs (RTP never crosses a SIP process); both phones see the server's media
address in the SDP, each hears the other's tone through the relay, and the session is gone
when the call ends."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from audio import analyse
from harness import Server, port_block
from peer_env import active_calls, base_config, ctl, start_server, wait_cdrs, wait_no_calls, workers
from peer_phones import Baresip
from rtpengine_proc import Rtpengine

__all__ = ["workers"]

pytestmark = pytest.mark.timeout(120)

CALLER_HZ, CALLEE_HZ = 1000.0, 400.0
TALK_S = 3.0
MEDIA_PORTS = port_block(100)


@pytest.fixture
def server(tmp_path: Path, workers: int) -> Iterator[Server]:
    config = base_config(workers)
    config["media"] = {
        "backend": "builtin", "default": "anchor", "workers": 2,
        "port_min": MEDIA_PORTS[0], "port_max": MEDIA_PORTS[1], "rtp_timeout_s": 0,
    }
    srv = start_server(tmp_path / "srv", config)
    yield srv
    srv.stop()


def media_ports_in(sdp_lines: list[str]) -> list[int]:
    return [int(line.split()[1]) for line in sdp_lines if line.startswith("m=audio ")]



def check_media_stats(server: Server, record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The call's record gains both parties' media statistics (added once the session is
    deleted), TALK_S of 20 ms packets from each phone; they are returned."""
    deadline = time.monotonic() + 5
    while "media_stats" not in record["extra"] and time.monotonic() < deadline:
        time.sleep(0.2)
        [record] = wait_cdrs(server, 1)
    stats = record["extra"]["media_stats"]
    assert set(stats) == {"caller", "callee"}, stats
    for party in stats.values():
        assert party["packets"] > 25 * TALK_S and party["bytes"] > 160 * 25 * TALK_S, stats
    return stats

def connect_two_phones(server: Server, tmp_path: Path, phones: list[Baresip]) -> tuple[Baresip, Baresip]:
    """alice (6140, sending CALLER_HZ) calls bob (6141, CALLEE_HZ, auto-answer): both
    established.  Each phone goes into `phones` as soon as it runs (the caller closes them)."""
    port = server.sip_port("udp")
    for name, number, hz in (("alice", "6140", CALLER_HZ), ("bob", "6141", CALLEE_HZ)):
        account = f"<sip:{number}@127.0.0.1:{port}>;auth_user={number};auth_pass=pw-{number};regint=600"
        phone = Baresip(tmp_path, name, hz, account=account, auto_answer=True)
        phones.append(phone)
        phone.register()
    alice, bob = phones
    alice.dial("6141")
    alice.wait_event("CALL_ESTABLISHED")
    bob.wait_event("CALL_ESTABLISHED")
    return alice, bob


def test_an_anchored_call_relays_audio_both_ways_through_the_media_workers(server: Server, tmp_path: Path) -> None:
    phones: list[Baresip] = []
    try:
        alice, bob = connect_two_phones(server, tmp_path, phones)
        [call] = active_calls(server)
        assert call["state"] == "answered"
        status = json.loads(ctl(server, "media", "--json").stdout)
        assert status["backend"] == "builtin" and status["sessions"] >= 1
        time.sleep(TALK_S)
        bob.hangup()
        alice.wait_event("CALL_CLOSED")
        wait_no_calls(server)

        # Each phone was given the relay's ports, not the other phone's.
        invite_to_bob = bob.sip_received("INVITE")[0]
        ok_to_alice = next(m for m in alice.sip_received("SIP/2.0 200") if "CSeq: 1 INVITE" in m or "m=audio" in m)
        for message in (invite_to_bob, ok_to_alice):
            ports = media_ports_in(message.replace("\r\n", "\n").split("\n"))
            assert ports and all(MEDIA_PORTS[0] <= p <= MEDIA_PORTS[1] for p in ports), message
            assert "c=IN IP4 127.0.0.1" in message

        heard_by_bob = analyse(bob.recordings()[-1])
        heard_by_alice = analyse(alice.recordings()[-1])
        assert heard_by_bob.has_tone(CALLER_HZ), heard_by_bob
        assert heard_by_alice.has_tone(CALLEE_HZ), heard_by_alice
        [record] = wait_cdrs(server, 1)
        assert record["disposition"] == "answered"
        assert record["extra"]["media"] == "anchored (default)"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status = json.loads(ctl(server, "media", "--json").stdout)
            if status["sessions"] == 0:
                break
            time.sleep(0.2)
        assert status["sessions"] == 0  # deleted at the BYE
        # the session's statistics, known at its deletion, were added to the call's record
        stats = check_media_stats(server, record)
        assert all(str(party["address"]).startswith("127.0.0.1:") for party in stats.values()), stats
    finally:
        for phone in phones:
            phone.close()


@pytest.fixture
def rtpengine_server(tmp_path: Path, workers: int) -> Iterator[tuple[Server, Rtpengine]]:
    daemon = asyncio.run(Rtpengine().start())
    config = base_config(workers)
    config["media"] = {"backend": "rtpengine", "default": "anchor", "rtpengine": {"daemons": [daemon.address]}}
    srv = start_server(tmp_path / "srv", config)
    yield srv, daemon
    srv.stop()
    daemon.stop()


def test_the_same_call_through_rtpengine(rtpengine_server: tuple[Server, Rtpengine], tmp_path: Path) -> None:
    """Issue 11: two baresip phones through real rtpengine (userspace) as the backend; the
    CDR gets each party's statistics (rtpengine 10.5's delete has none: the backend asks
    `query` just before it)."""
    server, daemon = rtpengine_server
    phones: list[Baresip] = []
    try:
        alice, bob = connect_two_phones(server, tmp_path, phones)
        time.sleep(TALK_S)
        bob.hangup()
        alice.wait_event("CALL_CLOSED")
        wait_no_calls(server)
        invite_to_bob = bob.sip_received("INVITE")[0]
        ok_to_alice = next(m for m in alice.sip_received("SIP/2.0 200") if "m=audio" in m)
        for message in (invite_to_bob, ok_to_alice):  # each phone was given rtpengine's ports
            ports = media_ports_in(message.replace("\r\n", "\n").split("\n"))
            assert ports and all(daemon.port_min <= p <= daemon.port_max for p in ports), message
        heard_by_bob = analyse(bob.recordings()[-1])
        heard_by_alice = analyse(alice.recordings()[-1])
        assert heard_by_bob.has_tone(CALLER_HZ), heard_by_bob
        assert heard_by_alice.has_tone(CALLEE_HZ), heard_by_alice
        [record] = wait_cdrs(server, 1)
        assert record["disposition"] == "answered" and record["extra"]["media"] == "anchored (default)"
        stats = check_media_stats(server, record)  # what rtpengine received
        for party in stats.values():
            assert party["errors"] == 0 and str(party["address"]).startswith("127.0.0.1:"), stats
    finally:
        for phone in phones:
            phone.close()
