"""The B2BUA's call logic on the in-memory network (tests/sip/ua_harness.py): a "pbx" node
whose UA events drive `vivait_sip.b2bua.call.Call`, exactly as the feature does, with a
fake clock.  Phones are plain UA nodes scripted by the tests."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ua_harness import Net, Node

from vivait_sip.b2bua.call import Call, Dest, MediaDone, MediaSeam, OutLeg, PassThrough
from vivait_sip.sip.auth import Credentials
from vivait_sip.sip.peer import Peer
from vivait_sip.sip.ua import DialogInfo, RequestReceived, ResponseReceived, UaEvent
from vivait_sip.sip.uri import SipUri


class NodeSip:
    """`contract.SipService` over a harness node's UA (the harness transmits after each
    handler and action, as the adapter does)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    @property
    def now(self) -> float:
        return self.node.net.now

    def send_request(self, method: str, uri: str | SipUri, *, owner: str, destinations: Sequence[Peer], from_: str,
                     to: str | None = None, call_id: str | None = None, headers: Iterable[tuple[str, str]] = (),
                     body: bytes = b"", credentials: Credentials | None = None, auto_ack: bool = True,
                     session_expires: int | None = None) -> int:
        return self.node.ua.send_request(
            method, uri, owner=owner, destinations=destinations, now=self.now, from_=from_, to=to, call_id=call_id,
            headers=headers, body=body, credentials=credentials, auto_ack=auto_ack, session_expires=session_expires,
        )

    def send_in_dialog(self, dialog_id: int, method: str, *, headers: Iterable[tuple[str, str]] = (),
                       body: bytes = b"", auto_ack: bool = True) -> int:
        return self.node.ua.send_in_dialog(dialog_id, method, headers=headers, body=body, auto_ack=auto_ack, now=self.now)

    def respond(self, request_id: int, status: int, reason: str | None = None, *,
                headers: Iterable[tuple[str, str]] = (), body: bytes = b"", reliable: bool = False) -> int | None:
        return self.node.ua.respond(request_id, status, reason, headers=headers, body=body, reliable=reliable, now=self.now)

    def cancel(self, request_id: int, *, reason: str | None = None) -> None:
        self.node.ua.cancel(request_id, self.now, reason=reason)

    def ack(self, dialog_id: int, *, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> None:
        self.node.ua.ack(dialog_id, body=body, headers=headers, now=self.now)

    def bye(self, dialog_id: int, *, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.node.ua.bye(dialog_id, self.now, headers=headers)

    def dialog(self, dialog_id: int) -> DialogInfo | None:
        return self.node.ua.dialog(dialog_id)

    def contact_for(self, peer: Peer, user: str | None = None) -> str:
        return f"<sip:{user + '@' if user else ''}{self.node.host}:{self.node.port}>"

    def local_address(self, peer: Peer) -> tuple[str, int]:
        return self.node.host, self.node.port


@dataclass
class _Timer:
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Pbx:
    """The pbx node and its calls; `route(call)` (set by the test) decides who rings."""

    net: Net
    node: Node
    route: Callable[[Call], None] = lambda call: None
    owner: str = "b2bua"
    media: MediaSeam = field(default_factory=PassThrough)
    media_delay: float = 0.05  # an awaitable media step completes this long after it starts
    calls: list[Call] = field(default_factory=list)
    ended_calls: list[Call] = field(default_factory=list)
    started_legs: list[OutLeg] = field(default_factory=list)
    ended_legs: list[OutLeg] = field(default_factory=list)
    redirects: list[list[SipUri]] = field(default_factory=list)
    unowned: list[UaEvent] = field(default_factory=list)
    holds: list[tuple[str, str, bool]] = field(default_factory=list)  # hold_changed: (call, side, held)
    media_stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # media_released: call -> by party
    full_trunks: set[str] = field(default_factory=set)  # claim_trunk refuses these (at max_calls elsewhere)
    _by_request: dict[int, Call] = field(default_factory=dict)
    _by_dialog: dict[int, Call] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.sip = NodeSip(self.node)
        self.node.ua.set_handler("INVITE", self.owner)
        self.node.handler = self.handle

    # CallEnv ------------------------------------------------------------------------------
    def now(self) -> float:
        return self.net.now

    def new_call_id(self) -> str:
        return f"out-{next(self._ids)}@pbx"

    def later(self, delay: float, fn: Callable[[], None]) -> _Timer:
        timer = _Timer()
        self.net.at(self.net.now + delay, lambda: None if timer.cancelled else fn())
        return timer

    def await_media(self, call: Call, work: Awaitable[Any], done: MediaDone) -> None:
        """Run the step on the fake clock: `media_delay` later the coroutine runs to its
        end at once (the fake backends never really wait)."""
        self.net.at(self.net.now + self.media_delay, lambda: _finish(work, done))

    def bind(self, call: Call, *, request_id: int | None = None, dialog_id: int | None = None) -> None:
        if request_id is not None:
            self._by_request[request_id] = call
        if dialog_id is not None:
            self._by_dialog[dialog_id] = call

    def hold_changed(self, call: Call, side: str, held: bool) -> None:
        self.holds.append((call.call_uuid, side, held))

    def media_released(self, call: Call, stats: dict[str, Any]) -> None:
        self.media_stats[call.call_uuid] = stats

    def claim_trunk(self, call: Call, dest: Dest) -> bool:
        return dest.trunk not in self.full_trunks

    def release_trunk(self, call: Call, dest: Dest) -> None:
        pass

    def leg_started(self, call: Call, leg: OutLeg) -> None:
        self.started_legs.append(leg)

    def leg_ended(self, call: Call, leg: OutLeg) -> None:
        self.ended_legs.append(leg)

    def redirect(self, call: Call, targets: list[SipUri]) -> None:
        self.redirects.append(targets)
        self.route(call)

    def ended(self, call: Call) -> None:
        self.ended_calls.append(call)

    # UA events, as the feature dispatches them -------------------------------------------------
    def handle(self, node: Node, event: UaEvent) -> None:
        if isinstance(event, RequestReceived) and event.dialog_id is None and event.request.method == "INVITE":
            req = event.request
            call = Call(self, event.request_id, req, event.peer, call_uuid=f"call-{len(self.calls) + 1}",
                        caller=req.from_.uri.user or "", callee=req.uri.user or "")
            self.calls.append(call)
            self.route(call)
            return
        dialog_id = getattr(event, "dialog_id", None)
        call = self._by_dialog.get(dialog_id) if dialog_id is not None else None
        if call is None:
            call = self._by_request.get(getattr(event, "request_id", -1))
        if call is None:
            self.unowned.append(event)
            if isinstance(event, ResponseReceived) and event.dialog_id is not None and 200 <= event.response.status < 300:
                self.sip.bye(event.dialog_id)
            return
        call.on_event(event)


def _finish(work: Awaitable[Any], done: MediaDone) -> None:
    coro = work.__await__()
    try:
        coro.send(None)
    except StopIteration as stop:
        done(stop.value, None)
        return
    except Exception as exc:
        done(None, exc)
        return
    raise AssertionError("a harness media step awaited something real (use a fake backend)")


def dest_to(node: Node, pbx: Pbx, *, label: str | None = None, trunk: str | None = None) -> Dest:
    return Dest(
        uri=f"sip:{node.name}@{node.host}:{node.port}",
        destinations=(node.peer,),
        to=f"<sip:{node.name}@pbx.example>",
        from_="<sip:caller@pbx.example>",
        label=label or node.name,
        trunk=trunk,
    )
