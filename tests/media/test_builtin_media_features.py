"""The media features of anchored calls with real phones, through the built-in media
workers, with one and two SIP workers: music on hold, announcements, recording on demand,
DTMF, the RTP timeout, transfers (docs/media.md, "The SIP side"); the transfers also
through the real rtpengine daemon (`ReplaceParty` over NG).

baresip phones register as users and call each other; each sends its own tone and
records what it receives.  Where a phone's own recording cannot show what it receives
(baresip 1.0 drops its receive filters, the sndfile recording, at the first SDP direction
change: see `peer_phones.RtpCapture`), the RTP reaching it is captured on the loopback
and decoded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import struct
import time
import wave
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from audio import analyse, write_tone
from harness import Server, free_ports, port_block
from peer_env import (
    active_calls,
    base_config,
    ctl,
    register,
    sipp,
    start_server,
    user_args,
    wait_cdrs,
    wait_for,
    wait_no_calls,
    workers,
)
from peer_phones import Baresip, RtpCapture, read_growing, rms_dbfs, tone_share, ulaw_samples
from rtpengine_proc import Rtpengine

from vivait_sip.store import Store

__all__ = ["workers"]

pytestmark = pytest.mark.timeout(150)

A_HZ, B_HZ, C_HZ, MOH_HZ = 1000.0, 400.0, 700.0, 600.0
MEDIA_PORTS = port_block(100)
USERS = {"A": "6140", "B": "6141", "C": "6142"}


def media_config(**extra: Any) -> dict[str, Any]:
    return {"backend": "builtin", "workers": 1, "port_min": MEDIA_PORTS[0], "port_max": MEDIA_PORTS[1],
            "rtp_timeout_s": 0, **extra}


@pytest.fixture(params=["builtin", "rtpengine"])
def backend(request: pytest.FixtureRequest) -> Iterator[Rtpengine | None]:
    """The media backend of a test: the built-in media workers (None), or a real
    rtpengine daemon (userspace) started for the test."""
    if request.param == "builtin":
        yield None
        return

    daemon = asyncio.run(Rtpengine().start())
    try:
        yield daemon
    finally:
        daemon.stop()


def media_for(daemon: Rtpengine | None, **extra: Any) -> dict[str, Any]:
    """`media_config(**extra)`, through `daemon` when there is one."""
    if daemon is None:
        return media_config(**extra)
    return media_config(backend="rtpengine", rtpengine={"daemons": [daemon.address], "dtmf_listen": daemon.dtmf_listen},
                        **extra)


def ports_of(daemon: Rtpengine | None) -> tuple[int, int]:
    """The range the relay's ports come from."""
    return (daemon.port_min, daemon.port_max) if daemon is not None else MEDIA_PORTS


def serve(tmp: Path, workers: int, *, media: dict[str, Any], dialplan: list[dict[str, Any]] | None = None,
          **b2bua: Any) -> Server:
    config = base_config(workers, **b2bua)
    if dialplan is not None:
        config["b2bua"]["dialplan"] = dialplan
    config["media"] = media
    return start_server(tmp / "srv", config)


class Phones:
    def __init__(self, tmp: Path, server: Server) -> None:
        self.tmp = tmp
        self.server = server
        self.all: dict[str, Baresip] = {}

    def add(self, name: str, hz: float) -> Baresip:
        user = USERS[name]
        account = f"<sip:{user}@127.0.0.1:{self.server.sip_port('udp')}>;auth_pass=pw-{user};regint=60"
        phone = Baresip(self.tmp, name, hz, account=account, seconds=90, quit_after=110)
        self.all[name] = phone
        phone.register()
        return phone

    def dial(self, phone: Baresip, number: str) -> None:
        phone.command("dial", f"sip:{number}@127.0.0.1:{self.server.sip_port('udp')}")

    def close(self) -> None:
        for phone in self.all.values():
            phone.close()


@pytest.fixture
def phones_for() -> Iterator[Any]:
    made: list[Phones] = []

    def make(tmp: Path, server: Server) -> Phones:
        phones = Phones(tmp, server)
        made.append(phones)
        return phones

    yield make
    for phones in made:
        phones.close()


def heard(phone: Baresip, hz: float, last_s: float = 1.5) -> float:
    files = phone.recordings()
    assert files, f"{phone.name} recorded nothing:\n{phone.log()}"
    return tone_share(read_growing(files[-1])[-int(8000 * last_s):], hz)


