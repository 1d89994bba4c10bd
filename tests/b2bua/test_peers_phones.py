"""Calls between real phones through the B2BUA, with one and two workers.

baresip 1.0 phones register as users (digest MD5 over UDP) and call each other by
number.  Each phone sends a tone from a WAV (1000 Hz from the caller, 400 Hz from the
callee) and records what it receives; an FFT of each recording must find the other's
tone: the SDP crossed the bridge both ways intact (RTP flows phone to phone).  Then the
CDR is read back with `ctl cdr` and checked field by field.

* the callee hangs up: answered, hangup_side callee, billable > 0;
* the caller cancels while the callee rings: 487 to the caller, CANCEL to the callee,
  disposition cancelled;
* the callee rejects (baresip answers 486 Busy Here): 486 relayed, disposition busy;
* one user on two phones (two contacts of the hard extension): both ring, one answers,
  the other gets CANCEL with `Reason: SIP;cause=200;text="Call completed elsewhere"`;
* the callee holds and resumes (re-INVITEs a=sendonly, then a=sendrecv, relayed): the
  call shows on_hold meanwhile, and the audio flows again after the resume.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from audio import analyse
from harness import Server
from peer_env import (
    active_calls,
    base_config,
    check_times,
    header,
    start_server,
    wait_cdrs,
    wait_for,
    wait_no_calls,
    workers,
)
from peer_phones import Baresip

__all__ = ["workers"]  # the fixture, parametrised 1 and 2 workers

pytestmark = pytest.mark.timeout(90)

CALLER_HZ = 1000.0
CALLEE_HZ = 400.0
TALK_S = 3.0


@pytest.fixture
def server(tmp_path: Path, workers: int) -> Iterator[Server]:
    srv = start_server(tmp_path / "srv", base_config(workers))
    yield srv
    srv.stop()


class Phones:
    """baresip phones registered to the server; all closed at the end."""

    def __init__(self, tmp: Path, server: Server) -> None:
        self.tmp = tmp
        self.port = server.sip_port("udp")
        self.all: list[Baresip] = []

    def phone(self, name: str, login: str, user: str, tone_hz: float, *, auto_answer: bool = True) -> Baresip:
        """A phone registering `login` (a user number or extension) with user `user`'s password."""
        account = f"<sip:{login}@127.0.0.1:{self.port}>;auth_user={login};auth_pass=pw-{user};regint=600"
        phone = Baresip(self.tmp, name, tone_hz, account=account, auto_answer=auto_answer)
        self.all.append(phone)
        phone.register()
        return phone

    def close(self) -> None:
        for phone in self.all:
            phone.close()


@pytest.fixture
def phones(tmp_path: Path, server: Server) -> Iterator[Phones]:
    made = Phones(tmp_path, server)
    yield made
    made.close()


def _leg_ids(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(leg["direction"], leg["call_id"]) for leg in record["legs"]]


