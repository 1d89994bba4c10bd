"""`RtpengineBackend` against the real Debian rtpengine daemon (userspace forwarding):
offer/answer/delete of a plain RTP/AVP call rewrite SDP to rtpengine's address and ports,
RTP is relayed between two UDP sockets both ways, query returns per-leg stats, ping
health, and failover between two daemons (one killed: new calls go to the other, calls
on the survivor keep working, calls on the dead one fail clearly).  The anchoring seam
is driven over the real daemon too, as the B2BUA drives it."""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from peer_phones import tone_share, ulaw_samples
from rtpengine_proc import Rtpengine

from vivait_sip.media.anchor import AnchoringPolicy, AnchoringSeam
from vivait_sip.media.audio import g711
from vivait_sip.media.audio.tones import tone
from vivait_sip.media.audio.wav import write_wav
from vivait_sip.media.control import (
    Answer,
    CallKey,
    Delete,
    MediaFlags,
    MediaReply,
    Offer,
    Ping,
    PlayMedia,
    Query,
    Replace,
    StopMedia,
)
from vivait_sip.media.ng import NgClient, RtpengineBackend
from vivait_sip.media.prompts import Prompts
from vivait_sip.media.rtpe_sounds import RtpengineSounds
from vivait_sip.sip.message import Request, parse_message

pytestmark = pytest.mark.timeout(60)
REWRITE = MediaFlags(replace=(Replace.ORIGIN, Replace.SESSION_CONNECTION))


