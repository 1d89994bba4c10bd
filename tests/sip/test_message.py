"""SIP message parser: RFC 4475 outcomes, lazy headers, limits, framing, byte-exact re-emission."""

from __future__ import annotations

import pytest
from rfc4475_cases import RFC4475_CASES, SDP, TortureCase, wire

from vivait_sip.sip.errors import SipParseError
from vivait_sip.sip.message import (
    Header,
    Headers,
    Limits,
    Request,
    Response,
    StreamFramer,
    Via,
    find_header_end,
    make_response,
    parse_auth_params,
    parse_message,
    parse_via,
    split_list,
    validate_request,
    validate_response,
)

INVITE = wire(
    "INVITE sip:bob@biloxi.example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\n"
    "Max-Forwards: 70\n"
    'To: "Bob" <sip:bob@biloxi.example.com>\n'
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\n"
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\n"
    "CSeq: 314159 INVITE\n"
    "Contact: <sip:alice@pc33.atlanta.example.com>\n"
    "Content-Type: application/sdp\n"
    "Content-Length: {cl}\n",
    SDP,
)


def parse_request(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


# ---- RFC 4475 -----------------------------------------------------------------------------


def test_case_list_covers_every_section() -> None:
    sections = {c.section for c in RFC4475_CASES}
    expected = (
        {f"3.1.1.{i}" for i in range(1, 14)}
        | {f"3.1.2.{i}" for i in range(1, 20)}
        | {"3.2.1"}
        | {f"3.3.{i}" for i in range(1, 16)}
        | {"3.4.1"}
    )
    assert sections == expected
    assert len({c.name for c in RFC4475_CASES}) == len(RFC4475_CASES) == 49


@pytest.mark.parametrize("case", RFC4475_CASES, ids=lambda c: c.name)
def test_rfc4475_parser_outcome(case: TortureCase) -> None:
    try:
        msg = parse_message(case.data)
        if case.is_response:
            assert isinstance(msg, Response)
            validate_response(msg)
        else:
            assert isinstance(msg, Request)
            validate_request(msg)
    except SipParseError as exc:
        assert exc.status == case.parser_status, exc.reason
        assert case.fault.lower() in exc.reason.lower()
        assert "\r" not in exc.reason and "\n" not in exc.reason
    else:
        assert case.parser_status is None
    if case.expect == "non400":
        assert case.parser_status is None
    if case.expect == "drop":
        assert case.is_response


@pytest.mark.parametrize("case", RFC4475_CASES, ids=lambda c: c.name)
def test_rfc4475_stream_framing(case: TortureCase) -> None:
    framer = StreamFramer()
    if case.stream == "error":
        assert framer.feed(case.data) == []
        assert framer.error is not None and framer.error_head == case.data[: len(framer.error_head)]
        assert framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n\r\n") == []  # nothing after an error
        return
    frames = framer.feed(case.data)
    expected = {"one": 1, "two": 2, "incomplete": 0}[case.stream]
    assert len(frames) == expected
    if case.stream == "incomplete":
        assert framer.pending == len(case.data)
    else:
        assert b"".join(frames) == case.data
        assert framer.pending == 0


@pytest.mark.parametrize("case", [c for c in RFC4475_CASES if c.parser_status is None], ids=lambda c: c.name)
def test_rfc4475_valid_messages_reemit_byte_for_byte(case: TortureCase) -> None:
    msg = parse_message(case.data)
    out = msg.to_bytes()
    if case.name == "dblreq":
        assert case.data.startswith(out) and out.endswith(b"Content-Length: 0\r\n\r\n")
    elif case.name == "inv2543":  # no Content-Length: one is added, the rest is untouched
        assert out == case.data.replace(b"\r\n\r\n", b"\r\nContent-Length: %d\r\n\r\n" % len(SDP), 1)
    else:
        assert out == case.data
    assert out == msg._serialise()
    again = parse_message(out)
    assert again.to_bytes() == out


def test_wsinv_values_after_unfolding() -> None:
    msg = parse_request(next(c for c in RFC4475_CASES if c.name == "wsinv").data)
    assert msg.max_forwards == 68
    assert str(msg.cseq) == "9 INVITE"
    assert msg.to.tag == "1918181833n"
    assert msg.from_.tag == "98asjd8"
    assert msg.from_.display_name == 'J Rosenberg \\"'
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    contacts = msg.contacts
    assert contacts is not None and len(contacts) == 1
    assert contacts[0].param("newparam") == "newvalue"
    assert contacts[0].q == pytest.approx(0.33)
    assert msg.headers.get("subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.body == SDP


def test_escapes_are_equivalent_but_kept() -> None:
    msg = parse_request(next(c for c in RFC4475_CASES if c.name == "esc01").data)
    assert msg.uri.user == "sips%3Auser%40example.com"
    assert msg.uri.user_unescaped == "sips:user@example.com"
    assert msg.to.uri.aor == "sip:user@example.com"
    contacts = msg.contacts
    assert contacts is not None
    uri = contacts[0].uri
    assert uri.user_unescaped == "caller"
    assert uri.lr and uri.param("name") == "v%61lue%25%34%31"


def test_escaped_null_does_not_truncate() -> None:
    msg = parse_request(next(c for c in RFC4475_CASES if c.name == "escnull").data)
    assert msg.to.uri.aor == "sip:null-\x00-null@example.com"
    contacts = msg.contacts
    assert contacts is not None
    assert [c.uri.user_unescaped for c in contacts] == ["\x00", "\x00\x00"]


def test_esc02_unknown_method_and_header() -> None:
    msg = parse_request(next(c for c in RFC4475_CASES if c.name == "esc02").data)
    assert msg.method == "RE%47IST%45R"
    contacts = msg.contacts
    assert contacts is not None and len(contacts) == 2
    assert msg.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_semicolon_in_user_part() -> None:
    msg = parse_request(next(c for c in RFC4475_CASES if c.name == "semiuri").data)
    assert msg.uri.user_unescaped == "user;par=u@example.net"
    assert msg.uri.host == "example.com" and msg.uri.params == []
    assert len(msg.headers.get_all("accept")) == 6


def test_intmeth_unusual_tokens() -> None:
    msg = parse_request(next(c for c in RFC4475_CASES if c.name == "intmeth").data)
    assert msg.method == msg.cseq.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.uri.password is not None
    assert msg.to.display is not None and "\x00" in msg.to.display
    assert msg.from_.tag == "_token~1'+`*%!-."


def test_multipart_body_with_nuls_is_opaque() -> None:
    case = next(c for c in RFC4475_CASES if c.name == "mpart01")
    msg = parse_message(case.data)
    assert b"\x00" in msg.body
    assert case.data.endswith(msg.body)
    assert msg.content_type == "multipart/mixed"


def test_dblreq_over_udp_ignores_trailing_octets() -> None:
    case = next(c for c in RFC4475_CASES if c.name == "dblreq")
    msg = parse_request(case.data)
    assert msg.method == "REGISTER" and msg.body == b""
    assert "INVITE" not in msg.to_bytes().decode()


def test_transports_keep_unknown_transport() -> None:
    msg = parse_request(next(c for c in RFC4475_CASES if c.name == "transports").data)
    assert [v.transport for v in msg.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_unreason_and_noreason() -> None:
    unreason = parse_message(next(c for c in RFC4475_CASES if c.name == "unreason").data)
    assert isinstance(unreason, Response) and unreason.status == 200
    assert unreason.reason.startswith("= 2**3 * 5**2 но")
    noreason = parse_message(next(c for c in RFC4475_CASES if c.name == "noreason").data)
    assert isinstance(noreason, Response) and noreason.status == 100 and noreason.reason == ""


# ---- start line ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "status"),
    [
        ("INVITE sip:a@b SIP/3.0", 505),
        ("INVITE sip:a@b HTTP/1.1", 400),
        ("INVITE sip:a@b", 400),
        ("IN VITE sip:a@b SIP/2.0", 400),
        ("INV<ITE sip:a@b SIP/2.0", 400),
        ("SIP/2.0 99 Low", 400),
        ("SIP/2.0 700 High", 400),
        ("SIP/2.0 2OO OK", 400),
        ("SIP/2.0 \uff12\uff10\uff10 OK", 400),
        ("SIP/3.0 200 OK", 505),
    ],
)
def test_bad_start_lines(line: str, status: int) -> None:
    with pytest.raises(SipParseError) as err:
        parse_message(f"{line}\r\nContent-Length: 0\r\n\r\n".encode())
    assert err.value.status == status


def test_version_is_case_insensitive_and_leading_crlf_ignored() -> None:
    msg = parse_request(b"\r\n\r\nOPTIONS sip:a@b sip/2.0\r\nContent-Length: 0\r\n\r\n")
    assert msg.version == "sip/2.0"
    assert msg.to_bytes().startswith(b"OPTIONS sip:a@b sip/2.0\r\n")


def test_status_line_without_reason() -> None:
    msg = parse_message(b"SIP/2.0 180\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(msg, Response) and msg.status == 180 and msg.reason == ""


# ---- header lines -------------------------------------------------------------------------------


def test_compact_forms_and_whitespace_before_colon() -> None:
    msg = parse_request(
        b"OPTIONS sip:a@b SIP/2.0\r\nv : SIP/2.0/UDP h;branch=z9hG4bK1\r\ni:x\r\nf: <sip:a@b>;tag=1\r\n"
        b"t: sip:c@d\r\nm: <sip:a@h>\r\nk: timer\r\nc: text/plain\r\ne: gzip\r\ns: hi\r\nl:1\r\n\r\nz"
    )
    assert msg.call_id == "x" and msg.from_.tag == "1" and msg.to.uri.user == "c"
    assert msg.headers.get("Supported") == "timer" and msg.content_type == "text/plain"
    assert msg.headers.get("content-encoding") == "gzip" and msg.headers.get("subject") == "hi"
    assert msg.body == b"z" and msg.top_via.branch == "z9hG4bK1"


@pytest.mark.parametrize(
    "line", ["No colon here", "Bad Name: x", "Bad<Name: x", ": empty name", "Ümlaut: x"]
)
def test_malformed_header_lines(line: str) -> None:
    with pytest.raises(SipParseError) as err:
        parse_message(f"OPTIONS sip:a@b SIP/2.0\r\n{line}\r\nContent-Length: 0\r\n\r\n".encode())
    assert err.value.status == 400
    assert "header" in err.value.reason.lower()


def test_continuation_before_first_header_is_an_error() -> None:
    with pytest.raises(SipParseError, match="Continuation"):
        parse_message(b"OPTIONS sip:a@b SIP/2.0\r\n folded\r\nContent-Length: 0\r\n\r\n")


def test_lf_only_message_is_accepted_and_normalised() -> None:
    head, _, body = INVITE.partition(b"\r\n\r\n")
    msg = parse_request(head.replace(b"\r\n", b"\n") + b"\n\n" + body)
    assert msg.cseq.number == 314159 and msg.to.display == '"Bob"'
    assert msg.body == SDP
    out = msg.to_bytes()
    assert b"\r\nCall-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n" in out
    assert b"\n\n" not in out.split(b"\r\n\r\n")[0]


def test_mixed_line_endings() -> None:
    msg = parse_request(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: 1\nCSeq: 2 OPTIONS\r\nl: 0\n\r\n")
    assert msg.call_id == "1" and msg.cseq.number == 2
    assert msg.to_bytes() == b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: 1\r\nCSeq: 2 OPTIONS\r\nl: 0\r\n\r\n"


def test_datagram_without_blank_line_or_length() -> None:
    msg = parse_request(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: 1\r\n")
    assert msg.body == b"" and msg.call_id == "1"
    assert msg.to_bytes().endswith(b"Content-Length: 0\r\n\r\n")
    with pytest.raises(SipParseError, match="stream"):
        parse_message(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: 1\r\n\r\n", datagram=False)


@pytest.mark.parametrize("value", ["abc", "1.5", "-1", "\uff11\uff12", "9" * 30])
def test_malformed_content_length(value: str) -> None:
    with pytest.raises(SipParseError, match="Content-Length"):
        parse_message(f"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: {value}\r\n\r\n".encode())


# ---- limits -------------------------------------------------------------------------------------


def test_limits_answer_with_their_status() -> None:
    small = Limits(max_message_bytes=300, max_body_bytes=10, max_headers=5, max_line_bytes=100, max_uri_bytes=40)
    cases = [
        (INVITE, 513),
        (b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 11\r\n\r\nhello world", 413),
        (b"MESSAGE sip:a@b SIP/2.0\r\n\r\n" + b"x" * 11, 413),
        (b"OPTIONS sip:" + b"a" * 40 + b"@b SIP/2.0\r\nl: 0\r\n\r\n", 414),
        (b"OPTIONS sip:a@b SIP/2.0\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(6)) + b"\r\n", 400),
        (b"OPTIONS sip:a@b SIP/2.0\r\nX-Long: " + b"v" * 100 + b"\r\n\r\n", 400),
    ]
    for data, status in cases:
        with pytest.raises(SipParseError) as err:
            parse_message(data, limits=small)
        assert err.value.status == status, data[:40]
    assert parse_message(b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n\r\n", limits=small).body == b""


def test_default_limits_match_the_issue() -> None:
    limits = Limits()
    assert limits.max_message_bytes == 65536
    with pytest.raises(SipParseError) as err:
        parse_message(b"MESSAGE sip:a@b SIP/2.0\r\n\r\n" + b"x" * 65536)
    assert err.value.status == 513


# ---- lazy decoding and caching ------------------------------------------------------------------


def test_lazy_values_follow_header_changes() -> None:
    msg = parse_request(INVITE)
    assert msg.cseq.number == 314159
    assert msg.top_via.host == "pc33.atlanta.example.com"
    msg.headers.set("CSeq", "314160 INVITE")
    assert msg.cseq.number == 314160
    msg.push_via("SIP/2.0/TCP proxy.example.com;branch=z9hG4bKp1")
    assert [v.host for v in msg.vias] == ["proxy.example.com", "pc33.atlanta.example.com"]
    header = msg.headers.first("to")
    assert header is not None
    header.value = "<sip:carol@chicago.example.com>"
    assert msg.to.uri.user == "carol"
    msg.headers.remove("max-forwards")
    assert msg.max_forwards is None


def test_request_uri_follows_uri_text() -> None:
    msg = parse_request(INVITE)
    assert msg.uri.user == "bob"
    msg.uri_text = "sip:carol@chicago.example.com"
    assert msg.uri.user == "carol"
    msg.set_uri("sips:dave@example.com;transport=tcp")
    assert msg.uri.is_secure and msg.uri.transport == "tcp"


def test_missing_headers_raise_parse_errors() -> None:
    msg = parse_request(b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n\r\n")
    for prop in ("cseq", "from_", "to", "call_id", "top_via"):
        with pytest.raises(SipParseError, match="Missing"):
            getattr(msg, prop)
    assert msg.vias == [] and msg.contacts == [] and msg.max_forwards is None and msg.expires is None


@pytest.mark.parametrize(
    ("value", "ok"),
    [("1 INVITE", True), ("4294967295 ACK", True), ("4294967296 ACK", False), ("1", False),
     ("x INVITE", False), ("1 IN<VITE", False), ("1\tINVITE", True), ("01234567890 BYE", False)],
)
def test_cseq_grammar(value: str, ok: bool) -> None:
    msg = parse_request(f"OPTIONS sip:a@b SIP/2.0\r\nCSeq: {value}\r\nl: 0\r\n\r\n".encode())
    if ok:
        assert msg.cseq.number == int(value.split()[0])
    else:
        with pytest.raises(SipParseError, match="CSeq"):
            msg.cseq  # noqa: B018


def test_max_forwards_and_expires() -> None:
    msg = parse_request(b"OPTIONS sip:a@b SIP/2.0\r\nMax-Forwards: 256\r\nExpires: 99999999999\r\nl: 0\r\n\r\n")
    with pytest.raises(SipParseError, match="Max-Forwards"):
        msg.max_forwards  # noqa: B018
    assert msg.expires == 0xFFFFFFFF
    msg.headers.set("Expires", "soon")
    with pytest.raises(SipParseError, match="Expires"):
        msg.expires  # noqa: B018


def test_contact_star_and_contact_params() -> None:
    msg = parse_request(b"REGISTER sip:b SIP/2.0\r\nContact: *\r\nExpires: 0\r\nl: 0\r\n\r\n")
    assert msg.contacts is None and msg.is_wildcard_contact
    msg.headers.add("Contact", "<sip:a@h>")
    with pytest.raises(SipParseError, match=r"\*"):
        msg.contacts  # noqa: B018
    msg.headers.set("Contact", '<sip:a@h>;q=0.5;expires=60, "B" <sip:b@h>, sip:c@h;q=1.000')
    contacts = msg.contacts
    assert contacts is not None
    assert [(c.q, c.expires) for c in contacts] == [(0.5, 60), (1.0, None), (1.0, None)]


# ---- Via ---------------------------------------------------------------------------------------


def test_via_list_split_and_ipv6() -> None:
    values = split_list("SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKa, SIP/2.0/TCP h2;branch=z9hG4bKb")
    vias = [parse_via(v) for v in values]
    assert vias[0].host == "[2001:db8::1]" and vias[0].port == 5060
    assert vias[0].response_address() == ("2001:db8::1", 5060)
    assert vias[1].transport == "TCP" and vias[1].port is None


@pytest.mark.parametrize(
    "value",
    ["SIP/2.0/UDP", "SIP/2.0 UDP h", "SIP/3.0/UDP h", "SIP/2.0/UDP h:99999", "SIP/2.0/UDP [zz::1]",
     "SIP/2.0/U<P h", "SIP/2.0/UDP h;bra nch=1", "SIP/2.0/UDP ho$t", ";"],
)
def test_malformed_vias(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_via(value)


def test_via_received_rport_maddr() -> None:
    via = parse_via("SIP/2.0/UDP client.example.com:5070;branch=z9hG4bKx;rport")
    assert via.wants_rport and via.rport is None and via.is_rfc3261_branch
    via.stamp("192.0.2.7", 40000)
    assert via.received == "192.0.2.7" and via.rport == 40000
    assert via.response_address() == ("192.0.2.7", 40000)
    plain = parse_via("SIP/2.0/UDP 192.0.2.8;branch=z9hG4bKy")
    plain.stamp("192.0.2.8", 5062)
    assert plain.received is None and not plain.has_param("rport")
    assert plain.response_address() == ("192.0.2.8", 5060)
    plain.stamp("192.0.2.9", 5062)
    assert plain.response_address() == ("192.0.2.9", 5060)
    maddr = parse_via("SIP/2.0/UDP h:5080;maddr=239.255.255.1;ttl=1;received=192.0.2.1")
    assert maddr.response_address() == ("239.255.255.1", 5080)
    assert not parse_via("SIP/2.0/UDP h;branch=z9hG4bK").is_rfc3261_branch


def test_stamp_via_rewrites_only_the_top_value() -> None:
    msg = parse_request(
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP c.example.com;rport;branch=z9hG4bK1, "
        b"SIP/2.0/UDP d.example.com;branch=z9hG4bK0\r\nCall-ID: 1\r\nl: 0\r\n\r\n"
    )
    msg.stamp_via("192.0.2.1", 5999)
    out = msg.to_bytes()
    assert (
        b"Via: SIP/2.0/UDP c.example.com;rport=5999;branch=z9hG4bK1;received=192.0.2.1, "
        b"SIP/2.0/UDP d.example.com;branch=z9hG4bK0\r\n" in out
    )
    assert b"Call-ID: 1\r\n" in out
    assert msg.pop_via() is not None
    top = msg.top_via
    assert top.host == "d.example.com"
    assert msg.pop_via() is not None and msg.pop_via() is None


# ---- serialisation -------------------------------------------------------------------------------


def test_unmodified_message_returns_original_bytes() -> None:
    msg = parse_request(INVITE)
    msg.vias, msg.cseq, msg.from_, msg.to, msg.contacts  # noqa: B018  (decoding changes nothing)
    assert msg.to_bytes() is msg._wire[0] if msg._wire else False
    assert msg.to_bytes() == INVITE


def _replace_headers(msg: Request) -> None:
    msg.headers = msg.headers.copy()
    msg.headers.add("X", "y")


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.headers.add("X-New", "1"),
        lambda m: m.headers.set("Max-Forwards", "69"),
        lambda m: m.headers.remove("contact"),
        lambda m: m.headers.pop_first_value("via"),
        lambda m: m.headers.append(Header("x-a", "X-A", "b")),
        lambda m: setattr(m.headers.first("from"), "value", "<sip:x@y>;tag=2"),
        lambda m: setattr(m.headers.first("from"), "name", "f"),
        lambda m: m.headers._items.append(Header("x-b", "X-B", "c")),
        lambda m: setattr(m, "body", b"v=0\r\n"),
        lambda m: setattr(m, "uri_text", "sip:carol@example.com"),
        lambda m: setattr(m, "method", "OPTIONS"),
        lambda m: _replace_headers(m),
        lambda m: m.push_via(Via("UDP", "p.example.com", None, [("branch", "z9hG4bKq")])),
        lambda m: m.add_record_route("sip:p.example.com;lr"),
    ],
)
def test_any_change_is_serialised(change: object) -> None:
    msg = parse_request(INVITE)
    assert callable(change)
    change(msg)
    out = msg.to_bytes()
    assert out == msg._serialise()
    assert out != INVITE
    reparsed = parse_request(out)
    assert reparsed.headers.get("content-length") == str(len(msg.body))


def test_untouched_headers_keep_their_bytes_after_a_change() -> None:
    case = next(c for c in RFC4475_CASES if c.name == "wsinv")
    msg = parse_request(case.data)
    msg.add_record_route("sip:proxy.example.com;lr")
    out = msg.to_bytes()
    assert out.startswith(b"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n")
    assert b"Record-Route: <sip:proxy.example.com;lr>\r\nTO :\r\n sip:vivekg" in out
    assert out.endswith(case.data[case.data.index(b"\r\nv:  SIP") :])


def test_content_length_always_matches_body() -> None:
    msg = parse_request(INVITE)
    msg.body = b"short"
    out = msg.to_bytes()
    assert b"\r\nContent-Length: 5\r\n" in out and out.endswith(b"\r\n\r\nshort")
    built = Request(method="OPTIONS", uri_text="sip:a@b")
    built.headers.add("call-id", "x")
    assert built.to_bytes() == b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n"


def test_non_utf8_header_bytes_survive() -> None:
    data = b"OPTIONS sip:a@b SIP/2.0\r\nX-Bin: \xff\xfe\r\nl: 0\r\n\r\n"
    msg = parse_request(data)
    msg.headers.add("X-Other", "1")
    assert b"X-Bin: \xff\xfe\r\n" in msg.to_bytes()


# ---- Headers -------------------------------------------------------------------------------------


def test_headers_api() -> None:
    hs = Headers()
    hs.add("route", "<sip:a;lr>, <sip:b;lr>")
    hs.add("Route", "<sip:c;lr>")
    assert hs.get_all("ROUTE") == ["<sip:a;lr>", "<sip:b;lr>", "<sip:c;lr>"]
    assert hs.count("route") == 2 and "route" in hs and len(hs) == 2
    assert [h.name for h in hs] == ["Route", "Route"]
    assert hs.pop_first_value("route") == "<sip:a;lr>"
    assert hs.get_all("route") == ["<sip:b;lr>", "<sip:c;lr>"]
    hs.replace_first_value("route", "<sip:z;lr>")
    assert hs.get_all("route") == ["<sip:z;lr>", "<sip:c;lr>"]
    hs.set("route", "<sip:only;lr>")
    assert hs.get_all("route") == ["<sip:only;lr>"]
    copy = hs.copy()
    copy.add("X", "1")
    assert "x" not in hs
    assert hs.get("missing") is None and hs.first("missing") is None


def test_header_equality_and_adoption() -> None:
    a = Header("call-id", "Call-ID", "1")
    assert a == Header("call-id", "Call-ID", "1") and a != Header("call-id", "i", "1")
    one, two = Headers([a]), Headers()
    two.append(a)  # owned by `one`: copied, so edits in `two` do not leak
    first = two.first("call-id")
    assert first is not None and first is not a
    first.value = "2"
    assert one.get("call-id") == "1" and two.get("call-id") == "2"


def test_split_list_honours_quotes_and_brackets() -> None:
    assert split_list('"a, b" <sip:x>, <sip:y;p=1,2>, c') == ['"a, b" <sip:x>', "<sip:y;p=1,2>", "c"]
    assert split_list(" , ,") == []
    with pytest.raises(SipParseError):
        split_list('"unterminated, x')


def test_parse_auth_params() -> None:
    scheme, params = parse_auth_params('Digest username="bob", realm="b\\"x", nonce="n, m", uri="sip:b", qop=auth')
    assert scheme == "Digest"
    assert params == {"username": "bob", "realm": 'b"x', "nonce": "n, m", "uri": "sip:b", "qop": "auth"}


# ---- responses ----------------------------------------------------------------------------------


def test_make_response_copies_and_tags() -> None:
    req = parse_request(INVITE)
    resp = make_response(req, 486, to_tag="t1", headers=[("Retry-After", "30")])
    out = resp.to_bytes()
    assert out.startswith(b"SIP/2.0 486 Busy Here\r\n")
    assert b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n" in out
    assert b'To: "Bob" <sip:bob@biloxi.example.com>;tag=t1\r\n' in out
    assert b"Retry-After: 30\r\nContent-Length: 0\r\n\r\n" in out
    assert make_response(req, 400, "Bad Request (x\r\ny)").reason == "Bad Request (x  y)"
    trying = make_response(req, 100, to_tag="t1")
    assert trying.to.tag is None


# ---- framing -------------------------------------------------------------------------------------


def test_stream_framer_byte_by_byte_and_pings() -> None:
    framer = StreamFramer()
    stream = b"\r\n\r\n" + INVITE + b"\r\n" + INVITE
    frames: list[bytes] = []
    for i in range(len(stream)):
        frames += framer.feed(stream[i : i + 1])
    assert frames == [StreamFramer.PING, INVITE, INVITE]
    assert framer.pending == 0


def test_stream_framer_limits_and_lf_only() -> None:
    framer = StreamFramer(Limits(max_message_bytes=200, max_body_bytes=50))
    assert framer.feed(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 51\r\n\r\n") == []
    assert framer.error is not None and framer.error.status == 413
    oversized = StreamFramer(Limits(max_message_bytes=200))
    assert oversized.feed(b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 40) == []
    assert oversized.error is not None and oversized.error.status == 513
    lf = b"OPTIONS sip:a@b SIP/2.0\nl: 2\n\nhi"
    assert StreamFramer().feed(lf + lf.replace(b"\n", b"\r\n")) == [lf, lf.replace(b"\n", b"\r\n")]


def test_stream_framer_keeps_what_it_framed_before_an_error() -> None:
    ok = b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n\r\n"
    framer = StreamFramer()
    assert framer.feed(ok + ok + b"garbage\r\n\r\n") == [ok, ok]
    assert framer.error is not None and framer.error.reason == "Missing Content-Length on a stream transport"
    assert framer.error_head == b"garbage\r\n\r\n"


def test_stream_framer_takes_an_unterminated_last_header_block_at_eof() -> None:
    framer = StreamFramer()
    assert framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\nl: 0\r\n") == []
    assert framer.finish() == b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\nl: 0\r\n\r\n"
    body_missing = StreamFramer()
    body_missing.feed(b"OPTIONS sip:a@b SIP/2.0\r\nl: 5\r\n")
    assert body_missing.finish() is None
    assert StreamFramer().finish() is None


def test_stream_framer_ignores_folded_length_lookalike() -> None:
    data = b"OPTIONS sip:a@b SIP/2.0\r\nX-A: a\r\n l: 99\r\nContent-Length: 0\r\n\r\n"
    assert StreamFramer().feed(data) == [data]


def test_find_header_end_prefers_the_earliest_blank_line() -> None:
    assert find_header_end(b"a\r\n\r\nb\n\n") == (1, 4)
    assert find_header_end(b"a\n\nb\r\n\r\n") == (1, 2)
    assert find_header_end(b"a\r\n\nb") == (1, 3)
    assert find_header_end(b"abc") == (-1, 0)


def test_copy_and_dataclasses_replace_work_compiled_and_pure() -> None:
    """Request/Response are mypyc-compiled dataclasses: `copy()` is the independent copy,
    `dataclasses.replace()` works too (shallow: the copy shares the headers)."""
    import dataclasses

    data = (
        b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bKc1\r\n"
        b"From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\nCall-ID: copy-1\r\n"
        b"CSeq: 1 INVITE\r\nX-Odd:   spaced\r\nContent-Length: 4\r\n\r\nbody"
    )
    req = parse_message(data)
    assert isinstance(req, Request)
    copy = req.copy()
    assert type(copy) is Request and copy.to_bytes() == data
    copy.headers.set("X-Odd", "changed")
    copy.set_uri("sip:carol@example.com")
    assert req.to_bytes() == data  # the original is untouched
    assert copy.uri.user == "carol" and copy.headers.get("x-odd") == "changed"
    assert req.uri.user == "bob"

    moved = dataclasses.replace(req, uri_text="sip:dave@example.com")
    assert type(moved) is Request and moved.uri.user == "dave" and moved.method == "INVITE"
    assert moved.headers is req.headers  # shallow, as documented
    assert moved.to_bytes() == data.replace(b"sip:bob@example.com SIP", b"sip:dave@example.com SIP")

    resp = make_response(req, 180, to_tag="t1")
    resp_copy = resp.copy()
    assert type(resp_copy) is Response and resp_copy.to_bytes() == resp.to_bytes()
    resp_copy.headers.add("X-Extra", "1")
    assert "x-extra" not in resp.headers
    ok = dataclasses.replace(resp, status=200, reason="OK")
    assert ok.to_bytes().startswith(b"SIP/2.0 200 OK\r\n") and resp.status == 180
