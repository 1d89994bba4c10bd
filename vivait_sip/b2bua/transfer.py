"""Transfers (issue 10 item 2): REFER (RFC 3515) terminated by the B2BUA, blind or attended
(Replaces in the Refer-To, RFC 3891), and INVITE with Replaces.

A REFER never reaches the other phone: the B2BUA answers it 202, carries out the transfer
itself and reports progress on the REFER's implicit subscription, which lives in the
INVITE dialog it came in (NOTIFY, `Event: refer;id=<CSeq>`, `message/sipfrag`, RFC 3515
§2.4.4-2.4.7).  Terms: the *transferor* sent the REFER, the *transferee* is the other
party of that call (it stays and is reconnected), the *target* is where it goes.

* **Blind** (`Refer-To: <sip:6142@pbx>`): the target is routed through the dialplan as if
  the transferee dialled it, with the transferor's authority (the rules see the
  transferor as the source: who may place that call), and rung as a new call (a
  `TransferCall`, linked to the original in its CDR, carrying `Referred-By`, RFC 3892).
* **Attended** (`Refer-To: <sip:6142@pbx?Replaces=callid%3Bto-tag%3D..%3Bfrom-tag%3D..>`
  naming the transferor's consultation call, another call of ours): the two remaining
  parties are joined directly, by re-INVITEs, without ringing anyone; both of the
  transferor's legs are hung up.
* **INVITE with Replaces** naming one of our dialogs (a phone doing its own attended
  transfer, RFC 3891): the new caller takes the replaced party's place opposite the other
  party of that call, which is re-INVITEd; the replaced dialog gets BYE.

Offer/answer across the join: the party that must produce the new session description
is asked for it with an INVITE *without* SDP (a new INVITE to the blind target, a
re-INVITE to the attended target), so its 2xx carries a fresh offer; that
offer goes to the transferee in a re-INVITE, whose answer goes back in the ACK.  Nobody's
SDP is rewritten unless the call is anchored (then both go through the media seam, the
relay's ReplaceParty: `media_transfer`, docs/media.md "Transfers of anchored calls"),
and the only ACK held back waits for a re-INVITE round trip to a phone already in a call
(milliseconds), never for someone to pick up.  INVITE/Replaces is the mirror image: the
new INVITE's offer (or none, late offer) goes to the other party in a re-INVITE and its
answer back in the 200.

The calls being joined may live in different workers (calls land on workers by Call-ID
hash); the worker owning the named dialog (`owner_of` its Call-ID) detaches the party to
keep and holds its dialog for the controller (`remote.py`): dialogs never move.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..contract import SipService, WorkerMessage, worker_message
from ..sip.errors import SipParseError
from ..sip.message import Request, Response
from ..sip.peer import Peer
from ..sip.ua import (
    DialogEnded,
    DialogInfo,
    RequestFailed,
    RequestPending,
    RequestReceived,
    ResponseReceived,
    UaError,
    UaEvent,
)
from ..sip.uri import parse_name_addr, unescape
from .call import Call, CallEnv, CallState, Dest, LegState, OutLeg
from .remote import MESSAGES as REMOTE_MESSAGES
from .remote import RemoteDialogs, VirtualSip, Workers, info_from_json, info_to_json
from .routing import Source

log = logging.getLogger("vivait_sip.b2bua")

SIPFRAG = "message/sipfrag;version=2.0"
#: Subscription-State expires of the refer subscription: twice Timer C (RFC 5589 §5).
REFER_EXPIRES_S = 360
JOIN_RETRY_S = 1.0  # a re-INVITE met glare (491, or one of ours pending): try again after
JOIN_RETRIES = 4


# ---- what the transfer code needs ---------------------------------------------------------


class TransferEnv(CallEnv, Protocol):
    """The feature as transfers see it (the in-memory harness implements it too)."""

    @property
    def calls(self) -> dict[str, Call]: ...

    def call_for(self, event: UaEvent) -> Call | None:
        """The call a UA event belongs to (by dialog, then by request)."""
        ...

    def route(self, call: Call, number: str, source: Source) -> None:
        """Route `number` for `call` through the dialplan as `source` would, then ring."""
        ...

    def add_call(self, call: Call) -> None:
        """A new call (a transfer's): listed, counted, hung up on drain."""
        ...

    def dispatch(self, event: UaEvent) -> None:
        """A UA event synthesised for a remote dialog: handle it as a real one."""
        ...

    def is_local_domain(self, host: str) -> bool: ...


# ---- messages between workers ---------------------------------------------------------------


@worker_message("b2bua.xfer_take")
@dataclass(frozen=True)
class TakeDialog(WorkerMessage):
    """Controller → owner of `call_id`: the dialog (call_id, tags) is to be replaced;
    detach the other party of its call and hold that party's dialog for me."""

    ticket: int
    call_id: str
    tags: list[str]
    early_only: bool = False


@worker_message("b2bua.xfer_taken")
@dataclass(frozen=True)
class DialogTaken(WorkerMessage):
    """The answer to TakeDialog: `status` 200 with the held dialog (`link`, its `info`) and
    who that party is (`party`), else why not (481: no such dialog, 486: early-only...)."""

    ticket: int
    status: int
    reason: str = ""
    link: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    party: dict[str, Any] = field(default_factory=dict)


@worker_message("b2bua.xfer_release")
@dataclass(frozen=True)
class ReleaseDialog(WorkerMessage):
    """Controller → holder: the join is over.  `joined`: it succeeded (hang up the named
    dialog and end its call, `cause`); else the party goes back to its call."""

    link: str
    joined: bool
    call_uuid: str = ""
    cause: str = ""


MESSAGES: tuple[type[WorkerMessage], ...] = (TakeDialog, DialogTaken, ReleaseDialog, *REMOTE_MESSAGES)


# ---- small values --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Party:
    """One side of a call: who it is, for caller IDs, routing sources and CDRs."""

    number: str
    user: str | None = None
    trunk: str | None = None
    host: str = ""
    private: bool = False
    display: str | None = None
    call_uuid: str = ""  # the call it was in

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Party:
        return cls(**{k: raw[k] for k in ("number", "user", "trunk", "host", "private", "display", "call_uuid") if k in raw})


@dataclass(frozen=True, slots=True)
class Replaces:
    """A Replaces value (RFC 3891 §6.1): the dialog's Call-ID and tags, early-only."""

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False


def media_transfer(new_call: Call, old_call: Call, kept: str, kept_as: str) -> bool:
    """`new_call` takes over `old_call`'s anchored media session (the media seam's
    `transfer`: the party on `old_call`'s side `kept` stays, as `new_call`'s `kept_as`;
    the other is replaced by `new_call`'s new party at its first SDP).  False when the
    seam has no sessions (pass-through) or `old_call` is not anchored."""
    transfer = getattr(new_call.env.media, "transfer", None)
    return bool(transfer(new_call, old_call, kept, kept_as)) if callable(transfer) else False


def parse_replaces(value: str) -> Replaces | None:
    call_id, _, params = value.strip().partition(";")
    found: dict[str, str] = {}
    for param in params.split(";"):
        name, _, val = param.partition("=")
        found[name.strip().lower()] = val.strip()
    to_tag, from_tag = found.get("to-tag"), found.get("from-tag")
    if not call_id.strip() or not to_tag or not from_tag:
        return None
    return Replaces(call_id.strip(), to_tag, from_tag, "early-only" in found)


def uri_headers(text: str | None) -> dict[str, str]:
    """The `?name=value&...` part of a URI, unescaped, by lower-case name."""
    found: dict[str, str] = {}
    for part in (text or "").split("&"):
        name, eq, value = part.partition("=")
        if eq:
            found[unescape(name).strip().lower()] = unescape(value)
    return found


def sipfrag(status: int, reason: str | None) -> bytes:
    return f"SIP/2.0 {status} {reason or _REASONS.get(status, 'Unknown')}\r\n".encode()


_REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 403: "Forbidden",
            404: "Not Found", 408: "Request Timeout", 480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
            486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here", 491: "Request Pending",
            500: "Server Internal Error", 503: "Service Unavailable", 603: "Decline"}


