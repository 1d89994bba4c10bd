"""SIP messages (RFC 3261 §7, §20, §25): parse, inspect lazily, modify and serialise.

A parsed message keeps every header line exactly as it arrived.  Only the headers a
decision needs are decoded, on first use, and cached; a header that nobody changes is
re-emitted byte for byte.  Bodies (SDP, multipart with NULs, anything) stay opaque bytes.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .errors import SipParseError
from .uri import NameAddr, SipUri, _read_quoted, _split_hostport, _split_params, parse_name_addr, parse_uri

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

# Headers that must appear at most once (RFC 4475 §3.4.1 multi01).
SINGLE_HEADERS = ("call-id", "cseq", "from", "to", "max-forwards", "content-length")

SUPPORTED_VERSION = "SIP/2.0"
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


def canonical_header_name(key: str) -> str:
    """Long form, capitalised, for headers we generate."""
    name = CANONICAL_NAMES.get(key)
    if name is None:
        name = "-".join(part.capitalize() for part in key.split("-"))
    return name


def header_key(name: str) -> str:
    """Lower-case long form used for lookups (`v` → `via`)."""
    key = name.lower()
    return COMPACT_FORMS.get(key, key)


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


def _is_token(text: str) -> bool:
    return bool(text) and all(c in _TOKEN_CHARS for c in text)


@dataclass(slots=True)
class Via:
    """One Via value."""

    transport: str
    host: str
    port: int | None
    params: list[tuple[str, str | None]]
    protocol: str = "SIP/2.0"

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
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        text = f"{self.protocol}/{self.transport} {self.sent_by}"
        return text + "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params)


def parse_via(value: str) -> Via:
    proto, _, rest = value.strip(" \t").partition("/")
    version, _, rest = rest.partition("/")
    transport, sep, rest = rest.strip(" \t").partition(" ")
    if not sep:
        # "SIP/2.0/UDP\thost" or folded whitespace
        transport, sep, rest = transport.partition("\t")
    if not sep or proto.strip(" \t").upper() != "SIP" or version.strip(" \t") != "2.0":
        raise SipParseError(f"malformed Via {value!r}")
    sent_by, _, params = rest.strip(" \t").partition(";")
    sent_by = sent_by.strip(" \t")
    if " " in sent_by or "\t" in sent_by:
        sent_by = sent_by.replace(" ", "").replace("\t", "")
    host, port = _split_hostport(sent_by)
    if not host:
        raise SipParseError("Via without sent-by host")
    return Via(transport=transport.strip(" \t").upper(), host=host, port=port, params=_split_params(params))


@dataclass(slots=True)
class Header:
    """A header line.  `raw` is the original text (folding included) until `value` changes."""

    key: str
    name: str
    value: str
    raw: str | None = None

    def line(self) -> str:
        return self.raw if self.raw is not None else f"{self.name}: {self.value}"


class Headers:
    """Ordered header list with case- and compact-form-insensitive lookup."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[Header] = ()) -> None:
        self._items: list[Header] = list(items)

    def __iter__(self) -> Iterator[Header]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str) -> str | None:
        key = header_key(name)
        for h in self._items:
            if h.key == key:
                return h.value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of `name`, list headers split at top-level commas."""
        key = header_key(name)
        values = [h.value for h in self._items if h.key == key]
        if key in LIST_HEADERS:
            return [item for v in values for item in split_list(v)]
        return values

    def count(self, name: str) -> int:
        key = header_key(name)
        return sum(1 for h in self._items if h.key == key)

    def __contains__(self, name: str) -> bool:
        key = header_key(name)
        return any(h.key == key for h in self._items)

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        key = header_key(name)
        header = Header(key, canonical_header_name(key) if name.islower() else name, value)
        if first:
            self._items.insert(0, header)
        else:
            self._items.append(header)

    def set(self, name: str, value: str) -> None:
        """Replace every occurrence of `name` by one header at the first one's position."""
        key = header_key(name)
        for i, h in enumerate(self._items):
            if h.key == key:
                self._items[i] = Header(key, h.name if h.raw is None else canonical_header_name(key), value)
                self._items[i + 1 :] = [x for x in self._items[i + 1 :] if x.key != key]
                return
        self.add(canonical_header_name(key), value)

    def remove(self, name: str) -> None:
        key = header_key(name)
        self._items = [h for h in self._items if h.key != key]

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first value of a list header (e.g. the top Via)."""
        key = header_key(name)
        for i, h in enumerate(self._items):
            if h.key == key:
                values = split_list(h.value)
                if len(values) <= 1:
                    del self._items[i]
                    return values[0] if values else None
                self._items[i] = Header(key, h.name, ", ".join(values[1:]))
                return values[0]
        return None

    def copy(self) -> Headers:
        return Headers(Header(h.key, h.name, h.value, h.raw) for h in self._items)


@dataclass(slots=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


@dataclass(eq=False)
class Message(ABC):
    """Common part of requests and responses."""

    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    _cache: dict[str, object] = field(default_factory=dict, repr=False)

    # ---- lazily decoded headers -------------------------------------------------
    def _cached(self, key: str) -> object:
        return self._cache.get(key, _MISSING)

    def invalidate(self) -> None:
        """Forget decoded values after headers were changed."""
        self._cache.clear()

    @property
    def vias(self) -> list[Via]:
        cached = self._cached("via")
        if cached is _MISSING:
            cached = [parse_via(v) for v in self.headers.get_all("via")]
            self._cache["via"] = cached
        return cached  # type: ignore[return-value]

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise SipParseError("missing Via")
        return vias[0]

    @property
    def call_id(self) -> str:
        value = self.headers.get("call-id")
        if value is None:
            raise SipParseError("missing Call-ID")
        return value.strip(" \t")

    @property
    def cseq(self) -> CSeq:
        cached = self._cached("cseq")
        if cached is _MISSING:
            value = self.headers.get("cseq")
            if value is None:
                raise SipParseError("missing CSeq")
            number, _, method = value.strip(" \t").partition(" ")
            method = method.strip(" \t")
            if not number.isdigit() or len(number) > 10 or int(number) > 0xFFFFFFFF:
                raise SipParseError("CSeq number out of range")
            if not _is_token(method):
                raise SipParseError("malformed CSeq method")
            cached = CSeq(int(number), method)
            self._cache["cseq"] = cached
        return cached  # type: ignore[return-value]

    def _name_addr(self, key: str) -> NameAddr:
        cached = self._cached(key)
        if cached is _MISSING:
            value = self.headers.get(key)
            if value is None:
                raise SipParseError(f"missing {canonical_header_name(key)}")
            cached = parse_name_addr(value)
            self._cache[key] = cached
        return cached  # type: ignore[return-value]

    @property
    def from_(self) -> NameAddr:
        return self._name_addr("from")

    @property
    def to(self) -> NameAddr:
        return self._name_addr("to")

    @property
    def contacts(self) -> list[NameAddr] | None:
        """Parsed Contact values; None for `Contact: *`."""
        cached = self._cached("contact")
        if cached is _MISSING:
            values = self.headers.get_all("contact")
            cached = None if values == ["*"] else [parse_name_addr(v) for v in values]
            if cached is not None and any(v == "*" for v in values):
                raise SipParseError("'*' mixed with other contacts")
            self._cache["contact"] = cached
        return cached  # type: ignore[return-value]

    def name_addrs(self, name: str) -> list[NameAddr]:
        """Route, Record-Route, Path and similar lists."""
        return [parse_name_addr(v) for v in self.headers.get_all(name)]

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("max-forwards")
        if value is None:
            return None
        value = value.strip(" \t")
        if not value.isdigit() or len(value) > 10 or int(value) > 255:
            raise SipParseError("malformed Max-Forwards")
        return int(value)

    @property
    def expires(self) -> int | None:
        value = self.headers.get("expires")
        if value is None:
            return None
        value = value.strip(" \t")
        if not value.isdigit():
            raise SipParseError("malformed Expires")
        return min(int(value), 0xFFFFFFFF)

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return value.split(";", 1)[0].strip(" \t").lower() if value else None

    def option_tags(self, name: str) -> list[str]:
        return [t.lower() for t in self.headers.get_all(name)]

    # ---- serialisation -----------------------------------------------------------
    @abstractmethod
    def start_line(self) -> str:
        """Request-Line or Status-Line without CRLF."""

    def to_bytes(self) -> bytes:
        """Serialise; Content-Length always matches the body."""
        lines = [self.start_line()]
        has_length = False
        for h in self.headers:
            if h.key == "content-length":
                if has_length:
                    continue
                has_length = True
                if h.raw is not None and _declared_length(h.value) == len(self.body):
                    lines.append(h.raw)
                else:
                    lines.append(f"Content-Length: {len(self.body)}")
                continue
            lines.append(h.raw if h.raw is not None else f"{h.name}: {h.value}")
        if not has_length:
            lines.append(f"Content-Length: {len(self.body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body


_MISSING = object()


def _declared_length(value: str) -> int:
    value = value.strip(" \t")
    return int(value) if value.isdigit() else -1


@dataclass(eq=False)
class Request(Message):
    method: str = ""
    uri_text: str = ""
    version: str = SUPPORTED_VERSION

    @property
    def uri(self) -> SipUri:
        cached = self._cached("ruri")
        if cached is _MISSING:
            cached = parse_uri(self.uri_text)
            self._cache["ruri"] = cached
        return cached  # type: ignore[return-value]

    def set_uri(self, uri: SipUri | str) -> None:
        self.uri_text = str(uri)
        self._cache.pop("ruri", None)

    def start_line(self) -> str:
        return f"{self.method} {self.uri_text} {self.version}"

    @property
    def is_request(self) -> bool:
        return True


@dataclass(eq=False)
class Response(Message):
    status: int = 200
    reason: str = "OK"
    version: str = SUPPORTED_VERSION

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    @property
    def is_request(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Limits:
    """Parser limits; each is answered with its own status code."""

    max_message_bytes: int = 65536  # 513 Message Too Large
    max_body_bytes: int = 65536  # 413 Request Entity Too Large
    max_headers: int = 128  # 400 Too Many Headers
    max_line_bytes: int = 8192  # 400 Header Line Too Long
    max_uri_bytes: int = 2048  # 414 Request-URI Too Long


DEFAULT_LIMITS = Limits()


def find_header_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    """Index of the blank line ending the header block and its length, or (-1, 0)."""
    idx = data.find(b"\r\n\r\n", start)
    if idx >= 0:
        return idx, 4
    idx = data.find(b"\n\n", start)
    if idx >= 0:
        return idx, 2
    return -1, 0


def parse_message(
    data: bytes,
    *,
    datagram: bool = True,
    limits: Limits = DEFAULT_LIMITS,
) -> Request | Response:
    """Parse one complete message.

    For datagrams the body is whatever follows the header block, cut to Content-Length
    (RFC 3261 §18.3; a shorter body than declared is an error).  For streams the caller
    frames by Content-Length first (see `StreamFramer`) and passes exactly one message.
    Raises SipParseError carrying the status a server should answer with.
    """
    if len(data) > limits.max_message_bytes:
        raise SipParseError("Message Too Large", 513)
    # RFC 3261 §7.5: ignore CRLFs before the start line.
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end, sep_len = find_header_end(data, start)
    if end < 0:
        head_bytes = data[start:].rstrip(b"\r\n")
        body = b""
    else:
        head_bytes = data[start:end]
        body = data[end + sep_len :]
    head = head_bytes.decode("utf-8", "surrogateescape")
    lines = head.split("\r\n") if "\r\n" in head else head.split("\n")
    first = lines[0]
    msg = _parse_start_line(first, limits)
    headers: list[Header] = []
    append = headers.append
    max_line = limits.max_line_bytes
    for line in lines[1:]:
        if len(line) > max_line:
            raise SipParseError("Header Line Too Long")
        if not line:
            continue
        if line[0] in " \t":
            if not headers:
                raise SipParseError("continuation line before any header")
            prev = headers[-1]
            prev.value = prev.value + " " + line.strip(" \t")
            prev.raw = f"{prev.raw}\r\n{line}"
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError(f"malformed header line {line[:40]!r}")
        name = name.rstrip(" \t")
        if not _is_token(name):
            raise SipParseError(f"malformed header name {name[:40]!r}")
        key = name.lower()
        key = COMPACT_FORMS.get(key, key)
        append(Header(key, name, value.strip(" \t"), line))
    if len(headers) > limits.max_headers:
        raise SipParseError("Too Many Headers")
    msg.headers = Headers(headers)
    length_values = [h.value for h in headers if h.key == "content-length"]
    if length_values:
        if len(length_values) > 1:
            raise SipParseError("multiple Content-Length headers")
        declared = _declared_length(length_values[0])
        if declared < 0:
            raise SipParseError("malformed Content-Length")
        if declared > limits.max_body_bytes:
            raise SipParseError("Request Entity Too Large", 413)
        if declared > len(body):
            raise SipParseError("Content-Length larger than the message body")
        body = body[:declared]
    elif not datagram:
        raise SipParseError("missing Content-Length on a stream transport")
    if len(body) > limits.max_body_bytes:
        raise SipParseError("Request Entity Too Large", 413)
    msg.body = bytes(body)
    return msg


def _parse_start_line(first: str, limits: Limits) -> Request | Response:
    if first.startswith("SIP/"):
        version, _, rest = first.partition(" ")
        code, _, reason = rest.partition(" ")
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise SipParseError(f"bad status code {code!r}")
        if version != SUPPORTED_VERSION:
            raise SipParseError("Version Not Supported", 505)
        return Response(status=int(code), reason=reason, version=version)
    parts = first.split(" ")
    if len(parts) != 3:
        raise SipParseError("malformed Request-Line")
    method, uri_text, version = parts
    if not _is_token(method):
        raise SipParseError("malformed method")
    if len(uri_text) > limits.max_uri_bytes:
        raise SipParseError("Request-URI Too Long", 414)
    if not uri_text or "<" in uri_text or ">" in uri_text:
        raise SipParseError("malformed Request-URI")
    if not version.startswith("SIP/"):
        raise SipParseError("malformed Request-Line version")
    if version != SUPPORTED_VERSION:
        raise SipParseError("Version Not Supported", 505)
    return Request(method=method, uri_text=uri_text, version=version)


def validate_request(req: Request) -> None:
    """Checks a server makes before a request reaches the transaction layer (RFC 3261 §8.2)."""
    for key in SINGLE_HEADERS:
        if req.headers.count(key) > 1 and not (key == "content-length"):
            raise SipParseError(f"multiple {canonical_header_name(key)} headers")
    for key in ("call-id", "from", "to", "cseq"):
        if key not in req.headers:
            raise SipParseError(f"missing {canonical_header_name(key)}")
    if not req.vias:
        raise SipParseError("missing Via")
    req.uri  # noqa: B018  (parse for syntax)
    req.from_  # noqa: B018
    req.to  # noqa: B018
    req.max_forwards  # noqa: B018
    cseq = req.cseq
    if cseq.method != req.method:
        raise SipParseError("CSeq method does not match the Request-Line")
    call_id = req.call_id
    if not call_id or any(c in call_id for c in " \t"):
        raise SipParseError("malformed Call-ID")


def validate_response(resp: Response) -> None:
    """Minimal checks before a response is matched to a client transaction."""
    if not resp.vias:
        raise SipParseError("missing Via")
    resp.cseq  # noqa: B018
    resp.call_id  # noqa: B018


class StreamFramer:
    """Splits a TCP/TLS byte stream into messages by Content-Length (RFC 3261 §18.3).

    Yields keep-alive CRLFs as the marker `b"\\r\\n\\r\\n"` pings (RFC 5626 §3.5.1) so the
    transport can answer with a single CRLF pong.
    """

    PING = b"\r\n\r\n"

    __slots__ = ("_buf", "limits")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._buf = bytearray()
        self.limits = limits

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return complete messages (or PING markers). Raises SipParseError on
        an unrecoverable framing error, after which the connection must be closed."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            if buf[:1] in (b"\r", b"\n"):
                if buf.startswith(b"\r\n\r\n"):
                    del buf[:4]
                    out.append(self.PING)
                    continue
                if buf.startswith(b"\r\n") and len(buf) > 2:
                    del buf[:2]
                    continue
                if buf.startswith(b"\n") or (buf.startswith(b"\r") and len(buf) > 1 and buf[1:2] != b"\n"):
                    del buf[:1]
                    continue
                break
            end, sep_len = find_header_end(buf)
            if end < 0:
                if len(buf) > self.limits.max_message_bytes:
                    raise SipParseError("Message Too Large", 513)
                break
            length = _stream_content_length(bytes(buf[:end]))
            if length > self.limits.max_body_bytes:
                raise SipParseError("Request Entity Too Large", 413)
            total = end + sep_len + length
            if total > self.limits.max_message_bytes:
                raise SipParseError("Message Too Large", 513)
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


def _stream_content_length(head: bytes) -> int:
    """Content-Length from a raw header block; missing or malformed is a framing error."""
    found = -1
    for line in head.split(b"\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        key = name.strip().lower()
        if key in (b"content-length", b"l"):
            text = value.strip()
            if not text.isdigit():
                raise SipParseError("malformed Content-Length")
            if found >= 0:
                raise SipParseError("multiple Content-Length headers")
            found = int(text)
    if found < 0:
        raise SipParseError("missing Content-Length on a stream transport")
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


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(10)


def make_response(
    req: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """Build a response per RFC 3261 §8.2.6: Via/From/Call-ID/CSeq copied, To tagged."""
    resp = Response(status=status, reason=reason or REASON_PHRASES.get(status, "Unknown"))
    out = resp.headers
    for h in req.headers:
        if h.key in _RESPONSE_COPIED:
            out._items.append(Header(h.key, h.name, h.value, h.raw))
        elif h.key == "to":
            value = h.value
            if to_tag and status > 100 and ";tag=" not in value.replace(" ", "").lower():
                value = f"{value};tag={to_tag}"
                out._items.append(Header("to", h.name, value))
            else:
                out._items.append(Header(h.key, h.name, h.value, h.raw))
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
    "CSeq",
    "DEFAULT_LIMITS",
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
    "header_key",
    "parse_message",
    "parse_via",
    "split_list",
    "validate_request",
    "validate_response",
]
