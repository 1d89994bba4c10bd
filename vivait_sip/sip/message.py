"""SIP messages (RFC 3261 §7, §20, §25): parse, inspect lazily, modify and serialise.

A parsed message keeps every header line exactly as it arrived.  Only the headers a
decision needs are decoded, on first use, and cached until the headers change; a header
that nobody changes is re-emitted byte for byte, and a message nobody changed is
re-emitted as the very bytes it was parsed from.  Bodies (SDP, multipart with NULs,
anything) stay opaque bytes.
"""

from __future__ import annotations

import itertools
import re
import secrets
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar, cast

from mypy_extensions import mypyc_attr

from .errors import SipParseError
from .uri import (
    NameAddr,
    SipUri,
    _read_quoted,
    _split_hostport,
    _split_params,
    bare_host,
    is_token,
    parse_digits,
    parse_name_addr,
    parse_uri,
    valid_host,
)

COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}

CANONICAL_NAMES: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
}

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1); others are single values
# even when they contain commas (dates, digest credentials).
LIST_HEADERS = frozenset(
    (
        "via", "contact", "route", "record-route", "path", "allow", "supported", "require",
        "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
        "content-encoding", "allow-events", "in-reply-to", "alert-info", "call-info",
        "error-info", "reply-to", "service-route", "p-asserted-identity", "security-client",
        "security-server", "security-verify", "reason", "warning",
    )
)

# Headers that must appear at most once (RFC 4475 §3.3.8 multi01).
SINGLE_HEADERS = ("call-id", "cseq", "from", "to", "max-forwards", "content-length")

SUPPORTED_VERSION = "SIP/2.0"
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_CSEQ_RE = re.compile(r"[ \t]*([0-9]+)[ \t]+([^ \t]+)[ \t]*")
_MAX_CSEQ = 0xFFFFFFFF
_LWS = " \t"


def canonical_header_name(key: str) -> str:
    """Long form, capitalised, for headers we generate."""
    name = CANONICAL_NAMES.get(key)
    if name is None:
        name = "-".join(part.capitalize() for part in key.split("-"))
    return name


_KEYS: dict[str, str] = {}


def header_key(name: str) -> str:
    """Lower-case long form used for lookups (`v` → `via`); memoised, it runs per lookup."""
    key = _KEYS.get(name)
    if key is None:
        key = name.lower()
        key = COMPACT_FORMS.get(key, key)
        if len(_KEYS) < 1024:
            _KEYS[name] = key
    return key


def split_list(value: str) -> list[str]:
    """Split a list header at top-level commas, honouring quotes and <...>."""
    if "," not in value:
        stripped = value.strip(" \t")
        return [stripped] if stripped else []
    items: list[str] = []
    start = 0
    i = 0
    n = len(value)
    depth = 0
    while i < n:
        c = value[i]
        if c == '"':
            i = _read_quoted(value, i)
            continue
        if c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            item = value[start:i].strip(" \t")
            if item:
                items.append(item)
            start = i + 1
        i += 1
    item = value[start:].strip(" \t")
    if item:
        items.append(item)
    return items


