"""SIP transaction layer (RFC 3261 §17 with the RFC 6026 corrections), sans-I/O.

Nothing here touches a socket, a clock or an event loop.  The owner feeds it parsed
messages, the `Peer` they came from and the current time (`now`, seconds as a float from
any monotonic clock); it produces bytes to send, events for the transaction user (TU) and
the next timer deadline.  Driving it follows aioquic's style:

* inputs: `receive_request`, `receive_response`, `send_request`, `send_response`,
  `send_stateless`, `transport_failed`, `handle_timers`;
* outputs: `messages_to_send()` drains the `SendMessage` queue (bytes + destination), and
  `next_event()` pops one `Event` at a time (None when empty);
* timers: `next_deadline()` says when `handle_timers(now)` must be called next.

After any input the adapter sends what `messages_to_send()` returns (reporting failed sends
with `transport_failed(tx_id, now)`), hands each event to the TU, repeats while the TU's
reactions queue more, and re-arms its wake-up for `next_deadline()`.  docs/transactions.md
has the loop and the timer table.

Choices worth knowing:

* An INVITE server transaction sends 100 Trying immediately on creation (RFC 3261 §17.2.1
  allows it; it stops INVITE retransmissions at once and saves a timer per call).
* Timers B, F and H report `TransactionTimeout`; the TU acts as if a 408 arrived (client) or
  as if the ACK never came (server, Timer H).  An INVITE client transaction in Proceeding
  has no timer of its own: the TU cancels it (Timer C) when it has waited long enough.
* The table is bounded (`max_transactions`), and the owner can set `refuse_new` while it
  sheds load; shedding spares BYE, CANCEL and requests inside a dialog (a To tag), which
  end or keep up calls already admitted (refusing them only makes the load last longer).
  A request that would need a new transaction
  when the table is full yields `Overloaded` and the TU answers 503 + Retry-After with
  `send_stateless`; `send_request` raises `TransactionTableFull`.
* Completed non-INVITE server transactions on UDP, which only wait out Timer J (64·T1) to
  re-send their final response to a retransmission, do not count against
  `max_transactions`: at 5,000 REGISTERs a second 160,000 of them wait at any time.  They
  are capped on their own (`max_lingering`); past it the oldest ends early, which only
  means a retransmission arriving later than that is handled as a new request.  They
  expire from a FIFO (Timer J is the same for all), not from the timer heap.
* A completed server transaction (non-INVITE, or INVITE after a 300-699) keeps only the
  bytes it re-sends: its `request` becomes a shared stand-in carrying just the method,
  and `last_response` is dropped (an INVITE keyed the RFC 2543 way keeps it for the To
  tag its ACK is matched by).  Under an INVITE flood this is the difference between ~35
  and ~4 objects per transaction for the cyclic GC to walk.
* Loop/hop checks are the TU's: `too_many_hops(req)` says when a 483 is due.
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from mypy_extensions import mypyc_attr

from .message import Message, Request, Response, Via, make_response, new_branch
from .peer import Peer

MAGIC_COOKIE = "z9hG4bK"

_RETX = 0  # heap slot: retransmission timer (A, E, G)
_TIMEOUT = 1  # heap slot: the other timer of the current state (B, D, F, H, I, J, K, L, M)

TxKey = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """T1/T2/T4 (seconds); every other timer of RFC 3261 Table 4 derives from them."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 > 0):
            raise ValueError("timers need t1 > 0, t2 >= t1 and t4 > 0")

    @classmethod
    def from_ms(cls, t1_ms: float = 500, t2_ms: float = 4000, t4_ms: float = 5000) -> TimerConfig:
        """Build from the `sip.timers.t1_ms/t2_ms/t4_ms` configuration keys."""
        return cls(t1_ms / 1000.0, t2_ms / 1000.0, t4_ms / 1000.0)

    @property
    def timeout(self) -> float:
        """64*T1: Timers B, F, H, J (unreliable), L and M."""
        return 64.0 * self.t1

    @property
    def timer_d(self) -> float:
        """Timer D on unreliable transports: at least 32 s, longer if T1 was raised."""
        return max(32.0, 64.0 * self.t1)


