"""`AnchoringSeam.transfer`: a transfer's call taking over another call's media session
(blind and attended transfers, INVITE with Replaces, announcement continuations), without
SIP: the commands the backend gets, and who deletes the session when."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from vivait_sip.media.anchor import AnchoringPolicy, AnchoringSeam
from vivait_sip.media.control import (
    Answer,
    Delete,
    MediaCommand,
    MediaError,
    MediaReply,
    Offer,
    ReplaceParty,
    StopMedia,
)

SDP_A = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
SDP_B = SDP_A.replace(b"10.0.0.1", b"10.0.0.2")
SDP_C = SDP_A.replace(b"10.0.0.1", b"10.0.0.3")


class Backend:
    name = "fake"
    healthy = True

    def __init__(self) -> None:
        self.requests: list[MediaCommand] = []
        self.fail: set[str] = set()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def status(self) -> dict[str, object]:
        return {}

    async def request(self, msg: MediaCommand) -> MediaReply:
        self.requests.append(msg)
        if msg.command in self.fail:
            return MediaReply.failure(f"fake: {msg.command} refused")
        sdp = getattr(msg, "sdp", None) or SDP_A
        return MediaReply("ok", sdp=b"relayed " + sdp)


def call(uuid: str, call_id: str = "cid-1", from_tag: str = "ftag") -> Any:
    request = SimpleNamespace(call_id=call_id, from_=SimpleNamespace(tag=from_tag))
    return SimpleNamespace(call_uuid=uuid, request=request, rule=None, user=None, callee_user=None, extra={})



@pytest.fixture
def seam() -> tuple[AnchoringSeam, Backend]:
    backend = Backend()
    return AnchoringSeam(backend, AnchoringPolicy(default="anchor")), backend  # type: ignore[arg-type]


async def run(value: Any) -> Any:
    return await value if not isinstance(value, (bytes, type(None))) else value


async def anchored_call(seam: AnchoringSeam) -> Any:
    original = call("u" * 32)
    await run(seam.offer(original, "callee", SDP_A))
    await run(seam.answer(original, "caller", SDP_B))
    return original


async def test_a_blind_transfer_replaces_the_transferor_and_the_last_call_deletes(seam: Any) -> None:
    seam, backend = seam
    original = await anchored_call(seam)
    caller_tag, callee_tag = seam.tag_of(original, "caller"), seam.tag_of(original, "callee")
    target = call("t" * 32, call_id="other-id")
    assert seam.transfer(target, original, "caller", "caller")  # A (the caller) stays, B goes
    assert target.extra["media"] == "anchored (default)"
    del backend.requests[:]
    to_a = await run(seam.offer(target, "caller", SDP_C))  # C's 2xx offer, for the transferee A
    replace, stop = backend.requests
    assert isinstance(replace, ReplaceParty) and (replace.call_id, replace.old_tag) == ("cid-1", callee_tag)
    assert replace.sdp == SDP_C and replace.new_tag == seam.tag_of(target, "callee") != callee_tag
    assert isinstance(stop, StopMedia) and stop.key.from_tag == caller_tag  # music on hold, ringback: off
    assert to_a == b"relayed " + SDP_C
    await run(seam.answer(target, "callee", SDP_A))  # A's answer, for C in the ACK
    answer = backend.requests[-1]
    assert isinstance(answer, Answer) and (answer.key.from_tag, answer.key.to_tag) == (replace.new_tag, caller_tag)
    assert seam.taken_over(original) and seam.replaced(target) and seam.owns(target) and not seam.owns(original)
    assert seam.release(original) is None  # the transferor's call ends: the session is the target's now
    await run(seam.release(target))
    assert isinstance(backend.requests[-1], Delete) and seam.active == 0


async def test_a_transfer_that_never_replaces_leaves_the_session_to_the_call_ending_last(seam: Any) -> None:
    seam, backend = seam
    original = await anchored_call(seam)
    target = call("t" * 32)
    seam.transfer(target, original, "callee", "caller")
    assert seam.release(original) is None  # the transferor hung up first: the transferee waits in the target call
    assert not any(isinstance(r, Delete) for r in backend.requests)
    await run(seam.release(target))  # the target never answered: now the session goes
    assert isinstance(backend.requests[-1], Delete)
    other = await anchored_call(seam)
    failed = call("f" * 32)
    seam.transfer(failed, other, "caller", "caller")
    assert seam.release(failed) is None  # the target failed, the original call goes on
    await run(seam.release(other))
    assert isinstance(backend.requests[-1], Delete)


async def test_the_kept_party_offering_first_replaces_then_offers(seam: Any) -> None:
    """A late-offer INVITE with Replaces: the kept party's 2xx offer comes first."""
    seam, backend = seam
    original = await anchored_call(seam)
    newcomer = call("n" * 32, call_id="c-id", from_tag="ctag")
    seam.transfer(newcomer, original, "caller", "callee")  # the newcomer calls in: the kept party is its callee
    del backend.requests[:]
    await run(seam.answer(newcomer, "caller", SDP_A))  # the kept party's offer, towards the newcomer
    replace, _stop, offer = backend.requests
    assert isinstance(replace, ReplaceParty) and replace.sdp is None
    assert isinstance(offer, Offer) and offer.key.from_tag == seam.tag_of(original, "caller")
    assert offer.key.to_tag == replace.new_tag


async def test_unanchored_calls_are_not_handed_over_and_a_failed_replace_fails_the_step(seam: Any) -> None:
    seam, backend = seam
    passing = AnchoringSeam(backend, AnchoringPolicy(default="pass"))
    plain = call("p" * 32)
    assert passing.offer(plain, "callee", SDP_A) == SDP_A
    assert not passing.transfer(call("x" * 32), plain, "caller", "caller")
    original = await anchored_call(seam)
    target = call("t" * 32)
    seam.transfer(target, original, "caller", "caller")
    backend.fail = {"replace party"}
    with pytest.raises(MediaError, match="replace party refused"):
        await run(seam.offer(target, "caller", SDP_C))
    assert not seam.taken_over(original) and not seam.replaced(target)
