"""Media as a feature: owns the media backend, the anchoring policy and the seam the
B2BUA uses (`seam`), its config section, status, metrics and `ctl media`.

Every SIP worker has its own backend client (a call's legs all live in one worker, so
its session does too): `rtpengine` is an `ng.RtpengineBackend` per worker; `builtin` is
the media worker processes, reached through the factory `BUILTIN_FACTORY`
(`create_backend(host, settings) -> MediaBackend`), looked up when first needed.

The backend is started at start-up when the config can anchor a call (a rule says
`"media": "anchor"`, `anchor_users`, `default: "anchor"`, a feature's requirement), so
a missing or broken backend stops `serve` with a sentence; otherwise when the first call
needs it (a feature's requirement registered later).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from ..config import CoreConfig
from ..contract import Feature, Host, StartError, WorkerMessage
from ..metrics import family, single
from .anchor import (
    AnchoredCall,
    AnchoringPolicy,
    AnchoringSeam,
    Requirement,
    feature_requirements,
    flags_by_side,
    rule_media_flags,
)
from .cli import add_commands as add_media_commands
from .config import MediaConfig
from .control import MediaBackend, MediaCommand, MediaError, MediaReply
from .ng import RtpengineBackend, parse_daemon
from .protocol import MediaDtmf
from .rtpe_dtmf import DtmfLogListener, daemon_addresses

log = logging.getLogger("vivait_sip.media")

BUILTIN_FACTORY = "vivait_sip.media.builtin:create_backend"


def _dialplan_of(config: CoreConfig) -> list[Any]:
    b2bua = getattr(config, "b2bua", None)
    return list(getattr(b2bua, "dialplan", None) or [])


def _rules_of(config: CoreConfig) -> dict[str, str | None]:
    return rule_media_flags(_dialplan_of(config))


def load_builtin_factory(spec: str = BUILTIN_FACTORY) -> Any:
    """The built-in backend's factory, or `MediaError` saying it is not there yet."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise MediaError(
            f"backend builtin not available yet ({module_name} is not installed): "
            'set "media": {"backend": "rtpengine", "rtpengine": {"daemons": [...]}}'
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise MediaError(f"backend builtin not available yet ({spec} is missing)")
    return factory


class _LazyBackend:
    """The seam's backend: the feature's, started on first need."""

    def __init__(self, feature: MediaFeature) -> None:
        self.feature = feature

    @property
    def name(self) -> str:
        return self.feature.settings.backend

    async def start(self) -> None:
        await self.feature.ensure_backend()

    async def stop(self) -> None:
        return None

    async def request(self, msg: MediaCommand) -> MediaReply:
        try:
            backend = await self.feature.ensure_backend()
        except MediaError as exc:
            return MediaReply.failure(str(exc), self.name)
        return await backend.request(msg)

    @property
    def healthy(self) -> bool:
        backend = self.feature.backend
        return backend is not None and backend.healthy

    def status(self) -> Mapping[str, object]:
        backend = self.feature.backend
        return backend.status() if backend is not None else {"backend": self.name, "healthy": False, "sessions": 0}


