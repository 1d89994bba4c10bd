"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 8760, RFC 7616).

Pure: no I/O, the clock and randomness are injected.  Nonces are stateless and
opaque (issue time + unique bytes, encrypted and authenticated together with the
client's address) so any worker sharing the secret can validate them; the only state
is a bounded table of the highest nonce-count seen per nonce, which is what stops
replays of captured requests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from ..sip.errors import SipParseError
from ..sip.uri import parse_uri, unescape

__all__ = [
    "Algorithm",
    "AuthOutcome",
    "Authenticator",
    "DigestChallenge",
    "DigestCredentials",
    "DigestParseError",
    "NonceManager",
    "NonceStatus",
    "build_challenge",
    "build_challenges",
    "client_response",
    "digest_uri_matches",
    "ha1",
    "parse_challenge",
    "parse_credentials",
    "verify",
]


class DigestParseError(ValueError):
    """A Digest header value is malformed."""


class Algorithm(StrEnum):
    """Supported digest algorithms, spelled as on the wire."""

    MD5 = "MD5"
    SHA256 = "SHA-256"

    @classmethod
    def parse(cls, value: str) -> Algorithm | None:
        """Case-insensitive lookup (RFC 7616 §3.3); None if unsupported."""
        return _ALGORITHMS_BY_LOWER.get(value.lower())


_ALGORITHMS_BY_LOWER = {algorithm.value.lower(): algorithm for algorithm in Algorithm}
# The constructors themselves: hashlib.new(name) looks the name up on every call.
_HASHES = {Algorithm.MD5: hashlib.md5, Algorithm.SHA256: hashlib.sha256}


def _encode(text: str) -> bytes:
    # surrogateescape maps back bytes a transport decoded leniently.
    return text.encode("utf-8", "surrogateescape")


def _hash(algorithm: Algorithm, text: str) -> str:
    return _HASHES[algorithm](_encode(text)).hexdigest()


def ha1(algorithm: Algorithm, username: str, realm: str, password: str) -> str:
    """H(username:realm:password) as lowercase hex; what a user store keeps."""
    return _hash(algorithm, f"{username}:{realm}:{password}")


def _response(
    algorithm: Algorithm,
    ha1_hex: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None,
    nc: str | None,
    cnonce: str | None,
) -> str:
    """Request-digest for qop=auth, or the RFC 2069 form when qop is absent."""
    ha2 = _hash(algorithm, f"{method}:{uri}")
    if qop is None:
        return _hash(algorithm, f"{ha1_hex.lower()}:{nonce}:{ha2}")
    return _hash(algorithm, f"{ha1_hex.lower()}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# --- header parsing --------------------------------------------------------

_TOKEN_CHAR = r"[A-Za-z0-9\-.!%*_+`'~]"
_TOKEN_RE = re.compile(_TOKEN_CHAR + "+")
_WS = " \t"
_NC_RE = re.compile(r"[0-9a-fA-F]{8}")


@dataclass(frozen=True)
class DigestCredentials:
    """Parsed ``Authorization``/``Proxy-Authorization`` Digest credentials."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    qop: str | None = None
    nc: str | None = None
    opaque: str | None = None
    params: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class DigestChallenge:
    """Parsed ``WWW-Authenticate``/``Proxy-Authenticate`` Digest challenge."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    params: dict[str, str] = field(default_factory=dict, compare=False)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _read_token(text: str, pos: int, what: str) -> tuple[str, int]:
    match = _TOKEN_RE.match(text, pos)
    if match is None:
        raise DigestParseError(f"expected {what} at offset {pos}")
    return match.group(), match.end()


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at the opening quote; unescape pairs."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\":
            pos += 1
            if pos == len(text):
                break
            char = text[pos]
        out.append(char)
        pos += 1
    raise DigestParseError("unterminated quoted-string")


def _parse_params_exact(value: str) -> dict[str, str]:
    """Parse ``Digest k=v, k="v", ...`` character by character; the reference parser.

    Decides every input, and words every error; `_parse_params_fast` only
    short-cuts the well-formed values it is sure of.
    """
    if any(c in value for c in "\r\n\x00"):
        raise DigestParseError("header value contains CR, LF or NUL")
    try:
        _encode(value)
    except UnicodeEncodeError as exc:
        raise DigestParseError("header value is not encodable as UTF-8") from exc
    pos = _skip_ws(value, 0)
    scheme, pos = _read_token(value, pos, "auth scheme")
    if scheme.lower() != "digest":
        raise DigestParseError(f"unsupported auth scheme {scheme!r}")
    if pos < len(value) and value[pos] not in _WS:
        raise DigestParseError("auth scheme must be followed by whitespace")
    params: dict[str, str] = {}
    while True:
        pos = _skip_ws(value, pos)
        if pos == len(value):
            break
        if value[pos] == ",":  # empty list elements are allowed (RFC 7230 §7)
            pos += 1
            continue
        name, pos = _read_token(value, pos, "parameter name")
        pos = _skip_ws(value, pos)
        if pos == len(value) or value[pos] != "=":
            raise DigestParseError(f"expected '=' after {name!r}")
        pos = _skip_ws(value, pos + 1)
        if pos < len(value) and value[pos] == '"':
            param, pos = _read_quoted(value, pos)
        else:
            param, pos = _read_token(value, pos, f"value for {name!r}")
        key = name.lower()
        if key in params:
            raise DigestParseError(f"duplicate parameter {key!r}")
        params[key] = param
        pos = _skip_ws(value, pos)
        if pos < len(value) and value[pos] != ",":
            raise DigestParseError(f"expected ',' at offset {pos}")
    if not params:
        raise DigestParseError("Digest without parameters")
    return params


# The whole of a well-formed value, as `_parse_params_exact` reads it: the scheme and
# whitespace, then name=value (token or quoted-string) parameters separated by commas, with
# optional whitespace and empty list elements.  No part of it can match CR, LF or NUL.
# Every quantifier is possessive and every choice is decided by one character, so a
# value that does not match fails in linear time.
_OWS = r"[ \t]*+"
_TOKEN = _TOKEN_CHAR + "++"
_QUOTED = r'"(?:[^"\\\r\n\x00]++|\\[^\r\n\x00])*+"'
_PARAM = rf"{_TOKEN}{_OWS}={_OWS}(?:{_QUOTED}|{_TOKEN}){_OWS}"
_SEP = rf"(?:,{_OWS})"
_FAST_RE = re.compile(
    rf"({_OWS}[Dd][Ii][Gg][Ee][Ss][Tt])[ \t]++"  # group 1: up to where the parameters start
    rf"{_SEP}*+{_PARAM}(?:{_SEP}++(?:{_PARAM})?)*+"
)
# One parameter; in a value `_FAST_RE` accepted, `findall` finds exactly its parameters.
_FAST_PARAM_RE = re.compile(
    rf'({_TOKEN}){_OWS}={_OWS}(?:"((?:[^"\\]++|\\.)*+)"|({_TOKEN}))', re.DOTALL
)
_ESCAPED_RE = re.compile(r"\\(.)", re.DOTALL)


def _parse_params_fast(value: str) -> dict[str, str] | None:
    """`_parse_params_exact`'s result for a well-formed value; None when unsure.

    None for anything irregular (malformed, duplicate names, not UTF-8 encodable),
    which the exact parser then decides, so errors are always its own.
    """
    match = _FAST_RE.fullmatch(value)
    if match is None:
        return None
    if not value.isascii():
        try:
            _encode(value)
        except UnicodeEncodeError:
            return None
    params: dict[str, str] = {}
    # Scanning from just after the scheme meets only whitespace, commas and parameters.
    for name, quoted, token in _FAST_PARAM_RE.findall(value, match.end(1)):
        key = name.lower()
        if key in params:
            return None
        if token:
            params[key] = token
        elif "\\" in quoted:
            params[key] = _ESCAPED_RE.sub(r"\1", quoted)
        else:
            params[key] = quoted
    return params


def _parse_params(value: str) -> dict[str, str]:
    """Parse ``Digest k=v, k="v", ...`` into lower-cased names -> values."""
    params = _parse_params_fast(value)
    return _parse_params_exact(value) if params is None else params


def _require(params: dict[str, str], *names: str) -> list[str]:
    missing = [name for name in names if name not in params]
    if missing:
        raise DigestParseError(f"missing parameter(s): {', '.join(missing)}")
    return [params[name] for name in names]


def parse_credentials(value: str) -> DigestCredentials:
    """Parse an ``Authorization``/``Proxy-Authorization`` header value."""
    params = _parse_params(value)
    username, realm, nonce, uri, response = _require(
        params, "username", "realm", "nonce", "uri", "response"
    )
    qop = params.get("qop")
    nc = params.get("nc")
    cnonce = params.get("cnonce")
    if qop is not None and (nc is None or cnonce is None):
        raise DigestParseError("qop requires both nc and cnonce (RFC 7616 §3.4)")
    if nc is not None and not _NC_RE.fullmatch(nc):
        raise DigestParseError(f"nc must be 8 hex digits, got {nc!r}")
    return DigestCredentials(
        username=username,
        realm=realm,
        nonce=nonce,
        uri=uri,
        response=response,
        algorithm=params.get("algorithm", "MD5"),
        cnonce=cnonce,
        qop=qop,
        nc=nc,
        opaque=params.get("opaque"),
        params=params,
    )


def parse_challenge(value: str) -> DigestChallenge:
    """Parse a ``WWW-Authenticate``/``Proxy-Authenticate`` header value."""
    params = _parse_params(value)
    realm, nonce = _require(params, "realm", "nonce")
    qop = tuple(q.strip() for q in params.get("qop", "").split(",") if q.strip())
    return DigestChallenge(
        realm=realm,
        nonce=nonce,
        algorithm=params.get("algorithm", "MD5"),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
        params=params,
    )


def _quote(value: str) -> str:
    if any(c in value for c in "\r\n\x00"):
        raise ValueError("header parameter contains CR, LF or NUL")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- challenges and responses ----------------------------------------------


def build_challenge(
    realm: str,
    nonce: str,
    algorithm: Algorithm,
    stale: bool = False,
    opaque: str | None = None,
    qop: str | None = "auth",
) -> str:
    """One ``WWW-Authenticate`` value; ``qop=None`` issues an RFC 2069 challenge."""
    parts = [f"realm={_quote(realm)}", f"nonce={_quote(nonce)}", f"algorithm={algorithm}"]
    if qop is not None:
        parts.append(f"qop={_quote(qop)}")
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque)}")
    if stale:
        parts.append("stale=true")
    return "Digest " + ", ".join(parts)


