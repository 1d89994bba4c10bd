"""SIP dialogs (RFC 3261 §12, §13.3.1.4, §14), sans-I/O.

A `Dialog` holds the state two UAs share after an INVITE (or SUBSCRIBE, REFER) succeeds or
gets an early response with a To tag, and builds the in-dialog requests.  Requests built
here carry no Via: the caller adds one with `transaction.push_via` (it knows the transport
and sent-by) and then hands them to `TransactionLayer.send_request`, or, for the ACK of a
2xx, to `TransactionLayer.send_stateless`, because that ACK is a transaction of its own
that nobody retransmits except in answer to a retransmitted 2xx.

`UasInviteResponder` is the UAS core's 2xx retransmission (§13.3.1.4): the INVITE server
transaction only forwards the 2xx once (RFC 6026), so the core keeps sending it until the
ACK arrives, and tells the TU to hang up (BYE) when it never does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from .message import Request, Response
from .peer import Peer
from .transaction import SendMessage, TimerConfig
from .uri import NameAddr, SipUri

#: Requests whose Contact replaces the remote target (RFC 3261 §12.2, RFC 3311, RFC 6665,
#: RFC 3515); they also carry our Contact.
TARGET_REFRESH_METHODS = frozenset(("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"))

DEFAULT_MAX_FORWARDS = 70


class DialogState(StrEnum):
    EARLY = "early"
    CONFIRMED = "confirmed"


@dataclass(frozen=True, slots=True)
class DialogId:
    call_id: str
    local_tag: str
    remote_tag: str


def _with_tag(party: NameAddr, tag: str) -> str:
    """From/To text carrying exactly the dialog's tag (none when the peer sent none)."""
    params = [(k, v) for k, v in party.params if k != "tag"]
    if tag:
        params.append(("tag", tag))
    return str(dataclasses.replace(party, params=params))


def _first_contact(msg: Request | Response) -> SipUri | None:
    contacts = msg.contacts
    return contacts[0].uri if contacts else None


