"""Dialogs held by another worker, driven by typed messages.

An attended transfer or an INVITE with Replaces may join two calls that live in different
workers (calls land on workers by Call-ID hash).  Dialogs never move between processes:
the worker holding a dialog (its *holder*) keeps a `_Proxy` for it, which carries out what
the *controller* asks (send a request in the dialog, answer one, ACK, BYE) and sends back
every UA event of the dialog and of those requests.  The controller sees a *virtual
dialog*: a negative id, which `VirtualSip` — the `SipService` the B2BUA's calls are given
— turns into messages, and whose events arrive as ordinary UA events (the messages carry
requests and responses as bytes, parsed again here).  So a `Call` bridges a local dialog
and a remote one without knowing it, and everything it does (relaying re-INVITEs, hold,
INFO, BYE, session timers in each dialog's own UA, another transfer) works across workers.

Virtual ids (dialogs, requests) are negative and so never collide with the UA's ids, which
count up from 1.  When a worker dies (`on_worker_lost`), the controller sees its virtual
dialogs end (`DialogEnded("worker_lost")`, pending requests `RequestFailed(503)`) and the
holder hangs up the dialogs it held for the dead controller.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..contract import SipService, WorkerMessage, worker_message
from ..sip.auth import Credentials
from ..sip.errors import SipParseError
from ..sip.message import Request, Response, parse_message
from ..sip.peer import Peer
from ..sip.ua import (
    AckReceived,
    DialogEnded,
    DialogInfo,
    RequestCancelled,
    RequestFailed,
    RequestPending,
    RequestReceived,
    ResponseReceived,
    UaError,
    UaEvent,
    UnknownDialog,
)
from ..sip.uri import SipUri

log = logging.getLogger("vivait_sip.b2bua")

WORKER_LOST = 'SIP;cause=503;text="worker lost"'


def _text(data: bytes) -> str:
    return data.decode("latin-1")  # any bytes, losslessly, as a JSON string


def _bytes(text: str) -> bytes:
    return text.encode("latin-1")


@worker_message("b2bua.rd_command")
@dataclass(frozen=True)
class DialogCommand(WorkerMessage):
    """Controller → holder: do this in the held dialog `link`.  `op`: "send" (a request;
    `ref` is the controller's id for it), "respond" (to the holder's request `ref`),
    "ack", "bye"."""

    link: str
    op: str
    ref: int = 0
    method: str = ""
    status: int = 0
    reason: str = ""
    headers: list[list[str]] = field(default_factory=list)
    body: str = ""
    auto_ack: bool = True


@worker_message("b2bua.rd_event")
@dataclass(frozen=True)
class DialogEvent(WorkerMessage):
    """Holder → controller: a UA event of the held dialog `link`.  `what`: "response" /
    "failed" (to the controller's request `ref`), "request" / "ack" / "cancelled" (the
    holder's request `ref`), "ended" (the dialog is gone; `reason` why)."""

    link: str
    what: str
    ref: int = 0
    status: int = 0
    reason: str = ""
    data: str = ""
    peer: list[Any] = field(default_factory=list)


MESSAGES: tuple[type[WorkerMessage], ...] = (DialogCommand, DialogEvent)


class Workers(Protocol):
    """The other workers, as far as remote dialogs and transfers need them."""

    @property
    def index(self) -> int: ...

    def owner_of(self, call_id: str) -> int: ...

    def send(self, worker: int, msg: WorkerMessage) -> None: ...


class _Proxy:
    """Holder side: one dialog held for a controller worker."""

    __slots__ = ("controller", "dialog", "link", "refs", "sip")

    def __init__(self, link: str, dialog: int, controller: int | None, sip: SipService) -> None:
        self.link = link
        self.dialog = dialog
        self.controller = controller  # None: the controller is gone, events are swallowed
        self.sip = sip
        self.refs: dict[int, int] = {}  # our request id → the controller's id for it


class _Virtual:
    """Controller side: a dialog another worker holds for us."""

    __slots__ = ("by_remote", "incoming", "info", "link", "pending", "vid", "worker")

    def __init__(self, vid: int, worker: int, link: str, info: DialogInfo) -> None:
        self.vid = vid
        self.worker = worker
        self.link = link
        self.info = info
        self.pending: set[int] = set()  # our requests sent in it, not yet finally answered
        self.incoming: dict[int, tuple[int, str]] = {}  # our id for a request it received → the holder's id, method
        self.by_remote: dict[int, int] = {}  # the holder's request id → ours (until answered, or ACKed)


class RemoteDialogs:
    """Both sides of remote dialogs for one worker.

    `workers.send(worker, msg)` delivers a message to another worker; `dispatch(event)`
    hands a synthesised UA event to the B2BUA exactly as the adapter hands it real ones."""

    def __init__(self, workers: Workers, dispatch: Callable[[UaEvent], None], owner: str) -> None:
        self.workers = workers
        self._dispatch = dispatch
        self.owner = owner
        self._ids = itertools.count(-1, -1)
        self._links = itertools.count(1)
        self._proxies: dict[str, _Proxy] = {}
        self._proxy_by_dialog: dict[int, _Proxy] = {}
        self._proxy_by_request: dict[int, _Proxy] = {}
        self._virtuals: dict[int, _Virtual] = {}
        self._virtual_by_link: dict[tuple[int, str], _Virtual] = {}
        self._virtual_by_request: dict[int, _Virtual] = {}

    def new_id(self) -> int:
        """A fresh negative id (virtual dialogs and requests, synthetic request ids)."""
        return next(self._ids)

    # ---- holder side ----------------------------------------------------------------------
    def hold(self, dialog: int, controller: int, sip: SipService) -> str:
        """Hold `dialog` for worker `controller`; its events go there from now on."""
        link = f"{self.workers.index}.{next(self._links)}"
        proxy = _Proxy(link, dialog, controller, sip)
        self._proxies[link] = proxy
        self._proxy_by_dialog[dialog] = proxy
        return link

    def release(self, link: str) -> int | None:
        """Stop holding (the dialog goes back to a local call); returns the dialog."""
        proxy = self._proxies.get(link)
        if proxy is None:
            return None
        self._forget_proxy(proxy)
        return proxy.dialog

    def holds(self, dialog: int) -> bool:
        return dialog in self._proxy_by_dialog

    def _forget_proxy(self, proxy: _Proxy) -> None:
        """The dialog is no longer held (ended, or given back): requests still pending in
        it stay mapped until their final answer, which nobody is told about."""
        self._proxies.pop(proxy.link, None)
        if self._proxy_by_dialog.get(proxy.dialog) is proxy:
            del self._proxy_by_dialog[proxy.dialog]
        proxy.controller = None

    def _command(self, source: int, msg: DialogCommand) -> None:
        proxy = self._proxies.get(msg.link)
        if proxy is None or proxy.controller != source:
            if msg.op == "send":  # the dialog is gone: its end was (or will be) reported
                self.workers.send(source, DialogEvent(msg.link, "failed", msg.ref, 481, "Call/Transaction Does Not Exist"))
            return
        sip = proxy.sip
        headers = [(str(h[0]), str(h[1])) for h in msg.headers]
        body = _bytes(msg.body)
        if msg.op == "send":
            try:
                ours = sip.send_in_dialog(proxy.dialog, msg.method, headers=headers, body=body, auto_ack=msg.auto_ack)
            except RequestPending:
                self.workers.send(source, DialogEvent(msg.link, "failed", msg.ref, 491, "Request Pending"))
                return
            except UaError:
                self.workers.send(source, DialogEvent(msg.link, "failed", msg.ref, 481, "Call/Transaction Does Not Exist"))
                return
            proxy.refs[ours] = msg.ref
            self._proxy_by_request[ours] = proxy
        elif msg.op == "respond":
            sip.respond(msg.ref, msg.status, msg.reason or None, headers=headers, body=body)
        elif msg.op == "ack":
            with contextlib.suppress(UaError):
                sip.ack(proxy.dialog, body=body, headers=headers)
        elif msg.op == "bye":
            with contextlib.suppress(UaError):
                sip.bye(proxy.dialog, headers=headers)

    def _proxy_event(self, proxy: _Proxy, event: UaEvent) -> None:
        controller = proxy.controller
        link = proxy.link
        out: DialogEvent | None = None
        if isinstance(event, ResponseReceived):
            ref = proxy.refs.get(event.request_id)
            if ref is None:
                return
            resp = event.response
            if resp.status >= 200:
                del proxy.refs[event.request_id]
                self._proxy_by_request.pop(event.request_id, None)
                if controller is None and resp.status < 300 and resp.cseq.method == "INVITE":
                    self._ack_unwanted(proxy)
            out = DialogEvent(link, "response", ref, data=_text(resp.to_bytes()))
        elif isinstance(event, RequestFailed):
            ref = proxy.refs.pop(event.request_id, None)
            self._proxy_by_request.pop(event.request_id, None)
            if ref is None:
                return
            out = DialogEvent(link, "failed", ref, event.status, event.reason)
        elif isinstance(event, RequestReceived):
            peer = event.peer
            out = DialogEvent(link, "request", event.request_id, data=_text(event.request.to_bytes()),
                              peer=[peer.transport, peer.host, peer.port])
        elif isinstance(event, AckReceived):
            out = DialogEvent(link, "ack", event.request_id, data=_text(event.request.to_bytes()))
        elif isinstance(event, RequestCancelled):
            out = DialogEvent(link, "cancelled", event.request_id, reason=event.reason)
        elif isinstance(event, DialogEnded):
            self._forget_proxy(proxy)
            data = _text(event.request.to_bytes()) if event.request is not None else ""
            out = DialogEvent(link, "ended", reason=event.reason, data=data)
        if out is not None and controller is not None:
            self.workers.send(controller, out)

    def _ack_unwanted(self, proxy: _Proxy) -> None:
        """A 2xx to a re-INVITE (sent without auto ACK) whose controller is gone: ACK it
        with the last SDP we sent in the dialog, as if nothing had changed."""
        info = proxy.sip.dialog(proxy.dialog)
        sdp = info.local_sdp if info is not None else b""
        with contextlib.suppress(UaError):
            proxy.sip.ack(proxy.dialog, body=sdp, headers=[("Content-Type", "application/sdp")] if sdp else [])

    # ---- controller side ------------------------------------------------------------------
    def attach(self, worker: int, link: str, info: DialogInfo) -> int:
        """A dialog worker `worker` holds for us as `link`: its virtual id."""
        vid = self.new_id()
        virtual = _Virtual(vid, worker, link, _with_id(info, vid))
        self._virtuals[vid] = virtual
        self._virtual_by_link[(worker, link)] = virtual
        return vid

    def detach(self, dialog_id: int) -> None:
        """Forget a virtual dialog given back to its holder (its events no longer come
        here): requests still pending in it fail, and it ends ("given_back")."""
        virtual = self._virtuals.pop(dialog_id, None)
        if virtual is None:
            return
        self._virtual_by_link.pop((virtual.worker, virtual.link), None)
        pending = sorted(virtual.pending, reverse=True)
        for ref in pending:
            self._virtual_by_request.pop(ref, None)
        for ours in virtual.incoming:
            self._virtual_by_request.pop(ours, None)
        virtual.pending = set()
        virtual.incoming = {}
        virtual.by_remote = {}
        for ref in pending:
            self._dispatch(RequestFailed(self.owner, ref, 481, "given back"))
        # Here the dialog is over like any other (its id gets its one DialogEnded).
        self._dispatch(DialogEnded(self.owner, dialog_id, "given_back", None))

    def is_virtual(self, dialog_id: int) -> bool:
        return dialog_id in self._virtuals

    def _virtual(self, dialog_id: int) -> _Virtual:
        virtual = self._virtuals.get(dialog_id)
        if virtual is None:
            raise UnknownDialog(f"no dialog {dialog_id}")
        return virtual

    def v_send(self, dialog_id: int, method: str, headers: Iterable[tuple[str, str]], body: bytes, auto_ack: bool) -> int:
        virtual = self._virtual(dialog_id)
        ref = self.new_id()
        virtual.pending.add(ref)
        self._virtual_by_request[ref] = virtual
        self.workers.send(virtual.worker, DialogCommand(virtual.link, "send", ref, method=method, headers=_pairs(headers),
                                                 body=_text(body), auto_ack=auto_ack))
        return ref

    def v_respond(self, request_id: int, status: int, reason: str | None, headers: Iterable[tuple[str, str]],
                  body: bytes) -> int | None:
        virtual = self._virtual_by_request.get(request_id)
        if virtual is None:
            return None
        found = virtual.incoming.get(request_id)
        if found is None:
            return None
        remote, method = found
        if status >= 200:
            del virtual.incoming[request_id]
            del self._virtual_by_request[request_id]
            if not (method == "INVITE" and status < 300):  # a 2xx to INVITE: its ACK finds us
                virtual.by_remote.pop(remote, None)
        self.workers.send(virtual.worker, DialogCommand(virtual.link, "respond", remote, status=status, reason=reason or "",
                                                 headers=_pairs(headers), body=_text(body)))
        return virtual.vid

    def v_ack(self, dialog_id: int, body: bytes, headers: Iterable[tuple[str, str]]) -> None:
        virtual = self._virtual(dialog_id)
        self.workers.send(virtual.worker, DialogCommand(virtual.link, "ack", headers=_pairs(headers), body=_text(body)))

    def v_bye(self, dialog_id: int, headers: Iterable[tuple[str, str]]) -> None:
        virtual = self._virtual(dialog_id)
        self.workers.send(virtual.worker, DialogCommand(virtual.link, "bye", headers=_pairs(headers)))

    def v_dialog(self, dialog_id: int) -> DialogInfo | None:
        virtual = self._virtuals.get(dialog_id)
        return virtual.info if virtual is not None else None

    def _virtual_event(self, virtual: _Virtual, msg: DialogEvent) -> None:
        owner = self.owner
        vid = virtual.vid
        kind = msg.what
        event: UaEvent | None = None
        try:
            if kind == "response":
                resp = parse_message(_bytes(msg.data))
                if not isinstance(resp, Response) or msg.ref not in virtual.pending:
                    return
                if resp.status >= 200:
                    self._done_request(virtual, msg.ref)
                event = ResponseReceived(owner, msg.ref, vid, resp)
            elif kind == "failed":
                if msg.ref not in virtual.pending:
                    return
                self._done_request(virtual, msg.ref)
                event = RequestFailed(owner, msg.ref, msg.status, msg.reason)
            elif kind == "request":
                req = parse_message(_bytes(msg.data))
                if not isinstance(req, Request):
                    return
                ours = self.new_id()
                virtual.incoming[ours] = (msg.ref, req.method)
                virtual.by_remote[msg.ref] = ours
                self._virtual_by_request[ours] = virtual
                transport, host, port = [*msg.peer, "udp", "", 0][:3]
                event = RequestReceived(owner, ours, vid, req, Peer(str(transport), str(host), int(port)))
            elif kind == "ack":
                ack = parse_message(_bytes(msg.data))
                ours_or_none = virtual.by_remote.pop(msg.ref, None)
                if not isinstance(ack, Request) or ours_or_none is None:
                    return
                event = AckReceived(owner, vid, ours_or_none, ack)
            elif kind == "cancelled":
                ours_or_none = virtual.by_remote.pop(msg.ref, None)
                if ours_or_none is None:
                    return
                virtual.incoming.pop(ours_or_none, None)
                self._virtual_by_request.pop(ours_or_none, None)
                event = RequestCancelled(owner, ours_or_none, None, msg.reason)
            elif kind == "ended":
                request = parse_message(_bytes(msg.data)) if msg.data else None
                self._end_virtual(virtual, msg.reason, request if isinstance(request, Request) else None)
                return
        except SipParseError as exc:
            log.warning("event=remote_dialog_bad_message link=%s kind=%s error=%r", msg.link, kind, str(exc))
            return
        if event is not None:
            self._dispatch(event)

    def _done_request(self, virtual: _Virtual, ref: int) -> None:
        virtual.pending.discard(ref)
        self._virtual_by_request.pop(ref, None)

    def _end_virtual(self, virtual: _Virtual, reason: str, request: Request | None) -> None:
        """The held dialog is gone: what was pending in it fails, then the dialog ends."""
        self._virtuals.pop(virtual.vid, None)
        self._virtual_by_link.pop((virtual.worker, virtual.link), None)
        owner = self.owner
        events: list[UaEvent] = []
        for ref in sorted(virtual.pending, reverse=True):
            self._virtual_by_request.pop(ref, None)
            events.append(RequestFailed(owner, ref, 503 if reason == "worker_lost" else 481, reason))
        for ours in sorted(virtual.incoming, reverse=True):
            self._virtual_by_request.pop(ours, None)
            events.append(RequestCancelled(owner, ours, None, reason))
        virtual.pending = set()
        virtual.incoming = {}
        virtual.by_remote = {}
        events.append(DialogEnded(owner, virtual.vid, reason, request))
        for event in events:
            self._dispatch(event)

    # ---- both -----------------------------------------------------------------------------
    def on_ua_event(self, event: UaEvent) -> bool:
        """A real UA event of a dialog (or request) we hold for another worker: forwarded."""
        proxy = None
        dialog_id = getattr(event, "dialog_id", None)
        if dialog_id is not None:
            proxy = self._proxy_by_dialog.get(dialog_id)
        if proxy is None and isinstance(event, (ResponseReceived, RequestFailed)):
            proxy = self._proxy_by_request.get(event.request_id)
        if proxy is None:
            return False
        self._proxy_event(proxy, event)
        return True

    def on_worker_message(self, source: int, msg: WorkerMessage) -> None:
        if isinstance(msg, DialogCommand):
            self._command(source, msg)
        elif isinstance(msg, DialogEvent):
            virtual = self._virtual_by_link.get((source, msg.link))
            if virtual is not None:
                self._virtual_event(virtual, msg)

    def on_worker_lost(self, index: int) -> None:
        for virtual in [v for v in self._virtuals.values() if v.worker == index]:
            self._end_virtual(virtual, "worker_lost", None)
        for proxy in [p for p in self._proxies.values() if p.controller == index]:
            self._forget_proxy(proxy)
            with contextlib.suppress(UaError):
                proxy.sip.bye(proxy.dialog, headers=[("Reason", WORKER_LOST)])

    def hang_up_all(self, reason: str) -> int:
        """Shutting down: BYE every dialog held for another worker."""
        count = 0
        for proxy in list(self._proxies.values()):
            self._forget_proxy(proxy)
            try:
                proxy.sip.bye(proxy.dialog, headers=[("Reason", f'SIP;cause=200;text="{reason}"')])
                count += 1
            except UaError:
                pass
        return count

    def table_sizes(self) -> dict[str, int]:
        return {
            "proxies": len(self._proxies),
            "proxy_dialogs": len(self._proxy_by_dialog),
            "proxy_requests": len(self._proxy_by_request),
            "virtuals": len(self._virtuals),
            "virtual_links": len(self._virtual_by_link),
            "virtual_requests": len(self._virtual_by_request),
        }


def _pairs(headers: Iterable[tuple[str, str]]) -> list[list[str]]:
    return [[name, value] for name, value in headers]


def _with_id(info: DialogInfo, vid: int) -> DialogInfo:
    return DialogInfo(
        dialog_id=vid, owner=info.owner, call_id=info.call_id, local_tag=info.local_tag, remote_tag=info.remote_tag,
        state=info.state, is_uac=info.is_uac, local_uri=info.local_uri, remote_uri=info.remote_uri,
        remote_target=info.remote_target, route_set=info.route_set, peer=info.peer,
        session_expires=info.session_expires, we_refresh=info.we_refresh, local_sdp=info.local_sdp,
    )


def info_to_json(info: DialogInfo) -> dict[str, Any]:
    return {
        "call_id": info.call_id, "local_tag": info.local_tag, "remote_tag": info.remote_tag, "state": info.state,
        "is_uac": info.is_uac, "local_uri": info.local_uri, "remote_uri": info.remote_uri,
        "remote_target": info.remote_target, "route_set": list(info.route_set),
        "peer": [info.peer.transport, info.peer.host, info.peer.port],
        "session_expires": info.session_expires, "we_refresh": info.we_refresh, "local_sdp": _text(info.local_sdp),
    }


def info_from_json(raw: dict[str, Any], owner: str) -> DialogInfo:
    transport, host, port = raw["peer"]
    return DialogInfo(
        dialog_id=0, owner=owner, call_id=str(raw["call_id"]), local_tag=str(raw["local_tag"]),
        remote_tag=str(raw["remote_tag"]), state=str(raw["state"]), is_uac=bool(raw["is_uac"]),
        local_uri=str(raw["local_uri"]), remote_uri=str(raw["remote_uri"]), remote_target=str(raw["remote_target"]),
        route_set=tuple(str(r) for r in raw["route_set"]), peer=Peer(str(transport), str(host), int(port)),
        session_expires=raw["session_expires"], we_refresh=bool(raw["we_refresh"]),
        local_sdp=_bytes(str(raw.get("local_sdp", ""))),
    )


class VirtualSip:
    """The `SipService` B2BUA calls use: dialog and request ids below zero are remote
    dialogs (messages to their holder), everything else goes to the real one."""

    def __init__(self, real: Callable[[], SipService], remote: RemoteDialogs) -> None:
        self._real = real
        self.remote = remote

    @property
    def real(self) -> SipService:
        return self._real()

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
        return self.real.send_request(
            method, uri, owner=owner, destinations=destinations, from_=from_, to=to, call_id=call_id,
            headers=headers, body=body, credentials=credentials, auto_ack=auto_ack, session_expires=session_expires,
        )

    def send_in_dialog(
        self, dialog_id: int, method: str, *, headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
        auto_ack: bool = True,
    ) -> int:
        if dialog_id < 0:
            return self.remote.v_send(dialog_id, method, headers, body, auto_ack)
        return self.real.send_in_dialog(dialog_id, method, headers=headers, body=body, auto_ack=auto_ack)

    def respond(
        self, request_id: int, status: int, reason: str | None = None, *, headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"", reliable: bool = False,
    ) -> int | None:
        if request_id < 0:
            return self.remote.v_respond(request_id, status, reason, headers, body)
        return self.real.respond(request_id, status, reason, headers=headers, body=body, reliable=reliable)

    def cancel(self, request_id: int, *, reason: str | None = None) -> None:
        if request_id >= 0:
            self.real.cancel(request_id, reason=reason)

    def ack(self, dialog_id: int, *, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> None:
        if dialog_id < 0:
            self.remote.v_ack(dialog_id, body, headers)
        else:
            self.real.ack(dialog_id, body=body, headers=headers)

    def bye(self, dialog_id: int, *, headers: Iterable[tuple[str, str]] = ()) -> None:
        if dialog_id < 0:
            self.remote.v_bye(dialog_id, headers)
        else:
            self.real.bye(dialog_id, headers=headers)

    def dialog(self, dialog_id: int) -> DialogInfo | None:
        if dialog_id < 0:
            return self.remote.v_dialog(dialog_id)
        return self.real.dialog(dialog_id)

    def contact_for(self, peer: Peer, user: str | None = None) -> str:
        return self.real.contact_for(peer, user)

    def local_address(self, peer: Peer) -> tuple[str, int]:
        return self.real.local_address(peer)
