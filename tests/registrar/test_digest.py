"""Tests for SIP Digest authentication."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vivait_sip.registrar import digest
from vivait_sip.registrar.digest import (
    Algorithm,
    Authenticator,
    AuthOutcome,
    DigestChallenge,
    DigestCredentials,
    DigestParseError,
    NonceManager,
    NonceStatus,
    build_challenge,
    build_challenges,
    client_response,
    ha1,
    parse_challenge,
    parse_credentials,
    verify,
)

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "sip.example.com"
URI = "sip:sip.example.com"
LIFETIME = 300.0


class FakeClock:
    """Manually advanced clock so expiry is deterministic."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_nonces(clock: FakeClock, max_tracked: int = 100_000) -> NonceManager:
    return NonceManager(SECRET, LIFETIME, clock, max_tracked=max_tracked)


# RFC 7616 §3.9.1
RFC7616_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


class TestWorkedExamples:
    @pytest.mark.parametrize(
        ("algorithm", "expected"),
        [
            (Algorithm.MD5, "8ca523f5e9506fed4657c9700eebdbec"),
            (
                Algorithm.SHA256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ],
    )
    def test_rfc7616_example(self, algorithm: Algorithm, expected: str) -> None:
        challenge = parse_challenge(RFC7616_CHALLENGE.format(alg=algorithm))
        header = client_response(
            challenge, "GET", "/dir/index.html", "Mufasa", "Circle of Life", cnonce=RFC7616_CNONCE
        )
        credentials = parse_credentials(header)
        assert credentials.response == expected
        assert credentials.nc == "00000001"
        assert credentials.qop == "auth"
        assert credentials.opaque == challenge.opaque
        stored = ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
        assert verify(credentials, "GET", stored, algorithm)
        assert not verify(credentials, "POST", stored, algorithm)

    def test_rfc2617_example(self) -> None:
        credentials = parse_credentials(
            'Digest username="Mufasa", realm="testrealm@host.com", '
            'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", '
            'qop=auth, nc=00000001, cnonce="0a4f113b", '
            'response="6629fae49393a05397450978507c4ef1", '
            'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
        )
        stored = ha1(Algorithm.MD5, "Mufasa", "testrealm@host.com", "Circle Of Life")
        assert verify(credentials, "GET", stored, Algorithm.MD5)
        wrong = ha1(Algorithm.MD5, "Mufasa", "testrealm@host.com", "circle of life")
        assert not verify(credentials, "GET", wrong, Algorithm.MD5)

    def test_ha1_values(self) -> None:
        assert ha1(Algorithm.MD5, "Mufasa", "testrealm@host.com", "Circle Of Life") == (
            "939e7578ed9e3c518a452acee763bce9"
        )
        assert len(ha1(Algorithm.SHA256, "a", "b", "c")) == 64

    def test_legacy_rfc2069_response(self) -> None:
        challenge = DigestChallenge(realm=REALM, nonce="abc")
        credentials = parse_credentials(client_response(challenge, "REGISTER", URI, "bob", "pw"))
        assert credentials.qop is None and credentials.nc is None and credentials.cnonce is None
        assert verify(
            credentials, "REGISTER", ha1(Algorithm.MD5, "bob", REALM, "pw"), Algorithm.MD5
        )

    def test_uppercase_hex_response_accepted(self) -> None:
        challenge = DigestChallenge(realm=REALM, nonce="abc", qop=("auth",))
        credentials = parse_credentials(client_response(challenge, "REGISTER", URI, "bob", "pw"))
        shouted = dataclasses.replace(credentials, response=credentials.response.upper())
        assert verify(shouted, "REGISTER", ha1(Algorithm.MD5, "bob", REALM, "pw"), Algorithm.MD5)

    def test_auth_int_is_not_verified(self) -> None:
        challenge = DigestChallenge(realm=REALM, nonce="abc", qop=("auth",))
        credentials = parse_credentials(client_response(challenge, "REGISTER", URI, "bob", "pw"))
        auth_int = dataclasses.replace(credentials, qop="auth-int")
        assert not verify(
            auth_int, "REGISTER", ha1(Algorithm.MD5, "bob", REALM, "pw"), Algorithm.MD5
        )

    def test_client_rejects_unsupported_challenge(self) -> None:
        with pytest.raises(ValueError, match="algorithm"):
            client_response(
                DigestChallenge(REALM, "n", algorithm="SHA-512-256"), "R", URI, "u", "p"
            )
        with pytest.raises(ValueError, match="qop"):
            client_response(DigestChallenge(REALM, "n", qop=("auth-int",)), "R", URI, "u", "p")


class TestParsing:
    def test_credentials_with_odd_spacing_case_and_escapes(self) -> None:
        credentials = parse_credentials(
            '  digest USERNAME = "al\\"ice" ,Realm="sip.example.com",,'
            '\tnonce="n1",uri="sip:x@y;transport=tcp", response="ABCDEF",'
            ' algorithm="sha-256", qop=auth, NC=0000000a, cnonce="c,n", opaque="",'
            " x-extra=token"
        )
        assert credentials.username == 'al"ice'
        assert credentials.realm == REALM
        assert credentials.uri == "sip:x@y;transport=tcp"
        assert credentials.algorithm == "sha-256"
        assert Algorithm.parse(credentials.algorithm) is Algorithm.SHA256
        assert credentials.nc == "0000000a"
        assert credentials.cnonce == "c,n"
        assert credentials.opaque == ""
        assert credentials.params["x-extra"] == "token"

    def test_algorithm_defaults_to_md5(self) -> None:
        credentials = parse_credentials(
            'Digest username="a", realm="r", nonce="n", uri="u", response="x"'
        )
        assert credentials.algorithm == "MD5"
        assert credentials.qop is None

    def test_challenge(self) -> None:
        challenge = parse_challenge(
            'Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth,auth-int", '
            'stale=TRUE, opaque="o"'
        )
        assert challenge == DigestChallenge(
            realm="r",
            nonce="n",
            algorithm="SHA-256",
            qop=("auth", "auth-int"),
            opaque="o",
            stale=True,
        )

    def test_built_challenges_parse_back(self) -> None:
        values = build_challenges(
            'we"ird\\realm', "nonce", stale=True, opaque="op", algorithms=list(Algorithm)
        )
        assert [parse_challenge(v).algorithm for v in values] == ["MD5", "SHA-256"]
        parsed = parse_challenge(values[0])
        assert parsed.realm == 'we"ird\\realm'
        assert parsed.stale and parsed.opaque == "op" and parsed.qop == ("auth",)

    def test_default_challenges_offer_sha256_first(self) -> None:
        values = build_challenges(REALM, "n")
        assert [parse_challenge(v).algorithm for v in values] == ["SHA-256", "MD5"]
        assert "stale" not in values[0]

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("MD5", Algorithm.MD5),
            ("md5", Algorithm.MD5),
            ("sha-256", Algorithm.SHA256),
            ("SHA-256", Algorithm.SHA256),
            ("SHA-256-sess", None),
            ("SHA256", None),
            ("", None),
            ("MD5 ", None),
            ("\uff2d\uff245", None),  # fullwidth "MD5"
        ],
    )
    def test_algorithm_parse(self, text: str, expected: Algorithm | None) -> None:
        assert Algorithm.parse(text) is expected

    def test_challenge_without_qop(self) -> None:
        value = build_challenge(REALM, "n", Algorithm.MD5, qop=None)
        assert parse_challenge(value).qop == ()

    def test_challenge_refuses_header_injection(self) -> None:
        with pytest.raises(ValueError, match="CR, LF"):
            build_challenge("evil\r\nVia: x", "n", Algorithm.MD5)

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("", "auth scheme"),
            ("Basic dXNlcjpwYXNz", "unsupported auth scheme"),
            ("Digest", "without parameters"),
            ("Digestusername=x", "unsupported auth scheme"),
            ('Digest username="a", username="b"', "duplicate parameter 'username'"),
            ('Digest Username="a", USERNAME="b"', "duplicate parameter"),
            ('Digest username="a', "unterminated"),
            ("Digest username", "expected '='"),
            ("Digest username=", "expected value"),
            ('Digest username="a" realm="r"', "expected ','"),
            ("Digest =x", "parameter name"),
            ('Digest username="a"\r\n, realm="r"', "CR, LF"),
            ('Digest realm="r", nonce="n", uri="u", response="x"', "missing parameter.*username"),
            (
                'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth',
                "qop requires",
            ),
            (
                'Digest username="a", realm="r", nonce="n", uri="u", response="x", '
                'qop=auth, cnonce="c", nc=1',
                "nc must be 8 hex",
            ),
        ],
    )
    def test_malformed_credentials(self, value: str, message: str) -> None:
        with pytest.raises(DigestParseError, match=message):
            parse_credentials(value)

    def test_challenge_requires_realm_and_nonce(self) -> None:
        with pytest.raises(DigestParseError, match="nonce"):
            parse_challenge('Digest realm="r"')

    @given(st.text(max_size=200))
    def test_arbitrary_text_raises_only_parse_error(self, value: str) -> None:
        for parser in (parse_credentials, parse_challenge):
            with contextlib.suppress(DigestParseError):
                parser(value)

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["username", "realm", "nonce", "uri", "response", "qop", "nc"]),
                st.text(max_size=20),
            ),
            max_size=8,
        )
    )
    def test_arbitrary_parameter_lists_raise_only_parse_error(
        self, params: list[tuple[str, str]]
    ) -> None:
        value = "Digest " + ", ".join(f'{k}="{v}"' for k, v in params)
        with contextlib.suppress(DigestParseError):
            parse_credentials(value)