class MediaFeature(Feature[MediaConfig]):
    """Anchored media (issue 11); see the module docstring."""

    name = "media"
    config_key = "media"
    config_model = MediaConfig
    order = 25  # before the B2BUA (30): its backend is up when calls start
    messages = (MediaDtmf,)  # rtpengine's digits, from worker 0 to the worker owning the call

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        settings = self.settings
        self.policy = AnchoringPolicy(
            default=settings.default, users=settings.anchor_users, rules=_rules_of(host.config)
        )
        self.backend: MediaBackend | None = None
        self._backend_config: tuple[object, ...] | None = None  # what the running backend was made from
        self.start_error: str | None = None
        self._lock: asyncio.Lock | None = None
        self._listeners: list[Callable[[object], None]] = []
        self.dtmf_log: DtmfLogListener | None = None
        self.seam = AnchoringSeam(
            _LazyBackend(self), self.policy, flags=settings.flags.to_flags(), timeout_s=settings.timeout_s,
            flags_for=flags_by_side(lambda: self.seam.flags),  # WebRTC sides get their own (anchor.webrtc_flags)
        )
        self._from_config: set[str] = set()
        self._config_requirements(host.config)

    def _config_requirements(self, config: CoreConfig) -> None:
        """Music on hold and rules that record: anchoring the config asks for itself."""
        settings = self.settings_of(config)
        found = feature_requirements(_dialplan_of(config), moh=settings.moh, moh_users=settings.moh_users)
        for name, predicate in found.items():
            if predicate is not None:
                self.policy.require(name, predicate)
                self._from_config.add(name)
            elif name in self._from_config:  # withdrawn by a reload (a feature's own stays)
                self.policy.withdraw(name)
                self._from_config.discard(name)

    @classmethod
    def check_config(cls, config: CoreConfig) -> list[str]:
        """Music-on-hold classes named but not defined (media.moh_classes, or "default")."""
        settings = cls.settings_of(config)
        classes = {"default", *settings.moh_classes}
        named = [("media.moh_class", settings.moh_class)]
        named += [(f"media.moh_users.{user}", klass) for user, klass in settings.moh_users.items()]
        return [f'{path}: no music-on-hold class "{klass}" (media.moh_classes, or "default")'
                for path, klass in named if klass not in classes]

    # ---- the API other features use ----------------------------------------------------------
    def require(self, name: str, predicate: Requirement) -> None:
        """Calls `predicate` holds for are anchored (recording, music on hold...)."""
        self.policy.require(name, predicate)

    def anchor_required(self, call: AnchoredCall) -> bool:
        """Whether a feature needs this call anchored."""
        return self.policy.anchor_required(call) is not None

    async def request(self, msg: MediaCommand) -> MediaReply:
        """Any control command (play media, DTMF, recording...) to the backend."""
        return await self.seam.backend.request(msg)

    # ---- the backend ------------------------------------------------------------------------
    def make_backend(self, settings: MediaConfig) -> MediaBackend:
        if settings.backend == "rtpengine":
            from .prompts import Prompts  # numpy: only when prompts can be played
            from .rtpe_sounds import RtpengineSounds

            rtp = settings.rtpengine
            return RtpengineBackend(
                rtp.daemons, timeout_s=rtp.timeout_s, retransmit_s=rtp.retransmit_s,
                ping_interval_s=rtp.ping_interval_s, down_after=rtp.down_after, up_after=rtp.up_after,
                max_pending=rtp.max_pending, max_sessions=rtp.max_sessions,
                sounds=RtpengineSounds(Prompts(settings.prompt_dirs, settings.moh_classes), media_dir=rtp.media_dir,
                                       blob_max=rtp.blob_max_bytes).resolve,
            )
        factory = load_builtin_factory()
        backend: MediaBackend = factory(self.host, settings)
        return backend

    async def ensure_backend(self) -> MediaBackend:
        """The running backend, created and started on first call (`MediaError` if it
        cannot be: the sentence says why)."""
        if self.backend is not None:
            return self.backend
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.backend is not None:
                return self.backend
            settings = self.settings
            try:
                backend = self.make_backend(settings)
                await backend.start()
            except MediaError as exc:
                self.start_error = str(exc)
                raise
            except (OSError, ValueError) as exc:
                self.start_error = f"backend {self.settings.backend}: {exc}"
                raise MediaError(self.start_error) from None
            self.start_error = None
            self.backend = backend
            listening = getattr(backend, "listen", None)
            if callable(listening):
                for callback in self._listeners:
                    listening(callback)
            self._backend_config = (settings.backend, settings.rtpengine)
            log.info("event=media_backend_started backend=%s worker=%d", backend.name, self.host.worker_index)
            return backend

    async def start(self) -> None:
        await self._listen_for_rtpengine_dtmf()
        await self._start()

    async def start_worker(self) -> None:
        await self._start()

    async def _start(self) -> None:
        self.host.on_call("media_status", lambda args: self.status())
        if not self.policy.could_anchor() and not self._webrtc_needs_media_workers():
            return
        try:
            await self.ensure_backend()
        except MediaError as exc:
            raise StartError(str(exc)) from None

    async def _listen_for_rtpengine_dtmf(self) -> None:
        """Worker 0: bind `media.rtpengine.dtmf_listen`, where the daemons report digits."""
        settings = self.settings
        address = settings.rtpengine.dtmf_listen
        if settings.backend != "rtpengine" or address is None:
            return
        host, port = parse_daemon(address)
        try:
            allowed = daemon_addresses(parse_daemon(daemon)[0] for daemon in settings.rtpengine.daemons)
            self.dtmf_log = await DtmfLogListener.bind(host, port, allowed, self._route_dtmf)
        except OSError as exc:
            raise StartError(f"media.rtpengine.dtmf_listen: cannot listen on {address}: {exc.strerror or exc}") from None
        log.info("event=rtpengine_dtmf_listening address=%s daemons=%s", address, ",".join(sorted(allowed)))

    def _route_dtmf(self, event: MediaDtmf) -> None:
        self.host.send_to_worker(self.host.owner_of(event.call_id), event)

    def on_worker_message(self, source: int, msg: WorkerMessage) -> None:
        if isinstance(msg, MediaDtmf):
            for callback in self._listeners:
                callback(msg)

    def _webrtc_needs_media_workers(self) -> bool:
        """WebRTC ↔ RTP calls are anchored whatever the config says (the first such call
        starts the backend), but the built-in media workers can only be spawned by SIP
        worker 0 before the others exist: with several SIP workers and the webfon on,
        they start at once."""
        webrtc = getattr(self.host.config, "webrtc", None)
        return (self.settings.backend == "builtin" and getattr(self.host, "worker_count", 1) > 1 and self.policy.webrtc
                and bool(getattr(webrtc, "enabled", False)))

    def reload(self, config: CoreConfig) -> None:
        settings = self.settings_of(config)
        self.policy.configure(default=settings.default, users=settings.anchor_users, rules=_rules_of(config))
        self._config_requirements(config)
        self.seam.flags = settings.flags.to_flags()
        self.seam.timeout_s = settings.timeout_s
        running = self._backend_config
        if running is not None and running != (settings.backend, settings.rtpengine):
            log.warning("event=config_warning media: backend changes apply at the next restart")

    async def stop(self) -> None:
        if self.dtmf_log is not None:
            self.dtmf_log.close()
            self.dtmf_log = None
        backend, self.backend = self.backend, None
        if backend is not None:
            await backend.stop()

    def fds_for_worker(self, index: int) -> dict[str, int]:
        """The built-in backend's socketpair ends to every media worker, for SIP worker
        `index` (it connects its own client: RTP commands never go through worker 0)."""
        handing = getattr(self.backend, "fds_for_worker", None)
        return dict(handing(index)) if callable(handing) else {}

    def worker_spawned(self, index: int) -> None:
        closing = getattr(self.backend, "worker_spawned", None)
        if callable(closing):
            closing(index)

    def listen(self, callback: Callable[[object], None]) -> None:
        """Events of the media workers (RTP timeout, DTMF, a player done, a recording
        closed: `protocol.MediaEvent`); the built-in backend only."""
        self._listeners.append(callback)
        listening = getattr(self.backend, "listen", None)
        if callable(listening):
            listening(callback)

    # ---- status, metrics, admin ----------------------------------------------------------------
    def status(self) -> dict[str, object]:
        backend = self.backend
        detail: dict[str, object] = dict(backend.status()) if backend is not None else {}
        return {"media": {
            **detail,
            "backend": self.settings.backend,
            "started": backend is not None,
            "healthy": backend is not None and backend.healthy,
            "sessions": _count(detail.get("sessions")),
            "start_error": self.start_error,
            **self.seam.status(),
            "workers": 1,
            **({"dtmf_log": dict(self.dtmf_log.counters)} if self.dtmf_log is not None else {}),
        }}

    def merge_status(self, mine: dict[str, object], workers: list[dict[str, object]]) -> None:
        ours = mine.get("media")
        if not isinstance(ours, dict):
            return
        for part in workers:
            theirs = part.get("media")
            if isinstance(theirs, dict):
                merge_media(ours, theirs)

    def metrics(self, status: dict[str, object]) -> list[str]:
        ours = status.get("media")
        if not isinstance(ours, dict):
            return []
        backend = str(ours.get("backend"))
        lines = family("vivait_media_sessions", "gauge", "Media sessions held by the backend for our calls.",
                       [({"backend": backend}, ours.get("sessions", 0))])
        lines += single("vivait_media_anchored_calls", "gauge", "Calls in progress whose media is anchored.",
                        ours.get("anchored_calls", 0))
        lines += family("vivait_media_calls_total", "counter", "Calls by anchoring decision.",
                        [({"decision": "anchored"}, ours.get("anchored", 0)), ({"decision": "passed"}, ours.get("passed", 0))])
        lines += single("vivait_media_failures_total", "counter", "SDP steps the media backend failed (calls refused or ended).",
                        ours.get("failures", 0))
        lines += family("vivait_media_backend_healthy", "gauge", "1 when the backend can take new sessions in every worker.",
                        [({"backend": backend}, bool(ours.get("healthy")))])
        dtmf_log = ours.get("dtmf_log")
        if isinstance(dtmf_log, dict):
            lines += family("vivait_media_rtpengine_dtmf_reports_total", "counter",
                            "Digit reports from rtpengine's --dtmf-log-dest: taken, unparsable, from no daemon.",
                            [({"result": key}, dtmf_log.get(key, 0)) for key in ("digits", "bad", "foreign")])
        found = ours.get("daemons")
        daemons = [d for d in found if isinstance(d, dict)] if isinstance(found, list) else []
        if daemons:
            lines += family("vivait_media_daemon_up", "gauge", "1 when every worker sees the rtpengine daemon up.",
                            [({"daemon": d["address"]}, d.get("state") == "up") for d in daemons])
            lines += family("vivait_media_daemon_sessions", "gauge", "Our sessions on each rtpengine daemon.",
                            [({"daemon": d["address"]}, d.get("sessions", 0)) for d in daemons])
            for key, help_text in (("requests", "NG requests sent"), ("timeouts", "NG requests that got no reply"),
                                   ("retransmissions", "NG requests resent")):
                lines += family(f"vivait_media_ng_{key}_total", "counter", f"{help_text}, per rtpengine daemon.",
                                [({"daemon": d["address"]}, d.get(key, 0)) for d in daemons])
        return lines

    def admin_routes(self, app: web.Application) -> None:
        async def media(request: web.Request) -> web.Response:
            return web.json_response(await self.all_status())

        app.router.add_get("/api/media", media)

    async def all_status(self) -> dict[str, object]:
        """Every worker's media status, merged (`ctl media`)."""
        mine = self.status()
        self.merge_status(mine, list(await self.host.call_workers("media_status")))
        result = mine["media"]
        assert isinstance(result, dict)
        return result

    @classmethod
    def add_commands(cls, sub: argparse._SubParsersAction[Any], ctl_sub: argparse._SubParsersAction[Any]) -> None:
        add_media_commands(sub, ctl_sub)


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0


