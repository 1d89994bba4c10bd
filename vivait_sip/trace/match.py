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
# Long and compact header names (RFC 3261 §7.3.3) of the headers a filter looks at.
_HEADERS = {"call-id": "call-id", "i": "call-id", "from": "from", "f": "from", "to": "to", "t": "to", "cseq": "cseq"}

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


def scan(data: bytes) -> MessageInfo:
    end = data.find(b"\r\n\r\n")
    head = (data if end < 0 else data[:end]).decode("utf-8", "replace")
    lines = head.lstrip("\r\n").split("\r\n")
    first = lines[0] if lines else ""
    request = not first.startswith("SIP/")
    method = ""
    users: list[str] = []
    if request:
        parts = first.split(" ")
        method = parts[0].upper() if parts else ""
        if len(parts) > 1:
            user = _uri_user(parts[1])
            if user:
                users.append(user)
    call_id = ""
    cseq_method = ""
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            continue
        which = _HEADERS.get(name.strip().lower())
        if which is None:
            continue
        value = value.strip()
        if which == "call-id":
            call_id = value
        elif which == "cseq":
            cseq_method = value.rpartition(" ")[2].upper()
        else:
            user = _uri_user(value)
            if user:
                users.append(user)
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
        return cls(user, call_id, ip, method, network)

    @classmethod
    def from_dict(cls, data: dict[str, str | None]) -> TraceFilter:
        return cls.create(user=data.get("user"), call_id=data.get("call_id"), ip=data.get("ip"), method=data.get("method"))

    def to_dict(self) -> dict[str, str | None]:
        return {"user": self.user, "call_id": self.call_id, "ip": self.ip, "method": self.method}

    def matches(self, info: MessageInfo, remote_host: str) -> bool:
        if self.call_id is not None and info.call_id != self.call_id:
            return False
        if self.method is not None and info.method != self.method:
            return False
        if self.user is not None and self.user not in info.users:
            return False
        if self._network is not None:
            try:
                address = ipaddress.ip_address(remote_host.strip("[]"))
            except ValueError:
                return False
            if address.version != self._network.version or address not in self._network:
                return False
        return True

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.to_dict().items() if v is not None]
        return " ".join(parts) if parts else "everything"
