"""The control messages (media/control.py) and their NG mapping (media/ng.py): what each
command becomes on the wire, what each reply becomes, and what the types refuse."""

from __future__ import annotations

import pytest

from vivait_sip.media.control import (
    Answer,
    CallKey,
    CodecFlags,
    Delete,
    Dtls,
    Ice,
    Latching,
    LegStats,
    MediaError,
    MediaFlags,
    MediaReply,
    Offer,
    Ping,
    PlayDtmf,
    PlayMedia,
    Query,
    Replace,
    ReplaceParty,
    RtcpMux,
    StartRecording,
    StopMedia,
    StopRecording,
    TransportProtocol,
)
from vivait_sip.media.ng import bdecode, bencode, from_ng, replace_party_to_ng, to_ng

SDP = b"v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
KEY = CallKey("abc@host", "ft1", "tt1")


def test_an_offer_with_every_flag() -> None:
    flags = MediaFlags(
        transport_protocol=TransportProtocol.UDP_TLS_RTP_SAVPF, ice=Ice.FORCE, dtls=Dtls.PASSIVE,
        rtcp_mux=(RtcpMux.OFFER, RtcpMux.REQUIRE), codec=CodecFlags(strip=("G729",), offer=("PCMA",), transcode=("opus",)),
        latching=Latching.ASYMMETRIC, media_handover=True, replace=(Replace.ORIGIN, Replace.SESSION_CONNECTION),
        direction=("external", "internal"), media_address="203.0.113.9", record_call=True, flags=("trust address",),
    )
    ng = to_ng(Offer(CallKey("abc@host", "ft1"), SDP, flags))
    assert ng == {
        "command": "offer", "call-id": "abc@host", "from-tag": "ft1", "sdp": SDP,
        "transport-protocol": "UDP/TLS/RTP/SAVPF", "ICE": "force", "DTLS": "passive", "rtcp-mux": ["offer", "require"],
        "codec": {"strip": ["G729"], "offer": ["PCMA"], "transcode": ["opus"]},
        "flags": ["asymmetric", "media-handover", "trust address"], "replace": ["origin", "session-connection"],
        "direction": ["external", "internal"], "media-address": "203.0.113.9", "record-call": "yes",
    }
    assert bdecode(bencode(ng))["transport-protocol"] == b"UDP/TLS/RTP/SAVPF"  # type: ignore[index, call-overload]


def test_every_command_maps_to_its_ng_dictionary() -> None:
    assert to_ng(Answer(KEY, SDP)) == {
        "command": "answer", "call-id": "abc@host", "from-tag": "ft1", "to-tag": "tt1", "sdp": SDP, "flags": [],
    }
    assert to_ng(Delete("abc@host")) == {"command": "delete", "call-id": "abc@host"}
    assert to_ng(Delete("abc@host", from_tag="ft1", delay_s=0)) == {
        "command": "delete", "call-id": "abc@host", "from-tag": "ft1", "delete-delay": 0,
    }
    assert to_ng(Query("abc@host")) == {"command": "query", "call-id": "abc@host"}
    assert to_ng(PlayMedia(KEY, file="/var/lib/prompts/moh.wav", repeat=0)) == {
        "command": "play media", "call-id": "abc@host", "from-tag": "ft1", "to-tag": "tt1",
        "file": "/var/lib/prompts/moh.wav", "repeat-times": 0,
    }
    assert to_ng(PlayMedia(KEY, blob=b"RIFF....")).get("blob") == b"RIFF...."
    assert to_ng(StopMedia(KEY))["command"] == "stop media"
    assert to_ng(StartRecording("abc@host")) == {"command": "start recording", "call-id": "abc@host"}
    assert to_ng(StopRecording("abc@host", from_tag="ft1"))["from-tag"] == "ft1"
    assert to_ng(PlayDtmf(KEY, "#", duration_ms=100, volume_db=-10)) == {
        "command": "play DTMF", "call-id": "abc@host", "from-tag": "ft1", "to-tag": "tt1",
        "code": "#", "duration": 100, "volume": 10,
    }
    assert to_ng(Ping()) == {"command": "ping"}


