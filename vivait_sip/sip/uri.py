"""SIP URIs and name-addr values (RFC 3261 §19.1, §20.10, §25.1).

Parsing is strict enough to reject the RFC 4475 malformed cases and liberal where the
RFC asks for liberality.  Comparison follows §19.1.4: escapes are decoded, scheme, host
and parameter names compare case-insensitively, the user part case-sensitively.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote

from .errors import SipParseError

_WS = " \t"
_SIP_SCHEMES = frozenset(("sip", "sips"))


def unescape(text: str) -> str:
    """Decode %HH escapes, keeping invalid ones as they are (RFC 4475 §3.1.1.5)."""
    if "%" not in text:
        return text
    return unquote(text, errors="surrogateescape")


def _split_params(text: str, sep: str = ";") -> list[tuple[str, str | None]]:
    params: list[tuple[str, str | None]] = []
    for item in text.split(sep):
        item = item.strip(_WS)
        if not item:
            continue
        name, eq, value = item.partition("=")
        params.append((name.strip(_WS).lower(), value.strip(_WS) if eq else None))
    return params


def _split_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError("unterminated IPv6 reference")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host.lower(), None
        if not rest.startswith(":"):
            raise SipParseError("bad IPv6 host")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            return host.lower(), None
    if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
        raise SipParseError(f"bad port {port_text!r}")
    return host.lower(), int(port_text)


def _valid_host(host: str) -> bool:
    if not host:
        return False
    if host.startswith("["):
        return host.endswith("]") and all(c in "0123456789abcdef:." for c in host[1:-1])
    return all(c.isalnum() or c in "-." for c in host)


@dataclass(slots=True)
class SipUri:
    """A parsed URI.  Non-SIP schemes (tel:, http:, soap.beep:) keep their text in `opaque`."""

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: list[tuple[str, str | None]] = field(default_factory=list)
    headers: str | None = None
    opaque: str | None = None

    @property
    def is_sip(self) -> bool:
        return self.scheme in _SIP_SCHEMES

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value if value is not None else ""
        return None

    def has_param(self, name: str) -> bool:
        return any(key == name for key, _ in self.params)

    @property
    def transport(self) -> str | None:
        value = self.param("transport")
        return value.lower() if value else None

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
        for key, value in self.params:
            out += [";", key] if value is None else [";", key, "=", value]
        if self.headers:
            out += ["?", self.headers]
        return "".join(out)


def parse_uri(text: str) -> SipUri:
    """Parse an absolute URI; raises SipParseError when malformed."""
    if not text or any(c in text for c in " \t\r\n<>\""):
        raise SipParseError(f"malformed URI {text!r}")
    scheme, colon, rest = text.partition(":")
    if not colon or not scheme or not (scheme[0].isalpha() and all(c.isalnum() or c in "+-." for c in scheme)):
        raise SipParseError(f"malformed URI scheme in {text!r}")
    scheme = scheme.lower()
    if scheme not in _SIP_SCHEMES:
        return SipUri(scheme=scheme, opaque=rest)
    # '?' may appear in the user part (RFC 4475 §3.1.1.2) but '@' never in the headers.
    userinfo, at, hostpart = rest.rpartition("@")
    hostpart, qmark, headers = hostpart.partition("?")
    user: str | None = None
    password: str | None = None
    if at:
        user, pcolon, pw = userinfo.partition(":")
        password = pw if pcolon else None
        if not user:
            raise SipParseError("empty user part in URI")
    hostport, _, param_text = hostpart.partition(";")
    host, port = _split_hostport(hostport)
    if not _valid_host(host):
        raise SipParseError(f"malformed host {host!r}")
    return SipUri(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=_split_params(param_text),
        headers=headers if qmark else None,
    )


@dataclass(slots=True)
class NameAddr:
    """From/To/Contact/Route value: optional display name, URI, header parameters."""

    uri: SipUri
    display: str | None = None
    params: list[tuple[str, str | None]] = field(default_factory=list)
    bracketed: bool = True

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value if value is not None else ""
        return None

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def __str__(self) -> str:
        head = f"{self.display} <{self.uri}>" if self.display else f"<{self.uri}>"
        tail = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)
        return head + tail


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
    raise SipParseError("unbalanced quotes")


def parse_name_addr(text: str) -> NameAddr:
    """Parse `"Display" <uri>;params`, `Display <uri>`, or a bare addr-spec with params."""
    text = text.strip(_WS)
    if not text:
        raise SipParseError("empty address")
    display: str | None = None
    if text.startswith('"'):
        end = _read_quoted(text, 0)
        display = text[:end]
        text = text[end:].lstrip(_WS)
        if not text.startswith("<"):
            raise SipParseError("display name without <uri>")
    lt = text.find("<")
    if lt >= 0:
        if display is None:
            raw_display = text[:lt].strip(_WS)
            if raw_display:
                if '"' in raw_display:
                    raise SipParseError("malformed display name")
                for word in raw_display.split():
                    if not all(c.isalnum() or c in "-.!%*_+`'~" for c in word):
                        raise SipParseError(f"display name needs quotes: {raw_display!r}")
                display = raw_display
        gt = text.find(">", lt)
        if gt < 0:
            raise SipParseError("unterminated <uri>")
        uri = parse_uri(text[lt + 1 : gt])
        rest = text[gt + 1 :].strip(_WS)
        if rest and not rest.startswith(";"):
            raise SipParseError("garbage after <uri>")
        return NameAddr(uri=uri, display=display, params=_split_params(rest))
    # addr-spec form: header params follow the first ';' and the URI cannot carry its own.
    uri_text, _, param_text = text.partition(";")
    uri_text = uri_text.strip(_WS)
    if "?" in uri_text or "," in uri_text:
        raise SipParseError("addr-spec with ',' '?' or ';' must be enclosed in <>")
    return NameAddr(
        uri=parse_uri(uri_text), params=_split_params(param_text), bracketed=False
    )