def caller_party(call: Call) -> Party:
    display = call.extra.get("display")
    return Party(call.caller, call.user, call.trunk, call.peer.host, bool(call.extra.get("private")),
                 display if isinstance(display, str) else None, call.call_uuid)


def callee_party(call: Call) -> Party:
    winner = call.winner
    trunk = winner.dest.trunk if winner is not None else None
    host = winner.dest.destinations[0].host if winner is not None and winner.dest.destinations else ""
    return Party(call.callee_user or call.callee, call.callee_user, trunk, host, False, None, call.call_uuid)


def side_of(call: Call, dialog: int) -> str:
    return "caller" if dialog == call.in_dialog else "callee"


def detach(call: Call, dialog: int | None) -> None:
    """`dialog` no longer belongs to `call` (a transfer took it, or it is gone)."""
    if dialog is None:
        return
    if call.in_dialog == dialog:
        call.in_dialog = None
    if call.out_dialog == dialog:
        call.out_dialog = None


def synthetic_request(info: DialogInfo, number: str, host: str) -> Request:
    """The INVITE a transferred party "sends" (it sends nothing: it is already in a
    dialog): no body, so the new legs are placed as late offers."""
    req = Request(method="INVITE", uri_text=f"sip:{number}@{host}")
    h = req.headers
    h.add("Via", "SIP/2.0/UDP 0.0.0.0:0;branch=z9hG4bKtransfer")
    h.add("Max-Forwards", "70")
    h.add("From", f"<{info.remote_uri}>;tag={info.remote_tag}")
    h.add("To", f"<sip:{number}@{host}>")
    h.add("Call-ID", info.call_id)
    h.add("CSeq", "1 INVITE")
    return req


def dest_for(info: DialogInfo, label: str) -> Dest:
    return Dest(uri=info.remote_target, destinations=(info.peer,), to=f"<{info.remote_uri}>",
                from_=f"<{info.local_uri}>", label=label)


def place_reinvite(call: Call, dialog: int, dest: Dest, call_id: str, body: bytes, content_type: str,
                   auto_ack: bool) -> OutLeg:
    """A leg that is an existing dialog: re-INVITE it and let the call treat the answer as
    that leg answering (raises RequestPending / UaError as `send_in_dialog` does)."""
    env = call.env
    headers = [("Content-Type", content_type)] if body else []
    request_id = env.sip.send_in_dialog(dialog, "INVITE", headers=headers, body=body, auto_ack=auto_ack)
    leg = OutLeg(dest, request_id, call_id, env.now())
    leg.dialogs.add(dialog)
    call.legs.append(leg)
    call.state = CallState.RINGING
    env.bind(call, request_id=request_id)
    env.bind(call, dialog_id=dialog)
    return leg


# ---- the refer subscription -----------------------------------------------------------------


