"""Media worker processes relaying real UDP between sockets of this test."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import port_block
from rtputil import parse_rtp, party_sdp, rtp

from vivait_sip.media.audio import g711
from vivait_sip.media.audio.dtmf import encode_event
from vivait_sip.media.audio.tones import tone
from vivait_sip.media.audio.wav import write_wav
from vivait_sip.media.client import (
    MediaClient,
    MediaRequestError,
    MediaWorkerSet,
    spawn_media_workers,
)
from vivait_sip.media.protocol import (
    MediaDtmf,
    MediaEvent,
    MediaOffer,
    MediaPlay,
    MediaPlayDone,
    MediaRecordingClosed,
    MediaRecordStart,
    MediaRecordStop,
    MediaRtpTimeout,
    MediaSendDtmf,
)
from vivait_sip.media.settings import BuiltinMediaSettings
from vivait_sip.sip.sdp import parse_sdp

LOCAL = "127.0.0.1"
BASE_PORT = port_block(40)[0]


class Phone:
    """A UDP socket playing a phone: sends RTP to the relay, collects what it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCAL, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.addr = (LOCAL, self.port)

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, (LOCAL, port))

    async def recv(self, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 4096), timeout)
        return data, addr

    async def recv_all(self, seconds: float) -> list[bytes]:
        out = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                data, _ = await self.recv(left)
            except TimeoutError:
                break
            out.append(data)
        return out

    def close(self) -> None:
        self.sock.close()


class Media:
    def __init__(self, workers: MediaWorkerSet, client: MediaClient, events: list[MediaEvent], data_dir: Path, lost: list[Any]) -> None:
        self.workers = workers
        self.client = client
        self.events = events
        self.data_dir = data_dir
        self.lost = lost

    async def event(self, kind: type[MediaEvent], timeout: float = 5.0) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for event in self.events:
                if isinstance(event, kind):
                    self.events.remove(event)
                    return event
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {kind.__name__} event in {timeout} s (got {self.events})")


async def start(tmp_path: Path, count: int = 1, pairs: int = 20, **overrides: Any) -> Media:
    events: list[MediaEvent] = []
    lost: list[Any] = []
    settings = BuiltinMediaSettings(
        workers=count, bind=LOCAL, port_min=BASE_PORT, port_max=BASE_PORT + 2 * pairs * count - 1, **overrides
    )
    workers, client = await spawn_media_workers(
        settings, data_dir=tmp_path, on_event=events.append, on_worker_lost=lambda i, calls: lost.append((i, calls)), log_level="critical"
    )
    return Media(workers, client, events, tmp_path, lost)


@pytest.fixture
async def media(tmp_path: Path) -> AsyncIterator[Media]:
    m = await start(tmp_path, rtp_timeout_s=0)
    yield m
    m.client.close()
    await m.workers.stop()


@pytest.fixture
def phones() -> Any:
    made: list[Phone] = []

    def make() -> Phone:
        phone = Phone()
        made.append(phone)
        return phone

    yield make
    for phone in made:
        phone.close()


async def setup_call(client: MediaClient, a_sdp: str, b_sdp: str, call_id: str = "call-1") -> tuple[int, int]:
    to_b = await client.offer(call_id, "ta", a_sdp)
    to_a = await client.answer(call_id, "ta", "tb", b_sdp)
    return parse_sdp(to_a).media[0].port, parse_sdp(to_b).media[0].port


def peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * 8000 / samples.size)


async def test_real_udp_is_relayed_and_a_natted_phone_is_latched(media: Media, phones: Any) -> None:
    a, b = phones(), phones()
    # A advertises an address nothing listens on (its private address behind NAT)
    port_a, port_b = await setup_call(media.client, party_sdp(LOCAL, 9), party_sdp(*b.addr))
    a.send(rtp(1, 160, 0xA), port_a)
    data, src = await b.recv()
    assert data == rtp(1, 160, 0xA) and src == (LOCAL, port_b)  # symmetric: from B's port of ours
    b.send(rtp(7, 800, 0xB), port_b)
    data, src = await a.recv()  # reaches A where its packets came from, not the SDP's port 9
    assert data == rtp(7, 800, 0xB) and src == (LOCAL, port_a)
    status = (await media.client.status())[0]
    assert status["sessions"] == 1 and status["ports_in_use"] == 4 and status["packets_out"] == 2
    stats = await media.client.query("call-1")
    assert stats["legs"][0]["streams"][0]["latched"] == f"{LOCAL}:{a.port}"


