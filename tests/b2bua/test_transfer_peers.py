"""Hold and transfer against real phones, with one and two workers: baresip A, B and C are
registered users calling each other through the server.  B holds and resumes A; B
transfers A blind to C (baresip's `transfer`); SIPp plays B for an attended transfer
(REFER with Replaces naming its consultation call with C, tests/peers/sipp/).  Audio is
checked in the recordings: each phone sends its own tone and the other's is found in what
it received.  `ctl calls` and the CDRs are checked on the way."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server, free_port, free_ports, loopback_args
from peer_phones import (
    Baresip,
    RtpCapture,
    read_growing,
    tone_share,
    ulaw_samples,
    wav_samples_size,
)

pytestmark = pytest.mark.timeout(150)

USERS = {"6140": "pw-6140", "6141": "pw-6141", "6142": "pw-6142", "6143": "pw-6143"}
TONES = {"A": 1000.0, "B": 400.0, "C": 700.0}
SIPP = Path(__file__).resolve().parents[1] / "peers" / "sipp"
SIPP_HOST = "127.0.0.6"


def config(workers: int) -> dict[str, object]:
    return {
        "sip": {"workers": workers},
        "registrar": {"algorithms": ["MD5"], "users": [{"number": n, "password": pw} for n, pw in USERS.items()]},
        # SIPp plays B of the attended transfer from a trusted address (no digest: SIPp
        # computes its digest uri from the address, never from each call's Request-URI).
        "b2bua": {"trunks": [{"name": "pbx-b", "host": SIPP_HOST, "port": 5999, "networks": [f"{SIPP_HOST}/32"],
                              "options_interval_s": 0}]},
    }


@pytest.fixture(params=[1, 2], ids=["1worker", "2workers"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    assert shutil.which("baresip"), "baresip is required (Debian package baresip)"
    (tmp_path / "srv").mkdir()
    srv = Server(tmp_path / "srv", config(int(request.param)), loopback_args(http=False, tls=False)).start()
    yield srv
    srv.stop()


def ctl(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vivait_sip", *server.ctl_args, *args],
                          capture_output=True, text=True, timeout=30, check=False)


def calls(server: Server) -> list[dict[str, object]]:
    return list(json.loads(ctl(server, "calls", "--json").stdout)["calls"])


def cdrs(server: Server) -> list[dict[str, object]]:
    raw = json.loads(ctl(server, "cdr", "--since", "0", "--format", "json").stdout)
    return list(raw["calls"] if isinstance(raw, dict) else raw)


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def phones(tmp: Path, server: Server, names: str = "ABC") -> dict[str, Baresip]:
    users = dict(zip("ABC", ("6140", "6141", "6142"), strict=True))
    port = server.sip_port("udp")
    found: dict[str, Baresip] = {}
    try:
        for name in names:
            user = users[name]
            account = f"<sip:{user}@127.0.0.1:{port}>;auth_pass={USERS[user]};regint=60"
            phone = Baresip(tmp, name, TONES[name], account=account, seconds=90, quit_after=110)
            found[name] = phone
            phone.register()
    except BaseException:
        for phone in found.values():
            phone.close()
        raise
    return found


def heard(phone: Baresip, hz: float, *, last_s: float = 2.0, recording: int = -1) -> float:
    """The share of tone `hz` in the last `last_s` seconds `phone` received."""
    files = phone.recordings()
    assert files, f"{phone.name} recorded nothing:\n{phone.log()}"
    samples = read_growing(files[recording])
    return tone_share(samples[-int(8000 * last_s):], hz)


def server_log(server: Server) -> str:
    return "\n".join(server.collect_output())[-5000:]


def test_blind_transfer_with_baresip(server: Server, tmp_path: Path) -> None:
    p = phones(tmp_path, server)
    a, b, c = p["A"], p["B"], p["C"]
    try:
        a.command("dial", f"sip:6141@127.0.0.1:{server.sip_port('udp')}")
        a.wait_event("CALL_ESTABLISHED", 10)
        b.wait_event("CALL_ESTABLISHED", 10)
        time.sleep(1.5)
        assert heard(a, TONES["B"]) > 0.8 and heard(b, TONES["A"]) > 0.8
        b.command("transfer", f"sip:6142@127.0.0.1:{server.sip_port('udp')}")
        c.wait_event("CALL_ESTABLISHED", 10)
        b.wait_event("CALL_CLOSED", 10)
        time.sleep(2.5)
        assert heard(c, TONES["A"]) > 0.8, server_log(server)
        assert heard(a, TONES["C"]) > 0.8, server_log(server)
        (active,) = calls(server)
        assert active["state"] == "answered" and active["linked_to"]
        a.command("hangup")
        c.wait_event("CALL_CLOSED", 10)
        wait_for(lambda: not calls(server), 5, "no calls")
        records = {r["call_uuid"]: r for r in cdrs(server)}
        (original,) = [r for r in records.values() if not r["linked_to"]]
        (transferred,) = [r for r in records.values() if r["linked_to"]]
        assert transferred["linked_to"] == original["call_uuid"]
        assert original["hangup_cause"] == "transferred" and original["hangup_side"] == "callee"
        assert (transferred["caller"], transferred["callee"], transferred["user"]) == ("6140", "6142", "6141")
        assert transferred["disposition"] == "answered" and transferred["hangup_side"] == "caller"
        assert "407 Proxy" not in b.log_path.read_text()  # the REFER inside the call is not challenged
    finally:
        for phone in p.values():
            phone.close()


def test_hold_and_resume_with_baresip(server: Server, tmp_path: Path) -> None:
    """B holds A and resumes.  A's recording holds B's tone and stops growing at the hold
    (nothing arrives); after the resume A's RTP carries B's tone again (captured: see
    `RtpCapture` for why the recording cannot show it); `ctl calls` says on_hold."""
    p = phones(tmp_path, server, "AB")
    a, b = p["A"], p["B"]
    capture = RtpCapture(tmp_path / "a-rtp.pcap", a.rtp_ports)
    try:
        a.command("dial", f"sip:6141@127.0.0.1:{server.sip_port('udp')}")
        a.wait_event("CALL_ESTABLISHED", 10)
        b.wait_event("CALL_ESTABLISHED", 10)
        time.sleep(1.5)
        assert heard(a, TONES["B"]) > 0.8 and heard(b, TONES["A"]) > 0.8
        b.command("hold")
        wait_for(lambda: [c["state"] for c in calls(server)] == ["on_hold"], 5, "on_hold in ctl calls")
        time.sleep(0.3)
        a_file = a.recordings()[-1]
        before = wav_samples_size(a_file)
        held_from = time.time()
        time.sleep(2.0)
        held_until = time.time()
        during = wav_samples_size(a_file) - before
        assert during < 800, f"A recorded {during} samples (more than 0.1 s) while held"
        b.command("resume")
        wait_for(lambda: [c["state"] for c in calls(server)] == ["answered"], 5, "answered again in ctl calls")
        resumed = time.time()
        time.sleep(2.0)
        capture.stop()
        packets = capture.packets()
        assert not [t for t, _, _ in packets if held_from < t < held_until], "RTP reached A while it was held"
        after = [payload for t, pt, payload in packets if t > resumed + 0.3 and pt == 0]
        assert len(after) > 50, f"{len(after)} PCMU packets reached A after the resume"
        assert tone_share(ulaw_samples(after), TONES["B"]) > 0.8  # B's tone, again
        a.command("hangup")
        b.wait_event("CALL_CLOSED", 10)
        wait_for(lambda: not calls(server), 5, "no calls")
        assert "407 Proxy" not in b.log_path.read_text()  # a re-INVITE inside a call is not challenged
    finally:
        capture.stop()
        for phone in p.values():
            phone.close()


def salt_for_workers(count: int) -> str:
    """A Call-ID suffix putting SIPp's first call in worker 0 and its second in worker 1
    (`-cid_str xfer%u-SALT`, owner = crc32 % count): the attended transfer then joins
    calls of two workers, not by chance."""
    for n in range(10_000):
        salt = f"s{n}"
        if count < 2 or (zlib.crc32(f"xfer1-{salt}".encode()) % count, zlib.crc32(f"xfer2-{salt}".encode()) % count) == (0, 1):
            return salt
    raise AssertionError("no salt")


def test_attended_transfer_driven_by_sipp(server: Server, tmp_path: Path) -> None:
    """SIPp is B (a trusted peer calling as 6141): it calls A, then C (the consultation),
    then REFERs A to C with Replaces naming the consultation dialog.  A and C end up
    talking.  With two workers the two calls are in different workers (Call-IDs chosen
    so), joined by messages."""
    assert shutil.which("sipp"), "sipp is required (Debian package sip-tester)"
    workers = int(server.config["sip"]["workers"])  # type: ignore[index]
    p = phones(tmp_path, server, "AC")
    a, c = p["A"], p["C"]
    inf = tmp_path / "b.csv"
    inf.write_text("SEQUENTIAL\n6140;first;\n6142;consult;\n")
    sipp = subprocess.Popen(
        ["sipp", f"127.0.0.1:{server.sip_port('udp')}", "-sf", str(SIPP / "xfer_attended_b.xml"), "-inf", str(inf),
         "-s", "6141", "-i", SIPP_HOST, "-p", str(free_port(SIPP_HOST)),
         "-mp", str(free_ports(4, SIPP_HOST, even=True)), "-m", "2", "-l", "2", "-r", "1", "-rp", "1000",
         "-cid_str", f"xfer%u-{salt_for_workers(workers)}", "-nostdin", "-timeout", "40s", "-timeout_error",
         "-trace_err", "-trace_msg"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        a.wait_event("CALL_ESTABLISHED", 15)
        c.wait_event("CALL_ESTABLISHED", 15)
        out, _ = sipp.communicate(timeout=60)
        messages = "".join(f.read_text(errors="replace") for f in tmp_path.glob("*_messages.log"))
        errors = "".join(f.read_text(errors="replace") for f in tmp_path.glob("*_errors.log"))
        assert sipp.returncode == 0, f"{errors[-3000:]}\n{out[-2000:]}\n{messages[-6000:]}\n{server_log(server)}"
        time.sleep(2.5)
        assert heard(a, TONES["C"]) > 0.8, f"{a.log()}\n{server_log(server)}"
        assert heard(c, TONES["A"]) > 0.8, f"{c.log()}\n{server_log(server)}"
        (active,) = calls(server)
        assert active["state"] == "answered" and active["linked_to"]
        if workers == 2:  # A's dialog and C's live in different workers: the join crossed them
            legs = active["legs"]
            assert isinstance(legs, list)
            owners = {zlib.crc32(str(active["call_id"]).encode()) % 2, zlib.crc32(str(legs[0]["call_id"]).encode()) % 2}
            assert owners == {0, 1}
        a.command("hangup")
        c.wait_event("CALL_CLOSED", 10)
        wait_for(lambda: not calls(server), 5, "no calls")
        records = cdrs(server)
        (joined,) = [r for r in records if r["linked_to"]]
        (first,) = [r for r in records if r["callee"] == "6140"]
        (consultation,) = [r for r in records if r["callee"] == "6142" and not r["linked_to"]]
        assert first["hangup_cause"] == consultation["hangup_cause"] == "transferred"
        assert joined["linked_to"] == first["call_uuid"]
        assert consultation["extra"]["transferred_into"] == joined["call_uuid"]
        assert joined["caller"] == "6140" and joined["trunk"] is None  # A and C are phones: no trunk in it
        assert first["trunk"] == consultation["trunk"] == "pbx-b"  # the transferor's calls came from the trunk
    finally:
        if sipp.poll() is None:
            sipp.kill()
            sipp.wait(5)
        for phone in p.values():
            phone.close()
