"""A call: one inbound (UAS) leg bridged to one or more outbound (UAC) legs.

Pure logic over the user-agent layer's events: nothing here reads a clock, touches a
socket or awaits.  The feature (`feature.py`) does the asynchronous work — authentication,
routing, mdflow admission, locating contacts, resolving trunks — and hands the call its
outcome (`ring`, `fail`, `queued`); every UA event of the call's requests and dialogs
comes back through `on_event`.  The in-memory harness (tests/b2bua) drives the same
class with a fake clock.

Each leg has its own Call-ID (minted to hash to this worker), tags and CSeq space; the
UA layer does each leg's transactions, PRACK, session timers and digest.  The bridge
relays what crosses: provisional responses (180; 183 with its SDP), the final response,
CANCEL, BYE, re-INVITE / UPDATE offer-answer, INFO, and the ACK of a late offer.

Every SDP crosses through `env.media` (`MediaSeam`): the identity by default, a media
backend's rewriting for an anchored call (docs/media.md).  The seam answers at once
(bytes) or later (an awaitable, run by `env.await_media`): then the message carrying
that SDP is held until the rewritten SDP comes, and media steps run one at a time in
the order they arose, so the relay keeps SIP's order.  A failed step never leaves a
broken call: a failed first offer answers the caller 503, a failed answer ends the
call (503 to a caller not yet answered), a failed re-offer answers that request 503.

Transfers (transfer.py) use two seams: `Call.transfer` (a `TransferHook` consulted when a
dialog ends mid-transfer; `snapshot` says "transferring") and `TransferCall`, a subclass
whose caller is a party already in a dialog, overriding `ring`, `hangup`, `_provisional`,
`_answer_caller`, `_connect_caller` and `_on_dialog_ended`: keep their signatures.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from ..contract import SipService
from ..sip.auth import Credentials
from ..sip.message import Request, Response
from ..sip.peer import Peer
from ..sip.ua import (
    AckReceived,
    DialogEnded,
    RequestCancelled,
    RequestFailed,
    RequestPending,
    RequestReceived,
    ResponseReceived,
    UaError,
    UaEvent,
)
from ..sip.uri import SipUri

COMPLETED_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'
# In-dialog requests relayed to the other leg (and their answer relayed back).
RELAYED_METHODS = frozenset(("INVITE", "UPDATE", "INFO", "MESSAGE"))
# Headers copied from one leg's request to the other's.
_RELAYED_HEADERS = ("content-type", "reason", "info-package", "recv-info")


@dataclass(frozen=True, slots=True)
class Dest:
    """One outbound attempt: whom to call and how."""

    uri: str  # Request-URI
    destinations: tuple[Peer, ...]  # next hops in RFC 3263 order (a phone: the flow it registered over)
    to: str  # To header
    from_: str  # From header (our caller identity towards this leg)
    label: str  # what was dialled on this leg (user, extension, number), for the CDR
    headers: tuple[tuple[str, str], ...] = ()  # Route (Path), P-Asserted-Identity, Privacy...
    credentials: Credentials | None = None  # a trunk that challenges us
    trunk: str | None = None


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class MediaSeam(Protocol):
    """Where SDP crosses the bridge (`leg`: the side the SDP goes to, "caller" or
    "callee").  The SDP to pass on comes back at once (bytes) or as an awaitable (an
    anchored call's media backend request; an exception fails that step).  `release`:
    the call is over (an awaitable to run, or None)."""

    def offer(self, call: Call, leg: str, sdp: bytes) -> bytes | Awaitable[bytes]: ...

    def answer(self, call: Call, leg: str, sdp: bytes) -> bytes | Awaitable[bytes]: ...

    def release(self, call: Call) -> Awaitable[object] | None: ...


class PassThrough:
    """SDP unchanged: phones on one network talk RTP end to end."""

    def offer(self, call: Call, leg: str, sdp: bytes) -> bytes:
        return sdp

    def answer(self, call: Call, leg: str, sdp: bytes) -> bytes:
        return sdp

    def release(self, call: Call) -> None:
        return None


MediaDone = Callable[[Any, BaseException | None], None]


class CallEnv(Protocol):
    """What a call needs from its feature."""

    @property
    def sip(self) -> SipService: ...

    @property
    def owner(self) -> str: ...

    @property
    def media(self) -> MediaSeam: ...

    def now(self) -> float: ...

    def new_call_id(self) -> str: ...

    def later(self, delay: float, fn: Callable[[], None]) -> Cancellable: ...

    def await_media(self, call: Call, work: Awaitable[Any], done: MediaDone) -> None:
        """Run a media step (an awaitable from the seam), then `done(result, None)` or
        `done(None, error)`: the feature as a task on its loop, the harness on its clock."""
        ...

    def bind(self, call: Call, *, request_id: int | None = None, dialog_id: int | None = None) -> None:
        """Route the UA events of this request or dialog to `call.on_event`."""
        ...

    def claim_trunk(self, call: Call, dest: Dest) -> bool:
        """One of the node's call slots on `dest`'s trunk, before its INVITE leaves (True
        when it has no trunk); False: the trunk is at `max_calls`."""
        ...

    def release_trunk(self, call: Call, dest: Dest) -> None:
        """Give back a slot `claim_trunk` took for an INVITE that could not be sent."""
        ...

    def leg_started(self, call: Call, leg: OutLeg) -> None:
        """An outbound leg was placed (its trunk slot, claimed just before, is now the leg's)."""
        ...

    def leg_ended(self, call: Call, leg: OutLeg) -> None:
        """An outbound leg is over (trunk accounting, failure reporting)."""
        ...

    def redirect(self, call: Call, targets: list[SipUri]) -> None:
        """A callee answered 3xx: route these targets (the feature calls `ring` again)."""
        ...

    def ended(self, call: Call) -> None:
        """The call is over: write its CDR, forget it."""
        ...

    def hold_changed(self, call: Call, side: str, held: bool) -> None:
        """`side` ("caller"/"callee") put the call on hold (`held`) or took it off: its
        re-INVITE or UPDATE was answered 2xx and relayed (music on hold starts, stops)."""
        ...

    def media_released(self, call: Call, stats: dict[str, Any]) -> None:
        """The call's media session was deleted after the call ended: `stats` is what the
        relay received from each party (packets, loss, jitter), for the call's CDR."""
        ...


class TransferHook(Protocol):
    """A transfer in progress on a call (transfer.py); `Call.snapshot` shows
    "transferring" while one is set."""

    def dialog_ended(self, call: Call, event: DialogEnded) -> bool:
        """One of the call's dialogs ended during the transfer.  True: the transfer deals
        with what is left (the other party goes on in another call, it must not be hung
        up here); False: the call ends as usual."""
        ...


class CallState(StrEnum):
    ROUTING = "routing"  # authenticated, being routed / admitted
    QUEUED = "queued"  # waiting in an mdflow DNIS queue
    RINGING = "ringing"  # outbound legs placed
    ANSWERED = "answered"
    ENDED = "ended"


class LegState(StrEnum):
    TRYING = "trying"
    EARLY = "early"
    ANSWERED = "answered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ENDED = "ended"


_leg_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class OutLeg:
    dest: Dest
    request_id: int
    call_id: str
    started_at: float
    leg_id: str = field(default_factory=lambda: f"leg{next(_leg_ids)}")
    state: LegState = LegState.TRYING
    status: int | None = None
    cause: str | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    dialogs: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _Relay:
    """An in-dialog request we forwarded to the other leg, to answer when it answers."""

    incoming: int  # request id to answer
    from_inbound: bool  # the request came from the caller's leg
    method: str
    late_offer: bool  # a re-INVITE without SDP: the ACK carries the answer across
    hold: bool | None = None  # an offer that holds (True) or resumes (False) the other side


class Call:
    """One call; see the module docstring."""

    def __init__(
        self,
        env: CallEnv,
        request_id: int,
        request: Request,
        peer: Peer,
        *,
        call_uuid: str,
        caller: str,
        callee: str,
        user: str | None = None,
        trunk: str | None = None,
        did: str | None = None,
        ring_s: float = 60.0,
        max_redirects: int = 3,
    ) -> None:
        self.env = env
        self.request_id = request_id
        self.request = request
        self.peer = peer
        self.call_uuid = call_uuid
        self.caller = caller
        self.callee = callee
        self.user = user
        self.trunk = trunk
        self.did = did
        self.ring_s = ring_s
        self.redirects_left = max_redirects
        self.state = CallState.ROUTING
        self.started_at = env.now()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.rule: str | None = None
        self.flow: str | None = None
        self.flow_outcome: str | None = None
        self.callee_user: str | None = None
        self.linked_to: str | None = None
        self.legs: list[OutLeg] = []
        self.failover: list[list[Dest]] = []  # groups still to try
        self.placing: tuple[Dest, ...] = ()  # the group being placed (the media seam reads where it goes)
        self.in_dialog: int | None = None  # the caller's dialog (once we answered or sent 18x)
        self.out_dialog: int | None = None  # the winning callee dialog
        self.winner: OutLeg | None = None
        self.final_status: int | None = None  # what the caller got
        self.cancelled = False
        self.hangup_side = "system"
        self.hangup_cause = ""
        self.held: set[str] = set()  # "caller" / "callee" when that side put the call on hold
        self.provisional_sent = 0  # status of the last provisional relayed to the caller
        self.early_sdp_from: OutLeg | None = None
        self.late_offer = not request.body
        self._relays: dict[int, _Relay] = {}  # our relayed request id → what to answer
        self._acks_due: dict[int, int] = {}  # caller's re-INVITE request id → callee dialog awaiting its ACK
        self._ring_timer: Cancellable | None = None
        self._best: tuple[int, str | None] | None = None  # best final failure so far
        self._offer_sdp: bytes | None = None  # the caller's offer as the callees get it
        self._media_busy = False  # a media step is running: later ones wait in order
        self._media_release = False  # ended during a step: the seam is released once it is done
        self._media_queue: deque[tuple[str, str, bytes, Callable[[bytes], None], Callable[[str], None]]] = deque()
        self._best_from_callee = False  # ...a final response a callee sent (not our timeout)
        self.extra: dict[str, object] = {}
        self.transfer: TransferHook | None = None
        self._here_ack: Callable[[], None] | None = None  # answered here with our offer: done() once the ACK's answer is in
        env.bind(self, request_id=request_id)

    # ---- inputs from the feature ------------------------------------------------------------
    def queued(self, ringing: bool) -> None:
        """Waiting in an mdflow DNIS queue; 180 to the caller if the rule says so."""
        if self.state is not CallState.ROUTING:
            return
        self.state = CallState.QUEUED
        if ringing:
            self._provisional(180, None, b"", [], reliable=False)

    def ring(self, groups: Sequence[Sequence[Dest]], *, ring_s: float | None = None) -> None:
        """Place the legs: every Dest of the first group in parallel (forking); the next
        group is tried when all of one fail with 503, 408 or a transport error (trunk
        failover).  Nothing to ring: 480."""
        if self.state in (CallState.ANSWERED, CallState.ENDED) or self.cancelled:
            return
        self.failover = [list(g) for g in groups if g]
        if not self.failover:
            if not self.legs or all(_finished(leg) for leg in self.legs):
                self.fail(*(self._best or (480, None)))
            return
        self.state = CallState.RINGING
        if self._ring_timer is None:
            self._ring_timer = self.env.later(ring_s or self.ring_s, self._ring_timeout)
        self._place(self.failover.pop(0))

    def fail(self, status: int, reason: str | None = None, *, retry_after: int | None = None) -> None:
        """Answer the caller with a final failure (a hangup target, a routing error)."""
        if self.state is CallState.ENDED or self.final_status is not None:
            return
        headers = [("Retry-After", str(retry_after))] if retry_after is not None else []
        self._answer_caller(status, reason, headers=headers)
        self._cancel_legs(None)
        self.hangup_cause = self.hangup_cause or reason or str(status)
        self._finish()

    def answer_here(self, sdp: bytes, done: Callable[[], None]) -> None:
        """The B2BUA answers the caller itself (an announcement): the caller's offer, then
        `sdp` (the answer of a party of ours, a placeholder the relay sends nothing to)
        cross the media seam in order, and the caller gets 200 with what the seam made of
        it; `done()` once it is answered.  No callee leg: an in-dialog INFO gets 200, a
        re-INVITE or UPDATE 491.  A failed media step answers 503.

        A caller that sent no offer (late offer): `sdp` is then our party's *offer*; the
        caller gets the relay's offer in the 200, its answer comes in the ACK and crosses
        the seam, then `done()`.  An ACK without SDP (or an answer the seam refuses) hangs
        the call up (BYE, cause "no SDP answer in the ACK" / "media failure")."""
        if self.state not in (CallState.ROUTING, CallState.QUEUED) or self.cancelled or self.final_status is not None:
            return
        self.state = CallState.RINGING  # a CANCEL, an admin hang-up, a BYE... as while ringing
        content_type = self.request.headers.get("content-type") or "application/sdp"
        late = self.late_offer

        def answered(body: bytes) -> None:
            if self.state is not CallState.RINGING or self.final_status is not None:
                return
            self.state = CallState.ANSWERED
            self.answered_at = self.env.now()
            headers = [("Contact", self.env.sip.contact_for(self.peer)), ("Content-Type", content_type)]
            dialog = self.env.sip.respond(self.request_id, 200, headers=headers, body=body)
            self.final_status = 200
            if dialog is None:
                self._finish()
                return
            if dialog != self.in_dialog:
                self.in_dialog = dialog
                self.env.bind(self, dialog_id=dialog)
            if late:
                self._here_ack = done
            else:
                done()

        if late:
            content_type = "application/sdp"
            self._media("offer", "caller", sdp, answered, self._media_failed)
            return
        self._media(
            "offer", "callee", self.request.body,
            lambda _: self._media("answer", "caller", sdp, answered, self._media_failed), self._media_failed,
        )

    def _here_answer(self, body: bytes, done: Callable[[], None]) -> None:
        """The ACK of a late-offer call we answered ourselves: its SDP answers our offer."""
        if not body:
            self.hangup("no SDP answer in the ACK")
            return

        def failed(why: str) -> None:
            if self.state is not CallState.ENDED:
                self.hangup("media failure")

        self._media("answer", "callee", body, lambda _: done(), failed)

    def hangup(self, cause: str = "admin", *, side: str = "system") -> None:
        """End the call from our side (`ctl hangup`, drain on SIGTERM; a completed transfer
        with the transferor's `side`): BYE to both legs when answered, else 480/503 to
        the caller and CANCEL to the callees."""
        if self.state is CallState.ENDED:
            return
        self.hangup_side = side
        self.hangup_cause = cause
        reason = [("Reason", f'SIP;cause=200;text="{cause}"')]
        if self.state is CallState.ANSWERED and self.final_status is not None:
            for dialog in (self.in_dialog, self.out_dialog):
                self._bye(dialog, reason)
            self._finish()
        else:
            self._bye(self.out_dialog, reason)  # a callee that answered while its SDP was with the media backend
            self.out_dialog = None
            self.fail(503 if cause == "shutdown" else 480, f"Temporarily Unavailable ({cause})")

    # ---- UA events --------------------------------------------------------------------------
    def on_event(self, event: UaEvent) -> None:
        if isinstance(event, ResponseReceived):
            self._on_response(event)
        elif isinstance(event, RequestFailed):
            leg = self._leg(event.request_id)
            if leg is not None:
                self._leg_failed(leg, event.status, event.reason)
            else:
                self._relay_failed(event.request_id, event.status)
        elif isinstance(event, RequestCancelled):
            self._on_cancelled(event)
        elif isinstance(event, RequestReceived):
            self._on_request(event)
        elif isinstance(event, AckReceived):
            self._on_ack(event)
        elif isinstance(event, DialogEnded):
            self._on_dialog_ended(event)

    # ---- SDP through the media seam -----------------------------------------------------------
    def _media(self, kind: str, leg: str, sdp: bytes, then: Callable[[bytes], None], failed: Callable[[str], None]) -> None:
        """`then(sdp as the seam passes it on)`, at once when the seam answers at once and
        no step is waiting, else in order once the earlier steps and this one are done;
        `failed(why)` instead when the seam fails, or when the call ended meanwhile."""
        if self._media_busy or self._media_queue:
            self._media_queue.append((kind, leg, sdp, then, failed))
            return
        self._media_run(kind, leg, sdp, then, failed)

    def _media_run(self, kind: str, leg: str, sdp: bytes, then: Callable[[bytes], None], failed: Callable[[str], None]) -> None:
        seam = self.env.media
        try:
            result = seam.offer(self, leg, sdp) if kind == "offer" else seam.answer(self, leg, sdp)
        except Exception as exc:  # a seam that fails at once fails this step, never the call's state
            failed(str(exc) or type(exc).__name__)
            self._media_next()
            return
        if isinstance(result, (bytes, bytearray)):
            then(bytes(result))
            return
        self._media_busy = True

        def done(value: Any, error: BaseException | None) -> None:
            self._media_busy = False
            if self.state is CallState.ENDED:
                failed("call ended")
                if self._media_release:
                    self._media_release = False
                    self._release_media()
                return
            if error is not None:
                failed(str(error) or type(error).__name__)
            elif not isinstance(value, (bytes, bytearray)):
                failed("no SDP from the media backend")
            else:
                then(bytes(value))
            self._media_next()

        self.env.await_media(self, result, done)

    def _media_next(self) -> None:
        while self._media_queue and not self._media_busy:
            self._media_run(*self._media_queue.popleft())

    def _media_failed(self, why: str) -> None:
        """The first offer could not be anchored: 503 to the caller, nothing placed."""
        if self.state is CallState.ENDED:
            return
        self.hangup_cause = f"media: {why}"[:200]
        self.fail(503, "Service Unavailable (media)")

    # ---- outbound legs ----------------------------------------------------------------------
    def _place(self, group: list[Dest]) -> None:
        self.placing = tuple(group)
        if self.late_offer or self._offer_sdp is not None:
            self._place_legs(group, b"" if self.late_offer else self._offer_sdp or b"")
            return

        def offered(body: bytes) -> None:
            self._offer_sdp = body
            if self.state is CallState.RINGING and self.final_status is None and not self.cancelled:
                self._place_legs(group, body)

        self._media("offer", "callee", self.request.body, offered, self._media_failed)

    def _place_legs(self, group: list[Dest], body: bytes) -> None:
        env = self.env
        sip = env.sip
        content_type = self.request.headers.get("content-type") or "application/sdp"
        max_forwards = self.request.max_forwards
        for dest in group:
            headers = list(dest.headers)
            if body:
                headers.append(("Content-Type", content_type))
            if max_forwards is not None:
                headers.append(("Max-Forwards", str(max(0, max_forwards - 1))))
            if not env.claim_trunk(self, dest):  # another call took its last slot meanwhile
                self._note_failure(503, "Service Unavailable (no trunk available)")
                continue
            call_id = env.new_call_id()
            try:
                request_id = sip.send_request(
                    "INVITE",
                    dest.uri,
                    owner=env.owner,
                    destinations=dest.destinations,
                    from_=dest.from_,
                    to=dest.to,
                    call_id=call_id,
                    headers=headers,
                    body=body,
                    credentials=dest.credentials,
                    auto_ack=not self.late_offer,
                )
            except UaError:
                env.release_trunk(self, dest)
                self._note_failure(503, "overloaded")
                continue
            leg = OutLeg(dest, request_id, call_id, env.now())
            self.legs.append(leg)
            env.bind(self, request_id=request_id)
            env.leg_started(self, leg)
        if not any(leg.state in (LegState.TRYING, LegState.EARLY) for leg in self.legs):
            self._all_failed()

    def _leg(self, request_id: int) -> OutLeg | None:
        for leg in self.legs:
            if leg.request_id == request_id:
                return leg
        return None

    def _leg_of_dialog(self, dialog_id: int) -> OutLeg | None:
        for leg in self.legs:
            if dialog_id in leg.dialogs:
                return leg
        return None

    def _on_response(self, event: ResponseReceived) -> None:
        leg = self._leg(event.request_id)
        if leg is None:
            self._relay_answered(event)
            return
        resp = event.response
        status = resp.status
        if event.dialog_id is not None and event.dialog_id not in leg.dialogs:
            leg.dialogs.add(event.dialog_id)
            self.env.bind(self, dialog_id=event.dialog_id)
        if status < 200:
            if leg.state is LegState.TRYING:
                leg.state = LegState.EARLY
            self._relay_provisional(leg, resp)
        elif status < 300:
            self._leg_answered(leg, event.dialog_id, resp)
        elif status < 400 and self.redirects_left > 0 and self.state is CallState.RINGING:
            self.redirects_left -= 1
            leg.state = LegState.FAILED
            leg.status = status
            leg.ended_at = self.env.now()
            self.env.leg_ended(self, leg)
            targets = [c.uri for c in (resp.contacts or [])]
            if targets:
                self.env.redirect(self, targets)
            else:
                self._leg_failed(leg, 480, "redirect without Contact", already=True)
        else:
            self._leg_failed(leg, status, resp.headers.get("reason") or resp.reason, from_callee=True)

    def _relay_provisional(self, leg: OutLeg, resp: Response) -> None:
        if self.state is not CallState.RINGING or self.final_status is not None:
            return
        status = resp.status
        reliable = "100rel" in resp.option_tags("require") or "100rel" in self.request.option_tags("require")
        if resp.body and self.early_sdp_from in (None, leg) and not self.late_offer:
            headers = [("Content-Type", resp.headers.get("content-type") or "application/sdp")]
            self.early_sdp_from = leg

            def early(body: bytes) -> None:
                if self.state is CallState.RINGING and self.final_status is None:
                    self._provisional(status, resp.reason, body, headers, reliable=reliable)

            # A failed early answer relays nothing: the final answer tries again (and fails the call).
            self._media("answer", "caller", resp.body, early, lambda why: None)
            return
        if status == self.provisional_sent or (status == 180 and self.provisional_sent == 183):
            return  # once is enough: forks ring in parallel, the caller hears one ringing
        self._provisional(status, resp.reason, b"", [], reliable=reliable)

    def _provisional(self, status: int, reason: str | None, body: bytes, headers: list[tuple[str, str]], *, reliable: bool) -> None:
        contact = self.env.sip.contact_for(self.peer)
        dialog = self.env.sip.respond(
            self.request_id, status, reason, headers=[*headers, ("Contact", contact)], body=body, reliable=reliable
        )
        self.provisional_sent = status
        if dialog is not None and self.in_dialog is None:
            self.in_dialog = dialog
            self.env.bind(self, dialog_id=dialog)

    def _leg_answered(self, leg: OutLeg, dialog_id: int | None, resp: Response) -> None:
        if dialog_id is None:
            return
        if self.winner is not None or self.state is not CallState.RINGING or self.final_status is not None:
            # A second 2xx (another fork or leg that raced the first): ACKed by the UA, hung up here.
            self.env.sip.bye(dialog_id, headers=[("Reason", COMPLETED_ELSEWHERE)])
            return
        now = self.env.now()
        self.winner = leg
        self.out_dialog = dialog_id
        leg.state = LegState.ANSWERED
        leg.status = resp.status
        leg.answered_at = now
        self.answered_at = now
        self.state = CallState.ANSWERED
        if self._ring_timer is not None:
            self._ring_timer.cancel()
            self._ring_timer = None
        for other in self.legs:
            if other is not leg and other.state in (LegState.TRYING, LegState.EARLY):
                self._cancel_leg(other, COMPLETED_ELSEWHERE)
        self.failover = []
        self._connect_caller(leg, dialog_id, resp)

    def _connect_caller(self, leg: OutLeg, dialog_id: int, resp: Response) -> None:
        """The callee answered: 200 to the caller with the callee's SDP, through the media
        seam (a transferred call overrides this: its caller is already in a dialog,
        transfer.py)."""
        content_type = resp.headers.get("content-type") or "application/sdp"
        if not resp.body:
            self._answer_caller_ok(dialog_id, b"", content_type)
            return
        self._media(
            "answer", "caller", resp.body,
            lambda body: self._answer_caller_ok(dialog_id, body, content_type),
            lambda why: self._answer_failed(dialog_id, why),
        )

    def _answer_caller_ok(self, dialog_id: int, body: bytes, content_type: str) -> None:
        """The callee's 2xx reaches the caller (its SDP through the seam)."""
        if self.state is not CallState.ANSWERED or self.final_status is not None:
            return
        headers = [("Contact", self.env.sip.contact_for(self.peer))]
        if body:
            headers.append(("Content-Type", content_type))
        dialog = self.env.sip.respond(self.request_id, 200, headers=headers, body=body)
        self.final_status = 200
        if dialog is None:  # the caller cancelled in the same instant: the callee goes
            self._bye(dialog_id, [("Reason", 'SIP;cause=487;text="Caller cancelled"')])
            self.hangup_side = "caller"
            self.hangup_cause = "cancelled"
            self.cancelled = True
            self._finish()
            return
        if dialog != self.in_dialog:
            self.in_dialog = dialog
            self.env.bind(self, dialog_id=dialog)

    def _answer_failed(self, dialog_id: int, why: str) -> None:
        """The callee answered but its SDP could not be anchored: it is hung up and the
        caller, not answered yet, gets 503."""
        if self.state is CallState.ENDED or self.final_status is not None:
            return
        self._bye(dialog_id, [("Reason", 'SIP;cause=503;text="Media unavailable"')])
        self.out_dialog = None
        self.answered_at = None
        self.hangup_cause = f"media: {why}"[:200]
        self.fail(503, "Service Unavailable (media)")

    def _leg_failed(
        self, leg: OutLeg, status: int, reason: str | None, *, already: bool = False, from_callee: bool = False
    ) -> None:
        if not already:
            if _finished(leg):
                return
            leg.state = LegState.CANCELLED if status == 487 and self.cancelled else LegState.FAILED
            leg.status = status
            leg.cause = reason
            leg.ended_at = self.env.now()
            self.env.leg_ended(self, leg)
        if self.state is not CallState.RINGING:
            return
        self._note_failure(status, reason, from_callee=from_callee)
        if all(_finished(other) for other in self.legs):
            self._all_failed()

    def _note_failure(self, status: int, reason: str | None, *, from_callee: bool = False) -> None:
        """RFC 3261 §16.7: keep the best final response to give the caller."""
        if self._best is None or _rank(status) < _rank(self._best[0]):
            self._best = (status, reason)
            self._best_from_callee = from_callee

    def _all_failed(self) -> None:
        best = self._best or (480, None)
        if self.failover and best[0] in (408, 500, 503, 504):
            self._place(self.failover.pop(0))  # the next trunk
            return
        if self._best_from_callee:
            self.hangup_side = "callee"  # the callee refused (486, 603...): its decision, not ours
        self.fail(best[0], best[1])

    def _ring_timeout(self) -> None:
        self._ring_timer = None
        if self.state is CallState.RINGING and self.final_status is None:
            self.hangup_cause = "no answer"
            self._best = (480, "Temporarily Unavailable (no answer)")
            self.failover = []
            self.fail(480, "Temporarily Unavailable (no answer)")

    def _cancel_legs(self, reason: str | None) -> None:
        for leg in self.legs:
            if leg.state in (LegState.TRYING, LegState.EARLY):
                self._cancel_leg(leg, reason)

    def _cancel_leg(self, leg: OutLeg, reason: str | None) -> None:
        leg.state = LegState.CANCELLED
        leg.status = 487
        leg.cause = reason
        leg.ended_at = self.env.now()
        self.env.sip.cancel(leg.request_id, reason=reason)
        self.env.leg_ended(self, leg)

    # ---- the caller ---------------------------------------------------------------------------
    def _answer_caller(self, status: int, reason: str | None, *, headers: list[tuple[str, str]] | None = None) -> None:
        if self.final_status is not None:
            return
        self.final_status = status
        self.env.sip.respond(self.request_id, status, reason, headers=headers or [])

    def _on_cancelled(self, event: RequestCancelled) -> None:
        if event.request_id == self.request_id:
            # The caller's CANCEL (answered 200 + 487 by the UA), or the UA gave up the INVITE.
            self.final_status = self.final_status or 487
            self.cancelled = event.reason == "cancel"
            self.hangup_side = "caller" if self.cancelled else "system"
            self.hangup_cause = "cancelled" if self.cancelled else event.reason
            self._cancel_legs('SIP;cause=487;text="Caller cancelled"' if self.cancelled else None)
            if self.out_dialog is not None:
                self._bye(self.out_dialog, [])
            self._finish()
            return
        relay = self._relays.pop(event.request_id, None)
        if relay is None:
            for ours, pending in list(self._relays.items()):
                if pending.incoming == event.request_id:
                    del self._relays[ours]

    # ---- in-dialog requests -------------------------------------------------------------------
    def _on_request(self, event: RequestReceived) -> None:
        sip = self.env.sip
        req = event.request
        method = req.method
        if event.dialog_id is None:
            return
        from_inbound = event.dialog_id == self.in_dialog
        other = self.out_dialog if from_inbound else self.in_dialog
        if method == "PRACK":
            return  # answered by the UA; each leg has its own reliable provisionals
        if self.state is not CallState.ANSWERED or other is None:
            if method == "INFO" and self.state is CallState.ANSWERED:
                sip.respond(event.request_id, 200)  # answered by us (an announcement): DTMF is read by the feature
            elif method not in ("BYE", "ACK"):
                sip.respond(event.request_id, 491 if method in ("INVITE", "UPDATE") else 481)
            return
        if method in ("INVITE", "UPDATE"):
            self._track_hold(req.body, "caller" if from_inbound else "callee")
        if method not in RELAYED_METHODS:
            sip.respond(event.request_id, 200 if method == "OPTIONS" else 501)
            return
        headers = [(name, value) for name, value in _copy_headers(req)]
        late_offer = method == "INVITE" and not req.body
        request_id = event.request_id
        if req.body and method in ("INVITE", "UPDATE"):
            hold = _is_hold(req.body)
            self._media(
                "offer", "callee" if from_inbound else "caller", req.body,
                lambda body: self._forward(request_id, from_inbound, method, headers, body, late_offer, hold),
                lambda why: self._refuse(request_id, 503),
            )
            return
        self._forward(request_id, from_inbound, method, headers, req.body, late_offer)

    def _forward(self, request_id: int, from_inbound: bool, method: str, headers: list[tuple[str, str]],
                 body: bytes, late_offer: bool, hold: bool | None = None) -> None:
        """Relay an in-dialog request to the other leg (its SDP through the seam already)."""
        sip = self.env.sip
        other = self.out_dialog if from_inbound else self.in_dialog
        if self.state is not CallState.ANSWERED or other is None:
            self._refuse(request_id, 481)
            return
        try:
            ours = sip.send_in_dialog(other, method, headers=headers, body=body, auto_ack=not late_offer)
        except RequestPending:
            sip.respond(request_id, 491)
            return
        except UaError:
            sip.respond(request_id, 481)
            return
        self._relays[ours] = _Relay(request_id, from_inbound, method, late_offer, hold)
        self.env.bind(self, request_id=ours)

    def _refuse(self, request_id: int, status: int) -> None:
        headers = [("Retry-After", "1")] if status == 503 else []
        try:
            self.env.sip.respond(request_id, status, headers=headers)
        except UaError:
            return

    def _relay_answered(self, event: ResponseReceived) -> None:
        relay = self._relays.get(event.request_id)
        resp = event.response
        if relay is None or resp.status < 200:
            return
        del self._relays[event.request_id]
        headers = [(name, value) for name, value in _copy_headers(resp)]
        if relay.late_offer and 200 <= resp.status < 300 and event.dialog_id is not None:
            self._acks_due[relay.incoming] = event.dialog_id
        if not (resp.body and relay.method in ("INVITE", "UPDATE")):
            self._respond_relayed(relay.incoming, resp, headers, resp.body)
            self._hold_done(relay, resp.status)
            return

        def failed(why: str) -> None:
            # The far side accepted an offer whose answer cannot be anchored: the call ends.
            self._refuse(relay.incoming, 500)
            if self.state is not CallState.ENDED:
                self.hangup("media failure")

        def answered(body: bytes) -> None:
            self._respond_relayed(relay.incoming, resp, headers, body)
            self._hold_done(relay, resp.status)

        self._media("answer", "caller" if relay.from_inbound else "callee", resp.body, answered, failed)

    def _hold_done(self, relay: _Relay, status: int) -> None:
        if relay.hold is not None and 200 <= status < 300 and self.state is CallState.ANSWERED:
            self.env.hold_changed(self, "caller" if relay.from_inbound else "callee", relay.hold)

    def _respond_relayed(self, incoming: int, resp: Response, headers: list[tuple[str, str]], body: bytes) -> None:
        try:
            self.env.sip.respond(incoming, resp.status, resp.reason, headers=headers, body=body)
        except UaError:
            return

    def _relay_failed(self, request_id: int, status: int) -> None:
        relay = self._relays.pop(request_id, None)
        if relay is not None:
            self.env.sip.respond(relay.incoming, status)

    def _on_ack(self, event: AckReceived) -> None:
        body = event.request.body
        if event.request_id == self.request_id:
            # The ACK of our 2xx to the caller: with a late offer it carries the answer.
            here, self._here_ack = self._here_ack, None
            if here is not None:
                self._here_answer(body, here)
                return
            if self.late_offer and self.out_dialog is not None:
                self._ack_callee(self.out_dialog, body)
            return
        dialog = self._acks_due.pop(event.request_id, None)
        if dialog is not None:
            self._ack_callee(dialog, body)

    def _ack_callee(self, dialog: int, body: bytes) -> None:
        if not body:
            self._send_ack(dialog, b"")
            return

        def failed(why: str) -> None:
            self._send_ack(dialog, b"")  # a 2xx is always ACKed; the call then ends
            if self.state is not CallState.ENDED:
                self.hangup("media failure")

        self._media("answer", "callee", body, lambda sdp: self._send_ack(dialog, sdp), failed)

    def _send_ack(self, dialog: int, sdp: bytes) -> None:
        headers = [("Content-Type", "application/sdp")] if sdp else []
        try:
            self.env.sip.ack(dialog, body=sdp, headers=headers)
        except UaError:
            return

    def _track_hold(self, sdp: bytes, side: str) -> None:
        if not sdp:
            return
        if _is_hold(sdp):
            self.held.add(side)
        else:
            self.held.discard(side)

    # ---- the end ----------------------------------------------------------------------------
    def _on_dialog_ended(self, event: DialogEnded) -> None:
        if self.transfer is not None and self.transfer.dialog_ended(self, event):
            return
        dialog_id = event.dialog_id
        if dialog_id == self.in_dialog:
            self.in_dialog = None
            if self.state is CallState.ANSWERED:
                self.hangup_side = "caller" if event.reason == "bye" else "system"
                self.hangup_cause = _cause_after(self.hangup_cause, event)
                self._bye(self.out_dialog, _reason_of(event))
                self.out_dialog = None
                self._finish()
            return
        leg = self._leg_of_dialog(dialog_id)
        if leg is None:
            return
        leg.dialogs.discard(dialog_id)
        if dialog_id != self.out_dialog:
            return  # a fork that never won
        self.out_dialog = None
        leg.state = LegState.ENDED
        leg.ended_at = self.env.now()
        leg.cause = _cause(event)
        self.env.leg_ended(self, leg)
        if self.state is CallState.ANSWERED:
            self.hangup_side = "callee" if event.reason == "bye" else "system"
            self.hangup_cause = _cause_after(self.hangup_cause, event)
            if self.final_status is None:  # gone while its answer was with the media backend
                self.answered_at = None
                self.fail(480, "Temporarily Unavailable (callee hung up)")
                return
            self._bye(self.in_dialog, _reason_of(event))
            self.in_dialog = None
            self._finish()

    def _bye(self, dialog: int | None, headers: list[tuple[str, str]]) -> None:
        if dialog is None:
            return
        try:
            self.env.sip.bye(dialog, headers=headers)
        except UaError:
            return

    def _finish(self) -> None:
        if self.state is CallState.ENDED:
            return
        if self._ring_timer is not None:
            self._ring_timer.cancel()
            self._ring_timer = None
        now = self.env.now()
        self.state = CallState.ENDED
        self.ended_at = now
        for leg in self.legs:
            if leg.ended_at is None:
                leg.ended_at = now
                if leg.state is LegState.ANSWERED:
                    leg.state = LegState.ENDED
                self.env.leg_ended(self, leg)
        queued, self._media_queue = self._media_queue, deque()
        for *_, failed in queued:
            failed("call ended")
        if self._media_busy:
            self._media_release = True  # after the step in flight: a session it creates is deleted too
        else:
            self._release_media()
        self.env.ended(self)

    def _release_media(self) -> None:
        try:
            release = self.env.media.release(self)
        except Exception:
            release = None
        if release is not None:
            self.env.await_media(self, release, self._media_released)

    def _media_released(self, stats: Any, error: BaseException | None) -> None:
        """The session is deleted: what the relay received from each party, for the record."""
        if error is None and isinstance(stats, dict) and stats:
            self.env.media_released(self, stats)

    # ---- status -----------------------------------------------------------------------------
    @property
    def duration_s(self) -> float:
        end = self.ended_at if self.ended_at is not None else self.env.now()
        return max(0.0, end - self.started_at)

    @property
    def billable_s(self) -> float:
        if self.answered_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else self.env.now()
        return max(0.0, end - self.answered_at)

    def snapshot(self) -> dict[str, object]:
        """What `ctl calls` shows."""
        state = str(self.state)
        if self.state is CallState.ANSWERED:
            state = "transferring" if self.transfer is not None else "on_hold" if self.held else state
        return {
            "call": self.call_uuid,
            "call_id": self.request.call_id,
            "state": state,
            "linked_to": self.linked_to,
            "caller": self.caller,
            "callee": self.callee,
            "user": self.user,
            "trunk": self.trunk,
            "duration_s": round(self.duration_s, 1),
            # "anchored (REASON)" once the media seam decided to anchor it, else absent
            "media": self.extra.get("media"),
            "legs": [
                {"leg": leg.leg_id, "call_id": leg.call_id, "target": leg.dest.label, "state": str(leg.state),
                 "status": leg.status, "trunk": leg.dest.trunk}
                for leg in self.legs
            ],
        }


def _finished(leg: OutLeg) -> bool:
    return leg.state in (LegState.FAILED, LegState.CANCELLED, LegState.ENDED)


def _rank(status: int) -> tuple[int, int]:
    """Lower is better (RFC 3261 §16.7 step 6): 6xx first, then busy-like 4xx (486, 600
    already first), then other 4xx lowest code, 5xx last."""
    if status >= 600:
        return (0, status)
    if status in (486, 487):
        return (1, status)
    if 400 <= status < 500:
        return (2, 0 if status in (401, 407, 415, 420, 484) else status)
    return (3, status)


def _copy_headers(msg: Request | Response) -> list[tuple[str, str]]:
    out = []
    for key in _RELAYED_HEADERS:
        for value in msg.headers.get_all(key):
            out.append((key.title(), value))
    return out


def _is_hold(sdp: bytes) -> bool:
    """A re-INVITE/UPDATE offer that puts the other side on hold (RFC 3264 §8.4)."""
    text = sdp.decode("utf-8", "replace")
    return "a=sendonly" in text or "a=inactive" in text or "c=IN IP4 0.0.0.0" in text


def _cause(event: DialogEnded) -> str:
    if event.reason == "bye" and event.request is not None:
        reason = event.request.headers.get("reason")
        if reason:
            return f"bye ({reason[:80]})"
    return event.reason


def _cause_after(cause: str, event: DialogEnded) -> str:
    """Our own BYE completing ("bye_sent") keeps the cause `hangup()` gave (it may complete
    within that call, when the far end's connection is already gone: a closed WebSocket)."""
    if event.reason == "bye_sent" and cause:
        return cause
    return _cause(event)


def _reason_of(event: DialogEnded) -> list[tuple[str, str]]:
    """The Reason of a BYE travels to the other leg (RFC 3326); our own causes too."""
    if event.request is not None:
        reason = event.request.headers.get("reason")
        if reason:
            return [("Reason", reason)]
    if event.reason != "bye":
        return [("Reason", f'SIP;cause=200;text="{event.reason}"')]
    return []