class Subscription:
    """NOTIFYs of one REFER's implicit subscription, one at a time (so they cannot
    overtake each other); the latest state wins while one is in flight, a final never
    gets lost.  `on_done` runs once the final NOTIFY is answered (or cannot be sent)."""

    def __init__(self, manager: TransferManager, sip: SipService, dialog: int, cseq: int) -> None:
        self.manager = manager
        self.sip = sip
        self.dialog = dialog
        self.event = f"refer;id={cseq}"
        self.sent: list[int] = []  # statuses sent, for tests and logs
        self.busy: int | None = None
        self.final_busy = False
        self.queued: tuple[int, str | None, bool] | None = None
        self.terminated = False
        self.dead = False
        self.on_done: Callable[[], None] | None = None

    def notify(self, status: int, reason: str | None, *, final: bool) -> None:
        if self.terminated or self.dead:
            return
        if final:
            self.terminated = True
        if self.busy is not None:
            if self.queued is None or not self.queued[2]:
                self.queued = (status, reason, final)
            return
        self._send(status, reason, final)

    def _send(self, status: int, reason: str | None, final: bool) -> None:
        state = "terminated;reason=noresubscription" if final else f"active;expires={REFER_EXPIRES_S}"
        headers = [("Event", self.event), ("Subscription-State", state), ("Content-Type", SIPFRAG)]
        try:
            request_id = self.sip.send_in_dialog(self.dialog, "NOTIFY", headers=headers, body=sipfrag(status, reason))
        except UaError:
            self.dead = True
            self.done()
            return
        self.sent.append(status)
        self.busy = request_id
        self.final_busy = final
        self.manager.watch(request_id, self._answered)

    def _answered(self, event: UaEvent) -> bool:
        if isinstance(event, ResponseReceived) and event.response.status < 200:
            return True
        if not isinstance(event, (ResponseReceived, RequestFailed)):
            return False
        self.manager.unwatch(event.request_id)
        self.busy = None
        status = event.response.status if isinstance(event, ResponseReceived) else event.status
        if status == 481:  # the phone forgot the subscription (the call goes on: RFC 5057)
            self.dead = True
        if self.queued is not None and not self.dead:
            queued, self.queued = self.queued, None
            self._send(*queued)
        elif self.final_busy or self.dead:
            self.done()
        return True

    def close(self) -> None:
        """The transferor's dialog is gone: nothing more can be sent."""
        self.dead = True
        if self.busy is not None:
            self.manager.unwatch(self.busy)
            self.busy = None
        self.done()

    def done(self) -> None:
        callback, self.on_done = self.on_done, None
        if callback is not None:
            callback()


# ---- the transferred call ---------------------------------------------------------------------


class TransferCall(Call):
    """A call whose caller is a party already in a dialog (the transferee): placed as a
    late offer (its synthetic INVITE has no body); when the target answers with its
    offer, the transferee is re-INVITEd with it and the answer goes to the target in the
    ACK.  Until then the transferee stays in its original call (or, when the transferor
    hung up meanwhile, waits here: `adopt`)."""

    def __init__(self, env: CallEnv, refer: Refer | Continuation, request: Request, peer: Peer, *, request_id: int, call_uuid: str,
                 caller: str, callee: str, user: str | None, trunk: str | None, ring_s: float, max_redirects: int,
                 referred_by: str | None, restore_target: bool) -> None:
        super().__init__(env, request_id, request, peer, call_uuid=call_uuid, caller=caller, callee=callee, user=user,
                         trunk=trunk, ring_s=ring_s, max_redirects=max_redirects)
        self.refer = refer
        self.transferee = refer.transferee_dialog
        self.referred_by = referred_by
        self.restore_target = restore_target  # attended: a failed join gives the target back as it was
        self.adopted = False  # the transferee's dialog is bound here
        self.joined = False
        self._target_dialog: int | None = None
        self._offer = b""
        self._offer_type = "application/sdp"
        self._join_rid: int | None = None
        self._join_tries = 0

    def adopt(self) -> None:
        """The transferor left before the target answered: the transferee waits here."""
        if self.adopted or self.state is CallState.ENDED:
            return
        self.adopted = True
        self.in_dialog = self.transferee
        self.env.bind(self, dialog_id=self.transferee)

    def abandon(self) -> None:
        """The original call ended before the join (its transferee hung up, an operator)."""
        if self.state is CallState.ENDED or self.joined:
            return
        if self.restore_target and any(leg.state in (LegState.TRYING, LegState.EARLY) for leg in self.legs):
            return  # the target's re-INVITE is out: its answer is restored and handed back then
        if self._target_dialog is not None:
            self._join_failed(487, "Request Terminated (transfer abandoned)")
            return
        self.hangup("transfer abandoned")

    def hangup(self, cause: str = "admin", *, side: str = "system") -> None:
        """Before the join this is a failed transfer (the transferor hears why, the
        transferee stays where it is); after it, an ordinary hangup."""
        if self.joined or self.state is CallState.ENDED:
            super().hangup(cause, side=side)
            return
        self.hangup_side = side
        self.hangup_cause = cause
        self._join_failed(503 if cause == "shutdown" else 480, f"Temporarily Unavailable ({cause})")

    # ---- Call's seams ---------------------------------------------------------------------
    def ring(self, groups: Any, *, ring_s: float | None = None) -> None:
        if self.referred_by:
            extra = ("Referred-By", self.referred_by)
            groups = [[dataclasses.replace(d, headers=(*d.headers, extra)) for d in group] for group in groups]
        super().ring(groups, ring_s=ring_s)

    def _provisional(self, status: int, reason: str | None, body: bytes, headers: list[tuple[str, str]], *,
                     reliable: bool) -> None:
        self.provisional_sent = status
        self.refer.progress(status, reason)

    def _answer_caller(self, status: int, reason: str | None, *, headers: list[tuple[str, str]] | None = None) -> None:
        if self.final_status is not None:
            return
        self.final_status = status
        if self.adopted and not self.joined and self.in_dialog is not None:
            self._bye(self.in_dialog, [("Reason", f'SIP;cause={status};text="transfer failed"')])
            self.in_dialog = None
        self.refer.target_failed(self, status, reason)

    def _connect_caller(self, leg: OutLeg, dialog_id: int, resp: Response) -> None:
        self._target_dialog = dialog_id
        if self.refer.state != "started":
            self._join_failed(487, "Request Terminated (transfer abandoned)")
            return
        if not resp.body:
            self._join_failed(488, "Not Acceptable Here (the target sent no offer)")
            return
        content_type = resp.headers.get("content-type") or "application/sdp"

        def offered(offer: bytes) -> None:
            # through the media seam: an anchored call's relay gets the target in the
            # transferor's place (ReplaceParty), the transferee keeps its stream
            if self._target_dialog != dialog_id or self.state is CallState.ENDED:
                return
            self._offer = offer
            self._offer_type = content_type
            self._send_join()

        def failed(why: str) -> None:
            if self._target_dialog == dialog_id and self.state is not CallState.ENDED:
                self._join_failed(488, f"Not Acceptable Here (media: {why})"[:120])

        self._media("offer", "caller", resp.body, offered, failed)

    def _on_dialog_ended(self, event: DialogEnded) -> None:
        dialog_id = event.dialog_id
        if not self.joined and self.state is not CallState.ENDED:
            if dialog_id == self.transferee and self.adopted:
                # The transferee hung up while waiting: nothing left to transfer.
                self.in_dialog = None
                self.hangup_side = "caller"
                self.hangup_cause = "transferee hung up"
                self.cancelled = True
                self._join_failed(487, "Request Terminated (transferee hung up)")
                return
            if dialog_id == self._target_dialog:
                self._target_dialog = None
                self.out_dialog = None
                self.hangup_side = "callee"
                self.hangup_cause = "target hung up"
                self._join_failed(480, "Temporarily Unavailable (target hung up)")
                return
        super()._on_dialog_ended(event)

    # ---- the join -------------------------------------------------------------------------
    def _send_join(self) -> None:
        if self.state is CallState.ENDED or self._target_dialog is None:
            return
        try:
            rid = self.env.sip.send_in_dialog(
                self.transferee, "INVITE", headers=[("Content-Type", self._offer_type)], body=self._offer
            )
        except RequestPending:
            self._retry_join()
            return
        except UaError:
            self._join_failed(481, "Call/Transaction Does Not Exist (transferee gone)")
            return
        self._join_rid = rid
        # Its answer belongs to this call, though the dialog is still the original call's.
        self.refer.manager.watch(rid, self._join_event)

    def _join_event(self, event: UaEvent) -> bool:
        if isinstance(event, (ResponseReceived, RequestFailed)) and event.request_id == self._join_rid:
            if isinstance(event, RequestFailed) or event.response.status >= 200:
                self.refer.manager.unwatch(event.request_id)
            self._join_answered(event)
            return True
        return False

    def _retry_join(self) -> None:
        self._join_tries += 1
        if self._join_tries > JOIN_RETRIES:
            self._join_failed(491, "Request Pending")
            return
        self.env.later(JOIN_RETRY_S, self._send_join)

    def _join_answered(self, event: ResponseReceived | RequestFailed) -> None:
        if isinstance(event, ResponseReceived):
            resp = event.response
            if resp.status < 200:
                return
            self._join_rid = None
            if resp.status < 300:
                self._joined(resp)
                return
            status, reason = resp.status, resp.reason
        else:
            self._join_rid = None
            status, reason = event.status, event.reason
        if status == 491:
            self._retry_join()
            return
        self._join_failed(status, reason)

    def _joined(self, resp: Response) -> None:
        target = self._target_dialog
        if target is None:
            return
        content_type = resp.headers.get("content-type") or "application/sdp"

        def ack(answer: bytes) -> None:
            with contextlib.suppress(UaError):
                self.env.sip.ack(target, body=answer, headers=[("Content-Type", content_type)] if answer else [])

        def failed(why: str) -> None:
            ack(b"")  # a 2xx is always ACKed; the call then ends
            if self.state is not CallState.ENDED:
                self.hangup("media failure")

        if resp.body:
            self._media("answer", "callee", resp.body, ack, failed)
        else:
            ack(b"")
        self.joined = True
        self.final_status = 200
        self.held = set()
        if not self.adopted:
            self.adopted = True
            self.in_dialog = self.transferee
            self.env.bind(self, dialog_id=self.transferee)
        self.refer.joined(self)

    def _join_failed(self, status: int, reason: str) -> None:
        """Give the target up (blind: ACK and BYE the new leg; attended: ACK it with what
        it had, it goes back to its call) and end this call as failed."""
        target, self._target_dialog = self._target_dialog, None
        if self._join_rid is not None:
            self.refer.manager.unwatch(self._join_rid)
            self._join_rid = None
        if target is not None:
            sip = self.env.sip
            if self.restore_target:
                info = sip.dialog(target)
                sdp = info.local_sdp if info is not None else b""
                _ack(sip, target, sdp)
            else:
                _ack(sip, target, b"")
                with contextlib.suppress(UaError):
                    sip.bye(target, headers=[("Reason", f'SIP;cause={status};text="transfer failed"')])
        self.out_dialog = None
        self.answered_at = None
        if self.state is not CallState.ENDED:
            self.state = CallState.RINGING  # not connected: fail() below ends it as failed
        self.fail(status, reason)
        original = self.refer.call
        if media_replaced(self) and original.state is not CallState.ENDED:
            # the relay already gave the transferor's place to the target: the original
            # call has no media left to go on with
            original.hangup("transfer failed (media)")