async def test_the_remaining_phone_hears_one_stream_across_a_leg_replacement(media: Media, phones: Any) -> None:
    a, b, c = phones(), phones(), phones()
    port_a, port_b = await setup_call(media.client, party_sdp(*a.addr), party_sdp(*b.addr))
    a.send(rtp(1, 0, 0xA), port_a)
    await b.recv()
    for i in range(10):
        b.send(rtp(40000 + i, 5000 + 160 * i, 0xB0B), port_b)
    before = [parse_rtp(d) for d in await a.recv_all(0.3)]
    assert [p[2] for p in before] == list(range(40000, 40010))
    offer = await media.client.replace("call-1", "tb", "tc")
    port_c = parse_sdp(offer).media[0].port
    await media.client.answer("call-1", "ta", "tc", party_sdp(*c.addr))
    for i in range(10):
        c.send(rtp(123 + i, 777777 + 160 * i, 0xC0C), port_c)
    after = [parse_rtp(d) for d in await a.recv_all(0.3)]
    assert [p[4] for p in after] == [0xB0B] * 10
    assert [p[2] for p in after] == list(range(40010, 40020))
    assert after[0][1] is True and after[0][3] > before[-1][3]
    assert [p[3] - after[0][3] for p in after] == [160 * i for i in range(10)]
    a.send(rtp(2, 160, 0xA), port_a)
    data, src = await c.recv()
    assert parse_rtp(data)[4] == 0xA and src == (LOCAL, port_c)


async def test_rtp_timeout_reaches_the_sip_side(tmp_path: Path, phones: Any) -> None:
    m = await start(tmp_path, rtp_timeout_s=1.0)
    try:
        a, b = phones(), phones()
        port_a, _ = await setup_call(m.client, party_sdp(*a.addr), party_sdp(*b.addr))
        a.send(rtp(1, 0, 1), port_a)
        event = await m.event(MediaRtpTimeout, timeout=4.0)
        assert event.call_id == "call-1" and event.tag in ("ta", "tb") and event.idle_s >= 1.0
    finally:
        m.client.close()
        await m.workers.stop()


async def test_port_exhaustion_is_a_clear_error_and_existing_calls_go_on(tmp_path: Path, phones: Any) -> None:
    m = await start(tmp_path, pairs=4, rtp_timeout_s=0)  # 4 pairs: 2 calls
    try:
        a, b = phones(), phones()
        port_a, _port_b = await setup_call(m.client, party_sdp(*a.addr), party_sdp(*b.addr), "c1")
        await m.client.offer("c2", "x", party_sdp(LOCAL, 9))
        with pytest.raises(MediaRequestError) as info:
            await m.client.offer("c3", "x", party_sdp(LOCAL, 9))
        assert info.value.code == "ports_exhausted" and "no free RTP port" in str(info.value)
        a.send(rtp(1, 0, 1), port_a)
        assert (await b.recv())[0] == rtp(1, 0, 1)
        await m.client.delete("c2")
        await m.client.offer("c3", "x", party_sdp(LOCAL, 9))
    finally:
        m.client.close()
        await m.workers.stop()