def state(server: Server) -> list[str]:
    return [str(c["state"]) for c in active_calls(server)]


# ---- music on hold --------------------------------------------------------------------------------


def test_a_held_party_hears_music_on_hold_and_the_other_party_again_after_the_resume(
    tmp_path: Path, workers: int, phones_for: Any, backend: Rtpengine | None
) -> None:
    """B holds A.  Without anchoring A gets nothing while held (test_transfer_peers); here
    the route's music-on-hold class (a 600 Hz tune) anchors the call (feature moh) and A
    receives it while held; after the resume A receives B's tone again."""
    tune = write_tone(tmp_path / "tune.wav", MOH_HZ, 5)
    server = serve(tmp_path, workers, media=media_for(backend, moh_classes={"tune": str(tune)}),
                   dialplan=[{"name": "local", "moh": "tune", "action": {"type": "user"}}])
    phones = phones_for(tmp_path, server)
    try:
        a, b = phones.add("A", A_HZ), phones.add("B", B_HZ)
        capture = RtpCapture(tmp_path / "a-rtp.pcap", a.rtp_ports)
        try:
            phones.dial(a, USERS["B"])
            a.wait_event("CALL_ESTABLISHED", 10)
            b.wait_event("CALL_ESTABLISHED", 10)
            time.sleep(1.5)
            assert heard(a, B_HZ) > 0.8 and heard(b, A_HZ) > 0.8
            b.command("hold")
            wait_for(lambda: state(server) == ["on_hold"], 5, message="on_hold in ctl calls")
            held_from = time.time() + 0.5
            time.sleep(2.5)
            held_until = time.time()
            b.command("resume")
            wait_for(lambda: state(server) == ["answered"], 5, message="answered again in ctl calls")
            resumed = time.time()
            time.sleep(2.0)
        finally:
            capture.stop()
        packets = capture.packets()
        during = [payload for t, pt, payload in packets if held_from < t < held_until and pt == 0]
        assert len(during) > 80, f"{len(during)} PCMU packets reached A while it was held"
        music = ulaw_samples(during)
        assert rms_dbfs(music) > -30 and tone_share(music, MOH_HZ) > 0.8, (rms_dbfs(music), tone_share(music, MOH_HZ))
        after = [payload for t, pt, payload in packets if t > resumed + 0.5 and pt == 0]
        assert len(after) > 50 and tone_share(ulaw_samples(after), B_HZ) > 0.8  # B again
        a.command("hangup")
        b.wait_event("CALL_CLOSED", 10)
        wait_no_calls(server)
        [record] = wait_cdrs(server, 1)
        assert record["extra"]["media"] == "anchored (feature moh)" and record["disposition"] == "answered"
        assert "event=moh_started" in "\n".join(server.collect_output())
    finally:
        server.stop()


# ---- announcements --------------------------------------------------------------------------------


def announcement_server(tmp: Path, workers: int, daemon: Rtpengine | None = None) -> Server:
    return serve(tmp, workers, media=media_for(daemon), dialplan=[
        {"name": "closed", "match": {"number": {"exact": "900"}}, "action": {"type": "announcement", "prompt": "test-1k"}},
        {"name": "welcome", "match": {"number": {"exact": "901"}},
         "action": {"type": "announcement", "prompt": "test-1k", "then": {"type": "user", "user": USERS["B"]}}},
        {"name": "local", "action": {"type": "user"}},
    ])