def media_replaced(call: Call) -> bool:
    """`call` (a transfer's) took over another call's anchored media session."""
    replaced = getattr(call.env.media, "replaced", None)
    return bool(replaced(call)) if callable(replaced) else False


def _ack(sip: SipService, dialog: int, sdp: bytes) -> None:
    with contextlib.suppress(UaError):
        sip.ack(dialog, body=sdp, headers=[("Content-Type", "application/sdp")] if sdp else [])


# ---- one REFER --------------------------------------------------------------------------------


@dataclass
class TakeResult:
    status: int
    reason: str = ""
    dialog: int = 0
    info: DialogInfo | None = None
    party: Party | None = None
    handle: object = None  # a local _Taken, or (worker, link)


class Refer:
    """One REFER being carried out; the `TransferHook` of the call it arrived in."""

    def __init__(self, manager: TransferManager, call: Call, transferor_dialog: int, transferee_dialog: int,
                 subscription: Subscription | None, kind: str, target: str) -> None:
        self.manager = manager
        self.call = call
        self.transferor_dialog = transferor_dialog
        self.transferee_dialog = transferee_dialog
        self.transferor_side = side_of(call, transferor_dialog)
        self.transferor = caller_party(call) if self.transferor_side == "caller" else callee_party(call)
        self.transferee = callee_party(call) if self.transferor_side == "caller" else caller_party(call)
        self.subscription = subscription
        self.kind = kind  # "blind" or "attended"
        self.target_label = target
        self.state = "started"  # → "joined" → "done"; or "failed", "aborted"
        self.target_call: TransferCall | None = None
        self.take: TakeResult | None = None
        self.call_over = False  # the original call has ended

    # ---- TransferHook -------------------------------------------------------------------------
    def dialog_ended(self, call: Call, event: DialogEnded) -> bool:
        if event.dialog_id != self.transferor_dialog:
            return False  # the transferee hung up: the call ends as usual, the transfer with it
        if self.subscription is not None:
            self.subscription.close()
        detach(call, self.transferor_dialog)
        if self.state == "started" and self.target_call is not None:
            detach(call, self.transferee_dialog)  # the transferee waits in the new call
            self.target_call.adopt()
        elif self.state != "joined":
            return False
        self._end_original()
        return True

    # ---- progress from the new call ------------------------------------------------------------
    def progress(self, status: int, reason: str | None) -> None:
        if self.subscription is not None and self.state == "started":
            self.subscription.notify(status, reason, final=False)

    def target_failed(self, target: TransferCall, status: int, reason: str | None) -> None:
        """The new call ended without joining: the transferor hears why, the original
        call goes on as it was (an attended target goes back to its call)."""
        if self.take is not None:
            self.manager.release(self.take, joined=False)
        if self.state != "started":
            return
        self.state = "failed"
        log.info("event=transfer_failed kind=%s call=%s status=%d", self.kind, self.call.call_uuid, status)
        self.manager.count(f"{self.kind}_failed")
        self._record("failed", status)
        if self.subscription is not None:
            self.subscription.notify(status, reason, final=True)
        self._unhook()

    def joined(self, target: TransferCall) -> None:
        if self.state != "started":
            return
        self.state = "joined"
        log.info("event=transfer_done kind=%s call=%s new_call=%s", self.kind, self.call.call_uuid, target.call_uuid)
        self.manager.count(f"{self.kind}_ok")
        self._record("ok", 200)
        detach(self.call, self.transferee_dialog)
        if self.take is not None:
            self.manager.release(self.take, joined=True, call_uuid=target.call_uuid, cause="transferred")
        subscription = self.subscription
        if subscription is None or subscription.dead:
            self._end_original()
            return
        subscription.on_done = self._end_original
        subscription.notify(200, "OK", final=True)

    def _end_original(self) -> None:
        """The transferor's part is over: its call ends, cause "transferred"."""
        if self.state == "joined":
            self.state = "done"
        self._unhook()
        call = self.call
        if call.state is not CallState.ENDED:
            call.hangup("transferred", side=self.transferor_side)

    def abort(self) -> None:
        """The original call ended under the transfer (the transferee hung up, an operator)."""
        self.call_over = True
        self._unhook()
        target = self.target_call
        if self.state != "started" or (target is not None and target.adopted):
            return  # over already, or the transferee waits in the new call
        self.state = "aborted"
        self._record("abandoned", 487)
        if self.subscription is not None:
            self.subscription.close()
        if target is not None:
            target.abandon()

    def _unhook(self) -> None:
        if self.call.transfer is self:
            self.call.transfer = None
        self.manager.forget(self)

    def _record(self, result: str, status: int) -> None:
        entries = self.call.extra.setdefault("transfers", [])
        if isinstance(entries, list):
            entry: dict[str, object] = {"kind": self.kind, "by": self.transferor.number, "to": self.target_label,
                                        "result": result, "status": status}
            if self.target_call is not None:
                entry["call"] = self.target_call.call_uuid
            entries.append(entry)


