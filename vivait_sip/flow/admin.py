"""aiohttp routes for ``vivait-sip ctl mdflow ...`` and for monitoring.

GET  /api/mdflow/config   text (``?format=json`` for the JSON config)
GET  /api/mdflow/stats    text (``?format=json`` or ``?format=prometheus``)
GET  /api/mdflow/metrics  Prometheus text exposition
GET  /api/mdflow/debug    streams the stats text at every closed interval
POST /api/mdflow/reload   re-read the config (``reload_source``) or take a JSON body; the
                          answer says what changed (flows added, removed, changed keys)
POST /api/mdflow/calls    offer synthetic calls (load generator, tests)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vivait_sip.config import ConfigError, validation_errors
from vivait_sip.flow.config import MdflowConfig
from vivait_sip.flow.engine import UnknownFlowError
from vivait_sip.flow.service import MdflowService

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_SYNTHETIC_CALLS = 100_000


class SyntheticCall(BaseModel):
    """One synthetic call: its DNIS and how long it will wait in a queue (0 = forever)."""

    model_config = ConfigDict(extra="forbid")

    dnis: str = Field(min_length=1, max_length=64)
    hold_ms: int = Field(default=0, ge=0)


class SyntheticCalls(BaseModel):
    """Body of POST /api/mdflow/calls."""

    model_config = ConfigDict(extra="forbid")

    flow: str
    calls: list[SyntheticCall] = Field(max_length=MAX_SYNTHETIC_CALLS)


class NoReloadSource(Exception):
    """There is nothing to reload from (the server runs without a config file)."""


def _error(status: int, message: str, errors: list[str] | None = None) -> web.Response:
    body: dict[str, object] = {"error": message}
    if errors:
        body["errors"] = errors
    return web.json_response(body, status=status)


def changes(old: MdflowConfig, new: MdflowConfig) -> dict[str, object]:
    """What a reload changes: flows added, removed, changed (key → [old, new]), unchanged,
    and the general keys."""
    before = {f.flujo: f.model_dump(mode="json") for f in old.flows}
    after = {f.flujo: f.model_dump(mode="json") for f in new.flows}
    changed: dict[str, dict[str, list[object]]] = {}
    for name in before.keys() & after.keys():
        diff = {k: [before[name][k], after[name][k]] for k in after[name] if before[name].get(k) != after[name][k]}
        if diff:
            changed[name] = diff
    general = {
        key: [getattr(old, key), getattr(new, key)]
        for key in ("tick_ms", "estad_interv_seg")
        if getattr(old, key) != getattr(new, key)
    }
    return {
        "added": [n for n in after if n not in before],
        "removed": [n for n in before if n not in after],
        "changed": {n: changed[n] for n in after if n in changed},
        "unchanged": [n for n in after if n in before and n not in changed],
        "general": general,
    }


def add_routes(
    app: web.Application,
    service: MdflowService,
    reload_source: Callable[[], MdflowConfig] | None = None,
) -> None:
    """Register the mdflow admin routes on ``app``.

    ``reload_source`` re-reads the configuration (e.g. the ``mdflow`` key of the JSON
    config file); without it, POST /api/mdflow/reload needs an MdflowConfig JSON body.
    """

    async def get_config(request: web.Request) -> web.Response:
        if request.query.get("format") == "json":
            return web.json_response(service.config.model_dump(mode="json"))
        return web.Response(text=service.config_text())

    async def get_stats(request: web.Request) -> web.Response:
        fmt = request.query.get("format", "text")
        if fmt == "json":
            return web.json_response(dataclasses.asdict(service.snapshot()))
        if fmt == "prometheus":
            return await get_metrics(request)
        if fmt != "text":
            return _error(400, f"unknown format {fmt!r} (text, json, prometheus)")
        return web.Response(text=service.stats_text())

    async def get_metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=service.prometheus_text().encode(),
            headers={"Content-Type": PROMETHEUS_CONTENT_TYPE},
        )

    async def post_reload(request: web.Request) -> web.Response:
        try:
            if request.can_read_body:
                config = MdflowConfig.model_validate_json(await request.read())
            elif reload_source is not None:
                config = reload_source()
            else:
                return _error(400, "no reload source configured: send the mdflow JSON as body")
        except NoReloadSource as exc:
            return _error(409, str(exc))
        except ValidationError as exc:
            return _error(400, "invalid mdflow config; mdflow unchanged", validation_errors(exc))
        except ConfigError as exc:
            return _error(400, f"{exc.summary()}; mdflow unchanged", exc.errors)
        except (OSError, ValueError) as exc:
            return _error(400, f"cannot reload mdflow config: {exc}")
        diff = changes(service.config, config)
        released = service.reload(config)
        return web.json_response({"flows": [f.flujo for f in config.flows], "released": released, **diff})

    async def post_calls(request: web.Request) -> web.Response:
        try:
            body = SyntheticCalls.model_validate_json(await request.read())
        except ValidationError as exc:
            return _error(400, f"invalid body: {exc}")
        if body.flow not in service.engine.flow_names():
            return _error(404, str(UnknownFlowError(body.flow)))
        counts = service.simulate(body.flow, ((c.dnis, c.hold_ms / 1000.0) for c in body.calls))
        return web.json_response(counts)

    async def get_debug(request: web.Request) -> web.StreamResponse:
        queue = service.debug_subscribe()
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        try:
            await response.prepare(request)
            while (text := await queue.get()) is not None:
                await response.write(text.encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the watcher went away (ctl mdflow debug interrupted)
        finally:
            service.debug_unsubscribe(queue)
        return response

    app.router.add_get("/api/mdflow/config", get_config)
    app.router.add_get("/api/mdflow/stats", get_stats)
    app.router.add_get("/api/mdflow/metrics", get_metrics)
    app.router.add_get("/api/mdflow/debug", get_debug)
    app.router.add_post("/api/mdflow/reload", post_reload)
    app.router.add_post("/api/mdflow/calls", post_calls)
