"""Admin API (JSON over HTTP, loopback by default) and the Prometheus /metrics endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

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
        text = core_metrics(application, status)
        for feature in application.features:
            lines = feature.metrics(status)
            if lines:
                text += "\n".join(lines) + "\n"
        return web.Response(body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app.router.add_get("/api/status", status)
    app.router.add_post("/api/reload", reload)
    app.router.add_get("/metrics", metrics)
    for feature in application.features:
        feature.admin_routes(app)
    return app


def core_metrics(application: Application, status: dict[str, object]) -> str:
    """Core counters as Prometheus text (counters are monotonic since start), all workers."""
    counters = status["counters"]
    transport = status["transport"]
    assert isinstance(counters, dict) and isinstance(transport, dict)
    lines = [
        "# HELP vivait_uptime_seconds Seconds since the server started.",
        "# TYPE vivait_uptime_seconds gauge",
        f"vivait_uptime_seconds {status['uptime_s']}",
        "# HELP vivait_sip_transactions Live SIP transactions.",
        "# TYPE vivait_sip_transactions gauge",
        f"vivait_sip_transactions {status['transactions']}",
        "# HELP vivait_connections Open TCP/TLS/WebSocket connections.",
        "# TYPE vivait_connections gauge",
        f"vivait_connections {application.transports.connection_count}",
        "# HELP vivait_sip_events_total SIP core counters by event.",
        "# TYPE vivait_sip_events_total counter",
    ]
    for name, value in sorted(counters.items()):
        lines.append(f'vivait_sip_events_total{{event="{name}"}} {value}')
    lines += [
        "# HELP vivait_transport_messages_total Messages received and sent by the transports.",
        "# TYPE vivait_transport_messages_total counter",
        f'vivait_transport_messages_total{{direction="in"}} {transport["received"]}',
        f'vivait_transport_messages_total{{direction="out"}} {transport["sent"]}',
    ]
    return "\n".join(lines) + "\n"