class Continuation:
    """What a `Refer` is to a `TransferCall` for a transfer nobody asked for: a caller the
    B2BUA answered itself (an announcement) goes on to the announcement's `then` in a new
    call, which it waits in at once (the announcement's call is over)."""

    def __init__(self, manager: TransferManager, call: Call) -> None:
        self.manager = manager
        self.call = call
        self.transferee_dialog = call.in_dialog if call.in_dialog is not None else 0
        self.state = "started"
        self.target_call: TransferCall | None = None

    def progress(self, status: int, reason: str | None) -> None:
        return None

    def target_failed(self, target: TransferCall, status: int, reason: str | None) -> None:
        self.state = "failed"
        log.info("event=continuation_failed call=%s new_call=%s status=%d", self.call.call_uuid, target.call_uuid, status)

    def joined(self, target: TransferCall) -> None:
        self.state = "joined"
        log.info("event=continuation_joined call=%s new_call=%s", self.call.call_uuid, target.call_uuid)


# ---- the holder's side of a take ---------------------------------------------------------------


class _Taken:
    """A call whose party was taken for a join (this worker owns the named dialog): the
    named dialog's party is replaced, the other party (`survivor`) is held for the
    controller.  The `TransferHook` of that call until released."""

    def __init__(self, manager: TransferManager, call: Call, named: int, survivor: int, survivor_in: bool,
                 link: str | None, controller: int | None) -> None:
        self.manager = manager
        self.controller = controller
        self.call = call
        self.named = named
        self.survivor = survivor
        self.survivor_in = survivor_in
        self.link = link
        self.named_side = side_of(call, named)
        self.released = False

    def dialog_ended(self, call: Call, event: DialogEnded) -> bool:
        if event.dialog_id != self.named:
            return False
        # The replaced party hung up meanwhile: its call is over, the survivor stays held.
        detach(call, self.named)
        call.transfer = None
        call.hangup("transferred", side=self.named_side)
        return True

    def release(self, joined: bool, call_uuid: str, cause: str) -> None:
        if self.released:
            return
        self.released = True
        call = self.call
        manager = self.manager
        if call.transfer is self:
            call.transfer = None
        if joined:
            call.extra["transferred_into"] = call_uuid
            if call.state is not CallState.ENDED:
                call.hangup(cause or "transferred", side=self.named_side)
            return
        if self.link is not None:
            manager.remote.release(self.link)
        sip = manager.sip
        alive = sip.dialog(self.survivor) is not None
        if alive and call.state is CallState.ANSWERED:
            if self.survivor_in:
                call.in_dialog = self.survivor
            else:
                call.out_dialog = self.survivor
            call.env.bind(call, dialog_id=self.survivor)
            return
        if alive:
            with contextlib.suppress(UaError):
                sip.bye(self.survivor, headers=[("Reason", 'SIP;cause=200;text="transfer failed"')])
        if call.state is not CallState.ENDED:
            call.hangup("transfer failed", side="system")


