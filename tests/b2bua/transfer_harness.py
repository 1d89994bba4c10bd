"""Transfers in the in-memory harness: pbx nodes whose UA events drive the B2BUA's calls
and `transfer.TransferManager` exactly as the feature does (REFER and Replaces handled
first, synthesised events of remote dialogs dispatched like real ones), and scripted
phones that answer, hold, REFER and tell whose media they receive.

Several pbx nodes form a `Cluster`: they play the workers of one server (each its own UA
and calls), the owner of a Call-ID is the node that first saw or minted it, and typed
messages go between them through `encode_message`/`decode_message` (so every message is
proved to survive JSON) after the network latency.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from call_harness import NodeSip
from ua_harness import Net, Node

from vivait_sip.b2bua.call import Call, Dest, OutLeg, PassThrough
from vivait_sip.b2bua.routing import Source
from vivait_sip.b2bua.transfer import TransferManager
from vivait_sip.contract import WorkerMessage, decode_message, encode_message
from vivait_sip.sip.message import Request, Response
from vivait_sip.sip.ua import (
    AckReceived,
    DialogEnded,
    RequestCancelled,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
    UaEvent,
)

CT_SDP = [("Content-Type", "application/sdp")]


def sdp_of(name: str, host: str, direction: str = "sendrecv", version: int = 1) -> bytes:
    return (
        f"v=0\r\no={name} 1 {version} IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio 4000 RTP/AVP 0\r\na={direction}\r\n"
    ).encode()


def origin(sdp: bytes) -> str | None:
    found = re.search(rb"^o=(\S+)", sdp, re.M)
    return found.group(1).decode() if found else None


class Cluster:
    """The workers of one server: who owns a Call-ID, messages between them."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.pbxs: list[TransferPbx] = []
        self.owners: dict[str, int] = {}
        self.messages: list[tuple[int, int, str]] = []  # (from, to, kind)

    def deliver(self, source: int, worker: int, msg: WorkerMessage) -> None:
        data = encode_message(msg)
        self.messages.append((source, worker, msg.kind))
        target = self.pbxs[worker]
        self.net.at(self.net.now + self.net.latency, lambda: target.transfers.on_worker_message(source, decode_message(data)))

    def lose(self, index: int) -> None:
        """Worker `index` dies: the others withdraw what it had pending."""
        for pbx in self.pbxs:
            if pbx.index != index:
                self.net.at(self.net.now, lambda p=pbx: p.transfers.on_worker_lost(index))


