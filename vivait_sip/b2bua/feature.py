"""The B2BUA as a feature: calls between phones, users, DIDs and SIP trunks.

It takes INVITE over from the registrar's guard; authentication stays the registrar's
(`RegistrarFeature.gate`, the stateless 407 included).  For each call: who calls (the
authenticated user, whatever its From says; or a trunk, recognised by its network), where
it goes (`routing.Router`), whether mdflow admits it now (`MdflowFeature.admit`, a
worker-0 role reached by messages), which contacts ring (`RegistrarFeature.locate`, at
the worker owning the user) or which trunk carries it (`trunks.TrunkManager`), and then
the call itself (`call.Call`), whose legs all live in this worker (outbound Call-IDs are
minted to hash here).  When a call ends its CDR is committed (`cdr.CdrWriter`) before
anything reports it ended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import CoreConfig
from ..contract import (
    Feature,
    Host,
    RequestHandler,
    StartError,
    StatelessCheck,
    WorkerMessage,
    mint_call_id,
)
from ..events import CALL_ANSWER, CALL_END, CALL_START, emit
from ..flow.feature import MdflowFeature
from ..media.feature import MediaFeature
from ..media.protocol import MediaRtpTimeout
from ..registrar.feature import Contact, RegistrarFeature
from ..sip.errors import SipParseError
from ..sip.incoming import Incoming
from ..sip.message import Request
from ..sip.peer import Peer
from ..sip.ua import (
    AckReceived,
    DialogEnded,
    RequestCancelled,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
    UaError,
    UaEvent,
)
from ..sip.uri import SipUri, parse_uri
from ..store import Store
from . import admin as b2bua_admin
from . import cli as b2bua_cli
from .call import Call, CallState, Dest, LegState, MediaDone, MediaSeam, OutLeg, PassThrough
from .cdr import CallRecord, CdrWriter, LegRecord, disposition_for
from .cdr_admin import add_cdr_routes
from .cdr_cli import add_cdr_commands
from .config import B2buaConfig
from .mediawire import MediaWire, RecordError
from .routing import Decision, Router, RouteRequest, Source, Target
from .slots import LocalSlots, SharedSlots, Slots
from .transfer import MESSAGES as TRANSFER_MESSAGES
from .transfer import TransferManager
from .trunks import TrunkManager, inbound_identity, outgoing_identity

log = logging.getLogger("vivait_sip.b2bua")

CALL_SLOTS_FILE = "call-slots"  # in the data directory, shared by the workers
NODE_SLOT = "*node"  # b2bua.max_calls's key among the trunks' (whose names have no '*')
QUEUED_RINGING_AFTER_S = 0.05  # an admission slower than this means the call waits in a queue


class UserDirectoryView:
    """`routing.Directory` over the registrar's users (SPEC §4: users, not extensions)."""

    def __init__(self, registrar: RegistrarFeature | None) -> None:
        self.registrar = registrar

    def user_of(self, number: str) -> str | None:
        if self.registrar is None:
            return None
        users = self.registrar.users
        record = users.by_number(number) or users.by_extension(number)
        return record.number if record is not None else None

    def is_extension(self, number: str) -> bool:
        return self.registrar is not None and self.registrar.users.by_extension(number) is not None

    def devices(self, user: str) -> list[list[str]]:
        """What may ring for a user, as groups in order of preference; the first group with
        a registered contact rings, alone (SPEC §4, hard XOR web).  With a web extension
        (fixed, or leased to its webfon session) that comes first: while it is registered
        the browser is the user's active device and the hard phone does not ring; when it
        is not (logged out, WebSocket lost), the hard extension and the number ring."""
        if self.registrar is None:
            return [[user]]
        users = self.registrar.users
        record = users.by_number(user)
        if record is None:
            return [[user]]
        hard = list(dict.fromkeys([record.extension, record.number]))
        web = users.leased_extension_of(record.number) or record.web_extension
        return [[web], hard] if web is not None and web not in hard else [hard]


class _Timer:
    def __init__(self, handle: asyncio.TimerHandle) -> None:
        self.handle = handle

    def cancel(self) -> None:
        self.handle.cancel()


class _HostWorkers:
    """`transfer.Workers` over the host: who owns a Call-ID, typed messages."""

    def __init__(self, host: Host) -> None:
        self.host = host

    @property
    def index(self) -> int:
        return self.host.worker_index

    def owner_of(self, call_id: str) -> int:
        return self.host.owner_of(call_id)

    def send(self, worker: int, msg: WorkerMessage) -> None:
        self.host.send_to_worker(worker, msg)


