"""SIP URIs and name-addr values (RFC 3261 §19.1, §20.10, §25.1).

Parsing is strict enough to reject the RFC 4475 malformed cases and liberal where the
RFC asks for liberality.  Comparison follows §19.1.4: escapes are decoded, scheme, host
and parameter names compare case-insensitively, the user part case-sensitively.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote

from .errors import SipParseError

_WS = " \t"
_SIP_SCHEMES = frozenset(("sip", "sips"))
TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
# Controls, whitespace and the delimiters that can never appear inside a URI (§25.1).
_BAD_URI_CHARS = re.compile(r'[\x00-\x20\x7f<>"]')
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
# Liberal hostname: RFC 3261 allows alphanum, '-' and '.'; '_' is common in the wild.
_HOSTNAME = re.compile(r"[A-Za-z0-9_\-.]+")
# The common shape of a SIP URI, decoded in one regex call; anything else (IPv6, ';' or
# '?' in the user part, upper-case scheme, odd characters) takes the general path below.
_FAST_SIP_URI = re.compile(
    r"(sips?):(?:([A-Za-z0-9\-_.!~*'()%&=+$,/]+)(?::([A-Za-z0-9\-_.!~*'()%&=+$,]*))?@)?"
    r"([A-Za-z0-9_\-.]+)(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-_.!~*'()%\[\]/:&+$=]*)*)"
    r"(?:\?([A-Za-z0-9\-_.!~*'()%\[\]/?:+$&=]*))?"
)
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")
_MAX_INT_DIGITS = 40

Params = list[tuple[str, str | None]]


def is_token(text: str) -> bool:
    """True when `text` is a non-empty RFC 3261 token."""
    return bool(text) and TOKEN_CHARS.issuperset(text)


def unescape(text: str) -> str:
    """Decode %HH escapes, keeping invalid ones as they are (RFC 4475 §3.1.1.5)."""
    if "%" not in text:
        return text
    return unquote(text, errors="surrogateescape")


def parse_digits(text: str, what: str, limit: int | None = None) -> int:
    """ASCII decimal digits only (never Unicode digits); `limit` caps the value, not an error."""
    text = text.strip(_WS)
    if not text or not text.isascii() or not text.isdigit():
        raise SipParseError(f"Malformed {what}")
    if len(text) > _MAX_INT_DIGITS:
        if limit is None:
            raise SipParseError(f"{what} out of range")
        return limit
    value = int(text)
    return value if limit is None else min(value, limit)


def _split_params(text: str, sep: str = ";") -> Params:
    params: Params = []
    for item in text.split(sep):
        item = item.strip(_WS)
        if not item:
            continue
        name, eq, value = item.partition("=")
        params.append((name.strip(_WS).lower(), value.strip(_WS) if eq else None))
    return params


def _param(params: Params, name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value if value is not None else ""
    return None


def _set_param(params: Params, name: str, value: str | None) -> None:
    for i, (key, _) in enumerate(params):
        if key == name:
            params[i] = (name, value)
            return
    params.append((name, value))


def _format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _split_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError("Unterminated IPv6 reference")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host.lower(), None
        if not rest.startswith(":"):
            raise SipParseError("Malformed IPv6 host")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            return host.lower(), None
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
        raise SipParseError("Malformed port")
    return host.lower(), int(port_text)


def valid_host(host: str) -> bool:
    """Hostname, IPv4 address or bracketed IPv6 reference (§25.1 `host`)."""
    if host.startswith("["):
        if not host.endswith("]"):
            return False
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return _HOSTNAME.fullmatch(host) is not None


def bare_host(host: str) -> str:
    """Host without IPv6 brackets, as sockets want it."""
    return host[1:-1] if host.startswith("[") else host


@dataclass(slots=True, init=False)
class SipUri:
    """A parsed URI.  Non-SIP schemes (tel:, http:, soap.beep:) keep their text in `opaque`."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: Params
    headers: str | None
    opaque: str | None

    # An explicit __init__: mypyc compiles it (a dataclass-made one runs as Python).
    def __init__(
        self,
        scheme: str,
        user: str | None = None,
        password: str | None = None,
        host: str = "",
        port: int | None = None,
        params: Params | None = None,
        headers: str | None = None,
        opaque: str | None = None,
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = [] if params is None else params
        self.headers = headers
        self.opaque = opaque

    @property
    def is_sip(self) -> bool:
        return self.scheme in _SIP_SCHEMES

    @property
    def is_secure(self) -> bool:
        """A `sips:` URI demands TLS on every hop (§26.2.2)."""
        return self.scheme == "sips"

    def param(self, name: str) -> str | None:
        """Value of a URI parameter ('' when it has none); escaped names match too (§19.1.4)."""
        value = _param(self.params, name)
        if value is not None:
            return value
        for key, val in self.params:
            if "%" in key and unescape(key).lower() == name:
                return val if val is not None else ""
        return None

    def has_param(self, name: str) -> bool:
        return self.param(name) is not None

    def set_param(self, name: str, value: str | None) -> None:
        _set_param(self.params, name, value)

    @property
    def transport(self) -> str | None:
        value = self.param("transport")
        return value.lower() if value else None

    @property
    def maddr(self) -> str | None:
        return self.param("maddr") or None

    @property
    def lr(self) -> bool:
        """Loose-routing marker of a Route/Record-Route URI (§16.12)."""
        return self.has_param("lr")

    @property
    def user_unescaped(self) -> str | None:
        """User part with %HH decoded; `sip:%75ser@h` and `sip:user@h` have the same user."""
        return unescape(self.user) if self.user is not None else None

    @property
    def aor(self) -> str:
        """Address-of-record key: scheme sip, unescaped user, lowercase host, no port/params."""
        user = unescape(self.user) if self.user is not None else ""
        return f"sip:{user}@{self.host}" if user else f"sip:{self.host}"

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out += [":", str(self.port)]
        if self.params:
            out.append(_format_params(self.params))
        if self.headers:
            out += ["?", self.headers]
        return "".join(out)


def parse_uri(text: str) -> SipUri:
    """Parse an absolute URI; raises SipParseError when malformed."""
    fast = _FAST_SIP_URI.fullmatch(text)
    if fast is not None:
        scheme, user, password, host, port_text, param_text, headers = fast.groups()
        port = int(port_text) if port_text else None
        if port is not None and port > 65535:
            raise SipParseError("Malformed port")
        return SipUri(
            scheme, user, password, host.lower(), port,
            _split_params(param_text) if param_text else [], headers,
        )
    return _parse_uri_general(text)


def _parse_uri_general(text: str) -> SipUri:
    if not text or _BAD_URI_CHARS.search(text):
        raise SipParseError("Malformed URI")
    scheme, colon, rest = text.partition(":")
    if not colon or _SCHEME.fullmatch(scheme) is None:
        raise SipParseError("Malformed URI scheme")
    scheme = scheme.lower()
    if scheme not in _SIP_SCHEMES:
        return SipUri(scheme=scheme, opaque=rest)
    # '?' and ';' may appear in the user part (RFC 4475 §3.1.1.2, §3.1.1.9) but '@'
    # never appears after it: neither uri-parameters nor headers allow a bare '@'.
    userinfo, at, hostpart = rest.rpartition("@")
    hostpart, qmark, headers = hostpart.partition("?")
    user: str | None = None
    password: str | None = None
    if at:
        user, pcolon, pw = userinfo.partition(":")
        password = pw if pcolon else None
        if not user:
            raise SipParseError("Empty user part in URI")
    hostport, _, param_text = hostpart.partition(";")
    host, port = _split_hostport(hostport)
    if not valid_host(host):
        raise SipParseError("Malformed host in URI")
    return SipUri(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=_split_params(param_text) if param_text else [],
        headers=headers if qmark else None,
    )


@dataclass(slots=True, init=False)
class NameAddr:
    """From/To/Contact/Route value: optional display name, URI, header parameters.

    `display` keeps the display name as written (quotes included) so it re-serialises
    unchanged; `display_name` is the decoded text.
    """

    uri: SipUri
    display: str | None
    params: Params
    bracketed: bool

    # An explicit __init__: mypyc compiles it (a dataclass-made one runs as Python).
    def __init__(
        self, uri: SipUri, display: str | None = None, params: Params | None = None, bracketed: bool = True
    ) -> None:
        self.uri = uri
        self.display = display
        self.params = [] if params is None else params
        self.bracketed = bracketed

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    def set_param(self, name: str, value: str | None) -> None:
        _set_param(self.params, name, value)

    @property
    def tag(self) -> str | None:
        return _param(self.params, "tag")

    @property
    def display_name(self) -> str | None:
        """Display name without quotes and quoted-pair backslashes."""
        d = self.display
        if d is None:
            return None
        if d.startswith('"') and d.endswith('"') and len(d) >= 2:
            return re.sub(r"\\(.)", r"\1", d[1:-1], flags=re.S)
        return d

    @property
    def q(self) -> float:
        """Contact preference (§20.10): 1.0 when absent; a malformed qvalue is an error."""
        value = _param(self.params, "q")
        if value is None:
            return 1.0
        if _QVALUE.fullmatch(value) is None:
            raise SipParseError("Malformed q-value")
        return float(value)

    @property
    def expires(self) -> int | None:
        """Contact `expires` parameter in seconds (§20.10), capped at 2**32-1."""
        value = _param(self.params, "expires")
        if value is None:
            return None
        return parse_digits(value, "Contact expires", 0xFFFFFFFF)

    def __str__(self) -> str:
        head = f"{self.display} <{self.uri}>" if self.display else f"<{self.uri}>"
        return head + _format_params(self.params) if self.params else head


def _read_quoted(text: str, start: int) -> int:
    """Return the index just past the closing quote of a quoted-string starting at `start`."""
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    raise SipParseError("Unbalanced quotes")


def parse_name_addr(text: str) -> NameAddr:
    """Parse `"Display" <uri>;params`, `Display <uri>`, or a bare addr-spec with params."""
    text = text.strip(_WS)
    if not text:
        raise SipParseError("Empty address")
    display: str | None = None
    if text[0] == '"':
        end = _read_quoted(text, 0)
        display = text[:end]
        text = text[end:].lstrip(_WS)
        if not text.startswith("<"):
            raise SipParseError("Display name without <uri>")
    lt = text.find("<")
    if lt >= 0:
        if display is None and lt > 0:
            raw_display = text[:lt].strip(_WS)
            if raw_display:
                if not all(is_token(word) for word in raw_display.split()):
                    raise SipParseError("Display name needs quotes")
                display = raw_display
        gt = text.find(">", lt)
        if gt < 0:
            raise SipParseError("Unterminated <uri>")
        uri = parse_uri(text[lt + 1 : gt])
        rest = text[gt + 1 :].strip(_WS)
        if rest and rest[0] != ";":
            raise SipParseError("Garbage after <uri>")
        return NameAddr(uri=uri, display=display, params=_split_params(rest) if rest else [])
    # addr-spec form: header params follow the first ';' and the URI cannot carry its own.
    uri_text, _, param_text = text.partition(";")
    uri_text = uri_text.strip(_WS)
    if "?" in uri_text or "," in uri_text:
        raise SipParseError("Address with ',' or '?' must be enclosed in <>")
    return NameAddr(
        uri=parse_uri(uri_text),
        params=_split_params(param_text) if param_text else [],
        bracketed=False,
    )


def aor_user(aor: str) -> str:
    """The user part of an AOR (`sip:6140@pbx.example` → `6140`); the AOR itself when it
    has none.  Worker processes partition bindings by it, so a call finds every device of
    a user, whatever domain each registered with, in one worker."""
    colon = aor.find(":")
    at = aor.find("@")
    return aor[colon + 1 : at] if at > colon >= 0 else aor
