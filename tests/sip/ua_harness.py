"""In-memory network for `UserAgent` scenarios (like aioquic's client_and_server or h11's
ConnectionPair): a fake clock, a fake wire, no sockets, no sleeping.

* `Net.add("alice")` makes a node: a `UserAgent` at its own address; `Net.proxy(...)` adds
  a stateless forking proxy in front of several nodes.
* Every `SendMessage` is parsed back from its bytes (`parse_message` + `validate_*`) and
  delivered after `latency`; requests get their Via stamped as the real adapter does
  (received/rport, RFC 3581) and responses go where that says.
* Rules pick messages to drop, duplicate or delay (reorder); `fail(node)` makes sends to a
  node fail at transport level (the UA hears `transport_failed` at once).
* `run(until=...)` advances the clock event by event: deliveries, scheduled actions (`at`)
  and each UA's timer.  `run()` without a limit runs until nothing is left to happen.

Each node records its events in `events`; a `handler(node, event)` scripts the TU.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from vivait_sip.sip.message import (
    Request,
    Response,
    parse_message,
    validate_request,
    validate_response,
)
from vivait_sip.sip.peer import Peer
from vivait_sip.sip.transaction import TimerConfig
from vivait_sip.sip.ua import UaEvent, UserAgent

SDP_OFFER = b"v=0\r\no=alice 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
SDP_ANSWER = b"v=0\r\no=bob 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"
SDP = [("Content-Type", "application/sdp")]


class Wire:
    """One message on the wire; `msg` is a parsed copy for matching and asserting only."""

    def __init__(self, sent_at: float, src: str, dst: str, data: bytes, transport: str, tx_id: int | None) -> None:
        self.sent_at = sent_at
        self.src = src
        self.dst = dst
        self.data = data
        self.transport = transport
        self.tx_id = tx_id
        self._msg: Request | Response | None = None

    @property
    def msg(self) -> Request | Response:
        if self._msg is None:
            self._msg = parse_message(self.data)
        return self._msg

    @property
    def method(self) -> str:
        """Request method, or the CSeq method of a response."""
        return self.msg.method if isinstance(self.msg, Request) else self.msg.cseq.method

    @property
    def status(self) -> int | None:
        return self.msg.status if isinstance(self.msg, Response) else None

    @property
    def line(self) -> str:
        if isinstance(self.msg, Request):
            return f"{self.src}->{self.dst} {self.msg.method}"
        return f"{self.src}->{self.dst} {self.msg.status} {self.msg.cseq.method}"


Match = Callable[[Wire], bool]


def match(
    *,
    src: str | None = None,
    dst: str | None = None,
    method: str | None = None,
    status: int | None = None,
    request: bool | None = None,
) -> Match:
    """A rule predicate: `method` is the request method or a response's CSeq method."""

    def check(w: Wire) -> bool:
        return (
            (src is None or w.src == src)
            and (dst is None or w.dst == dst)
            and (method is None or w.method == method)
            and (status is None or w.status == status)
            and (request is None or (w.status is None) == request)
        )

    return check


@dataclass
class _Rule:
    match: Match
    action: str  # "drop", "dup", "delay"
    count: int | None
    delay: float = 0.0


def stamp_via(req: Request, peer: Peer) -> Peer:
    """What the adapter does to a received request (SipCore._stamp_via): received/rport
    on the top Via, and the peer responses go to."""
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


class Endpoint:
    """Something with an address on the fake network."""

    def __init__(self, net: Net, name: str, host: str, port: int, transport: str) -> None:
        self.net = net
        self.name = name
        self.host = host
        self.port = port
        self.transport = transport

    @property
    def peer(self) -> Peer:
        """How others reach this endpoint."""
        return Peer(self.transport, self.host, self.port)

    def deliver(self, wire: Wire) -> None:
        raise NotImplementedError