def test_audio_both_ways_and_the_callee_hangs_up(server: Server, phones: Phones) -> None:
    alice = phones.phone("alice", "6140", "6140", CALLER_HZ)
    bob = phones.phone("bob", "6141", "6141", CALLEE_HZ)
    alice.dial("6141")
    out = alice.wait_event("CALL_ESTABLISHED")
    into = bob.wait_event("CALL_ESTABLISHED")
    [call] = active_calls(server)
    assert call["state"] == "answered" and call["caller"] == "6140" and call["callee"] == "6141"
    time.sleep(TALK_S)
    bob.hangup()
    bob.wait_event("CALL_CLOSED")
    alice.wait_event("CALL_CLOSED")
    assert alice.sip_received("BYE"), "the callee's BYE crossed to the caller"
    wait_no_calls(server)

    heard_by_bob = analyse(bob.recordings()[-1])
    heard_by_alice = analyse(alice.recordings()[-1])
    assert heard_by_bob.has_tone(CALLER_HZ), heard_by_bob
    assert heard_by_alice.has_tone(CALLEE_HZ), heard_by_alice
    assert heard_by_bob.seconds > TALK_S - 1 and heard_by_alice.seconds > TALK_S - 1

    [record] = wait_cdrs(server, 1)
    assert record["caller"] == "6140" and record["user"] == "6140"
    assert record["callee"] == "6141" and record["callee_user"] == "6141"
    assert record["did"] is None and record["trunk"] is None
    assert record["rule"] == "local" and record["flow"] is None and record["flow_outcome"] is None
    assert record["linked_to"] is None
    assert record["disposition"] == "answered"
    assert record["hangup_side"] == "callee" and record["hangup_cause"].startswith("bye")
    check_times(record, answered=True)
    assert TALK_S - 0.5 < record["billable_s"] < TALK_S + 3
    assert _leg_ids(record) == [("in", out["id"]), ("out", into["id"])]
    inbound, outbound = record["legs"]
    assert inbound["status"] == 200 and inbound["target"] == "6141" and inbound["peer"].startswith("sip:6140@")
    assert outbound["status"] == 200 and outbound["target"] == "6141" and outbound["trunk"] is None
    assert outbound["contact"].startswith("sip:6141") and f":{bob.sip_port}" in outbound["contact"]
    assert outbound["answered_at"] == pytest.approx(record["answered_at"], abs=0.05)


def test_the_caller_cancels_while_it_rings(server: Server, phones: Phones) -> None:
    alice = phones.phone("alice", "6140", "6140", CALLER_HZ)
    bob = phones.phone("bob", "6141", "6141", CALLEE_HZ, auto_answer=False)
    alice.dial("6141")
    bob.wait_event("CALL_INCOMING")
    alice.wait_event("CALL_RINGING")  # the callee's 180, relayed
    [call] = active_calls(server)
    assert call["state"] == "ringing" and call["legs"][0]["state"] == "early"
    time.sleep(0.5)
    alice.hangup()  # CANCEL
    alice.wait_event("CALL_CLOSED")
    bob.wait_event("CALL_CLOSED")
    assert [m.splitlines()[0] for m in alice.wait_sip_received("SIP/2.0 487")] == ["SIP/2.0 487 Request Terminated"]
    [cancel] = bob.sip_received("CANCEL")
    assert header(cancel, "Reason") == 'SIP;cause=487;text="Caller cancelled"'
    wait_no_calls(server)

    [record] = wait_cdrs(server, 1)
    assert record["disposition"] == "cancelled"
    assert record["hangup_side"] == "caller" and record["hangup_cause"] == "cancelled"
    assert record["caller"] == "6140" and record["callee_user"] == "6141"
    check_times(record, answered=False)
    inbound, outbound = record["legs"]
    assert inbound["status"] == 487 and outbound["status"] == 487 and outbound["answered_at"] is None


def test_a_busy_callee_is_relayed(server: Server, phones: Phones) -> None:
    alice = phones.phone("alice", "6140", "6140", CALLER_HZ)
    bob = phones.phone("bob", "6141", "6141", CALLEE_HZ, auto_answer=False)
    alice.dial("6141")
    bob.wait_event("CALL_INCOMING")
    alice.wait_event("CALL_RINGING")
    bob.hangup()  # baresip rejects an incoming call with 486
    alice.wait_event("CALL_CLOSED")
    [busy] = alice.sip_received("SIP/2.0 486")
    assert busy.startswith("SIP/2.0 486 ")
    wait_no_calls(server)

    [record] = wait_cdrs(server, 1)
    assert record["disposition"] == "busy"
    assert record["hangup_side"] == "callee"  # the callee said no
    check_times(record, answered=False)
    inbound, outbound = record["legs"]
    assert inbound["status"] == 486 and outbound["status"] == 486


