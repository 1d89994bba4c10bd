"""The nonce source the server uses: distinct, right-sized, and still HMAC-protected."""

from __future__ import annotations

from vivait_sip.registrar.digest import NonceManager, NonceStatus
from vivait_sip.registrar.feature import unique_bytes


def test_unique_bytes_never_repeat() -> None:
    values = [unique_bytes(16) for _ in range(20000)]
    assert len(set(values)) == len(values)
    assert {len(v) for v in values} == {16}


def test_nonces_from_the_counter_source_cannot_be_forged() -> None:
    now = [1000.0]
    manager = NonceManager(b"k" * 32, 300, lambda: now[0], random_bytes=unique_bytes)
    other = NonceManager(b"x" * 32, 300, lambda: now[0], random_bytes=unique_bytes)
    nonce = manager.issue()
    assert manager.validate(nonce) is NonceStatus.VALID
    assert manager.issue() != nonce
    assert manager.validate(other.issue()) is NonceStatus.INVALID