class Node(Endpoint):
    """A UserAgent at host:port; `events` logs what its TU saw."""

    def __init__(self, net: Net, name: str, host: str, port: int, transport: str, **ua_kwargs: object) -> None:
        super().__init__(net, name, host, port, transport)
        self.ua = UserAgent(timers=net.timers, local=lambda peer: (host, port), **ua_kwargs)  # type: ignore[arg-type]
        self.events: list[UaEvent] = []
        self.keep_events = True  # bulk runs turn it off and count in their handler instead
        self.handler: Callable[[Node, UaEvent], None] | None = None

    def of(self, cls: type) -> list:
        """Events of one class, in order."""
        return [e for e in self.events if isinstance(e, cls)]

    def kinds(self) -> list[str]:
        """Event classes in order, for asserting sequences."""
        return [type(e).__name__ for e in self.events]

    def deliver(self, wire: Wire) -> None:
        msg = parse_message(wire.data)
        source = Peer(wire.transport, self.net.endpoint(wire.src).host, self.net.endpoint(wire.src).port)
        if isinstance(msg, Request):
            validate_request(msg)
            self.ua.receive(msg, stamp_via(msg, source), self.net.now)
        else:
            validate_response(msg)
            self.ua.receive(msg, source, self.net.now)
        self.net.flush(self)

    @property
    def uri(self) -> str:
        return f"sip:{self.name}@{self.host}:{self.port}"

    @property
    def aor(self) -> str:
        return f"<sip:{self.name}@example.com>"

    def invite(self, to: Endpoint, **kwargs: object) -> int:
        """Send an INVITE with an SDP offer to `to` (a node or a proxy)."""
        target = to.uri if isinstance(to, Node) else f"sip:callee@{to.host}:{to.port}"
        args: dict[str, object] = {
            "owner": "tu", "from_": self.aor, "headers": SDP, "body": SDP_OFFER, "destinations": [to.peer]
        }
        args.update(kwargs)
        request_id = self.ua.send_request("INVITE", target, now=self.net.now, **args)  # type: ignore[arg-type]
        self.net.flush(self)
        return request_id

    def act(self, fn: Callable[[UserAgent, float], object]) -> object:
        """Call the UA as the TU would, then transmit."""
        result = fn(self.ua, self.net.now)
        self.net.flush(self)
        return result


class Proxy(Endpoint):
    """A stateless forking proxy (RFC 3261 §16.11): a request whose Request-URI names one of
    its nodes goes there; any other is forked to every target.  Responses follow the Vias."""

    def __init__(
        self, net: Net, name: str, host: str, port: int, targets: list[Node], record_route: bool
    ) -> None:
        super().__init__(net, name, host, port, "udp")
        self.targets = targets
        self.record_route = record_route

    def deliver(self, wire: Wire) -> None:
        msg = parse_message(wire.data)
        src = self.net.endpoint(wire.src)
        if isinstance(msg, Response):
            msg.pop_via()
            via = msg.top_via
            host, port = via.response_address()
            self.net.send_raw(self, self.net.endpoint_at(host, port), msg.to_bytes(), None)
            return
        stamp_via(msg, Peer(wire.transport, src.host, src.port))
        routes = msg.headers.get_all("route")
        if routes and f"{self.host}:{self.port}" in routes[0]:
            msg.headers.pop_first_value("route")
        uri = msg.uri
        direct = [n for n in self.targets if n.host == uri.host and n.port == uri.port]
        branch = msg.top_via.branch or "z9hG4bK"
        for i, target in enumerate(direct or self.targets):
            copy = parse_message(msg.to_bytes())
            assert isinstance(copy, Request)
            if self.record_route and copy.method == "INVITE" and not copy.to.tag:
                copy.add_record_route(f"sip:{self.host}:{self.port};lr")
            copy.push_via(f"SIP/2.0/UDP {self.host}:{self.port};branch={branch}-{i}")
            self.net.send_raw(self, target, copy.to_bytes(), None)

    @property
    def uri(self) -> str:
        return f"sip:callee@{self.host}:{self.port}"


