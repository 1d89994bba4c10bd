"""What a trace session asks for (`TraceFilter`) and the few facts of a raw message it is
matched against (`scan`).

`scan` reads the start line and a handful of headers straight from the bytes, without the
SIP parser: a trace must show malformed messages too, and it only runs while a session
or a HEP export is active.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

MAX_FILTER_CHARS = 256
_METHOD_RE = re.compile(r"[A-Za-z]{1,32}")
# The headers a filter looks at, long and compact names (RFC 3261 §7.3.3), at a line start.
_NAMES = (
    (b"\r\ncall-id:", "call-id"), (b"\r\ni:", "call-id"), (b"\r\nfrom:", "from"), (b"\r\nf:", "from"),
    (b"\r\nto:", "to"), (b"\r\nt:", "to"), (b"\r\ncseq:", "cseq"),
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(slots=True)
class MessageInfo:
    """The parts of one message a filter can select on."""

    request: bool
    method: str  # a request's method; a response's CSeq method
    call_id: str
    users: tuple[str, ...]  # user parts of the Request-URI, From and To
    first_line: str


def _uri_user(text: str) -> str | None:
    """`"Ana" <sip:6140@pbx>;tag=1` → `6140`; None without a user part."""
    lower = text.lower()
    start = lower.find("sip:")
    skip = 4
    secure = lower.find("sips:")
    if secure >= 0 and (start < 0 or secure < start):
        start, skip = secure, 5
    if start < 0:
        return None
    rest = text[start + skip :]
    at = rest.find("@")
    if at < 0:
        return None
    user = rest[:at]
    for stop in (">", ";", "?", " ", ","):
        if stop in user:
            return None  # the @ belongs to something after the URI
    return user.split(":", 1)[0] or None


def _header_values(head: bytes) -> dict[str, bytes]:
    """First value of each header of `_NAMES` (`head` starts at the CRLF ending the start line)."""
    lower = head.lower()
    if b" :" in lower or b"\t:" in lower:  # whitespace before the colon: rare, slow path
        lower = re.sub(rb"[ \t]+:", b":", lower)
        head = re.sub(rb"[ \t]+:", b":", head)
    found: dict[str, bytes] = {}
    for name, kind in _NAMES:
        if kind in found:
            continue
        start = lower.find(name)
        if start >= 0:
            start += len(name)
            stop = lower.find(b"\r\n", start)
            found[kind] = head[start : stop if stop >= 0 else len(head)].strip()
    return found


def scan(data: bytes) -> MessageInfo:
    data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    line_end = head.find(b"\r\n")
    first = (head if line_end < 0 else head[:line_end]).decode("utf-8", "replace")
    request = not first.startswith("SIP/")
    method = ""
    users: list[str] = []
    if request:
        parts = first.split(" ")
        method = parts[0].upper()
        if len(parts) > 1:
            user = _uri_user(parts[1])
            if user:
                users.append(user)
    values = _header_values(head[line_end:]) if line_end >= 0 else {}
    for kind in ("from", "to"):
        value = values.get(kind)
        if value is not None:
            user = _uri_user(value.decode("utf-8", "replace"))
            if user:
                users.append(user)
    call_id = values.get("call-id", b"").decode("utf-8", "replace")
    cseq_method = values.get("cseq", b"").rpartition(b" ")[2].decode("utf-8", "replace").upper()
    return MessageInfo(request, method or cseq_method, call_id, tuple(users), first)


@dataclass(frozen=True)
class TraceFilter:
    """Every given field must match (AND); an empty filter matches every message.

    `user`: the user part of the Request-URI, From or To (an extension or AOR user).
    `call_id`: the Call-ID, exactly.  `ip`: the remote address, or a network in CIDR
    form.  `method`: a request's method, or the CSeq method of a response (so
    `REGISTER` shows the REGISTERs and their answers).
    """

    user: str | None = None
    call_id: str | None = None
    ip: str | None = None
    method: str | None = None
    _network: Network | None = field(default=None, compare=False, repr=False)
    _hosts: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)
    _needles: tuple[bytes, ...] = field(default=(), compare=False, repr=False)  # exact bytes that must occur

    @classmethod
    def create(
        cls, *, user: str | None = None, call_id: str | None = None, ip: str | None = None, method: str | None = None
    ) -> TraceFilter:
        """A checked filter; ValueError names the bad field."""
        for name, value in (("user", user), ("call", call_id), ("ip", ip), ("method", method)):
            if value is not None and (not value or len(value) > MAX_FILTER_CHARS):
                raise ValueError(f"{name}: must be 1 to {MAX_FILTER_CHARS} characters")
        network = None
        if ip is not None:
            try:
                network = ipaddress.ip_network(ip.strip("[]"), strict=False)
            except ValueError:
                raise ValueError(f"ip: {ip!r} is not an IP address or network") from None
        if method is not None:
            if not _METHOD_RE.fullmatch(method):
                raise ValueError(f"method: {method!r} is not a SIP method")
            method = method.upper()
        needles = tuple(v.encode("utf-8", "replace") for v in (call_id, user) if v is not None)
        return cls(user, call_id, ip, method, network, {}, needles)

    @classmethod
    def from_dict(cls, data: dict[str, str | None]) -> TraceFilter:
        return cls.create(user=data.get("user"), call_id=data.get("call_id"), ip=data.get("ip"), method=data.get("method"))

    def to_dict(self) -> dict[str, str | None]:
        return {"user": self.user, "call_id": self.call_id, "ip": self.ip, "method": self.method}

    def may_match(self, data: bytes, remote_host: str) -> bool:
        """A cheap test on the raw bytes that only rules out: False means `matches` would
        be False too (the text a field must equal is not even in the message)."""
        if self._network is not None and not self._host_in_network(remote_host):
            return False
        for needle in self._needles:
            if needle not in data:
                return False
        return self.method is None or self.method.encode() in data.upper()

    def _host_in_network(self, host: str) -> bool:
        hit = self._hosts.get(host)
        if hit is None:
            try:
                address = ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                hit = False
            else:
                hit = self._network is not None and address.version == self._network.version and address in self._network
            if len(self._hosts) > 4096:
                self._hosts.clear()
            self._hosts[host] = hit
        return hit

    def matches(self, info: MessageInfo, remote_host: str) -> bool:
        if self.call_id is not None and info.call_id != self.call_id:
            return False
        if self.method is not None and info.method != self.method:
            return False
        if self.user is not None and self.user not in info.users:
            return False
        return self._network is None or self._host_in_network(remote_host)

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.to_dict().items() if v is not None]
        return " ".join(parts) if parts else "everything"