def test_an_announcement_answers_plays_the_prompt_and_hangs_up(tmp_path: Path, workers: int, phones_for: Any,
                                                               backend: Rtpengine | None) -> None:
    """A dials 900: the B2BUA answers (the relay's SDP, no callee), A hears the generated
    1 kHz prompt, then gets BYE; the CDR says answered, cause announcement.  Through
    rtpengine the prompt goes as a WAV blob in `play media`, and its end is timed by the
    reply's duration (rtpengine reports none)."""
    server = announcement_server(tmp_path, workers, backend)
    phones = phones_for(tmp_path, server)
    try:
        a = phones.add("A", B_HZ)  # A sends 400 Hz: what it hears is the prompt's 1 kHz
        phones.dial(a, "900")
        a.wait_event("CALL_ESTABLISHED", 10)
        a.wait_event("CALL_CLOSED", 10)  # the prompt (1 s) played, then BYE from us
        wait_no_calls(server)
        heard_by_a = analyse_tail(a, skip_s=0.2)
        assert heard_by_a.has_tone(A_HZ), heard_by_a
        [record] = wait_cdrs(server, 1)
        assert record["disposition"] == "answered" and record["hangup_cause"] == "announcement"
        assert record["hangup_side"] == "system" and record["extra"]["announcement"] == "test-1k"
        assert record["extra"]["media"] == "anchored (feature announcement)"
        assert 0.9 < record["billable_s"] < 5
        assert [leg["direction"] for leg in record["legs"]] == ["in"]  # no callee leg
        assert a.sip_received("BYE") if hasattr(a, "sip_received") else True
    finally:
        server.stop()


def test_an_announcement_then_rings_its_target(tmp_path: Path, workers: int, phones_for: Any,
                                               backend: Rtpengine | None) -> None:
    """A dials 901: the prompt, then B rings (A hears ringback) and answers; A and B hear
    each other through the same relay session (B took the placeholder's place); two CDRs,
    the second linked to the announcement's."""
    server = announcement_server(tmp_path, workers, backend)
    phones = phones_for(tmp_path, server)
    try:
        a, b = phones.add("A", B_HZ), phones.add("B", C_HZ)
        phones.dial(a, "901")
        a.wait_event("CALL_ESTABLISHED", 10)
        b.wait_event("CALL_ESTABLISHED", 15)
        time.sleep(2.0)
        assert heard(a, C_HZ) > 0.8, heard(a, C_HZ)
        assert heard(b, B_HZ) > 0.8, heard(b, B_HZ)
        [call] = active_calls(server)
        assert call["state"] == "answered" and call["linked_to"]
        a.command("hangup")
        b.wait_event("CALL_CLOSED", 10)
        wait_no_calls(server)
        records = {r["call_uuid"]: r for r in wait_cdrs(server, 2)}
        [first] = [r for r in records.values() if not r["linked_to"]]
        [second] = [r for r in records.values() if r["linked_to"]]
        assert first["hangup_cause"] == "announcement" and first["disposition"] == "answered"
        assert second["linked_to"] == first["call_uuid"] and second["disposition"] == "answered"
        assert second["callee"] == USERS["B"] and second["hangup_side"] == "caller"
        status = json.loads(ctl(server, "media", "--json").stdout)
        assert status["sessions"] == 0
    finally:
        server.stop()


SIPP_GW = "127.0.0.7"


def late_offer_server(tmp: Path, workers: int, daemon: Rtpengine | None = None) -> Server:
    trunk = {"name": "gw", "host": SIPP_GW, "port": 5999, "networks": [f"{SIPP_GW}/32"], "options_interval_s": 0}
    return serve(tmp, workers, media=media_for(daemon), trunks=[trunk], dialplan=[
        {"name": "closed", "match": {"number": {"exact": "900"}}, "action": {"type": "announcement", "prompt": "test-1k"}},
    ])


def test_a_late_offer_caller_is_offered_the_relays_sdp_answers_in_the_ack_and_hears_the_prompt(
    tmp_path: Path, workers: int, backend: Rtpengine | None
) -> None:
    """SIPp (a gateway) dials 900 with an INVITE without SDP: the 200 carries the relay's
    offer (G.711 from our placeholder party), SIPp answers in the ACK with PCMU at a port
    this test listens on, and the prompt (1 kHz) arrives there from the relay's port;
    then BYE, CDR answered / announcement."""
    server = late_offer_server(tmp_path, workers, backend)
    low, high = ports_of(backend)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(0.2)
        rtp_port = listener.getsockname()[1]
        gw = sipp("gw", tmp_path, "late_offer_uac_answer_in_ack.xml", f"127.0.0.1:{server.sip_port('udp')}",
                  "-s", "900", "-set", "rtpport", str(rtp_port), "-m", "1", "-timeout", "30s", "-timeout_error",
                  local=SIPP_GW).start()
        received: list[tuple[tuple[str, int], bytes]] = []
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline and gw.proc.poll() is None:
                try:
                    data, source = listener.recvfrom(2048)
                except TimeoutError:
                    continue
                received.append((source, data))
            assert gw.wait(30) == 0, gw.report()
        finally:
            gw.stop()
        audio = [(source, data) for source, data in received if len(data) > 12 and data[1] & 0x7F == 0]
        assert len(audio) > 25, f"{len(received)} datagrams"  # a second of 20 ms PCMU packets
        sources = {source for source, _ in audio}
        assert len(sources) == 1 and all(low <= port <= high for _, port in sources), sources
        assert tone_share(ulaw_samples([data[12:] for _, data in audio]), A_HZ) > 0.8
        wait_no_calls(server)
        [record] = wait_cdrs(server, 1)
        assert record["disposition"] == "answered" and record["hangup_cause"] == "announcement", record
        assert record["extra"]["announcement"] == "test-1k"
        wait_for(lambda: json.loads(ctl(server, "media", "--json").stdout)["sessions"] == 0, 5,
                 message="the session deleted at the end")
    finally:
        listener.close()
        server.stop()