# ---- the manager ------------------------------------------------------------------------------


class TransferManager:
    """Transfers of one worker: REFERs of its calls, INVITEs with Replaces, the dialogs it
    holds for other workers' joins and the ones they hold for it."""

    def __init__(self, env: TransferEnv, real_sip: Callable[[], SipService], workers: Workers) -> None:
        self.env = env
        self.workers = workers
        self.remote = RemoteDialogs(workers, self._dispatch, env.owner)
        self.sip = VirtualSip(real_sip, self.remote)
        self._watch: dict[int, Callable[[UaEvent], bool]] = {}
        self._refers: dict[str, Refer] = {}  # by the uuid of the call the REFER arrived in
        self._tickets = itertools.count(1)
        self._pending: dict[int, tuple[int, Callable[[TakeResult], None]]] = {}  # ticket → (worker, done)
        self._taken: dict[str, _Taken] = {}  # link → what we hold for another worker
        self.counters: dict[str, int] = {f"{kind}_{result}": 0 for kind in ("blind", "attended", "replaces")
                                         for result in ("ok", "failed")}

    def _dispatch(self, event: UaEvent) -> None:
        self.env.dispatch(event)

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def watch(self, request_id: int, handler: Callable[[UaEvent], bool]) -> None:
        self._watch[request_id] = handler

    def unwatch(self, request_id: int) -> None:
        self._watch.pop(request_id, None)

    def forget(self, refer: Refer) -> None:
        if self._refers.get(refer.call.call_uuid) is refer:
            del self._refers[refer.call.call_uuid]

    def table_sizes(self) -> dict[str, int]:
        return {"watched": len(self._watch), "refers": len(self._refers), "takes_pending": len(self._pending),
                "taken": len(self._taken), **self.remote.table_sizes()}

    # ---- UA events ------------------------------------------------------------------------------
    def on_ua_event(self, event: UaEvent) -> bool:
        """True when the event was ours (a held dialog, a NOTIFY's answer, a REFER)."""
        if self.remote.on_ua_event(event):
            return True
        if isinstance(event, (ResponseReceived, RequestFailed)):
            handler = self._watch.get(event.request_id)
            if handler is not None and handler(event):
                return True
        if isinstance(event, RequestReceived) and event.dialog_id is not None and event.request.method == "REFER":
            call = self.env.call_for(event)
            if call is not None:
                self.on_refer(call, event)
                return True
        return False

    def call_ended(self, call: Call) -> None:
        refer = self._refers.get(call.call_uuid)
        if refer is not None:
            refer.abort()

    # ---- REFER ------------------------------------------------------------------------------------
    def on_refer(self, call: Call, event: RequestReceived) -> None:
        sip = call.env.sip
        req = event.request
        request_id = event.request_id
        dialog = event.dialog_id
        assert dialog is not None
        other = call.out_dialog if dialog == call.in_dialog else call.in_dialog if dialog == call.out_dialog else None
        if call.state is not CallState.ANSWERED or other is None:
            sip.respond(request_id, 481)
            return
        if call.transfer is not None:
            sip.respond(request_id, 491, "Request Pending (a transfer is in progress)")
            return
        values = req.headers.get_all("refer-to")
        if len(values) != 1:
            sip.respond(request_id, 400, "Bad Request (exactly one Refer-To)")
            return
        try:
            target = parse_name_addr(values[0]).uri
        except SipParseError:
            sip.respond(request_id, 400, "Bad Request (Refer-To)")
            return
        method = target.param("method")
        if method is not None and method.upper() != "INVITE":
            sip.respond(request_id, 403, "Forbidden (only INVITE transfers)")
            return
        replaces: Replaces | None = None
        if target.is_sip:
            headers = uri_headers(target.headers)
            if "replaces" in headers:
                replaces = parse_replaces(headers["replaces"])
                if replaces is None:
                    sip.respond(request_id, 400, "Bad Request (Replaces)")
                    return
            number = target.user_unescaped or ""
            if replaces is None and not self.env.is_local_domain(target.host):
                sip.respond(request_id, 403, "Forbidden (Refer-To outside our domains)")
                return
        elif target.scheme == "tel" and target.opaque:
            number = unescape(target.opaque.split(";", 1)[0])
        else:  # not 416: that one ends the dialog (RFC 5057 §5.1), it is about the Request-URI
            sip.respond(request_id, 403, "Forbidden (Refer-To must be a sip, sips or tel URI)")
            return
        if not number and replaces is None:
            sip.respond(request_id, 400, "Bad Request (Refer-To has no number)")
            return
        no_sub = (req.headers.get("refer-sub") or "").strip().lower() == "false"
        sip.respond(request_id, 202, "Accepted", headers=[("Refer-Sub", "false")] if no_sub else [])
        subscription = None if no_sub else Subscription(self, sip, dialog, req.cseq.number)
        refer = Refer(self, call, dialog, other, subscription, "attended" if replaces else "blind", number)
        log.info("event=transfer_requested kind=%s call=%s by=%s to=%r", refer.kind, call.call_uuid,
                 refer.transferor.number, number)
        call.transfer = refer
        self._refers[call.call_uuid] = refer
        if subscription is not None:
            subscription.notify(100, "Trying", final=False)
        referred_by = _referred_by(req, refer.transferor, sip, call.peer)
        target_call = self._new_target_call(refer, number, referred_by, restore=replaces is not None)
        if replaces is None:
            self.env.route(target_call, number, Source(refer.transferor.user, refer.transferor.trunk,
                                                       refer.transferor.host or call.peer.host))
            return
        self.take(replaces, call, lambda result: self._attended_taken(refer, target_call, result))

    def continue_call(self, call: Call, callee: str, ring: Callable[[TransferCall], None]) -> TransferCall | None:
        """`call` (answered by us, its caller in `in_dialog`) goes on to `callee`: a new
        call, linked to it, that the caller waits in at once (ringing as a transfer's target
        would: late offer, the caller re-INVITEd with the target's SDP); its anchored media
        session goes along.  `call` ends (cause "announcement").  None: no caller dialog."""
        dialog = call.in_dialog
        info = call.env.sip.dialog(dialog) if dialog is not None else None
        if dialog is None or info is None:
            return None
        host = call.env.sip.local_address(info.peer)[0]
        origin = Continuation(self, call)
        target = TransferCall(
            call.env, origin, synthetic_request(info, callee or "continue", host), info.peer,
            request_id=self.remote.new_id(), call_uuid=_new_uuid(), caller=call.caller, callee=callee, user=call.user,
            trunk=call.trunk, ring_s=call.ring_s, max_redirects=call.redirects_left, referred_by=None,
            restore_target=False,
        )
        target.linked_to = call.call_uuid
        target.extra["private"] = bool(call.extra.get("private"))
        target.extra["display"] = call.extra.get("display")
        target.extra["continues"] = call.call_uuid
        origin.target_call = target
        self.env.add_call(target)
        media_transfer(target, call, "caller", "caller")
        detach(call, dialog)
        target.adopt()
        call.hangup("announcement")
        ring(target)
        return target

    def _new_target_call(self, refer: Refer, number: str, referred_by: str | None, *, restore: bool) -> TransferCall:
        call = refer.call
        sip = call.env.sip
        info = sip.dialog(refer.transferee_dialog)
        assert info is not None  # the call is answered: both dialogs exist
        host = sip.local_address(info.peer)[0]
        transferee = refer.transferee
        target = TransferCall(
            call.env, refer, synthetic_request(info, number or "transfer", host), info.peer,
            request_id=self.remote.new_id(), call_uuid=_new_uuid(), caller=transferee.number, callee=number,
            user=refer.transferor.user, trunk=transferee.trunk, ring_s=call.ring_s, max_redirects=call.redirects_left,
            referred_by=referred_by, restore_target=restore,
        )
        target.linked_to = call.call_uuid
        target.extra["private"] = transferee.private
        target.extra["display"] = transferee.display
        target.extra["transfer"] = {"kind": refer.kind, "from_call": call.call_uuid, "by": refer.transferor.number,
                                    "referred_by": referred_by}
        refer.target_call = target
        self.env.add_call(target)
        # an anchored call's relay session goes to the new call: the target replaces the
        # transferor there when it answers (the transferee keeps its ports and stream)
        media_transfer(target, call, "callee" if refer.transferor_side == "caller" else "caller", "caller")
        return target

    def _attended_taken(self, refer: Refer, target: TransferCall, result: TakeResult) -> None:
        if refer.state != "started" or target.state is CallState.ENDED:
            if result.status == 200:
                self.release(result, joined=False)
            if target.state is not CallState.ENDED:
                target.hangup("transfer abandoned")
            return
        if result.status != 200 or result.info is None or result.party is None:
            target.fail(result.status, result.reason or None)
            return
        refer.take = result
        party = result.party
        target.callee = party.number
        target.callee_user = party.user
        refer.target_label = party.number
        transfer = target.extra.get("transfer")
        if isinstance(transfer, dict):
            transfer["replaced_call"] = party.call_uuid
        try:
            place_reinvite(target, result.dialog, dest_for(result.info, party.number), result.info.call_id, b"",
                           "application/sdp", auto_ack=False)
        except RequestPending:
            target.fail(491, "Request Pending")
        except UaError:
            target.fail(481, None)

    # ---- taking a dialog for a join (both sides) -----------------------------------------------
    def take(self, replaces: Replaces, exclude: Call, done: Callable[[TakeResult], None]) -> None:
        worker = self.workers.owner_of(replaces.call_id)
        if worker == self.workers.index:
            done(self._take_here(replaces, None, exclude))
            return
        ticket = next(self._tickets)
        self._pending[ticket] = (worker, done)
        self.workers.send(worker, TakeDialog(ticket, replaces.call_id, [replaces.to_tag, replaces.from_tag],
                                             replaces.early_only))

    def _find(self, call_id: str, tags: set[str]) -> tuple[Call, int] | None:
        sip = self.sip
        for call in self.env.calls.values():
            if call.request.call_id != call_id and not any(leg.call_id == call_id for leg in call.legs):
                continue
            for dialog in (call.in_dialog, call.out_dialog):
                if dialog is None:
                    continue
                info = sip.dialog(dialog)
                if info is not None and info.call_id == call_id and {info.local_tag, info.remote_tag} == tags:
                    return call, dialog
        return None

    def _take_here(self, replaces: Replaces, controller: int | None, exclude: Call | None) -> TakeResult:
        found = self._find(replaces.call_id, {replaces.to_tag, replaces.from_tag})
        if found is None:
            return TakeResult(481, "Call/Transaction Does Not Exist")
        call, named = found
        if call is exclude:
            return TakeResult(403, "Forbidden (the dialog is in the same call)")
        if replaces.early_only and call.state is CallState.ANSWERED:
            return TakeResult(486, "Busy Here (early-only)")
        if call.state is not CallState.ANSWERED:
            return TakeResult(481, "Call/Transaction Does Not Exist (not answered)")
        if call.transfer is not None:
            return TakeResult(491, "Request Pending (a transfer is in progress)")
        survivor_in = named == call.out_dialog
        survivor = call.in_dialog if survivor_in else call.out_dialog
        info = self.sip.dialog(survivor) if survivor is not None else None
        if survivor is None or info is None:
            return TakeResult(481, "Call/Transaction Does Not Exist")
        party = caller_party(call) if survivor_in else callee_party(call)
        detach(call, survivor)
        link = self.remote.hold(survivor, controller, self.sip) if controller is not None else None
        taken = _Taken(self, call, named, survivor, survivor_in, link, controller)
        call.transfer = taken
        if link is not None:
            self._taken[link] = taken
        return TakeResult(200, "OK", survivor, info, party, taken)

    def release(self, result: TakeResult, *, joined: bool, call_uuid: str = "", cause: str = "") -> None:
        handle = result.handle
        if isinstance(handle, _Taken):
            handle.release(joined, call_uuid, cause)
        elif isinstance(handle, tuple):
            worker, link = handle
            self.workers.send(worker, ReleaseDialog(link, joined, call_uuid, cause))
            if not joined:  # it goes back to its call there: we no longer drive it
                self.remote.detach(result.dialog)
        result.handle = None

    # ---- INVITE with Replaces ----------------------------------------------------------------------
    def on_replaces(self, call: Call) -> None:
        """`call` is a new INVITE carrying Replaces: join it with the other party of the
        named dialog's call instead of routing it."""
        values = call.request.headers.get_all("replaces")
        replaces = parse_replaces(values[0]) if len(values) == 1 else None
        if replaces is None:
            self.count("replaces_failed")
            call.fail(400, "Bad Request (Replaces)")
            return
        self.take(replaces, call, lambda result: self._replace(call, result))

    def _replace(self, call: Call, result: TakeResult) -> None:
        if call.state is CallState.ENDED:
            if result.status == 200:
                self.release(result, joined=False)
            return
        if result.status != 200 or result.info is None or result.party is None:
            self.count("replaces_failed")
            call.fail(result.status, result.reason or None)
            return
        party = result.party
        call.callee = party.number
        call.callee_user = party.user
        call.linked_to = party.call_uuid
        call.extra["replaces"] = {"call": party.call_uuid}
        request = call.request
        content_type = request.headers.get("content-type") or "application/sdp"
        info = result.info
        handle = result.handle
        if isinstance(handle, _Taken):  # the other party's call is ours: its relay session takes the new caller
            media_transfer(call, handle.call, "callee" if handle.survivor_in else "caller", "callee")

        def place(body: bytes) -> None:
            try:
                leg = place_reinvite(call, result.dialog, dest_for(info, party.number), info.call_id, body,
                                     content_type, auto_ack=not call.late_offer)
            except UaError as exc:
                self.count("replaces_failed")
                self.release(result, joined=False)
                call.fail(491 if isinstance(exc, RequestPending) else 481, None)
                return
            self.watch(leg.request_id, lambda event: self._replace_answered(call, leg, result, event))

        def failed(why: str) -> None:
            self.count("replaces_failed")
            self.release(result, joined=False)
            call.fail(488, f"Not Acceptable Here (media: {why})"[:120])

        if call.late_offer:
            place(b"")
        else:
            call._media("offer", "callee", request.body, place, failed)

    def _replace_answered(self, call: Call, leg: OutLeg, result: TakeResult, event: UaEvent) -> bool:
        if isinstance(event, ResponseReceived) and event.response.status < 200:
            return False
        self.unwatch(leg.request_id)
        if call.state is CallState.RINGING:
            call.on_event(event)
        elif isinstance(event, ResponseReceived) and event.response.status < 300 and call.late_offer:
            info = self.sip.dialog(result.dialog)
            _ack(self.sip, result.dialog, info.local_sdp if info is not None else b"")
        joined = call.state is CallState.ANSWERED and call.out_dialog == result.dialog
        self.count("replaces_ok" if joined else "replaces_failed")
        handle = result.handle
        self.release(result, joined=joined, call_uuid=call.call_uuid, cause="replaced")
        if not joined and isinstance(handle, _Taken) and media_replaced(call) and handle.call.state is not CallState.ENDED:
            handle.call.hangup("transfer failed (media)")  # its relay session went to the new caller
        return True

    # ---- workers -------------------------------------------------------------------------------------
    def on_worker_message(self, source: int, msg: WorkerMessage) -> None:
        if isinstance(msg, TakeDialog):
            tags = [*list(msg.tags), "", ""]
            result = self._take_here(Replaces(msg.call_id, tags[0], tags[1], msg.early_only), source, None)
            handle = result.handle
            link = handle.link if isinstance(handle, _Taken) and handle.link else ""
            self.workers.send(source, DialogTaken(
                msg.ticket, result.status, result.reason, link,
                info_to_json(result.info) if result.info is not None else {},
                result.party.to_json() if result.party is not None else {},
            ))
        elif isinstance(msg, DialogTaken):
            pending = self._pending.pop(msg.ticket, None)
            if pending is None:
                if msg.status == 200:  # nobody waits for it any more
                    self.workers.send(source, ReleaseDialog(msg.link, False))
                return
            if msg.status != 200:
                pending[1](TakeResult(msg.status, msg.reason))
                return
            info = info_from_json(msg.info, self.env.owner)
            vid = self.remote.attach(source, msg.link, info)
            pending[1](TakeResult(200, msg.reason, vid, self.remote.v_dialog(vid), Party.from_json(msg.party),
                                  (source, msg.link)))
        elif isinstance(msg, ReleaseDialog):
            taken = self._taken.pop(msg.link, None)
            if taken is not None:
                taken.release(msg.joined, msg.call_uuid, msg.cause)
        else:
            self.remote.on_worker_message(source, msg)

    def on_worker_lost(self, index: int) -> None:
        for ticket, (worker, done) in list(self._pending.items()):
            if worker == index:
                del self._pending[ticket]
                done(TakeResult(503, "Service Unavailable (worker lost)"))
        for link, taken in list(self._taken.items()):
            if taken.controller == index:  # the join never finished: the party goes back
                del self._taken[link]
                taken.release(False, "", "")
        self.remote.on_worker_lost(index)

    def shutdown(self) -> int:
        """Stopping: hang up what we hold for other workers."""
        return self.remote.hang_up_all("shutdown")


def _referred_by(req: Request, transferor: Party, sip: SipService, peer: Peer) -> str | None:
    """RFC 3892: the REFER's Referred-By when it is a valid name-addr, else the transferor."""
    value = req.headers.get("referred-by")
    if value:
        try:
            parse_name_addr(value)
            return value
        except SipParseError:
            pass
    if not transferor.number:
        return None
    return f"<sip:{transferor.number}@{sip.local_address(peer)[0]}>"


def _new_uuid() -> str:
    import uuid

    return uuid.uuid4().hex
