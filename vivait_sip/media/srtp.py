"""SRTP with SDES key exchange (RFC 4568 `a=crypto`), through pylibsrtp (libsrtp 2).

A party whose SDP says RTP/SAVP (or RTP/SAVPF) with a crypto attribute has its SRTP
terminated at the relay: what it sends is decrypted with the key of its own `a=crypto`
line, what we send it is encrypted with a key of ours, written into the SDP it receives.
So a phone on TLS with SRTP can talk to a plain RTP phone or trunk (the SDP towards the
other side says RTP/AVP, no key), and the relay still rewrites SSRCs and sequence
numbers after a transfer (it sees the packets in clear).  Pure computation, no I/O: the
relay stays a state machine.

Suites: AES_CM_128_HMAC_SHA1_80 and AES_CM_128_HMAC_SHA1_32 (RFC 4568 §6.2), master key
and salt inline, without lifetime or MKI (a line with an MKI is ignored)."""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

import pylibsrtp

SUITES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
DEFAULT_SUITE = "AES_CM_128_HMAC_SHA1_80"
KEY_LENGTH = 30  # 16-byte master key + 14-byte master salt
SrtpError = pylibsrtp.Error


def is_sdes_proto(proto: str) -> bool:
    """RTP/SAVP and RTP/SAVPF carry SDES keys; UDP/TLS/… is DTLS-SRTP (not here)."""
    return proto.upper() in ("RTP/SAVP", "RTP/SAVPF")


def to_plain(proto: str) -> str:
    return {"RTP/SAVP": "RTP/AVP", "RTP/SAVPF": "RTP/AVPF"}.get(proto.upper(), proto)


def to_secure(proto: str) -> str:
    return {"RTP/AVP": "RTP/SAVP", "RTP/AVPF": "RTP/SAVPF"}.get(proto.upper(), proto)


@dataclass(frozen=True)
class Crypto:
    """One usable `a=crypto` line."""

    tag: int
    suite: str
    key: bytes  # master key + salt

    def attribute(self) -> str:
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode()}"


def parse_crypto(value: str | None) -> Crypto | None:
    """An `a=crypto` value we can use, else None (unknown suite, bad key, MKI, …)."""
    if not value:
        return None
    parts = value.split()
    if len(parts) < 3 or not parts[0].isdigit() or parts[1] not in SUITES:
        return None
    for param in parts[2].split(";"):
        if not param.startswith("inline:"):
            continue
        fields = param[len("inline:") :].split("|")
        if any(":" in f for f in fields[1:]):
            return None  # MKI: not supported
        try:
            key = base64.b64decode(fields[0], validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(key) != KEY_LENGTH:
            return None
        return Crypto(int(parts[0]), parts[1], key)
    return None


def new_key() -> bytes:
    return os.urandom(KEY_LENGTH)


def inbound(crypto: Crypto) -> pylibsrtp.Session:
    """Decrypts what a party sends with its own key (any SSRC)."""
    policy = pylibsrtp.Policy(key=crypto.key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=SUITES[crypto.suite])
    policy.window_size = 1024
    return pylibsrtp.Session(policy)


def outbound(crypto: Crypto) -> pylibsrtp.Session:
    """Encrypts what we send a party with our key (any SSRC; retransmissions allowed)."""
    policy = pylibsrtp.Policy(key=crypto.key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=SUITES[crypto.suite])
    policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy)