# --- the regex fast path agrees with the exact parser -------------------------


def exact_outcome(value: str) -> dict[str, str] | str:
    """The reference parser's result, or its error message."""
    try:
        return digest._parse_params_exact(value)
    except DigestParseError as exc:
        return f"DigestParseError: {exc}"


def assert_fast_agrees(value: str) -> dict[str, str] | None:
    """The fast path says nothing or says what the exact parser says; and so does the API."""
    fast = digest._parse_params_fast(value)
    expected = exact_outcome(value)
    if fast is not None:
        assert fast == expected
        assert list(fast) == list(expected)  # same insertion order too
    try:
        actual: dict[str, str] | str = digest._parse_params(value)
    except DigestParseError as exc:
        actual = f"DigestParseError: {exc}"
    assert actual == expected
    return fast


SIPP_VALUE = (
    'Digest username="100000",realm="127.0.0.1",uri="sip:127.0.0.1:5160",'
    'nonce="AAABjK6cW3s5Yf0x1n7qH2xkQJ9l2wD8oPqRsTuVwXyZ0123456789",'
    'response="0123456789abcdef0123456789abcdef",algorithm=MD5'
)
BARESIP_VALUE = (
    'Digest username="alice",realm="sip.example.com",nonce="abc",uri="sip:sip.example.com",'
    'response="0123456789abcdef0123456789abcdef",algorithm=MD5,cnonce="4c2b1e5d9a0f7e31",'
    "qop=auth,nc=00000001"
)