@dataclass(slots=True, init=False)
class Via:
    """One Via value (§20.42) with the RFC 3581 `rport` and §18.2 `received`/`maddr` helpers."""

    transport: str
    host: str
    port: int | None
    params: list[tuple[str, str | None]]
    protocol: str

    # An explicit __init__: mypyc compiles it (a dataclass-made one runs as Python).
    def __init__(
        self, transport: str, host: str, port: int | None, params: list[tuple[str, str | None]], protocol: str = "SIP/2.0"
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params
        self.protocol = protocol

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value if value is not None else ""
        return None

    def has_param(self, name: str) -> bool:
        return any(key == name for key, _ in self.params)

    def set_param(self, name: str, value: str | None) -> None:
        for i, (key, _) in enumerate(self.params):
            if key == name:
                self.params[i] = (name, value)
                return
        self.params.append((name, value))

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def is_rfc3261_branch(self) -> bool:
        """Branch carries the magic cookie, so it alone identifies the transaction (§17.2.3)."""
        branch = self.param("branch")
        return branch is not None and branch.startswith("z9hG4bK") and len(branch) > 7

    @property
    def received(self) -> str | None:
        return self.param("received") or None

    @property
    def maddr(self) -> str | None:
        return self.param("maddr") or None

    @property
    def rport(self) -> int | None:
        """Filled-in rport value; None when absent or requested but still empty."""
        value = self.param("rport")
        if not value:
            return None
        port = parse_digits(value, "Via rport")
        if port > 65535:
            raise SipParseError("Via rport out of range")
        return port

    @property
    def wants_rport(self) -> bool:
        """The client asked for symmetric response routing (RFC 3581 §3)."""
        return self.has_param("rport")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def stamp(self, source_host: str, source_port: int) -> None:
        """Server side of §18.2.1 and RFC 3581 §4: record where the request really came from."""
        if self.wants_rport:
            self.set_param("received", source_host)
            self.set_param("rport", str(source_port))
        elif bare_host(self.host) != source_host:
            self.set_param("received", source_host)

    def response_address(self, default_port: int = 5060) -> tuple[str, int]:
        """Host (no IPv6 brackets) and port a response goes to (§18.2.2, RFC 3581 §4)."""
        maddr = self.maddr
        if maddr:
            return bare_host(maddr), self.port or default_port
        rport = self.rport
        host = self.received or self.host
        return bare_host(host), rport or self.port or default_port

    def __str__(self) -> str:
        text = f"{self.protocol}/{self.transport} {self.sent_by}"
        return text + "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)


# The common shape of a via-parm (no LWS inside, IPv4 or hostname, token parameters);
# anything else takes the general path in parse_via.
_T = r"[A-Za-z0-9\-.!%*_+`'~]+"
_FAST_VIA = re.compile(rf"SIP/2\.0/({_T}) ([A-Za-z0-9_\-.]+)(?::([0-9]{{1,5}}))?((?:;{_T}(?:={_T})?)*)")


def parse_via(value: str) -> Via:
    """Parse one via-parm (already split from its list); LWS around '/' and ':' is allowed."""
    fast = _FAST_VIA.fullmatch(value)
    if fast is not None:
        transport, host, port_text, param_text = fast.groups()
        port = int(port_text) if port_text else None
        if port is not None and port > 65535:
            raise SipParseError("Malformed Via port")
        params = _split_params(param_text) if param_text else []
        return Via(transport.upper(), host.lower(), port, params)
    return _parse_via_general(value)


def _parse_via_general(value: str) -> Via:
    proto, _, rest = value.strip(" \t").partition("/")
    version, _, rest = rest.partition("/")
    rest = rest.strip(" \t")
    cut = 0
    while cut < len(rest) and rest[cut] not in " \t":
        cut += 1
    transport, rest = rest[:cut], rest[cut:]
    if (
        not rest
        or proto.strip(" \t").upper() != "SIP"
        or version.strip(" \t") != "2.0"
        or not is_token(transport)
    ):
        raise SipParseError("Malformed Via")
    sent_by, _, params = rest.strip(" \t").partition(";")
    sent_by = sent_by.replace(" ", "").replace("\t", "")
    host, port = _split_hostport(sent_by)
    if not valid_host(host):
        raise SipParseError("Malformed Via sent-by")
    parsed = _split_params(params) if params else []
    if any(not is_token(name) for name, _ in parsed):
        raise SipParseError("Malformed Via parameter")
    return Via(transport=transport.upper(), host=host, port=port, params=parsed)


class Header:
    """One header line.

    `raw` is the line exactly as received (folding included); setting `name` or `value`
    drops it, so only untouched headers are re-emitted byte for byte.  Any change is
    reported to the owning `Headers`, which forgets decoded values.
    """

    __slots__ = ("_name", "_owner", "_raw", "_value", "key")

    def __init__(
        self, key: str, name: str, value: str, raw: str | None = None, owner: Headers | None = None
    ) -> None:
        self.key = key
        self._name = name
        self._value = value
        self._raw = raw
        # A weak reference: a strong one would make every parsed message a reference cycle
        # that only the cyclic GC frees (measured: GC pauses dropped UDP load at 2,000/s).
        self._owner: weakref.ReferenceType[Headers] | None = owner._ref if owner is not None else None

    def _notify(self) -> None:
        owner = self._owner() if self._owner is not None else None
        if owner is not None:
            owner._changed()

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        self._name = name
        self.key = header_key(name)
        self._raw = None
        self._notify()

    @property
    def value(self) -> str:
        return self._value

    @value.setter
    def value(self, value: str) -> None:
        self._value = value
        self._raw = None
        self._notify()

    @property
    def raw(self) -> str | None:
        return self._raw

    def line(self) -> str:
        return self._raw if self._raw is not None else f"{self._name}: {self._value}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Header):
            return NotImplemented
        return (self.key, self._name, self._value, self._raw) == (
            other.key, other._name, other._value, other._raw,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Header({self.key!r}, {self._name!r}, {self._value!r}, {self._raw!r})"


# Not a mypyc native class (scripts/build_native.py): Header points back to it weakly.
@mypyc_attr(native_class=False)
class Headers:
    """Ordered header list with case- and compact-form-insensitive lookup.

    Every mutation (here or through a `Header` setter) bumps `version` and clears the
    decoded-value cache, so lazy properties never go stale and the unchanged-message
    fast path of `to_bytes` knows when it no longer applies.
    """

    __slots__ = ("__weakref__", "_cache", "_items", "_ref", "version")

    def __init__(self, items: Iterable[Header] = ()) -> None:
        self._ref = weakref.ref(self)
        self._items: list[Header] = []
        self._items = [self._adopt(h) for h in items]
        self.version = 0
        self._cache: dict[str, object] = {}

    def _changed(self) -> None:
        self.version += 1
        # A new dict, not clear(): compiled by mypyc 1.20, clear() on this (non-native)
        # class's dict left every cached value alive (tests/registrar/test_no_leaks.py).
        self._cache = {}

    def _adopt(self, header: Header) -> Header:
        if header._owner is not None and header._owner is not self._ref:
            header = Header(header.key, header._name, header._value, header._raw)
        header._owner = self._ref
        return header

    def __iter__(self) -> Iterator[Header]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def first(self, name: str) -> Header | None:
        key = header_key(name)
        for h in self._items:
            if h.key == key:
                return h
        return None

    def get(self, name: str) -> str | None:
        key = header_key(name)
        for h in self._items:
            if h.key == key:
                return h._value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of `name`, list headers split at top-level commas."""
        key = header_key(name)
        values = [h._value for h in self._items if h.key == key]
        if key in LIST_HEADERS:
            return [item for v in values for item in split_list(v)]
        return values

    def count(self, name: str) -> int:
        key = header_key(name)
        n = 0
        for h in self._items:
            if h.key == key:
                n += 1
        return n

    def __contains__(self, name: str) -> bool:
        # Plain loops: these run several times per message, and a generator costs more.
        key = header_key(name)
        for h in self._items:  # noqa: SIM110 - faster than any() with a generator
            if h.key == key:
                return True
        return False

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Append (or, with `first`, prepend) a header; lower-case names are canonicalised."""
        key = header_key(name)
        header = Header(key, canonical_header_name(key) if name.islower() else name, value, None, self)
        if first:
            self._items.insert(0, header)
        else:
            self._items.append(header)
        self._changed()

    def append(self, header: Header) -> None:
        """Append a Header object (copied if another Headers owns it)."""
        self._items.append(self._adopt(header))
        self._changed()

    def set(self, name: str, value: str) -> None:
        """Replace every occurrence of `name` by one header at the first one's position."""
        key = header_key(name)
        for i, h in enumerate(self._items):
            if h.key == key:
                self._items[i] = Header(key, h._name if h._raw is None else canonical_header_name(key), value, None, self)
                self._items[i + 1 :] = [x for x in self._items[i + 1 :] if x.key != key]
                self._changed()
                return
        self.add(canonical_header_name(key), value)

    def remove(self, name: str) -> None:
        key = header_key(name)
        kept = [h for h in self._items if h.key != key]
        if len(kept) != len(self._items):
            self._items = kept
            self._changed()

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first value of a list header (e.g. the top Via)."""
        key = header_key(name)
        for i, h in enumerate(self._items):
            if h.key == key:
                values = split_list(h._value)
                if len(values) <= 1:
                    del self._items[i]
                    self._changed()
                    return values[0] if values else None
                self._items[i] = Header(key, h._name, ", ".join(values[1:]), None, self)
                self._changed()
                return values[0]
        return None

    def replace_first_value(self, name: str, value: str) -> None:
        """Replace the first value of a list header, keeping the others (e.g. stamp the top Via)."""
        key = header_key(name)
        for h in self._items:
            if h.key == key:
                values = split_list(h._value)
                h.value = ", ".join([value, *values[1:]])
                return
        self.add(canonical_header_name(key), value)

    def copy(self) -> Headers:
        return Headers(Header(h.key, h._name, h._value, h._raw) for h in self._items)


@dataclass(slots=True, init=False)
class CSeq:
    number: int
    method: str

    # An explicit __init__: mypyc compiles it (a dataclass-made one runs as Python).
    def __init__(self, number: int, method: str) -> None:
        self.number = number
        self.method = method

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(value: str) -> CSeq:
    """`1*DIGIT LWS Method`, the number below 2**32 (§20.16, RFC 4475 §3.1.2.4)."""
    m = _CSEQ_RE.fullmatch(value)
    if m is None or not is_token(m.group(2)):
        raise SipParseError("Malformed CSeq")
    digits = m.group(1)
    if len(digits) > 10 or int(digits) > _MAX_CSEQ:
        raise SipParseError("CSeq number out of range")
    return CSeq(int(digits), m.group(2))


# (original bytes, Headers they were parsed into, its version and length, body, start line);
# the length also catches code that edits `Headers._items` directly.
_Wire = tuple[bytes, Headers, int, int, bytes, str]


@dataclass(eq=False, init=False)
class Message:
    """Common part of requests and responses.

    Decoded header values (vias, cseq, from_, ...) are views: change a header through
    `headers` (or the helpers below), not by mutating the decoded object.
    """

    headers: Headers
    body: bytes
    # init=False: set by __init__ and the parser, never a constructor argument, so
    # dataclasses.replace() works on every message (it passes every init field).
    _wire: _Wire | None = field(init=False, repr=False)

    # An explicit __init__: mypyc compiles it (a dataclass-made one runs as Python).
    def __init__(self, headers: Headers | None = None, body: bytes = b"") -> None:
        self.headers = Headers() if headers is None else headers
        self.body = body
        self._wire = None

    # ---- lazily decoded headers -------------------------------------------------
    def invalidate(self) -> None:
        """Forget decoded values (they are also forgotten on every header change)."""
        self.headers._cache = {}  # not clear(): see Headers._changed

    @property
    def vias(self) -> list[Via]:
        cache = self.headers._cache
        cached = cache.get("via")
        if cached is None:
            cached = [parse_via(v) for v in self.headers.get_all("via")]
            cache["via"] = cached
        return cast(list[Via], cached)

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise SipParseError("Missing Via")
        return vias[0]

    @property
    def call_id(self) -> str:
        value = self.headers.get("call-id")
        if value is None:
            raise SipParseError("Missing Call-ID")
        return value.strip(" \t")

    @property
    def cseq(self) -> CSeq:
        cache = self.headers._cache
        cached = cache.get("cseq")
        if cached is None:
            value = self.headers.get("cseq")
            if value is None:
                raise SipParseError("Missing CSeq")
            cached = parse_cseq(value)
            cache["cseq"] = cached
        return cast(CSeq, cached)

    def _name_addr(self, key: str) -> NameAddr:
        cache = self.headers._cache
        cached = cache.get(key)
        if cached is None:
            value = self.headers.get(key)
            if value is None:
                raise SipParseError(f"Missing {canonical_header_name(key)}")
            cached = parse_name_addr(value)
            cache[key] = cached
        return cast(NameAddr, cached)

    @property
    def from_(self) -> NameAddr:
        return self._name_addr("from")

    @property
    def to(self) -> NameAddr:
        return self._name_addr("to")

    @property
    def contacts(self) -> list[NameAddr] | None:
        """Parsed Contact values (empty list when absent); None for `Contact: *`."""
        cache = self.headers._cache
        if "contact" not in cache:
            values = self.headers.get_all("contact")
            if "*" in values:
                if len(values) > 1:
                    raise SipParseError("Contact '*' mixed with other contacts")
                cache["contact"] = None
            else:
                cache["contact"] = [parse_name_addr(v) for v in values]
        return cast("list[NameAddr] | None", cache["contact"])

    @property
    def is_wildcard_contact(self) -> bool:
        """`Contact: *` (only meaningful in a REGISTER with Expires: 0, §10.2.2)."""
        return self.contacts is None

    def name_addrs(self, name: str) -> list[NameAddr]:
        """Route, Record-Route, Path and similar lists."""
        return [parse_name_addr(v) for v in self.headers.get_all(name)]

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("max-forwards")
        if value is None:
            return None
        hops = parse_digits(value, "Max-Forwards", 256)
        if hops > 255:
            raise SipParseError("Max-Forwards out of range")
        return hops

    @property
    def expires(self) -> int | None:
        """Expires header in seconds, capped at 2**32-1 (RFC 4475 §3.1.2.4)."""
        value = self.headers.get("expires")
        if value is None:
            return None
        return parse_digits(value, "Expires", 0xFFFFFFFF)

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return value.split(";", 1)[0].strip(" \t").lower() if value else None

    def option_tags(self, name: str) -> list[str]:
        return [t.lower() for t in self.headers.get_all(name)]

    # ---- modification helpers ------------------------------------------------------
    def push_via(self, via: Via | str) -> None:
        """Add a Via on top (a proxy forwarding a request, §16.6 step 8)."""
        self.headers.add("Via", str(via), first=True)

    def pop_via(self) -> Via | None:
        """Remove the top Via (a proxy forwarding a response, §16.7 step 3)."""
        value = self.headers.pop_first_value("via")
        return parse_via(value) if value is not None else None

    def set_top_via(self, via: Via) -> None:
        self.headers.replace_first_value("via", str(via))

    def stamp_via(self, source_host: str, source_port: int) -> Via:
        """Add `received`/`rport` to the top Via when needed (§18.2.1, RFC 3581 §4)."""
        via = self.top_via
        before = str(via)
        via.stamp(source_host, source_port)
        text = str(via)
        if text != before:
            self.headers.replace_first_value("via", text)
        return via

    def add_record_route(self, uri: SipUri | str) -> None:
        """Insert a Record-Route on top (§16.6 step 4); `uri` should carry `;lr`."""
        self.headers.add("Record-Route", f"<{uri}>", first=True)

    # ---- serialisation -----------------------------------------------------------
    def start_line(self) -> str:
        """Request-Line or Status-Line without CRLF (Request and Response define it)."""
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise; Content-Length always matches the body.

        An unmodified parsed message returns the exact bytes it was parsed from.
        """
        wire = self._wire
        if (
            wire is not None
            and wire[1] is self.headers
            and wire[2] == self.headers.version
            and wire[3] == len(self.headers._items)
            and wire[4] is self.body
            and wire[5] == self.start_line()
        ):
            return wire[0]
        return self._serialise()

    def _serialise(self) -> bytes:
        lines = [self.start_line()]
        has_length = False
        body_len = len(self.body)
        for h in self.headers._items:
            if h.key == "content-length":
                if has_length:
                    continue
                has_length = True
                if h._raw is not None and _declared_length(h._value) == body_len:
                    lines.append(h._raw)
                else:
                    lines.append(f"Content-Length: {body_len}")
                continue
            raw = h._raw
            lines.append(raw if raw is not None else f"{h._name}: {h._value}")
        if not has_length:
            lines.append(f"Content-Length: {body_len}")
        lines.append("\r\n")
        head = "\r\n".join(lines).encode("utf-8", "surrogateescape")
        body = self.body
        if not body:
            return head
        # Not `head + body`: compiled by mypyc <= 2.0, bytes + bytes leaks its left
        # operand, here every serialised message (tests/native_shapes.py).
        return b"".join((head, body))


def _declared_length(value: str) -> int:
    value = value.strip(" \t")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 20 else -1


@dataclass(eq=False, init=False)
class Request(Message):
    method: str
    uri_text: str
    version: str
    _ruri: tuple[str, SipUri] | None = field(init=False, repr=False)

    # An explicit __init__: mypyc compiles it (a dataclass-made one runs as Python).
    def __init__(
        self,
        method: str = "",
        uri_text: str = "",
        version: str = SUPPORTED_VERSION,
        headers: Headers | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri_text = uri_text
        self.version = version
        self._ruri = None

    @property
    def uri(self) -> SipUri:
        """Parsed Request-URI, re-parsed whenever `uri_text` changes."""
        cached = self._ruri
        if cached is None or cached[0] is not self.uri_text:
            cached = (self.uri_text, parse_uri(self.uri_text))
            self._ruri = cached
        return cached[1]

    def set_uri(self, uri: SipUri | str) -> None:
        self.uri_text = str(uri)

    def copy(self) -> Request:
        """An independent copy: its own headers (raw lines kept), same body and start line.

        Prefer it to `dataclasses.replace()`, which works (compiled too) but, being
        shallow, leaves both messages sharing one `Headers`.
        """
        return Request(self.method, self.uri_text, self.version, self.headers.copy(), self.body)

    def start_line(self) -> str:
        return f"{self.method} {self.uri_text} {self.version}"

    @property
    def is_request(self) -> bool:
        return True


@dataclass(eq=False, init=False)
class Response(Message):
    status: int
    reason: str
    version: str

    # An explicit __init__: mypyc compiles it (a dataclass-made one runs as Python).
    def __init__(
        self,
        status: int = 200,
        reason: str = "OK",
        version: str = SUPPORTED_VERSION,
        headers: Headers | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> Response:
        """An independent copy (see `Request.copy`)."""
        return Response(self.status, self.reason, self.version, self.headers.copy(), self.body)

    @property
    def is_request(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Limits:
    """Parser limits; each is answered with its own status code."""

    max_message_bytes: int = 65536  # 513 Message Too Large
    max_body_bytes: int = 65536  # 413 Request Entity Too Large
    max_headers: int = 128  # 400 Too Many Headers
    max_line_bytes: int = 8192  # 400 Header Line Too Long (characters after decoding)
    max_uri_bytes: int = 2048  # 414 Request-URI Too Long


DEFAULT_LIMITS = Limits()


def find_header_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    """Index of the blank line ending the header block and its length, or (-1, 0).

    CRLF CRLF is the norm; a bare LF LF (or CRLF LF) ending earlier wins, so LF-only
    senders are understood (be liberal in what you accept).
    """
    idx = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start, idx + 1 if idx >= 0 else len(data))
    if lf >= 0:
        if lf > start and data[lf - 1] == 13:
            return lf - 1, 3
        return lf, 2
    if idx >= 0:
        return idx, 4
    return -1, 0


# Raw header name (text before ':', trailing LWS included) -> (lookup key, name).
_NAME_CACHE: dict[str, tuple[str, str]] = {}
_NAME_CACHE_MAX = 1024


def _header_name(raw_name: str) -> tuple[str, str]:
    name = raw_name.rstrip(" \t")
    if not is_token(name):
        raise SipParseError("Malformed header name")
    key = name.lower()
    entry = (COMPACT_FORMS.get(key, key), name)
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[raw_name] = entry
    return entry


def parse_message(
    data: bytes,
    *,
    datagram: bool = True,
    limits: Limits = DEFAULT_LIMITS,
) -> Request | Response:
    """Parse one complete message.

    For datagrams the body is whatever follows the header block, cut to Content-Length
    (RFC 3261 §18.3: trailing octets are ignored, a shorter body than declared is an
    error).  For streams the caller frames by Content-Length first (see `StreamFramer`)
    and passes exactly one message.  Raises SipParseError carrying the status a server
    should answer with (a response that fails to parse is dropped, never answered).
    """
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) > limits.max_message_bytes:
        raise SipParseError("Message Too Large", 513)
    # RFC 3261 §7.5: ignore CRLFs before the start line.
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end, sep_len = find_header_end(data, start)
    if end < 0:
        head = data[start:].rstrip(b"\r\n").decode("utf-8", "surrogateescape")
        body_start = len(data)
    else:
        head = data[start:end].decode("utf-8", "surrogateescape")
        body_start = end + sep_len
    lines = head.split("\r\n")
    crlf = sep_len == 4 and head.count("\n") == len(lines) - 1
    if not crlf and "\n" in head:
        lines = head.replace("\r\n", "\n").split("\n")
    msg = _parse_start_line(lines[0], limits)
    hs = Headers()
    headers = hs._items
    append = headers.append
    max_line = limits.max_line_bytes
    name_cache = _NAME_CACHE
    length_header: Header | None = None
    prev: Header | None = None
    check_length = len(head) > max_line
    for line in lines[1:]:
        if check_length and len(line) > max_line:
            raise SipParseError("Header Line Too Long")
        if not line:
            continue
        if line[0] in " \t":
            if prev is None:
                raise SipParseError("Continuation line before any header")
            value = line.strip(" \t")
            if value:
                prev._value = f"{prev._value} {value}" if prev._value else value
            prev._raw = f"{prev._raw}\r\n{line}"
            continue
        raw_name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError("Malformed header line")
        entry = name_cache.get(raw_name)
        if entry is None:
            entry = _header_name(raw_name)
        prev = Header(entry[0], entry[1], value.strip(" \t"), line, hs)
        append(prev)
        if entry[0] == "content-length":
            if length_header is not None:
                raise SipParseError("Multiple Content-Length headers")
            length_header = prev
    if len(headers) > limits.max_headers:
        raise SipParseError("Too Many Headers")
    msg.headers = hs
    if length_header is not None:
        declared = _declared_length(length_header._value)
        if declared < 0:
            raise SipParseError("Malformed Content-Length")
        if declared > limits.max_body_bytes:
            raise SipParseError("Request Entity Too Large", 413)
        body_end = body_start + declared
        if body_end > len(data):
            raise SipParseError("Content-Length exceeds the message body")
        body = data[body_start:body_end]
        msg.body = body
        if crlf:
            wire = data if start == 0 and body_end == len(data) else data[start:body_end]
            msg._wire = (wire, hs, 0, len(headers), body, msg.start_line())
        return msg
    if not datagram:
        raise SipParseError("Missing Content-Length on a stream transport")
    body = data[body_start:]
    if len(body) > limits.max_body_bytes:
        raise SipParseError("Request Entity Too Large", 413)
    msg.body = body
    return msg


def _parse_start_line(first: str, limits: Limits) -> Request | Response:
    if first[:4].upper() == "SIP/":
        version, _, rest = first.partition(" ")
        code, _, reason = rest.partition(" ")
        if len(code) != 3 or not code.isascii() or not code.isdigit() or not 100 <= int(code) <= 699:
            raise SipParseError("Bad status code")
        if version.upper() != SUPPORTED_VERSION:
            if _VERSION_RE.fullmatch(version) is None:
                raise SipParseError("Malformed Status-Line")
            raise SipParseError("Version Not Supported", 505)
        return Response(status=int(code), reason=reason, version=version)
    parts = first.split(" ")
    if len(parts) != 3:
        if len(first) > limits.max_uri_bytes and len(parts) > 1 and len(parts[1]) > limits.max_uri_bytes:
            raise SipParseError("Request-URI Too Long", 414)
        raise SipParseError("Malformed Request-Line")
    method, uri_text, version = parts
    if not is_token(method):
        raise SipParseError("Malformed method")
    if len(uri_text) > limits.max_uri_bytes:
        raise SipParseError("Request-URI Too Long", 414)
    if not uri_text or "<" in uri_text or ">" in uri_text:
        raise SipParseError("Malformed Request-URI")
    if version.upper() != SUPPORTED_VERSION:
        if _VERSION_RE.fullmatch(version) is None:
            raise SipParseError("Malformed Request-Line version")
        raise SipParseError("Version Not Supported", 505)
    return Request(method=method, uri_text=uri_text, version=version)


def validate_request(req: Request) -> None:
    """Checks a server makes before a request reaches the transaction layer (§8.2, §16.3).

    The order puts the RFC 4475 "fault to name" first (e.g. the CSeq overflow of
    scalar02 before its Max-Forwards).
    """
    headers = req.headers
    for key in SINGLE_HEADERS:
        if headers.count(key) > 1:
            raise SipParseError(f"Multiple {canonical_header_name(key)} headers")
    for key in ("call-id", "from", "to", "cseq"):
        if key not in headers:
            raise SipParseError(f"Missing {canonical_header_name(key)}")
    if not req.vias:
        raise SipParseError("Missing Via")
    req.uri  # noqa: B018  (parse for syntax)
    req.from_  # noqa: B018
    req.to  # noqa: B018
    cseq = req.cseq
    if cseq.method != req.method:
        raise SipParseError("CSeq method does not match the Request-Line")
    req.max_forwards  # noqa: B018
    call_id = req.call_id
    if not call_id or " " in call_id or "\t" in call_id:
        raise SipParseError("Malformed Call-ID")
    req.contacts  # noqa: B018


def validate_response(resp: Response) -> None:
    """Checks before a response is matched to a client transaction and a dialog: what
    the user-agent layer reads of every response must parse."""
    if not resp.vias:
        raise SipParseError("Missing Via")
    resp.cseq  # noqa: B018
    resp.call_id  # noqa: B018
    resp.from_  # noqa: B018
    resp.to  # noqa: B018
    resp.contacts  # noqa: B018


class StreamFramer:
    """Splits a TCP/TLS byte stream into messages by Content-Length (RFC 3261 §18.3).

    Yields keep-alive CRLFs as the marker `b"\\r\\n\\r\\n"` pings (RFC 5626 §3.5.1) so the
    transport can answer with a single CRLF pong.  An unrecoverable framing error does
    not lose the messages framed before it: `feed` returns them and sets `error` (with
    `error_head`, the start of the offending bytes, for a stateless answer); the
    connection must then be closed and nothing more is framed.
    """

    PING: ClassVar[bytes] = b"\r\n\r\n"

    __slots__ = ("_buf", "_scanned", "error", "error_head", "limits")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._buf = bytearray()
        self._scanned = 0
        self.limits = limits
        self.error: SipParseError | None = None
        self.error_head = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the complete messages (or PING markers) framed so far."""
        out: list[bytes] = []
        if self.error is not None:
            return out
        buf = self._buf
        buf += data
        try:
            self._frame(buf, out)
        except SipParseError as exc:
            self.error = exc
            self.error_head = bytes(buf[:16384])
            self._buf = bytearray()
        return out

    def _frame(self, buf: bytearray, out: list[bytes]) -> None:
        limits = self.limits
        while buf:
            if buf[0] in (13, 10):
                if buf.startswith(self.PING):
                    del buf[:4]
                    out.append(self.PING)
                    continue
                if len(buf) < 4 and self.PING.startswith(buf):
                    break  # may still become a ping
                # Stray line ends between messages are ignored (§7.5).
                del buf[: 2 if buf.startswith(b"\r\n") else 1]
                continue
            # Resume the blank-line search a little before where the last one stopped.
            end, sep_len = find_header_end(buf, max(0, self._scanned - 3))
            if end < 0:
                self._scanned = len(buf)
                if len(buf) > limits.max_message_bytes:
                    raise SipParseError("Message Too Large", 513)
                break
            length = _stream_content_length(bytes(buf[:end]))
            if length > limits.max_body_bytes:
                raise SipParseError("Request Entity Too Large", 413)
            total = end + sep_len + length
            if total > limits.max_message_bytes:
                raise SipParseError("Message Too Large", 513)
            if len(buf) < total:
                self._scanned = end
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
            self._scanned = 0

    def finish(self) -> bytes | None:
        """The peer closed its sending side: a header block left without its final blank
        line (and announcing no body) is taken as the last message; else None."""
        buf = self._buf
        if self.error is not None or not buf.rstrip(b"\r\n") or find_header_end(buf, 0)[0] >= 0:
            return None
        head = b"".join((bytes(buf).rstrip(b"\r\n"), b"\r\n\r\n"))
        self._buf = bytearray()
        try:
            if _stream_content_length(head[:-4]) != 0:
                return None
        except SipParseError:
            return None
        return head

    @property
    def pending(self) -> int:
        return len(self._buf)


def _stream_content_length(head: bytes) -> int:
    """Content-Length from a raw header block; missing or malformed is a framing error."""
    found = -1
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        key = name.strip().lower()
        if key in (b"content-length", b"l"):
            text = value.strip()
            if not text.isdigit() or len(text) > 19:
                raise SipParseError("Malformed Content-Length")
            if found >= 0:
                raise SipParseError("Multiple Content-Length headers")
            found = int(text)
    if found < 0:
        raise SipParseError("Missing Content-Length on a stream transport")
    return found


REASON_PHRASES: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 301: "Moved Permanently",
    302: "Moved Temporarily", 380: "Alternative Service", 400: "Bad Request",
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 421: "Extension Required", 423: "Interval Too Brief",
    429: "Too Many Requests", 439: "First Hop Lacks Outbound Support",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    491: "Request Pending", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large", 600: "Busy Everywhere",
    603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}

_RESPONSE_COPIED = ("via", "from", "call-id", "cseq")


# Tags and branches must be unique, and at least 32 bits of them random (RFC 3261 §19.3):
# a random per-process prefix plus a counter is both, without a syscall per message.
_UNIQUE_PREFIX = secrets.token_hex(5)
_unique_counter = itertools.count(1)


def new_tag() -> str:
    return f"{_UNIQUE_PREFIX}{next(_unique_counter):x}"


def new_branch() -> str:
    return f"z9hG4bK{_UNIQUE_PREFIX}{next(_unique_counter):x}"


def make_response(
    req: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """Build a response per RFC 3261 §8.2.6: Via/From/Call-ID/CSeq copied, To tagged.

    The reason phrase loses any CR/LF, since it may name a parse fault."""
    phrase = reason or REASON_PHRASES.get(status, "Unknown")
    phrase = phrase.replace("\r", " ").replace("\n", " ")
    resp = Response(status=status, reason=phrase)
    out = resp.headers
    items = out._items
    for h in req.headers:
        if h.key in _RESPONSE_COPIED:
            items.append(Header(h.key, h._name, h._value, h._raw, out))
        elif h.key == "to":
            value = h._value
            if to_tag and status > 100 and ";tag=" not in value.replace(" ", "").lower():
                items.append(Header("to", h._name, f"{value};tag={to_tag}", None, out))
            else:
                items.append(Header(h.key, h._name, h._value, h._raw, out))
    if status == 100 and "timestamp" in req.headers:
        out.add("Timestamp", req.headers.get("timestamp") or "")
    for name, value in headers:
        out.add(name, value)
    resp.body = body
    return resp


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Split `Scheme k=v, k="v"` into the scheme and a lower-case-keyed dict."""
    scheme, _, rest = value.strip(" \t").partition(" ")
    params: dict[str, str] = {}
    for item in split_list(rest):
        name, _, val = item.partition("=")
        val = val.strip(" \t")
        if val.startswith('"') and val.endswith('"') and len(val) >= 2:
            val = val[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params[name.strip(" \t").lower()] = val
    return scheme, params


__all__ = [
    "DEFAULT_LIMITS",
    "REASON_PHRASES",
    "CSeq",
    "Header",
    "Headers",
    "Limits",
    "Message",
    "NameAddr",
    "Request",
    "Response",
    "SipParseError",
    "SipUri",
    "StreamFramer",
    "Via",
    "canonical_header_name",
    "find_header_end",
    "header_key",
    "make_response",
    "new_branch",
    "new_tag",
    "parse_auth_params",
    "parse_cseq",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "split_list",
    "validate_request",
    "validate_response",
]
