"""The SIP user-agent layer (RFC 3261 §8, §12-15, RFC 3262, 3311, 4028), sans-I/O.

`UserAgent` sits on the transaction layer and is what a B2BUA, an OPTIONS pinger, trunk
registration or a WebRTC bridge drive.  Like aioquic's `QuicConnection` it is a pure state
machine: no sockets, no asyncio, no clock reads (every input takes `now`), no logging.

* inputs: `receive`, `handle_timer`, `transport_failed`, and the TU's calls (`respond`,
  `send_request`, `send_in_dialog`, `cancel`, `ack`, `bye`);
* outputs: `messages_to_send()` (bytes + destination), `next_event()` (small frozen
  events carrying ids and message data, never live objects, so they can cross processes),
  `get_timer()` (when `handle_timer` is due).

The adapter loop is "process, then transmit": feed one input, send everything
`messages_to_send()` returns (reporting failed sends with `transport_failed`), hand every
event to its owner (who may call back in), transmit again, re-arm one timer.  Nothing here
calls the TU, so nothing re-enters.  docs/ua.md has the events and each behaviour with its
RFC section.

What the UA does by itself, so that features never have to: 481 for requests matching no
dialog, 405/501 for methods nobody handles, 500 for CSeq out of order, 491/500 on re-INVITE
glare, 200+487 on CANCEL, 200 on BYE, 422 on a too small Session-Expires, 503 when the
dialog table is full; 2xx retransmission until the ACK and BYE when it never comes; an ACK
for every 2xx (re-sent for retransmissions, also after Timer M); PRACK both ways; digest
retry on 401/407; RFC 3263 failover to the next destination; Timer C; session refresh and
expiry.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from .auth import Challenge, Credentials, authorization, best_challenges
from .dialog import TARGET_REFRESH_METHODS, Dialog, DialogId, DialogState, UasInviteResponder
from .message import Request, Response, header_key, make_response, new_tag
from .peer import Peer
from .transaction import AckReceived as TxAckReceived
from .transaction import (
    CancelReceived,
    ClientTransaction,
    Overloaded,
    ServerTransaction,
    StrayResponse,
    TimerConfig,
    Transaction,
    TransactionLayer,
    TransactionTableFull,
    TransactionTerminated,
    TransactionTimeout,
    TransportError,
    build_cancel,
    push_via,
)
from .transaction import RequestReceived as TxRequestReceived
from .transaction import ResponseReceived as TxResponseReceived
from .transaction import SendMessage as SendMessage
from .uri import SipUri, parse_name_addr

HeaderList = Iterable[tuple[str, str]]

#: What our INVITEs and 2xx advertise (RFC 3262, RFC 4028).
SUPPORTED = "100rel, timer"
#: Methods the UA itself handles inside dialogs; they are in every Allow we send.
DIALOG_METHODS = ("ACK", "BYE", "CANCEL", "INVITE", "PRACK", "UPDATE")
#: Methods that only make sense inside a dialog: without a To tag and a handler → 481.
_DIALOG_ONLY = frozenset(("BYE", "PRACK", "UPDATE"))
#: Methods we know (405 with Allow when nobody handles them; anything else gets 501).
KNOWN_METHODS = frozenset(
    (*DIALOG_METHODS, "OPTIONS", "REGISTER", "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "INFO", "PUBLISH")
)
#: Responses to an in-dialog request that end the dialog (RFC 5057 §5.1).
_ENDS_DIALOG = frozenset((404, 408, 410, 416, 481, 482, 483, 484, 485, 502, 604))
#: Methods of a subscription usage sharing an INVITE dialog (RFC 3515 §2.4.4: the implicit
#: subscription of a REFER): a 481 to one of them ends that usage only (RFC 5057 §5.1),
#: never the call.
_USAGE_METHODS = frozenset(("NOTIFY", "SUBSCRIBE", "REFER"))
#: Out-of-dialog requests that get our Contact when the TU gives none.
_CONTACT_METHODS = frozenset(("INVITE", "SUBSCRIBE", "REFER"))
TIMER_C_REASON = "Request Timeout (Timer C)"
OVERLOADED_REASON = "Service Unavailable (overloaded)"
"""Shed load: the loop lags or the transaction table is full (a trace tells it from mdflow's)."""
TOO_MANY_DIALOGS_REASON = "Service Unavailable (too many dialogs)"
#: RFC 4028 §4: no session interval may be shorter than this.
MIN_SE_FLOOR = 90

# _Client.kind: who sees the outcome.
_TU = 0  # the TU's own request: every outcome is reported
_PRACK = 1  # automatic PRACK: its outcome matters to nobody (a 481 only means that no
#             reliable provisional was pending any more, RFC 3262 §3)
_BYE = 2  # our BYE: its end ends the dialog
_REFRESH = 3  # session refresh: reported only through DialogEnded when it fails
_INTERNAL_BYE = 4  # BYE the UA sends after DialogEnded was already reported

# _Client.cancel
_NO_CANCEL = 0
_CANCEL_HELD = 1  # wanted, waiting for a provisional response (RFC 3261 §9.1)
_CANCEL_SENT = 2


# ---- errors -----------------------------------------------------------------------------


@mypyc_attr(native_class=False)  # mypyc cannot subclass Exception natively
class UaError(Exception):
    """The TU asked for something the UA's state does not allow."""


@mypyc_attr(native_class=False)
class UnknownDialog(UaError):
    """No such dialog, or it is ending."""


@mypyc_attr(native_class=False)
class RequestPending(UaError):
    """A re-INVITE (or UPDATE) is already in progress in this dialog (RFC 3261 §14.1)."""


@mypyc_attr(native_class=False)
class UaOverloaded(UaError):
    """The transaction or dialog table is full; fail the call upstream (503)."""


# ---- configuration and events -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionTimerConfig:
    """RFC 4028: the interval we ask for (or grant when the peer supports `timer`) and
    the smallest we accept (smaller requests get 422)."""

    expires: int = 1800
    min_se: int = MIN_SE_FLOOR

    def __post_init__(self) -> None:
        if self.min_se < MIN_SE_FLOOR or self.expires < self.min_se:
            raise ValueError(f"session timers need {MIN_SE_FLOOR} <= min_se <= expires")


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A request for the TU: out of dialog (routed by method, `dialog_id` None) or in a
    dialog (routed to its owner).  Answer with `respond(request_id, ...)`; a PRACK is
    already answered (it is reported for its body)."""

    owner: str
    request_id: int
    dialog_id: int | None
    request: Request
    peer: Peer


@dataclass(frozen=True, slots=True)
class AckReceived:
    """The ACK for our 2xx to INVITE `request_id`; its body may be a late SDP answer."""

    owner: str
    dialog_id: int
    request_id: int
    request: Request


@dataclass(frozen=True, slots=True)
class RequestCancelled:
    """The UA finished pending request `request_id` itself; do not answer it.  `reason`:
    "cancel" (a CANCEL: answered 200, the INVITE 487), "bye" (BYE on its early dialog),
    "prack_timeout" (our reliable provisional was never PRACKed: 500), "transport_error",
    or why its dialog ended."""

    owner: str
    request_id: int
    request: Request | None
    reason: str


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response to our request: provisionals (not 100), the final, and each forked 2xx
    with its own `dialog_id`.  Retransmissions and challenges the UA answered are not
    reported."""

    owner: str
    request_id: int
    dialog_id: int | None
    response: Response


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """No usable final response: 408 (Timer B/F, Timer C, no answer to our CANCEL), 503
    (every destination failed at transport level), 487 (a 2xx raced our CANCEL; the UA
    ACKed and hung it up)."""

    owner: str
    request_id: int
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class DialogEnded:
    """Dialog `dialog_id` is gone.  `reason`: "bye" (BYE received, `request` is it),
    "bye_sent" (our BYE completed), "ack_timeout", "session_expired", "cancel",
    "rejected" (its INVITE got a non-2xx final), "early_timeout" (a fork that never
    answered), "prack_timeout", "transport_error", or the status that ended it ("481",
    "408", ..., RFC 5057)."""

    owner: str
    dialog_id: int
    reason: str
    request: Request | None


UaEvent = RequestReceived | AckReceived | RequestCancelled | ResponseReceived | RequestFailed | DialogEnded


@dataclass(frozen=True, slots=True)
class DialogInfo:
    """A read-only snapshot of one dialog (`UserAgent.dialog`)."""

    dialog_id: int
    owner: str
    call_id: str
    local_tag: str
    remote_tag: str
    state: str  # "early", "confirmed" or "terminating"
    is_uac: bool
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: tuple[str, ...]
    peer: Peer
    session_expires: int | None
    we_refresh: bool
    local_sdp: bytes = b""  # the last session description we sent in the dialog


# ---- internal records -------------------------------------------------------------------


class _Timer:
    """One UA timer; cancelling marks it inactive (lazy deletion from the heap)."""

    __slots__ = ("action", "active", "when")

    def __init__(self, when: float, action: Callable[[float], None]) -> None:
        self.when = when
        self.action = action
        self.active = True


class _Reliable:
    """A reliable provisional response waiting for its PRACK (RFC 3262 §3)."""

    __slots__ = ("data", "give_up_at", "interval", "rseq", "timer")

    def __init__(self, data: bytes, rseq: int, interval: float, give_up_at: float) -> None:
        self.data = data
        self.rseq = rseq
        self.interval = interval
        self.give_up_at = give_up_at
        self.timer: _Timer | None = None


class _Awaiting:
    """Our 2xx to INVITE `request_id`, retransmitted until its ACK (RFC 3261 §13.3.1.4)."""

    __slots__ = ("request_id", "responder", "timer")

    def __init__(self, request_id: int, responder: UasInviteResponder) -> None:
        self.request_id = request_id
        self.responder = responder
        self.timer: _Timer | None = None


class _Server:
    """A received request the TU (or the UA) still has to answer."""

    __slots__ = (
        "counted",
        "dialog",
        "initial",
        "next_rseq",
        "owner",
        "peer",
        "queued",
        "reliable",
        "request",
        "request_id",
        "to_tag",
        "tx",
    )

    def __init__(
        self,
        request_id: int,
        owner: str,
        tx: ServerTransaction,
        request: Request,
        peer: Peer,
        dialog: _Dialog | None,
        to_tag: str | None,
    ) -> None:
        self.request_id = request_id
        self.owner = owner
        self.tx = tx
        self.request = request
        self.peer = peer
        self.dialog = dialog
        self.to_tag = to_tag
        self.initial = False  # a dialog-creating INVITE
        self.counted = False  # counts against max_dialogs until it has a dialog or a final
        self.reliable: _Reliable | None = None
        self.queued: list[tuple[int, str | None, list[tuple[str, str]], bytes]] = []
        self.next_rseq = 0  # RFC 3262 §7.1: random, drawn at the first reliable provisional


class _Dialog:
    """A dialog with everything the UA keeps for it around dialog.py's `Dialog`."""

    __slots__ = (
        "ack_auth",
        "ack_cseq",
        "ack_data",
        "ack_due",
        "announced",
        "awaiting",
        "bye_waiting",
        "credentials",
        "dialog",
        "ended",
        "ending",
        "expiry_timer",
        "id",
        "in_invite",
        "in_update",
        "incoming",
        "is_uac",
        "key",
        "out_invite",
        "out_update",
        "owner",
        "peer",
        "peer_allows_update",
        "prev_ack",
        "refresh_timer",
        "sdp",
        "sdp_type",
        "session_interval",
        "uas_invite",
        "we_refresh",
    )

    def __init__(self, dialog_id: int, owner: str, dialog: Dialog, peer: Peer) -> None:
        self.id = dialog_id
        self.owner = owner
        self.dialog = dialog
        self.key = dialog.id
        self.peer = peer
        self.is_uac = dialog.is_uac
        self.announced = False  # the TU has seen the id: it gets a DialogEnded
        self.ending = False  # our BYE is sent or waits for the ACK
        self.ended = False
        self.bye_waiting: list[tuple[str, str]] | None = None
        self.credentials: Credentials | None = None
        self.uas_invite: _Server | None = None  # the pending INVITE of an early UAS dialog
        self.incoming: dict[int, _Server] = {}
        self.in_invite: _Server | None = None
        self.in_update: _Server | None = None
        self.out_invite: _Client | None = None
        self.out_update: _Client | None = None
        # Our 2xx waiting for their ACK; two when a re-INVITE came before the first ACK.
        self.awaiting: list[_Awaiting] = []
        # The ACK of the last 2xx we got (its CSeq number) and the one before, re-sent
        # when a 2xx is retransmitted.
        self.ack_cseq = -1
        self.ack_data: bytes | None = None
        self.prev_ack: tuple[int, bytes] | None = None
        self.ack_due: Response | None = None  # auto_ack=False: the 2xx the TU must ACK
        self.ack_auth: list[tuple[str, str]] = []
        self.session_interval: int | None = None
        self.we_refresh = False
        self.refresh_timer: _Timer | None = None
        self.expiry_timer: _Timer | None = None
        self.peer_allows_update = False
        self.sdp = b""
        self.sdp_type = "application/sdp"


class _Auth:
    """A challenge we answer on every (re)send of a request, with its nonce count."""

    __slots__ = ("challenge", "header", "nc")

    def __init__(self, header: str, challenge: Challenge) -> None:
        self.header = header
        self.challenge = challenge
        self.nc = 1


class _Client:
    """A request we sent, across its retries (digest, 422, failover) under one id."""

    __slots__ = (
        "auth",
        "auto_ack",
        "body",
        "call_id",
        "cancel",
        "cancel_by_tu",
        "cancel_reason",
        "cancel_timer",
        "credentials",
        "cseq",
        "dest_index",
        "destinations",
        "dialog",
        "early",
        "final",
        "from_",
        "headers",
        "kind",
        "live",
        "method",
        "min_se",
        "nonces",
        "owner",
        "provisional",
        "realms",
        "refresher",
        "request_id",
        "retried_422",
        "rseqs",
        "session_expires",
        "timer_c",
        "to",
        "tx",
        "uri",
    )

    def __init__(
        self,
        request_id: int,
        owner: str,
        kind: int,
        method: str,
        headers: list[tuple[str, str]],
        body: bytes,
        dialog: _Dialog | None,
    ) -> None:
        self.request_id = request_id
        self.owner = owner
        self.kind = kind
        self.method = method
        self.headers = headers
        self.body = body
        self.dialog = dialog
        self.uri = ""
        self.from_ = ""
        self.to = ""
        self.call_id = ""
        self.cseq = 1
        self.destinations: list[Peer] = []
        self.dest_index = 0
        self.credentials: Credentials | None = dialog.credentials if dialog is not None else None
        self.auth: list[_Auth] = []
        self.nonces: set[str] = set()
        self.realms: set[str] = set()
        self.auto_ack = True
        self.session_expires: int | None = None
        self.min_se: int | None = None
        self.refresher: str | None = None
        self.retried_422 = False
        self.tx: ClientTransaction | None = None
        self.live = 0  # our transactions still in the layer (the request's, CANCEL's)
        self.provisional = False  # the current transaction got a provisional response
        self.final = False  # the outcome is settled (reported, for the TU's requests)
        self.cancel = _NO_CANCEL
        self.cancel_by_tu = False
        self.cancel_reason: str | None = None
        self.timer_c: _Timer | None = None
        self.cancel_timer: _Timer | None = None
        self.early: dict[str, _Dialog] = {}  # INVITE: its dialogs by To tag (forks)
        self.rseqs: dict[str, int] = {}  # INVITE: last reliable provisional RSeq by To tag


# ---- small helpers ----------------------------------------------------------------------


def _has(headers: Sequence[tuple[str, str]], key: str) -> bool:
    return any(header_key(name) == key for name, _ in headers)


def _int(text: str | None) -> int | None:
    """A non-negative decimal that fits 32 bits, else None."""
    if text is None:
        return None
    text = text.strip(" \t")
    if not text or not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    return int(text)


def _session_expires(msg: Request | Response) -> tuple[int, str | None] | None:
    """Session-Expires delta and refresher ("uac"/"uas"/None), RFC 4028 §4."""
    value = msg.headers.get("session-expires")
    if value is None:
        return None
    head, _, params = value.partition(";")
    interval = _int(head)
    if interval is None:
        return None
    refresher: str | None = None
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name.strip(" \t").lower() == "refresher":
            refresher = val.strip(" \t").lower()
    return interval, refresher


def _min_se(msg: Request | Response) -> int | None:
    value = msg.headers.get("min-se")
    return None if value is None else _int(value.partition(";")[0])


def _rack(value: str | None) -> tuple[int, int, str] | None:
    """RAck: `response-num CSeq-num method` (RFC 3262 §7.2)."""
    if value is None:
        return None
    parts = value.split()
    if len(parts) != 3:
        return None
    rseq = _int(parts[0])
    cseq = _int(parts[1])
    if rseq is None or cseq is None:
        return None
    return rseq, cseq, parts[2]


def _allows_update(msg: Request | Response) -> bool:
    return any(m.upper() == "UPDATE" for m in msg.headers.get_all("allow"))


def _is_sdp(headers: Sequence[tuple[str, str]], body: bytes) -> str | None:
    """The content type of a session description we send, None when it is not one."""
    if not body:
        return None
    for name, value in headers:
        if header_key(name) == "content-type":
            ctype = value.strip(" \t")
            return ctype if ctype.split(";", 1)[0].strip(" \t").lower() == "application/sdp" else None
    return "application/sdp"


def _reliable_provisional(resp: Response) -> bool:
    return "100rel" in resp.option_tags("require") and "rseq" in resp.headers


class UserAgent:
    """Transactions, dialogs and the UA core of RFC 3261 for every feature; see module doc."""

    __slots__ = (
        "_allow",
        "_by_key",
        "_client_tx",
        "_clients",
        "_dialogs",
        "_events",
        "_handlers",
        "_heap",
        "_ids",
        "_live_timers",
        "_local",
        "_new_invites",
        "_seq",
        "_server_tx",
        "_servers",
        "_tl",
        "config",
        "max_dialogs",
        "overload_rejections",
        "retry_after",
        "session_timer",
        "timer_c",
        "user_agent",
    )

    def __init__(
        self,
        *,
        timers: TimerConfig = TimerConfig(),  # noqa: B008 - frozen, shared safely
        local: Callable[[Peer], tuple[str, int]],
        user_agent: str | None = "vivait-sip",
        max_transactions: int = 100_000,
        max_completed_transactions: int = 50_000,
        max_dialogs: int = 100_000,
        timer_c: float = 180.0,
        session_timer: SessionTimerConfig | None = None,
        retry_after_s: int = 5,
    ) -> None:
        self.config = timers
        self.retry_after = str(retry_after_s)
        self.overload_rejections = 0  # new requests refused with 503 (table full, shedding)
        self._tl = TransactionLayer(
            timers, max_transactions=max_transactions, max_lingering=max_completed_transactions
        )
        self._local = local
        self.user_agent = user_agent
        self.max_dialogs = max_dialogs
        self.timer_c = timer_c
        self.session_timer = session_timer
        self._handlers: dict[str, str] = {}
        self._allow = ", ".join(DIALOG_METHODS)
        self._events: deque[UaEvent] = deque()
        self._servers: dict[int, _Server] = {}
        self._server_tx: dict[int, _Server] = {}
        self._clients: dict[int, _Client] = {}
        self._client_tx: dict[int, _Client] = {}
        self._dialogs: dict[int, _Dialog] = {}
        self._by_key: dict[DialogId, _Dialog] = {}
        self._new_invites = 0  # incoming INVITEs without dialog or final yet
        self._heap: list[tuple[float, int, _Timer]] = []
        self._live_timers = 0
        self._ids = itertools.count(1)
        self._seq = itertools.count()

    # ---- outputs ------------------------------------------------------------------------
    def messages_to_send(self) -> list[SendMessage]:
        """Drain the bytes to send, oldest first; report failures with `transport_failed`."""
        return self._tl.messages_to_send()

    def next_event(self) -> UaEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When `handle_timer` is next due; None when nothing is pending."""
        heap = self._heap
        while heap and not heap[0][2].active:
            heapq.heappop(heap)
        mine = heap[0][0] if heap else None
        theirs = self._tl.next_deadline()
        if mine is None:
            return theirs
        if theirs is None or mine < theirs:
            return mine
        return theirs

    # ---- inputs -------------------------------------------------------------------------
    def receive(self, msg: Request | Response, peer: Peer, now: float) -> None:
        """A parsed, validated message; for requests the Via is stamped and `peer` is where
        responses go (RFC 3261 §18.2.2, RFC 3581)."""
        if isinstance(msg, Request):
            self._tl.receive_request(msg, peer, now)
        else:
            self._tl.receive_response(msg, peer, now)
        self._pump(now)

    def handle_timer(self, now: float) -> None:
        """Fire everything due at `now` (transaction timers, then the UA's own)."""
        self._tl.handle_timers(now)
        self._pump(now)
        # Re-read the heap each time: an action may rebuild it (`_cancel_timer`).
        while self._heap and self._heap[0][0] <= now:
            timer = heapq.heappop(self._heap)[2]
            if timer.active:
                timer.active = False
                self._live_timers -= 1
                timer.action(now)
                self._pump(now)

    def transport_failed(self, tx_id: int, now: float) -> None:
        """The adapter could not deliver a `SendMessage` carrying `tx_id`."""
        self._tl.transport_failed(tx_id, now)
        self._pump(now)

    def set_handler(self, method: str, owner: str) -> None:
        """Out-of-dialog requests of `method` are reported with `owner`."""
        self._handlers[method] = owner
        self._allow = ", ".join(sorted(set(DIALOG_METHODS) | set(self._handlers)))

    # ---- UAS side -----------------------------------------------------------------------
    def respond(
        self,
        request_id: int,
        status: int,
        reason: str | None = None,
        *,
        headers: HeaderList = (),
        body: bytes = b"",
        reliable: bool = False,
        now: float,
    ) -> int | None:
        """Answer request `request_id`.  Returns the dialog it belongs to or that this
        response created (a 101-299 to an INVITE), else None; also None, and nothing sent,
        when the request is already finished (a RequestCancelled saying why is queued).

        `reliable`: send a 101-199 to an INVITE reliably (RFC 3262) when the UAC
        supports 100rel (always when it requires it)."""
        server = self._servers.get(request_id)
        if not 100 <= status <= 699:
            raise ValueError(f"status {status} out of range")
        if server is None:
            return None
        tu_headers = list(headers)
        request = server.request
        if request.method == "INVITE" and 100 < status < 200 and self._wants_reliable(request, reliable):
            if server.reliable is not None:
                server.queued.append((status, reason, tu_headers, body))
                dialog = server.dialog
                return dialog.id if dialog is not None else None
            result = self._send_response(server, status, reason, tu_headers, body, True, now)
        else:
            result = self._send_response(server, status, reason, tu_headers, body, False, now)
        self._pump(now)
        return result

    def respond_stateless(
        self,
        request: Request,
        peer: Peer,
        status: int,
        reason: str | None = None,
        *,
        headers: HeaderList = (),
        body: bytes = b"",
        to_tag: str | None = None,
    ) -> None:
        """Answer without a transaction (RFC 3261 §8.2.7): OPTIONS pings, overload."""
        extra = list(headers)
        if self.user_agent and not _has(extra, "server"):
            extra.append(("Server", self.user_agent))
        resp = make_response(request, status, reason, to_tag=to_tag, headers=extra, body=body)
        self._tl.send_stateless(resp, peer)

    # ---- UAC side -----------------------------------------------------------------------
    def send_request(
        self,
        method: str,
        uri: str | SipUri,
        *,
        owner: str,
        destinations: Sequence[Peer],
        now: float,
        from_: str,
        to: str | None = None,
        call_id: str | None = None,
        cseq: int = 1,
        headers: HeaderList = (),
        body: bytes = b"",
        credentials: Credentials | None = None,
        auto_ack: bool = True,
        session_expires: int | None = None,
    ) -> int:
        """Send an out-of-dialog request to `destinations[0]` (the next ones on transport
        failure or timeout, RFC 3263 §4.3); returns its request id.

        `from_` gets a fresh tag unless it has one; `to` defaults to the Request-URI.
        An INVITE asks for a session timer of `session_expires` (default: the
        configured `SessionTimerConfig.expires`, none without a config)."""
        if method in ("ACK", "CANCEL"):
            raise UaError(f"{method} is sent by the UA itself (ack(), cancel())")
        if not destinations:
            raise UaError("send_request needs at least one destination")
        if method == "INVITE" and len(self._dialogs) + self._new_invites >= self.max_dialogs:
            raise UaOverloaded(f"{len(self._dialogs)} dialogs")
        from_addr = parse_name_addr(from_)
        if from_addr.tag is None:
            from_addr.set_param("tag", new_tag())
        uri_text = str(uri)
        request_id = next(self._ids)
        client = _Client(request_id, owner, _TU, method, list(headers), body, None)
        client.uri = uri_text
        client.from_ = str(from_addr)
        client.to = to if to is not None else f"<{uri_text}>"
        client.call_id = call_id or f"{new_tag()}@{self._local(destinations[0])[0]}"
        client.cseq = cseq
        client.destinations = list(destinations)
        client.credentials = credentials
        client.auto_ack = auto_ack
        if method == "INVITE":
            config = self.session_timer
            client.session_expires = session_expires if session_expires is not None else (
                config.expires if config is not None else None
            )
            if client.session_expires is not None:
                client.min_se = config.min_se if config is not None else None
        try:
            self._transmit(client, now)
        except TransactionTableFull as exc:
            raise UaOverloaded(str(exc)) from exc
        self._clients[request_id] = client
        if method == "INVITE":
            self._arm_timer_c(client, now)
        self._pump(now)
        return request_id

    def send_in_dialog(
        self,
        dialog_id: int,
        method: str,
        *,
        headers: HeaderList = (),
        body: bytes = b"",
        auto_ack: bool = True,
        now: float,
    ) -> int:
        """Send a request inside a dialog (re-INVITE, UPDATE, INFO, REFER, ...) to the
        dialog's peer; returns its request id."""
        dialog = self._dialogs.get(dialog_id)
        if dialog is None or dialog.ending:
            raise UnknownDialog(f"no dialog {dialog_id}")
        if method in ("ACK", "CANCEL", "BYE", "PRACK"):
            raise UaError(f"{method} is sent with ack(), cancel(), bye() or automatically")
        if method == "INVITE":
            if dialog.dialog.state is DialogState.EARLY:
                raise UaError("a re-INVITE needs a confirmed dialog")
            if dialog.out_invite is not None or dialog.in_invite is not None or dialog.awaiting:
                # In either direction, until our 2xx is ACKed (RFC 3261 §14.1).
                raise RequestPending(f"an INVITE is in progress in dialog {dialog_id}")
        elif method == "UPDATE" and dialog.out_update is not None:
            raise RequestPending(f"an UPDATE is in progress in dialog {dialog_id}")
        tu_headers = list(headers)
        if method in TARGET_REFRESH_METHODS and _has(tu_headers, "contact"):
            # A new Contact of ours on a target refresh becomes the dialog's (§12.2.1.1).
            dialog.dialog.local_contact = next(v for n, v in tu_headers if header_key(n) == "contact")
            tu_headers = [(n, v) for n, v in tu_headers if header_key(n) != "contact"]
        client = self._in_dialog_client(dialog, _TU, method, tu_headers, body)
        client.auto_ack = auto_ack
        try:
            self._transmit(client, now)
        except TransactionTableFull as exc:
            raise UaOverloaded(str(exc)) from exc
        self._clients[client.request_id] = client
        self._started_in_dialog(dialog, client, tu_headers, now)
        self._pump(now)
        return client.request_id

    def cancel(self, request_id: int, now: float, *, reason: str | None = None) -> None:
        """Stop our pending INVITE (RFC 3261 §9.1): CANCEL now if a provisional arrived,
        else as soon as one does; nothing if the final response came first.  `reason`
        is a Reason header value (RFC 3326)."""
        client = self._clients.get(request_id)
        if client is None or client.kind != _TU or client.final:
            return
        if client.method != "INVITE":
            raise UaError("only an INVITE can be cancelled")
        if client.cancel != _NO_CANCEL:
            return
        client.cancel_by_tu = True
        client.cancel_reason = reason
        self._request_cancel(client, now)
        self._pump(now)

    def ack(
        self, dialog_id: int, *, body: bytes = b"", headers: HeaderList = (), now: float
    ) -> None:
        """ACK the 2xx of an INVITE sent with auto_ack=False (e.g. with the SDP answer)."""
        dialog = self._dialogs.get(dialog_id)
        if dialog is None or dialog.ack_due is None:
            raise UaError(f"dialog {dialog_id} has no 2xx waiting for an ACK")
        extra = list(headers)
        self._send_ack(dialog, dialog.ack_due, body, extra)
        sdp_type = _is_sdp(extra, body)
        if sdp_type is not None:
            dialog.sdp = body
            dialog.sdp_type = sdp_type
        self._pump(now)

    def bye(self, dialog_id: int, now: float, *, headers: HeaderList = ()) -> None:
        """End a dialog with BYE (DialogEnded "bye_sent" when it completes).  A callee's
        BYE waits for the ACK of its 2xx (RFC 3261 §15); a callee cannot BYE an early
        dialog (answer the INVITE instead).  A caller's BYE on an early dialog ends only
        that dialog: cancel() stops the INVITE."""
        dialog = self._dialogs.get(dialog_id)
        if dialog is None:
            raise UnknownDialog(f"no dialog {dialog_id}")
        if dialog.ending:
            return
        if dialog.dialog.state is DialogState.EARLY and not dialog.is_uac:
            raise UaError("the callee ends an early dialog by answering the INVITE")
        if dialog.ack_due is not None:  # auto_ack=False and the TU never ACKed: ACK first
            self._send_ack(dialog, dialog.ack_due, b"", [])
        if dialog.awaiting:
            dialog.ending = True
            dialog.bye_waiting = list(headers)
            self._stop_session(dialog)
            return
        self._send_bye(dialog, _BYE, list(headers), now)
        self._pump(now)

    def dialog(self, dialog_id: int) -> DialogInfo | None:
        d = self._dialogs.get(dialog_id)
        if d is None:
            return None
        dialog = d.dialog
        state = "terminating" if d.ending else str(dialog.state)
        return DialogInfo(
            dialog_id=d.id,
            owner=d.owner,
            call_id=dialog.call_id,
            local_tag=dialog.local_tag,
            remote_tag=dialog.remote_tag,
            state=state,
            is_uac=d.is_uac,
            local_uri=str(dialog.local_uri),
            remote_uri=str(dialog.remote_uri),
            remote_target=str(dialog.remote_target),
            route_set=tuple(str(r) for r in dialog.route_set),
            peer=d.peer,
            session_expires=d.session_interval,
            we_refresh=d.we_refresh,
            local_sdp=d.sdp,
        )

    @property
    def refuse_new(self) -> bool:
        """Set while the owner sheds load: new requests get 503 + Retry-After, while
        retransmissions, ACKs and in-progress transactions are still served."""
        return self._tl.refuse_new

    @refuse_new.setter
    def refuse_new(self, value: bool) -> None:
        self._tl.refuse_new = value

    @property
    def active_transactions(self) -> int:
        return self._tl.active

    @property
    def lingering_transactions(self) -> int:
        """Completed non-INVITE server transactions only waiting out Timer J."""
        return self._tl.lingering

    def table_sizes(self) -> dict[str, int]:
        """Sizes of every internal table (status pages; tests check they drain to 0)."""
        return {
            "client_requests": len(self._clients),
            "client_transactions": len(self._client_tx),
            "server_requests": len(self._servers),
            "server_transactions": len(self._server_tx),
            "dialogs": len(self._dialogs),
            "dialog_keys": len(self._by_key),
            "new_invites": self._new_invites,
            "timers": len(self._heap),
            "transactions": len(self._tl),
            "events": len(self._events),
        }

    # ---- transaction-layer events -------------------------------------------------------
    def _pump(self, now: float) -> None:
        """Turn every transaction-layer event into UA behaviour and UA events."""
        tl = self._tl
        while True:
            event = tl.next_event()
            if event is None:
                return
            if isinstance(event, TxRequestReceived):
                self._on_request(event.tx, event.request, event.peer, now)
            elif isinstance(event, TxResponseReceived):
                self._on_response(event.tx, event.response, now)
            elif isinstance(event, TxAckReceived):
                self._on_ack(event.request, now)
            elif isinstance(event, CancelReceived):
                self._on_cancel(event, now)
            elif isinstance(event, TransactionTimeout):
                self._on_failure(event.tx, 408, now)
            elif isinstance(event, TransportError):
                self._on_failure(event.tx, 503, now)
            elif isinstance(event, TransactionTerminated):
                self._on_terminated(event.tx, now)
            elif isinstance(event, StrayResponse):
                self._on_stray(event.response)
            elif isinstance(event, Overloaded):
                self.respond_stateless(
                    event.request, event.peer, 503, OVERLOADED_REASON, headers=[("Retry-After", self.retry_after)],
                    to_tag=new_tag(),
                )
                self.overload_rejections += 1

    def _on_failure(self, tx: Transaction, status: int, now: float) -> None:
        if tx.is_server:
            server = self._server_tx.get(tx.id)
            if server is not None and status == 503:
                self._abort_server(server, 0, "transport_error", None, now)
            return
        client = self._client_tx.get(tx.id)
        if client is not None and tx is client.tx:
            self._client_failed(client, status, now)

    def _on_terminated(self, tx: Transaction, now: float) -> None:
        if tx.is_server:
            return
        client = self._client_tx.pop(tx.id, None)
        if client is None:
            return
        client.live -= 1
        if client.live == 0 and client.final:
            self._end_early(client, "early_timeout", now)
            self._clients.pop(client.request_id, None)

    # ---- UAS internals ------------------------------------------------------------------
    def _answer(
        self,
        tx: ServerTransaction,
        request: Request,
        status: int,
        now: float,
        *,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """A response the UA decides itself, through the request's transaction."""
        extra = headers if headers is not None else []
        if self.user_agent:
            extra.append(("Server", self.user_agent))
        to_tag = None if request.to.tag else new_tag()
        self._tl.send_response(tx, make_response(request, status, reason, to_tag=to_tag, headers=extra), now)

    def _on_request(self, tx: ServerTransaction, request: Request, peer: Peer, now: float) -> None:
        method = request.method
        to_tag = request.to.tag
        if to_tag and method != "REGISTER":
            dialog = self._by_key.get(DialogId(request.call_id, to_tag, request.from_.tag or ""))
            if dialog is None or (dialog.ending and method != "BYE"):
                self._answer(tx, request, 481, now)
            elif not dialog.dialog.receive_request(request):
                self._answer(tx, request, 500, now, reason="CSeq Out of Order")
            else:
                self._in_dialog_request(dialog, tx, request, peer, now)
            return
        owner = self._handlers.get(method)
        if owner is None:
            if method in _DIALOG_ONLY:
                self._answer(tx, request, 481, now)
            elif method in KNOWN_METHODS:
                self._answer(tx, request, 405, now, headers=[("Allow", self._allow)])
            else:
                self._answer(tx, request, 501, now, headers=[("Allow", self._allow)])
            return
        if method == "INVITE" and not self._admit_invite(tx, request, now):
            return
        request_id = next(self._ids)
        server = _Server(request_id, owner, tx, request, peer, None, new_tag())
        self._servers[request_id] = server
        self._server_tx[tx.id] = server
        if method == "INVITE":
            server.initial = True
            server.counted = True
            self._new_invites += 1
        self._events.append(RequestReceived(owner, request_id, None, request, peer))

    def _admit_invite(self, tx: ServerTransaction, request: Request, now: float) -> bool:
        """Checks on a dialog-creating INVITE before the TU sees it (one without Contact,
        as RFC 2543 allowed, is accepted: see `Dialog.from_uas`)."""
        if len(self._dialogs) + self._new_invites >= self.max_dialogs:
            self._answer(tx, request, 503, now, reason=TOO_MANY_DIALOGS_REASON, headers=[("Retry-After", self.retry_after)])
            return False
        return self._session_acceptable(tx, request, now)

    def _session_acceptable(self, tx: ServerTransaction, request: Request, now: float) -> bool:
        """RFC 4028 §8.1: a Session-Expires below our Min-SE gets 422."""
        asked = _session_expires(request)
        min_se = self._min_se()
        if asked is not None and asked[0] < min_se:
            self._answer(tx, request, 422, now, headers=[("Min-SE", str(min_se))])
            return False
        return True

    def _min_se(self) -> int:
        config = self.session_timer
        return config.min_se if config is not None else MIN_SE_FLOOR

    def _in_dialog_request(
        self, dialog: _Dialog, tx: ServerTransaction, request: Request, peer: Peer, now: float
    ) -> None:
        method = request.method
        if method == "BYE":
            self._answer(tx, request, 200, now)
            self._end_dialog(dialog, "bye", request, now)
            return
        if method == "PRACK":
            self._on_prack(dialog, tx, request, peer, now)
            return
        if "allow" in request.headers:
            dialog.peer_allows_update = _allows_update(request)
        early = dialog.dialog.state is DialogState.EARLY
        if method == "INVITE":
            if dialog.out_invite is not None or dialog.out_update is not None or (early and dialog.is_uac):
                self._answer(tx, request, 491, now)
                return
            if dialog.in_invite is not None or (early and not dialog.is_uac):
                self._answer(tx, request, 500, now, headers=[("Retry-After", str(secrets.randbelow(11)))])
                return
            if not self._session_acceptable(tx, request, now):
                return
        elif method == "UPDATE":
            if dialog.out_invite is not None or dialog.out_update is not None:
                self._answer(tx, request, 491, now)
                return
            if dialog.in_update is not None:
                self._answer(tx, request, 500, now, headers=[("Retry-After", str(secrets.randbelow(11)))])
                return
            if not self._session_acceptable(tx, request, now):
                return
        request_id = next(self._ids)
        server = _Server(request_id, dialog.owner, tx, request, peer, dialog, None)
        self._servers[request_id] = server
        self._server_tx[tx.id] = server
        dialog.incoming[request_id] = server
        if method == "INVITE":
            dialog.in_invite = server
        elif method == "UPDATE":
            dialog.in_update = server
        dialog.announced = True
        self._events.append(RequestReceived(dialog.owner, request_id, dialog.id, request, peer))

    def _on_prack(
        self, dialog: _Dialog, tx: ServerTransaction, request: Request, peer: Peer, now: float
    ) -> None:
        """RFC 3262 §3: a PRACK matching our unacknowledged reliable provisional stops its
        retransmission and lets the next one go; anything else gets 481."""
        invite = dialog.uas_invite or dialog.in_invite
        reliable = invite.reliable if invite is not None else None
        rack = _rack(request.headers.get("rack"))
        if (
            invite is None
            or reliable is None
            or rack is None
            or rack != (reliable.rseq, invite.request.cseq.number, "INVITE")
        ):
            self._answer(tx, request, 481, now)
            return
        self._cancel_timer(reliable.timer)
        reliable.timer = None  # (the timer's action refers back to it)
        invite.reliable = None
        self._answer(tx, request, 200, now)
        dialog.announced = True
        self._events.append(RequestReceived(dialog.owner, next(self._ids), dialog.id, request, peer))
        if invite.queued:
            status, reason, headers, body = invite.queued.pop(0)
            self._send_response(invite, status, reason, headers, body, True, now)

    def _on_cancel(self, event: CancelReceived, now: float) -> None:
        """RFC 3261 §9.2: 200 to the CANCEL, 487 to the INVITE if it is still pending."""
        invite_tx = event.invite_tx
        if invite_tx is None:
            self._answer(event.tx, event.request, 481, now)
            return
        self._answer(event.tx, event.request, 200, now)
        server = self._server_tx.get(invite_tx.id)
        if server is not None:
            self._abort_server(server, 487, "cancel", event.request, now)

    def _on_ack(self, ack: Request, now: float) -> None:
        to_tag = ack.to.tag
        if not to_tag:
            return
        dialog = self._by_key.get(DialogId(ack.call_id, to_tag, ack.from_.tag or ""))
        if dialog is None:
            return
        for awaiting in dialog.awaiting:
            if awaiting.responder.receive_ack(ack):
                break
        else:
            return
        self._stop_awaiting(dialog, awaiting)
        if dialog.bye_waiting is not None:
            if not dialog.awaiting:
                self._send_bye(dialog, _BYE, dialog.bye_waiting, now)
            return
        self._events.append(AckReceived(dialog.owner, dialog.id, awaiting.request_id, ack))

    def _wants_reliable(self, request: Request, reliable: bool) -> bool:
        if "100rel" in request.option_tags("require"):
            return True
        return reliable and "100rel" in request.option_tags("supported")

    def _send_response(
        self,
        server: _Server,
        status: int,
        reason: str | None,
        tu_headers: list[tuple[str, str]],
        body: bytes,
        reliable: bool,
        now: float,
    ) -> int | None:
        request = server.request
        method = request.method
        dialog = server.dialog
        success = 200 <= status < 300
        extra: list[tuple[str, str]] = []
        if method == "INVITE" and 100 < status < 300:
            # §12.1.1: the dialog-creating response carries the request's Record-Route.
            extra += [("Record-Route", rr) for rr in request.headers.get_all("record-route")]
        target_refresh = (method == "INVITE" and 100 < status < 300) or (method == "UPDATE" and success)
        if target_refresh and not _has(tu_headers, "contact"):
            contact = dialog.dialog.local_contact if dialog is not None else None
            extra.append(("Contact", contact or self._contact(server.peer, request.uri.user)))
        if method == "INVITE" and 100 < status < 300 and not _has(tu_headers, "allow"):
            extra.append(("Allow", self._allow))
        if status == 405 and not _has(tu_headers, "allow"):
            extra.append(("Allow", self._allow))
        if method == "INVITE" and success and not _has(tu_headers, "supported"):
            extra.append(("Supported", SUPPORTED))
        confirmed = dialog is not None and dialog.dialog.state is DialogState.CONFIRMED
        refresh = method == "INVITE" or (method == "UPDATE" and confirmed)
        if success and refresh and not _has(tu_headers, "session-expires"):
            extra += self._session_answer(request)
        if self.user_agent and not _has(tu_headers, "server"):
            extra.append(("Server", self.user_agent))
        rseq = 0
        if reliable:
            rseq = server.next_rseq or 1 + secrets.randbelow(0x7FFFFFFF)
            server.next_rseq = rseq + 1
            extra.append(("Require", "100rel"))
            extra.append(("RSeq", str(rseq)))
        extra += tu_headers
        resp = make_response(request, status, reason, to_tag=server.to_tag, headers=extra, body=body)
        if not self._tl.send_response(server.tx, resp, now):
            return dialog.id if dialog is not None else None
        if method == "INVITE":
            dialog = self._after_invite_response(server, resp, rseq, now)
        elif status >= 200:
            self._finish_server(server)
        if dialog is None:
            return None
        dialog.announced = True
        if success and method in TARGET_REFRESH_METHODS and _has(tu_headers, "contact"):
            dialog.dialog.local_contact = resp.headers.get("contact")
        sdp_type = _is_sdp(tu_headers, body)
        if sdp_type is not None and 100 < status < 300:
            dialog.sdp = body
            dialog.sdp_type = sdp_type
        if method == "UPDATE" and success and dialog.dialog.state is DialogState.CONFIRMED:
            self._session_from(dialog, resp, False, now)
        return dialog.id

    def _after_invite_response(
        self, server: _Server, resp: Response, rseq: int, now: float
    ) -> _Dialog | None:
        status = resp.status
        dialog = server.dialog
        if server.initial and dialog is None and 100 < status < 300:
            request = server.request
            state = Dialog.from_uas(request, resp, tls=server.peer.transport in ("tls", "wss"))
            dialog = _Dialog(next(self._ids), server.owner, state, server.peer)
            dialog.peer_allows_update = _allows_update(request)
            dialog.uas_invite = server
            server.dialog = dialog
            self._add_dialog(dialog)
            self._uncount(server)
        if rseq:
            config = self.config
            reliable = _Reliable(resp.to_bytes(), rseq, config.t1, now + config.timeout)
            server.reliable = reliable
            reliable.timer = self._at(now + config.t1, lambda t: self._reliable_due(server, reliable, t))
        if status < 200:
            return dialog
        self._finish_server(server)
        if dialog is None:
            return None
        if server.initial:
            dialog.uas_invite = None
        if status < 300:
            dialog.dialog.confirm()
            self._await_ack(dialog, resp, server, now)
            self._session_from(dialog, resp, False, now)
        elif server.initial:
            self._end_dialog(dialog, "rejected", None, now)
        return dialog

    def _reliable_due(self, server: _Server, reliable: _Reliable, now: float) -> None:
        """Re-send the reliable provisional at T1, 2T1, ...; 64*T1 without PRACK → 500."""
        if server.reliable is not reliable:
            return
        reliable.timer = None
        if now >= reliable.give_up_at:
            server.reliable = None
            self._abort_server(server, 500, "prack_timeout", None, now)
            return
        self._tl.send_bytes(reliable.data, server.peer, server.tx.id)
        reliable.interval *= 2
        when = min(now + reliable.interval, reliable.give_up_at)
        reliable.timer = self._at(when, lambda t: self._reliable_due(server, reliable, t))

    def _finish_server(self, server: _Server) -> None:
        """The request got its final response: forget it."""
        self._servers.pop(server.request_id, None)
        self._server_tx.pop(server.tx.id, None)
        self._uncount(server)
        reliable = server.reliable
        if reliable is not None:
            self._cancel_timer(reliable.timer)
            reliable.timer = None
            server.reliable = None
        server.queued = []
        dialog = server.dialog
        if dialog is not None:
            dialog.incoming.pop(server.request_id, None)
            if dialog.in_invite is server:
                dialog.in_invite = None
            if dialog.in_update is server:
                dialog.in_update = None

    def _uncount(self, server: _Server) -> None:
        if server.counted:
            server.counted = False
            self._new_invites -= 1

    def _abort_server(
        self, server: _Server, status: int, why: str, request: Request | None, now: float
    ) -> None:
        """End a pending request for the TU: answer `status` (0: the transaction is gone)
        and report RequestCancelled; a dialog-creating INVITE takes its early dialog."""
        self._events.append(RequestCancelled(server.owner, server.request_id, request, why))
        if status:
            extra = [("Server", self.user_agent)] if self.user_agent else []
            resp = make_response(server.request, status, to_tag=server.to_tag, headers=extra)
            self._tl.send_response(server.tx, resp, now)
        self._finish_server(server)
        dialog = server.dialog
        if server.initial and dialog is not None and dialog.uas_invite is server:
            dialog.uas_invite = None
            self._end_dialog(dialog, why, request, now)

    def _await_ack(self, dialog: _Dialog, resp: Response, server: _Server, now: float) -> None:
        """RFC 3261 §13.3.1.4: our 2xx goes again at T1, 2T1, ... (cap T2) until the ACK."""
        awaiting = _Awaiting(server.request_id, UasInviteResponder(resp, server.peer, now, self.config))
        dialog.awaiting.append(awaiting)
        self._arm_awaiting(dialog, awaiting)

    def _arm_awaiting(self, dialog: _Dialog, awaiting: _Awaiting) -> None:
        deadline = awaiting.responder.next_deadline()
        if deadline is not None:
            awaiting.timer = self._at(deadline, lambda t: self._awaiting_due(dialog, awaiting, t))

    def _stop_awaiting(self, dialog: _Dialog, awaiting: _Awaiting) -> None:
        self._cancel_timer(awaiting.timer)
        awaiting.timer = None
        dialog.awaiting = [a for a in dialog.awaiting if a is not awaiting]

    def _awaiting_due(self, dialog: _Dialog, awaiting: _Awaiting, now: float) -> None:
        awaiting.timer = None
        responder = awaiting.responder
        for out in responder.handle_timer(now):
            self._tl.send_bytes(out.data, out.peer)
        if not responder.timed_out:
            self._arm_awaiting(dialog, awaiting)
            return
        self._stop_awaiting(dialog, awaiting)
        remote_seq = dialog.dialog.remote_seq
        if remote_seq is not None and remote_seq > responder.cseq and dialog.bye_waiting is None:
            return  # a later request of theirs shows they got this 2xx: only its ACK is lost
        if dialog.awaiting:
            return
        if dialog.bye_waiting is not None:
            self._send_bye(dialog, _BYE, dialog.bye_waiting, now)
        else:
            self._send_bye(dialog, _INTERNAL_BYE, [], now)
            self._end_dialog(dialog, "ack_timeout", None, now)

    # ---- UAC internals ------------------------------------------------------------------
    def _in_dialog_client(
        self, dialog: _Dialog, kind: int, method: str, headers: list[tuple[str, str]], body: bytes
    ) -> _Client:
        client = _Client(next(self._ids), dialog.owner, kind, method, headers, body, dialog)
        if method in ("INVITE", "UPDATE") and dialog.session_interval is not None:
            client.session_expires = dialog.session_interval
            client.refresher = "uac" if dialog.we_refresh else "uas"
            config = self.session_timer
            client.min_se = config.min_se if config is not None else None
        return client

    def _started_in_dialog(
        self, dialog: _Dialog, client: _Client, headers: list[tuple[str, str]], now: float
    ) -> None:
        if client.method == "INVITE":
            dialog.out_invite = client
            self._arm_timer_c(client, now)
        elif client.method == "UPDATE":
            dialog.out_update = client
        sdp_type = _is_sdp(headers, client.body)
        if sdp_type is not None and client.method in ("INVITE", "UPDATE"):
            dialog.sdp = client.body
            dialog.sdp_type = sdp_type

    def _internal(
        self,
        dialog: _Dialog,
        kind: int,
        method: str,
        headers: list[tuple[str, str]],
        body: bytes,
        now: float,
    ) -> _Client | None:
        """A request the UA sends on its own in `dialog`; None when the table is full."""
        client = self._in_dialog_client(dialog, kind, method, headers, body)
        try:
            self._transmit(client, now)
        except TransactionTableFull:
            return None
        self._clients[client.request_id] = client
        return client

    def _contact(self, peer: Peer, user: str | None) -> str:
        host, port = self._local(peer)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        user_part = f"{user}@" if user else ""
        return f"<sip:{user_part}{host}:{port};transport={peer.transport}>"

    def _build(self, client: _Client, peer: Peer) -> Request:
        method = client.method
        tu_headers = client.headers
        extra: list[tuple[str, str]] = []
        if method == "INVITE" and not _has(tu_headers, "supported"):
            # Without an offer of ours, a reliable provisional could bring the callee's offer,
            # whose answer would have to go in the automatic PRACK, which has no body.
            extra.append(("Supported", SUPPORTED if client.body else "timer"))
        if method == "INVITE" and not _has(tu_headers, "allow"):
            extra.append(("Allow", self._allow))
        if client.session_expires is not None and not _has(tu_headers, "session-expires"):
            value = str(client.session_expires)
            if client.refresher is not None:
                value += f";refresher={client.refresher}"
            extra.append(("Session-Expires", value))
            if client.min_se is not None:
                extra.append(("Min-SE", str(client.min_se)))
            if method == "UPDATE" and not _has(tu_headers, "supported"):
                extra.append(("Supported", "timer"))
        if self.user_agent and not _has(tu_headers, "user-agent"):
            extra.append(("User-Agent", self.user_agent))
        dialog = client.dialog
        if dialog is None:
            request = Request(method=method, uri_text=client.uri)
            h = request.headers
            if not _has(tu_headers, "max-forwards"):
                h.add("Max-Forwards", "70")
            h.add("From", client.from_)
            h.add("To", client.to)
            h.add("Call-ID", client.call_id)
            h.add("CSeq", f"{client.cseq} {method}")
            if method in _CONTACT_METHODS and not _has(tu_headers, "contact"):
                h.add("Contact", self._contact(peer, parse_name_addr(client.from_).uri.user))
            for name, value in extra:
                h.add(name, value)
            for name, value in tu_headers:
                h.add(name, value)
            request.body = client.body
        else:
            request = dialog.dialog.create_request(method, headers=extra + tu_headers, body=client.body)
            client.cseq = request.cseq.number
        credentials = client.credentials
        if credentials is not None:
            for auth in client.auth:
                value = authorization(
                    auth.challenge, credentials, method, request.uri_text,
                    cnonce=secrets.token_hex(8), nc=auth.nc,
                )
                auth.nc += 1
                request.headers.add(auth.header, value)
        host, port = self._local(peer)
        push_via(request, host, port, peer.transport)
        return request

    def _transmit(self, client: _Client, now: float) -> None:
        """(Re)send the request in a new client transaction (new branch)."""
        dialog = client.dialog
        peer = dialog.peer if dialog is not None else client.destinations[client.dest_index]
        request = self._build(client, peer)
        tx = self._tl.send_request(request, peer, now)
        client.tx = tx
        client.live += 1
        client.provisional = False
        self._client_tx[tx.id] = client

    def _on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        client = self._client_tx.get(tx.id)
        if client is None or tx is not client.tx:
            return  # our CANCEL's answer, or a transaction we moved on from
        if client.method == "INVITE":
            self._invite_response(client, tx, resp, now)
        else:
            self._non_invite_response(client, resp, now)

    def _invite_response(self, client: _Client, tx: ClientTransaction, resp: Response, now: float) -> None:
        status = resp.status
        if status < 200:
            client.provisional = True
            if client.cancel == _CANCEL_HELD:
                self._send_cancel(client, now)
            if status == 100 or client.final:
                return
            if client.cancel == _NO_CANCEL:
                self._arm_timer_c(client, now)
            dialog = self._uac_dialog(client, tx.request, resp)
            if (
                dialog is not None
                and _reliable_provisional(resp)
                and not self._prack(client, dialog, resp, now)
            ):
                return  # a retransmitted or out-of-order reliable provisional
            if client.kind == _TU and not client.cancel_by_tu:
                if dialog is not None:
                    dialog.announced = True
                self._report(client, dialog, resp)
            return
        if status < 300:
            self._invite_success(client, tx, resp, now)
            return
        if self._retry(client, resp, now):
            return
        self._settle(client)
        dialog = client.dialog
        if dialog is not None and dialog.out_invite is client:
            dialog.out_invite = None
        if client.kind == _TU:
            if status == 487 and client.cancel != _NO_CANCEL and not client.cancel_by_tu:
                # Timer C cancelled it, not the TU: to the TU this is a timeout.
                self._events.append(RequestFailed(client.owner, client.request_id, 408, TIMER_C_REASON))
            else:
                self._report(client, dialog, resp)
        self._end_early(client, "rejected", now)
        if dialog is not None:
            self._dialog_error(dialog, client, status, now)

    def _invite_success(self, client: _Client, tx: ClientTransaction, resp: Response, now: float) -> None:
        """A 2xx to our INVITE: ACK every one (again for retransmissions), one dialog per
        To tag (forks), hang up what answers after the TU cancelled."""
        dialog = self._uac_dialog(client, tx.request, resp)
        first = not client.final
        if first:
            self._settle(client)
        if dialog is None:  # no To tag: nothing to ACK in
            if first and client.kind == _TU:
                self._report(client, None, resp)
            return
        number = resp.cseq.number
        if number <= dialog.ack_cseq:  # a retransmission: ACK it again, report nothing
            self._re_ack(dialog, number)
            return
        dialog.dialog.update_from_response(resp)
        if "allow" in resp.headers:
            dialog.peer_allows_update = _allows_update(resp)
        dialog.ack_auth = [
            (h.name, h.value) for h in tx.request.headers if h.key in ("authorization", "proxy-authorization")
        ]
        if client.dialog is None and client.cancel_by_tu:
            self._send_ack(dialog, resp, b"", [])
            self._send_bye(dialog, _INTERNAL_BYE, [], now)
            if first:
                self._fail(client, 487, "Request Terminated (answered after CANCEL, hung up)", now)
            self._end_dialog(dialog, "cancel", None, now)
            return
        if client.auto_ack:
            self._send_ack(dialog, resp, b"", [])
        else:
            self._remember_ack(dialog, number, None)
            dialog.ack_due = resp
        if dialog.out_invite is client:
            dialog.out_invite = None
        self._session_from(dialog, resp, True, now)
        if client.kind == _TU:
            dialog.announced = True
            self._report(client, dialog, resp)

    def _non_invite_response(self, client: _Client, resp: Response, now: float) -> None:
        status = resp.status
        dialog = client.dialog
        if status < 200:
            if status > 100 and client.kind == _TU:
                self._report(client, dialog, resp)
            return
        if status >= 300 and self._retry(client, resp, now):
            return
        self._settle(client)
        if dialog is None:
            if client.kind == _TU:
                self._report(client, None, resp)
            return
        if client.kind == _BYE:
            self._end_dialog(dialog, "bye_sent", None, now)
            return
        if client.method == "UPDATE":
            if dialog.out_update is client:
                dialog.out_update = None
            if status < 300:
                dialog.dialog.update_from_response(resp)
                if "allow" in resp.headers:
                    dialog.peer_allows_update = _allows_update(resp)
                if dialog.dialog.state is DialogState.CONFIRMED:
                    self._session_from(dialog, resp, True, now)
        if client.kind == _TU:
            self._report(client, dialog, resp)
        if status >= 300:
            self._dialog_error(dialog, client, status, now)

    def _report(self, client: _Client, dialog: _Dialog | None, resp: Response) -> None:
        dialog_id = dialog.id if dialog is not None else None
        self._events.append(ResponseReceived(client.owner, client.request_id, dialog_id, resp))

    def _dialog_error(self, dialog: _Dialog, client: _Client, status: int, now: float) -> None:
        """RFC 5057: some answers to an in-dialog request mean the dialog is gone; a failed
        session refresh (408, 481) is followed by BYE (RFC 4028 §10)."""
        if dialog.ended or client.kind == _PRACK:
            return
        if client.kind == _REFRESH and status in (408, 481, 503):
            self._send_bye(dialog, _INTERNAL_BYE, [], now)
            self._end_dialog(dialog, str(status), None, now)
        elif status in _ENDS_DIALOG and not (status == 481 and client.method in _USAGE_METHODS):
            self._end_dialog(dialog, str(status), None, now)

    def _client_failed(self, client: _Client, status: int, now: float) -> None:
        """Timer B/F (408) or a transport failure (503): the next destination, else fail."""
        if client.final:
            return
        if (
            client.dialog is None
            and not client.provisional
            and client.cancel == _NO_CANCEL
            and client.dest_index + 1 < len(client.destinations)
        ):
            client.dest_index += 1
            try:
                self._transmit(client, now)
            except TransactionTableFull:
                pass
            else:
                if client.method == "INVITE":
                    self._arm_timer_c(client, now)
                return
        reason = "Request Timeout" if status == 408 else "Service Unavailable"
        self._fail(client, status, reason, now)

    def _fail(self, client: _Client, status: int, reason: str, now: float) -> None:
        self._settle(client)
        dialog = client.dialog
        if client.kind == _TU:
            self._events.append(RequestFailed(client.owner, client.request_id, status, reason))
        self._end_early(client, "rejected", now)
        if dialog is None:
            return
        if dialog.out_invite is client:
            dialog.out_invite = None
        if dialog.out_update is client:
            dialog.out_update = None
        if client.kind == _BYE:
            self._end_dialog(dialog, "bye_sent", None, now)
        elif client.kind == _REFRESH or status == 408:
            self._dialog_error(dialog, client, status, now)

    def _settle(self, client: _Client) -> None:
        client.final = True
        self._cancel_timer(client.timer_c)
        client.timer_c = None
        self._cancel_timer(client.cancel_timer)
        client.cancel_timer = None

    def _end_early(self, client: _Client, reason: str, now: float) -> None:
        """The INVITE is over: its dialogs still early end with it.  The map stays while
        the transaction lives, so a retransmitted 2xx still finds its (ended) dialog's ACK."""
        for dialog in list(client.early.values()):
            if dialog.dialog.state is DialogState.EARLY:
                self._end_dialog(dialog, reason, None, now)

    def _uac_dialog(self, client: _Client, request: Request, resp: Response) -> _Dialog | None:
        """The dialog a 101-299 to our INVITE belongs to: the request's own for a
        re-INVITE, else one per To tag, created on first sight (early or confirmed)."""
        if client.dialog is not None:
            return client.dialog
        tag = resp.to.tag
        if not tag:
            return None
        dialog = client.early.get(tag)
        if dialog is not None or client.kind != _TU:
            return dialog
        try:
            state = Dialog.from_uac(request, resp)
        except ValueError:
            return None
        tx = client.tx
        assert tx is not None
        dialog = _Dialog(next(self._ids), client.owner, state, tx.peer)
        dialog.credentials = client.credentials
        dialog.peer_allows_update = _allows_update(resp)
        sdp_type = _is_sdp(client.headers, client.body)
        if sdp_type is not None:
            dialog.sdp = client.body
            dialog.sdp_type = sdp_type
        self._add_dialog(dialog)
        client.early[tag] = dialog
        return dialog

    def _prack(self, client: _Client, dialog: _Dialog, resp: Response, now: float) -> bool:
        """RFC 3262 §4: PRACK an in-order reliable provisional; False for one to ignore
        (a retransmission, or out of order).  RSeq counts per request and per fork."""
        rseq = _int(resp.headers.get("rseq"))
        if rseq is None:
            return True
        tag = resp.to.tag or ""
        last = client.rseqs.get(tag)
        if last is not None and rseq != last + 1:
            return False
        client.rseqs[tag] = rseq
        rack = f"{rseq} {resp.cseq.number} {resp.cseq.method}"
        self._internal(dialog, _PRACK, "PRACK", [("RAck", rack)], b"", now)
        return True

    def _send_ack(
        self, dialog: _Dialog, resp: Response, body: bytes, headers: list[tuple[str, str]]
    ) -> None:
        """ACK a 2xx (RFC 3261 §13.2.2.4) and keep the bytes for its retransmissions."""
        ack = dialog.dialog.create_ack(resp, headers=dialog.ack_auth + headers, body=body)
        host, port = self._local(dialog.peer)
        push_via(ack, host, port, dialog.peer.transport)
        data = ack.to_bytes()
        self._remember_ack(dialog, resp.cseq.number, data)
        dialog.ack_due = None
        self._tl.send_bytes(data, dialog.peer)

    @staticmethod
    def _remember_ack(dialog: _Dialog, number: int, data: bytes | None) -> None:
        """The ACK for the 2xx with CSeq `number` (None: the TU sends it later); the one
        before stays for late retransmissions of its 2xx."""
        if dialog.ack_data is not None and dialog.ack_cseq != number:
            dialog.prev_ack = (dialog.ack_cseq, dialog.ack_data)
        dialog.ack_cseq = number
        dialog.ack_data = data

    def _on_stray(self, resp: Response) -> None:
        """A 2xx after Timer M (its INVITE transaction is gone): re-send the dialog's ACK."""
        if not 200 <= resp.status < 300 or resp.cseq.method != "INVITE":
            return
        dialog = self._by_key.get(DialogId(resp.call_id, resp.from_.tag or "", resp.to.tag or ""))
        if dialog is not None:
            self._re_ack(dialog, resp.cseq.number)

    def _re_ack(self, dialog: _Dialog, number: int) -> None:
        """Re-send the ACK we sent for the 2xx with CSeq `number`, if we still have it."""
        if number == dialog.ack_cseq and dialog.ack_data is not None:
            self._tl.send_bytes(dialog.ack_data, dialog.peer)
            return
        previous = dialog.prev_ack
        if previous is not None and previous[0] == number:
            self._tl.send_bytes(previous[1], dialog.peer)

    def _retry(self, client: _Client, resp: Response, now: float) -> bool:
        """Answer a digest challenge (once per realm; again only for stale=true) or a 422
        (once, with its Min-SE): same request id, CSeq+1, new branch."""
        if client.cancel != _NO_CANCEL:
            return False
        status = resp.status
        credentials = client.credentials
        if status in (401, 407) and credentials is not None:
            values = resp.headers.get_all("www-authenticate" if status == 401 else "proxy-authenticate")
            header = "Authorization" if status == 401 else "Proxy-Authorization"
            fresh = [
                ch
                for ch in best_challenges(values, credentials)
                if ch.nonce not in client.nonces and (ch.realm not in client.realms or ch.stale)
            ]
            if not fresh:
                return False
            for challenge in fresh:
                client.nonces.add(challenge.nonce)
                client.realms.add(challenge.realm)
                client.auth = [a for a in client.auth if a.challenge.realm != challenge.realm]
                client.auth.append(_Auth(header, challenge))
        elif status == 422 and client.session_expires is not None and not client.retried_422:
            min_se = _min_se(resp)
            if min_se is None:
                return False
            client.retried_422 = True
            client.session_expires = max(client.session_expires, min_se)
            client.min_se = max(client.min_se or 0, min_se)
        else:
            return False
        if client.dialog is None:
            client.cseq += 1
        self._end_early(client, "rejected", now)
        client.early = {}
        client.rseqs = {}
        try:
            self._transmit(client, now)
        except TransactionTableFull:
            return False
        if client.method == "INVITE":
            self._arm_timer_c(client, now)
        return True

    # ---- CANCEL and Timer C ---------------------------------------------------------------
    def _arm_timer_c(self, client: _Client, now: float) -> None:
        """RFC 3261 §16.6 step 11: Timer C, reset by every provisional response."""
        self._cancel_timer(client.timer_c)
        client.timer_c = self._at(now + self.timer_c, lambda t: self._timer_c_fired(client, t))

    def _timer_c_fired(self, client: _Client, now: float) -> None:
        client.timer_c = None
        if not client.final and client.cancel == _NO_CANCEL:
            self._request_cancel(client, now)

    def _request_cancel(self, client: _Client, now: float) -> None:
        if client.provisional:
            self._send_cancel(client, now)
        else:
            client.cancel = _CANCEL_HELD

    def _send_cancel(self, client: _Client, now: float) -> None:
        invite = client.tx
        assert invite is not None
        cancel = build_cancel(invite.request)
        if client.cancel_reason:
            cancel.headers.add("Reason", client.cancel_reason)
        client.cancel = _CANCEL_SENT
        try:
            tx = self._tl.send_request(cancel, invite.peer, now)
        except TransactionTableFull:
            pass
        else:
            client.live += 1
            self._client_tx[tx.id] = client
        self._cancel_timer(client.timer_c)
        client.timer_c = None
        client.cancel_timer = self._at(now + self.config.timeout, lambda t: self._cancel_expired(client, t))

    def _cancel_expired(self, client: _Client, now: float) -> None:
        """No final response 64*T1 after our CANCEL: give the INVITE up (408)."""
        client.cancel_timer = None
        if client.final:
            return
        self._fail(client, 408, "Request Timeout (no answer to CANCEL)", now)
        tx = client.tx
        if tx is not None:
            self._tl.terminate(tx.id)

    # ---- dialogs ----------------------------------------------------------------------------
    def _add_dialog(self, dialog: _Dialog) -> None:
        self._dialogs[dialog.id] = dialog
        self._by_key[dialog.key] = dialog

    def _send_bye(self, dialog: _Dialog, kind: int, headers: list[tuple[str, str]], now: float) -> None:
        """BYE in `dialog`; with kind _BYE the dialog ends when it completes."""
        self._stop_session(dialog)
        dialog.ending = True
        dialog.bye_waiting = None
        if self._internal(dialog, kind, "BYE", headers, b"", now) is None and kind == _BYE:
            self._end_dialog(dialog, "bye_sent", None, now)

    def _end_dialog(self, dialog: _Dialog, reason: str, request: Request | None, now: float) -> None:
        """Forget the dialog; its unanswered requests get 487 (RFC 3261 §15.1.2)."""
        if dialog.ended:
            return
        dialog.ended = True
        self._dialogs.pop(dialog.id, None)
        if self._by_key.get(dialog.key) is dialog:
            del self._by_key[dialog.key]
        for awaiting in dialog.awaiting:
            self._cancel_timer(awaiting.timer)
            awaiting.timer = None
        dialog.awaiting = []
        self._stop_session(dialog)
        invite = dialog.uas_invite
        if invite is not None:
            dialog.uas_invite = None
            self._abort_server(invite, 487, reason, request, now)
        pending = list(dialog.incoming.values())
        dialog.incoming = {}
        for server in pending:
            self._abort_server(server, 487, reason, request, now)
        dialog.in_invite = None
        dialog.in_update = None
        if dialog.announced:
            self._events.append(DialogEnded(dialog.owner, dialog.id, reason, request))

    # ---- session timers (RFC 4028) --------------------------------------------------------
    def _session_answer(self, request: Request) -> list[tuple[str, str]]:
        """Session-Expires (+ Require: timer) for our 2xx to INVITE/UPDATE (RFC 4028 §9)."""
        asked = _session_expires(request)
        supports = "timer" in request.option_tags("supported") or "timer" in request.option_tags("require")
        config = self.session_timer
        if asked is None:
            if config is None:
                return []
            interval = max(config.expires, _min_se(request) or 0)
            refresher = "uac" if supports else "uas"
        else:
            interval = asked[0]
            refresher = asked[1] if asked[1] in ("uac", "uas") else ("uac" if supports else "uas")
        out = [("Session-Expires", f"{interval};refresher={refresher}")]
        if supports and refresher == "uac":
            out.append(("Require", "timer"))
        return out

    def _session_from(self, dialog: _Dialog, msg: Response, we_sent: bool, now: float) -> None:
        """(Re)start the session timer from the Session-Expires of a 2xx, or stop it."""
        found = _session_expires(msg)
        self._stop_session(dialog)
        if found is None or dialog.ended or dialog.ending:
            dialog.session_interval = None
            return
        interval, refresher = found
        if refresher not in ("uac", "uas"):
            refresher = "uac"
        dialog.session_interval = interval
        dialog.we_refresh = (refresher == "uac") == we_sent
        if dialog.we_refresh:
            # We refresh at half the interval; a failed refresh ends the session at once
            # (RFC 4028 §10), one that merely did not succeed leaves it to expire.
            dialog.refresh_timer = self._at(now + interval / 2, lambda t: self._refresh_due(dialog, t))
            expiry = float(interval)
        else:
            # The other side refreshes; without one we hang up slightly before it expires.
            expiry = interval - min(32.0, interval / 3)
        dialog.expiry_timer = self._at(now + expiry, lambda t: self._session_expired(dialog, t))

    def _stop_session(self, dialog: _Dialog) -> None:
        self._cancel_timer(dialog.refresh_timer)
        dialog.refresh_timer = None
        self._cancel_timer(dialog.expiry_timer)
        dialog.expiry_timer = None

    def _refresh_due(self, dialog: _Dialog, now: float) -> None:
        """Refresh the session: UPDATE without body if the peer allows it, else a
        re-INVITE with the last SDP we sent (RFC 4028 §7.4, §9)."""
        dialog.refresh_timer = None
        if dialog.ended or dialog.ending or dialog.dialog.state is not DialogState.CONFIRMED:
            return
        if (
            dialog.out_invite is not None
            or dialog.out_update is not None
            or dialog.in_invite is not None
            or dialog.in_update is not None
            or dialog.awaiting
        ):
            return  # a re-INVITE/UPDATE under way refreshes the session when it succeeds
        if dialog.peer_allows_update:
            client = self._internal(dialog, _REFRESH, "UPDATE", [], b"", now)
            if client is not None:
                dialog.out_update = client
        else:
            headers = [("Content-Type", dialog.sdp_type)] if dialog.sdp else []
            client = self._internal(dialog, _REFRESH, "INVITE", headers, dialog.sdp, now)
            if client is not None:
                dialog.out_invite = client
                self._arm_timer_c(client, now)

    def _session_expired(self, dialog: _Dialog, now: float) -> None:
        dialog.expiry_timer = None
        if dialog.ended or dialog.ending:
            return
        self._send_bye(dialog, _INTERNAL_BYE, [], now)
        self._end_dialog(dialog, "session_expired", None, now)

    # ---- timers -------------------------------------------------------------------------
    def _at(self, when: float, action: Callable[[float], None]) -> _Timer:
        timer = _Timer(when, action)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        self._live_timers += 1
        return timer

    def _cancel_timer(self, timer: _Timer | None) -> None:
        if timer is None or not timer.active:
            return
        timer.active = False
        self._live_timers -= 1
        heap = self._heap
        if len(heap) > 2 * self._live_timers + 256:
            # Cancelled entries wait in the heap until due; rebuild before they pile up.
            kept = [entry for entry in heap if entry[2].active]
            heapq.heapify(kept)
            self._heap = kept


__all__ = [
    "DIALOG_METHODS",
    "KNOWN_METHODS",
    "MIN_SE_FLOOR",
    "SUPPORTED",
    "AckReceived",
    "Credentials",
    "DialogEnded",
    "DialogInfo",
    "RequestCancelled",
    "RequestFailed",
    "RequestPending",
    "RequestReceived",
    "ResponseReceived",
    "SendMessage",
    "SessionTimerConfig",
    "UaError",
    "UaEvent",
    "UaOverloaded",
    "UnknownDialog",
    "UserAgent",
]
