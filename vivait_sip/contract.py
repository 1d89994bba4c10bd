"""The one contract between the server and its features, in the spirit of Kamailio's
module exports.

A feature (registrar, mdflow, b2bua, media, webrtc, acd, ...) is a `Feature` subclass
listed in `vivait_sip/features.py`.  It declares what it brings — its config section,
its SIP request handlers and stateless checks, a filter on raw input, its admin and web
routes, its messages between worker processes, its CLI commands — and its lifecycle:
`start` (worker 0, or the single process, before other workers exist), `start_worker`
(workers 1..N-1), `reload`, `status`, `stop`.  The application knows this contract, never
a feature by name; features see the server only through `Host`.

Dependencies point one way (tests/test_dependencies.py): a feature imports `sip`, `store`,
this module, `config` (the core sections) and `logs`; never `app`, `core`, `transport`,
`workers`, `admin` or `cli`.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel

from .sip.auth import Credentials
from .sip.incoming import Incoming
from .sip.message import Request
from .sip.peer import Peer
from .sip.ua import DialogInfo, UaEvent
from .sip.uri import SipUri

if TYPE_CHECKING:
    import argparse

    from aiohttp import web

    from .config import CoreConfig

# ---- messages between worker processes --------------------------------------------------


class WorkerMessage:
    """Base of the typed one-way messages between workers: a frozen dataclass whose fields
    are JSON values (str, int, float, bool, None, lists and dicts of them).

    Subclasses are registered with `@worker_message("feature.name")`; the one encoding for
    all of them is `encode_message`/`decode_message`."""

    kind: ClassVar[str] = ""


_MESSAGE_TYPES: dict[str, type[WorkerMessage]] = {}
M = TypeVar("M", bound=type[WorkerMessage])


def worker_message(kind: str) -> Callable[[M], M]:
    """Register a frozen dataclass as the message `kind` (unique, "feature.verb")."""

    def register(cls: M) -> M:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        if _MESSAGE_TYPES.get(kind, cls) is not cls:
            raise ValueError(f"worker message kind {kind!r} is already taken")
        cls.kind = kind
        _MESSAGE_TYPES[kind] = cls
        return cls

    return register


def encode_message(msg: WorkerMessage) -> bytes:
    fields = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}  # type: ignore[arg-type]
    return json.dumps({"m": msg.kind, "a": fields}, separators=(",", ":")).encode()


def decode_message(data: bytes) -> WorkerMessage:
    raw = json.loads(data)
    cls = _MESSAGE_TYPES.get(raw.get("m", ""))
    if cls is None:
        raise ValueError(f"unknown worker message {raw.get('m')!r}")
    return cls(**raw.get("a", {}))


def mint_call_id(worker: int, count: int, host: str = "") -> str:
    """A fresh Call-ID owned by `worker` (crc32 % count, as workers.owner_index): the
    outbound legs of a call then land in the worker that holds its inbound leg."""
    suffix = f"@{host}" if host else ""
    while True:
        call_id = secrets.token_hex(12) + suffix
        if count <= 1 or zlib.crc32(call_id.encode()) % count == worker:
            return call_id


class StartError(Exception):
    """A feature cannot start (its backend is missing or unusable): `serve` prints the
    sentence and exits 1, as for a port already taken."""


# ---- what a feature sees of the server ---------------------------------------------------

RequestHandler = Callable[[Incoming], None]
StatelessCheck = Callable[[Request, Peer], bool]
# Raw input before parsing; True: the filter dealt with it (e.g. a banned source got 403).
InputFilter = Callable[[bytes, Peer], bool]
CallHandler = Callable[[dict[str, Any]], "Awaitable[Any] | Any"]
# Every SIP message this process's transports receive ("in") or send ("out"): the bytes,
# the remote peer and the local (host, port).  Called only while installed (`set_trace`).
TraceHook = Callable[[str, bytes, Peer, tuple[str, int]], None]
F = TypeVar("F", bound="Feature[Any]")


class SipService(Protocol):
    """The user-agent layer as features drive it (`Host.sip`).  Every call only queues:
    the adapter transmits once the feature's code returns ("process, then transmit"), so
    calling these from a UA event handler never re-enters it.  Requests and dialogs a
    feature creates are owned by it: their events reach its `on_ua_event`."""

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
    ) -> int: ...

    def send_in_dialog(
        self, dialog_id: int, method: str, *, headers: Iterable[tuple[str, str]] = (), body: bytes = b"", auto_ack: bool = True
    ) -> int: ...

    def respond(
        self,
        request_id: int,
        status: int,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        reliable: bool = False,
    ) -> int | None: ...

    def cancel(self, request_id: int, *, reason: str | None = None) -> None: ...

    def ack(self, dialog_id: int, *, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> None: ...

    def bye(self, dialog_id: int, *, headers: Iterable[tuple[str, str]] = ()) -> None: ...

    def dialog(self, dialog_id: int) -> DialogInfo | None: ...

    def contact_for(self, peer: Peer, user: str | None = None) -> str:
        """Our Contact (`<sip:user@host:port;transport=...>`) towards `peer`."""
        ...

    def local_address(self, peer: Peer) -> tuple[str, int]:
        """The (host, port) we are known by towards `peer`: Via, Record-Route, SDP."""
        ...


class LocalDomains(Protocol):
    def is_local_domain(self, host: str) -> bool:
        """A domain (or one of our addresses) we are authoritative for."""
        ...


class Host(LocalDomains, Protocol):
    """The server as features see it (implemented by `app.Application`)."""

    @property
    def config(self) -> CoreConfig: ...

    @property
    def sip(self) -> SipService: ...

    @property
    def config_path(self) -> str | None: ...

    @property
    def data_dir(self) -> Path: ...

    @property
    def demo(self) -> bool: ...

    @property
    def banner(self) -> list[str]: ...

    @property
    def counters(self) -> Counter[str]: ...

    @property
    def is_primary(self) -> bool: ...

    @property
    def worker_index(self) -> int: ...

    @property
    def worker_count(self) -> int: ...

    @property
    def secret(self) -> bytes: ...

    def owner_of(self, key: str) -> int:
        """The worker owning a Call-ID or an AOR."""
        ...

    def owner_of_message(self, req: Request) -> int: ...

    def send_to_worker(self, worker: int, msg: WorkerMessage) -> None: ...

    def broadcast(self, msg: WorkerMessage) -> None:
        """To every other worker (no-op with one process)."""
        ...

    def on_call(self, name: str, handler: CallHandler) -> None:
        """Answer admin queries from worker 0 (`call_workers`)."""
        ...

    async def call_workers(self, name: str, **args: Any) -> list[Any]:
        """Run a registered call in every other worker (admin paths only: it waits)."""
        ...

    def send_raw(self, data: bytes, peer: Peer) -> None:
        """Bytes straight to the transport, no transaction (stateless answers)."""
        ...

    def inherited_fds(self, feature: str) -> dict[str, int]:
        """In workers 1..N-1: the descriptors worker 0's `feature` handed to this worker
        (`Feature.fds_for_worker`); {} elsewhere."""
        ...

    async def resolve(self, uri: SipUri) -> list[Peer]:
        """RFC 3263: the ordered next hops for `uri` (NAPTR, SRV, A/AAAA); [] when none."""
        ...

    def feature(self, cls: type[F]) -> F | None:
        """Another feature's instance in this process, if loaded."""
        ...

    def set_trace(self, hook: TraceHook | None) -> None:
        """Pass every SIP message of this process's transports to `hook` (None: stop).
        With no hook the transports pay one `is None` test per message."""
        ...


