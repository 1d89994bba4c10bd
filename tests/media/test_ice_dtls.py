"""The aiortc/aioice internals the WebRTC bridge uses (media/ice_dtls.py) are there and
behave: this fails when another aiortc is installed than the one pinned, or when the
pieces taken from it changed (issue 12: pin aiortc exactly, one module, a test that
fails on an incompatible upgrade)."""

from __future__ import annotations

import re
import struct
import time
from pathlib import Path

import aiortc
import pytest

from vivait_sip.media import ice_dtls
from vivait_sip.media.ice_dtls import (
    Certificate,
    Check,
    DtlsSession,
    binding_request,
    check_aiortc,
    ice_lite_response,
    is_stun_response,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_pinned_aiortc_is_the_one_installed_and_the_one_the_module_was_written_for() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    pins = re.findall(r'"aiortc==([^"]+)"', pyproject)
    assert pins == [ice_dtls.AIORTC_VERSION], "pyproject.toml must pin aiortc exactly, to ice_dtls.AIORTC_VERSION"
    assert aiortc.__version__ == ice_dtls.AIORTC_VERSION, (
        f"aiortc {aiortc.__version__} is installed; media/ice_dtls.py was written against {ice_dtls.AIORTC_VERSION}: "
        "check its internals (check_aiortc), the handshake below and the bridge's tests, then move the pin")


def test_every_internal_the_bridge_takes_is_there() -> None:
    assert check_aiortc() == []


def dtls_pair(client_cert: Certificate, server_cert: Certificate) -> tuple[DtlsSession, DtlsSession]:
    client = DtlsSession(client_cert, client=True, fingerprints=[("sha-256", server_cert.fingerprint)])
    server = DtlsSession(server_cert, client=False, fingerprints=[("sha-256", client_cert.fingerprint)])
    flight = client.start(0.0)
    for _ in range(8):
        back = [d for datagram in flight for d in server.receive(datagram, 0.0)]
        flight = [d for datagram in back for d in client.receive(datagram, 0.0)]
        if not back and not flight:
            break
    return client, server


def test_a_dtls_srtp_handshake_gives_matching_keys() -> None:
    a, b = Certificate(), Certificate()
    client, server = dtls_pair(a, b)
    assert client.state == server.state == "connected"
    assert client.profile == server.profile and client.profile in ("SRTP_AEAD_AES_256_GCM", "SRTP_AEAD_AES_128_GCM",
                                                                   "SRTP_AES128_CM_SHA1_80")
    packet = struct.pack("!BBHII", 0x80, 0, 1, 160, 0x1234) + bytes(160)
    assert server.srtp_in.unprotect(client.srtp_out.protect(packet)) == packet
    assert client.srtp_in.unprotect(server.srtp_out.protect(packet)) == packet
    # close_notify is seen by the other side
    for datagram in client.close():
        server.receive(datagram, 1.0)
    assert server.state == "closed" and server.closed_by_peer


def test_the_handshake_retransmits_a_lost_flight() -> None:
    a, b = Certificate(), Certificate()
    client = DtlsSession(a, client=True, fingerprints=[("sha-256", b.fingerprint)])
    client.start(0.0)  # lost
    deadline = client.deadline()
    assert deadline is not None and 0.5 <= deadline <= 3.0
    time.sleep(deadline + 0.05)  # OpenSSL's DTLS timer runs on the real clock
    again = client.on_timer(deadline)
    assert again and again[0][0] == 22  # a handshake record once more


def test_a_certificate_that_does_not_match_fails() -> None:
    a, b, other = Certificate(), Certificate(), Certificate()
    client = DtlsSession(a, client=True, fingerprints=[("sha-256", b.fingerprint)])
    server = DtlsSession(b, client=False, fingerprints=[("sha-256", other.fingerprint)])
    flight = client.start(0.0)
    for _ in range(8):
        back = [d for datagram in flight for d in server.receive(datagram, 0.0)]
        flight = [d for datagram in back for d in client.receive(datagram, 0.0)]
        if not back and not flight:
            break
    assert server.state == "failed" and "fingerprint" in str(server.error) and server.srtp_in is None


def test_the_fingerprint_may_come_after_the_handshake() -> None:
    """A browser's ClientHello can race its SDP answer: keys only once the SDP came."""
    a, b = Certificate(), Certificate()
    client = DtlsSession(a, client=True, fingerprints=[("sha-256", b.fingerprint)])
    server = DtlsSession(b, client=False)
    flight = client.start(0.0)
    for _ in range(8):
        back = [d for datagram in flight for d in server.receive(datagram, 0.0)]
        flight = [d for datagram in back for d in client.receive(datagram, 0.0)]
        if not back and not flight:
            break
    assert server.state == "verifying" and server.srtp_in is None
    server.set_fingerprints([("sha-256", a.fingerprint)])
    assert server.state == "connected" and server.srtp_in is not None


@pytest.mark.parametrize("nominate", [True, False])
def test_ice_lite_answers_a_check_with_our_password_only(nominate: bool) -> None:
    request = binding_request("ours:theirs", "our-password-0123456789", nominate=nominate)
    result = ice_lite_response(request, ("127.0.0.1", 5000), "ours", "our-password-0123456789")
    assert isinstance(result, Check) and result.nominated is nominate and result.remote_ufrag == "theirs"
    assert is_stun_response(result.response)
    assert ice_lite_response(request, ("127.0.0.1", 5000), "ours", "another-password") == "bad integrity"
    assert ice_lite_response(request, ("127.0.0.1", 5000), "other", "our-password-0123456789") == "another ufrag"
    assert ice_lite_response(b"\x80\x00" + bytes(30), ("127.0.0.1", 5000), "ours", "x") is None