def test_one_user_two_phones_both_ring_one_answers(server: Server, phones: Phones) -> None:
    alice = phones.phone("alice", "6140", "6140", CALLER_HZ)
    desk = phones.phone("desk", "5141", "6141", CALLEE_HZ, auto_answer=False)  # 6141's hard extension...
    cordless = phones.phone("cordless", "5141", "6141", CALLEE_HZ, auto_answer=False)  # ...on a second phone
    alice.dial("6141")  # the user's number: its active devices ring
    desk.wait_event("CALL_INCOMING")
    cordless.wait_event("CALL_INCOMING")
    alice.wait_event("CALL_RINGING")
    [call] = active_calls(server)
    assert sorted(leg["state"] for leg in call["legs"]) == ["early", "early"]
    cordless.accept()
    cordless.wait_event("CALL_ESTABLISHED")
    alice.wait_event("CALL_ESTABLISHED")
    desk.wait_event("CALL_CLOSED")  # stops ringing
    [cancel] = desk.sip_received("CANCEL")
    assert header(cancel, "Reason") == 'SIP;cause=200;text="Call completed elsewhere"'
    assert not cordless.sip_received("CANCEL")
    time.sleep(TALK_S)
    alice.hangup()
    cordless.wait_event("CALL_CLOSED")
    wait_no_calls(server)
    heard = analyse(cordless.recordings()[-1])
    assert heard.has_tone(CALLER_HZ), heard
    assert analyse(alice.recordings()[-1]).has_tone(CALLEE_HZ)

    [record] = wait_cdrs(server, 1)
    assert record["disposition"] == "answered" and record["hangup_side"] == "caller"
    assert record["callee"] == "6141" and record["callee_user"] == "6141"
    check_times(record, answered=True)
    inbound, *outs = record["legs"]
    assert inbound["status"] == 200 and len(outs) == 2
    by_port = {str(leg["contact"]).rsplit(":", 1)[1]: leg for leg in outs}
    answered, cancelled = by_port[str(cordless.sip_port)], by_port[str(desk.sip_port)]
    assert answered["status"] == 200 and answered["answered_at"] is not None
    assert cancelled["status"] == 487 and cancelled["answered_at"] is None
    assert cancelled["cause"] == 'SIP;cause=200;text="Call completed elsewhere"'
    assert {leg["target"] for leg in outs} == {"5141"}


def _state(server: Server) -> str:
    calls = active_calls(server)
    return str(calls[0]["state"]) if calls else "gone"


def test_the_callee_holds_and_resumes(server: Server, phones: Phones) -> None:
    alice = phones.phone("alice", "6140", "6140", CALLER_HZ)
    bob = phones.phone("bob", "6141", "6141", CALLEE_HZ)
    alice.dial("6141")
    alice.wait_event("CALL_ESTABLISHED")
    bob.wait_event("CALL_ESTABLISHED")
    time.sleep(1.5)
    assert bob.command("hold").get("ok")
    wait_for(lambda: _state(server) == "on_hold", 5, 0.2, "the call never showed on hold")
    [hold] = [m for m in alice.sip_received("INVITE") if "a=sendonly" in m]  # bob's re-INVITE, relayed
    time.sleep(1.0)
    assert bob.command("resume").get("ok")
    wait_for(lambda: _state(server) == "answered", 5, 0.2, "the call never came off hold")
    assert any("a=sendrecv" in m for m in alice.sip_received("INVITE")[1:])
    time.sleep(2.5)
    alice.hangup()
    bob.wait_event("CALL_CLOSED")
    wait_no_calls(server)
    recording = bob.recordings()[-1]
    total = analyse(recording).seconds
    after_resume = analyse(recording, skip_s=max(0.0, total - 1.5))
    assert after_resume.has_tone(CALLER_HZ), after_resume  # audio again after the resume
    assert analyse(alice.recordings()[-1], skip_s=0.2).has_tone(CALLEE_HZ)
    [record] = wait_cdrs(server, 1)
    assert record["disposition"] == "answered" and record["hangup_side"] == "caller"
    assert header(hold, "Content-Type") == "application/sdp"