_TOKEN_ALPHABET = "abcXYZ019-.!%*_+`'~"


def choice(
    good: st.SearchStrategy[str], bad: st.SearchStrategy[str]
) -> tuple[st.SearchStrategy[str], st.SearchStrategy[str]]:
    """(what a well-formed value is made of, that or something irregular)."""
    return good, st.one_of(good, bad)


_names = choice(
    st.one_of(
        st.sampled_from(["username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce"]),
        st.text(alphabet=_TOKEN_ALPHABET, min_size=1, max_size=6),
    ),
    st.text(max_size=3),  # mostly not a token
)
_good_text = st.text(alphabet='abc é,=; \t"\\\udc80', max_size=10)
_any_text = st.text(alphabet='abc é,"\\\udc80\ud800', max_size=10)
_values = choice(
    st.one_of(
        st.text(alphabet=_TOKEN_ALPHABET, min_size=1, max_size=8),
        # a quoted-string with every quote and backslash escaped
        _good_text.map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    ),
    st.one_of(_any_text.map(lambda t: '"' + t + '"'), _any_text),  # raw, maybe cut short
)
_ows = choice(st.sampled_from(["", " ", "\t", "  \t"]), st.sampled_from(["\x0b", "\xa0"]))
_separators = choice(
    st.sampled_from([",", ", ", " ,", ",,", ", ,\t,", "\t,  "]),
    st.sampled_from([" ", "", ";", "=", '"']),
)
_schemes = choice(
    st.sampled_from(["Digest ", "digest\t", "DIGEST  ", " \tDigest "]),
    st.sampled_from(["Digest", "Basic ", "Digestx ", "Digest,", ""]),
)


@st.composite
def digest_values(draw: st.DrawFn) -> str:
    """Digest header values: about half well-formed, the rest subtly or grossly not."""
    which = 1 if draw(st.booleans()) else 0  # 0: only well-formed parts

    def part(strategies: tuple[st.SearchStrategy[str], st.SearchStrategy[str]]) -> str:
        return draw(strategies[which])

    parts = [part(_schemes)]
    if draw(st.booleans()):
        parts.append(part(_separators))
    names: set[str] = set()
    for index in range(draw(st.integers(min_value=0, max_value=6))):
        if index:
            parts.append(part(_separators))
        name = part(_names)
        if not which and name.lower() in names:
            continue  # a duplicate is irregular
        names.add(name.lower())
        parts += [name, part(_ows), "=", part(_ows), part(_values), part(_ows)]
    if draw(st.booleans()):
        parts.append(part(_separators))
    value = "".join(parts)
    if which and value and draw(st.booleans()):  # one stray character
        at = draw(st.integers(min_value=0, max_value=len(value)))
        value = value[:at] + draw(st.sampled_from('"\\,= \t\r\n\x00é\udcff\ud800x')) + value[at:]
    return value


