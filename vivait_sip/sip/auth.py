"""Client side of HTTP Digest for SIP (RFC 3261 §22.2, RFC 7616, RFC 8760), pure.

The user-agent layer (`ua.py`) answers a 401/407 with what this module computes.  Kept
apart from `vivait_sip/registrar/digest.py` (the server side) so that `sip/` imports
nothing outside itself; the hash formulas are the same, and a test checks this client
against the server's verifier.  No clock, no I/O: the caller passes the cnonce.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .message import parse_auth_params

_HASHES = {"md5": hashlib.md5, "sha-256": hashlib.sha256}
_CANONICAL = {"md5": "MD5", "sha-256": "SHA-256"}


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a UA answers challenges with: a password, or an HA1 precomputed for
    `ha1_algorithm` (a store that never holds passwords); `realm` None answers any realm."""

    username: str
    password: str | None = None
    ha1: str | None = None
    realm: str | None = None
    ha1_algorithm: str = "MD5"

    def __post_init__(self) -> None:
        if self.password is None and self.ha1 is None:
            raise ValueError("credentials need a password or an HA1")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One Digest challenge from WWW-Authenticate or Proxy-Authenticate."""

    realm: str
    nonce: str
    algorithm: str  # canonical spelling: "MD5" or "SHA-256"
    qop: tuple[str, ...]
    opaque: str | None
    stale: bool


def _hash(algorithm: str, text: str) -> str:
    return _HASHES[algorithm.lower()](text.encode("utf-8", "surrogateescape")).hexdigest()


def parse_challenge(value: str) -> Challenge | None:
    """A Digest challenge we could answer; None for other schemes, `-sess` algorithms,
    qop without `auth`, or a challenge missing its realm or nonce."""
    scheme, params = parse_auth_params(value)
    if scheme.lower() != "digest":
        return None
    realm = params.get("realm")
    nonce = params.get("nonce")
    algorithm = _CANONICAL.get(params.get("algorithm", "MD5").lower())
    if realm is None or not nonce or algorithm is None:
        return None
    qop = tuple(q.strip(" \t").lower() for q in params.get("qop", "").split(",") if q.strip(" \t"))
    if qop and "auth" not in qop:
        return None
    return Challenge(
        realm=realm,
        nonce=nonce,
        algorithm=algorithm,
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
    )


def usable(challenge: Challenge, credentials: Credentials) -> bool:
    """The credentials fit the challenge's realm, and its algorithm when only an HA1 is known."""
    if credentials.realm is not None and credentials.realm != challenge.realm:
        return False
    return credentials.password is not None or (
        credentials.ha1_algorithm.lower() == challenge.algorithm.lower()
    )


def best_challenges(values: list[str], credentials: Credentials) -> list[Challenge]:
    """One challenge per realm, the first usable one (servers list the strongest first,
    RFC 8760 §2.4)."""
    chosen: dict[str, Challenge] = {}
    for value in values:
        challenge = parse_challenge(value)
        if challenge is not None and challenge.realm not in chosen and usable(challenge, credentials):
            chosen[challenge.realm] = challenge
    return list(chosen.values())


def _quote(value: str) -> str:
    if any(c in value for c in "\r\n\x00"):
        raise ValueError("digest parameter contains CR, LF or NUL")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization(
    challenge: Challenge,
    credentials: Credentials,
    method: str,
    uri: str,
    *,
    cnonce: str,
    nc: int = 1,
) -> str:
    """The Authorization / Proxy-Authorization value answering `challenge`: qop=auth when
    offered, else the RFC 2069 form."""
    algorithm = challenge.algorithm
    if credentials.password is not None:
        ha1 = _hash(algorithm, f"{credentials.username}:{challenge.realm}:{credentials.password}")
    else:
        ha1 = (credentials.ha1 or "").lower()
    ha2 = _hash(algorithm, f"{method}:{uri}")
    parts = [
        f"username={_quote(credentials.username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
    ]
    if challenge.qop:
        nc_text = f"{nc:08x}"
        response = _hash(algorithm, f"{ha1}:{challenge.nonce}:{nc_text}:{cnonce}:auth:{ha2}")
        parts.append(f"response={_quote(response)}")
        parts.append(f"algorithm={algorithm}")
        parts += [f"cnonce={_quote(cnonce)}", "qop=auth", f"nc={nc_text}"]
    else:
        response = _hash(algorithm, f"{ha1}:{challenge.nonce}:{ha2}")
        parts.append(f"response={_quote(response)}")
        parts.append(f"algorithm={algorithm}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


__all__ = ["Challenge", "Credentials", "authorization", "best_challenges", "parse_challenge", "usable"]