async def test_dtmf_in_the_relayed_stream_is_detected_and_sent(media: Media, phones: Any) -> None:
    a, b = phones(), phones()
    port_a, _port_b = await setup_call(media.client, party_sdp(*a.addr), party_sdp(*b.addr))
    seq = 0
    for k in range(4):
        a.send(rtp(seq, 1000, 0xA, encode_event(9, 160 * (k + 1)), pt=101, marker=k == 0), port_a)
        seq += 1
    for _ in range(3):
        a.send(rtp(seq, 1000, 0xA, encode_event(9, 640, end=True), pt=101), port_a)
        seq += 1
    event = await media.event(MediaDtmf)
    assert (event.digit, event.tag, event.duration_ms) == ("9", "ta", 80)
    assert len(await b.recv_all(0.2)) == 7  # forwarded too
    await media.client.request(MediaSendDtmf("call-1", "tb", "42", duration_ms=60))
    got = [parse_rtp(d) for d in await b.recv_all(0.8)]
    ends = {(p[3], p[5][0]) for p in got if p[0] == 101 and p[5][1] & 0x80}
    assert sorted(code for _, code in ends) == [2, 4]


async def test_a_prompt_is_paced_and_decodes_to_its_tone(tmp_path: Path, phones: Any) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    write_wav(prompts / "hello.wav", tone(440, 0.6))
    m = await start(tmp_path, rtp_timeout_s=0, prompt_dirs=[str(prompts)])
    try:
        a, b = phones(), phones()
        await setup_call(m.client, party_sdp(*a.addr, codecs="8 101"), party_sdp(*b.addr))
        result = await m.client.request(MediaPlay("call-1", "ta", prompt="hello"))
        assert result["seconds"] == pytest.approx(0.6)
        started = time.monotonic()
        packets = [parse_rtp(d) for d in await a.recv_all(1.0)]
        assert len(packets) == 30 and packets[0][1] is True and {p[0] for p in packets} == {8}
        assert [(p[3] - packets[0][3]) for p in packets] == [160 * i for i in range(30)]
        assert [(p[2] - packets[0][2]) & 0xFFFF for p in packets] == list(range(30))
        pcm = g711.decode(b"".join(p[5] for p in packets), "PCMA")
        assert abs(peak_hz(pcm) - 440) < 10
        done = await m.event(MediaPlayDone)
        assert done.name == "hello" and not done.stopped
        assert 0.5 < time.monotonic() - started < 1.5
        await m.client.request(MediaPlay("call-1", "ta", prompt="test-1k"))
        pcm = g711.decode(b"".join(parse_rtp(d)[5] for d in await a.recv_all(0.5)), "PCMA")
        assert abs(peak_hz(pcm) - 1000) < 15
        with pytest.raises(MediaRequestError) as info:
            await m.client.request(MediaPlay("call-1", "ta", prompt="../etc/passwd"))
        assert info.value.code == "not_found"
    finally:
        m.client.close()
        await m.workers.stop()