_SUMMED = ("sessions", "anchored_calls", "anchored", "passed", "failures", "deletes", "requests", "errors",
           "failovers", "refused_no_daemon", "workers")
_DAEMON_SUMMED = ("sessions", "pending", "requests", "retransmissions", "timeouts", "refused", "overflow",
                  "unmatched_replies", "malformed_replies")


def merge_media(ours: dict[str, Any], theirs: Mapping[str, Any]) -> None:
    """Fold another worker's media status into ours: counts summed; healthy and a
    daemon's `up` only when every worker says so; the first start error kept."""
    for key in _SUMMED:
        if key in ours or key in theirs:
            ours[key] = int(ours.get(key, 0) or 0) + int(theirs.get(key, 0) or 0)
    ours["healthy"] = bool(ours.get("healthy")) and bool(theirs.get("healthy"))
    ours["started"] = bool(ours.get("started")) and bool(theirs.get("started"))
    ours["start_error"] = ours.get("start_error") or theirs.get("start_error")
    mine_daemons = {d["address"]: d for d in ours.get("daemons", []) if isinstance(d, dict)}
    for daemon in theirs.get("daemons", []):
        if not isinstance(daemon, dict):
            continue
        known = mine_daemons.get(daemon["address"])
        if known is None:
            mine_daemons[daemon["address"]] = dict(daemon)
            continue
        for key in _DAEMON_SUMMED:
            known[key] = int(known.get(key, 0) or 0) + int(daemon.get(key, 0) or 0)
        if known.get("state") != daemon.get("state"):
            known["state"] = "down" if "down" in (known.get("state"), daemon.get("state")) else "unknown"
        known["last_error"] = known.get("last_error") or daemon.get("last_error")
    if mine_daemons:
        ours["daemons"] = list(mine_daemons.values())