def test_a_late_offer_caller_whose_ack_has_no_answer_is_hung_up(tmp_path: Path, workers: int) -> None:
    """The same call, but the ACK carries no SDP: nothing can be played (the caller's
    address and codec are unknown), so the B2BUA hangs up at once with BYE; the CDR says
    why."""
    server = late_offer_server(tmp_path, workers)
    try:
        gw = sipp("gw", tmp_path, "late_offer_uac_no_answer.xml", f"127.0.0.1:{server.sip_port('udp')}",
                  "-s", "900", "-m", "1", "-timeout", "20s", "-timeout_error", local=SIPP_GW).start()
        try:
            assert gw.wait(20) == 0, gw.report()
        finally:
            gw.stop()
        wait_no_calls(server)
        [record] = wait_cdrs(server, 1)
        assert record["hangup_cause"] == "no SDP answer in the ACK" and record["hangup_side"] == "system", record
        assert record["billable_s"] < 1.0, record
        wait_for(lambda: json.loads(ctl(server, "media", "--json").stdout)["sessions"] == 0, 5,
                 message="the session deleted at the end")
    finally:
        server.stop()


def analyse_tail(phone: Baresip, skip_s: float) -> Any:
    files = phone.recordings()
    assert files, f"{phone.name} recorded nothing:\n{phone.log()}"
    return analyse(files[-1], skip_s=skip_s)


# ---- recording ------------------------------------------------------------------------------------


def wav_channels(path: Path) -> tuple[list[int], list[int], int]:
    """(left samples, right samples, frames) of a stereo 16-bit WAV whose header sizes
    must agree with the file (a recording never left truncated)."""
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        frames = wav.getnframes()
        raw = wav.readframes(frames)
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    assert frames * 4 == len(raw) and len(data) == 44 + frames * 4, (frames, len(data))
    samples = struct.unpack(f"<{len(raw) // 2}h", raw)
    return list(samples[0::2]), list(samples[1::2]), frames


def test_a_call_recorded_on_demand_and_through_sigterm(tmp_path: Path, workers: int, phones_for: Any) -> None:
    """`ctl record start` then `stop` on a call in progress: a stereo WAV in the archive, A's
    tone on the left, B's on the right.  Recording again, then SIGTERM to the server mid-call:
    the second WAV is in the archive too, its header right; the CDR lists both."""
    server = serve(tmp_path, workers, media=media_config(default="anchor"), drain_s=1)
    phones = phones_for(tmp_path, server)
    archive = server.data_dir / "recordings"
    try:
        a, b = phones.add("A", A_HZ), phones.add("B", B_HZ)
        assert ctl(server, "record", "start", "nope").returncode == 1
        phones.dial(a, USERS["B"])
        a.wait_event("CALL_ESTABLISHED", 10)
        b.wait_event("CALL_ESTABLISHED", 10)
        [call] = active_calls(server)
        started = ctl(server, "record", "start", call["call"], "--json")
        assert started.returncode == 0, started.stderr
        first = Path(json.loads(started.stdout)["path"])
        assert first.parent == archive
        time.sleep(3.0)
        stopped = ctl(server, "record", "stop", call["call"])
        assert stopped.returncode == 0 and str(first) in stopped.stdout, stopped
        assert ctl(server, "record", "stop", call["call"]).returncode == 1  # not being recorded
        left, right, frames = wav_channels(first)
        assert 2.0 * 8000 < frames < 5.0 * 8000
        assert tone_share(left[4000:], A_HZ) > 0.8 and tone_share(right[4000:], B_HZ) > 0.8
        again = ctl(server, "record", "start", call["call"], "--json")
        second = Path(json.loads(again.stdout)["path"])
        assert second != first
        time.sleep(2.5)
    finally:
        assert server.stop() == 0  # SIGTERM mid-call: drain 1 s, BYE both ways, recordings closed
    left, right, frames = wav_channels(second)
    assert frames > 2.0 * 8000
    assert tone_share(left[4000:], A_HZ) > 0.8 and tone_share(right[4000:], B_HZ) > 0.8
    assert not list((archive / "spool").glob("*.wav"))  # nothing left in the spool
    store = Store.open(server.data_dir)
    try:
        [(row, _legs)] = store.query_cdrs(0, time.time() + 60)
    finally:
        store.close()
    extra = json.loads(row.extra)
    assert extra["recording"] == [str(first), str(second)] and row.hangup_cause == "shutdown"