def test_replace_party_maps_to_an_offer_between_new_and_kept_party_then_the_old_branchs_delete() -> None:
    """rtpengine has no "replace party": the new party offers to the kept one (a new
    monologue, as for a branched answer) with port-latching (the kept party keeps its
    ports), then the old party's branch is deleted at once."""
    flags = MediaFlags(replace=(Replace.ORIGIN,), ice=Ice.REMOVE)
    offer, delete = replace_party_to_ng(ReplaceParty("abc@host", "old", "new", SDP, flags, "kept"), "kept")
    assert offer == {
        "command": "offer", "call-id": "abc@host", "from-tag": "new", "to-tag": "kept", "sdp": SDP,
        "ICE": "remove", "replace": ["origin"], "flags": ["port-latching"],
    }
    assert delete == {"command": "delete", "call-id": "abc@host", "from-tag": "old", "delete-delay": 0}
    # without the new party's SDP: the kept party's last SDP is offered to the new party
    kept_sdp = SDP.replace(b"4000", b"5000")
    offer, delete = replace_party_to_ng(ReplaceParty("abc@host", "old", "new", None, flags, "kept"), "kept", kept_sdp)
    assert (offer["from-tag"], offer["to-tag"], offer["sdp"]) == ("kept", "new", kept_sdp)
    assert offer["flags"] == ["port-latching"] and delete["from-tag"] == "old"
    with pytest.raises(ValueError, match="no SDP of the kept party"):
        replace_party_to_ng(ReplaceParty("abc@host", "old", "new"), "kept")
    with pytest.raises(TypeError, match="two NG messages"):
        to_ng(ReplaceParty("abc@host", "old", "new"))
    with pytest.raises(ValueError, match="must differ"):
        ReplaceParty("abc@host", "old", "new", kept_tag="old")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Offer(CallKey("c", "t"), b""), "needs an SDP"),
        (lambda: Offer(CallKey("c", "t"), b"x" * (256 * 1024 + 1)), "byte limit"),
        (lambda: Answer(CallKey("c", "t"), SDP), "to_tag"),
        (lambda: CallKey("has space", "t"), "not a token"),
        (lambda: CallKey("c", ""), "not a token"),
        (lambda: PlayMedia(KEY), "exactly one of file or blob"),
        (lambda: PlayMedia(KEY, file="a", blob=b"b"), "exactly one"),
        (lambda: PlayMedia(KEY, file="a", repeat=-1), "repeat"),
        (lambda: PlayDtmf(KEY, "55"), "not a DTMF digit"),
        (lambda: PlayDtmf(KEY, "5", duration_ms=5), "duration"),
        (lambda: PlayDtmf(KEY, "5", volume_db=3), "volume"),
        (lambda: Delete("c", delay_s=-1), "delete delay"),
        (lambda: CodecFlags(strip=("PC MU",)), "codec.strip"),
        (lambda: MediaFlags(direction=("a",)), "two interface"),  # type: ignore[arg-type]
        (lambda: MediaFlags(flags=("",)), "not a flag"),
    ],
)
def test_the_types_refuse_what_no_backend_could_take(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_replies_map_back() -> None:
    assert from_ng({"result": b"pong"}, "rtpengine x") == MediaReply("pong", backend="rtpengine x")
    ok = from_ng({"result": b"ok", "sdp": SDP, "warning": b"Unknown flag"}, "rtpengine x")
    assert ok.ok and ok.sdp == SDP and ok.warning == "Unknown flag"
    error = from_ng({"result": b"error", "error-reason": b"Unknown call-id"}, "rtpengine 10.0.0.7:2223")
    assert error.error == "rtpengine 10.0.0.7:2223: Unknown call-id" and not error.ok
    with pytest.raises(MediaError, match="Unknown call-id"):
        error.check()
    assert from_ng({"result": b"load limit"}).error == "rtpengine: result 'load limit'"
    assert from_ng([b"not a dict"]).error == "rtpengine: reply is not a dictionary"
    assert from_ng({"result": b"ok", "duration": 5200}).duration_ms == 5200


def _stream(port: int, local: int, flags: list[bytes], packets: int, octets: int, ssrc: int | None = None) -> dict[str, object]:
    stream: dict[str, object] = {
        "local port": local, "local address": b"127.0.0.1", "family": b"IPv4",
        "endpoint": {"family": b"IPv4", "address": b"127.0.0.1", "port": port},
        "advertised endpoint": {"family": b"IPv4", "address": b"127.0.0.1", "port": port},
        "last packet": 1796040347, "flags": flags, "stats": {"packets": packets, "bytes": octets, "errors": 0},
    }
    if ssrc is not None:
        stream["SSRC"] = ssrc
    return stream


def test_query_stats_per_leg_from_rtpengines_reply() -> None:
    """The shape rtpengine 10.5 answers (captured from the Debian daemon), with its per-SSRC
    RTCP figures added the way it reports them."""
    reply = {
        "result": b"ok", "created": 1796040347,
        "SSRC": {"4369": {"MOS progression": {"entries": [{"jitter": 4, "packet loss": 0}, {"jitter": 12, "packet loss": 5}]},
                          "packets lost": 7}},
        "tags": {
            "ta": {"tag": b"ta", "medias": [{"index": 1, "type": b"audio", "protocol": b"RTP/AVP", "streams": [
                _stream(47456, 40042, [b"RTP", b"filled"], 5, 860, 4369), _stream(47457, 40043, [b"RTCP", b"filled"], 2, 84)]}]},
            "tb": {"tag": b"tb", "medias": [{"index": 1, "type": b"audio", "protocol": b"RTP/AVP", "streams": [
                _stream(40330, 40026, [b"RTP", b"filled"], 4, 688, 8738), _stream(40331, 40027, [b"RTCP", b"filled"], 0, 0)]}]},
        },
        "totals": {"RTP": {"packets": 9, "bytes": 1548, "errors": 0}, "RTCP": {"packets": 2, "bytes": 84, "errors": 0}},
    }
    legs = from_ng(bdecode(bencode(reply))).legs
    assert legs == (
        LegStats("ta", 5, 860, 0, 7, 0.05, 12.0, "127.0.0.1:47456"),
        LegStats("tb", 4, 688, 0, None, None, None, "127.0.0.1:40330"),
    )