class B2buaFeature(Feature[B2buaConfig]):
    """Calls (issue 10); see the module docstring."""

    name = "b2bua"
    config_key = "b2bua"
    config_model = B2buaConfig
    order = 30
    messages = TRANSFER_MESSAGES

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        settings = self.settings
        self.owner = self.name
        self.media: MediaSeam = PassThrough()
        self.wire: MediaWire | None = None  # the media features of anchored calls (mediawire.py)
        self._media_tasks: set[asyncio.Future[Any]] = set()
        self.registrar: RegistrarFeature | None = None
        self.mdflow: MdflowFeature | None = None
        self.directory = UserDirectoryView(None)
        self.router = Router(settings, self.directory)
        self.trunks = TrunkManager(list(settings.trunks), host, self.name)
        # calls in progress, node-wide (b2bua.max_calls, each trunk's): a file the workers share
        self.slots: Slots = LocalSlots()
        self.shared_slots: SharedSlots | None = None
        self._slot_holders: set[str] = set()  # our calls counted under NODE_SLOT
        self.store: Store | None = None
        self.cdr_writer: CdrWriter | None = None
        self.calls: dict[str, Call] = {}
        self._by_request: dict[int, Call] = {}
        self._by_dialog: dict[int, Call] = {}
        self._tickets: dict[str, int] = {}  # call uuid → mdflow ticket while waiting
        self._trunk_legs: set[str] = set()  # leg ids holding a trunk's call slot
        self.draining = False
        self._drain_until: float | None = None  # loop time the drain ends (set by `stopping`)
        self.counters: dict[str, int] = {"attempts": 0, "answered": 0, "failed": 0, "cancelled": 0, "rejected_overload": 0}
        # REFER, Replaces, and dialogs joined across workers (transfer.py, remote.py).
        self.transfers = TransferManager(self, lambda: host.sip, _HostWorkers(host))
        self._ids = itertools.count(1)

    # ---- the contract -----------------------------------------------------------------------
    @classmethod
    def check_config(cls, config: CoreConfig) -> list[str]:
        return b2bua_admin.check_references(config)

    def request_handlers(self) -> Mapping[str, RequestHandler]:
        return {"INVITE": self.on_invite}

    def stateless_checks(self) -> Mapping[str, StatelessCheck]:
        return {"INVITE": self._challenge_only, "REFER": self._challenge_only}

    def _challenge_only(self, req: Request, peer: Peer) -> bool:
        """A call from no trunk, without credentials answering our nonce: only a 407 (or
        a refusal) can follow, so it is answered without a transaction (no amplification).
        Not a request inside a dialog (a re-INVITE, a REFER): its dialog was authenticated
        by its INVITE, and the UA answers 481 when it matches none."""
        registrar = self.registrar
        if registrar is None or req.to.tag or self.trunk_for_source(peer.host) is not None:
            return False
        return registrar.guard.challenge_only(req, peer)

    def trunk_for_source(self, host: str) -> str | None:
        """The trunk a call from `host` comes in on: a `b2bua.trunks` network, else a
        `registrar.trunks` one (carriers trusted by address for REGISTER and calls)."""
        name = self.trunks.trunk_for_source(host)
        if name is None and self.registrar is not None:
            name = self.registrar.gate.trunk_for(host)
        return name

    async def start(self) -> None:
        self._wire()
        if self.host.worker_count > 1:  # before the other workers exist: they open it
            self._share_slots(lambda path: SharedSlots.create(path, self.host.worker_count))
        await self.trunks.start()

    async def start_worker(self) -> None:
        self._wire()
        self._share_slots(lambda path: SharedSlots(path, self.host.worker_index))
        await self.trunks.start()

    def _share_slots(self, open_slots: Callable[[Path], SharedSlots]) -> None:
        """Calls counted in a file every worker maps (slots.py): max_calls are the node's."""
        path = self.host.data_dir / CALL_SLOTS_FILE
        try:
            self.shared_slots = open_slots(path)
        except (OSError, ValueError) as exc:
            raise StartError(f"b2bua: call counts in {path}: {exc}") from None
        self.slots = self.shared_slots
        self.trunks.use_slots(self.shared_slots)

    def _wire(self) -> None:
        host = self.host
        self.registrar = host.feature(RegistrarFeature)
        self.mdflow = host.feature(MdflowFeature)
        media = host.feature(MediaFeature)
        if media is not None:
            self.media = media.seam  # SDP of anchored calls through the media backend (docs/media.md)
            self.wire = MediaWire(media, lambda: self.settings)  # music on hold, recording, DTMF...
            self.wire.continue_to = self._continue
            media.listen(self._media_event)
        self.directory.registrar = self.registrar
        settings = self.settings
        if settings.cdr:
            self.store = Store.open(host.data_dir)
            self.cdr_writer = CdrWriter(self.store, retention_days=settings.cdr_retention_days)
        for line in b2bua_admin.reference_warnings(host.config):
            log.warning("event=config_warning %s", line)
        host.on_call("b2bua_calls", lambda args: self.local_calls())
        host.on_call("b2bua_hangup", lambda args: self.hangup_local(str(args["call"])))
        host.on_call("b2bua_record", lambda args: self.record_local(str(args["call"]), bool(args["start"])))

    def reload(self, config: CoreConfig) -> None:
        settings = self.settings_of(config)
        self.router = Router(settings, self.directory)
        self.trunks.reload(list(settings.trunks))
        if self.cdr_writer is not None:
            self.cdr_writer.retention_days = settings.cdr_retention_days
        for line in b2bua_admin.reference_warnings(config):
            log.warning("event=config_warning %s", line)

    def stopping(self) -> float:
        """SIGTERM: new calls get 503 from now on, and the drain starts now in every
        worker at once (worker 0's `stop` only runs once the others have exited)."""
        self.draining = True
        drain_s = self.settings.drain_s
        if self._drain_until is None:
            loop = asyncio.get_running_loop()
            self._drain_until = loop.time() + drain_s
            # At the deadline, whatever else the process is still waiting for (the other
            # workers, transactions finishing): the calls end then, not later.
            loop.call_at(self._drain_until, self._hang_up_all)
        return drain_s

    def _hang_up_all(self) -> None:
        for call in list(self.calls.values()):
            call.hangup("shutdown")
        self.transfers.shutdown()

    async def stop(self) -> None:
        """Drain: no new calls (503), active ones may run `drain_s` from SIGTERM, then BYE
        both ways; every CDR is written before the store closes."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = self._drain_until if self._drain_until is not None else loop.time() + self.settings.drain_s
        while self.calls and loop.time() < deadline:
            await asyncio.sleep(0.1)
        self._hang_up_all()
        await asyncio.sleep(0.2)  # the BYEs and final responses go out
        if self.wire is not None:
            await self.wire.drain()
        if self._media_tasks:  # media sessions deleted before the media backend stops
            await asyncio.wait(list(self._media_tasks), timeout=2.0)
        await self.trunks.stop()
        if self.shared_slots is not None:
            self.slots = LocalSlots()
            self.shared_slots.close()
            self.shared_slots = None
        if self.store is not None:
            self.store.close()

    # ---- a new call -------------------------------------------------------------------------
    def on_invite(self, inc: Incoming) -> None:
        req = inc.request
        host = self.host
        registrar = self.registrar
        if inc.request_id is None or registrar is None:
            if registrar is not None and self.trunk_for_source(inc.peer.host) is None:
                registrar.gate.check(inc, proxy=True)  # the stateless challenge (or refusal)
            else:
                inc.respond(500)
            return
        settings = self.settings
        trunk = self.trunk_for_source(inc.peer.host)
        if trunk is None and not host.is_local_domain(req.uri.host):
            inc.respond(403, "Forbidden (relaying not allowed)")
            return
        user: str | None = None
        private = False
        if trunk is None:
            username = registrar.gate.check(inc, proxy=True)
            if username is None:
                return
            user = self.directory.user_of(username) or username
            caller = user
            # a trunk recognised by its credentials: the user it authenticates as is its own
            trunk = next((t.name for t in settings.trunks if t.inbound_user is not None and t.inbound_user == user), None)
            if trunk is not None:
                user = None
        if trunk is not None:
            trunk_config = next((t for t in settings.trunks if t.name == trunk), None)
            number, private = inbound_identity(req, trunk_config)
            caller = number or "anonymous"
        self.counters["attempts"] += 1
        number = req.uri.user_unescaped or ""
        call = Call(
            self, inc.request_id, req, inc.peer,
            call_uuid=uuid.uuid4().hex, caller=caller, callee=number, user=user, trunk=trunk,
            ring_s=settings.ring_s, max_redirects=settings.max_redirects,
        )
        call.extra["private"] = private
        call.extra["display"] = None if trunk is not None else self._display(user)
        emit(log, logging.INFO, CALL_START, "call_id=%r from=%r to=%r source=%s", req.call_id, caller, number, inc.peer.host)
        # max_calls is the node's, whichever worker the calls hash to (the shared slots)
        if self.draining or not self.slots.take(NODE_SLOT, settings.max_calls):
            # Refused, but a call attempt all the same: its CDR says congestion, and why.
            call.extra["refused"] = "draining" if self.draining else "max_calls"
            reason = "Service Unavailable (shutting down)" if self.draining else "Service Unavailable (capacity)"
            call.fail(503, reason, retry_after=host.config.sip.limits.retry_after_s)
            return
        self.calls[call.call_uuid] = call
        self._slot_holders.add(call.call_uuid)
        if "replaces" in req.headers:  # RFC 3891: it takes the place of one of our dialogs
            self.transfers.on_replaces(call)
            return
        self.route(call, number, Source(user, trunk, inc.peer.host))

    def route(self, call: Call, number: str, source: Source) -> None:
        """Route `number` through the dialplan for `call` as `source`, then ring it (also a
        transfer's new call: the transferor is the source)."""
        try:
            decision = self.router.route(RouteRequest(number, source, datetime.now(UTC)))
        except ValueError as exc:
            log.warning("event=route_failed call=%s error=%r", call.call_uuid, str(exc))
            call.fail(500, "Server Internal Error (routing)")
            return
        self._decided(call, decision)

    def add_call(self, call: Call) -> None:
        """A call the B2BUA made itself (a transfer's): listed, counted, drained."""
        self.calls[call.call_uuid] = call
        if self.slots.take(NODE_SLOT, 0):  # counted, never refused: it replaces a call of ours
            self._slot_holders.add(call.call_uuid)
        self.counters["attempts"] += 1
        emit(log, logging.INFO, CALL_START, "call_id=%r from=%r to=%r source=transfer", call.request.call_id,
             call.caller, call.callee)

    def is_local_domain(self, host: str) -> bool:
        return self.host.is_local_domain(host)

    def _display(self, user: str | None) -> str | None:
        if user is None or self.registrar is None:
            return None
        record = self.registrar.users.by_number(user)
        return record.name or None if record is not None else None

    def _decided(self, call: Call, decision: Decision) -> None:
        call.rule = decision.rule
        call.did = decision.did
        if decision.flow is None:
            self._go(call, decision.target)
            return
        mdflow = self.mdflow
        call.flow = decision.flow
        if mdflow is None:
            self._go(call, decision.target)
            return

        def admitted(outcome: str) -> None:
            self._tickets.pop(call.call_uuid, None)
            call.flow_outcome = outcome
            if call.state is CallState.ENDED:
                return
            if outcome == "ok":
                self._go(call, decision.target)
                return
            target = decision.on_agujero if outcome == "agujero" else decision.on_desborda if outcome == "desborda" else None
            if target is None:
                call.fail(503, f"Service Unavailable (mdflow {outcome})", retry_after=self.host.config.sip.limits.retry_after_s)
            else:
                self._go(call, target)

        self._tickets[call.call_uuid] = mdflow.admit(decision.flow, call.callee, admitted)
        loop = asyncio.get_running_loop()
        loop.call_later(
            QUEUED_RINGING_AFTER_S,
            lambda: call.queued(decision.ringing) if call.call_uuid in self._tickets else None,
        )

    def _go(self, call: Call, target: Target) -> None:
        """Turn a routing target into legs (locating contacts or choosing trunks first)."""
        if call.state is CallState.ENDED:
            return
        if target.kind == "hangup":
            call.fail(target.status, target.reason, retry_after=target.retry_after)
            return
        if target.kind == "announcement":
            if self.wire is None:
                call.fail(503, "Service Unavailable (no media feature for the announcement)")
            else:
                self.wire.announce(call, target)
            return
        if target.kind == "trunk":
            self._ring_trunks(call, target)
            return
        registrar = self.registrar
        if registrar is None:
            call.fail(480)
            return
        groups = self.directory.devices(target.user) if target.kind == "user" and target.user else [[target.extension or ""]]
        call.callee_user = target.user
        numbers = [number for group in groups for number in group]
        found: dict[str, list[Contact]] = {}
        pending = [len(numbers)]

        def located(number: str, contacts: list[Contact]) -> None:
            found[number] = contacts
            pending[0] -= 1
            if pending[0] > 0 or call.state is CallState.ENDED:
                return
            for group in groups:  # the first group with a registered contact rings, alone
                # Each device is called as what it registered as (To, the leg's CDR target).
                dests = [d for n in group for d in self._phone_dests(call, found.get(n, []), n)]
                dests = [d for i, d in enumerate(dests) if all(d.uri != e.uri for e in dests[:i])]
                if dests:
                    call.ring([dests], ring_s=target.ring_s)
                    return
            call.fail(480, "Temporarily Unavailable (not registered)")

        for number in numbers:
            registrar.locate(number, functools.partial(located, number))

    def _phone_dests(self, call: Call, contacts: list[Contact], label: str) -> list[Dest]:
        seen: set[str] = set()
        dests = []
        for contact in contacts:
            if contact.uri in seen:
                continue
            seen.add(contact.uri)
            local_host, _ = self.host.sip.local_address(contact.peer)
            from_, headers = outgoing_identity(
                None, call.caller, _str(call.extra.get("display")), None, bool(call.extra.get("private")), local_host
            )
            routes = tuple(("Route", path) for path in contact.path)
            dests.append(Dest(
                uri=contact.uri, destinations=(contact_peer(contact),), to=f"<sip:{label}@{local_host}>", from_=from_,
                label=label, headers=(*routes, *headers),
            ))
        return dests

    def _ring_trunks(self, call: Call, target: Target) -> None:
        routes = self.trunks.candidates(target.trunks)
        if not routes:
            call.fail(503, "Service Unavailable (no trunk available)", retry_after=self.host.config.sip.limits.retry_after_s)
            return
        groups = []
        trunk_configs = {t.name: t for t in self.settings.trunks}
        for route in routes:
            config = trunk_configs.get(route.name)
            # the rule's caller ID, else the calling user's own (b2bua.caller_ids), else the trunk's
            user_caller_id = target.caller_id or (self.settings.caller_ids.get(call.user) if call.user else None)
            from_, headers = outgoing_identity(
                config, call.caller, _str(call.extra.get("display")), user_caller_id,
                bool(call.extra.get("private")), route.from_domain,
            )
            groups.append([Dest(
                uri=f"sip:{target.number}@{route.request_uri_host}", destinations=route.destinations,
                to=f"<sip:{target.number}@{route.request_uri_host}>", from_=from_, label=target.number,
                headers=tuple(headers), credentials=route.credentials, trunk=route.name,
            )])
        call.ring(groups, ring_s=target.ring_s)

    # ---- CallEnv -----------------------------------------------------------------------------
    @property
    def sip(self) -> Any:
        """The UA for calls: dialogs another worker holds (a join across workers) have
        negative ids, which `remote.VirtualSip` turns into messages."""
        return self.transfers.sip

    def now(self) -> float:
        return time.time()

    def new_call_id(self) -> str:
        return mint_call_id(self.host.worker_index, self.host.worker_count)

    def later(self, delay: float, fn: Callable[[], None]) -> _Timer:
        return _Timer(asyncio.get_running_loop().call_later(delay, fn))

    def await_media(self, call: Call, work: Awaitable[Any], done: MediaDone) -> None:
        """A media step of `call` as a task; `done` runs on the loop when it completes."""
        task = asyncio.ensure_future(work)
        self._media_tasks.add(task)

        def finished(task: asyncio.Future[Any]) -> None:
            self._media_tasks.discard(task)
            result: Any = None
            error: BaseException | None
            if task.cancelled():
                error = asyncio.CancelledError("media step cancelled")
            else:
                error = task.exception()
                result = None if error is not None else task.result()
            try:
                done(result, error)
            except Exception:
                log.exception("event=media_step_failed call=%s", call.call_uuid)

        task.add_done_callback(finished)

    def _continue(self, call: Call, then: Target) -> None:
        """After an announcement: the caller goes on to `then` in a new call (transfer.py)."""
        callee = then.user or then.extension or then.number or call.callee
        target = self.transfers.continue_call(call, callee, lambda new: self._go(new, then))
        if target is None:
            call.hangup("announcement")
        elif self.wire is not None and target.state is not CallState.ENDED:
            self.wire.ringback(target)

    def hold_changed(self, call: Call, side: str, held: bool) -> None:
        if self.wire is not None:
            self.wire.hold_changed(call, side, held)

    def media_released(self, call: Call, stats: dict[str, Any]) -> None:
        """Added to the call's CDR, written when it ended (`extra.media_stats`)."""
        if self.cdr_writer is None:
            return
        try:
            self.cdr_writer.amend(call.call_uuid, {"media_stats": stats})
        except Exception as exc:
            log.warning("event=cdr_amend_failed call=%s error=%r", call.call_uuid, str(exc))

    def bind(self, call: Call, *, request_id: int | None = None, dialog_id: int | None = None) -> None:
        if request_id is not None:
            self._by_request[request_id] = call
        if dialog_id is not None:
            self._by_dialog[dialog_id] = call

    def claim_trunk(self, call: Call, dest: Dest) -> bool:
        return dest.trunk is None or self.trunks.acquire(dest.trunk)

    def release_trunk(self, call: Call, dest: Dest) -> None:
        if dest.trunk is not None:
            self.trunks.release(dest.trunk)

    def leg_started(self, call: Call, leg: OutLeg) -> None:
        if leg.dest.trunk is not None:  # its slot was claimed (claim_trunk): released at its end
            self._trunk_legs.add(leg.leg_id)

    def leg_ended(self, call: Call, leg: OutLeg) -> None:
        trunk = leg.dest.trunk
        if trunk is None:
            return
        if leg.leg_id in self._trunk_legs:
            self._trunk_legs.discard(leg.leg_id)
            self.trunks.release(trunk)
        if leg.state is LegState.FAILED and leg.status in (408, 500, 503, 504):
            self.trunks.report_failure(trunk, leg.status or 503)

    def redirect(self, call: Call, targets: list[SipUri]) -> None:
        """A 3xx: a target in one of our domains is dialled again through the dialplan
        (call forwarding); others are not followed (an open relay otherwise)."""
        for uri in targets:
            number = uri.user_unescaped
            if number and uri.is_sip and self.host.is_local_domain(uri.host):
                source = Source(call.user, call.trunk, call.peer.host)
                decision = self.router.route(RouteRequest(number, source, datetime.now(UTC)))
                if decision.flow is None:
                    call.callee = number
                    self._go(call, decision.target)
                    return
        call.ring([])

    def ended(self, call: Call) -> None:
        self.calls.pop(call.call_uuid, None)
        if call.call_uuid in self._slot_holders:
            self._slot_holders.discard(call.call_uuid)
            self.slots.give_back(NODE_SLOT)
        if self.wire is not None:
            self.wire.forget(call)
        self.transfers.call_ended(call)
        ticket = self._tickets.pop(call.call_uuid, None)
        if ticket is not None and self.mdflow is not None:
            self.mdflow.withdraw(ticket)
            call.flow_outcome = call.flow_outcome or "abandoned"
        for leg in call.legs:
            self._by_request.pop(leg.request_id, None)
        self._by_request.pop(call.request_id, None)
        record = self._record(call)
        if self.cdr_writer is not None:
            try:
                self.cdr_writer.write(record)
            except Exception as exc:
                log.error("event=cdr_write_failed call=%s error=%r", call.call_uuid, str(exc))
        if "refused" in call.extra:  # max_calls or draining: counted apart
            outcome = "rejected_overload"
        else:
            outcome = {"answered": "answered", "cancelled": "cancelled"}.get(record.disposition, "failed")
        self.counters[outcome] += 1
        emit(log, logging.INFO, CALL_END, "call_id=%r reason=%r duration_s=%.1f", call.request.call_id,
             record.hangup_cause, record.duration_s)

    def _record(self, call: Call) -> CallRecord:
        answered = call.answered_at is not None
        inbound = LegRecord(
            leg_id=f"{call.call_uuid}-in", call_id=call.request.call_id, direction="in",
            peer=str(call.request.from_.uri), target=call.callee, contact=None, trunk=call.trunk,
            started_at=call.started_at, answered_at=call.answered_at, ended_at=call.ended_at,
            status=call.final_status, cause=None,
        )
        legs = [inbound] + [
            LegRecord(
                leg_id=leg.leg_id, call_id=leg.call_id, direction="out", peer=leg.dest.uri, target=leg.dest.label,
                contact=leg.dest.uri, trunk=leg.dest.trunk, started_at=leg.started_at, answered_at=leg.answered_at,
                ended_at=leg.ended_at, status=leg.status, cause=leg.cause,
            )
            for leg in call.legs
        ]
        winner_trunk = call.winner.dest.trunk if call.winner is not None else None
        trunk = call.trunk or winner_trunk or next((leg.dest.trunk for leg in call.legs if leg.dest.trunk), None)
        ended_at = call.ended_at if call.ended_at is not None else self.now()
        extra = {k: v for k, v in call.extra.items() if k not in ("display",)}
        return CallRecord(
            call_uuid=call.call_uuid, linked_to=call.linked_to, caller=call.caller, callee=call.callee,
            user=call.user, callee_user=call.callee_user, did=call.did, trunk=trunk, rule=call.rule, flow=call.flow,
            flow_outcome=call.flow_outcome, started_at=call.started_at, answered_at=call.answered_at,
            ended_at=ended_at, duration_s=round(call.duration_s, 3), billable_s=round(call.billable_s, 3),
            disposition=disposition_for(call.final_status, call.cancelled, answered),
            hangup_cause=call.hangup_cause or _default_cause(call), hangup_side=call.hangup_side,  # type: ignore[arg-type]
            legs=legs, extra=extra,
        )

    # ---- UA events ----------------------------------------------------------------------------
    def on_ua_event(self, event: UaEvent) -> None:
        if self.trunks.on_ua_event(event):
            return
        if self.transfers.on_ua_event(event):  # a REFER, a NOTIFY's answer, a dialog held for another worker
            if isinstance(event, DialogEnded):
                self._by_dialog.pop(event.dialog_id, None)
            return
        call = self.call_for(event)
        if isinstance(event, DialogEnded):
            self._by_dialog.pop(event.dialog_id, None)
        if call is None:
            self._orphan(event)
            return
        if (self.wire is not None and isinstance(event, RequestReceived) and event.request.method == "INFO"
                and event.dialog_id is not None):
            self.wire.info(call, event.request, "caller" if event.dialog_id == call.in_dialog else "callee")
        was_answered = call.answered_at is not None
        call.on_event(event)
        if not was_answered and call.answered_at is not None:
            emit(log, logging.INFO, CALL_ANSWER, "call_id=%r from=%r to=%r", call.request.call_id, call.caller, call.callee)
            if self.wire is not None:
                self.wire.answered(call)
        if isinstance(event, (ResponseReceived, RequestFailed)) and _final(event) and not _is_leg(call, event.request_id):
            # An in-dialog request of the call (a relayed re-INVITE, INFO, a transfer's):
            # answered once, so its binding goes (legs keep theirs: forks answer again).
            self._by_request.pop(event.request_id, None)

    def dispatch(self, event: UaEvent) -> None:
        """An event of a dialog another worker holds for us (remote.py), as if the UA gave it."""
        self.on_ua_event(event)

    def call_for(self, event: UaEvent) -> Call | None:
        dialog_id = getattr(event, "dialog_id", None)
        call = self._by_dialog.get(dialog_id) if dialog_id is not None else None
        if call is None:
            call = self._by_request.get(getattr(event, "request_id", -1))
        return call

    def on_worker_message(self, source: int, msg: WorkerMessage) -> None:
        self.transfers.on_worker_message(source, msg)

    def on_worker_lost(self, index: int) -> None:
        self.transfers.on_worker_lost(index)
        if self.shared_slots is not None:  # its calls went with it
            self.shared_slots.forget_worker(index)

    def _orphan(self, event: UaEvent) -> None:
        """An event for a call already over: a 2xx that came too late is hung up; an
        in-dialog request is refused; the rest needs nothing."""
        sip = self.sip  # a virtual dialog's too (remote.py)
        if isinstance(event, ResponseReceived) and event.dialog_id is not None and 200 <= event.response.status < 300:
            with contextlib.suppress(UaError):  # a 2xx to a request of a dialog already gone
                sip.bye(event.dialog_id)
        elif isinstance(event, RequestReceived) and event.request.method not in ("ACK", "PRACK"):
            sip.respond(event.request_id, 481)
        elif not isinstance(event, (AckReceived, DialogEnded, RequestCancelled, RequestFailed, ResponseReceived)):
            self.host.counters["b2bua_unowned_events"] += 1

    # ---- operations ----------------------------------------------------------------------------
    def local_calls(self) -> list[dict[str, object]]:
        wire = self.wire
        if wire is None:
            return [call.snapshot() for call in self.calls.values()]
        return [{**call.snapshot(), "dtmf": wire.digits(call)} for call in self.calls.values()]

    def _media_event(self, event: object) -> None:
        """A media worker's event about one of our calls (keyed by its inbound Call-ID):
        no RTP from a party for `media.rtp_timeout_s` ends the call, BYE both ways, the
        CDR saying so."""
        wire = self.wire
        if wire is not None and wire.on_event(event, self.calls.values()):
            return
        if isinstance(event, MediaRtpTimeout):
            call = wire.call_of(self.calls.values(), event.call_id) if wire is not None else None
            if call is not None:
                cause = event.cause or "RTP timeout"  # a WebRTC party gone says how (ICE consent, DTLS)
                log.info("event=rtp_timeout call=%s party=%s idle_s=%.0f cause=%r", call.call_uuid, event.leg, event.idle_s, cause)
                call.hangup(cause)

    def find_local(self, key: str) -> Call | None:
        """A call of this worker by its uuid or any of its legs' Call-IDs."""
        for call in self.calls.values():
            if key in (call.call_uuid, call.request.call_id) or any(leg.call_id == key for leg in call.legs):
                return call
        return None

    def hangup_local(self, key: str) -> bool:
        call = self.find_local(key)
        if call is None:
            return False
        call.hangup("admin")
        return True

    async def record_local(self, key: str, start: bool) -> dict[str, object] | None:
        """`ctl record start|stop` for a call of this worker (None: not here)."""
        call = self.find_local(key)
        if call is None:
            return None
        if self.wire is None:
            return {"error": "no media feature", "status": 409}
        try:
            return await self.wire.record(call, start)
        except RecordError as exc:
            return {"error": str(exc), "status": exc.status}

    async def record(self, key: str, start: bool) -> dict[str, object] | None:
        """Start or stop recording a call of any worker (None: no such call)."""
        found = await self.record_local(key, start)
        if found is not None:
            return found
        for part in await self.host.call_workers("b2bua_record", call=key, start=start):
            if part is not None:
                return dict(part)
        return None

    def status(self) -> dict[str, object]:
        return {"b2bua": {"calls": len(self.calls), **self.counters, "trunks": self.trunks.status(),
                          "transfers": dict(self.transfers.counters)}}

    def merge_status(self, mine: dict[str, object], workers: list[dict[str, object]]) -> None:
        ours = mine.get("b2bua")
        if not isinstance(ours, dict):
            return
        for part in workers:
            theirs = part.get("b2bua")
            if isinstance(theirs, dict):
                for key in ("calls", *self.counters):
                    ours[key] = int(ours.get(key, 0)) + int(theirs.get(key, 0))
                mine_t, theirs_t = ours.get("transfers"), theirs.get("transfers")
                if isinstance(mine_t, dict) and isinstance(theirs_t, dict):
                    for key, value in theirs_t.items():
                        mine_t[key] = int(mine_t.get(key, 0)) + int(value)

    def metrics(self, status: dict[str, object]) -> list[str]:
        ours = status.get("b2bua")
        if not isinstance(ours, dict):
            return []
        lines = [
            "# HELP vivait_calls Calls in progress.",
            "# TYPE vivait_calls gauge",
            f"vivait_calls {int(ours.get('calls', 0))}",
            "# HELP vivait_call_attempts_total INVITEs accepted for routing (authenticated or from a trunk).",
            "# TYPE vivait_call_attempts_total counter",
            f"vivait_call_attempts_total {int(ours.get('attempts', 0))}",
            "# HELP vivait_calls_ended_total Calls ended, by outcome.",
            "# TYPE vivait_calls_ended_total counter",
        ]
        for outcome in ("answered", "cancelled", "failed", "rejected_overload"):
            lines.append(f'vivait_calls_ended_total{{outcome="{outcome}"}} {int(ours.get(outcome, 0))}')
        transfers = ours.get("transfers")
        if isinstance(transfers, dict):
            lines += ["# HELP vivait_transfers_total Transfers carried out (REFER blind or attended, INVITE with Replaces), by result.",
                      "# TYPE vivait_transfers_total counter"]
            for key, value in sorted(transfers.items()):
                kind, _, result = key.rpartition("_")
                lines.append(f'vivait_transfers_total{{kind="{kind}",result="{result}"}} {int(value)}')
        lines.extend(self.trunks.metrics())
        return lines

    def admin_routes(self, app: web.Application) -> None:
        b2bua_admin.add_routes(app, self)
        add_cdr_routes(app, lambda: self.cdr_writer)
        b2bua_admin.add_call_routes(app, self)

    async def all_calls(self) -> list[dict[str, object]]:
        found = self.local_calls()
        for part in await self.host.call_workers("b2bua_calls"):
            found.extend(part)
        return found

    async def hangup(self, key: str) -> bool:
        if self.hangup_local(key):
            return True
        return any(await self.host.call_workers("b2bua_hangup", call=key))

    @classmethod
    def add_commands(cls, sub: argparse._SubParsersAction[Any], ctl_sub: argparse._SubParsersAction[Any]) -> None:
        b2bua_cli.add_commands(sub, ctl_sub)
        add_cdr_commands(sub, ctl_sub)


def contact_peer(contact: Contact) -> Peer:
    """Where to send a call for a registered contact.  Over TCP, TLS and WebSocket: the
    connection it registered over (RFC 5626; a browser has no other).  Over UDP: the
    Contact's own address when the REGISTER came from that host, else (a phone behind NAT,
    its Contact a private address) the address the REGISTER came from, as Kamailio's
    nat_uac_test + fix_nated_contact do; likewise with a Path, the first hop registered."""
    if contact.transport != "udp" or contact.path:
        return contact.peer
    try:
        uri = parse_uri(contact.uri)
    except SipParseError:
        return contact.peer
    if uri.host.strip("[]") == contact.host:
        return Peer("udp", contact.host, uri.port or 5060)
    return contact.peer


def _is_leg(call: Call, request_id: int) -> bool:
    return any(leg.request_id == request_id for leg in call.legs)


def _final(event: ResponseReceived | RequestFailed) -> bool:
    return isinstance(event, RequestFailed) or event.response.status >= 200


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _default_cause(call: Call) -> str:
    if call.final_status is not None and call.final_status >= 300:
        return str(call.final_status)
    return "normal clearing"