# ---- DTMF ---------------------------------------------------------------------------------------


def dtmf_of(server: Server) -> dict[str, str]:
    calls = active_calls(server)
    return dict(calls[0].get("dtmf") or {}) if calls else {}


def test_rfc4733_digits_from_a_phone_show_in_ctl_calls(tmp_path: Path, workers: int, phones_for: Any) -> None:
    """A presses 1, 2, #, B presses 9 (baresip sends RFC 4733 telephone-events): the relay
    detects them and `ctl calls --json` shows each party's digits; `event=dtmf` is logged.
    The route records its calls (`record: true`): the CDR lists the file."""
    server = serve(tmp_path, workers, media=media_config(),
                   dialplan=[{"name": "local", "record": True, "action": {"type": "user"}}])
    phones = phones_for(tmp_path, server)
    try:
        a, b = phones.add("A", A_HZ), phones.add("B", B_HZ)
        phones.dial(a, USERS["B"])
        a.wait_event("CALL_ESTABLISHED", 10)
        b.wait_event("CALL_ESTABLISHED", 10)
        time.sleep(0.5)
        for phone, digit in ((a, "1"), (a, "2"), (a, "#"), (b, "9")):
            assert phone.command("sndcode", digit).get("ok"), digit
            time.sleep(0.6)
        found = wait_for(lambda: (d := dtmf_of(server)) and d.get("caller") == "12#" and d.get("callee") == "9" and d,
                         5, message=f"digits in ctl calls: {dtmf_of(server)}")
        assert found == {"caller": "12#", "callee": "9"}
        a.command("hangup")
        b.wait_event("CALL_CLOSED", 10)
        wait_no_calls(server)
        [record] = wait_cdrs(server, 1)
        assert record["extra"]["media"] == "anchored (feature recording)"
        [path] = record["extra"]["recording"]
        wait_for(lambda: Path(path).exists(), 5, message=f"{path} in the archive")
        log = "\n".join(server.collect_output())
        assert "event=dtmf" in log and "digit=# source=rfc4733" in log
    finally:
        server.stop()


def test_rfc4733_digits_through_rtpengine_show_in_ctl_calls(tmp_path: Path, workers: int, phones_for: Any) -> None:
    """The same through real rtpengine, which reports the digits it sees to
    `media.rtpengine.dtmf_listen` (its `--dtmf-log-dest`): A dials 901 and presses 4
    during the announcement, then B answers; A presses 1, 2, #, B presses 9.  `ctl calls`
    shows each party's digits, the log says `source=rfc4733`, and `ctl media` counts the
    reports."""
    daemon = asyncio.run(Rtpengine().start())
    server = announcement_server(tmp_path, workers, daemon)
    phones = phones_for(tmp_path, server)
    try:
        a, b = phones.add("A", A_HZ), phones.add("B", B_HZ)
        phones.dial(a, "901")
        a.wait_event("CALL_ESTABLISHED", 10)
        assert a.command("sndcode", "4").get("ok")
        b.wait_event("CALL_ESTABLISHED", 15)
        wait_for(lambda: "digit=4 source=rfc4733" in "\n".join(server.collect_output()), 5,
                 message="the digit pressed during the announcement")
        time.sleep(0.5)
        for phone, digit in ((a, "1"), (a, "2"), (a, "#"), (b, "9")):
            assert phone.command("sndcode", digit).get("ok"), digit
            time.sleep(0.6)
        found = wait_for(lambda: (d := dtmf_of(server)) and d.get("caller", "").endswith("12#") and d.get("callee") == "9"
                         and d, 5, message=f"digits in ctl calls: {dtmf_of(server)}")
        assert found["caller"] in ("12#", "412#")  # the announcement's digit, if the call kept it
        status = json.loads(ctl(server, "media", "--json").stdout)
        assert status["dtmf_log"]["digits"] >= 5 and status["dtmf_log"]["foreign"] == 0, status["dtmf_log"]
        a.command("hangup")
        b.wait_event("CALL_CLOSED", 10)
        wait_no_calls(server)
    finally:
        server.stop()
        daemon.stop()