class TransferPbx:
    """A pbx node (one worker): `transfer.TransferEnv` and `transfer.Workers` over it."""

    def __init__(self, net: Net, node: Node, cluster: Cluster | None = None) -> None:
        self.net = net
        self.node = node
        self.cluster = cluster or Cluster(net)
        self.index = len(self.cluster.pbxs)
        self.cluster.pbxs.append(self)
        self.owner = "b2bua"
        self.media = PassThrough()
        self.node_sip = NodeSip(node)
        self.calls: dict[str, Call] = {}
        self.every_call: list[Call] = []
        self.ended_calls: list[Call] = []
        self.route_to: Callable[[Call, str, Source], None] = lambda call, number, source: call.fail(404)
        self.routed: list[tuple[str, Source]] = []
        self.unowned: list[UaEvent] = []
        self.holds: list[tuple[str, str, bool]] = []
        self.media_stats: dict[str, dict[str, Any]] = {}
        self._by_request: dict[int, Call] = {}
        self._by_dialog: dict[int, Call] = {}
        self._ids = itertools.count(1)
        self.transfers = TransferManager(self, lambda: self.node_sip, self)
        node.ua.set_handler("INVITE", self.owner)
        node.handler = self.handle

    # Workers ---------------------------------------------------------------------------------
    def owner_of(self, call_id: str) -> int:
        return self.cluster.owners.get(call_id, 0)

    def send(self, worker: int, msg: WorkerMessage) -> None:
        self.cluster.deliver(self.index, worker, msg)

    # CallEnv ---------------------------------------------------------------------------------
    @property
    def sip(self) -> object:
        return self.transfers.sip

    def now(self) -> float:
        return self.net.now

    def new_call_id(self) -> str:
        call_id = f"out-{next(self._ids)}@pbx{self.index}"
        self.cluster.owners[call_id] = self.index
        return call_id

    def later(self, delay: float, fn: Callable[[], None]) -> _Timer:
        timer = _Timer()
        self.net.at(self.net.now + delay, lambda: None if timer.cancelled else fn())
        return timer

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
        return True

    def release_trunk(self, call: Call, dest: Dest) -> None:
        pass

    def leg_started(self, call: Call, leg: OutLeg) -> None:
        pass

    def leg_ended(self, call: Call, leg: OutLeg) -> None:
        pass

    def redirect(self, call: Call, targets: list[object]) -> None:
        call.ring([])

    def ended(self, call: Call) -> None:
        self.calls.pop(call.call_uuid, None)
        self.ended_calls.append(call)
        for leg in call.legs:
            self._by_request.pop(leg.request_id, None)
        self._by_request.pop(call.request_id, None)
        self.transfers.call_ended(call)

    # TransferEnv -----------------------------------------------------------------------------
    def call_for(self, event: UaEvent) -> Call | None:
        dialog_id = getattr(event, "dialog_id", None)
        call = self._by_dialog.get(dialog_id) if dialog_id is not None else None
        if call is None:
            call = self._by_request.get(getattr(event, "request_id", 0))
        return call

    def route(self, call: Call, number: str, source: Source) -> None:
        self.routed.append((number, source))
        self.route_to(call, number, source)

    def add_call(self, call: Call) -> None:
        self.calls[call.call_uuid] = call
        self.every_call.append(call)

    def dispatch(self, event: UaEvent) -> None:
        self.handle(self.node, event)

    def is_local_domain(self, host: str) -> bool:
        return host in ("pbx.example", self.node.host)

    # UA events, as the feature dispatches them ---------------------------------------------------
    def handle(self, node: Node, event: UaEvent) -> None:
        if self.transfers.on_ua_event(event):
            if isinstance(event, DialogEnded):
                self._by_dialog.pop(event.dialog_id, None)
            return
        if isinstance(event, RequestReceived) and event.dialog_id is None and event.request.method == "INVITE":
            req = event.request
            self.cluster.owners.setdefault(req.call_id, self.index)
            call = Call(self, event.request_id, req, event.peer, call_uuid=f"w{self.index}-call-{next(self._ids)}",
                        caller=req.from_.uri.user or "", callee=req.uri.user or "", user=req.from_.uri.user)
            self.add_call(call)
            if "replaces" in req.headers:
                self.transfers.on_replaces(call)
            else:
                self.route(call, req.uri.user or "", Source(call.user, None, event.peer.host))
            return
        call = self.call_for(event)
        if isinstance(event, DialogEnded):
            self._by_dialog.pop(event.dialog_id, None)
        if call is None:
            self.unowned.append(event)
            if isinstance(event, ResponseReceived) and event.dialog_id is not None and 200 <= event.response.status < 300:
                self.transfers.sip.bye(event.dialog_id)
            elif isinstance(event, RequestReceived) and event.request.method not in ("ACK", "PRACK"):
                self.transfers.sip.respond(event.request_id, 481)
            return
        call.on_event(event)
        if isinstance(event, (ResponseReceived, RequestFailed)) and (
            isinstance(event, RequestFailed) or event.response.status >= 200
        ) and not any(leg.request_id == event.request_id for leg in call.legs):
            self._by_request.pop(event.request_id, None)

    def leftovers(self) -> dict[str, int]:
        """What is still held after every call ended (all zeros when drained)."""
        sizes = {k: v for k, v in self.transfers.table_sizes().items() if v}
        if self.calls:
            sizes["calls"] = len(self.calls)
        if self._by_dialog:
            sizes["bound_dialogs"] = len(self._by_dialog)
        if self._by_request:
            sizes["bound_requests"] = len(self._by_request)
        return sizes


@dataclass
class _Timer:
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


def dest(phone: Phone, label: str | None = None) -> Dest:
    node = phone.node
    return Dest(uri=f"sip:{phone.name}@{node.host}:{node.port}", destinations=(node.peer,),
                to=f"<sip:{phone.name}@pbx.example>", from_="<sip:caller@pbx.example>", label=label or phone.name)


@dataclass
class Notify:
    event: str
    state: str
    body: bytes

    @property
    def status(self) -> int:
        return int(self.body.split()[1])


