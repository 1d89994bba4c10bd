"""The SIP core: the thin adapter between `transport/` and the sans-I/O user-agent layer.

It holds no SIP policy.  For each message: parse, hand it to the worker that owns it,
validate, stamp Via (RFC 3581), feed `sip.ua.UserAgent`; then "process, then transmit"
as aioquic's asyncio protocol does: send what the UA queued, hand each UA event to the
feature that owns it (features may call back into the UA through this adapter: that only
queues, it never re-enters), send again, and arm one timer.

Two fast paths stay outside the UA because they keep no state: requests a feature answers
statelessly (challenges, OPTIONS: `stateless_when`), and the stateless error for input
too malformed to parse.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from .logs import throttle
from .sip.auth import Credentials
from .sip.errors import SipParseError
from .sip.incoming import Incoming
from .sip.message import (
    Limits,
    Request,
    Response,
    make_response,
    new_tag,
    parse_message,
    validate_request,
    validate_response,
)
from .sip.peer import Peer
from .sip.stateless import stateless_error, stateless_tag
from .sip.transaction import TimerConfig
from .sip.ua import (
    OVERLOADED_REASON,
    DialogInfo,
    RequestReceived,
    SessionTimerConfig,
    UaEvent,
    UserAgent,
)
from .sip.uri import SipUri, aor_user

if TYPE_CHECKING:
    from .workers import Cluster

log = logging.getLogger("vivait_sip.core")

TIMER_GRANULARITY_S = 0.01
KNOWN_METHODS = frozenset(
    ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "MESSAGE", "SUBSCRIBE", "NOTIFY", "REFER", "INFO", "UPDATE", "PRACK", "PUBLISH")
)
SUPPORTED_OPTIONS = ("path", "outbound", "100rel", "timer")
ACCEPTED_TYPES = ("application/sdp",)

Handler = Callable[[Incoming], None]
EventSink = Callable[[UaEvent], None]


class SipCore:
    """Implements `contract.SipService` for the features of one process."""

    def __init__(
        self,
        *,
        send: Callable[[bytes, Peer, int | None], None],
        timers: TimerConfig,
        limits: Limits,
        local: Callable[[Peer], tuple[str, int]],
        domains: Iterable[str] = (),
        user_agent: str | None = "vivait-sip",
        max_transactions: int = 100000,
        max_completed_transactions: int = 50000,
        max_dialogs: int = 100000,
        session_timer: SessionTimerConfig | None = None,
        retry_after_s: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.limits = limits
        self.clock = clock
        self.user_agent = user_agent or None
        self.retry_after_s = retry_after_s
        self.local = local
        self.ua = UserAgent(
            timers=timers,
            local=local,
            user_agent=self.user_agent,
            max_transactions=max_transactions,
            max_completed_transactions=max_completed_transactions,
            max_dialogs=max_dialogs,
            session_timer=session_timer,
            retry_after_s=retry_after_s,
        )
        self.handlers: dict[str, Handler] = {}
        self.owners: dict[str, EventSink] = {}
        self.local_domains: set[str] = {d.lower() for d in domains} | {"localhost"}
        self.counters: Counter[str] = Counter()
        self.started = time.time()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._draining = False
        # Requests a handler answers without keeping state (no transaction, nothing
        # changed), so a transaction would cost memory for 64*T1 and buy nothing.
        self.stateless_when: dict[str, Callable[[Request, Peer], bool]] = {"OPTIONS": self._options_stateless}
        self.cluster: Cluster | None = None
        self.ua.set_handler("OPTIONS", "core")  # answered here unless a feature takes it

    # ---- identity ----------------------------------------------------------------------
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

    def register(self, method: str, handler: Handler, owner: str) -> None:
        """Out-of-dialog `method` requests go to `handler`; their dialogs to `owner`."""
        self.handlers[method] = handler
        self.ua.set_handler(method, owner)

    def set_user_agent(self, value: str | None) -> None:
        """The Server/User-Agent header value (verbatim; empty or None: no header)."""
        self.user_agent = value or None
        self.ua.user_agent = self.user_agent

    def add_owner(self, owner: str, sink: EventSink) -> None:
        """UA events of requests and dialogs owned by `owner` (a feature's name)."""
        self.owners[owner] = sink

    # ---- input -------------------------------------------------------------------------
    def on_message(self, data: bytes, peer: Peer, *, forwarded: bool = False) -> None:
        """Entry point for every received message; never raises.

        `forwarded`: another worker already decided this process owns the message.
        """
        try:
            self._on_message(data, peer, forwarded)
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("event=internal_error peer=%s", peer)
        self._drain()

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
        if isinstance(msg, Response):
            self.counters["responses_in"] += 1
            self._receive(msg, peer)
            return
        self.counters["requests_in"] += 1
        reply_to = self._stamp_via(msg, peer)
        if stateless:
            if self.ua.refuse_new:
                self._shed(msg, reply_to)
                return
            # Answered statelessly (RFC 3261 §8.2.7), as Kamailio's sl does: a
            # retransmission gets its answer regenerated, same To tag included.
            self._dispatch(Incoming(msg, None, reply_to, self, stateless_tag(msg)))
            return
        self._receive(msg, reply_to)

    def _receive(self, msg: Request | Response, peer: Peer) -> None:
        """Into the UA; a header it decodes lazily that turns out malformed (Require,
        RSeq, Session-Expires...) drops the message, as RFC 3261 §18.1.2 and §18.2.1
        allow for what cannot be processed."""
        try:
            self.ua.receive(msg, peer, self.clock())
        except SipParseError as exc:
            self.counters["parse_errors"] += 1
            throttle.log(log, logging.INFO, "malformed_dropped", "event=malformed_dropped peer=%s reason=%r", peer, exc.reason)

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

    def reject_unframeable(self, exc: SipParseError, peer: Peer, head: bytes) -> None:
        """A stream could not be framed (oversized, no Content-Length): answer the bytes
        that failed, if they carry a Via, before the transport closes the connection."""
        self.counters["parse_errors"] += 1
        if not head.lstrip(b"\r\n").startswith(b"SIP/"):
            self._reject_malformed(head, peer, exc)

    def _reject_malformed(self, data: bytes, peer: Peer, exc: SipParseError) -> None:
        """Answer a malformed request statelessly when enough of it is readable to route a reply."""
        resp = stateless_error(data, exc.status, _reason_for(exc))
        if resp is None:
            log.debug("event=malformed_dropped peer=%s reason=%r", peer, exc.reason)
            return
        throttle.log(log, logging.INFO, "malformed_request", "event=malformed_request peer=%s status=%d reason=%r", peer, exc.status, exc.reason)
        self._send_raw(resp, peer)

    # ---- process, then transmit ----------------------------------------------------------
    def _drain(self) -> None:
        """Send what the UA queued and hand out its events until both are empty; a feature
        that calls back (respond, send_request...) only queues more for this loop."""
        if self._draining:
            return
        self._draining = True
        ua = self.ua
        try:
            while True:
                out = ua.messages_to_send()
                for message in out:
                    self._send_raw(message.data, message.peer, message.tx_id)
                event = ua.next_event()
                if event is not None:
                    self._deliver(event)
                elif not out:
                    break
        finally:
            self._draining = False
        self._arm_timer()

    def _deliver(self, event: UaEvent) -> None:
        try:
            if isinstance(event, RequestReceived) and event.dialog_id is None:
                self._dispatch(Incoming(event.request, event.request_id, event.peer, self))
                return
            sink = self.owners.get(event.owner)
            if sink is None:
                self.counters["events_unowned"] += 1
                return
            sink(event)
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("event=internal_error owner=%s kind=%s", event.owner, type(event).__name__)

    def _shed(self, req: Request, peer: Peer) -> None:
        """503 + Retry-After, statelessly: the loop is lagging."""
        self.counters["overload_rejections"] += 1
        if req.method == "ACK":
            return
        resp = make_response(req, 503, OVERLOADED_REASON, headers=[("Retry-After", str(self.retry_after_s))], to_tag=new_tag())
        self._send_raw(resp.to_bytes(), peer)

    def set_shedding(self, on: bool) -> None:
        """Refuse (True) or accept again (False) requests that need a new transaction."""
        self.ua.refuse_new = on

    def _send_raw(self, data: bytes, peer: Peer, tx_id: int | None = None) -> None:
        try:
            self._send(data, peer, tx_id)
            self.counters["messages_out"] += 1
        except Exception as exc:
            self.counters["send_errors"] += 1
            throttle.log(log, logging.INFO, "send_failed", "event=send_failed peer=%s error=%r", peer, str(exc))
            if tx_id is not None:
                self.ua.transport_failed(tx_id, self.clock())

    def transport_failed(self, tx_id: int) -> None:
        """A message of transaction `tx_id` could not be sent (reported after the fact:
        a refused connect, or by the worker holding the connection)."""
        self.ua.transport_failed(tx_id, self.clock())
        self._drain()

    # ---- contract.SipService: what features call -------------------------------------------
    def respond_incoming(
        self, inc: Incoming, status: int, reason: str | None, headers: Iterable[tuple[str, str]], body: bytes
    ) -> None:
        """`Incoming.respond`: through the UA, or straight to the peer when stateless."""
        self.counters[f"responses_out_{status // 100}xx"] += 1
        request_id = inc.request_id
        if request_id is None:
            extra = list(headers)
            if self.user_agent:
                extra.append(("Server", self.user_agent))
            resp = make_response(inc.request, status, reason, to_tag=inc.to_tag, headers=extra, body=body)
            self._send_raw(resp.to_bytes(), inc.peer)
            return
        self.ua.respond(request_id, status, reason, headers=headers, body=body, now=self.clock())
        self._drain()

    def respond(
        self,
        request_id: int,
        status: int,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        reliable: bool = False,
    ) -> int | None:
        self.counters[f"responses_out_{status // 100}xx"] += 1
        result = self.ua.respond(request_id, status, reason, headers=headers, body=body, reliable=reliable, now=self.clock())
        self._drain()
        return result

    def send_request(
        self,
        method: str,
        uri: str | SipUri,
        *,
        owner: str,
        destinations: Sequence[Peer],
        from_: str,
        to: str | None = None,
        call_id: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        credentials: Credentials | None = None,
        auto_ack: bool = True,
        session_expires: int | None = None,
    ) -> int:
        request_id = self.ua.send_request(
            method,
            uri,
            owner=owner,
            destinations=destinations,
            now=self.clock(),
            from_=from_,
            to=to,
            call_id=call_id,
            headers=headers,
            body=body,
            credentials=credentials,
            auto_ack=auto_ack,
            session_expires=session_expires,
        )
        self.counters[f"requests_out_{method.lower()}" if method in KNOWN_METHODS else "requests_out_other"] += 1
        self._drain()
        return request_id

    def send_in_dialog(
        self, dialog_id: int, method: str, *, headers: Iterable[tuple[str, str]] = (), body: bytes = b"", auto_ack: bool = True
    ) -> int:
        request_id = self.ua.send_in_dialog(dialog_id, method, headers=headers, body=body, auto_ack=auto_ack, now=self.clock())
        self._drain()
        return request_id

    def cancel(self, request_id: int, *, reason: str | None = None) -> None:
        self.ua.cancel(request_id, self.clock(), reason=reason)
        self._drain()

    def ack(self, dialog_id: int, *, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> None:
        self.ua.ack(dialog_id, body=body, headers=headers, now=self.clock())
        self._drain()

    def bye(self, dialog_id: int, *, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.ua.bye(dialog_id, self.clock(), headers=headers)
        self._drain()

    def dialog(self, dialog_id: int) -> DialogInfo | None:
        return self.ua.dialog(dialog_id)

    def local_address(self, peer: Peer) -> tuple[str, int]:
        return self.local(peer)

    def contact_for(self, peer: Peer, user: str | None = None) -> str:
        """Our Contact URI towards `peer` (advertised address of the right listener)."""
        host, port = self.local(peer)
        host = f"[{host}]" if ":" in host else host
        userpart = f"{user}@" if user else ""
        scheme = "sips" if peer.transport in ("tls", "wss") else "sip"
        transport = "" if peer.transport == "udp" else f";transport={peer.transport}"
        return f"<{scheme}:{userpart}{host}:{port}{transport}>"

    # ---- the one timer -------------------------------------------------------------------
    def _arm_timer(self) -> None:
        """Wake up for the next UA timer, on a TIMER_GRANULARITY_S grid.

        An armed wake-up at or before the deadline is kept (it re-arms when it fires), and
        the grid makes one wake-up serve every timer due in the same slot: under load
        thousands of Timer J expiries a second cost a few dozen wake-ups, not thousands.
        """
        deadline = self.ua.get_timer()
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
            self.ua.handle_timer(self.clock())
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("event=timer_error")
        self._drain()

    # ---- dispatch of new out-of-dialog requests ---------------------------------------------
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
        unsupported = [t for t in (*req.option_tags("require"), *req.option_tags("proxy-require")) if t not in SUPPORTED_OPTIONS]
        if unsupported:
            inc.respond(420, headers=[("Unsupported", ", ".join(dict.fromkeys(unsupported)))])
            return
        if req.max_forwards == 0 and method not in ("OPTIONS", "REGISTER"):
            inc.respond(483)
            return
        handler = self.handlers.get(method)
        if handler is not None:
            handler(inc)
        elif method == "OPTIONS":
            self._options(inc)
        else:  # reached only by stateless dispatch: the UA answers the rest itself
            inc.respond(405, headers=[("Allow", ", ".join(self.allowed_methods()))])

    def allowed_methods(self) -> list[str]:
        return list(dict.fromkeys(["OPTIONS", *sorted(self.handlers), "ACK", "BYE", "CANCEL", "INVITE", "PRACK", "UPDATE"]))

    def capability_headers(self) -> list[tuple[str, str]]:
        return [
            ("Allow", ", ".join(self.allowed_methods())),
            ("Accept", ", ".join(ACCEPTED_TYPES)),
            ("Supported", ", ".join(SUPPORTED_OPTIONS)),
        ]

    def _options_stateless(self, req: Request, peer: Peer) -> bool:
        """An OPTIONS outside a dialog that no feature took over is answered statelessly."""
        to = req.to  # locals, not `req.to.tag`: tests/native_shapes.py, property-borrow
        tag = to.tag
        return "OPTIONS" not in self.handlers and tag is None

    def _options(self, inc: Incoming) -> None:
        uri = inc.request.uri  # a local, not `req.uri.host`: tests/native_shapes.py, property-borrow
        if not self.is_local_domain(uri.host):
            inc.respond(403, "Forbidden (relaying not allowed)")
            return
        inc.respond(200, headers=self.capability_headers())

    # ---- status --------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        sizes = self.ua.table_sizes()
        counters = self.counters.copy()
        counters["overload_rejections"] += self.ua.overload_rejections
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "transactions": self.ua.active_transactions,
            "transactions_completed_waiting": self.ua.lingering_transactions,
            "dialogs": sizes["dialogs"],
            "counters": dict(sorted(counters.items())),
        }


def owner_key(msg: Request | Response) -> str:
    """What decides which worker owns a message: a REGISTER's AOR user part (all of a
    user's bindings, whatever the domain, live in one worker: a call finds them with one
    message), otherwise the Call-ID (a dialog's transactions meet in one worker)."""
    if isinstance(msg, Request) and msg.method == "REGISTER":
        to = msg.to  # a local: tests/native_shapes.py, property-borrow
        to_uri = to.uri
        return aor_user(to_uri.aor)
    return msg.call_id


def _reason_for(exc: SipParseError) -> str:
    if exc.status != 400:
        return exc.reason
    text = exc.reason.replace("\r", " ").replace("\n", " ")
    return f"Bad Request ({text[:120]})"