def test_sip_info_digits_show_in_ctl_calls(tmp_path: Path, workers: int, phones_for: Any) -> None:
    """SIPp (user 6140) calls B and sends DTMF as SIP INFO: application/dtmf-relay 5 and #,
    application/dtmf 7.  The INFOs are relayed to B as before, and the digits are the
    caller's in `ctl calls --json`."""
    server = serve(tmp_path, workers, media=media_config(default="anchor"))
    phones = phones_for(tmp_path, server)
    try:
        phones.add("B", B_HZ)
        uac = sipp("uac", tmp_path, "b2b_uac_info_dtmf.xml", *user_args(server, USERS["A"], USERS["B"]),
                   "-m", "1", "-d", "4000", "-timeout", "30s").start()
        try:
            found = wait_for(lambda: (d := dtmf_of(server)) and d.get("caller") == "5#7" and d, 10,
                             message=f"INFO digits in ctl calls: {dtmf_of(server)}")
            assert found == {"caller": "5#7", "callee": ""}
            assert uac.wait(30) == 0, uac.report()
        finally:
            uac.stop()
        wait_no_calls(server)
        assert "source=info" in "\n".join(server.collect_output())
    finally:
        server.stop()


# ---- RTP timeout --------------------------------------------------------------------------------


def test_a_callee_that_sends_no_rtp_is_hung_up_after_the_rtp_timeout(tmp_path: Path, workers: int,
                                                                       phones_for: Any) -> None:
    """A (baresip) calls 6141, answered by a SIPp UAS that sends no RTP at all: after
    media.rtp_timeout_s (2 s) the call ends with BYE both ways, CDR cause "RTP timeout"."""
    server = serve(tmp_path, workers, media=media_config(default="anchor", rtp_timeout_s=2))
    phones = phones_for(tmp_path, server)
    uas = sipp("uas", tmp_path, "uas", "-m", "1").start()
    try:
        register(server, USERS["B"], f"pw-{USERS['B']}", uas.port)
        a = phones.add("A", A_HZ)
        phones.dial(a, USERS["B"])
        a.wait_event("CALL_ESTABLISHED", 10)
        established = time.monotonic()
        a.wait_event("CALL_CLOSED", 15)
        assert 1.5 < time.monotonic() - established < 8
        assert uas.wait(10) == 0, uas.report()  # it got its BYE (and answered it)
        assert uas.received("BYE")
        wait_no_calls(server)
        [record] = wait_cdrs(server, 1)
        assert record["hangup_cause"] == "RTP timeout" and record["disposition"] == "answered"
        assert record["hangup_side"] == "system"
        assert "event=rtp_timeout" in "\n".join(server.collect_output())
    finally:
        uas.stop()
        server.stop()


def test_a_phone_killed_mid_call_is_hung_up_after_the_rtp_timeout(tmp_path: Path, workers: int,
                                                                    phones_for: Any) -> None:
    """B (baresip) is killed (SIGKILL: no BYE) while talking to A: its RTP stops, and after
    the RTP timeout A gets BYE; the CDR says why."""
    server = serve(tmp_path, workers, media=media_config(default="anchor", rtp_timeout_s=2))
    phones = phones_for(tmp_path, server)
    try:
        a, b = phones.add("A", A_HZ), phones.add("B", B_HZ)
        phones.dial(a, USERS["B"])
        a.wait_event("CALL_ESTABLISHED", 10)
        b.wait_event("CALL_ESTABLISHED", 10)
        time.sleep(1.0)
        b.proc.kill()
        b.proc.wait(5)
        killed = time.monotonic()
        a.wait_event("CALL_CLOSED", 15)
        assert 1.5 < time.monotonic() - killed < 8
        wait_no_calls(server, timeout=40)  # the BYE to the dead phone times out (32 s at most)
        [record] = wait_cdrs(server, 1)
        assert record["hangup_cause"] == "RTP timeout"
    finally:
        server.stop()