class Net:
    """The fake network and clock."""

    def __init__(
        self, *, t1: float = 0.5, t2: float = 4.0, t4: float = 5.0, latency: float = 0.01, record: bool = True
    ) -> None:
        self.timers = TimerConfig(t1, t2, t4)
        self.record = record  # keep `sent`/`delivered`/`dropped` (bulk runs turn it off)
        self.latency = latency
        self.now = 0.0
        self.endpoints: dict[str, Endpoint] = {}
        self.nodes: list[Node] = []
        self._queue: list[tuple[float, int, Wire]] = []
        self._actions: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._rules: list[_Rule] = []
        self._failing: set[str] = set()
        self.sent: list[Wire] = []  # everything put on the wire, dropped or not
        self.delivered: list[Wire] = []
        self.dropped: list[Wire] = []
        self._hosts = itertools.count(1)

    # ---- topology -----------------------------------------------------------------------
    def add(self, name: str, *, transport: str = "udp", port: int = 5060, **ua_kwargs: object) -> Node:
        node = Node(self, name, f"10.0.0.{next(self._hosts)}", port, transport, **ua_kwargs)
        self.endpoints[name] = node
        self.nodes.append(node)
        return node

    def proxy(self, name: str, targets: list[Node], *, record_route: bool = False) -> Proxy:
        proxy = Proxy(self, name, f"10.0.0.{next(self._hosts)}", 5060, targets, record_route)
        self.endpoints[name] = proxy
        return proxy

    def endpoint(self, name: str) -> Endpoint:
        return self.endpoints[name]

    def endpoint_at(self, host: str, port: int) -> Endpoint | None:
        for endpoint in self.endpoints.values():
            if endpoint.host == host and endpoint.port == port:
                return endpoint
        return None

    # ---- faults -------------------------------------------------------------------------
    def drop(self, rule: Match, count: int | None = 1) -> None:
        self._rules.append(_Rule(rule, "drop", count))

    def duplicate(self, rule: Match, count: int | None = 1) -> None:
        self._rules.append(_Rule(rule, "dup", count))

    def delay(self, rule: Match, extra: float, count: int | None = 1) -> None:
        """Hold matching messages `extra` seconds longer (later ones overtake them)."""
        self._rules.append(_Rule(rule, "delay", count, extra))

    def fail(self, endpoint: Endpoint, failing: bool = True) -> None:
        """Sends to `endpoint` fail at transport level (TCP refused, WebSocket closed)."""
        if failing:
            self._failing.add(endpoint.name)
        else:
            self._failing.discard(endpoint.name)

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._actions, (when, next(self._seq), fn))

    # ---- the wire -----------------------------------------------------------------------
    def flush(self, node: Node) -> None:
        """Transmit what `node` queued and hand its events to its handler, until quiet."""
        ua = node.ua
        while True:
            out = ua.messages_to_send()
            for message in out:
                dst = self.endpoint_at(message.peer.host, message.peer.port)
                if dst is None or dst.name in self._failing:
                    if message.tx_id is not None and (dst is not None or message.peer.reliable):
                        ua.transport_failed(message.tx_id, self.now)
                    continue
                self.send_raw(node, dst, message.data, message.tx_id, message.peer.transport)
            event = ua.next_event()
            if event is not None:
                if node.keep_events:
                    node.events.append(event)
                if node.handler is not None:
                    node.handler(node, event)
                continue
            if not out:
                return

    def send_raw(
        self,
        src: Endpoint,
        dst: Endpoint | None,
        data: bytes,
        tx_id: int | None,
        transport: str = "udp",
    ) -> None:
        if dst is None:
            return
        wire = Wire(self.now, src.name, dst.name, data, transport, tx_id)
        if self.record:
            self.sent.append(wire)
        copies = 1
        delay = 0.0
        for rule in self._rules:
            if rule.count == 0 or not rule.match(wire):
                continue
            if rule.count is not None:
                rule.count -= 1
            if rule.action == "drop":
                if self.record:
                    self.dropped.append(wire)
                return
            if rule.action == "dup":
                copies += 1
            else:
                delay += rule.delay
        for _ in range(copies):
            heapq.heappush(self._queue, (self.now + self.latency + delay, next(self._seq), wire))

    # ---- the clock ----------------------------------------------------------------------
    def _next_time(self) -> float | None:
        times = []
        if self._queue:
            times.append(self._queue[0][0])
        if self._actions:
            times.append(self._actions[0][0])
        for node in self.nodes:
            t = node.ua.get_timer()
            if t is not None:
                times.append(t)
        return min(times) if times else None

    def run(self, until: float | None = None, *, duration: float | None = None, max_steps: int = 200_000) -> None:
        """Advance the clock through every delivery, action and timer up to `until` (or
        `now + duration`); with neither, until nothing is left to happen."""
        if duration is not None:
            until = self.now + duration
        for node in self.nodes:
            self.flush(node)
        for _ in range(max_steps):
            t = self._next_time()
            if t is None or (until is not None and t > until):
                break
            self.now = max(self.now, t)
            while self._queue and self._queue[0][0] <= self.now:
                wire = heapq.heappop(self._queue)[2]
                if self.record:
                    self.delivered.append(wire)
                self.endpoint(wire.dst).deliver(wire)
            while self._actions and self._actions[0][0] <= self.now:
                fn = heapq.heappop(self._actions)[2]
                fn()
                for node in self.nodes:
                    self.flush(node)
            for node in self.nodes:
                t = node.ua.get_timer()
                if t is not None and t <= self.now:
                    node.ua.handle_timer(self.now)
                    self.flush(node)
        else:
            raise AssertionError("the scenario did not settle")
        if until is not None:
            self.now = max(self.now, until)

    def lines(self, *, delivered: bool = True) -> list[str]:
        """`src->dst METHOD` / `src->dst STATUS METHOD` for every message, in order."""
        return [w.line for w in (self.delivered if delivered else self.sent)]

    def assert_idle(self) -> None:
        """Every UA's tables drained: nothing left behind by any scenario."""
        for node in self.nodes:
            sizes = node.ua.table_sizes()
            assert not any(sizes.values()), f"{node.name}: {sizes}"


