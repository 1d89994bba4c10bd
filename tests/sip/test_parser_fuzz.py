"""Property tests: whatever arrives, the parser raises nothing but SipParseError.

Inputs are random bytes, mutations of real messages (the RFC 4475 set and a typical INVITE)
and SIP-flavoured text for the URI, name-addr and Via parsers.  A message that parses must
also decode every lazy header without any other exception and serialise consistently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rfc4475_cases import RFC4475_CASES

from vivait_sip.sip.errors import SipParseError
from vivait_sip.sip.message import (
    Limits,
    Message,
    Request,
    StreamFramer,
    _parse_via_general,
    parse_message,
    parse_via,
    split_list,
    validate_request,
    validate_response,
)
from vivait_sip.sip.uri import _parse_uri_general, parse_name_addr, parse_uri

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEEDS = [c.data for c in RFC4475_CASES]
# Characters that matter to the grammar, plus a few that must never crash it.
SIP_CHARS = " \t\r\n:;,=<>\"'\\@?%&+/[].-_*!~`()0123456789abcSIPsipvVlLz\x00\x7f\xff\u00e9\ud800"
sip_text = st.text(alphabet=SIP_CHARS, max_size=80)
LIMITS = Limits(max_message_bytes=4096, max_body_bytes=1024, max_headers=40, max_line_bytes=512, max_uri_bytes=128)

LAZY: list[Callable[[Message], object]] = [
    lambda m: m.vias,
    lambda m: m.cseq,
    lambda m: m.from_,
    lambda m: m.to,
    lambda m: m.contacts,
    lambda m: m.max_forwards,
    lambda m: m.expires,
    lambda m: m.call_id,
    lambda m: m.content_type,
    lambda m: [(c.q, c.expires, c.display_name) for c in (m.contacts or [])],
    lambda m: [v.response_address() for v in m.vias],
    lambda m: m.uri if isinstance(m, Request) else None,
    lambda m: validate_request(m) if isinstance(m, Request) else validate_response(m),  # type: ignore[arg-type]
]


def check_message(data: bytes, *, datagram: bool = True, limits: Limits = LIMITS) -> None:
    try:
        msg = parse_message(data, datagram=datagram, limits=limits)
    except SipParseError as exc:
        assert 400 <= exc.status <= 599
        return
    for decode in LAZY:
        with contextlib.suppress(SipParseError):
            decode(msg)
    out = msg.to_bytes()
    assert out == msg._serialise()
    msg.headers.add("X-Fuzz", "1")
    assert msg.to_bytes() != out


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "dup"]))
        chunk = draw(st.sampled_from([b"\r\n", b"\n", b" ", b":", b";", b",", b"<", b'"', b"\x00", b"%", b"9" * 12, b"\r\n "]))
        if action == "insert":
            data[pos:pos] = chunk
        elif action == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif action == "replace":
            data[pos : pos + len(chunk)] = chunk
        else:
            end = data.find(b"\r\n", pos)
            if end > 0:
                line_start = data.rfind(b"\r\n", 0, pos) + 2
                data[line_start:line_start] = data[line_start : end + 2]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes(data: bytes, datagram: bool) -> None:
    check_message(data, datagram=datagram)


@FUZZ
@given(st.lists(sip_text, max_size=8), st.booleans())
def test_header_soup(lines: list[str], response: bool) -> None:
    start = "SIP/2.0 200 OK" if response else "INVITE sip:a@b SIP/2.0"
    check_message("\r\n".join([start, *lines, "", ""]).encode("utf-8", "surrogatepass"))


@FUZZ
@given(mutated(), st.booleans())
def test_mutated_messages(data: bytes, datagram: bool) -> None:
    check_message(data, datagram=datagram)
    check_message(data, datagram=datagram, limits=Limits())


@FUZZ
@given(sip_text)
def test_uri_and_address_parsers(text: str) -> None:
    for parse in (parse_uri, parse_name_addr, parse_via, split_list):
        with contextlib.suppress(SipParseError):
            parse(text)
    try:
        na = parse_name_addr(text)
        na.q, na.expires, str(na)
    except SipParseError:
        pass


@FUZZ
@given(st.sampled_from(SEEDS), sip_text, sip_text)
def test_uri_fragments_in_real_shapes(seed: bytes, user: str, params: str) -> None:
    for text in (f"sip:{user}@example.com;{params}", f'"{user}" <sip:{user}@h>;{params}', f"SIP/2.0/UDP {user};{params}"):
        for parse in (parse_uri, parse_name_addr, parse_via):
            with contextlib.suppress(SipParseError):
                parse(text)


@FUZZ
@given(st.lists(st.sampled_from(SEEDS) | st.binary(max_size=40) | st.just(b"\r\n\r\n"), max_size=5), st.data())
def test_stream_framer(parts: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(parts)
    framer = StreamFramer(LIMITS)
    pos = 0
    try:
        while pos < len(stream):
            step = data.draw(st.integers(1, 200))
            for frame in framer.feed(stream[pos : pos + step]):
                if frame != StreamFramer.PING:
                    check_message(frame, datagram=False)
            pos += step
    except SipParseError as exc:
        assert exc.status in (400, 413, 513)


URI_CHARS = "abcXYZ09-_.!~*'()%&=+$,/;:?@[]"
uri_like = st.builds(
    lambda scheme, user, host, rest: f"{scheme}:{user}@{host}{rest}" if user else f"{scheme}:{host}{rest}",
    st.sampled_from(["sip", "sips"]),
    st.text(alphabet=URI_CHARS, max_size=12),
    st.text(alphabet="abc09-._", min_size=1, max_size=12),
    st.text(alphabet=URI_CHARS, max_size=20),
)
via_like = st.builds(
    lambda transport, host, rest: f"SIP/2.0/{transport} {host}{rest}",
    st.sampled_from(["UDP", "tcp", "TLS", "WS"]),
    st.text(alphabet="abc09-._", min_size=1, max_size=12),
    st.text(alphabet="abc09=;:.-_!%*+`'~", max_size=30),
)


def _outcome(parse: Callable[[str], object], text: str) -> object:
    try:
        return parse(text)
    except SipParseError as exc:
        return exc.status


@FUZZ
@given(uri_like)
def test_fast_uri_path_matches_general_path(text: str) -> None:
    assert _outcome(parse_uri, text) == _outcome(_parse_uri_general, text)


@FUZZ
@given(via_like)
def test_fast_via_path_matches_general_path(text: str) -> None:
    assert _outcome(parse_via, text) == _outcome(_parse_via_general, text)
