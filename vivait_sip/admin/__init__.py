"""Admin API (JSON over HTTP, loopback by default) and the Prometheus /metrics endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from .. import __version__
from ..metrics import core_metrics, render

if TYPE_CHECKING:
    from ..app import Application


NO_CONFIG_FILE = (
    "nothing to reload: the server runs without a config file (the embedded demo); "
    "start it with --config FILE to reload that file"
)


def routes(app: web.Application) -> list[str]:
    """`METHOD PATH` of every route, sorted by path (HEAD, aiohttp's twin of GET, left out)."""
    found = {
        (route.resource.canonical, route.method)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    return [f"{method} {path}" for path, method in sorted(found)]


def build_admin_app(application: Application) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)

    async def status(request: web.Request) -> web.Response:
        return web.json_response(await application.status_all())

    async def reload(request: web.Request) -> web.Response:
        path = application.config_path
        if path is None:
            return web.json_response({"error": NO_CONFIG_FILE}, status=409)
        errors = application.reload()
        if errors:
            count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
            message = f"{path} has {count}; nothing reloaded, the running config stays"
            return web.json_response({"ok": False, "error": message, "errors": errors}, status=400)
        return web.json_response({"ok": True, "path": path})

    async def index(request: web.Request) -> web.Response:
        """Every route of this API (the features' included), for a person exploring it."""
        return web.json_response({"service": "vivait-sip admin API", "version": __version__, "routes": routes(app)})

    async def metrics(request: web.Request) -> web.Response:
        status = await application.status_all()
        text = render([core_metrics(status), *(feature.metrics(status) for feature in application.features)])
        return web.Response(body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app.router.add_get("/", index)
    app.router.add_get("/api/status", status)
    app.router.add_post("/api/reload", reload)
    app.router.add_get("/metrics", metrics)
    for feature in application.features:
        feature.admin_routes(app)
    return app
