"""RFC 4475 torture situations, one case per section, written for this project.

Each message is rebuilt from the situation the RFC describes (not copied from its
archive) and is exactly what goes on the wire.  Fields:

* `expect` — what a server must do with it: "non400" (processed; any response but 400),
  "400", "505", "416", "416_or_404", "420", "4xx", "501_or_400", "drop" (a response:
  never answered), "any" (400 or liberal processing), "400_or_drop".
* `parser_status` — outcome of `parse_message` + `validate_request`/`validate_response`
  in this project: None when both succeed, else the SipParseError status.
* `fault` — a word the SipParseError reason must contain (the fault it names).
* `stream` — framing over TCP: "one" message, "two" messages (dblreq), "incomplete"
  (Content-Length beyond the data: the receiver waits), "error" (unrecoverable framing
  error: close the connection).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TortureCase:
    name: str
    section: str
    data: bytes
    expect: str
    note: str
    is_response: bool = False
    parser_status: int | None = None
    fault: str = ""
    stream: str = "one"


SDP = (
    b"v=0\r\n"
    b"o=torture 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8\r\n"
    b"m=video 51372 RTP/AVP 31\r\n"
    b"a=rtpmap:31 H261/90000\r\n"
)


def wire(head: str, body: bytes = b"") -> bytes:
    """`head` is written with LF line ends; each becomes CRLF, `{cl}` becomes len(body)."""
    text = head.replace("{cl}", str(len(body))).replace("\n", "\r\n")
    return text.encode("utf-8", "surrogateescape") + b"\r\n" + body


def _longreq() -> bytes:
    long = "long" * 60
    # Every spelling of Via: long, compact, mixed case, LWS before the colon.
    spellings = [
        ("Via", ": "), ("v", ": "), ("V", ": "), ("VIA", ": "), ("via", ": "),
        ("ViA", ": "), ("vIa", ": "), ("V", " :  "), ("v", "  : "), ("Via", "  : "),
    ]
    vias = [
        f"{name}{sep}SIP/2.0/TCP relay{i}.example.com"
        for i in range(40, 0, -1)
        for name, sep in [spellings[i % len(spellings)]]
    ]
    head = (
        "INVITE sip:user@example.com SIP/2.0\n"
        f'To: "A display name of {"very " * 40}remarkable length"'
        f"<sip:user@example.com:6000;unknownparam1=very{long}value;{long}param=1>\n"
        f"F: sip:{'caller' * 30}@example.net;tag={'1234567890' * 20};unknownheaderparam=x{long}\n"
        f"Call-ID: longreq.{'really' * 40}longcallid\n"
        "CSeq: 3882340 INVITE\n"
        f"Unknown-{'Long' * 30}-Name: unknown-{long}-value; unknown-{long}-param = {long}\n"
        + "\n".join(vias)
        + "\n"
        f"Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=z9hG4bK{long}\n"
        "Max-Forwards: 70\n"
        f"Contact: <sip:{'caller' * 30}@host5.example.net>\n"
        "Content-Type: application/sdp\n"
        "l: {cl}\n"
    )
    return wire(head, SDP)


def _mpart() -> bytes:
    binary = bytes(range(256)) + b"\x00\x00\r\n\x00--not-a-boundary\x00" + bytes(range(255, -1, -1))
    body = (
        b"--b0undary77\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n"
        b"Hello\r\n"
        b"--b0undary77\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n" + binary + b"\r\n"
        b"--b0undary77--\r\n"
    )
    head = (
        "MESSAGE sip:kumiko@example.org SIP/2.0\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-mpart01;rport\n"
        "Max-Forwards: 70\n"
        "Route: <sip:127.0.0.1:5080;lr>\n"
        "Contact: <sip:fluffy@127.0.0.1:5070>\n"
        "To: <sip:kumiko@example.org>\n"
        "From: <sip:fluffy@example.com>;tag=2fb0dcc9\n"
        "Call-ID: mpart01.3d9485ad0c49859b\n"
        "CSeq: 1 MESSAGE\n"
        "Content-Transfer-Encoding: binary\n"
        "Content-Type: multipart/mixed;boundary=b0undary77\n"
        "Date: Sat, 15 Oct 2005 04:44:56 GMT\n"
        "Content-Length: {cl}\n"
    )
    return wire(head, body)


_REGISTER_0 = (
    "REGISTER sip:example.com SIP/2.0\n"
    "To: sip:j.user@example.com\n"
    "From: sip:j.user@example.com;tag=43251j3j324\n"
    "Max-Forwards: 8\n"
    "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412\n"
    "Contact: sip:j.user@host.example.com\n"
    "CSeq: 8 REGISTER\n"
    "Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492\n"
    "Content-Length: 0\n"
)
_INVITE_TAIL = (
    "INVITE sip:joe@example.com SIP/2.0\n"
    "t: sip:joe@example.com\n"
    "From: sip:caller@example.net;tag=141334\n"
    "Max-Forwards: 8\n"
    "Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15\n"
    "CSeq: 8 INVITE\n"
    "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234\n"
    "Content-Type: application/sdp\n"
    "Content-Length: {cl}\n"
)

RFC4475_CASES: list[TortureCase] = [
    # ---- 3.1.1 parser tests: valid messages ---------------------------------------------
    TortureCase(
        "wsinv", "3.1.1.1",
        wire(
            "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\n"
            "TO :\n"
            " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\n"
            'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\n'
            "  ;\n"
            "  tag = 98asjd8\n"
            "MaX-fOrWaRdS: 0068\n"
            "Call-ID: wsinv.ndaksdj@192.0.2.1\n"
            "Content-Length   : {cl}\n"
            "cseq: 0009\n"
            "  INVITE\n"
            "Via  : SIP  /   2.0\n"
            " /UDP\n"
            "    192.0.2.2;branch=390skdjuw\n"
            "s :\n"
            "NewFangledHeader:   newfangled value\n"
            " continued newfangled value\n"
            "UnknownHeaderWithUnusualValue: ;;,,;;,;\n"
            "Content-Type: application/sdp\n"
            "Route:\n"
            " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\n"
            "v:  SIP  / 2.0  / TCP     spindle.example.com   ;\n"
            "  branch  =   z9hG4bK9ikj8  ,\n"
            " SIP  /    2.0   / UDP  192.168.255.111   ; branch=\n"
            " z9hG4bK30239\n"
            'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =\n'
            "      newvalue ;\n"
            "  secondparam ; q = 0.33\n",
            SDP,
        ),
        "non400", "LWS everywhere, folding, compact and mixed-case names, empty Subject",
    ),
    TortureCase(
        "intmeth", "3.1.1.2",
        wire(
            "!interesting-Method0123456789_*+`.%indeed'~ "
            "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
            "@example.com SIP/2.0\n"
            "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\n"
            'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" '
            "<sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>\n"
            "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>"
            ";fromParam''~+*_!.-%=\"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439\""
            ";tag=_token~1'+`*%!-.\n"
            "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\n"
            "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\n"
            "Max-Forwards: 255\n"
            "extensionHeader-!.%*+_`'~:\ufeff\u5927\u5165\u9b5a\n"
            "Content-Length: 0\n"
        ),
        "non400", "every token character in method, URI user, params and header name; NUL in a quoted-pair",
    ),
    TortureCase(
        "esc01", "3.1.1.3",
        wire(
            "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0\n"
            "To: sip:%75se%72@example.com\n"
            "From: <sip:I%20have%20spaces@example.net>;tag=938\n"
            "Max-Forwards: 87\n"
            "i: esc01.239409asdfakjkn23onasd0-3234\n"
            "CSeq: 234234 INVITE\n"
            "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw\n"
            "C: application/sdp\n"
            "Contact:\n"
            "  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>\n"
            "Content-Length: {cl}\n",
            SDP,
        ),
        "non400", "valid %HH escapes in user part and URI parameters",
    ),
    TortureCase(
        "escnull", "3.1.1.4",
        wire(
            "REGISTER sip:example.com SIP/2.0\n"
            "To: sip:null-%00-null@example.com\n"
            "From: sip:null-%00-null@example.com;tag=839923423\n"
            "Max-Forwards: 70\n"
            "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd\n"
            "CSeq: 14398234 REGISTER\n"
            "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\n"
            "Contact: <sip:%00@host5.example.com>\n"
            "Contact: <sip:%00%00@host5.example.com>\n"
            "L:0\n"
        ),
        "non400", "escaped NULs in the AOR must not truncate it; two contacts",
    ),
    TortureCase(
        "esc02", "3.1.1.5",
        wire(
            "RE%47IST%45R sip:registrar.example.com SIP/2.0\n"
            'To: "%Z%45" <sip:resource@example.com>\n'
            'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23\n'
            "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf\n"
            "Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234\n"
            "CSeq: 29344 RE%47IST%45R\n"
            "Max-Forwards: 70\n"
            "Contact: <sip:alias1@host1.example.com>\n"
            "C%6Fntact: <sip:alias2@host2.example.com>\n"
            "Contact: <sip:alias3@host3.example.com>\n"
            "l: 0\n"
        ),
        "non400", "'%' that is not an escape: unknown method RE%47IST%45R, unknown header C%6Fntact",
    ),
    TortureCase(
        "lwsdisp", "3.1.1.6",
        wire(
            "OPTIONS sip:user@example.com SIP/2.0\n"
            "To: sip:user@example.com\n"
            "From: caller<sip:caller@example.com>;tag=323\n"
            "Max-Forwards: 70\n"
            "Call-ID: lwsdisp.1234abcd@funky.example.com\n"
            "CSeq: 60 OPTIONS\n"
            "Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw\n"
            "l: 0\n"
        ),
        "non400", "no LWS between display name and '<'",
    ),
    TortureCase("longreq", "3.1.1.7", _longreq(), "non400", "very long values and 41 Via values"),
    TortureCase(
        "dblreq", "3.1.1.8",
        wire(_REGISTER_0) + wire(_INVITE_TAIL, SDP),
        "non400", "UDP: the octets after Content-Length are ignored; TCP: two messages",
        stream="two",
    ),
    TortureCase(
        "semiuri", "3.1.1.9",
        wire(
            "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0\n"
            "To: sip:j_user@example.com\n"
            "From: sip:caller@example.org;tag=33242\n"
            "Max-Forwards: 3\n"
            "Call-ID: semiuri.0ha0isndaksdj\n"
            "CSeq: 8 OPTIONS\n"
            "Accept: application/sdp, application/pkcs7-mime,\n"
            "        multipart/mixed, multipart/signed,\n"
            "        message/sip, message/sipfrag\n"
            "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw\n"
            "l: 0\n"
        ),
        "non400", "';' in the user part: the user is 'user;par=u@example.net'",
    ),
    TortureCase(
        "transports", "3.1.1.10",
        wire(
            "OPTIONS sip:user@example.com SIP/2.0\n"
            "To: sip:user@example.com\n"
            "From: <sip:caller@example.com>;tag=323\n"
            "Max-Forwards: 70\n"
            "Call-ID:  transports.kijh4akdnaqjkwendsasfdj\n"
            "Accept: application/sdp\n"
            "CSeq: 60 OPTIONS\n"
            "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw\n"
            "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf\n"
            "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj\n"
            "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en\n"
            "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee\n"
            "l: 0\n"
        ),
        "non400", "Via transports SCTP, TLS and an unknown one",
    ),
    TortureCase("mpart01", "3.1.1.11", _mpart(), "non400", "multipart body with NULs and bare CR/LF: opaque"),
    TortureCase(
        "unreason", "3.1.1.12",
        wire(
            "SIP/2.0 200 = 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e \u0434\u0435\u0432\u044f\u043d\u043e"
            "\u0441\u0442\u043e \u0434\u0435\u0432\u044f\u0442\u044c - \u043f\u0440\u043e\u0441\u0442\u043e\u0435\n"
            "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\n"
            "Call-ID: unreason.1234ksdfak3j2erwedfsASdf\n"
            "CSeq: 35 INVITE\n"
            "From: sip:user@example.com;tag=11141343\n"
            "To: sip:user@example.edu;tag=2229\n"
            "Content-Length: {cl}\n"
            "Content-Type: application/sdp\n"
            "Contact: <sip:user@host198.example.com>\n",
            SDP,
        ),
        "drop", "UTF-8 reason phrase; a response is never answered", is_response=True,
    ),
    TortureCase(
        "noreason", "3.1.1.13",
        wire(
            "SIP/2.0 100 \n"
            "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\n"
            "Call-ID: noreason.asndj203insdf99223ndf\n"
            "CSeq: 35 INVITE\n"
            "From: <sip:user@example.com>;tag=39ansfi3\n"
            "To: <sip:user@example.edu>;tag=902jndnke3\n"
            "Content-Length: 0\n"
            "Contact: <sip:user@host105.example.com>\n"
        ),
        "drop", "empty reason phrase", is_response=True,
    ),
    # ---- 3.1.2 parser tests: invalid messages ---------------------------------------------
    TortureCase(
        "badinv01", "3.1.2.1",
        wire(
            "INVITE sip:user@example.com SIP/2.0\n"
            "To: sip:j.user@example.com\n"
            "From: sip:caller@example.net;tag=134161461246\n"
            "Max-Forwards: 7\n"
            "Call-ID: badinv01.0ha0isndaksdjasdf3234nas\n"
            "CSeq: 8 INVITE\n"
            "Via: SIP/2.0/UDP 192.0.2.15;;,;,,\n"
            'Contact: "Joe" <sip:joe@example.org>;;;;\n'
            "Content-Length: {cl}\n"
            "Content-Type: application/sdp\n",
            SDP,
        ),
        "400", "empty Via and Contact parameters and list elements", parser_status=400, fault="Via",
    ),
    TortureCase(
        "clerr", "3.1.2.2",
        wire(
            "INVITE sip:user@example.com SIP/2.0\n"
            "Max-Forwards: 80\n"
            "To: sip:j.user@example.com\n"
            "From: sip:caller@example.net;tag=93942939o2\n"
            "Contact: <sip:caller@hungry.example.net>\n"
            "Call-ID: clerr.0ha0isndaksdjweiafasdk3\n"
            "CSeq: 8 INVITE\n"
            "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523\n"
            "Content-Type: application/sdp\n"
            "Content-Length: 9999\n",
            SDP,
        ),
        "400", "Content-Length larger than the message (TCP: waits for more, then closes)",
        parser_status=400, fault="Content-Length", stream="incomplete",
    ),
    TortureCase(
        "ncl", "3.1.2.3",
        wire(
            "INVITE sip:user@example.com SIP/2.0\n"
            "Max-Forwards: 254\n"
            "To: sip:j.user@example.com\n"
            "From: sip:caller@example.net;tag=32394234\n"
            "Call-ID: ncl.0ha0isndaksdj2193423r542w35\n"
            "CSeq: 0 INVITE\n"
            "Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw\n"
            "Contact: <sip:caller@example53.example.net>\n"
            "Content-Type: application/sdp\n"
            "Content-Length: -999\n",
            SDP,
        ),
        "400", "negative Content-Length", parser_status=400, fault="Content-Length", stream="error",
    ),
    TortureCase(
        "scalar02", "3.1.2.4",
        wire(
            "REGISTER sip:example.com SIP/2.0\n"
            "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3\n"
            "To: <sip:user@example.com>\n"
            "From: <sip:user@example.com>;tag=239232jh3\n"
            "CSeq: 36893488147419103232 REGISTER\n"
            "Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32\n"
            "Max-Forwards: 300\n"
            f"Expires: 1{'0' * 100}\n"
            "Contact: <sip:user@host129.example.com>\n"
            "  ;expires=280297596632815\n"
            "Content-Length: 0\n"
        ),
        "400", "CSeq > 2**32-1 (also Max-Forwards > 255, huge Expires)", parser_status=400, fault="CSeq",
    ),
    TortureCase(
        "scalarlg", "3.1.2.5",
        wire(
            "SIP/2.0 503 Service Unavailable\n"
            "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129\n"
            "To: <sip:user@example.com>\n"
            "From: <sip:other@example.net>;tag=2easdjfejw\n"
            "CSeq: 9292394834772304023312 OPTIONS\n"
            "Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r\n"
            "Retry-After: 949302838503028349304023988\n"
            'Warning: 1812 overture "In Progress"\n'
            "Content-Length: 0\n"
        ),
        "drop", "response with overflowing CSeq and Retry-After", is_response=True,
        parser_status=400, fault="CSeq",
    ),
    TortureCase(
        "quotbal", "3.1.2.6",
        wire(
            "INVITE sip:user@example.com SIP/2.0\n"
            'To: "Mr. J. User <sip:j.user@example.com>\n'
            "From: sip:caller@example.net;tag=93334\n"
            "Max-Forwards: 10\n"
            "Call-ID: quotbal.aksdj\n"
            "Contact: <sip:caller@host59.example.net>\n"
            "CSeq: 8 INVITE\n"
            "Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234\n"
            "Content-Type: application/sdp\n"
            "Content-Length: {cl}\n",
            SDP,
        ),
        "400", "unterminated quoted display name", parser_status=400, fault="quote",
    ),
    TortureCase(
        "ltgtruri", "3.1.2.7",
        wire(
            "INVITE <sip:user@example.com> SIP/2.0\n"
            "To: sip:user@example.com\n"
            "From: sip:caller@example.net;tag=39291\n"
            "Max-Forwards: 23\n"
            "Call-ID: ltgtruri.1@192.0.2.5\n"
            "CSeq: 1 INVITE\n"
            "Via: SIP/2.0/UDP 192.0.2.5\n"
            "Contact: <sip:caller@host5.example.net>\n"
            "Content-Type: application/sdp\n"
            "Content-Length: {cl}\n",
            SDP,
        ),
        "400", "Request-URI enclosed in <>", parser_status=400, fault="Request-URI",
    ),
    TortureCase(
        "lwsruri", "3.1.2.8",
        wire(
            "INVITE sip:user@example.com; lr SIP/2.0\n"
            "To: sip:user@example.com;tag=3xfe-9921883-z9f\n"
            "From: sip:caller@example.net;tag=231413434\n"
            "Max-Forwards: 5\n"
            "Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423\n"
            "CSeq: 2130706432 INVITE\n"
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395\n"
            "Contact: <sip:caller@host1.example.net>\n"
            "Content-Type: application/sdp\n"
            "Content-Length: {cl}\n",
            SDP,
        ),
        "400", "LWS inside the Request-URI", parser_status=400, fault="Request-Line",
    ),
    TortureCase(
        "lwsstart", "3.1.2.9",
        wire(
            "INVITE  sip:user@example.com  SIP/2.0\n"
            "Max-Forwards: 8\n"
            "To: sip:user@example.com\n"
            "From: sip:caller@example.net;tag=8814\n"
            "Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com\n"
            "CSeq: 1893884 INVITE\n"
            "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923\n"
            "Contact: <sip:caller@host1.example.net>\n"
            "Content-Type: application/sdp\n"
            "Content-Length: {cl}\n",
            SDP,
        ),
        "any", "two spaces between Request-Line elements (rejected here)", parser_status=400,
        fault="Request-Line",
    ),
    TortureCase(
        "trws", "3.1.2.10",
        wire(
            "OPTIONS sip:remote-target@example.com SIP/2.0  \n"
            "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK299342093\n"
            "To: <sip:remote-target@example.com>\n"
            "From: <sip:local-resource@example.com>;tag=329429089\n"
            "Call-ID: trws.oicu34958239neffasdhr2345r\n"
            "Accept: application/sdp\n"
            "CSeq: 238923 OPTIONS\n"
            "Max-Forwards: 70\n"
            "Content-Length: 0\n"
        ),
        "any", "trailing spaces after the SIP-Version (rejected here)", parser_status=400,
        fault="Request-Line",
    ),
    TortureCase(
        "escruri", "3.1.2.11",
        wire(
            "INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0\n"
            "To: sip:user@example.com\n"
            "From: sip:caller@example.net;tag=341518\n"
            "Max-Forwards: 7\n"
            "Contact: <sip:caller@host39923.example.net>\n"
            "Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5\n"
            "CSeq: 149209342 INVITE\n"
            "Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw\n"
            "Content-Type: application/sdp\n"
            "Content-Length: {cl}\n",
            SDP,
        ),
        "any", "escaped headers in the Request-URI (parsed; the server must not act on them)",
    ),
    TortureCase(
        "baddate", "3.1.2.12",
        wire(
            "INVITE sip:user@example.com SIP/2.0\n"
            "To: sip:user@example.com\n"
            "From: sip:caller@example.net;tag=2234923\n"
            "Max-Forwards: 70\n"
            "Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234\n"
            "CSeq: 1392934 INVITE\n"
            "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw\n"
            "Date: Fri, 01 Jan 2010 16:00:00 EST\n"
            "Contact: <sip:caller@host5.example.net>\n"
            "Content-Type: application/sdp\n"
            "Content-Length: {cl}\n",
            SDP,
        ),
        "any", "Date in EST rather than GMT (the parser never decodes Date)",
    ),
    TortureCase(
        "regbadct", "3.1.2.13",
        wire(
            "REGISTER sip:example.com SIP/2.0\n"
            "To: sip:user@example.com\n"
            "From: sip:user@example.com;tag=998332\n"
            "Max-Forwards: 70\n"
            "Call-ID: regbadct.k345asrl3fdbv@10.0.0.1\n"
            "CSeq: 1 REGISTER\n"
            "Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw\n"
            "Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E\n"
            "l: 0\n"
        ),
        "any", "Contact URI with '?' but no <> (rejected here)", parser_status=400, fault="<>",
    ),
    TortureCase(
        "badaspec", "3.1.2.14",
        wire(
            "OPTIONS sip:user@example.org SIP/2.0\n"
            "Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234\n"
            "Max-Forwards: 70\n"
            'From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423\n'
            'To: "Watson, Thomas" < sip:t.watson@example.org >\n'
            "Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3\n"
            "Accept: application/sdp\n"
            "CSeq: 3923239 OPTIONS\n"
            "l: 0\n"
        ),
        "any", "whitespace inside <> around the addr-spec (rejected here)", parser_status=400,
        fault="URI",
    ),
    TortureCase(
        "baddn", "3.1.2.15",
        wire(
            "OPTIONS sip:t.watson@example.org SIP/2.0\n"
            "Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw\n"
            "Max-Forwards:      70\n"
            "From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43\n"
            "To:      Watson, Thomas <sip:t.watson@example.org>\n"
            "Call-ID: baddn.31415@c.example.com\n"
            "Accept: application/sdp\n"
            "CSeq:    3923239 OPTIONS\n"
            "l: 0\n"
        ),
        "any", "display names with ',' not quoted (rejected here)", parser_status=400, fault="quote",
    ),
    TortureCase(
        "badvers", "3.1.2.16",
        wire(
            "OPTIONS sip:t.watson@example.org SIP/7.0\n"
            "Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw\n"
            "Max-Forwards:     70\n"
            "From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe\n"
            "To:      T. Watson <sip:t.watson@example.org>\n"
            "Call-ID: badvers.31417@c.example.com\n"
            "CSeq:    1 OPTIONS\n"
            "l: 0\n"
        ),
        "505", "SIP/7.0", parser_status=505, fault="Version",
    ),
    TortureCase(
        "mismatch01", "3.1.2.17",
        wire(
            "OPTIONS sip:user@example.com SIP/2.0\n"
            "To: sip:j.user@example.com\n"
            "From: sip:caller@example.net;tag=34525\n"
            "Max-Forwards: 6\n"
            "Call-ID: mismatch01.dj0234sxdfl3\n"
            "CSeq: 8 INVITE\n"
            "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw\n"
            "l: 0\n"
        ),
        "400", "CSeq method differs from the Request-Line method", parser_status=400, fault="CSeq",
    ),
    TortureCase(
        "mismatch02", "3.1.2.18",
        wire(
            "NEWMETHOD sip:user@example.com SIP/2.0\n"
            "To: sip:j.user@example.com\n"
            "From: sip:caller@example.net;tag=34525\n"
            "Max-Forwards: 6\n"
            "Call-ID: mismatch02.dj0234sxdfl3\n"
            "CSeq: 8 INVITE\n"
            "Contact: <sip:caller@host.example.net>\n"
            "Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw\n"
            "Content-Type: application/sdp\n"
            "l: {cl}\n",
            SDP,
        ),
        "501_or_400", "unknown method with a CSeq naming INVITE", parser_status=400, fault="CSeq",
    ),
    TortureCase(
        "bigcode", "3.1.2.19",
        wire(
            "SIP/2.0 4294967301 better not break the receiver\n"
            "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\n"
            "Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i\n"
            "CSeq: 353494 INVITE\n"
            "From: <sip:user@example.com>;tag=39ansfi3\n"
            "To: <sip:user@example.edu>;tag=902jndnke3\n"
            "Content-Length: 0\n"
            "Contact: <sip:user@host105.example.com>\n"
        ),
        "drop", "status code > 699", is_response=True, parser_status=400, fault="status code",
    ),
    # ---- 3.2 transaction layer ---------------------------------------------------------------
    TortureCase(
        "badbranch", "3.2.1",
        wire(
            "OPTIONS sip:user@example.com SIP/2.0\n"
            "To: sip:user@example.com\n"
            "From: sip:caller@example.org;tag=33242\n"
            "Max-Forwards: 3\n"
            "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK\n"
            "Accept: application/sdp\n"
            "Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n\n"
            "CSeq: 8 OPTIONS\n"
            "l: 0\n"
        ),
        "any", "branch is only the magic cookie",
    ),
    # ---- 3.3 application layer -----------------------------------------------------------------
    TortureCase(
        "insuf", "3.3.1",
        wire(
            "INVITE sip:user@example.com SIP/2.0\n"
            "CSeq: 193942 INVITE\n"
            "Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\n"
            "Content-Type: application/sdp\n"
            "l: {cl}\n",
            SDP,
        ),
        "400_or_drop", "no Call-ID, From or To", parser_status=400, fault="Missing",
    ),
    TortureCase(
        "unkscm", "3.3.2",
        wire(
            "OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0\n"
            "To: sip:user@example.com\n"
            "From: sip:caller@example.net;tag=384\n"
            "Max-Forwards: 3\n"
            "Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34\n"
            "CSeq: 3923423 OPTIONS\n"
            "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234\n"
            "Content-Length: 0\n"
        ),
        "416", "unknown Request-URI scheme",
    ),
    TortureCase(
        "novelsc", "3.3.3",
        wire(
            "OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0\n"
            "To: sip:user@example.com\n"
            "From: sip:caller@example.net;tag=384\n"
            "Max-Forwards: 3\n"
            "Call-ID: novelsc.asdfasser0q239nwsdfasdkl34\n"
            "CSeq: 3923423 OPTIONS\n"
            "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234\n"
            "Content-Length: 0\n"
        ),
        "416_or_404", "soap.beep: Request-URI; must not route on To",
    ),
    TortureCase(
        "unksm2", "3.3.4",
        wire(
            "REGISTER sip:example.com SIP/2.0\n"
            "To: isbn:2983792873\n"
            "From: <http://www.example.com>;tag=3234233\n"
            "Call-ID: unksm2.daksdj@hyphenated-host.example.com\n"
            "CSeq: 234902 REGISTER\n"
            "Max-Forwards: 70\n"
            "Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw\n"
            "Contact: <name:John_Smith>\n"
            "l: 0\n"
        ),
        "4xx", "REGISTER whose To, From and Contact are not SIP URIs",
    ),
    TortureCase(
        "bext01", "3.3.5",
        wire(
            "OPTIONS sip:user@example.com SIP/2.0\n"
            "To: sip:j_user@example.com\n"
            "From: sip:caller@example.net;tag=242etr\n"
            "Max-Forwards: 6\n"
            "Call-ID: bext01.0ha0isndaksdj\n"
            "Require: nothingSupportsThis, nothingSupportsThisEither\n"
            "Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis\n"
            "CSeq: 8 OPTIONS\n"
            "Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw\n"
            "Content-Length: 0\n"
        ),
        "420", "unknown option tags in Require and Proxy-Require",
    ),
    TortureCase(
        "invut", "3.3.6",
        wire(
            "INVITE sip:user@example.com SIP/2.0\n"
            "Contact: <sip:caller@host5.example.net>\n"
            "To: sip:j.user@example.com\n"
            "From: sip:caller@example.net;tag=8392034\n"
            "Max-Forwards: 70\n"
            "Call-ID: invut.0ha0isndaksdjadsfij34n23d\n"
            "CSeq: 235448 INVITE\n"
            "Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw\n"
            "Content-Type: application/unknownformat\n"
            "Content-Length: {cl}\n",
            b'<audio>\r\n <pcmu port="443"/>\r\n</audio>\r\n',
        ),
        "non400", "body of an unknown type (an endpoint answers 415)",
    ),
    TortureCase(
        "regaut01", "3.3.7",
        wire(
            "REGISTER sip:example.com SIP/2.0\n"
            "To: sip:j.user@example.com\n"
            "From: sip:j.user@example.com;tag=87321hj23128\n"
            "Max-Forwards: 8\n"
            "Call-ID: regaut01.0ha0isndaksdj\n"
            "CSeq: 9338 REGISTER\n"
            "Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw\n"
            "Authorization: NoOneKnowsThisScheme opaque-data=here\n"
            "Content-Length:0\n"
        ),
        "non400", "Authorization with an unknown scheme (a registrar challenges)",
    ),
    TortureCase(
        "multi01", "3.3.8",
        wire(
            "INVITE sip:user@company.com SIP/2.0\n"
            "Contact: <sip:caller@host25.example.net>\n"
            "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw\n"
            "Max-Forwards: 70\n"
            "CSeq: 5 INVITE\n"
            "Call-ID: multi01.98asdh@192.0.2.1\n"
            "CSeq: 59 INVITE\n"
            "Call-ID: multi01.98asdh@192.0.2.2\n"
            "From: sip:caller@example.com;tag=3413415\n"
            "To: sip:user@example.com\n"
            "To: sip:other@example.net\n"
            "From: sip:caller@example.net;tag=2923420123\n"
            "Content-Type: application/sdp\n"
            "l: {cl}\n"
            "Contact: <sip:caller@host36.example.net>\n"
            "Max-Forwards: 5\n",
            SDP,
        ),
        "400", "duplicate Call-ID, CSeq, From, To and Max-Forwards", parser_status=400,
        fault="Multiple",
    ),
    TortureCase(
        "mcl01", "3.3.9",
        wire(
            "OPTIONS sip:user@example.com SIP/2.0\n"
            "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423\n"
            "To: sip:user@example.com\n"
            "From: sip:other@example.net;tag=3923942\n"
            "Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf\n"
            "CSeq: 15932 OPTIONS\n"
            "Content-Length: 13\n"
            "Max-Forwards: 60\n"
            "Content-Length: 5\n"
            "Content-Type: text/plain\n",
            b"There's no way to know how many octets are supposed to be here.\r\n",
        ),
        "400", "two different Content-Length values", parser_status=400, fault="Content-Length",
        stream="error",
    ),
    TortureCase(
        "bcast", "3.3.10",
        wire(
            "SIP/2.0 200 OK\n"
            "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\n"
            "Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23\n"
            "Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf\n"
            "CSeq: 35 INVITE\n"
            "From: sip:user@example.com;tag=11141343\n"
            "To: sip:user@example.edu;tag=2229\n"
            "Content-Length: {cl}\n"
            "Content-Type: application/sdp\n"
            "Contact: <sip:user@host28.example.com>\n",
            SDP,
        ),
        "drop", "second Via is the broadcast address; never forward there", is_response=True,
    ),
    TortureCase(
        "zeromf", "3.3.11",
        wire(
            "OPTIONS sip:user@example.com SIP/2.0\n"
            "To: sip:user@example.com\n"
            "From: sip:caller@example.net;tag=3ghsd41\n"
            "Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas\n"
            "CSeq: 39234321 OPTIONS\n"
            "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i\n"
            "Max-Forwards: 0\n"
            "Content-Length: 0\n"
        ),
        "non400", "Max-Forwards 0 on OPTIONS addressed to us",
    ),
    TortureCase(
        "cparam01", "3.3.12",
        wire(
            "REGISTER sip:example.com SIP/2.0\n"
            "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw\n"
            "Max-Forwards: 70\n"
            "From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe\n"
            "To: sip:watson@example.com\n"
            "Call-ID: cparam01.70710@saturn.example.com\n"
            "CSeq: 2 REGISTER\n"
            "Contact: sip:+19725552222@gw1.example.net;unknownparam\n"
            "l: 0\n"
        ),
        "non400", "unbracketed Contact: 'unknownparam' is a contact parameter",
    ),
    TortureCase(
        "cparam02", "3.3.13",
        wire(
            "REGISTER sip:example.com SIP/2.0\n"
            "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw\n"
            "Max-Forwards: 70\n"
            "From: sip:watson@example.com;tag=838293\n"
            "To: sip:watson@example.com\n"
            "Call-ID: cparam02.70710@saturn.example.com\n"
            "CSeq: 3 REGISTER\n"
            "Contact: <sip:+19725552222@gw1.example.net;unknownparam>\n"
            "l: 0\n"
        ),
        "non400", "bracketed Contact: 'unknownparam' is a URI parameter",
    ),
    TortureCase(
        "regescrt", "3.3.14",
        wire(
            "REGISTER sip:example.com SIP/2.0\n"
            "To: sip:user@example.com\n"
            "From: sip:user@example.com;tag=8\n"
            "Max-Forwards: 70\n"
            "Call-ID: regescrt.k345asrl3fdbv@192.0.2.1\n"
            "CSeq: 14398234 REGISTER\n"
            "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\n"
            "M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>\n"
            "L:0\n"
        ),
        "non400", "escaped Route header inside a bracketed Contact URI",
    ),
    TortureCase(
        "sdp01", "3.3.15",
        wire(
            "INVITE sip:user@example.com SIP/2.0\n"
            "To: sip:j_user@example.com\n"
            "Contact: <sip:caller@host15.example.net>\n"
            "From: sip:caller@example.net;tag=234\n"
            "Max-Forwards: 5\n"
            "Call-ID: sdp01.ndaksdj9342dasdd\n"
            "Accept: text/nobodyKnowsThis\n"
            "CSeq: 8 INVITE\n"
            "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw\n"
            "Content-Length: {cl}\n"
            "Content-Type: application/sdp\n",
            SDP,
        ),
        "non400", "Accept lacks application/sdp (an endpoint answers 406)",
    ),
    # ---- 3.4 backward compatibility ------------------------------------------------------------
    TortureCase(
        "inv2543", "3.4.1",
        wire(
            "INVITE sip:UserB@example.com SIP/2.0\n"
            "Via: SIP/2.0/UDP iftgw.example.com\n"
            "From: <sip:+13035551111@ift.client.example.net;user=phone>\n"
            "Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>\n"
            "To: sip:+16505552222@ss1.example.net;user=phone\n"
            "Call-ID: inv2543.1717@ift.client.example.com\n"
            "CSeq: 56 INVITE\n"
            "Content-Type: application/sdp\n",
            SDP,
        ),
        "non400", "RFC 2543 request: no branch, tags, Max-Forwards or Content-Length "
        "(TCP: missing Content-Length is a framing error)",
        stream="error",
    ),
]