@dataclass
class Phone:
    """A scripted phone: answers calls (`status`, after `answer_after` s; None: rings
    forever), answers re-INVITEs with its own SDP (an offer when none came), NOTIFYs
    with 200, and remembers whose SDP it last got in each dialog (`peer_of`)."""

    node: Node
    status: int | None = 200
    answer_after: float = 0.5
    answer_reinvite: int = 200
    notifies: list[Notify] = field(default_factory=list)
    dialogs: list[int] = field(default_factory=list)
    media: dict[int, str] = field(default_factory=dict)  # dialog → whose SDP we last received
    invites: list[Request] = field(default_factory=list)
    held: bool = False
    late: set[int] = field(default_factory=set)  # our INVITEs without offer: we answer in the ACK

    def __post_init__(self) -> None:
        self.node.ua.set_handler("INVITE", "phone")
        self.node.handler = self.handle

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def net(self) -> Net:
        return self.node.net

    def sdp(self) -> bytes:
        return sdp_of(self.name, self.node.host, "sendonly" if self.held else "sendrecv")

    def _learn(self, dialog: int | None, body: bytes) -> None:
        name = origin(body) if body else None
        if dialog is not None and name is not None:
            self.media[dialog] = name

    def handle(self, node: Node, event: UaEvent) -> None:
        ua, now = node.ua, node.net.now
        if isinstance(event, RequestReceived):
            req = event.request
            if req.method == "INVITE" and event.dialog_id is None:
                self.invites.append(req)
                rid = event.request_id
                dialog = ua.respond(rid, 180, now=now)
                if dialog is not None:
                    self._learn(dialog, req.body)
                if self.status is not None:
                    self.net.at(now + self.answer_after, lambda: self.answer(rid, req))
            elif req.method == "INVITE":
                self._learn(event.dialog_id, req.body)
                status = self.answer_reinvite
                ua.respond(event.request_id, status, headers=CT_SDP if status < 300 else (),
                           body=self.sdp() if status < 300 else b"", now=now)
            elif req.method == "NOTIFY":
                self.notifies.append(Notify(req.headers.get("event") or "", req.headers.get("subscription-state") or "",
                                            req.body))
                ua.respond(event.request_id, 200, now=now)
            elif req.method not in ("PRACK",):
                ua.respond(event.request_id, 200, now=now)
        elif isinstance(event, AckReceived):
            self._learn(event.dialog_id, event.request.body)
        elif isinstance(event, ResponseReceived):
            resp = event.response
            if resp.cseq.method == "INVITE" and 200 <= resp.status < 300:
                if event.dialog_id is not None and event.dialog_id not in self.dialogs:
                    self.dialogs.append(event.dialog_id)
                self._learn(event.dialog_id, resp.body)
                if event.request_id in self.late and event.dialog_id is not None:
                    ua.ack(event.dialog_id, body=self.sdp(), headers=CT_SDP, now=now)
        elif isinstance(event, DialogEnded) and event.dialog_id in self.dialogs:
            self.dialogs.remove(event.dialog_id)

    def answer(self, request_id: int, req: Request, status: int | None = None) -> None:
        status = status or self.status or 200
        body = self.sdp() if status < 300 else b""
        dialog = self.node.act(lambda ua, now: ua.respond(request_id, status, headers=CT_SDP if body else (), body=body,
                                                          now=now))
        if isinstance(dialog, int) and status < 300 and dialog not in self.dialogs:
            self.dialogs.append(dialog)

    def call(self, pbx: TransferPbx, number: str, *, offer: bool = True, headers: list[tuple[str, str]] | None = None) -> int:
        """INVITE `number` at the pbx (an offer unless `offer` is False)."""
        node = self.node
        extra = list(headers or [])
        request_id = int(node.act(lambda ua, now: ua.send_request(  # type: ignore[arg-type]
            "INVITE", f"sip:{number}@{pbx.node.host}:{pbx.node.port}", owner="phone", destinations=[pbx.node.peer],
            now=now, from_=f"<sip:{self.name}@pbx.example>", headers=[*(CT_SDP if offer else []), *extra],
            body=self.sdp() if offer else b"", auto_ack=offer)))
        if not offer:
            self.late.add(request_id)
        return request_id

    def refer(self, dialog: int, refer_to: str, *, referred_by: str | None = None,
              headers: list[tuple[str, str]] | None = None) -> int:
        extra = [("Refer-To", refer_to), *([("Referred-By", referred_by)] if referred_by else []), *(headers or [])]
        return int(self.node.act(lambda ua, now: ua.send_in_dialog(dialog, "REFER", headers=extra, now=now)))  # type: ignore[arg-type]

    def hold(self, dialog: int, held: bool = True) -> None:
        self.held = held
        self.node.act(lambda ua, now: ua.send_in_dialog(dialog, "INVITE", headers=CT_SDP, body=self.sdp(), now=now))

    def bye(self, dialog: int) -> None:
        self.node.act(lambda ua, now: ua.bye(dialog, now))

    def finals(self, method: str) -> list[int]:
        return [e.response.status for e in self.node.of(ResponseReceived)
                if e.response.cseq.method == method and e.response.status >= 200]

    def ended(self) -> list[DialogEnded]:
        return self.node.of(DialogEnded)

    def talks_to(self) -> set[str]:
        """Whose SDP this phone's live dialogs last received."""
        return {self.media[d] for d in self.dialogs if d in self.media}


def responses(node: Node, method: str) -> list[Response]:
    return [e.response for e in node.of(ResponseReceived) if e.response.cseq.method == method]


def cancelled(node: Node) -> list[RequestCancelled]:
    return node.of(RequestCancelled)