def sdp(address: str, port: int, user: str = "phone") -> bytes:
    return (
        f"v=0\r\no={user} 1 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    ).encode()


def media_of(body: bytes) -> tuple[str, int]:
    text = body.decode()
    address = re.search(r"^c=IN IP4 (\S+)", text, re.M)
    port = re.search(r"^m=audio (\d+) ", text, re.M)
    assert address and port, text
    return address.group(1), int(port.group(1))


def rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + bytes([0xFF]) * 160


class Phone(asyncio.DatagramProtocol):
    """An RTP endpoint on its own loopback address (127.0.0.x), as a phone would be."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.transport: Any = None

    @classmethod
    async def open(cls, host: str) -> Phone:
        loop = asyncio.get_running_loop()
        _, phone = await loop.create_datagram_endpoint(cls, local_addr=(host, 0))
        return phone

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def sdp(self, user: str) -> bytes:
        return sdp(*self.address, user=user)

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        self.transport.sendto(data, to)

    async def receive(self, timeout: float = 2.0) -> tuple[bytes, Any]:
        return await asyncio.wait_for(self.queue.get(), timeout)

    def close(self) -> None:
        self.transport.close()


@pytest.fixture
async def daemon() -> AsyncIterator[Rtpengine]:
    proc = await Rtpengine().start()
    yield proc
    proc.stop()


@pytest.fixture
async def two_daemons() -> AsyncIterator[tuple[Rtpengine, Rtpengine]]:
    one = await Rtpengine().start()
    two = await Rtpengine().start()
    yield one, two
    one.stop()
    two.stop()


async def backend_for(*daemons: Rtpengine, **kwargs: Any) -> RtpengineBackend:
    options: dict[str, Any] = {"timeout_s": 1.0, "retransmit_s": 0.1, "ping_interval_s": 0, "down_after": 1, "up_after": 1}
    options.update(kwargs)
    backend = RtpengineBackend([d.address for d in daemons], **options)
    await backend.start()
    return backend


@dataclass
class AnchoredCall:
    """Two phones and the SDP each was given (the relay's address and port towards it)."""

    call_id: str
    alice: Phone
    bob: Phone
    to_alice: tuple[str, int] = ("", 0)  # where bob's RTP goes: what alice's answer says
    to_bob: tuple[str, int] = ("", 0)  # where alice's RTP goes: what bob's offer says
    replies: list[MediaReply] = field(default_factory=list)

    def close(self) -> None:
        self.alice.close()
        self.bob.close()


async def anchored_call(backend: RtpengineBackend, call_id: str) -> AnchoredCall:
    alice, bob = await Phone.open("127.0.0.2"), await Phone.open("127.0.0.3")
    call = AnchoredCall(call_id, alice, bob)
    offered = await backend.request(Offer(CallKey(call_id, "alice-tag"), alice.sdp("alice"), REWRITE))
    assert offered.ok, offered.error
    call.to_bob = media_of(offered.sdp or b"")  # bob is told to send here (and alice's RTP goes here)
    answered = await backend.request(Answer(CallKey(call_id, "alice-tag", "bob-tag"), bob.sdp("bob"), REWRITE))
    assert answered.ok, answered.error
    call.to_alice = media_of(answered.sdp or b"")
    call.replies = [offered, answered]
    return call


async def exchange(call: AnchoredCall, count: int = 5) -> None:
    """`count` RTP packets each way; each arrives, from the relay, intact."""
    for seq in range(count):
        call.alice.send(rtp(seq, 0xA11CE), call.to_alice)
        data, source = await call.bob.receive()
        assert data == rtp(seq, 0xA11CE) and source[0] == "127.0.0.1"
        call.bob.send(rtp(seq, 0xB0B), call.to_bob)
        data, source = await call.alice.receive()
        assert data == rtp(seq, 0xB0B) and source[0] == "127.0.0.1"


async def test_offer_answer_rewrite_sdp_to_rtpengine_and_rtp_is_relayed(daemon: Rtpengine) -> None:
    backend = await backend_for(daemon)
    call = await anchored_call(backend, "relay-1@test")
    offered, answered = call.replies
    for reply, to in ((offered, call.to_bob), (answered, call.to_alice)):
        assert reply.backend == f"rtpengine {daemon.address}"
        assert to[0] == "127.0.0.1" and daemon.port_min <= to[1] <= daemon.port_max  # rtpengine's, not the phone's
        assert b"127.0.0.2" not in (reply.sdp or b"") and b"127.0.0.3" not in (reply.sdp or b"")
        assert b"a=rtpmap:101 telephone-event/8000" in (reply.sdp or b"")  # codecs kept
    assert call.to_alice != call.to_bob
    await exchange(call, 5)
    stats = await backend.request(Query("relay-1@test"))
    assert stats.ok
    legs = {leg.tag: leg for leg in stats.legs}
    assert legs["alice-tag"].packets == 5 and legs["bob-tag"].packets == 5
    assert legs["alice-tag"].bytes == 5 * 172 and legs["alice-tag"].address == f"127.0.0.2:{call.alice.address[1]}"
    deleted = await backend.request(Delete("relay-1@test"))
    assert deleted.ok and backend.sessions == 0
    raw = NgClient("127.0.0.1", daemon.ng_port)
    gone = await raw.request({"command": "query", "call-id": "relay-1@test"})
    assert gone == {"result": b"error", "error-reason": b"Unknown call-id"}  # rtpengine has let it go
    await raw.stop()
    call.alice.send(rtp(99, 0xA11CE), call.to_alice)
    with pytest.raises(asyncio.TimeoutError):
        await call.bob.receive(timeout=0.3)  # nothing relayed after delete
    call.close()
    await backend.stop()


async def test_ping_health(daemon: Rtpengine) -> None:
    backend = await backend_for(daemon, down_after=2, up_after=2)
    assert backend.daemons[0].state == "up" and backend.healthy
    pong = await backend.request(Ping())
    assert pong.result == "pong" and pong.backend == f"rtpengine {daemon.address}"
    daemon.kill()
    await backend.check_health()
    assert backend.daemons[0].state == "up"  # hysteresis: one failed ping is not down
    await backend.check_health()
    assert backend.daemons[0].state == "down" and not backend.healthy
    assert "refused" in (backend.daemons[0].last_error or "")
    status = backend.status()
    assert status["healthy"] is False and status["daemons"][0]["state"] == "down"  # type: ignore[index]
    await backend.stop()


async def test_failover_between_two_daemons(two_daemons: tuple[Rtpengine, Rtpengine]) -> None:
    one, two = two_daemons
    backend = await backend_for(one, two)
    on_one = await anchored_call(backend, "on-one@test")
    on_two = await anchored_call(backend, "on-two@test")
    assert backend.daemon_of("on-one@test") == one.address and backend.daemon_of("on-two@test") == two.address
    assert one.port_min <= on_one.to_bob[1] <= one.port_max and two.port_min <= on_two.to_bob[1] <= two.port_max
    await exchange(on_one, 2)
    await exchange(on_two, 2)

    one.kill()
    # A new call tries the first daemon (equal sessions), is refused at once, and goes to the survivor.
    new = await anchored_call(backend, "new@test")
    assert backend.daemon_of("new@test") == two.address and backend.counters["failovers"] == 1
    assert backend.daemons[0].state == "down"
    await exchange(new, 3)
    # The call already on the survivor keeps its daemon and its media.
    await exchange(on_two, 3)
    requery = await backend.request(Query("on-two@test"))
    assert requery.ok and requery.backend == f"rtpengine {two.address}"
    assert {leg.tag: leg.packets for leg in requery.legs} == {"alice-tag": 5, "bob-tag": 5}
    # The call on the dead daemon is not moved (its media state is there): a clear error.
    lost = await backend.request(Query("on-one@test"))
    assert not lost.ok and f"rtpengine {one.address} holding call on-one@test is down" in (lost.error or "")
    # Further new calls go straight to the survivor, no failover needed.
    later = await anchored_call(backend, "later@test")
    assert backend.daemon_of("later@test") == two.address and backend.counters["failovers"] == 1
    for call in (on_one, on_two, new, later):
        assert (await backend.request(Delete(call.call_id))).ok
        call.close()
    assert backend.sessions == 0
    await backend.stop()


class _SeamCall:
    """What the seam reads of a B2BUA call."""

    def __init__(self, call_id: str, from_tag: str) -> None:
        raw = (
            f"INVITE sip:6141@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK1\r\n"
            f"From: <sip:6140@127.0.0.1>;tag={from_tag}\r\nTo: <sip:6141@127.0.0.1>\r\nCall-ID: {call_id}\r\n"
            "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        request = parse_message(raw)
        assert isinstance(request, Request)
        self.request = request
        self.call_uuid = call_id.replace("@", "-")
        self.rule: str | None = "anchored"
        self.user: str | None = "6140"
        self.callee_user: str | None = "6141"
        self.extra: dict[str, object] = {}


async def test_the_anchoring_seam_over_real_rtpengine_with_a_hold_reinvite(daemon: Rtpengine) -> None:
    """The steps the B2BUA takes for an anchored call, hold included, on the real daemon."""
    backend = await backend_for(daemon)
    seam = AnchoringSeam(backend, AnchoringPolicy(rules={"anchored": "anchor"}), timeout_s=5)
    call = _SeamCall("seam-1@test", "alice-from-tag")
    alice, bob = await Phone.open("127.0.0.2"), await Phone.open("127.0.0.3")
    to_bob = await seam.offer(call, "callee", alice.sdp("alice"))  # type: ignore[misc]  # INVITE to bob
    to_alice = await seam.answer(call, "caller", bob.sdp("bob"))  # type: ignore[misc]  # 200 to alice
    pair = AnchoredCall("seam-1@test", alice, bob, to_alice=media_of(to_alice), to_bob=media_of(to_bob))
    await exchange(pair, 3)
    hold = bob.sdp("bob").replace(b"a=sendrecv", b"a=sendonly")
    held = await seam.offer(call, "caller", hold)  # type: ignore[misc]  # bob's hold re-INVITE to alice
    assert b"a=sendonly" in held and media_of(held) == pair.to_alice  # same relay port towards alice
    ok = await seam.answer(call, "callee", alice.sdp("alice").replace(b"a=sendrecv", b"a=recvonly"))  # type: ignore[misc]
    assert b"a=recvonly" in ok and media_of(ok) == pair.to_bob
    assert call.extra["media"] == "anchored (rule anchored)"
    release = seam.release(call)
    assert release is not None
    await release
    assert backend.sessions == 0 and seam.active == 0
    pair.close()
    await backend.stop()


async def drain(phone: Phone) -> None:
    while not phone.queue.empty():
        phone.queue.get_nowait()


@pytest.mark.parametrize("offerer", ["new party", "kept party"])
async def test_a_transfer_replaces_a_party_on_real_rtpengine_and_the_kept_party_keeps_its_ports(
    daemon: Rtpengine, offerer: str
) -> None:
    """The seam's `transfer` on the real daemon: alice (kept) talks to bob, then carol
    takes bob's place (`ReplaceParty`: an offer between carol's new tag and alice's,
    port-latching, then bob's branch deleted).  Alice's port on rtpengine does not change,
    carol's RTP reaches alice from it, and bob's does not any more.  "new party": carol's
    2xx offer (a blind transfer's target); "kept party": alice offers (a late-offer
    INVITE with Replaces)."""
    backend = await backend_for(daemon)
    seam = AnchoringSeam(backend, AnchoringPolicy(rules={"anchored": "anchor"}), timeout_s=5)
    old = _SeamCall("xfer-1@test", "alice-from-tag")
    alice, bob, carol = await Phone.open("127.0.0.2"), await Phone.open("127.0.0.3"), await Phone.open("127.0.0.4")
    to_bob = await seam.offer(old, "callee", alice.sdp("alice"))  # type: ignore[misc]
    to_alice = await seam.answer(old, "caller", bob.sdp("bob"))  # type: ignore[misc]
    pair = AnchoredCall("xfer-1@test", alice, bob, to_alice=media_of(to_alice), to_bob=media_of(to_bob))
    await exchange(pair, 3)

    new = _SeamCall("xfer-2@test", "unused")
    assert seam.transfer(new, old, kept="caller", kept_as="caller")  # type: ignore[arg-type]
    if offerer == "new party":
        offer_to_alice = await seam.offer(new, "caller", carol.sdp("carol"))  # type: ignore[misc]
        answer_to_carol = await seam.answer(new, "callee", alice.sdp("alice"))  # type: ignore[misc]
        to_carol = media_of(answer_to_carol)
    else:
        offer_to_carol = await seam.offer(new, "callee", alice.sdp("alice"))  # type: ignore[misc]
        offer_to_alice = await seam.answer(new, "caller", carol.sdp("carol"))  # type: ignore[misc]
        to_carol = media_of(offer_to_carol)
    assert media_of(offer_to_alice) == pair.to_alice  # alice keeps talking to the same port
    assert daemon.port_min <= to_carol[1] <= daemon.port_max and to_carol not in (pair.to_alice, pair.to_bob)
    assert seam.taken_over(old) and seam.replaced(new)
    await drain(alice)
    for seq in range(5):
        carol.send(rtp(seq, 0xCA201), to_carol)
        data, source = await alice.receive()
        assert data[8:12] == struct.pack("!I", 0xCA201) and source == pair.to_alice  # from alice's own port
        alice.send(rtp(100 + seq, 0xA11CE), pair.to_alice)
        data, _ = await carol.receive()
        assert data[8:12] == struct.pack("!I", 0xA11CE)
    bob.send(rtp(50, 0xB0B), pair.to_bob)  # bob's branch is gone: nothing of his reaches alice
    with pytest.raises(asyncio.TimeoutError):
        while True:
            data, _ = await alice.receive(timeout=0.3)
            assert data[8:12] != struct.pack("!I", 0xB0B)
    queried = await backend.request(Query("xfer-1@test"))
    packets = {leg.tag: leg.packets for leg in queried.legs}
    assert packets["alice-from-tag"] >= 8 and packets[seam.tag_of(new, "callee") or ""] == 5, packets  # type: ignore[arg-type]
    assert seam.release(old) is None  # taken over: the transfer's call deletes the session
    release = seam.release(new)
    assert release is not None
    await release  # (rtpengine 10.5 answers a whole call's delete without statistics)
    assert backend.sessions == 0
    pair.close()
    carol.close()
    await backend.stop()


# ---- prompts, music on hold and statistics through rtpengine ----------------------------------


def sounds_for(tmp: Path, **kwargs: Any) -> RtpengineSounds:
    tune = tmp / "tune"
    tune.mkdir()
    write_wav(tune / "a.wav", tone(600, 11.0))  # with the second of silence after it: 12 s, over a WAV blob
    return RtpengineSounds(Prompts([], {"tune": str(tune)}), **kwargs)


async def collect(phone: Phone, seconds: float) -> list[tuple[bytes, Any]]:
    got: list[tuple[bytes, Any]] = []
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            got.append(await phone.receive(timeout=left))
        except TimeoutError:
            break
    return got


def ssrc_of(packet: bytes) -> int:
    return int(struct.unpack("!I", packet[8:12])[0])


async def keep_sending(phone: Phone, to: tuple[str, int], ssrc: int, hz: float, stop: asyncio.Event) -> None:
    payload = g711.encode(tone(hz, 0.02), "PCMU")
    seq = 0
    while not stop.is_set():
        phone.send(struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + payload, to)
        seq += 1
        await asyncio.sleep(0.02)


async def test_a_named_prompt_plays_through_rtpengine_and_the_other_party_is_blocked_meanwhile(
    daemon: Rtpengine, tmp_path: Path
) -> None:
    """`PlayMedia(file="test-1k")` (a prompt name, as the B2BUA sends it) reaches alice as
    the generated 1 kHz tone, from her own rtpengine port, in a stream of its own; bob's RTP,
    which rtpengine 10.5 would otherwise interleave with it, is blocked while it plays and
    heard again after `StopMedia`.  Then music on hold of a 12 s class (an Ogg/Opus blob)
    loops until stopped.  The whole call's delete carries each party's statistics (asked
    with a query just before: 10.5's delete has none)."""
    backend = await backend_for(daemon, sounds=sounds_for(tmp_path).resolve)
    call = await anchored_call(backend, "play-1@test")
    stop = asyncio.Event()
    senders = [asyncio.create_task(keep_sending(call.alice, call.to_alice, 0xA11CE, 400, stop)),
               asyncio.create_task(keep_sending(call.bob, call.to_bob, 0xB0B, 700, stop))]
    try:
        await asyncio.sleep(0.3)
        played = await backend.request(PlayMedia(CallKey("play-1@test", "alice-tag"), file="test-1k"))
        assert played.ok and played.duration_ms == 1000, played
        await drain(call.alice)
        got = await collect(call.alice, 1.0)
        assert {source for _, source in got} == {call.to_alice}  # from alice's own rtpengine port
        ssrcs = {ssrc_of(data) for data, _ in got}
        assert 0xB0B not in ssrcs and len(ssrcs) == 1, ssrcs  # bob blocked: the prompt alone
        assert tone_share(ulaw_samples([data[12:] for data, _ in got]), 1000) > 0.9
        assert (await backend.request(StopMedia(CallKey("play-1@test", "alice-tag")))).ok
        await asyncio.sleep(0.2)
        await drain(call.alice)
        after = await collect(call.alice, 0.5)
        assert {ssrc_of(data) for data, _ in after} == {0xB0B}  # bob again, alone

        moh = await backend.request(PlayMedia(CallKey("play-1@test", "alice-tag"), file="moh:tune", repeat=0))
        assert moh.ok and 11_900 <= (moh.duration_ms or 0) <= 12_100, moh
        await asyncio.sleep(0.3)
        await drain(call.alice)
        music = await collect(call.alice, 1.5)
        assert 0xB0B not in {ssrc_of(data) for data, _ in music}
        assert tone_share(ulaw_samples([data[12:] for data, _ in music]), 600) > 0.8
        assert (await backend.request(StopMedia(CallKey("play-1@test", "alice-tag")))).ok
        await asyncio.sleep(0.2)
        await drain(call.alice)
        assert {ssrc_of(data) for data, _ in await collect(call.alice, 0.5)} == {0xB0B}
    finally:
        stop.set()
        await asyncio.gather(*senders)
    deleted = await backend.request(Delete("play-1@test"))
    assert deleted.ok
    legs = {leg.tag: leg for leg in deleted.legs}
    assert set(legs) == {"alice-tag", "bob-tag"}, deleted
    for leg, phone in ((legs["alice-tag"], call.alice), (legs["bob-tag"], call.bob)):
        assert leg.packets > 150 and leg.bytes == leg.packets * 172 and leg.errors == 0, leg
        assert leg.address == f"{phone.address[0]}:{phone.address[1]}"
    call.close()
    await backend.stop()


async def test_a_prompt_too_long_for_a_blob_is_refused_or_played_from_the_media_dir(
    daemon: Rtpengine, tmp_path: Path
) -> None:
    """A 12 s sound with neither WAV nor Opus allowed to carry it (blob limit 20 kB, Opus
    off): refused with the reason; with `media_dir` it is played from that directory on
    the daemon's machine (here the same machine)."""
    media_dir = tmp_path / "daemon-media"
    (media_dir / "moh").mkdir(parents=True)
    sounds = sounds_for(tmp_path, blob_max=20_000, opus=False)
    backend = await backend_for(daemon, sounds=sounds.resolve)
    call = await anchored_call(backend, "play-2@test")
    refused = await backend.request(PlayMedia(CallKey("play-2@test", "alice-tag"), file="moh"))
    assert not refused.ok and "too long for one NG message" in (refused.error or ""), refused
    write_wav(media_dir / "moh.wav", tone(1000, 3.0))
    sounds.media_dir = str(media_dir)
    sounds._cache.clear()
    played = await backend.request(PlayMedia(CallKey("play-2@test", "alice-tag"), file="moh"))
    assert played.ok and played.duration_ms == 3000, played  # the daemon's file, not our 12 s tune
    await drain(call.alice)
    got = await collect(call.alice, 1.0)
    assert len(got) > 30 and tone_share(ulaw_samples([data[12:] for data, _ in got]), 1000) > 0.9
    assert (await backend.request(Delete("play-2@test"))).ok
    call.close()
    await backend.stop()