class State(StrEnum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    ACCEPTED = "Accepted"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


@mypyc_attr(native_class=False)  # mypyc cannot subclass RuntimeError natively
class TransactionTableFull(RuntimeError):
    """`send_request` on a full table; the TU should fail the call (e.g. 503 upstream)."""


# ---- outputs and events -----------------------------------------------------------------


@dataclass(slots=True, init=False)
class SendMessage:
    """Bytes for the transport.  `tx_id` lets the adapter report a failed send."""

    data: bytes
    peer: Peer
    tx_id: int | None

    # An explicit __init__: mypyc compiles it (a dataclass-made one runs as Python).
    def __init__(self, data: bytes, peer: Peer, tx_id: int | None = None) -> None:
        self.data = data
        self.peer = peer
        self.tx_id = tx_id


@dataclass(slots=True, init=False)
class RequestReceived:
    """A new request created server transaction `tx`; the TU must answer through it."""

    tx: ServerTransaction
    request: Request
    peer: Peer

    # An explicit __init__: mypyc compiles it (a dataclass-made one runs as Python).
    def __init__(self, tx: ServerTransaction, request: Request, peer: Peer) -> None:
        self.tx = tx
        self.request = request
        self.peer = peer


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK for a 2xx (end-to-end, no transaction): for the dialog layer."""

    request: Request
    peer: Peer


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """A CANCEL created `tx`; `invite_tx` is the INVITE it targets, None → answer 481."""

    tx: ServerTransaction
    invite_tx: InviteServerTransaction | None
    request: Request


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for client transaction `tx` that the TU must see."""

    tx: ClientTransaction
    response: Response


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """Timer B/F (client: act as if 408 arrived) or Timer H (server: ACK never came)."""

    tx: Transaction


@dataclass(frozen=True, slots=True)
class TransportError:
    """The adapter reported a failed send; client TUs treat it as 503 (RFC 3263 §4.3)."""

    tx: Transaction


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    """`tx` left the table; the TU can drop whatever it keyed on it."""

    tx: Transaction


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response matching no client transaction (2xx retransmissions after Timer M)."""

    response: Response
    peer: Peer


@dataclass(frozen=True, slots=True)
class Overloaded:
    """A request needed a transaction but the table is full: answer 503 statelessly."""

    request: Request
    peer: Peer


Event = (
    RequestReceived
    | AckReceived
    | CancelReceived
    | ResponseReceived
    | TransactionTimeout
    | TransportError
    | TransactionTerminated
    | StrayResponse
    | Overloaded
)


# ---- helpers ------------------------------------------------------------------------------


def push_via(
    req: Request,
    host: str,
    port: int | None,
    transport: str,
    *,
    branch: str | None = None,
    rport: bool = True,
) -> str:
    """Put a Via with a fresh RFC 3261 branch on top of `req`; return the branch."""
    branch = branch or new_branch()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    sent_by = host if port is None else f"{host}:{port}"
    value = f"SIP/2.0/{transport.upper()} {sent_by};branch={branch}"
    if rport:
        value += ";rport"
    req.headers.add("Via", value, first=True)
    return branch


def too_many_hops(req: Request) -> bool:
    """Max-Forwards 0 on anything but OPTIONS: the TU answers 483 (ACK: drop it)."""
    return req.max_forwards == 0 and req.method != "OPTIONS"


def _copy(dst: Request, src: Message, key: str) -> None:
    """Copy every `key` header line unchanged (raw text kept)."""
    append = dst.headers.append
    for h in src.headers:
        if h.key == key:
            append(h)


def _hop_request(invite: Request, method: str) -> Request:
    """Shared part of the ACK for a non-2xx and of CANCEL: same hop, same branch."""
    req = Request(method=method, uri_text=invite.uri_text)
    req.headers.add("Via", invite.headers.get_all("via")[0])
    _copy(req, invite, "route")
    mf = invite.headers.get("max-forwards")
    req.headers.add("Max-Forwards", mf.strip(" \t") if mf else "70")
    _copy(req, invite, "from")
    _copy(req, invite, "call-id")
    cseq = invite.cseq  # a local: tests/native_shapes.py, property-borrow
    req.headers.add("CSeq", f"{cseq.number} {method}")
    return req


def build_non2xx_ack(invite: Request, response: Response) -> Request:
    """ACK for a 300-699 (RFC 3261 §17.1.1.3): the INVITE's top Via and Route, response's To."""
    ack = _hop_request(invite, "ACK")
    _copy(ack, response, "to")
    return ack


def build_cancel(invite: Request) -> Request:
    """CANCEL for a pending INVITE (RFC 3261 §9.1); send only after a provisional arrived."""
    cancel = _hop_request(invite, "CANCEL")
    _copy(cancel, invite, "to")
    return cancel


def _sheddable(req: Request, method: str) -> bool:
    """A new request load shedding may refuse: out of dialog, neither BYE nor CANCEL."""
    if method == "BYE" or method == "CANCEL":
        return False
    to = req.to  # locals: tests/native_shapes.py, property-borrow
    tag = to.tag
    return tag is None


def _server_key(req: Request, via: Via, method: str) -> TxKey:
    """§17.2.3 key; the RFC 2543 fallback leaves the To tag out (checked for ACK apart)."""
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return (branch, via.host, via.port, method)
    from_ = req.from_  # locals: tests/native_shapes.py, property-borrow
    cseq = req.cseq
    return (req.uri_text, from_.tag, req.call_id, cseq.number, str(via), method)


# ---- transactions -------------------------------------------------------------------------


class Transaction:
    """State shared by the four state machines; the layer owns every instance."""

    __slots__ = (
        "_layer",
        "_retx_at",
        "_retx_interval",
        "_timeout_at",
        "id",
        "key",
        "last_response",
        "lingers",
        "peer",
        "request",
        "state",
    )

    is_server = False
    is_invite = False

    def __init__(
        self,
        layer: TransactionLayer,
        tx_id: int,
        key: TxKey,
        request: Request,
        peer: Peer,
        state: State,
    ) -> None:
        self._layer = layer
        self.id = tx_id
        self.key = key
        self.request = request
        self.peer = peer
        self.state = state
        self.last_response: Response | None = None
        self._retx_at: float | None = None
        self._retx_interval = 0.0
        self._timeout_at: float | None = None
        self.lingers = False  # completed non-INVITE on UDP, only waiting out Timer J

    @property
    def method(self) -> str:
        return self.request.method

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.method} {self.state}>"

    def _send(self, data: bytes) -> None:
        self._layer._outgoing.append(SendMessage(data, self.peer, self.id))

    def _emit(self, event: Event) -> None:
        self._layer._events.append(event)

    def _start_retx(self, now: float, interval: float) -> None:
        self._retx_interval = interval
        when = now + interval
        self._retx_at = when
        self._layer._schedule(when, self, _RETX)

    def _start_timeout(self, now: float, delay: float) -> None:
        """Arm the state's timer; a zero timer (reliable transport) terminates at once."""
        if delay <= 0:
            self._terminate()
            return
        when = now + delay
        self._timeout_at = when
        self._layer._schedule(when, self, _TIMEOUT)

    def _terminate(self) -> None:
        if self.state is State.TERMINATED:
            return
        self.state = State.TERMINATED
        self._retx_at = None
        self._timeout_at = None
        self._layer._remove(self)
        self._emit(TransactionTerminated(self))

    def _on_retx(self, now: float) -> None:
        """Timer A/E/G fired."""

    def _on_timeout(self, now: float) -> None:
        """The state's other timer fired; by default it ends the transaction."""
        self._terminate()


class ClientTransaction(Transaction, ABC):
    """Keeps the request bytes so retransmissions are byte-identical."""

    __slots__ = ("_data",)

    def __init__(
        self,
        layer: TransactionLayer,
        tx_id: int,
        key: TxKey,
        request: Request,
        peer: Peer,
        state: State,
    ) -> None:
        super().__init__(layer, tx_id, key, request, peer, state)
        self._data = request.to_bytes()

    def _start(self, now: float) -> None:
        self._send(self._data)
        config = self._layer.config
        if not self.peer.reliable:
            self._start_retx(now, config.t1)
        self._start_timeout(now, config.timeout)

    @abstractmethod
    def _on_response(self, resp: Response, now: float) -> None:
        """A response matched this transaction."""


class InviteClientTransaction(ClientTransaction):
    """Calling → Proceeding → Accepted (2xx, Timer M) | Completed (non-2xx, Timer D)."""

    __slots__ = ("ack",)
    is_invite = True

    def __init__(
        self, layer: TransactionLayer, tx_id: int, key: TxKey, request: Request, peer: Peer
    ) -> None:
        super().__init__(layer, tx_id, key, request, peer, State.CALLING)
        self.ack: bytes | None = None

    def _on_retx(self, now: float) -> None:
        if self.state is State.CALLING:
            self._send(self._data)
            self._start_retx(now, 2 * self._retx_interval)

    def _on_timeout(self, now: float) -> None:
        if self.state is State.CALLING:
            self._emit(TransactionTimeout(self))
        self._terminate()

    def _on_response(self, resp: Response, now: float) -> None:
        state = self.state
        status = resp.status
        if state is State.CALLING or state is State.PROCEEDING:
            self.last_response = resp
            self._retx_at = None
            if status < 200:
                self.state = State.PROCEEDING
                self._timeout_at = None
                self._emit(ResponseReceived(self, resp))
            elif status < 300:
                self.state = State.ACCEPTED
                self._emit(ResponseReceived(self, resp))
                self._start_timeout(now, self._layer.config.timeout)
            else:
                self.state = State.COMPLETED
                self.ack = build_non2xx_ack(self.request, resp).to_bytes()
                self._send(self.ack)
                self._emit(ResponseReceived(self, resp))
                config = self._layer.config
                self._start_timeout(now, 0.0 if self.peer.reliable else config.timer_d)
        elif state is State.ACCEPTED:
            if 200 <= status < 300:
                self._emit(ResponseReceived(self, resp))
        elif state is State.COMPLETED and status >= 300 and self.ack is not None:
            self._send(self.ack)


class NonInviteClientTransaction(ClientTransaction):
    """Trying → Proceeding → Completed (Timer K) with Timer E capped at T2."""

    __slots__ = ()

    def __init__(
        self, layer: TransactionLayer, tx_id: int, key: TxKey, request: Request, peer: Peer
    ) -> None:
        super().__init__(layer, tx_id, key, request, peer, State.TRYING)

    def _on_retx(self, now: float) -> None:
        state = self.state
        if state is State.TRYING:
            self._send(self._data)
            self._start_retx(now, min(2 * self._retx_interval, self._layer.config.t2))
        elif state is State.PROCEEDING:
            self._send(self._data)
            self._start_retx(now, self._layer.config.t2)

    def _on_timeout(self, now: float) -> None:
        if self.state is not State.COMPLETED:
            self._emit(TransactionTimeout(self))
        self._terminate()

    def _on_response(self, resp: Response, now: float) -> None:
        if self.state is not State.TRYING and self.state is not State.PROCEEDING:
            return
        self.last_response = resp
        if resp.status < 200:
            self.state = State.PROCEEDING
            self._emit(ResponseReceived(self, resp))
            return
        self.state = State.COMPLETED
        self._retx_at = None
        self._emit(ResponseReceived(self, resp))
        self._start_timeout(now, 0.0 if self.peer.reliable else self._layer.config.t4)


class ServerTransaction(Transaction, ABC):
    """Keeps the last provisional and final bytes to answer retransmissions."""

    __slots__ = ("_final", "_provisional")

    is_server = True

    def __init__(
        self,
        layer: TransactionLayer,
        tx_id: int,
        key: TxKey,
        request: Request,
        peer: Peer,
        state: State,
    ) -> None:
        super().__init__(layer, tx_id, key, request, peer, state)
        self._provisional: bytes | None = None
        self._final: bytes | None = None

    def _on_retransmission(self) -> None:
        """Same request again: re-send the last provisional (Proceeding) or final (Completed)."""
        state = self.state
        if state is State.PROCEEDING and self._provisional is not None:
            self._send(self._provisional)
        elif state is State.COMPLETED and self._final is not None:
            self._send(self._final)

    @abstractmethod
    def _respond(self, resp: Response, now: float) -> bool:
        """The TU answers; False when the state discards the response."""


class InviteServerTransaction(ServerTransaction):
    """Proceeding → Accepted (2xx, Timer L) | Completed (Timer G/H) → Confirmed (Timer I)."""

    __slots__ = ()
    is_invite = True

    def __init__(
        self, layer: TransactionLayer, tx_id: int, key: TxKey, request: Request, peer: Peer
    ) -> None:
        super().__init__(layer, tx_id, key, request, peer, State.PROCEEDING)

    def _start(self) -> None:
        self._provisional = make_response(self.request, 100).to_bytes()
        self._send(self._provisional)

    def _respond(self, resp: Response, now: float) -> bool:
        status = resp.status
        state = self.state
        config = self._layer.config
        if state is State.PROCEEDING:
            self.last_response = resp
            data = resp.to_bytes()
            self._send(data)
            if status < 200:
                self._provisional = data
            elif status < 300:
                self.state = State.ACCEPTED
                self._start_timeout(now, config.timeout)
            else:
                self.state = State.COMPLETED
                self._final = data
                self._provisional = None
                # Timers G/H keep it 64*T1 only to re-send `_final` and absorb the ACK: drop
                # the parsed messages (as completed non-INVITE transactions do), so a flood
                # of unacknowledged INVITEs weighs ~4 objects each on the cyclic GC, not ~35.
                # An RFC 2543 ACK (no magic-cookie branch) is matched by To tag: keep it.
                self.request = _completed_request(self.request.method)
                if len(self.key) == 4:
                    self.last_response = None
                if not self.peer.reliable:
                    self._start_retx(now, config.t1)
                self._start_timeout(now, config.timeout)
            return True
        if state is State.ACCEPTED and 200 <= status < 300:
            self._send(resp.to_bytes())  # the TU's own 2xx retransmission (RFC 6026 §7.1)
            return True
        return False

    def _on_ack(self, now: float) -> bool:
        """True when the ACK belongs to this transaction (non-2xx); False → TU's ACK."""
        state = self.state
        if state is State.ACCEPTED:
            return False
        if state is State.COMPLETED:
            self.state = State.CONFIRMED
            self._retx_at = None
            self._start_timeout(now, 0.0 if self.peer.reliable else self._layer.config.t4)
        return True

    def _on_retx(self, now: float) -> None:
        if self.state is State.COMPLETED and self._final is not None:
            self._send(self._final)
            self._start_retx(now, min(2 * self._retx_interval, self._layer.config.t2))

    def _on_timeout(self, now: float) -> None:
        if self.state is State.COMPLETED:
            self._emit(TransactionTimeout(self))
        self._terminate()


class NonInviteServerTransaction(ServerTransaction):
    """Trying → Proceeding → Completed (Timer J)."""

    __slots__ = ()

    def __init__(
        self, layer: TransactionLayer, tx_id: int, key: TxKey, request: Request, peer: Peer
    ) -> None:
        super().__init__(layer, tx_id, key, request, peer, State.TRYING)

    def _respond(self, resp: Response, now: float) -> bool:
        if self.state is not State.TRYING and self.state is not State.PROCEEDING:
            return False
        self.last_response = resp
        data = resp.to_bytes()
        self._send(data)
        if resp.status < 200:
            self.state = State.PROCEEDING
            self._provisional = data
            return True
        self.state = State.COMPLETED
        self._final = data
        self._provisional = None
        # Timer J keeps UDP transactions for 64*T1 only to re-send `_final`: drop the parsed
        # messages so tens of thousands of waiting transactions don't weigh on the cyclic GC.
        self.request = _completed_request(self.request.method)
        self.last_response = None
        if self.peer.reliable:
            self._start_timeout(now, 0.0)
        else:
            # Timer J without a heap entry: the layer expires lingering transactions in
            # completion order, which (Timer J being constant) is expiry order.
            self._timeout_at = now + self._layer.config.timeout
            self._layer._linger(self)
        return True


_COMPLETED: dict[str, Request] = {}


def _completed_request(method: str) -> Request:
    """A shared stand-in for the request of a completed transaction: only its method is
    still read, and tens of thousands of transactions wait out Timer J on UDP."""
    stand_in = _COMPLETED.get(method)
    if stand_in is None:
        stand_in = Request(method=method, uri_text="sip:completed.invalid")
        if len(_COMPLETED) < 64:
            _COMPLETED[method] = stand_in
    return stand_in


# ---- the layer ----------------------------------------------------------------------------


class TransactionLayer:
    """Matches messages to transactions, runs their timers and queues output and events."""

    __slots__ = (
        "_by_id",
        "_client",
        "_events",
        "_ids",
        "_lingering",
        "_lingering_count",
        "_outgoing",
        "_seq",
        "_server",
        "_timers",
        "config",
        "max_lingering",
        "max_transactions",
        "refuse_new",
    )

    def __init__(
        self,
        config: TimerConfig | None = None,
        *,
        max_transactions: int = 100_000,
        max_lingering: int = 50_000,
    ) -> None:
        self.config = config or TimerConfig()
        self.max_transactions = max_transactions
        self.max_lingering = max_lingering
        # Completed non-INVITE server transactions waiting out Timer J, oldest first (a
        # deque: a dict used as a FIFO degrades as deleted slots pile up at its front);
        # entries that ended otherwise stay until they reach the front.
        self._lingering: deque[NonInviteServerTransaction] = deque()
        self._lingering_count = 0
        # Set by the owner while it sheds load: new requests get `Overloaded`, while
        # retransmissions and ACKs of existing transactions are still handled.
        self.refuse_new = False
        self._server: dict[TxKey, ServerTransaction] = {}
        self._client: dict[TxKey, ClientTransaction] = {}
        self._by_id: dict[int, Transaction] = {}
        self._timers: list[tuple[float, int, Transaction, int]] = []
        self._outgoing: list[SendMessage] = []
        self._events: deque[Event] = deque()
        self._ids = itertools.count(1)
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def active(self) -> int:
        """Transactions that count against `max_transactions` (all but the lingering)."""
        return len(self._by_id) - self._lingering_count

    @property
    def lingering(self) -> int:
        return self._lingering_count

    def _oldest_lingering(self) -> NonInviteServerTransaction | None:
        queue = self._lingering
        while queue:
            oldest = queue[0]
            if oldest.lingers:
                return oldest
            queue.popleft()
        return None

    def get(self, tx_id: int) -> Transaction | None:
        return self._by_id.get(tx_id)

    # ---- outputs ------------------------------------------------------------------------
    def messages_to_send(self) -> list[SendMessage]:
        """Drain the bytes queued for the transport, oldest first."""
        out = self._outgoing
        self._outgoing = []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float | None:
        """When `handle_timers` is next due; stale heap entries are dropped here."""
        heap = self._timers
        oldest = self._oldest_lingering()
        linger_at = oldest._timeout_at if oldest is not None else None
        while heap:
            when, _, tx, slot = heap[0]
            if (tx._retx_at if slot == _RETX else tx._timeout_at) == when:
                return when if linger_at is None or when < linger_at else linger_at
            heapq.heappop(heap)
        return linger_at

    # ---- inputs -------------------------------------------------------------------------
    def receive_request(self, req: Request, peer: Peer, now: float) -> None:
        """A validated request from the transport (see `message.validate_request`)."""
        via = req.top_via
        method = req.method
        if method == "ACK":
            self._receive_ack(req, via, peer, now)
            return
        key = _server_key(req, via, method)
        tx = self._server.get(key)
        if tx is not None:
            tx._on_retransmission()
            return
        if (self.refuse_new and _sheddable(req, method)) or len(self._by_id) - self._lingering_count >= self.max_transactions:
            self._events.append(Overloaded(req, peer))
            return
        tx_id = next(self._ids)
        if method == "INVITE":
            invite = InviteServerTransaction(self, tx_id, key, req, peer)
            self._add(invite)
            self._events.append(RequestReceived(invite, req, peer))
            invite._start()
            return
        tx = NonInviteServerTransaction(self, tx_id, key, req, peer)
        self._add(tx)
        if method == "CANCEL":
            target = self._server.get(_server_key(req, via, "INVITE"))
            invite_tx = target if isinstance(target, InviteServerTransaction) else None
            self._events.append(CancelReceived(tx, invite_tx, req))
        else:
            self._events.append(RequestReceived(tx, req, peer))

    def _receive_ack(self, req: Request, via: Via, peer: Peer, now: float) -> None:
        tx = self._server.get(_server_key(req, via, "INVITE"))
        if isinstance(tx, InviteServerTransaction):
            last = tx.last_response
            stale_2543 = False
            if len(tx.key) != 4 and last is not None:
                ours, theirs = last.to, req.to  # locals: tests/native_shapes.py, property-borrow
                stale_2543 = ours.tag != theirs.tag
            if not stale_2543 and tx._on_ack(now):
                return
        self._events.append(AckReceived(req, peer))

    def receive_response(self, resp: Response, peer: Peer, now: float) -> None:
        """A validated response (see `message.validate_response`); matched per §17.1.3."""
        via = resp.top_via  # locals: tests/native_shapes.py, property-borrow
        cseq = resp.cseq
        tx = self._client.get((via.branch, cseq.method))
        if tx is None:
            self._events.append(StrayResponse(resp, peer))
        else:
            tx._on_response(resp, now)

    def send_request(self, req: Request, peer: Peer, now: float) -> ClientTransaction:
        """Start a client transaction; the top Via must carry a fresh z9hG4bK branch."""
        if req.method == "ACK":
            raise ValueError("ACK is sent without a transaction: use send_stateless")
        via = req.top_via  # a local: tests/native_shapes.py, property-borrow
        branch = via.branch
        if branch is None or not branch.startswith(MAGIC_COOKIE):
            raise ValueError("top Via needs an RFC 3261 branch (see push_via)")
        key: TxKey = (branch, req.method)
        if key in self._client:
            raise ValueError(f"branch {branch} already in use for {req.method}")
        if len(self._by_id) - self._lingering_count >= self.max_transactions:
            raise TransactionTableFull(f"{len(self._by_id)} transactions")
        tx_id = next(self._ids)
        tx: ClientTransaction
        if req.method == "INVITE":
            tx = InviteClientTransaction(self, tx_id, key, req, peer)
        else:
            tx = NonInviteClientTransaction(self, tx_id, key, req, peer)
        self._client[key] = tx
        self._by_id[tx_id] = tx
        tx._start(now)
        return tx

    def send_response(self, tx: int | ServerTransaction, resp: Response, now: float) -> bool:
        """Answer through a server transaction; False when its state discards the response
        (a second final response, or the transaction is gone)."""
        if isinstance(tx, int):
            found = self._by_id.get(tx)
            if found is None:
                return False
            if not isinstance(found, ServerTransaction):
                raise TypeError(f"transaction {tx} is a client transaction")
            tx = found
        if tx.state is State.TERMINATED:
            return False
        return tx._respond(resp, now)

    def send_stateless(self, msg: Message, peer: Peer) -> None:
        """Queue a message outside any transaction: ACK for 2xx, 2xx retransmissions,
        503 on overload, answers to requests that cannot get a transaction."""
        self._outgoing.append(SendMessage(msg.to_bytes(), peer))

    def send_bytes(self, data: bytes, peer: Peer, tx_id: int | None = None) -> None:
        """Queue bytes serialised once and re-sent as they are: the UA core's own
        retransmissions (2xx to INVITE, reliable provisionals, the cached ACK for a 2xx).
        `tx_id` names the transaction a failed send should be reported against."""
        self._outgoing.append(SendMessage(data, peer, tx_id))

    def terminate(self, tx_id: int) -> None:
        """The TU gives up on a transaction: an INVITE client transaction in Proceeding has
        no timer of its own, so when no final response follows a CANCEL within 64*T1
        (RFC 3261 §9.1, §16.8) the TU ends it here.  Emits `TransactionTerminated`."""
        tx = self._by_id.get(tx_id)
        if tx is not None:
            tx._terminate()

    def transport_failed(self, tx_id: int, now: float) -> None:
        """The adapter could not deliver a `SendMessage` carrying `tx_id`."""
        tx = self._by_id.get(tx_id)
        if tx is None:
            return
        self._events.append(TransportError(tx))
        tx._terminate()

    def handle_timers(self, now: float) -> None:
        """Fire every timer due at `now`."""
        while (oldest := self._oldest_lingering()) is not None:
            when = oldest._timeout_at
            if when is not None and when > now:
                break
            self._lingering.popleft()
            oldest._timeout_at = None
            oldest._on_timeout(now)
        heap = self._timers
        while heap and heap[0][0] <= now:
            when, _, tx, slot = heapq.heappop(heap)
            if slot == _RETX:
                if tx._retx_at == when:
                    tx._retx_at = None
                    tx._on_retx(now)
            elif tx._timeout_at == when:
                tx._timeout_at = None
                tx._on_timeout(now)

    # ---- internals ----------------------------------------------------------------------
    def _add(self, tx: ServerTransaction) -> None:
        self._server[tx.key] = tx
        self._by_id[tx.id] = tx

    def _linger(self, tx: NonInviteServerTransaction) -> None:
        tx.lingers = True
        self._lingering.append(tx)
        self._lingering_count += 1
        while self._lingering_count > self.max_lingering:
            oldest = self._oldest_lingering()
            if oldest is None:
                break
            self._lingering.popleft()
            oldest._terminate()

    def _remove(self, tx: Transaction) -> None:
        self._by_id.pop(tx.id, None)
        if tx.lingers:
            tx.lingers = False
            self._lingering_count -= 1
        table: dict[TxKey, ServerTransaction] | dict[TxKey, ClientTransaction]
        table = self._server if tx.is_server else self._client
        if table.get(tx.key) is tx:
            del table[tx.key]

    def _schedule(self, when: float, tx: Transaction, slot: int) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), tx, slot))


__all__ = [
    "MAGIC_COOKIE",
    "AckReceived",
    "CancelReceived",
    "ClientTransaction",
    "Event",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "Overloaded",
    "RequestReceived",
    "ResponseReceived",
    "SendMessage",
    "ServerTransaction",
    "State",
    "StrayResponse",
    "TimerConfig",
    "Transaction",
    "TransactionLayer",
    "TransactionTableFull",
    "TransactionTerminated",
    "TransactionTimeout",
    "TransportError",
    "build_cancel",
    "build_non2xx_ack",
    "push_via",
    "too_many_hops",
]
