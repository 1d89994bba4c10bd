"""SIP URIs and name-addr values (RFC 3261 §19.1, §20.10, §25.1)."""

from __future__ import annotations

import pytest

from vivait_sip.sip.errors import SipParseError
from vivait_sip.sip.uri import NameAddr, SipUri, parse_name_addr, parse_uri, unescape


def test_full_sip_uri() -> None:
    uri = parse_uri("sip:alice:secretword@Atlanta.COM:5061;transport=TCP;lr;maddr=239.255.255.1?subject=x&priority=urgent")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == ("sip", "alice", "secretword", "atlanta.com", 5061)
    assert uri.transport == "tcp" and uri.lr and uri.maddr == "239.255.255.1"
    assert uri.headers == "subject=x&priority=urgent"
    assert str(uri) == "sip:alice:secretword@atlanta.com:5061;transport=TCP;lr;maddr=239.255.255.1?subject=x&priority=urgent"


def test_sips_and_ipv6() -> None:
    uri = parse_uri("SIPS:bob@[2001:DB8::9:1]:5061;transport=tls")
    assert uri.scheme == "sips" and uri.is_secure and uri.is_sip
    assert uri.host == "[2001:db8::9:1]" and uri.port == 5061
    assert parse_uri("sip:[::ffff:192.0.2.1]").host == "[::ffff:192.0.2.1]"
    assert str(parse_uri("sip:[2001:db8::1]")) == "sip:[2001:db8::1]"


def test_escaped_user_and_params() -> None:
    uri = parse_uri("sip:%61lice%20smith@example.com;%6C%72;n%61me=v")
    assert uri.user == "%61lice%20smith" and uri.user_unescaped == "alice smith"
    assert uri.aor == "sip:alice smith@example.com"
    assert uri.has_param("lr") and uri.lr
    assert uri.param("name") == "v"
    assert uri.param("missing") is None
    assert unescape("100%") == "100%" and unescape("%zz%41") == "%zzA"


def test_user_part_with_reserved_characters() -> None:
    uri = parse_uri("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net" and uri.params == []
    tel = parse_uri("sip:+1-212-555-1212:1234@gateway.com;user=phone")
    assert tel.user == "+1-212-555-1212" and tel.password == "1234" and tel.param("user") == "phone"


def test_non_sip_schemes_are_opaque() -> None:
    for text in ("tel:+1-201-555-0123", "soap.beep://192.0.2.103:3002", "nobodyKnowsThisScheme:totallyopaquecontent"):
        uri = parse_uri(text)
        assert not uri.is_sip and str(uri) == text[: text.index(":")].lower() + text[text.index(":") :]


@pytest.mark.parametrize(
    "text",
    ["", "sip:", "sip:@host", "sip:user@", "sip:host:abc", "sip:host:70000", "sip:[::1", "sip:[zz::1]",
     "sip:[::1]x", "sip:a b@h", "sip:h\x00", "sip:<h>", '"sip:h"', "1sip:h", "sip:h$st", "sip:hé",
     "sip:h:\uff11\uff12"],
)
def test_malformed_uris(text: str) -> None:
    with pytest.raises(SipParseError) as err:
        parse_uri(text)
    assert err.value.status == 400


def test_set_param() -> None:
    uri = parse_uri("sip:h;transport=udp")
    uri.set_param("transport", "tcp")
    uri.set_param("lr", None)
    assert str(uri) == "sip:h;transport=tcp;lr"


def test_name_addr_forms() -> None:
    quoted = parse_name_addr('"Alice \\"A\\" Smith" <sip:alice@atlanta.com>;tag=88sja8x;q=0.7')
    assert quoted.display == '"Alice \\"A\\" Smith"' and quoted.display_name == 'Alice "A" Smith'
    assert quoted.tag == "88sja8x" and quoted.q == 0.7 and quoted.bracketed
    token = parse_name_addr("Bob Smith<sip:bob@biloxi.com>")
    assert token.display == "Bob Smith" and token.display_name == "Bob Smith"
    bare = parse_name_addr(" sip:carol@chicago.com;tag=1;expires=30 ")
    assert not bare.bracketed and bare.uri.params == [] and bare.tag == "1" and bare.expires == 30
    inner = parse_name_addr("<sip:carol@chicago.com;tag=1>")
    assert inner.tag is None and inner.uri.param("tag") == "1"
    assert parse_name_addr("<tel:+1555>").uri.scheme == "tel"


def test_name_addr_round_trip() -> None:
    na = parse_name_addr('"A" <sip:a@b;lr>;tag=x;foo')
    assert str(na) == '"A" <sip:a@b;lr>;tag=x;foo'
    na.set_param("tag", "y")
    assert str(na) == '"A" <sip:a@b;lr>;tag=y;foo'
    built = NameAddr(SipUri("sip", user="u", host="h"))
    assert str(built) == "<sip:u@h>" and built.display_name is None


@pytest.mark.parametrize(
    "text",
    ['"unbalanced <sip:a@b>', "Bell, Alexander <sip:a@b>", "<sip:a@b", "< sip:a@b >", "<sip:a@b> junk",
     '"A" sip:a@b', "sip:a@b?x=y", "sip:a@b, sip:c@d", "", "*", 'a"b <sip:a@b>'],
)
def test_malformed_name_addrs(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_name_addr(text)


@pytest.mark.parametrize(("value", "q"), [("0", 0.0), ("0.5", 0.5), ("0.123", 0.123), ("1", 1.0), ("1.000", 1.0), ("1.", 1.0)])
def test_qvalues(value: str, q: float) -> None:
    assert parse_name_addr(f"<sip:a@b>;q={value}").q == q


@pytest.mark.parametrize("value", ["1.5", "2", "0.1234", "-0.5", "", "abc", "1.001"])
def test_malformed_qvalues(value: str) -> None:
    with pytest.raises(SipParseError, match="q-value"):
        parse_name_addr(f"<sip:a@b>;q={value}").q  # noqa: B018


def test_contact_expires_param() -> None:
    assert parse_name_addr("<sip:a@b>").expires is None
    assert parse_name_addr("<sip:a@b>;expires=280297596632815").expires == 0xFFFFFFFF
    with pytest.raises(SipParseError, match="expires"):
        parse_name_addr("<sip:a@b>;expires=never").expires  # noqa: B018
