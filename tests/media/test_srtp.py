"""SDES SRTP terminated by the relay: an SRTP phone bridged to a plain one, and back."""

from __future__ import annotations

import base64

import pylibsrtp
import pytest
from rtputil import parse_rtp, party_sdp, rtp

from vivait_sip.media.relay import PortPool, Relay
from vivait_sip.media.srtp import Crypto, parse_crypto
from vivait_sip.sip.sdp import parse_sdp

US = "192.0.2.1"
A_ADDR = ("198.51.100.10", 4000)
B_ADDR = ("198.51.100.20", 5000)
KEY_A = bytes(range(30))


def srtp_sdp(host: str, port: int, key: bytes, *, suite: str = "AES_CM_128_HMAC_SHA1_80", tag: int = 1) -> str:
    plain = party_sdp(host, port).replace("RTP/AVP", "RTP/SAVP")
    return plain + f"a=crypto:{tag} {suite} inline:{base64.b64encode(key).decode()}\r\n"


def session(key: bytes, outbound: bool, suite: int = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
    return pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=kind, srtp_profile=suite))


def test_crypto_lines() -> None:
    line = f"1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(KEY_A).decode()}|2^20"
    assert parse_crypto(line) == Crypto(1, "AES_CM_128_HMAC_SHA1_80", KEY_A)
    assert parse_crypto(f"2 AES_CM_128_HMAC_SHA1_32 inline:{base64.b64encode(KEY_A).decode()}") is not None
    for bad in (
        f"1 F8_128_HMAC_SHA1_80 inline:{base64.b64encode(KEY_A).decode()}",
        "1 AES_CM_128_HMAC_SHA1_80 inline:short",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(KEY_A).decode()}|2^20|1:4",
        "x AES_CM_128_HMAC_SHA1_80",
        None,
    ):
        assert parse_crypto(bad) is None


def test_an_srtp_phone_talks_to_a_plain_one_through_the_relay() -> None:
    relay = Relay(US, PortPool(30000, 30100))
    to_b = parse_sdp(relay.offer("c1", "a", srtp_sdp(*A_ADDR, KEY_A), 0.0, transport="RTP/AVP"))
    assert to_b.media[0].proto == "RTP/AVP" and not to_b.media[0].has_attribute("crypto")
    to_a = parse_sdp(relay.answer("c1", "a", "b", party_sdp(*B_ADDR), 0.0))
    assert to_a.media[0].proto == "RTP/SAVP"
    ours = parse_crypto(to_a.media[0].attribute("crypto"))
    assert ours is not None and ours.tag == 1 and ours.key != KEY_A
    port_a, port_b = to_a.media[0].port, to_b.media[0].port
    a_tx, a_rx = session(KEY_A, True), session(ours.key, False)
    for i in range(20):
        clear = rtp(100 + i, 160 * i, 0xA)
        out = relay.receive(port_a, a_tx.protect(clear), A_ADDR, 0.02 * i)
        assert out is not None and bytes(out[1]) == clear and out[2] == B_ADDR  # B gets plain RTP
        back = relay.receive(port_b, rtp(500 + i, 320 * i, 0xB), B_ADDR, 0.02 * i + 0.01)
        assert back is not None and back[2] == A_ADDR
        assert a_rx.unprotect(bytes(back[1])) == rtp(500 + i, 320 * i, 0xB)  # A decrypts it
    # a forged packet (wrong key) is dropped and latches nothing
    forged = session(bytes(30), True).protect(rtp(200, 0, 0xA))
    assert relay.receive(port_a, forged, ("203.0.113.9", 1), 1.0) is None
    stream = relay.query("c1", 1.0)["legs"][0]["streams"][0]
    assert stream["srtp"] == {"in": "AES_CM_128_HMAC_SHA1_80", "out": "AES_CM_128_HMAC_SHA1_80", "auth_failures": 1}
    assert stream["latched"] == "198.51.100.10:4000"


def test_a_plain_phone_can_be_offered_srtp_and_the_stream_stays_continuous_across_a_transfer() -> None:
    relay = Relay(US, PortPool(30000, 30100))
    to_b = parse_sdp(relay.offer("c1", "a", party_sdp(*A_ADDR), 0.0, transport="RTP/SAVP"))
    offered = parse_crypto(to_b.media[0].attribute("crypto"))
    assert to_b.media[0].proto == "RTP/SAVP" and offered is not None
    key_b = bytes(reversed(range(30)))
    to_a = parse_sdp(relay.answer("c1", "a", "b", srtp_sdp(*B_ADDR, key_b), 0.0))
    assert to_a.media[0].proto == "RTP/AVP" and not to_a.media[0].has_attribute("crypto")
    port_a, port_b = to_a.media[0].port, to_b.media[0].port
    b_rx = session(offered.key, False)
    seqs = []
    for i in range(5):
        out = relay.receive(port_a, rtp(10 + i, 160 * i, 0xA), A_ADDR, 0.02 * i)
        assert out is not None
        seqs.append(parse_rtp(b_rx.unprotect(bytes(out[1])))[2])
    # B plays a prompt-like source: the player's packets are encrypted for B as well
    relay.play("c1", "b", 0.2, name="x", encoded={"PCMU": b"\xff" * 320, "PCMA": b""}, loop=False)
    for out in relay.on_timer(0.3):
        seqs.append(parse_rtp(b_rx.unprotect(bytes(out[1])))[2])
    out = relay.receive(port_a, rtp(15, 800, 0xA), A_ADDR, 0.4)
    assert out is not None
    seqs.append(parse_rtp(b_rx.unprotect(bytes(out[1])))[2])
    assert seqs == list(range(10, 18))
    with pytest.raises(pylibsrtp.Error):
        session(offered.key, False).unprotect(rtp(1, 0, 1))  # not SRTP: refused
    del port_b


def test_oversized_or_garbage_datagrams_on_an_srtp_leg_are_dropped() -> None:
    relay = Relay(US, PortPool(30000, 30100))
    relay.offer("c1", "a", srtp_sdp(*A_ADDR, KEY_A), 0.0, transport="RTP/AVP")
    to_a = parse_sdp(relay.answer("c1", "a", "b", party_sdp(*B_ADDR), 0.0))
    port_a = to_a.media[0].port
    assert relay.receive(port_a, rtp(1, 0, 1, b"\x00" * 1900), A_ADDR, 0.0) is None
    assert relay.receive(port_a, rtp(1, 0, 1), A_ADDR, 0.0) is None
    assert relay.receive(port_a + 1, b"\x81\xc9\x00\x01" + b"\x00" * 30, A_ADDR, 0.0) is None
    port_b = relay.sessions["c1"].legs[1].streams[0].port
    assert relay.receive(port_b, rtp(1, 0, 2, b"\x00" * 1600), B_ADDR, 0.0) is None  # too long to encrypt
    assert relay.query("c1", 0.1)["legs"][0]["streams"][0]["srtp"]["auth_failures"] == 4
