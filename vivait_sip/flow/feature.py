"""mdflow as a feature: the engine runs in worker 0 (a worker-0 role); every other
worker holds an `Admissions` client that reaches it with one-way messages, so a call may
wait in a DNIS queue for as long as the flow says (no RPC timeout) and a CANCEL withdraws
it at once."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..config import CoreConfig, load_config
from ..contract import Feature, Host, WorkerMessage, worker_message
from ..ctlclient import admin_request, admin_stream, print_json
from .admin import NoReloadSource, add_routes
from .config import MdflowConfig
from .engine import UnknownFlowError
from .service import MdflowService

log = logging.getLogger("vivait_sip.flow")

ERROR = "error"  # outcome for an unknown flow (a config mistake, not a caller's fault)


@worker_message("mdflow.admit")
@dataclass(frozen=True)
class AdmitCall(WorkerMessage):
    """A worker → worker 0: offer a call to `flow`; the answer is `AdmitResult(ticket)`."""

    ticket: int
    flow: str
    dnis: str


@worker_message("mdflow.result")
@dataclass(frozen=True)
class AdmitResult(WorkerMessage):
    """Worker 0 → the asking worker: ok, agujero, desborda (or error)."""

    ticket: int
    outcome: str


@worker_message("mdflow.withdraw")
@dataclass(frozen=True)
class WithdrawCall(WorkerMessage):
    """The caller left while queued."""

    ticket: int


Outcome = Callable[[str], None]


class MdflowFeature(Feature[MdflowConfig]):
    name = "mdflow"
    config_key = "mdflow"
    config_model = MdflowConfig
    order = 20
    messages = (AdmitCall, AdmitResult, WithdrawCall)

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self.service = MdflowService(self.settings) if host.is_primary else None
        self._tickets = itertools.count(1)
        self._waiting: dict[int, Outcome] = {}  # our tickets → callback (all workers)
        # Worker 0: queued calls of other workers, by (worker, ticket).
        self._remote: dict[tuple[int, int], Any] = {}

    # ---- the admission API (for the B2BUA) -------------------------------------------------
    def admit(self, flow: str, dnis: str, on_outcome: Outcome) -> int:
        """Offer a call; `on_outcome` runs later (never inside this call) with ok, agujero,
        desborda or error. Returns a ticket for `withdraw`."""
        ticket = next(self._tickets)
        self._waiting[ticket] = on_outcome
        if self.service is None:
            self.host.send_to_worker(0, AdmitCall(ticket, flow, dnis))
        else:
            asyncio.get_running_loop().call_soon(self._offer_local, ticket, flow, dnis)
        return ticket

    def withdraw(self, ticket: int) -> None:
        """The caller hung up while waiting: leave the queue at once (counted as abandoned)."""
        if self._waiting.pop(ticket, None) is None:
            return
        if self.service is None:
            self.host.send_to_worker(0, WithdrawCall(ticket))
        else:
            self._withdraw_remote(self.host.worker_index, ticket)

    def _offer_local(self, ticket: int, flow: str, dnis: str) -> None:
        if ticket in self._waiting:
            self._offer(self.host.worker_index, ticket, flow, dnis)

    def _offer(self, worker: int, ticket: int, flow: str, dnis: str) -> None:
        """Worker 0: run the engine for a call of `worker`."""
        assert self.service is not None
        key = (worker, ticket)

        def deliver(outcome: str) -> None:
            self._remote.pop(key, None)
            self._deliver(worker, ticket, outcome)

        try:
            call = self.service.offer(flow, dnis, deliver)
        except UnknownFlowError:
            log.warning("event=mdflow_unknown_flow flow=%r", flow)
            deliver(ERROR)
            return
        if call is not None:
            self._remote[key] = call

    def _deliver(self, worker: int, ticket: int, outcome: str) -> None:
        if worker == self.host.worker_index:
            callback = self._waiting.pop(ticket, None)
            if callback is not None:
                callback(outcome)
        else:
            self.host.send_to_worker(worker, AdmitResult(ticket, outcome))

    def _withdraw_remote(self, worker: int, ticket: int) -> None:
        call = self._remote.pop((worker, ticket), None)
        if call is not None and self.service is not None:
            self.service.withdraw(call)

    def on_worker_message(self, source: int, msg: WorkerMessage) -> None:
        if isinstance(msg, AdmitCall):
            self._offer(source, msg.ticket, msg.flow, msg.dnis)
        elif isinstance(msg, WithdrawCall):
            self._withdraw_remote(source, msg.ticket)
        elif isinstance(msg, AdmitResult):
            callback = self._waiting.pop(msg.ticket, None)
            if callback is not None:
                callback(msg.outcome)

    def on_worker_lost(self, index: int) -> None:
        """Everything the lost worker had queued leaves the queues (abandoned)."""
        for worker, ticket in [key for key in self._remote if key[0] == index]:
            self._withdraw_remote(worker, ticket)

    @property
    def pending(self) -> int:
        """Calls of this process waiting for an outcome."""
        return len(self._waiting)

    # ---- admin and lifecycle --------------------------------------------------------------
    def admin_routes(self, app: web.Application) -> None:
        if self.service is not None:
            add_routes(app, self.service, reload_source=self._reload_source)

    def _reload_source(self) -> MdflowConfig:
        path = self.host.config_path
        if path is None:
            raise NoReloadSource(
                "nothing to reload: the server runs without a config file (the embedded demo); "
                "start it with --config FILE"
            )
        return self.settings_of(load_config(path))

    def metrics(self, status: dict[str, object]) -> list[str]:
        if self.service is None:
            return []
        return self.service.prometheus_text().rstrip("\n").split("\n")

    async def start(self) -> None:
        if self.service is not None:
            await self.service.start()

    def reload(self, config: CoreConfig) -> None:
        if self.service is not None:
            self.service.reload(self.settings_of(config))

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()

    # ---- command line ---------------------------------------------------------------------
    @classmethod
    def add_commands(cls, sub: argparse._SubParsersAction[Any], ctl_sub: argparse._SubParsersAction[Any]) -> None:
        mdflow = ctl_sub.add_parser("mdflow", help="mdflow admission control: show, reload, debug")
        md_sub = mdflow.add_subparsers(dest="mdflow_command", title="commands")
        show = md_sub.add_parser("show", help="show config | show stats")
        show.add_argument("what", choices=["config", "stats"], help="config: the flows as configured; stats: the last interval's statistics, one line per flow (what Zabbix polls)")
        show.add_argument("--json", action="store_true", help="JSON instead of text")
        show.set_defaults(func=cmd_mdflow_show)
        md_reload = md_sub.add_parser(
            "reload", help="apply the config file's mdflow section live and say what changed (exit 1 without a config file)"
        )
        md_reload.add_argument("--json", action="store_true", help="the raw answer: flows added, removed, changed")
        md_reload.set_defaults(func=cmd_mdflow_reload)
        md_debug = md_sub.add_parser("debug", help="print the stats every interval until interrupted")
        md_debug.set_defaults(func=cmd_mdflow_debug)

        flow = sub.add_parser("flow", help="mdflow configuration tools")
        flow_sub = flow.add_subparsers(dest="flow_command", title="commands")
        flow_import = flow_sub.add_parser(
            "import",
            help="convert the deck's MDflow.conf (INI) to the JSON form",
            description="Print the JSON `mdflow` section for the deck's MDflow.conf on stdout (exit 2 naming "
            "the section and key of the first problem).",
        )
        flow_import.add_argument("file", metavar="FILE", help="the deck's MDflow.conf (INI)")
        flow_import.set_defaults(func=cmd_flow_import)


def cmd_mdflow_show(args: argparse.Namespace) -> int:
    path = f"/api/mdflow/{args.what}"
    if args.json:
        return print_json(admin_request(args.admin, "GET", path + "?format=json"))
    text = admin_request(args.admin, "GET", path, raw=True)
    sys.stdout.write(text)
    if args.what == "stats" and not text.strip():
        print("no mdflow flows configured", file=sys.stderr)
    return 0


def _value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def reload_summary(reply: dict[str, Any]) -> list[str]:
    """`ctl mdflow reload`'s answer as sentences: what changed, flow by flow."""
    added, removed = list(reply.get("added", [])), list(reply.get("removed", []))
    changed: dict[str, dict[str, list[Any]]] = dict(reply.get("changed", {}))
    general: dict[str, list[Any]] = dict(reply.get("general", {}))
    released = int(reply.get("released", 0))
    flows = len(reply.get("flows", []))
    if not (added or removed or changed or general):
        return [f"mdflow reloaded: nothing changed ({flows} flow{'s' if flows != 1 else ''})"]
    lines = [f"mdflow reloaded: {flows} flow{'s' if flows != 1 else ''} now"]
    lines += [f"  flow {name} added" for name in added]
    lines += [f"  flow {name} removed" for name in removed]
    for name, keys in changed.items():
        lines.append(
            f"  flow {name}: " + ", ".join(f"{key} {_value(old)} -> {_value(new)}" for key, (old, new) in keys.items())
        )
    lines += [f"  {key} {_value(old)} -> {_value(new)}" for key, (old, new) in general.items()]
    if released:
        lines.append(f"  {released} queued call(s) released (their flow was removed or put in en_paso)")
    return lines


def cmd_mdflow_reload(args: argparse.Namespace) -> int:
    reply = admin_request(args.admin, "POST", "/api/mdflow/reload")
    if args.json:
        return print_json(reply)
    print("\n".join(reload_summary(reply)))
    return 0


def cmd_mdflow_debug(args: argparse.Namespace) -> int:
    for line in admin_stream(args.admin, "/api/mdflow/debug"):
        sys.stdout.write(line.decode())
        sys.stdout.flush()
    return 0


def cmd_flow_import(args: argparse.Namespace) -> int:
    from .ini import main_import

    return main_import(args.file)
