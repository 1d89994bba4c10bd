"""ICE-lite answers and DTLS-SRTP for the media workers' WebRTC bridge.

**Every use of aiortc and aioice is in this module** (issue 12: "keep them in one
module, pin aiortc exactly, and add a test that fails on an incompatible upgrade";
tests/media/test_ice_dtls.py is that test).  What is taken from them:

* aiortc's `RTCCertificate` (the EC P-256 certificate and its fingerprints) and, from
  `aiortc.rtcdtlstransport`, the pieces below `RTCDtlsTransport` that it uses itself:
  `RTCCertificate._create_ssl_context` (a pyOpenSSL DTLS context offering the SRTP
  protection profiles libsrtp supports, every peer certificate accepted so that the
  fingerprint check below decides), `SRTP_PROFILES` with `get_key_and_salt` (how the
  exported keying material is cut into keys and salts), `certificate_digest` and
  `X509_DIGEST_ALGORITHMS` (the fingerprint check).  `RTCDtlsTransport` itself is not
  used: it needs aiortc's `RTCIceTransport` (its own sockets) and routes the decrypted
  RTP to aiortc's receivers, while here the packets stay on the relay's port and go
  through the pure relay.  `DtlsSession` drives the same pyOpenSSL connection with
  memory BIOs as `RTCDtlsTransport` does, without tasks: datagrams in, datagrams out,
  one deadline.
* aioice's `stun` module: STUN parsing, MESSAGE-INTEGRITY and FINGERPRINT, for
  `ice_lite_response` (we are an ICE-lite agent, RFC 8445 §2.5: we only answer the
  browser's connectivity checks, which also serve as its consent checks, RFC 7675).
* pylibsrtp (also used for SDES, srtp.py): the SRTP sessions handed to the relay.

`AIORTC_VERSION` is the version pinned in pyproject.toml; `check_aiortc()` says what is
missing or changed when another version is installed."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import aiortc
import pylibsrtp
from aioice import stun
from aiortc.rtcdtlstransport import (
    SRTP_PROFILES,
    X509_DIGEST_ALGORITHMS,
    RTCCertificate,
    certificate_digest,
)
from OpenSSL import SSL

AIORTC_VERSION = "1.16.0"  # pinned exactly in pyproject.toml: the internals below are its
DTLS_MTU = 1200  # ciphertext MTU of our handshake records (certificates fit, no IP fragments)
Addr = tuple[str, int]


def check_aiortc() -> list[str]:
    """What this module needs of aiortc/aioice and does not find (empty: compatible)."""
    problems: list[str] = []
    if aiortc.__version__ != AIORTC_VERSION:
        problems.append(f"aiortc {aiortc.__version__} installed, {AIORTC_VERSION} pinned")
    if not callable(getattr(RTCCertificate, "_create_ssl_context", None)):
        problems.append("RTCCertificate._create_ssl_context is gone")
    for profile in SRTP_PROFILES:
        for name in ("libsrtp_profile", "openssl_profile", "key_length", "salt_length", "get_key_and_salt"):
            if not hasattr(profile, name):
                problems.append(f"SRTPProtectionProfile.{name} is gone")
    if "sha-256" not in X509_DIGEST_ALGORITHMS:
        problems.append("X509_DIGEST_ALGORITHMS has no sha-256")
    for name in ("parse_message", "Message", "Method", "Class"):
        if not hasattr(stun, name):
            problems.append(f"aioice.stun.{name} is gone")
    return problems


# ---- the certificate ---------------------------------------------------------------------


class Certificate:
    """A DTLS certificate of this media worker (self-signed, EC P-256, as browsers make
    theirs) with its SSL context, shared by every DTLS session made while it is current."""

    def __init__(self) -> None:
        self._rtc = RTCCertificate.generateCertificate()
        self.created = time.monotonic()
        self.fingerprint = next(f.value for f in self._rtc.getFingerprints() if f.algorithm == "sha-256")
        self.context: SSL.Context = self._rtc._create_ssl_context(srtp_profiles=SRTP_PROFILES)

    @property
    def attribute(self) -> str:
        """The value of our `a=fingerprint` line."""
        return f"sha-256 {self.fingerprint}"


def fingerprint_matches(cert: Any, fingerprints: list[tuple[str, str]]) -> bool:
    """RFC 8122 §5 as aiortc checks it: at least one fingerprint with an algorithm we
    know, and every such fingerprint matches the peer's certificate."""
    known = [(alg.lower(), value) for alg, value in fingerprints if alg.lower() in X509_DIGEST_ALGORITHMS]
    if not known:
        return False
    return all(value.upper() == certificate_digest(cert, alg) for alg, value in known)


