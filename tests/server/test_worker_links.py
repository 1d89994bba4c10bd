"""The worker links in one process: frames, ownership, events, calls, lost links."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vivait_sip.contract import (
    WorkerMessage,
    decode_message,
    encode_message,
    mint_call_id,
    worker_message,
)
from vivait_sip.core import owner_key
from vivait_sip.sip.message import parse_message
from vivait_sip.sip.peer import Peer
from vivait_sip.workers import (
    KIND_MESSAGE,
    Cluster,
    WorkerSpec,
    decode_peer_payload,
    encode_peer_frame,
    owner_index,
)

pytestmark = pytest.mark.timeout(20)


@given(
    transport=st.sampled_from(["udp", "tcp", "tls", "ws", "wss"]),
    host=st.sampled_from(["127.0.0.1", "::1", "192.0.2.10", "fe80::1%eth0"]),
    port=st.integers(0, 65535),
    conn_id=st.one_of(st.none(), st.integers(0, 2**62)),
    tx_id=st.one_of(st.none(), st.integers(0, 2**62)),
    data=st.binary(max_size=2000),
)
def test_peer_frames_round_trip(
    transport: str, host: str, port: int, conn_id: int | None, tx_id: int | None, data: bytes
) -> None:
    peer = Peer(transport, host, port, conn_id)
    frame = encode_peer_frame(KIND_MESSAGE, peer, data, tx_id)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert frame[4] == KIND_MESSAGE
    assert decode_peer_payload(frame[5:]) == (peer, data, tx_id)


@worker_message("test.ban")
@dataclass(frozen=True)
class BanForTest(WorkerMessage):
    source: str
    seconds: float
    users: list[str]


def test_typed_messages_round_trip_and_unknown_kinds_are_refused() -> None:
    msg = BanForTest("192.0.2.9", 600.0, ["6140", "ñ"])
    assert decode_message(encode_message(msg)) == msg
    with pytest.raises(ValueError, match="unknown worker message"):
        decode_message(b'{"m":"nobody.knows","a":{}}')
    with pytest.raises(ValueError, match="already taken"):
        worker_message("test.ban")(dataclass(frozen=True)(type("Other", (WorkerMessage,), {})))


def test_minted_call_ids_hash_to_the_calling_worker() -> None:
    for worker in range(3):
        ids = {mint_call_id(worker, 3, "pbx.example") for _ in range(50)}
        assert len(ids) == 50
        assert all(owner_index(call_id, 3) == worker and call_id.endswith("@pbx.example") for call_id in ids)


def test_owner_is_stable_and_spreads() -> None:
    # crc32, not hash(): the same in every process and after a restart.
    assert owner_index("sip:6140@127.0.0.1", 2) == owner_index("sip:6140@127.0.0.1", 2)
    assert owner_index("anything", 1) == 0
    counts = [0, 0, 0, 0]
    for n in range(4000):
        counts[owner_index(f"sip:{n}@pbx.example", 4)] += 1
    assert min(counts) > 800


def test_owner_key_register_by_aor_user_others_by_call_id() -> None:
    reg = parse_message(
        b"REGISTER sip:pbx.example SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
        b"From: <sip:6140@pbx.example>;tag=a\r\nTo: <sip:6140@PBX.example;transport=udp>\r\n"
        b"Call-ID: reg-1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
    )
    invite = parse_message(
        b"INVITE sip:6141@pbx.example SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK2\r\n"
        b"From: <sip:6140@pbx.example>;tag=a\r\nTo: <sip:6141@pbx.example>\r\n"
        b"Call-ID: call-9\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    assert owner_key(reg) == "6140"  # the AOR's user: every domain's bindings of 6140 in one worker
    assert owner_key(invite) == "call-9"


def test_spec_survives_the_environment() -> None:
    spec = WorkerSpec(3, 4, [("127.0.0.1", 5060, 7)], ["127.0.0.1", "localhost"], {0: 8, 1: 9, 2: 10}, "/etc/v.json", False)
    assert WorkerSpec.from_env(spec.to_env()) == spec


async def pair() -> tuple[Cluster, Cluster]:
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a, b = Cluster(0, 2, b"s" * 32), Cluster(1, 2, b"s" * 32)
    await a.connect({1: a_sock.detach()})
    await b.connect({0: b_sock.detach()})
    return a, b


async def test_messages_sends_events_and_calls_cross_the_link() -> None:
    a, b = await pair()
    got: list[tuple[str, bytes, Peer]] = []
    b.on_message = lambda data, peer: got.append(("message", data, peer))
    sends: list[tuple[int, bytes, Peer, int | None]] = []
    a.on_send = lambda source, data, peer, tx_id: sends.append((source, data, peer, tx_id))
    typed: list[tuple[int, WorkerMessage]] = []
    b.on_typed = lambda source, msg: typed.append((source, msg))
    b.on_call("double", lambda args: args["n"] * 2)

    async def slow(args: dict[str, object]) -> str:
        await asyncio.sleep(0.01)
        return "late"

    b.on_call("slow", slow)
    big = b"x" * 300_000  # larger than one socket buffer: framing must reassemble it
    a.forward(1, big, Peer("udp", "192.0.2.7", 5062))
    b.send_via(0, b"reply", Peer("tcp", "192.0.2.8", 5063, 42), tx_id=7)
    a.broadcast(BanForTest("192.0.2.9", 600, []))
    assert await a.call(1, "double", n=21) == 42
    assert await a.call_all("slow") == ["late"]
    with pytest.raises(RuntimeError, match="unknown call"):
        await a.call(1, "missing")
    assert ("message", big, Peer("udp", "192.0.2.7", 5062)) in got
    assert sends == [(1, b"reply", Peer("tcp", "192.0.2.8", 5063, 42), 7)]
    assert typed == [(0, BanForTest("192.0.2.9", 600, []))]
    a.close()
    b.close()


async def test_a_lost_link_fails_pending_calls_and_is_reported() -> None:
    a, b = await pair()
    lost: list[int] = []
    a.on_link_lost = lost.append
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    b.on_call("hang", lambda args: never)
    call = asyncio.ensure_future(a.call(1, "hang"))
    await asyncio.sleep(0.05)
    b.close()
    with pytest.raises(ConnectionError):
        await call
    assert lost == [1]
    # Writing to a gone worker is counted, never raised.
    a.forward(1, b"x", Peer("udp", "127.0.0.1", 1))
    assert a.dropped == 1
    never.cancel()