class TestFastParser:
    @pytest.mark.parametrize("value", [SIPP_VALUE, BARESIP_VALUE])
    def test_realistic_values_take_the_fast_path(self, value: str) -> None:
        assert assert_fast_agrees(value) is not None

    def test_client_response_takes_the_fast_path(self) -> None:
        challenge = parse_challenge(RFC7616_CHALLENGE.format(alg="MD5"))
        value = client_response(challenge, "GET", "/dir", "Mufasa", "pw", cnonce=RFC7616_CNONCE)
        assert assert_fast_agrees(value) is not None

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ('Digest a="x\\"y"', {"a": 'x"y'}),  # escaped quote
            ('Digest a="x\\\\"', {"a": "x\\"}),  # escaped backslash before the closing quote
            ('Digest a="\\a\\b"', {"a": "ab"}),  # any character may be escaped
            ('Digest a="c,n", b="d=e"', {"a": "c,n", "b": "d=e"}),  # commas inside quotes
            ("Digest ,, a=1 ,,, b=2,,", {"a": "1", "b": "2"}),  # empty list elements
            ("Digest a = 1,b\t=\t2", {"a": "1", "b": "2"}),  # whitespace around '='
            ('  dIgEsT\ta=""', {"a": ""}),  # leading space, scheme case, empty quoted
            ('Digest A=1, b="é ü"', {"a": "1", "b": "é ü"}),  # non-ASCII but encodable
            ('Digest a="\udcff"', {"a": "\udcff"}),  # surrogateescape'd byte
        ],
    )
    def test_edge_cases_take_the_fast_path(self, value: str, expected: dict[str, str]) -> None:
        assert assert_fast_agrees(value) == expected

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("Digest a=1, A=2", "duplicate parameter 'a'"),
            ('Digest a="1", b=2, a="1"', "duplicate parameter 'a'"),
            ('Digest a="\ud800"', "not encodable as UTF-8"),  # lone surrogate
            ('Digest a="x\\', "unterminated"),
            ('Digest a="x\\"', "unterminated"),
            ("Digest a=1 b=2", "expected ','"),
            ("Digest a=1;b=2", "expected ','"),
            ("Digest a==1", "expected value"),
            ('Digest a="1"x', "expected ','"),
            ("Digest ,,", "without parameters"),
            ("Digest\t", "without parameters"),
            ("Digest,a=1", "followed by whitespace"),
            ("Digestive a=1", "unsupported auth scheme 'Digestive'"),
            ('Digest a="x\ny"', "CR, LF or NUL"),
            ('Digest a="x\x00"', "CR, LF or NUL"),
            ("Digest a=1\r", "CR, LF or NUL"),
            ("Digest a=\u00e9", "expected value"),
            ("Digest \u00e9=1", "parameter name"),
        ],
    )
    def test_irregular_values_fall_back_to_the_exact_errors(self, value: str, message: str) -> None:
        assert digest._parse_params_fast(value) is None
        assert_fast_agrees(value)
        with pytest.raises(DigestParseError, match=message):
            parse_credentials(value)

    @given(digest_values())
    def test_fast_path_agrees_on_generated_values(self, value: str) -> None:
        assert_fast_agrees(value)

    @given(st.text(alphabet='Digest a=b,"\\ \t\r\x00é\ud800', max_size=40))
    def test_fast_path_agrees_on_arbitrary_text(self, value: str) -> None:
        assert_fast_agrees(value)

    @given(
        st.lists(
            st.tuples(
                st.text(alphabet=_TOKEN_ALPHABET, min_size=1, max_size=6),
                st.text(max_size=12),
                st.booleans(),
            ),
            min_size=1,
            max_size=8,
            unique_by=lambda item: item[0].lower(),
        ),
        st.sampled_from([",", ", ", " , ", ",,"]),
    )
    def test_well_formed_lists_take_the_fast_path(
        self, params: list[tuple[str, str, bool]], separator: str
    ) -> None:
        """Every well-formed list with a clean value parses fast, to the quoted text."""
        items = []
        for name, text, quote in params:
            text = text.replace("\r", "").replace("\n", "").replace("\x00", "")
            if quote or not text or not digest._TOKEN_RE.fullmatch(text):
                text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
            items.append(f"{name}={text}")
        value = "Digest " + separator.join(items)
        try:
            value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            assert assert_fast_agrees(value) is None
            return
        assert assert_fast_agrees(value) is not None
        # The same list with one name repeated (in another case) is still refused.
        name = params[-1][0].swapcase()
        duplicated = f"{value}{separator}{name}=x"
        assert assert_fast_agrees(duplicated) is None
        with pytest.raises(DigestParseError, match="duplicate parameter"):
            digest._parse_params(duplicated)

    @pytest.mark.parametrize(
        "value",
        [
            "Digest " + "a=b," * 20000 + "!",
            "Digest " + "," * 50000 + "!",
            'Digest a="' + "\\a" * 50000,
            "Digest a=b" + ", ," * 50000 + "=",
        ],
    )
    def test_long_malformed_values_are_rejected_quickly(self, value: str) -> None:
        assert digest._parse_params_fast(value) is None