def raw_request(
    method: str,
    *,
    uri: str = "sip:bob@10.0.0.2:5060",
    via: str = "10.0.0.1:5060",
    branch: str = "z9hG4bKraw1",
    from_tag: str = "ft1",
    to_tag: str | None = None,
    call_id: str = "raw-call-1",
    cseq: int = 1,
    headers: str = "",
    body: bytes = b"",
) -> bytes:
    """A request as some other UA would send it (to inject with `Net.send_raw`)."""
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    head = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:carol@example.com>;tag={from_tag}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:carol@10.0.0.1:5060>\r\n"
        f"{headers}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Callee:
    """Scripts a node as a callee: a new INVITE gets `provisional` (0: none) at once and
    `status` after `answer_after` seconds (None: the test answers); in-dialog requests
    get 200 (with SDP for a re-INVITE).  Remembers request and dialog ids."""

    def __init__(
        self,
        node: Node,
        *,
        provisional: int = 180,
        status: int | None = 200,
        answer_after: float = 1.0,
        reliable: bool = False,
        answer_in_dialog: bool = True,
    ) -> None:
        self.node = node
        self.provisional = provisional
        self.status = status
        self.answer_after = answer_after
        self.reliable = reliable
        self.answer_in_dialog = answer_in_dialog
        self.invites: list[int] = []
        self.dialogs: list[int] = []
        node.ua.set_handler("INVITE", "callee")
        node.handler = self

    def __call__(self, node: Node, event: UaEvent) -> None:
        from vivait_sip.sip.ua import RequestReceived

        if not isinstance(event, RequestReceived):
            return
        net = node.net
        method = event.request.method
        if event.dialog_id is None and method == "INVITE":
            request_id = event.request_id
            self.invites.append(request_id)
            if self.provisional:
                dialog_id = node.ua.respond(request_id, self.provisional, reliable=self.reliable, now=net.now)
                if dialog_id is not None and dialog_id not in self.dialogs:
                    self.dialogs.append(dialog_id)
            if self.status is not None:
                net.at(net.now + self.answer_after, lambda: self.answer(request_id))
        elif event.dialog_id is not None and self.answer_in_dialog and method != "PRACK":
            body = SDP_ANSWER if method == "INVITE" else b""
            node.ua.respond(event.request_id, 200, headers=SDP if body else (), body=body, now=net.now)

    def answer(self, request_id: int, status: int | None = None) -> int | None:
        status = status or self.status or 200
        body = SDP_ANSWER if status < 300 else b""
        dialog_id = self.node.act(
            lambda ua, now: ua.respond(request_id, status, headers=SDP if body else (), body=body, now=now)
        )
        assert dialog_id is None or isinstance(dialog_id, int)
        if dialog_id is not None and dialog_id not in self.dialogs:
            self.dialogs.append(dialog_id)
        return dialog_id