def _tone_packets(freq: float, seconds: float, ssrc: int) -> list[bytes]:
    encoded = g711.encode(tone(freq, seconds), "PCMU")
    return [rtp(i, 160 * i, ssrc, encoded[160 * i : 160 * (i + 1)]) for i in range(len(encoded) // 160)]


async def _talk(a: Phone, b: Phone, port_a: int, port_b: int, seconds: float) -> None:
    pa, pb = _tone_packets(440, seconds, 0xA), _tone_packets(1000, seconds, 0xB)
    start_at = time.monotonic()
    for i, (x, y) in enumerate(zip(pa, pb, strict=True)):
        a.send(x, port_a)
        b.send(y, port_b)
        await asyncio.sleep(max(0.0, start_at + 0.02 * (i + 1) - time.monotonic()))


def _check_stereo(path: Path, seconds: float) -> None:
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert frames.shape[0] >= 8000 * seconds * 0.8
    left, right = frames[:, 0], frames[:, 1]
    assert abs(peak_hz(left) - 440) < 10 and abs(peak_hz(right) - 1000) < 10
    # each party only on its own channel: the other tone is far below
    spec_l = np.abs(np.fft.rfft(left.astype(float)))
    assert spec_l[round(1000 * left.size / 8000)] < 0.01 * spec_l.max()


async def test_recording_gives_each_party_its_own_channel(media: Media, phones: Any) -> None:
    a, b = phones(), phones()
    port_a, port_b = await setup_call(media.client, party_sdp(*a.addr), party_sdp(*b.addr))
    started = await media.client.request(MediaRecordStart("call-1", name="rec-test"))
    assert "/spool/" in started["path"]
    await _talk(a, b, port_a, port_b, 1.0)
    stopped = await media.client.request(MediaRecordStop("call-1"))
    path = Path(stopped["path"])
    assert path.parent == media.data_dir / "recordings" and path.name == "w0-rec-test.wav"
    assert not Path(started["path"]).exists()
    _check_stereo(path, 1.0)
    event = await media.event(MediaRecordingClosed)
    assert event.reason == "stopped" and event.path == str(path)


async def test_a_recording_is_intact_after_sigterm(tmp_path: Path, phones: Any) -> None:
    m = await start(tmp_path, rtp_timeout_s=0)
    try:
        a, b = phones(), phones()
        port_a, port_b = await setup_call(m.client, party_sdp(*a.addr), party_sdp(*b.addr))
        await m.client.request(MediaRecordStart("call-1", name="killed"))
        await _talk(a, b, port_a, port_b, 1.2)
        proc = m.workers.procs[0]
        proc.send_signal(signal.SIGTERM)
        for _ in range(200):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.02)
        assert proc.returncode == 0
        path = tmp_path / "recordings" / "w0-killed.wav"
        _check_stereo(path, 1.2)
    finally:
        m.client.close()
        await m.workers.stop()


async def test_a_spool_file_left_by_a_killed_worker_is_recovered_valid(tmp_path: Path, phones: Any) -> None:
    m = await start(tmp_path, rtp_timeout_s=0, recording={"sync_s": 0.2})
    try:
        a, b = phones(), phones()
        port_a, port_b = await setup_call(m.client, party_sdp(*a.addr), party_sdp(*b.addr))
        await m.client.request(MediaRecordStart("call-1", name="kill9"))
        await _talk(a, b, port_a, port_b, 1.2)
        await asyncio.sleep(0.5)
        m.workers.procs[0].kill()
        m.workers.procs[0].wait()
        _check_stereo(tmp_path / "recordings" / "spool" / "w0-kill9.wav", 0.8)
    finally:
        m.client.close()
        await m.workers.stop()
    m2 = await start(tmp_path, rtp_timeout_s=0)  # the next start moves it to the archive
    try:
        _check_stereo(tmp_path / "recordings" / "w0-kill9.wav", 0.8)
    finally:
        m2.client.close()
        await m2.workers.stop()


async def test_calls_are_spread_over_two_media_workers(tmp_path: Path, phones: Any) -> None:
    m = await start(tmp_path, count=2, pairs=10, rtp_timeout_s=0)
    try:
        used = set()
        for n in range(8):
            result = await m.client.request(MediaOffer(f"call-{n}", "a", party_sdp(LOCAL, 9)))
            used.add(result["worker"])
            assert result["worker"] == m.client.worker_for(f"call-{n}")
        assert used == {0, 1}
        statuses = await m.client.status()
        assert [s["index"] for s in statuses] == [0, 1]
        assert sum(s["sessions"] for s in statuses) == 8
        assert statuses[0]["port_max"] < statuses[1]["port_min"]
    finally:
        m.client.close()
        await m.workers.stop()


async def test_a_dead_media_worker_is_reported_and_new_calls_go_elsewhere(tmp_path: Path) -> None:
    m = await start(tmp_path, count=2, pairs=10, rtp_timeout_s=0)
    try:
        calls = {n: (await m.client.request(MediaOffer(f"call-{n}", "a", party_sdp(LOCAL, 9))))["worker"] for n in range(8)}
        m.workers.procs[1].kill()
        m.workers.procs[1].wait()
        for _ in range(100):
            if m.lost:
                break
            await asyncio.sleep(0.02)
        index, lost_calls = m.lost[0]
        assert index == 1 and sorted(lost_calls) == sorted(f"call-{n}" for n, w in calls.items() if w == 1)
        homeless = next(f"call-{n}" for n, w in calls.items() if w == 1)
        with pytest.raises(MediaRequestError) as info:
            await m.client.query(homeless)
        assert info.value.code == "worker_lost"
        result = await m.client.request(MediaOffer(homeless, "a", party_sdp(LOCAL, 9)))  # a new call: overflow
        assert result["worker"] == 0 and m.client.worker_for(homeless) == 0
        statuses = await m.client.status()
        assert statuses[1] == {"index": 1, "error": "media worker 1 is not running"}
    finally:
        m.client.close()
        await m.workers.stop()


async def test_an_srtp_phone_is_bridged_to_a_plain_one(media: Media, phones: Any) -> None:
    import base64

    import pylibsrtp

    from vivait_sip.media.srtp import parse_crypto

    a, b = phones(), phones()
    key_a = os.urandom(30)
    a_sdp = party_sdp(*a.addr).replace("RTP/AVP", "RTP/SAVP") + f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(key_a).decode()}\r\n"
    to_b = parse_sdp(await media.client.offer("call-1", "ta", a_sdp, transport_protocol="RTP/AVP"))
    to_a = parse_sdp(await media.client.answer("call-1", "ta", "tb", party_sdp(*b.addr)))
    assert to_b.media[0].proto == "RTP/AVP" and to_a.media[0].proto == "RTP/SAVP"
    ours = parse_crypto(to_a.media[0].attribute("crypto"))
    assert ours is not None
    tx = pylibsrtp.Session(pylibsrtp.Policy(key=key_a, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    rx = pylibsrtp.Session(pylibsrtp.Policy(key=ours.key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    a.send(tx.protect(rtp(1, 0, 0xA)), to_a.media[0].port)
    assert (await b.recv())[0] == rtp(1, 0, 0xA)
    b.send(rtp(9, 160, 0xB), to_b.media[0].port)
    assert rx.unprotect((await a.recv())[0]) == rtp(9, 160, 0xB)


async def test_a_second_sip_worker_talks_to_the_media_workers_over_its_own_links(tmp_path: Path, phones: Any) -> None:
    events: list[MediaEvent] = []
    settings = BuiltinMediaSettings(workers=2, bind=LOCAL, port_min=BASE_PORT, port_max=BASE_PORT + 39, rtp_timeout_s=1.0)
    workers, client0 = await spawn_media_workers(settings, data_dir=tmp_path, sip_workers=2, on_event=events.append, log_level="critical")
    theirs: list[MediaEvent] = []
    client1 = MediaClient(2, on_event=theirs.append)
    try:
        fds = {m: os.dup(fd) for m, fd in workers.fds_for(1).items()}  # what SIP worker 1 inherits
        workers.close_fds_for(1)
        await client1.connect(fds)
        assert [r.index for r in await client1.wait_ready(5.0)] == [0, 1]
        a, b = phones(), phones()
        port_a, _ = await setup_call(client1, party_sdp(*a.addr), party_sdp(*b.addr), "from-sip-worker-1")
        a.send(rtp(1, 0, 1), port_a)
        assert (await b.recv())[0] == rtp(1, 0, 1)
        for _ in range(150):  # the RTP timeout goes to the SIP worker that made the session
            if theirs:
                break
            await asyncio.sleep(0.02)
        assert [type(e) for e in theirs] == [MediaRtpTimeout] and events == []
    finally:
        client1.close()
        client0.close()
        await workers.stop()


async def test_hanging_up_closes_the_recording_and_says_where_it_is(media: Media, phones: Any) -> None:
    a, b = phones(), phones()
    port_a, port_b = await setup_call(media.client, party_sdp(*a.addr), party_sdp(*b.addr))
    await media.client.request(MediaRecordStart("call-1", name="hangup"))
    await _talk(a, b, port_a, port_b, 1.0)
    await media.client.delete("call-1")
    event = await media.event(MediaRecordingClosed)
    assert event.reason == "call_ended" and event.path.endswith("/recordings/w0-hangup.wav")
    _check_stereo(Path(event.path), 1.0)