# ---- transfers of anchored calls ----------------------------------------------------------------


def continuity(packets: list[tuple[float, int, int, int, int, bytes]]) -> tuple[set[int], int, int]:
    """(SSRCs seen, largest sequence step, backward timestamp steps) of the PCMU packets
    that reached a phone, in arrival order."""
    audio = [p for p in packets if p[1] == 0]
    steps = [(b[2] - a[2]) & 0xFFFF for a, b in itertools.pairwise(audio)]
    back = sum(1 for a, b in itertools.pairwise(audio) if (b[3] - a[3]) & 0xFFFFFFFF >= 0x80000000)
    return {p[4] for p in audio}, max(steps, default=0), back


@pytest.fixture(params=["builtin", "rtpengine"])
def transfer_media(request: pytest.FixtureRequest) -> Iterator[tuple[dict[str, Any], Rtpengine | None]]:
    """The media config of a transfer test: the built-in backend, or a real rtpengine
    daemon (userspace) started for the test."""
    if request.param == "builtin":
        yield media_config(default="anchor"), None
        return

    daemon = asyncio.run(Rtpengine().start())
    try:
        yield {"backend": "rtpengine", "default": "anchor", "rtpengine": {"daemons": [daemon.address]}}, daemon
    finally:
        daemon.stop()


def test_a_blind_transfer_of_an_anchored_call(tmp_path: Path, workers: int, phones_for: Any,
                                              transfer_media: tuple[dict[str, Any], Rtpengine | None]) -> None:
    """A and B anchored; B transfers A to C (REFER, baresip's `transfer`).  C takes B's place in
    the relay session: A keeps its ports and receives one continuous stream (built-in: one
    SSRC, sequence +1, timestamps forward: nothing a phone would reject; rtpengine: the
    same rtpengine port sends A first B's stream, then C's, with C's own SSRC), A hears C
    and C hears A; the session is gone at the end."""
    media, daemon = transfer_media
    server = serve(tmp_path, workers, media=media)
    phones = phones_for(tmp_path, server)
    try:
        a, b, c = phones.add("A", A_HZ), phones.add("B", B_HZ), phones.add("C", C_HZ)
        capture = RtpCapture(tmp_path / "a-rtp.pcap", a.rtp_ports)
        try:
            phones.dial(a, USERS["B"])
            a.wait_event("CALL_ESTABLISHED", 10)
            b.wait_event("CALL_ESTABLISHED", 10)
            time.sleep(1.5)
            assert heard(a, B_HZ) > 0.8 and heard(b, A_HZ) > 0.8
            b.command("transfer", f"sip:{USERS['C']}@127.0.0.1:{server.sip_port('udp')}")
            c.wait_event("CALL_ESTABLISHED", 10)
            b.wait_event("CALL_CLOSED", 10)
            time.sleep(2.5)
        finally:
            capture.stop()
        assert heard(a, C_HZ) > 0.8, heard(a, C_HZ)
        assert heard(c, A_HZ) > 0.8, heard(c, A_HZ)
        if daemon is None:
            ssrcs, step, back = continuity(capture.rtp())
            assert len(ssrcs) == 1 and step <= 2 and back == 0, (ssrcs, step, back)
        else:
            # every packet reaching A came from one rtpengine port, before and after the
            # transfer (A kept its port: rtpengine sends from the port A sends to), first
            # with B's SSRC, last with C's (rtpengine passes SSRCs through)
            packets = [(source, p) for source, p in capture.rtp_with_sources() if p[1] == 0]
            sources = {source for source, _ in packets}
            assert len(sources) == 1, sources
            [(host, port)] = sources
            assert host == "127.0.0.1" and daemon.port_min <= port <= daemon.port_max, sources
            first_ssrc, last_ssrc = packets[0][1][4], packets[-1][1][4]
            assert first_ssrc != last_ssrc, (first_ssrc, last_ssrc)
            after = [p for _, p in packets if p[4] == last_ssrc]
            assert len(after) > 100 and tone_share(ulaw_samples([p[5] for p in after[-75:]]), C_HZ) > 0.8
        [active] = active_calls(server)
        assert active["state"] == "answered" and active["linked_to"]
        status = json.loads(ctl(server, "media", "--json").stdout)
        assert status["sessions"] == 1  # one relay session, handed over
        a.command("hangup")
        c.wait_event("CALL_CLOSED", 10)
        wait_no_calls(server)
        records = wait_cdrs(server, 2)
        [original] = [r for r in records if not r["linked_to"]]
        [transferred] = [r for r in records if r["linked_to"]]
        assert original["hangup_cause"] == "transferred" and transferred["disposition"] == "answered"
        assert transferred["extra"]["media"] == original["extra"]["media"] == "anchored (default)"
        wait_for(lambda: json.loads(ctl(server, "media", "--json").stdout)["sessions"] == 0, 5,
                 message="the session deleted at the end")
    finally:
        server.stop()


