"""Admin API (JSON over HTTP, loopback by default) and the Prometheus /metrics endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..metrics import core_metrics, render

if TYPE_CHECKING:
    from ..app import Application


def build_admin_app(application: Application) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)

    async def status(request: web.Request) -> web.Response:
        return web.json_response(await application.status_all())

    async def reload(request: web.Request) -> web.Response:
        errors = application.reload()
        if errors:
            return web.json_response({"ok": False, "errors": errors}, status=400)
        return web.json_response({"ok": True})

    async def metrics(request: web.Request) -> web.Response:
        status = await application.status_all()
        text = render([core_metrics(status), *(feature.metrics(status) for feature in application.features)])
        return web.Response(body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app.router.add_get("/api/status", status)
    app.router.add_post("/api/reload", reload)
    app.router.add_get("/metrics", metrics)
    for feature in application.features:
        feature.admin_routes(app)
    return app
