"""The SIP core: bytes from the transports in, transactions, dispatch to the features.

It is the thin asyncio-facing layer between `transport/` and the sans-I/O
`sip/transaction.py`: it parses, rejects bad input with the right status, applies
RFC 3581 received/rport, runs the transaction layer and hands new requests to the
handler registered for their method (registrar, later the B2BUA).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .logs import throttle
from .sip.errors import SipParseError
from .sip.message import (
    Limits,
    Request,
    Response,
    canonical_header_name,
    header_key,
    make_response,
    new_tag,
    parse_message,
    validate_request,
    validate_response,
)
from .sip.peer import Peer
from .sip.transaction import (
    AckReceived,
    CancelReceived,
    Overloaded,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    State,
    StrayResponse,
    TimerConfig,
    TransactionLayer,
    TransactionTimeout,
)

if TYPE_CHECKING:
    from .workers import Cluster

log = logging.getLogger("vivait_sip.core")

ALLOWED_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "MESSAGE", "SUBSCRIBE", "NOTIFY", "REFER", "INFO", "UPDATE", "PRACK")
TIMER_GRANULARITY_S = 0.01
KNOWN_METHODS = frozenset((*ALLOWED_METHODS, "PUBLISH"))
SUPPORTED_OPTIONS = ("path", "outbound")
ACCEPTED_TYPES = ("application/sdp",)


@dataclass(init=False)
class Incoming:
    """A new request as handlers see it: the request, its transaction, where it came from."""

    request: Request
    tx: ServerTransaction | None  # None: answered statelessly
    peer: Peer
    core: SipCore
    to_tag: str

    # An explicit __init__: mypyc compiles it (a dataclass-made one runs as Python).
    def __init__(
        self, request: Request, tx: ServerTransaction | None, peer: Peer, core: SipCore, to_tag: str | None = None
    ) -> None:
        self.request = request
        self.tx = tx
        self.peer = peer
        self.core = core
        self.to_tag = new_tag() if to_tag is None else to_tag

    def respond(
        self,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        resp = make_response(self.request, status, reason, to_tag=self.to_tag, headers=headers, body=body)
        self.core.send_response(self.tx, resp, self.peer)
        return resp


Handler = Callable[[Incoming], None]


class SipCore:
    def __init__(
        self,
        *,
        send: Callable[[bytes, Peer], None],
        timers: TimerConfig,
        limits: Limits,
        domains: Iterable[str] = (),
        user_agent: str = "vivait-sip",
        max_transactions: int = 100000,
        max_completed_transactions: int = 50000,
        retry_after_s: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.limits = limits
        self.clock = clock
        self.user_agent = user_agent
        self.retry_after_s = retry_after_s
        self.tl = TransactionLayer(timers, max_transactions=max_transactions, max_lingering=max_completed_transactions)
        self.handlers: dict[str, Handler] = {}
        self.local_domains: set[str] = {d.lower() for d in domains} | {"localhost"}
        self.counters: Counter[str] = Counter()
        self.started = time.time()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # Requests a handler answers without keeping state (no transaction, nothing
        # changed), so a transaction would cost memory for 64*T1 and buy nothing.
        self.stateless_when: dict[str, Callable[[Request, Peer], bool]] = {
            "OPTIONS": lambda req, peer: "OPTIONS" not in self.handlers
        }
        self.on_ack: Callable[[Request, Peer], None] = lambda req, peer: None
        self.on_response: Callable[[ResponseReceived | TransactionTimeout], None] = lambda event: None
        self.cluster: Cluster | None = None

    # ---- identity --------------------------------------------------------------------
    def add_local_address(self, host: str) -> None:
        """An address we listen on is a domain we are authoritative for."""
        self.local_domains.add(host.lower())
        try:
            if ipaddress.ip_address(host).is_loopback:
                self.local_domains.update(("127.0.0.1", "localhost"))
        except ValueError:
            pass

    def is_local_domain(self, host: str) -> bool:
        return host.lower() in self.local_domains

    def register(self, method: str, handler: Handler) -> None:
        self.handlers[method] = handler

    # ---- input -----------------------------------------------------------------------
    def on_message(self, data: bytes, peer: Peer, *, forwarded: bool = False) -> None:
        """Entry point for every received message; never raises.

        `forwarded`: another worker already decided this process owns the message.
        """
        try:
            self._on_message(data, peer, forwarded)
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("event=internal_error peer=%s", peer)

    def _on_message(self, data: bytes, peer: Peer, forwarded: bool) -> None:
        datagram = peer.transport in ("udp", "ws", "wss")
        try:
            msg = parse_message(data, datagram=datagram, limits=self.limits)
            # Any worker answers a stateless request; another worker's message is handed
            # over before validating: its owner does that.
            stateless = isinstance(msg, Request) and self._answers_statelessly(msg, peer)
            if self.cluster is not None and not forwarded and not stateless and self._forward(msg, data, peer):
                return
            if isinstance(msg, Request):
                validate_request(msg)
            else:
                validate_response(msg)
        except SipParseError as exc:
            self.counters["parse_errors"] += 1
            if data.lstrip(b"\r\n").startswith(b"SIP/"):
                return  # RFC 3261 §18.1.2: malformed responses are discarded silently.
            self._reject_malformed(data, peer, exc)
            return
        now = self.clock()
        if isinstance(msg, Response):
            self.counters["responses_in"] += 1
            self.tl.receive_response(msg, peer, now)
        else:
            self.counters["requests_in"] += 1
            if stateless:
                reply_to = self._stamp_via(msg, peer)
                if self.tl.refuse_new:
                    self._shed(msg, reply_to)
                    return
                # Answered statelessly (RFC 3261 §8.2.7), as Kamailio's sl does: a
                # retransmission gets its answer regenerated, same To tag included.
                self._dispatch(Incoming(msg, None, reply_to, self, stateless_tag(msg)))
                return
            reply_to = self._stamp_via(msg, peer)
            self.tl.receive_request(msg, reply_to, now)
        self._drain()

    def _answers_statelessly(self, req: Request, peer: Peer) -> bool:
        check = self.stateless_when.get(req.method)
        return check is not None and check(req, peer)

    def _forward(self, msg: Request | Response, data: bytes, peer: Peer) -> bool:
        """Hand `msg` to the worker owning its state (vivait_sip/workers.py); False: ours."""
        cluster = self.cluster
        assert cluster is not None
        try:
            key = owner_key(msg)
        except SipParseError:
            return False  # answered (400) here, where it arrived
        owner = cluster.owner(key)
        if owner == cluster.index:
            return False
        self.counters["forwarded_to_worker"] += 1
        cluster.forward(owner, data, peer)
        return True

    def _stamp_via(self, req: Request, peer: Peer) -> Peer:
        """Add `received`/`rport` to the top Via (RFC 3261 §18.2.1, RFC 3581) and return
        where responses go (§18.2.2): the arrival connection for streams, the source
        address with rport, else the source IP and the sent-by port."""
        via = req.top_via
        changed = False
        if via.host != peer.host:
            via.set_param("received", peer.host)
            changed = True
        rport = via.has_param("rport")
        if rport and not via.param("rport"):
            via.set_param("rport", str(peer.port))
            if not changed:
                via.set_param("received", peer.host)
            changed = True
        if changed:
            req.headers.pop_first_value("via")
            req.headers.add("Via", str(via), first=True)
        if peer.transport == "udp" and not rport and via.port != peer.port:
            return Peer("udp", peer.host, via.port or 5060)
        return peer

    def _reject_malformed(self, data: bytes, peer: Peer, exc: SipParseError) -> None:
        """Answer a malformed request statelessly when enough of it is readable to route a reply."""
        resp = stateless_error(data, exc.status, _reason_for(exc))
        if resp is None:
            log.debug("event=malformed_dropped peer=%s reason=%r", peer, exc.reason)
            return
        throttle.log(log, logging.INFO, "malformed_request", "event=malformed_request peer=%s status=%d reason=%r", peer, exc.status, exc.reason)
        self._send_raw(resp, peer)

    # ---- transaction events -------------------------------------------------------------
    def _drain(self) -> None:
        tl = self.tl
        while True:
            for out in tl.messages_to_send():
                self._send_raw(out.data, out.peer, out.tx_id)
            event = tl.next_event()
            if event is None:
                break
            if isinstance(event, RequestReceived):
                self._dispatch(Incoming(event.request, event.tx, event.peer, self))
            elif isinstance(event, AckReceived):
                self.on_ack(event.request, event.peer)
            elif isinstance(event, CancelReceived):
                self._on_cancel(event)
            elif isinstance(event, (ResponseReceived, TransactionTimeout)):
                self.on_response(event)
            elif isinstance(event, StrayResponse):
                self.counters["stray_responses"] += 1
            elif isinstance(event, Overloaded):
                self._shed(event.request, event.peer)
        self._arm_timer()

    def _shed(self, req: Request, peer: Peer) -> None:
        """503 + Retry-After, statelessly: the table is full or the loop is lagging."""
        self.counters["overload_rejections"] += 1
        if req.method == "ACK":
            return
        resp = make_response(req, 503, headers=[("Retry-After", str(self.retry_after_s))], to_tag=new_tag())
        self._send_raw(resp.to_bytes(), peer)

    def set_shedding(self, on: bool) -> None:
        """Refuse (True) or accept again (False) requests that need a new transaction."""
        self.tl.refuse_new = on

    def _send_raw(self, data: bytes, peer: Peer, tx_id: int | None = None) -> None:
        try:
            self._send(data, peer)
            self.counters["messages_out"] += 1
        except Exception as exc:
            self.counters["send_errors"] += 1
            throttle.log(log, logging.INFO, "send_failed", "event=send_failed peer=%s error=%r", peer, str(exc))
            if tx_id is not None:
                self.tl.transport_failed(tx_id, self.clock())

    def send_response(self, tx: ServerTransaction | None, resp: Response, peer: Peer) -> None:
        """Send through the transaction, or straight to `peer` when there is none."""
        if self.user_agent and "server" not in resp.headers:
            resp.headers.add("Server", self.user_agent)
        self.counters[f"responses_out_{resp.status // 100}xx"] += 1
        if tx is None:
            self._send_raw(resp.to_bytes(), peer)
            return
        self.tl.send_response(tx, resp, self.clock())
        self._drain()

    def _arm_timer(self) -> None:
        """Wake up for the next transaction timer, on a TIMER_GRANULARITY_S grid.

        An armed wake-up at or before the deadline is kept (it re-arms when it fires), and
        the grid makes one wake-up serve every timer due in the same slot: under load
        thousands of Timer J expiries a second cost a few dozen wake-ups, not thousands.
        """
        deadline = self.tl.next_deadline()
        if deadline is None:
            return
        if self._timer_at is not None and self._timer_at <= deadline + TIMER_GRANULARITY_S:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        slot = math.ceil(deadline / TIMER_GRANULARITY_S) * TIMER_GRANULARITY_S
        self._timer_at = slot
        self._timer = loop.call_later(max(0.0, slot - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.tl.handle_timers(self.clock())
            self._drain()
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("event=timer_error")

    # ---- dispatch ----------------------------------------------------------------------
    def _dispatch(self, inc: Incoming) -> None:
        """Route a new request; a header decoded lazily on the way that turns out to be
        malformed (Require, Contact params, credentials…) is answered 400 naming it."""
        try:
            self._route(inc)
        except SipParseError as exc:
            self.counters["parse_errors"] += 1
            inc.respond(400, f"Bad Request ({exc.reason})")

    def _route(self, inc: Incoming) -> None:
        req = inc.request
        method = req.method
        self.counters[f"requests_{method.lower()}" if method in KNOWN_METHODS else "requests_other"] += 1
        uri = req.uri
        if not uri.is_sip:
            inc.respond(416)
            return
        if method not in ("ACK", "CANCEL"):
            unsupported = [t for t in (*req.option_tags("require"), *req.option_tags("proxy-require")) if t not in SUPPORTED_OPTIONS]
            if unsupported:
                inc.respond(420, headers=[("Unsupported", ", ".join(dict.fromkeys(unsupported)))])
                return
        if req.max_forwards == 0 and method not in ("OPTIONS", "REGISTER"):
            inc.respond(483)
            return
        handler = self.handlers.get(method)
        if method == "OPTIONS" and handler is None:
            self._options(inc)
            return
        if handler is not None:
            handler(inc)
            return
        if not self.is_local_domain(uri.host):
            inc.respond(403, "Forbidden (relaying not allowed)")
        elif method in KNOWN_METHODS:
            inc.respond(405, headers=[("Allow", ", ".join(self.allowed_methods()))])
        else:
            inc.respond(501, headers=[("Allow", ", ".join(self.allowed_methods()))])

    def allowed_methods(self) -> list[str]:
        return ["OPTIONS", *(m for m in ALLOWED_METHODS if m in self.handlers), "ACK", "CANCEL"]

    def capability_headers(self) -> list[tuple[str, str]]:
        return [
            ("Allow", ", ".join(dict.fromkeys(self.allowed_methods()))),
            ("Accept", ", ".join(ACCEPTED_TYPES)),
            ("Supported", ", ".join(SUPPORTED_OPTIONS)),
        ]

    def _options(self, inc: Incoming) -> None:
        uri = inc.request.uri  # a local, not `req.uri.host`: tests/native_shapes.py, property-borrow
        if not self.is_local_domain(uri.host):
            inc.respond(403, "Forbidden (relaying not allowed)")
            return
        inc.respond(200, headers=self.capability_headers())

    def _on_cancel(self, event: CancelReceived) -> None:
        resp = make_response(event.request, 200 if event.invite_tx is not None else 481, to_tag=new_tag())
        self.tl.send_response(event.tx, resp, self.clock())
        if event.invite_tx is not None and event.invite_tx.state is State.PROCEEDING:
            inv = event.invite_tx.request
            self.tl.send_response(event.invite_tx, make_response(inv, 487, to_tag=new_tag()), self.clock())

    # ---- status --------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "transactions": self.tl.active,
            "transactions_completed_waiting": self.tl.lingering,
            "counters": dict(sorted(self.counters.items())),
        }


def stateless_tag(req: Request) -> str:
    """A To tag that is the same for every retransmission of `req` (same branch, Call-ID),
    in every worker process (crc32, not the per-process salted hash())."""
    # Plain statements, not chained property reads inside one f-string: see
    # tests/registrar/test_no_leaks.py for the reference leak this shape was part of.
    via = req.top_via
    cseq = req.cseq
    text = "\x00".join((via.branch or "", req.call_id, str(cseq.number)))
    key = text.encode("utf-8", "surrogateescape")
    return f"s{zlib.crc32(key):x}{zlib.adler32(key):x}"


def owner_key(msg: Request | Response) -> str:
    """What decides which worker owns a message: a REGISTER's AOR (bindings live with
    their AOR), otherwise the Call-ID (a dialog's transactions meet in one worker)."""
    if isinstance(msg, Request) and msg.method == "REGISTER":
        to = msg.to  # a local: tests/native_shapes.py, property-borrow
        return to.uri.aor
    return msg.call_id


def _reason_for(exc: SipParseError) -> str:
    if exc.status != 400:
        return exc.reason
    text = exc.reason.replace("\r", " ").replace("\n", " ")
    return f"Bad Request ({text[:120]})"


_STATELESS_COPY = ("via", "from", "to", "call-id", "cseq")


def stateless_error(data: bytes, status: int, reason: str) -> bytes | None:
    """A best-effort error response for a request too malformed to parse fully.

    Copies the raw Via/From/To/Call-ID/CSeq lines it can find.  Without a Via there is no
    way to route a reply, so it returns None and the request is dropped.
    """
    head = data[:16384].split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.replace("\r\n", "\n").split("\n")
    copied: list[str] = []
    for line in lines[1:]:
        if not line or line[0] in " \t":
            if copied and line and copied[-1].split(":", 1)[0].lower() in _STATELESS_COPY:
                copied[-1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        key = header_key(name.strip())
        if colon and key in _STATELESS_COPY:
            value = value.strip()
            if key == "to" and "tag=" not in value.lower():
                value += f";tag={new_tag()}"
            copied.append(f"{canonical_header_name(key)}: {value}")
    if not any(c.lower().startswith("via:") for c in copied):
        return None
    safe_reason = "".join(ch for ch in reason if ch.isprintable())
    out = [f"SIP/2.0 {status} {safe_reason}", *copied, "Content-Length: 0", "", ""]
    return "\r\n".join(out).encode("utf-8")