# ---- DTLS --------------------------------------------------------------------------------


class DtlsSession:
    """One DTLS-SRTP association over a memory BIO: `start` (the client's first flight),
    `receive` (a DTLS datagram from the peer), `on_timer` at `deadline`; each returns the
    datagrams to send.  `state`: connecting → connected (keys in `srtp_in`/`srtp_out`),
    or failed (`error`), or closed (the peer sent close_notify: `closed_by_peer`).

    The peer's certificate is checked against `fingerprints` (from its SDP) once the
    handshake is done; when the SDP comes later (a browser's answer racing its first
    DTLS flight) `set_fingerprints` checks it then.  Keys exist only after that check."""

    def __init__(self, cert: Certificate, *, client: bool, fingerprints: list[tuple[str, str]] | None = None) -> None:
        self.client = client
        self.ssl = SSL.Connection(cert.context)
        self.ssl.set_ciphertext_mtu(DTLS_MTU)
        if client:
            self.ssl.set_connect_state()
        else:
            self.ssl.set_accept_state()
        self.fingerprints = list(fingerprints or [])
        self.state = "connecting"
        self.error: str | None = None
        self.closed_by_peer = False
        self.profile: str | None = None
        self.srtp_in: pylibsrtp.Session | None = None
        self.srtp_out: pylibsrtp.Session | None = None
        self._handshaken = False
        self._deadline: float | None = None

    # -- driving it
    def start(self, now: float) -> list[bytes]:
        return self._handshake(now)

    def receive(self, data: bytes, now: float) -> list[bytes]:
        if self.state in ("failed", "closed"):
            return []
        try:
            self.ssl.bio_write(data)
        except SSL.Error:
            return []
        if not self._handshaken:
            return self._handshake(now)
        try:
            self.ssl.recv(1500)  # no application data on a DTLS-SRTP association: alerts only
        except SSL.ZeroReturnError:
            self.state = "closed"
            self.closed_by_peer = True
        except SSL.WantReadError:
            pass
        except SSL.Error:
            pass
        out = self._drain()
        self._arm(now)
        return out

    def deadline(self) -> float | None:
        return self._deadline

    def on_timer(self, now: float) -> list[bytes]:
        self._deadline = None
        if self.state in ("failed", "closed"):
            return []
        with contextlib.suppress(SSL.Error):
            self.ssl.DTLSv1_handle_timeout()
        out = self._drain()
        self._arm(now)
        return out

    def set_fingerprints(self, fingerprints: list[tuple[str, str]]) -> None:
        self.fingerprints = list(fingerprints)
        if self._handshaken and self.state == "verifying":
            self._verify()

    def close(self) -> list[bytes]:
        """close_notify to the peer (the call ended on our side)."""
        if self.state not in ("connected", "verifying", "connecting"):
            return []
        self.state = "closed"
        with contextlib.suppress(SSL.Error):
            self.ssl.shutdown()
        self._deadline = None
        return self._drain()

    # -- internals
    def _handshake(self, now: float) -> list[bytes]:
        try:
            self.ssl.do_handshake()
        except SSL.WantReadError:
            out = self._drain()
            self._arm(now)
            return out
        except SSL.Error as exc:
            self.state = "failed"
            self.error = f"DTLS handshake failed: {exc}"
            self._deadline = None
            return self._drain()
        self._handshaken = True
        out = self._drain()
        self.state = "verifying"
        self._verify()
        self._arm(now)
        return out

    def _verify(self) -> None:
        if not self.fingerprints:
            return  # the peer's SDP has not come yet: checked by set_fingerprints
        cert = self.ssl.get_peer_certificate(as_cryptography=True)
        if cert is None or not fingerprint_matches(cert, self.fingerprints):
            self.state = "failed"
            self.error = "DTLS: the certificate does not match the SDP's fingerprint"
            return
        selected = self.ssl.get_selected_srtp_profile()
        profile = next((p for p in SRTP_PROFILES if p.openssl_profile == selected), None)
        if profile is None:
            self.state = "failed"
            self.error = "DTLS: no SRTP protection profile negotiated"
            return
        material = self.ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length))
        ours, theirs = (0, 1) if self.client else (1, 0)  # RFC 5764 §4.2: client key first
        self.srtp_out = _session(profile.get_key_and_salt(material, ours), profile.libsrtp_profile, outbound=True)
        self.srtp_in = _session(profile.get_key_and_salt(material, theirs), profile.libsrtp_profile, outbound=False)
        self.profile = profile.openssl_profile.decode()
        self.state = "connected"

    def _drain(self) -> list[bytes]:
        out: list[bytes] = []
        while True:
            try:
                data = self.ssl.bio_read(4096)
            except SSL.Error:  # WantReadError: nothing more to send
                break
            if not data:
                break
            out.append(data)
        return out

    def _arm(self, now: float) -> None:
        try:
            timeout = self.ssl.DTLSv1_get_timeout()
        except SSL.Error:
            timeout = None
        self._deadline = None if timeout is None else now + timeout