@dataclass(eq=False, slots=True)
class Dialog:
    """Dialog state of §12.1; build it with `from_uac` or `from_uas`."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_party: NameAddr
    remote_party: NameAddr
    remote_target: SipUri
    route_set: list[NameAddr]
    local_seq: int | None
    remote_seq: int | None
    is_uac: bool
    secure: bool = False
    local_contact: str | None = None
    state: DialogState = DialogState.CONFIRMED

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    @property
    def local_uri(self) -> SipUri:
        return self.local_party.uri

    @property
    def remote_uri(self) -> SipUri:
        return self.remote_party.uri

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_uac(cls, request: Request, response: Response) -> Dialog:
        """Dialog from our request and a 101-299 response carrying a To tag (§12.1.2).

        A response without Contact (seen in some 18x) leaves the Request-URI as the remote
        target until a later response carries one."""
        if not 101 <= response.status <= 299:
            raise ValueError(f"a {response.status} response does not create a dialog")
        local_tag = request.from_.tag
        if not local_tag:
            raise ValueError("our request has no From tag")
        remote_tag = response.to.tag
        if remote_tag is None:
            raise ValueError("response without To tag does not create a dialog")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_party=request.from_,
            remote_party=response.to,
            remote_target=_first_contact(response) or request.uri,
            route_set=response.name_addrs("record-route")[::-1],
            local_seq=request.cseq.number,
            remote_seq=None,
            is_uac=True,
            secure=request.uri.scheme == "sips",
            local_contact=request.headers.get("contact"),
            state=DialogState.EARLY if response.status < 200 else DialogState.CONFIRMED,
        )

    @classmethod
    def from_uas(cls, request: Request, response: Response, *, tls: bool = False) -> Dialog:
        """Dialog from a received request and our 101-299 answer with a To tag (§12.1.1).

        `tls`: the request arrived over TLS; with a sips Request-URI the dialog is secure."""
        if not 101 <= response.status <= 299:
            raise ValueError(f"a {response.status} response does not create a dialog")
        local_tag = response.to.tag
        if not local_tag:
            raise ValueError("our response has no To tag")
        # RFC 2543 allowed an INVITE without Contact (RFC 4475 §3.3.13): its From URI is
        # the remote target then (in-dialog requests go to the dialog's peer anyway).
        remote_target = _first_contact(request) or request.from_.uri
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag or "",
            local_party=response.to,
            remote_party=request.from_,
            remote_target=remote_target,
            route_set=request.name_addrs("record-route"),
            local_seq=None,
            remote_seq=request.cseq.number,
            is_uac=False,
            secure=tls and request.uri.scheme == "sips",
            local_contact=response.headers.get("contact"),
            state=DialogState.EARLY if response.status < 200 else DialogState.CONFIRMED,
        )

    # ---- updates ------------------------------------------------------------------------
    def update_from_response(self, response: Response) -> None:
        """UAC: a 2xx to INVITE confirms an early dialog and fixes its route set
        (§13.2.2.4); a 1xx/2xx to a target refresh request moves the remote target
        (§12.2.1.2).  A 2xx to PRACK or UPDATE leaves an early dialog early (RFC 3311 §5.1)."""
        status = response.status
        if not 101 <= status <= 299:
            return
        if response.cseq.method in TARGET_REFRESH_METHODS:
            target = _first_contact(response)
            if target is not None:
                self.remote_target = target
        if status >= 200 and self.state is DialogState.EARLY and response.cseq.method == "INVITE":
            self.state = DialogState.CONFIRMED
            if self.is_uac:
                self.route_set = response.name_addrs("record-route")[::-1]

    def confirm(self) -> None:
        """UAS: our 2xx went out, the early dialog is confirmed."""
        self.state = DialogState.CONFIRMED

    def receive_request(self, request: Request) -> bool:
        """Check and absorb an in-dialog request (§12.2.2).

        False: the CSeq is lower than the last one seen; the TU answers 500.  ACK and CANCEL
        reuse the INVITE's number and are always accepted."""
        method = request.method
        if method == "ACK" or method == "CANCEL":
            return True
        number = request.cseq.number
        if self.remote_seq is not None and number < self.remote_seq:
            return False
        self.remote_seq = number
        if method in TARGET_REFRESH_METHODS:
            target = _first_contact(request)
            if target is not None:
                self.remote_target = target
        return True

    # ---- building requests ----------------------------------------------------------------
    def create_request(
        self, method: str, *, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> Request:
        """A new in-dialog request with the next local CSeq; Via left to the caller."""
        if method in ("ACK", "CANCEL"):
            raise ValueError(f"{method} is built with create_ack / transaction.build_cancel")
        self.local_seq = 1 if self.local_seq is None else self.local_seq + 1
        return self._build(method, self.local_seq, headers, body)

    def create_ack(
        self, two_xx: Response, *, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> Request:
        """ACK for a 2xx (§13.2.2.4): the INVITE's CSeq number, the dialog's route set.

        Pass the INVITE's Authorization/Proxy-Authorization in `headers` if it had them, and
        keep the result: a retransmitted 2xx is answered with the same ACK."""
        if not 200 <= two_xx.status <= 299 or two_xx.cseq.method != "INVITE":
            raise ValueError("create_ack is for 2xx responses to INVITE")
        return self._build("ACK", two_xx.cseq.number, headers, body)

    def _target_and_routes(self) -> tuple[str, list[str]]:
        """Request-URI and Route values (§12.2.1.1): loose routing, or the strict fallback."""
        routes = self.route_set
        if not routes:
            return str(self.remote_target), []
        first = routes[0].uri
        if first.has_param("lr"):
            return str(self.remote_target), [str(r) for r in routes]
        uri = dataclasses.replace(
            first, params=[(k, v) for k, v in first.params if k != "method"], headers=None
        )
        route_values = [str(r) for r in routes[1:]]
        route_values.append(f"<{self.remote_target}>")
        return str(uri), route_values

    def _build(
        self, method: str, seq: int, headers: Iterable[tuple[str, str]], body: bytes
    ) -> Request:
        uri_text, routes = self._target_and_routes()
        req = Request(method=method, uri_text=uri_text)
        h = req.headers
        for route in routes:
            h.add("Route", route)
        h.add("Max-Forwards", str(DEFAULT_MAX_FORWARDS))
        h.add("From", _with_tag(self.local_party, self.local_tag))
        h.add("To", _with_tag(self.remote_party, self.remote_tag))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{seq} {method}")
        if method in TARGET_REFRESH_METHODS and self.local_contact:
            h.add("Contact", self.local_contact)
        for name, value in headers:
            h.add(name, value)
        req.body = body
        return req


class DialogTableFull(RuntimeError):
    """`DialogRegistry.add` beyond `max_dialogs`; the TU rejects the call (503)."""


class DialogRegistry:
    """The TU's dialogs by id, bounded so a flood of calls cannot exhaust memory."""

    __slots__ = ("_dialogs", "max_dialogs")

    def __init__(self, max_dialogs: int = 100_000) -> None:
        self.max_dialogs = max_dialogs
        self._dialogs: dict[DialogId, Dialog] = {}

    def __len__(self) -> int:
        return len(self._dialogs)

    def __iter__(self) -> Iterator[Dialog]:
        return iter(list(self._dialogs.values()))

    def add(self, dialog: Dialog) -> None:
        key = dialog.id
        if key not in self._dialogs and len(self._dialogs) >= self.max_dialogs:
            raise DialogTableFull(f"{len(self._dialogs)} dialogs")
        self._dialogs[key] = dialog

    def get(self, dialog_id: DialogId) -> Dialog | None:
        return self._dialogs.get(dialog_id)

    def remove(self, dialog_id: DialogId) -> Dialog | None:
        return self._dialogs.pop(dialog_id, None)

    def match_request(self, request: Request) -> Dialog | None:
        """The dialog an incoming request belongs to: our tag is in To, theirs in From."""
        local_tag = request.to.tag
        if not local_tag:
            return None
        return self._dialogs.get(DialogId(request.call_id, local_tag, request.from_.tag or ""))

    def match_response(self, response: Response) -> Dialog | None:
        """The dialog a response to our request belongs to (forks differ in the To tag)."""
        local_tag = response.from_.tag
        if not local_tag:
            return None
        return self._dialogs.get(DialogId(response.call_id, local_tag, response.to.tag or ""))


class UasInviteResponder:
    """Retransmits a 2xx to INVITE at T1, 2T1, ... capped at T2 until the ACK arrives
    (§13.3.1.4); after 64*T1 without ACK `timed_out` is set and the TU sends BYE.

    It retransmits on reliable transports too: the 2xx crosses proxies end to end and a
    later hop may be UDP."""

    __slots__ = (
        "_data",
        "_give_up_at",
        "_interval",
        "_next_at",
        "_t2",
        "acked",
        "cseq",
        "peer",
        "timed_out",
    )

    def __init__(
        self, response: Response, peer: Peer, now: float, config: TimerConfig | None = None
    ) -> None:
        config = config or TimerConfig()
        self._data = response.to_bytes()
        self.peer = peer
        self.cseq = response.cseq.number
        self._t2 = config.t2
        self._interval = config.t1
        self._next_at = now + config.t1
        self._give_up_at = now + config.timeout
        self.acked = False
        self.timed_out = False

    @property
    def done(self) -> bool:
        return self.acked or self.timed_out

    def receive_ack(self, ack: Request) -> bool:
        """Stop on the ACK for this 2xx (same CSeq number); True if it was that ACK."""
        if self.done or ack.method != "ACK" or ack.cseq.number != self.cseq:
            return False
        self.acked = True
        return True

    def next_deadline(self) -> float | None:
        return None if self.done else min(self._next_at, self._give_up_at)

    def handle_timer(self, now: float) -> list[SendMessage]:
        """Whatever is due at `now`: a retransmission, or giving up."""
        if self.done:
            return []
        if now >= self._give_up_at:
            self.timed_out = True
            return []
        if now < self._next_at:
            return []
        self._interval = min(2 * self._interval, self._t2)
        self._next_at = now + self._interval
        return [SendMessage(self._data, self.peer)]


__all__ = [
    "DEFAULT_MAX_FORWARDS",
    "TARGET_REFRESH_METHODS",
    "Dialog",
    "DialogId",
    "DialogRegistry",
    "DialogState",
    "DialogTableFull",
    "UasInviteResponder",
]