class TestNonceManager:
    def test_fresh_nonce_is_valid_and_unique(self) -> None:
        nonces = make_nonces(FakeClock())
        first, second = nonces.issue(), nonces.issue()
        assert first != second
        assert nonces.validate(first) is NonceStatus.VALID

    def test_expired_nonce_is_stale(self) -> None:
        clock = FakeClock()
        nonces = make_nonces(clock)
        nonce = nonces.issue()
        clock.now += LIFETIME
        assert nonces.validate(nonce) is NonceStatus.VALID
        clock.now += 0.01
        assert nonces.validate(nonce) is NonceStatus.STALE

    def test_clock_stepping_back_makes_nonce_stale(self) -> None:
        clock = FakeClock()
        nonces = make_nonces(clock)
        nonce = nonces.issue()
        clock.now -= 10
        assert nonces.validate(nonce) is NonceStatus.STALE

    def test_nonce_from_other_secret_is_invalid(self) -> None:
        clock = FakeClock()
        other = NonceManager(b"another-secret-of-16+bytes", LIFETIME, clock)
        assert make_nonces(clock).validate(other.issue()) is NonceStatus.INVALID

    @pytest.mark.parametrize("position", [0, 5, 20, 40, -1])
    def test_tampered_nonce_is_invalid(self, position: int) -> None:
        nonces = make_nonces(FakeClock())
        nonce = nonces.issue()
        chars = list(nonce)
        chars[position] = "A" if chars[position] != "A" else "B"
        assert nonces.validate("".join(chars)) is NonceStatus.INVALID

    @pytest.mark.parametrize("garbage", ["", "abc", "!!!!", "a" * 54, "é" * 54, "a" * 1000])
    def test_garbage_nonce_is_invalid(self, garbage: str) -> None:
        assert make_nonces(FakeClock()).validate(garbage) is NonceStatus.INVALID

    def test_rejects_weak_configuration(self) -> None:
        with pytest.raises(ValueError, match="16 bytes"):
            NonceManager(b"short", LIFETIME, FakeClock())
        with pytest.raises(ValueError, match="positive"):
            NonceManager(SECRET, 0, FakeClock())

    def test_nonce_layout_is_siv_over_time_random_and_source(self) -> None:
        """The documented construction, recomputed independently of the class."""
        clock = FakeClock()
        nonces = NonceManager(SECRET, LIFETIME, clock, random_bytes=lambda n: b"\x07" * n)
        nonce = nonces.issue(source="192.0.2.7")
        assert len(nonce) == 54 and "=" not in nonce
        raw = base64.urlsafe_b64decode(nonce + "==")
        plain = int(clock.now * 1000).to_bytes(8, "big") + b"\x07" * 16
        k_mac = hmac.new(SECRET, b"vivait-sip digest nonce v2 mac", hashlib.sha256).digest()
        k_enc = hmac.new(SECRET, b"vivait-sip digest nonce v2 enc", hashlib.sha256).digest()
        tag = hashlib.blake2s(plain + b"192.0.2.7", key=k_mac, digest_size=16).digest()
        keystream = hashlib.blake2s(tag, key=k_enc, digest_size=24).digest()
        assert raw == tag + bytes(a ^ b for a, b in zip(plain, keystream, strict=True))
        # Neither the time nor the random part shows through.
        assert plain[:8] not in raw and b"\x07\x07" not in raw

    def test_nonce_verifies_only_for_the_source_it_was_issued_to(self) -> None:
        nonces = make_nonces(FakeClock())
        nonce = nonces.issue(1, "192.0.2.7")
        assert nonces.validate(nonce, "192.0.2.7") is NonceStatus.VALID
        assert nonces.verifier(nonce, "192.0.2.7") == 1
        for other in ("192.0.2.8", "", "192.0.2.70", "2001:db8::7"):
            assert nonces.validate(nonce, other) is NonceStatus.INVALID
            assert nonces.verifier(nonce, other) is None
            assert nonces.check_nc(nonce, 1, other) is NonceStatus.INVALID
        # The one-entry cache never vouches for another source.
        assert nonces.validate(nonce, "192.0.2.7") is NonceStatus.VALID
        assert nonces.validate(nonce, "192.0.2.8") is NonceStatus.INVALID
        assert nonces.check_nc(nonce, 1, "192.0.2.7") is NonceStatus.VALID

    def test_nonces_are_opaque_and_share_nothing(self) -> None:
        """Consecutive nonces (counter source, times 1 s apart) look independent."""
        from vivait_sip.registrar.feature import unique_bytes

        clock = FakeClock()
        nonces = NonceManager(SECRET, LIFETIME, clock, random_bytes=unique_bytes)
        first = base64.urlsafe_b64decode(nonces.issue(0, "192.0.2.7") + "==")
        clock.now += 1
        second = base64.urlsafe_b64decode(nonces.issue(0, "192.0.2.7") + "==")
        assert first[:2] != second[:2]
        distance = bin(int.from_bytes(first, "big") ^ int.from_bytes(second, "big")).count("1")
        assert 100 < distance < 220, distance  # about half of the 320 bits differ
        for raw in (first, second):
            for window in range(len(raw) - 7):
                value = int.from_bytes(raw[window : window + 8], "big")
                assert abs(value - clock.now * 1000) > 10_000_000  # no readable issue time

    def test_non_canonical_spelling_of_a_genuine_nonce_is_invalid(self) -> None:
        nonces = make_nonces(FakeClock())
        nonce = nonces.issue()
        assert nonces.validate(nonce) is NonceStatus.VALID
        # The last character carries 2 bits; the 4 unused ones must be zero.
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(nonce[-1])
        for spare in range(1, 16):
            respelt = nonce[:-1] + alphabet[last | spare]
            assert base64.urlsafe_b64decode(respelt + "==") == base64.urlsafe_b64decode(
                nonce + "=="
            )
            assert nonces.validate(respelt) is NonceStatus.INVALID
        assert nonces.validate(nonce + "=") is NonceStatus.INVALID
        assert nonces.validate(nonce[:-1]) is NonceStatus.INVALID

    def test_decoded_once_per_request_but_never_trusted_by_content(self) -> None:
        # Observed through the one-entry cache (the class may be compiled by mypyc, so
        # its methods cannot be patched to count MAC computations).
        clock = FakeClock()
        nonces = make_nonces(clock)
        nonce = nonces.issue()
        # What AuthGate and Authenticator do with one request's nonce string.
        assert nonces.validate(nonce) is NonceStatus.VALID
        cached = nonces._last_decoded
        assert cached is not None and cached[0] is nonce
        assert nonces.validate(nonce) is NonceStatus.VALID
        assert nonces.check_nc(nonce, 1) is NonceStatus.VALID
        assert nonces._last_decoded is cached  # reused, not decoded again
        # An equal string from another request is checked afresh, with the same answers.
        copy = "".join(list(nonce))
        assert copy is not nonce
        assert nonces.check_nc(copy, 1) is NonceStatus.INVALID
        assert nonces._last_decoded is not cached and nonces._last_decoded[0] is copy
        assert nonces.check_nc(copy, 2) is NonceStatus.VALID
        # Remembering a genuine nonce never vouches for another, or for another secret's.
        tampered = nonce[:10] + ("A" if nonce[10] != "A" else "B") + nonce[11:]
        assert nonces.validate(tampered) is NonceStatus.INVALID
        other = NonceManager(b"another-secret-of-16+bytes", LIFETIME, clock)
        assert other.validate(nonce) is NonceStatus.INVALID
        assert nonces.validate(nonce) is NonceStatus.VALID
        clock.now += LIFETIME + 1
        assert nonces.validate(nonce) is NonceStatus.STALE  # the time check is not cached

    def test_nc_must_increase(self) -> None:
        nonces = make_nonces(FakeClock())
        nonce = nonces.issue()
        assert nonces.check_nc(nonce, 1) is NonceStatus.VALID
        assert nonces.check_nc(nonce, 1) is NonceStatus.INVALID
        assert nonces.check_nc(nonce, 3) is NonceStatus.VALID
        assert nonces.check_nc(nonce, 2) is NonceStatus.INVALID
        assert nonces.check_nc(nonce, 4) is NonceStatus.VALID

    def test_nc_tracked_independently_per_nonce(self) -> None:
        nonces = make_nonces(FakeClock())
        a, b = nonces.issue(), nonces.issue()
        assert nonces.check_nc(a, 1) is NonceStatus.VALID
        assert nonces.check_nc(b, 1) is NonceStatus.VALID

    def test_expired_entries_are_purged(self) -> None:
        clock = FakeClock()
        nonces = make_nonces(clock)
        nonces.check_nc(nonces.issue(), 1)
        clock.now += LIFETIME + 1
        nonces.check_nc(nonces.issue(), 1)
        assert nonces.tracked == 1

    def test_capacity_eviction_never_reopens_replay(self) -> None:
        clock = FakeClock()
        nonces = make_nonces(clock, max_tracked=2)
        unseen_older = nonces.issue()
        clock.now += 1
        old = nonces.issue()
        assert nonces.check_nc(old, 1) is NonceStatus.VALID
        for _ in range(2):
            clock.now += 1
            assert nonces.check_nc(nonces.issue(), 1) is NonceStatus.VALID
        assert nonces.tracked == 2
        # Forgotten (and older unseen) nonces cannot be counted again: re-challenge.
        assert nonces.check_nc(old, 1) is NonceStatus.STALE
        assert nonces.check_nc(unseen_older, 1) is NonceStatus.STALE
        clock.now += 1
        assert nonces.check_nc(nonces.issue(), 1) is NonceStatus.VALID