def _session(key: bytes, profile: int, *, outbound: bool) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=key,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND,
        srtp_profile=profile,
    )
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return pylibsrtp.Session(policy)


# ---- ICE-lite ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """A connectivity check that passed: answer `response` to `source`."""

    response: bytes
    nominated: bool  # USE-CANDIDATE: the browser chose this path
    remote_ufrag: str


def ice_lite_response(data: bytes, source: Addr, ufrag: str, pwd: str) -> Check | str | None:
    """A STUN Binding request to our `ufrag` authenticated with our `pwd` → its success
    response (XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT); anything else that is
    STUN → a short reason it was ignored (a string); not STUN at all → None."""
    try:
        message = stun.parse_message(data)
    except ValueError:
        return None
    if message.message_method != stun.Method.BINDING or message.message_class != stun.Class.REQUEST:
        return "not a binding request"
    username = message.attributes.get("USERNAME")
    if not isinstance(username, str) or "MESSAGE-INTEGRITY" not in message.attributes:
        return "no credentials"
    ours, _, theirs = username.partition(":")
    if ours != ufrag:
        return "another ufrag"
    if not message.check_message_integrity(pwd.encode()):
        return "bad integrity"
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=message.transaction_id)
    response.attributes["XOR-MAPPED-ADDRESS"] = source
    response.add_message_integrity(pwd.encode())
    return Check(bytes(response), "USE-CANDIDATE" in message.attributes, theirs)


def binding_request(ufrag_pair: str, pwd: str, *, nominate: bool = True, controlling: bool = True) -> bytes:
    """A connectivity check as a browser sends it (for tests and the benchmark's stand-in
    browsers): USERNAME "their:ours", PRIORITY, ICE-CONTROLLING, USE-CANDIDATE."""
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    message.attributes["USERNAME"] = ufrag_pair
    message.attributes["PRIORITY"] = 1853824767
    if controlling:
        message.attributes["ICE-CONTROLLING"] = 0x1234567890
    else:
        message.attributes["ICE-CONTROLLED"] = 0x1234567890
    if nominate:
        message.attributes["USE-CANDIDATE"] = None
    message.add_message_integrity(pwd.encode())
    return bytes(message)


def is_stun_response(data: bytes) -> bool:
    try:
        return stun.parse_message(data).message_class == stun.Class.RESPONSE
    except ValueError:
        return False
