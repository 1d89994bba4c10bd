"""aiohttp routes for ``vivait-sip ctl mdflow ...`` and for monitoring.

GET  /api/mdflow/config   text (``?format=json`` for the JSON config)
GET  /api/mdflow/stats    text (``?format=json`` or ``?format=prometheus``)
GET  /api/mdflow/metrics  Prometheus text exposition
GET  /api/mdflow/debug    streams the stats text at every closed interval
POST /api/mdflow/reload   re-read the config (``reload_source``) or take a JSON body
POST /api/mdflow/calls    offer synthetic calls (load generator, tests)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


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
        except ValidationError as exc:
            return _error(400, f"invalid mdflow config: {exc}")
        except (OSError, ValueError) as exc:
            return _error(400, f"cannot reload mdflow config: {exc}")
        released = service.reload(config)
        return web.json_response({"flows": [f.flujo for f in config.flows], "released": released})

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