SIPP_B = "127.0.0.6"


def salt_for_workers(count: int) -> str:
    """A Call-ID suffix putting SIPp's first call in worker 0 and its second in worker 1
    (owner = crc32(Call-ID) % count): with two workers the join crosses them."""
    for n in range(10_000):
        salt = f"s{n}"
        owners = (zlib.crc32(f"xfer1-{salt}".encode()) % count, zlib.crc32(f"xfer2-{salt}".encode()) % count)
        if count < 2 or owners == (0, 1):
            return salt
    raise AssertionError("no salt")


def test_an_attended_transfer_of_anchored_calls_driven_by_sipp(
    tmp_path: Path, workers: int, phones_for: Any, transfer_media: tuple[dict[str, Any], Rtpengine | None]
) -> None:
    """SIPp is B (a trusted peer calling as 6141): it calls A, then C, then REFERs A to C
    with Replaces naming the consultation call.  Both calls are anchored (built-in media
    workers or rtpengine): C takes B's place in A's relay session (C is re-INVITEd onto
    it), the consultation's session is deleted, and A and C hear each other."""
    media, _daemon = transfer_media
    trunk = {"name": "pbx-b", "host": SIPP_B, "port": 5999, "networks": [f"{SIPP_B}/32"], "options_interval_s": 0}
    server = serve(tmp_path, workers, media=media, trunks=[trunk])
    phones = phones_for(tmp_path, server)
    try:
        a, c = phones.add("A", A_HZ), phones.add("C", C_HZ)
        (tmp_path / "b.csv").write_text(f"SEQUENTIAL\n{USERS['A']};first;\n{USERS['C']};consult;\n")
        b = sipp("b", tmp_path, "xfer_attended_b.xml", f"127.0.0.1:{server.sip_port('udp')}", "-inf",
                 str(tmp_path / "b.csv"), "-s", USERS["B"], "-mp", str(free_ports(4, SIPP_B, even=True)),
                 "-m", "2", "-l", "2", "-r", "1", "-rp", "1000", "-timeout", "40s", "-timeout_error",
                 "-cid_str", f"xfer%u-{salt_for_workers(workers)}", local=SIPP_B).start()
        try:
            a.wait_event("CALL_ESTABLISHED", 15)
            c.wait_event("CALL_ESTABLISHED", 15)
            assert b.wait(60) == 0, b.report()
        finally:
            b.stop()
        time.sleep(2.5)
        assert heard(a, C_HZ) > 0.8, heard(a, C_HZ)
        assert heard(c, A_HZ) > 0.8, heard(c, A_HZ)
        [active] = active_calls(server)
        assert active["state"] == "answered" and active["linked_to"]
        wait_for(lambda: json.loads(ctl(server, "media", "--json").stdout)["sessions"] == 1, 5,
                 message="one relay session left (the consultation's deleted)")
        a.command("hangup")
        c.wait_event("CALL_CLOSED", 10)
        wait_no_calls(server)
        records = wait_cdrs(server, 3)
        assert sum(1 for r in records if r["hangup_cause"] == "transferred") == 2
    finally:
        server.stop()