S = TypeVar("S", bound=BaseModel)


class Feature(Generic[S]):
    """Base class: override what the feature brings; every default does nothing."""

    name: ClassVar[str] = ""
    config_key: ClassVar[str | None] = None  # its top-level key in the JSON config
    config_model: ClassVar[type[BaseModel] | None] = None
    order: ClassVar[int] = 100  # start order; stop runs in reverse
    messages: ClassVar[tuple[type[WorkerMessage], ...]] = ()  # handled by on_worker_message

    def __init__(self, host: Host) -> None:
        self.host = host

    @property
    def settings(self) -> S:
        """This feature's section of the config in force."""
        return self.settings_of(self.host.config)

    @classmethod
    def settings_of(cls, config: CoreConfig) -> S:
        if cls.config_key is None:
            raise TypeError(f"feature {cls.name} has no config section")
        value: S = getattr(config, cls.config_key)
        return value

    @classmethod
    def check_config(cls, config: CoreConfig) -> list[str]:
        """Checks across sections once every model is valid (a flow a rule names exists,
        a user a DID maps to...): `path: message` lines, [] when all is well."""
        return []

    # ---- SIP ------------------------------------------------------------------------------
    def request_handlers(self) -> Mapping[str, RequestHandler]:
        """Out-of-dialog requests by method."""
        return {}

    def stateless_checks(self) -> Mapping[str, StatelessCheck]:
        """Per method: True when the handler will answer without keeping state, so no
        transaction is created (challenges, OPTIONS)."""
        return {}

    def input_filter(self) -> InputFilter | None:
        return None

    def on_connection_lost(self, peer: Peer) -> None:
        """A TCP/TLS/WebSocket connection closed (worker 0 only)."""

    def on_ua_event(self, event: UaEvent) -> None:
        """An event of a request or dialog this feature owns (see `SipService`); new
        out-of-dialog requests arrive through `request_handlers` instead."""

    # ---- workers --------------------------------------------------------------------------
    def on_worker_message(self, source: int, msg: WorkerMessage) -> None:
        """One of `messages` arrived from worker `source`."""

    def on_worker_lost(self, index: int) -> None:
        """Worker `index`'s link dropped: withdraw whatever it had pending here."""

    def fds_for_worker(self, index: int) -> dict[str, int]:
        """Worker 0: descriptors worker `index` must inherit (socketpair ends to helper
        processes the feature started), by name; it reads them with `Host.inherited_fds`."""
        return {}

    def worker_spawned(self, index: int) -> None:
        """Worker 0: worker `index` has inherited its descriptors: close our copies."""

    # ---- HTTP -----------------------------------------------------------------------------
    def admin_routes(self, app: web.Application) -> None:
        """Routes on the admin API (token-protected, JSON)."""

    def web_routes(self, app: web.Application) -> None:
        """Routes on the HTTPS server (webfon, REST)."""

    def metrics(self, status: dict[str, object]) -> list[str]:
        """Prometheus text lines, from the merged `status` of every worker."""
        return []

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Worker 0 or the single process, before workers 1..N-1 exist."""

    async def start_worker(self) -> None:
        """Workers 1..N-1, before they read from the shared sockets."""

    def reload(self, config: CoreConfig) -> None:
        """The config file changed (SIGHUP, `ctl reload`); apply what can change live."""

    def status(self) -> dict[str, object]:
        """This process's part of `ctl status`, under the feature's own key."""
        return {}

    def merge_status(self, mine: dict[str, object], workers: list[dict[str, object]]) -> None:
        """Worker 0: fold the other workers' `status()` into its own (sums, lists)."""

    def stopping(self) -> float:
        """SIGTERM (or SIGINT) reached this process: stop taking new work now, before
        anything else stops (`stop` follows, in reverse start order, once the other
        workers have exited).  Returns the seconds `stop` may then take to drain, so that
        worker 0 waits that long for the other workers before killing them."""
        return 0.0

    async def stop(self) -> None:
        """Flush and close; runs in reverse start order."""

    # ---- command line ---------------------------------------------------------------------
    @classmethod
    def add_commands(cls, sub: argparse._SubParsersAction[Any], ctl_sub: argparse._SubParsersAction[Any]) -> None:
        """Add `vivait-sip <command>` and `vivait-sip ctl <command>` subcommands."""


__all__ = [
    "CallHandler",
    "Feature",
    "Host",
    "Incoming",
    "InputFilter",
    "LocalDomains",
    "RequestHandler",
    "SipService",
    "StartError",
    "StatelessCheck",
    "TraceHook",
    "WorkerMessage",
    "decode_message",
    "encode_message",
    "mint_call_id",
    "worker_message",
]
