"""Admin API routes for registrations and users (JSON).

GET    /api/registrations[?aor=]  bindings, all or of one AOR
DELETE /api/registrations?aor=    remove an AOR's bindings → {"removed": n}
GET    /api/users                 users without digests
POST   /api/users/reload          re-read users (config + store) → {"ok": true, "users": n}
GET    /api/bans                  banned sources, seconds left, failure count
DELETE /api/bans?source=IP        lift a ban → {"unbanned": true|false}

`aor` is a full AOR (`sip:6140@example.com`, normalised like REGISTER does) or a bare
user part (`6140`) matching that user in every domain, which is what an operator types.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from ..sip.errors import SipParseError
from ..sip.uri import parse_uri
from ..store import Store
from .location import Binding, LocationService
from .security import SecurityMonitor
from .users import UserDirectory


class RegistrarLike(Protocol):
    """What the routes need from the registrar feature."""

    location: LocationService
    users: UserDirectory
    store: Store
    monitor: SecurityMonitor

    def reload_users(self) -> int: ...

    async def registrations(self, aor: str | None) -> list[dict[str, object]]: ...

    async def unregister(self, aor: str) -> int: ...


def matching_aors(location: LocationService, aor: str) -> list[str]:
    if ":" not in aor and "@" not in aor:
        return [a for a in location.all_aors() if a.startswith(f"sip:{aor}@")]
    return [parse_uri(aor).aor]


def list_bindings(location: LocationService, aor: str | None) -> list[dict[str, object]]:
    """This process's bindings as JSON rows, sorted by AOR (`aor` as `matching_aors` takes it)."""
    now = location.clock()
    names = sorted(location.all_aors()) if aor is None else sorted(matching_aors(location, aor))
    return [binding_json(b, now) for name in names for b in location.bindings(name, now)]


def remove_bindings(location: LocationService, aor: str) -> int:
    return sum(location.remove_aor(name, "operator") for name in matching_aors(location, aor))


def binding_json(binding: Binding, now: float) -> dict[str, object]:
    host = f"[{binding.source_host}]" if ":" in binding.source_host else binding.source_host
    return {
        "aor": binding.aor,
        "contact": binding.contact,
        "transport": binding.transport,
        "source": f"{host}:{binding.source_port}",
        "expires_in": binding.expires_in(now),
        "user_agent": binding.user_agent,
        "instance": binding.instance,
        "reg_id": binding.reg_id,
        "q": binding.q,
        "path": binding.path,
    }


def add_routes(app: web.Application, registrar: RegistrarLike) -> None:
    """Register the registrar's admin routes on `app`."""

    def aor_query(request: web.Request, required: bool) -> str | None:
        """The `aor` parameter, checked here so a bad one is a 400, not a worker error."""
        aor = request.query.get("aor", "").strip()
        if not aor:
            if required:
                raise web.HTTPBadRequest(
                    text='{"error": "aor is required"}', content_type="application/json"
                )
            return None
        try:
            matching_aors(registrar.location, aor)
        except SipParseError:
            raise web.HTTPBadRequest(
                text='{"error": "aor is not a SIP URI"}', content_type="application/json"
            ) from None
        return aor

    async def list_registrations(request: web.Request) -> web.Response:
        out = await registrar.registrations(aor_query(request, required=False))
        return web.json_response({"registrations": out, "count": len(out)})

    async def unregister(request: web.Request) -> web.Response:
        aor = aor_query(request, required=True)
        assert aor is not None
        return web.json_response({"removed": await registrar.unregister(aor)})

    async def list_users(request: web.Request) -> web.Response:
        users = [u.public() for u in registrar.users.all()]
        return web.json_response({"users": users, "count": len(users)})

    async def reload_users(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "users": registrar.reload_users()})

    async def list_bans(request: web.Request) -> web.Response:
        monitor = registrar.monitor
        bans = [{"source": ip, "seconds_left": left} for ip, left in sorted(monitor.banned().items())]
        return web.json_response({"bans": bans, "auth_failures": monitor.failures_total})

    async def unban(request: web.Request) -> web.Response:
        source = request.query.get("source", "").strip()
        if not source:
            raise web.HTTPBadRequest(text='{"error": "source is required"}', content_type="application/json")
        unbanned = registrar.monitor.unban(source)
        return web.json_response({"unbanned": unbanned})

    app.router.add_get("/api/registrations", list_registrations)
    app.router.add_get("/api/bans", list_bans)
    app.router.add_delete("/api/bans", unban)
    app.router.add_delete("/api/registrations", unregister)
    app.router.add_get("/api/users", list_users)
    app.router.add_post("/api/users/reload", reload_users)