USERS = {"alice": "correct horse"}


def lookup(username: str, realm: str, algorithm: Algorithm) -> str | None:
    password = USERS.get(username)
    return None if password is None else ha1(algorithm, username, realm, password)


class TestAuthenticator:
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def auth(self, clock: FakeClock) -> Authenticator:
        return Authenticator(REALM, make_nonces(clock), lookup)

    def login(
        self,
        auth: Authenticator,
        username: str = "alice",
        password: str = "correct horse",
        *,
        which: int = 0,
        nc: int = 1,
        challenge: DigestChallenge | None = None,
        uri: str = URI,
    ) -> DigestCredentials:
        challenge = challenge or parse_challenge(auth.challenges()[which])
        header = client_response(challenge, "REGISTER", uri, username, password, nc=nc)
        return parse_credentials(header)

    @pytest.mark.parametrize("which", [0, 1])
    def test_correct_password_ok_for_both_algorithms(self, auth: Authenticator, which: int) -> None:
        credentials = self.login(auth, which=which)
        assert credentials.algorithm == ["SHA-256", "MD5"][which]
        assert auth.authenticate("REGISTER", credentials, request_uri=URI) is AuthOutcome.OK

    def test_wrong_password_and_unknown_user_are_indistinguishable(
        self, auth: Authenticator
    ) -> None:
        calls: list[str] = []

        def recording_lookup(username: str, realm: str, algorithm: Algorithm) -> str | None:
            calls.append(username)
            return lookup(username, realm, algorithm)

        auth = Authenticator(REALM, auth.nonces, recording_lookup)
        wrong = auth.authenticate("REGISTER", self.login(auth, password="nope"))
        unknown = auth.authenticate("REGISTER", self.login(auth, username="mallory"))
        assert wrong is unknown is AuthOutcome.FAILED
        assert calls == ["alice", "mallory"]

    def test_unknown_user_fails_even_with_dummy_like_input(self, auth: Authenticator) -> None:
        assert auth.authenticate("REGISTER", self.login(auth, username="")) is AuthOutcome.FAILED

    @pytest.mark.parametrize(
        ("realm", "opaque", "algorithms"),
        [
            (REALM, None, (Algorithm.SHA256, Algorithm.MD5)),
            ('we"ird\\realm', "op-1", (Algorithm.MD5,)),
            ("", "", (Algorithm.MD5, Algorithm.SHA256)),
        ],
    )
    def test_challenges_are_build_challenges(
        self,
        clock: FakeClock,
        realm: str,
        opaque: str | None,
        algorithms: tuple[Algorithm, ...],
    ) -> None:
        nonces = make_nonces(clock)
        auth = Authenticator(realm, nonces, lookup, algorithms=algorithms, opaque=opaque)
        # The first call per stale flag builds the text around the nonce; later ones reuse it.
        for stale in (False, True, False, True):
            values = auth.challenges(stale=stale)
            nonce = parse_challenge(values[0]).nonce
            assert nonces.validate(nonce) is NonceStatus.VALID
            assert values == build_challenges(
                realm, nonce, stale=stale, opaque=opaque, algorithms=algorithms
            )

    def test_challenges_refuse_header_injection(self, clock: FakeClock) -> None:
        auth = Authenticator("evil\r\nVia: x", make_nonces(clock), lookup)
        with pytest.raises(ValueError, match="CR, LF"):
            auth.challenges()

    def test_stale_nonce_with_right_password_is_stale(
        self, auth: Authenticator, clock: FakeClock
    ) -> None:
        credentials = self.login(auth)
        clock.now += LIFETIME + 1
        assert auth.authenticate("REGISTER", credentials) is AuthOutcome.STALE
        assert parse_challenge(auth.challenges(stale=True)[0]).stale

    def test_stale_nonce_with_wrong_password_fails(
        self, auth: Authenticator, clock: FakeClock
    ) -> None:
        credentials = self.login(auth, password="nope")
        clock.now += LIFETIME + 1
        assert auth.authenticate("REGISTER", credentials) is AuthOutcome.FAILED

    def test_forged_nonce_fails(self, auth: Authenticator) -> None:
        challenge = DigestChallenge(REALM, "forged-nonce", algorithm="SHA-256", qop=("auth",))
        credentials = self.login(auth, challenge=challenge)
        assert auth.authenticate("REGISTER", credentials) is AuthOutcome.REJECTED

    def test_nonce_issued_to_another_source_is_rejected_not_failed(self, auth: Authenticator) -> None:
        challenge = parse_challenge(auth.challenges(source="192.0.2.7")[0])
        wrong = self.login(auth, challenge=challenge, password="nope")
        assert auth.authenticate("REGISTER", wrong, source="192.0.2.66") is AuthOutcome.REJECTED
        assert auth.authenticate("REGISTER", wrong, source="192.0.2.7") is AuthOutcome.FAILED
        right = self.login(auth, challenge=challenge)
        assert auth.authenticate("REGISTER", right, source="192.0.2.66") is AuthOutcome.REJECTED
        assert auth.authenticate("REGISTER", right, source="192.0.2.7") is AuthOutcome.OK

    def test_replayed_request_fails(self, auth: Authenticator) -> None:
        credentials = self.login(auth)
        assert auth.authenticate("REGISTER", credentials) is AuthOutcome.OK
        assert auth.authenticate("REGISTER", credentials) is AuthOutcome.REJECTED

    def test_increasing_nc_on_same_nonce_ok(self, auth: Authenticator) -> None:
        challenge = parse_challenge(auth.challenges()[0])
        for nc in (1, 2, 5):
            credentials = self.login(auth, challenge=challenge, nc=nc)
            assert auth.authenticate("REGISTER", credentials) is AuthOutcome.OK

    def test_failed_attempt_does_not_consume_nc(self, auth: Authenticator) -> None:
        challenge = parse_challenge(auth.challenges()[0])
        forged = self.login(auth, challenge=challenge, password="nope", nc=9)
        assert auth.authenticate("REGISTER", forged) is AuthOutcome.FAILED
        good = self.login(auth, challenge=challenge, nc=1)
        assert auth.authenticate("REGISTER", good) is AuthOutcome.OK

    def test_uri_mismatch_is_refused_before_the_password(self, auth: Authenticator) -> None:
        credentials = self.login(auth, uri="sip:other.example.com")
        assert auth.authenticate("REGISTER", credentials, request_uri=URI) is AuthOutcome.URI_MISMATCH
        wrong = self.login(auth, uri="sip:other.example.com", password="nope")
        assert auth.authenticate("REGISTER", wrong, request_uri=URI) is AuthOutcome.URI_MISMATCH

    @pytest.mark.parametrize(
        ("digest_uri", "request_uri", "same"),
        [
            ("sip:sip.example.com", "sip:sip.example.com", True),
            ("sip:SIP.Example.COM", "sip:sip.example.com", True),
            ("sip:6140@h;transport=udp;lr", "sip:6140@h;lr;transport=UDP", True),
            ("sip:6140@h", "sip:6140@h;transport=tcp", True),  # parameters do not matter
            ("sip:%36140@h", "sip:6140@h", True),
            ("sip:h:35924", "sip:h", True),  # SIPp's uri= for an injected [authentication]
            ("sip:h:5060", "sip:h:5061", False),
            ("sip:6140@h", "sip:6141@h", False),
            ("sip:6140@h", "sip:h", False),
            ("sip:other.example", "sip:sip.example.com", False),
            ("sips:h", "sip:h", False),
            ("tel:+1555", "tel:+1555", True),
            ("tel:+1555", "tel:+1556", False),
            ("garbage", "sip:h", False),
        ],
    )
    def test_digest_uri_comparison(self, digest_uri: str, request_uri: str, same: bool) -> None:
        assert digest.digest_uri_matches(digest_uri, request_uri) is same

    def test_wrong_method_fails(self, auth: Authenticator) -> None:
        assert auth.authenticate("INVITE", self.login(auth)) is AuthOutcome.FAILED

    def test_other_realm_fails(self, auth: Authenticator) -> None:
        challenge = parse_challenge(auth.challenges()[0])
        other = dataclasses.replace(challenge, realm="other.example.com")
        assert (
            auth.authenticate("REGISTER", self.login(auth, challenge=other)) is AuthOutcome.REJECTED
        )

    def test_algorithm_not_offered_fails(self, clock: FakeClock) -> None:
        auth = Authenticator(REALM, make_nonces(clock), lookup, algorithms=[Algorithm.SHA256])
        assert len(auth.challenges()) == 1
        challenge = dataclasses.replace(parse_challenge(auth.challenges()[0]), algorithm="MD5")
        assert auth.authenticate("REGISTER", self.login(auth, challenge=challenge)) is (
            AuthOutcome.REJECTED
        )

    def test_opaque_must_round_trip(self, clock: FakeClock) -> None:
        auth = Authenticator(REALM, make_nonces(clock), lookup, opaque="op-1")
        credentials = self.login(auth)
        assert credentials.opaque == "op-1"
        assert auth.authenticate("REGISTER", credentials) is AuthOutcome.OK
        stripped = dataclasses.replace(self.login(auth), opaque=None)
        assert auth.authenticate("REGISTER", stripped) is AuthOutcome.REJECTED

    def test_legacy_no_qop_only_when_allowed(self, clock: FakeClock) -> None:
        nonces = make_nonces(clock)
        strict = Authenticator(REALM, nonces, lookup)
        lenient = Authenticator(REALM, nonces, lookup, allow_no_qop=True)
        challenge = dataclasses.replace(parse_challenge(strict.challenges()[0]), qop=())
        credentials = self.login(strict, challenge=challenge)
        assert strict.authenticate("REGISTER", credentials) is AuthOutcome.REJECTED
        assert lenient.authenticate("REGISTER", credentials) is AuthOutcome.OK

    def test_qop_without_nc_fails(self, auth: Authenticator) -> None:
        credentials = dataclasses.replace(self.login(auth), nc=None)
        assert auth.authenticate("REGISTER", credentials) is AuthOutcome.REJECTED

    def test_forgotten_nonce_is_rechallenged_as_stale(self, clock: FakeClock) -> None:
        auth = Authenticator(REALM, make_nonces(clock, max_tracked=1), lookup)
        first = parse_challenge(auth.challenges()[0])
        assert auth.authenticate("REGISTER", self.login(auth, challenge=first)) is AuthOutcome.OK
        clock.now += 1
        assert auth.authenticate("REGISTER", self.login(auth)) is AuthOutcome.OK
        again = self.login(auth, challenge=first, nc=2)
        assert auth.authenticate("REGISTER", again) is AuthOutcome.STALE


def test_a_nonce_names_the_worker_that_verifies_it() -> None:
    nonces = make_nonces(FakeClock())
    for worker in (0, 1, 7, 255):
        nonce = nonces.issue(worker)
        assert nonces.verifier(nonce) == worker
        assert nonces.validate(nonce) is NonceStatus.VALID
    assert len({nonces.issue(1) for _ in range(1000)}) == 1000  # still unique
    assert nonces.verifier("not-a-nonce") is None