def build_challenges(
    realm: str,
    nonce: str,
    *,
    stale: bool = False,
    opaque: str | None = None,
    qop: str | None = "auth",
    algorithms: Sequence[Algorithm] = (Algorithm.SHA256, Algorithm.MD5),
) -> list[str]:
    """One header value per algorithm, strongest first (RFC 8760 §2.4)."""
    return [build_challenge(realm, nonce, alg, stale, opaque, qop) for alg in algorithms]


def verify(
    credentials: DigestCredentials, method: str, stored_ha1: str, algorithm: Algorithm
) -> bool:
    """Check the response for qop=auth or legacy no-qop, in constant time."""
    if credentials.qop is not None and credentials.qop.lower() != "auth":
        return False
    expected = _response(
        algorithm,
        stored_ha1,
        method,
        credentials.uri,
        credentials.nonce,
        credentials.qop,
        credentials.nc,
        credentials.cnonce,
    )
    return hmac.compare_digest(expected.encode(), _encode(credentials.response.lower()))


def client_response(
    challenge: DigestChallenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    *,
    cnonce: str | None = None,
    nc: int = 1,
) -> str:
    """Build the ``Authorization`` value a UA would send for ``challenge``.

    Uses qop=auth when offered, else the RFC 2069 form.  Raises ValueError
    for an algorithm or qop we cannot answer.
    """
    algorithm = Algorithm.parse(challenge.algorithm)
    if algorithm is None:
        raise ValueError(f"unsupported algorithm {challenge.algorithm!r}")
    if challenge.qop and "auth" not in challenge.qop:
        raise ValueError(f"unsupported qop {challenge.qop!r}")
    qop = "auth" if challenge.qop else None
    nc_text = f"{nc:08x}" if qop else None
    cnonce = (cnonce or secrets.token_hex(8)) if qop else None
    response = _response(
        algorithm,
        ha1(algorithm, username, challenge.realm, password),
        method,
        uri,
        challenge.nonce,
        qop,
        nc_text,
        cnonce,
    )
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={algorithm}",
    ]
    if qop is not None and cnonce is not None:
        parts += [f"cnonce={_quote(cnonce)}", f"qop={qop}", f"nc={nc_text}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


# --- nonces ----------------------------------------------------------------


class NonceStatus(Enum):
    """Result of checking a nonce (or a nonce-count against it)."""

    VALID = "valid"
    STALE = "stale"  # genuine but no longer usable: re-challenge with stale=true
    INVALID = "invalid"  # forged, corrupt, or a replayed nonce-count


_MAC_CONTEXT = b"vivait-sip digest nonce v2 mac"
_ENC_CONTEXT = b"vivait-sip digest nonce v2 enc"
_TIME = struct.Struct(">q")
_RANDOM_BYTES = 16  # the first is replaced by the verifier (worker index)
_PLAIN_BYTES = _TIME.size + _RANDOM_BYTES
_TAG_BYTES = 16
_NONCE_BYTES = _TAG_BYTES + _PLAIN_BYTES
_NONCE_CHARS = -(-_NONCE_BYTES * 4 // 3)  # unpadded base64: the only length that decodes
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]+")


def _subkey(secret: bytes, context: bytes) -> bytes:
    """A 32-byte key for one use of the secret (HMAC-SHA256 as the key derivation)."""
    return hmac.new(secret, context, hashlib.sha256).digest()


class NonceManager:
    """Issues and validates stateless, opaque, source-bound nonces; tracks nonce-counts.

    The plaintext is issue time in ms (8 bytes) | verifier (1) | unique bytes (15).
    A nonce is base64url(tag | plaintext XOR keystream) with, in the manner of SIV
    (RFC 5297) built from keyed BLAKE2s (RFC 7693, a MAC and PRF by design):

        tag       = BLAKE2s-128(key=K_mac, plaintext | source address)
        keystream = BLAKE2s-192(key=K_enc, tag)

    so the nonce reads as random bytes (neither the issue time nor the counter in the
    unique bytes shows, and two nonces have nothing comparable), only the holder of the
    secret can decrypt it, and it verifies only for the source address it was issued
    to: a nonce fetched from one address and answered from another is not ours.

    The nonce-count table holds at most ``max_tracked`` nonces; when full, the oldest
    is forgotten and every unseen nonce issued no later than it is treated as stale, so
    forgetting can never re-open a replay window.
    """

    def __init__(
        self,
        secret: bytes,
        lifetime_s: float,
        clock: Callable[[], float],
        *,
        max_tracked: int = 100_000,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("nonce secret must be at least 16 bytes")
        if lifetime_s <= 0 or max_tracked <= 0:
            raise ValueError("lifetime_s and max_tracked must be positive")
        self._lifetime_ms = int(lifetime_s * 1000)
        self._clock = clock
        self._max_tracked = max_tracked
        self._random_bytes = random_bytes
        # nonce plaintext -> (highest nc seen, expiry in ms); insertion ordered.
        self._counts: OrderedDict[bytes, tuple[int, int]] = OrderedDict()
        self._forgotten_up_to_ms: int | None = None
        # Keyed hash states after the key; each use copies one (no key schedule per nonce).
        self._mac_base = hashlib.blake2s(key=_subkey(secret, _MAC_CONTEXT), digest_size=_TAG_BYTES)
        self._enc_base = hashlib.blake2s(key=_subkey(secret, _ENC_CONTEXT), digest_size=_PLAIN_BYTES)
        # The last genuine nonce decoded, by identity, with the source it was checked for:
        # a request's nonce string is validated, then validated and counted, so it is
        # decoded once, not three times.
        self._last_decoded: tuple[str, str, bytes] | None = None

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _tag(self, plain: bytes, source: str) -> bytes:
        mac = self._mac_base.copy()
        mac.update(plain)
        mac.update(source.encode("utf-8", "surrogateescape"))
        return mac.digest()

    def _keystream(self, tag: bytes) -> int:
        enc = self._enc_base.copy()
        enc.update(tag)
        return int.from_bytes(enc.digest(), "big")

    def issue(self, verifier: int | None = None, source: str = "") -> str:
        """A fresh nonce bound to the current time and to `source` (the client's address).

        `verifier` (0-255) names the worker process that will check it and hold its
        nonce-count (vivait_sip/workers.py); it replaces the first random byte, the
        remaining 15 keep nonces unique.
        """
        random_part = self._random_bytes(_RANDOM_BYTES)
        if verifier is not None:
            random_part = b"".join((bytes((verifier & 0xFF,)), random_part[1:]))
        # b"".join, not `+`: compiled by mypyc <= 2.0, bytes + bytes leaks its left
        # operand (tests/native_shapes.py).
        plain = b"".join((_TIME.pack(self._now_ms()), random_part))
        tag = self._tag(plain, source)
        cipher = (int.from_bytes(plain, "big") ^ self._keystream(tag)).to_bytes(_PLAIN_BYTES, "big")
        return base64.urlsafe_b64encode(b"".join((tag, cipher))).rstrip(b"=").decode("ascii")

    def _decode(self, nonce: str, source: str) -> bytes | None:
        """Plaintext of a genuine nonce issued to `source`, in canonical encoding, else None."""
        last = self._last_decoded
        if last is not None and last[0] is nonce and last[1] == source:
            return last[2]
        if len(nonce) != _NONCE_CHARS or not _NONCE_RE.fullmatch(nonce):
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except ValueError:
            return None
        if len(raw) != _NONCE_BYTES:
            return None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != nonce:
            return None  # reject the alternative spellings of the same bytes
        tag = raw[:_TAG_BYTES]
        cipher = int.from_bytes(raw[_TAG_BYTES:], "big")
        plain = (cipher ^ self._keystream(tag)).to_bytes(_PLAIN_BYTES, "big")
        if not hmac.compare_digest(tag, self._tag(plain, source)):
            return None
        self._last_decoded = (nonce, source, plain)
        return plain

    @staticmethod
    def _issued_ms(plain: bytes) -> int:
        issued_ms: int = _TIME.unpack_from(plain)[0]
        return issued_ms

    def verifier(self, nonce: str, source: str = "") -> int | None:
        """The worker a genuine nonce was issued for (see `issue`), None if not ours."""
        plain = self._decode(nonce, source)
        return None if plain is None else plain[_TIME.size]

    def validate(self, nonce: str, source: str = "") -> NonceStatus:
        """VALID if ours, issued to `source` and within its lifetime; STALE if ours but
        expired; INVALID otherwise (forged, corrupt, or issued to another address)."""
        plain = self._decode(nonce, source)
        if plain is None:
            return NonceStatus.INVALID
        age_ms = self._now_ms() - self._issued_ms(plain)
        # A nonce from "the future" means our clock stepped back: re-challenge.
        return NonceStatus.VALID if 0 <= age_ms <= self._lifetime_ms else NonceStatus.STALE

    def check_nc(self, nonce: str, nc: int, source: str = "") -> NonceStatus:
        """Record ``nc`` for a valid nonce; INVALID if not above the last one seen.

        Call only after the request's digest has verified, so that forged
        requests cannot advance the count and lock out the real client.
        """
        plain = self._decode(nonce, source)
        if plain is None:
            return NonceStatus.INVALID
        now_ms = self._now_ms()
        self._purge_expired(now_ms)
        entry = self._counts.get(plain)
        if entry is None:
            issued_ms = self._issued_ms(plain)
            if self._forgotten_up_to_ms is not None and issued_ms <= self._forgotten_up_to_ms:
                return NonceStatus.STALE
            self._counts[plain] = (nc, issued_ms + self._lifetime_ms)
            self._evict_over_capacity()
            return NonceStatus.VALID
        last_nc, expires_ms = entry
        if nc <= last_nc:
            return NonceStatus.INVALID
        self._counts[plain] = (nc, expires_ms)
        return NonceStatus.VALID

    def _purge_expired(self, now_ms: int) -> None:
        while self._counts:
            payload, (_, expires_ms) = next(iter(self._counts.items()))
            if expires_ms >= now_ms:
                return
            del self._counts[payload]

    def _evict_over_capacity(self) -> None:
        while len(self._counts) > self._max_tracked:
            payload, _ = self._counts.popitem(last=False)
            issued_ms = self._issued_ms(payload)
            if self._forgotten_up_to_ms is None or issued_ms > self._forgotten_up_to_ms:
                self._forgotten_up_to_ms = issued_ms

    @property
    def tracked(self) -> int:
        """Number of nonces whose nonce-count is currently remembered."""
        return len(self._counts)


# --- server-side policy ----------------------------------------------------


class AuthOutcome(Enum):
    """What a registrar/proxy should do with a request's credentials."""

    OK = "ok"
    STALE = "stale"  # right password, old nonce: re-challenge with stale=true
    # A password was tested and was wrong (or the user unknown): re-challenge, and this
    # is the only outcome that counts as a failed attempt (bans).
    FAILED = "failed"
    # Refused before any password could be tested (a nonce we did not issue to this
    # source, another realm or algorithm, missing qop/nc, opaque changed) or a replayed
    # nonce-count (the password was right): re-challenge, not a failed attempt.
    REJECTED = "rejected"
    # The digest `uri` names another resource than the Request-URI: 400 (RFC 7616 §3.4.6).
    URI_MISMATCH = "uri_mismatch"


HA1Lookup = Callable[[str, str, Algorithm], str | None]


class Authenticator:
    """Checks Digest credentials against a user store without leaking which users exist.

    ``ha1_lookup(username, realm, algorithm)`` returns the stored HA1 hex for
    that algorithm, or None for an unknown user.  Unknown users are verified
    against a random dummy HA1 so the work done, and the outcome, match a
    wrong password.
    """

    def __init__(
        self,
        realm: str,
        nonces: NonceManager,
        ha1_lookup: HA1Lookup,
        *,
        algorithms: Sequence[Algorithm] = (Algorithm.SHA256, Algorithm.MD5),
        opaque: str | None = None,
        allow_no_qop: bool = False,
    ) -> None:
        self.realm = realm
        self.nonces = nonces
        self._ha1_lookup = ha1_lookup
        self.algorithms = tuple(algorithms)
        self.opaque = opaque
        self.allow_no_qop = allow_no_qop
        dummy_password = secrets.token_hex(16)
        self._dummy_ha1 = {alg: ha1(alg, "", realm, dummy_password) for alg in Algorithm}
        # (realm, algorithms, opaque, stale) -> the text around the nonce in each value.
        self._challenge_parts: dict[
            tuple[str, tuple[Algorithm, ...], str | None, bool], list[tuple[str, str]]
        ] = {}

    def challenges(
        self, *, stale: bool = False, verifier: int | None = None, source: str = ""
    ) -> list[str]:
        """Fresh ``WWW-Authenticate`` values (one per algorithm, strongest first).

        Exactly `build_challenges`, with the text around the nonce built once.
        `verifier`: the worker process that will check the answer (`NonceManager.issue`);
        `source`: the client's address, the only one the nonce will verify for.
        """
        nonce = self.nonces.issue(verifier, source)
        key = (self.realm, self.algorithms, self.opaque, stale)
        parts = self._challenge_parts.get(key)
        if parts is None:
            parts = self._split_challenges(key)
            self._challenge_parts[key] = parts
        quoted = _quote(nonce)
        return [head + quoted + tail for head, tail in parts]

    @staticmethod
    def _split_challenges(
        key: tuple[str, tuple[Algorithm, ...], str | None, bool],
    ) -> list[tuple[str, str]]:
        """`build_challenges` for ``key``, cut either side of its (empty) quoted nonce."""
        realm, algorithms, opaque, stale = key
        head = f"Digest realm={_quote(realm)}, nonce="
        parts = []
        for value in build_challenges(realm, "", stale=stale, opaque=opaque, algorithms=algorithms):
            if not value.startswith(head + '""'):
                raise AssertionError(f"unexpected challenge layout {value!r}")
            parts.append((head, value[len(head) + 2 :]))
        return parts

    def authenticate(
        self,
        method: str,
        credentials: DigestCredentials,
        *,
        request_uri: str | None = None,
        source: str = "",
    ) -> AuthOutcome:
        """Decide the outcome (see `AuthOutcome`) for credentials received from `source`.

        ``request_uri``, if given, must name the same resource as ``uri=``
        (`digest_uri_matches`), else URI_MISMATCH before any password is tested.
        """
        algorithm = Algorithm.parse(credentials.algorithm)
        if (
            algorithm is None
            or algorithm not in self.algorithms
            or credentials.realm != self.realm
            or (self.opaque is not None and credentials.opaque != self.opaque)
            or (credentials.qop is None and not self.allow_no_qop)
            or (credentials.qop is not None and (credentials.qop.lower() != "auth" or credentials.nc is None))
        ):
            return AuthOutcome.REJECTED
        nonce_status = self.nonces.validate(credentials.nonce, source)
        if nonce_status is NonceStatus.INVALID:
            return AuthOutcome.REJECTED
        if request_uri is not None and not digest_uri_matches(credentials.uri, request_uri):
            return AuthOutcome.URI_MISMATCH
        stored = self._ha1_lookup(credentials.username, credentials.realm, algorithm)
        matched = verify(credentials, method, stored or self._dummy_ha1[algorithm], algorithm)
        if not matched or stored is None:
            return AuthOutcome.FAILED
        if nonce_status is NonceStatus.STALE:
            return AuthOutcome.STALE
        if credentials.qop is None or credentials.nc is None:
            return AuthOutcome.OK  # legacy RFC 2069 form: no nonce-count to check
        nc_status = self.nonces.check_nc(credentials.nonce, int(credentials.nc, 16), source)
        if nc_status is NonceStatus.STALE:
            return AuthOutcome.STALE
        return AuthOutcome.OK if nc_status is NonceStatus.VALID else AuthOutcome.REJECTED


def digest_uri_matches(digest_uri: str, request_uri: str) -> bool:
    """Whether the digest `uri` names the Request-URI's resource (RFC 7616 §3.4.6).

    Identical text, or the same scheme, user (unescaped, case-sensitive) and host (case-
    insensitive), and the same port when both give one, as RFC 3261 §19.1.4 compares
    those parts.  URI parameters, and a port given on one side only, are ignored on
    purpose: deployed UAs re-spell them (SIPp puts the port it sent to in `uri`), and
    they do not change which resource is addressed; refusing them would lock phones out
    and buy nothing.  Another user or host, as in a digest reused for another request,
    never matches.
    """
    if digest_uri == request_uri:
        return True
    try:
        a, b = parse_uri(digest_uri), parse_uri(request_uri)
    except SipParseError:
        return False
    if a.scheme.lower() != b.scheme.lower():
        return False
    if a.opaque is not None or b.opaque is not None:
        return a.opaque == b.opaque
    if a.host.lower() != b.host.lower():
        return False
    if a.port is not None and b.port is not None and a.port != b.port:
        return False
    a_user = None if a.user is None else unescape(a.user)
    b_user = None if b.user is None else unescape(b.user)
    return a_user == b_user
