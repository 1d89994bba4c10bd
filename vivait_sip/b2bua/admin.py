"""The B2BUA's config checks across sections and its admin API routes (docs/b2bua.md).

GET /api/route?number=N[&from=SOURCE][&at=ISO8601]   which rule a call would match, and why
                                                     not the earlier ones (`ctl route`)
GET /api/calls                                       calls in progress, every worker (`ctl calls`)
DELETE /api/calls/{call}                             hang one up: its uuid or any leg's Call-ID
POST /api/calls/{call}/recording                     start recording it (stereo WAV; `ctl record start`)
DELETE /api/calls/{call}/recording                   stop recording it (`ctl record stop`)

`check_references` finds what no single model can see (a rule naming a trunk, a group or
an mdflow flow that does not exist...); `reference_warnings` what may still be right
because users also live in the store, out of the config's sight.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..flow.config import MdflowConfig
from ..registrar.config import NUMBER_RE, RegistrarConfig
from .config import (
    Announcement,
    B2buaConfig,
    Hangup,
    Rule,
    ThroughFlow,
    ToExtension,
    ToTrunk,
    ToUser,
)
from .routing import Decision, Directory, RouteRequest, Source

if TYPE_CHECKING:
    from ..config import CoreConfig

Action = ToUser | ToExtension | ToTrunk | Hangup | Announcement | ThroughFlow


# ---- config checks --------------------------------------------------------------------------


class _ConfigUsers:
    """Who owns each number the `registrar` section defines, ranges left unexpanded."""

    def __init__(self, registrar: RegistrarConfig | None) -> None:
        self._owner: dict[str, tuple[str, str]] = {}  # number → (user, "number"/"extension"...)
        self._ranges = [] if registrar is None else registrar.user_ranges
        for user in [] if registrar is None else registrar.users:
            self._owner[user.number] = (user.number, "number")
            self._owner.setdefault(user.hard_extension, (user.number, "extension"))
            if user.web_extension is not None:
                self._owner.setdefault(user.web_extension, (user.number, "web extension"))
        self.defined = bool(self._owner or self._ranges)

    def owner(self, number: str) -> tuple[str, str] | None:
        """(user number, what `number` is to that user), or None when no config user has it."""
        found = self._owner.get(number)
        if found is not None or not number.isdigit():
            return found
        for rng in self._ranges:
            if len(number) != len(rng.first):
                continue
            if int(rng.first) <= int(number) <= int(rng.last):
                return number, "number"
            user = int(number) - rng.extension_offset
            if int(rng.first) <= user <= int(rng.last):
                return f"{user:0{len(rng.first)}d}", "extension"
        return None


def _sections(config: CoreConfig) -> tuple[B2buaConfig | None, RegistrarConfig | None, MdflowConfig | None]:
    b2bua = getattr(config, "b2bua", None)
    registrar = getattr(config, "registrar", None)
    mdflow = getattr(config, "mdflow", None)
    return (
        b2bua if isinstance(b2bua, B2buaConfig) else None,
        registrar if isinstance(registrar, RegistrarConfig) else None,
        mdflow if isinstance(mdflow, MdflowConfig) else None,
    )


def _actions(action: Action, path: str, depth: int = 0) -> Iterator[tuple[Action, str, int]]:
    """A rule's action and, for a flow, its outcomes, each with its JSON path and depth."""
    yield action, path, depth
    if isinstance(action, ThroughFlow):
        for key in ("then", "agujero", "desborda"):
            sub = getattr(action, key)
            if sub is not None:
                yield from _actions(sub, f"{path}.{key}", depth + 1)
    elif isinstance(action, Announcement) and action.then is not None:
        yield from _actions(action.then, f"{path}.then", depth + 1)


def _duplicates(kind: str, names: list[str], path: str) -> list[str]:
    first: dict[str, int] = {}
    out = []
    for i, name in enumerate(names):
        if name in first:
            out.append(f'{path}[{i}].name: {kind} name "{name}" is used twice (first at {path}[{first[name]}])')
        first.setdefault(name, i)
    return out


def _not_a_user(value: str, path: str, users: _ConfigUsers, what: str) -> str | None:
    """Provable mistakes about a number that must name a user: not a user number at all,
    or a config user's extension where the user's own number is needed."""
    if not NUMBER_RE.fullmatch(value):
        return f"{path}: {value!r} is not a user number (2 to 15 digits)"
    owner = users.owner(value)
    if owner is not None and owner[1] != "number":
        return f"{path}: {value} is user {owner[0]}'s {owner[1]}; {what} list user numbers"
    return None


def check_references(config: CoreConfig) -> list[str]:
    """Every reference the `b2bua` section makes that cannot be right, `path: message`
    lines, all at once: unknown trunks, groups and mdflow flows, a flow nested in a flow,
    names used twice, numbers that cannot be users' (group members, source users, DID and
    action targets), and DIDs that are some other user's number or extension.  [] when
    all is well."""
    b2bua, registrar, mdflow = _sections(config)
    if b2bua is None:
        return []
    users = _ConfigUsers(registrar)
    trunks = {t.name for t in b2bua.trunks}
    flows = set() if mdflow is None else {f.flujo for f in mdflow.flows}
    errors = _duplicates("rule", [r.name for r in b2bua.dialplan], "b2bua.dialplan")
    errors += _duplicates("trunk", [t.name for t in b2bua.trunks], "b2bua.trunks")
    for name, members in b2bua.groups.items():
        for j, member in enumerate(members):
            error = _not_a_user(member, f"b2bua.groups.{name}[{j}]", users, "groups")
            if error is not None:
                errors.append(error)
    for i, trunk in enumerate(b2bua.trunks):
        if trunk.inbound_user is not None:
            error = _not_a_user(trunk.inbound_user, f"b2bua.trunks[{i}].inbound_user", users, "trunks")
            if error is not None:
                errors.append(error)
    for user in b2bua.caller_ids:
        error = _not_a_user(user, f"b2bua.caller_ids.{user}", users, "caller IDs")
        if error is not None:
            errors.append(error)
    for did, number in b2bua.dids.items():
        if not NUMBER_RE.fullmatch(number):
            errors.append(f"b2bua.dids.{did}: {number!r} is not a user number (2 to 15 digits)")
            continue
        owner = users.owner(did)
        mapped = users.owner(number)
        if owner is not None and owner[0] != (mapped[0] if mapped is not None else number):
            errors.append(
                f"b2bua.dids.{did}: {did} is user {owner[0]}'s {owner[1]}; as a DID of {number} "
                "it would take that user's calls"
            )
    for i, rule in enumerate(b2bua.dialplan):
        errors += _rule_errors(rule, f"b2bua.dialplan[{i}]", trunks, set(b2bua.groups), flows, users)
    classes = _moh_classes(config)
    for i, rule in enumerate(b2bua.dialplan):
        if rule.moh is not None and classes is not None and rule.moh not in classes:
            errors.append(f'b2bua.dialplan[{i}].moh: no music-on-hold class "{rule.moh}" (media.moh_classes, or "default")')
    return errors


def _moh_classes(config: CoreConfig) -> set[str] | None:
    """The music-on-hold classes the `media` section defines ("default" always); None
    without a media section (nothing to check against)."""
    media = getattr(config, "media", None)
    if media is None:
        return None
    return {"default", *(getattr(media, "moh_classes", None) or {})}


def _rule_errors(
    rule: Rule, path: str, trunks: set[str], groups: set[str], flows: set[str], users: _ConfigUsers
) -> list[str]:
    errors = []
    source = rule.match.source
    if source is not None:
        for j, trunk in enumerate(source.trunks):
            if trunk not in trunks:
                errors.append(f'{path}.match.source.trunks[{j}]: no trunk named "{trunk}" (b2bua.trunks[].name)')
        for j, group in enumerate(source.groups):
            if group not in groups:
                errors.append(f'{path}.match.source.groups[{j}]: no group named "{group}" (b2bua.groups)')
        for j, user in enumerate(source.users):
            error = _not_a_user(user, f"{path}.match.source.users[{j}]", users, "sources")
            if error is not None:
                errors.append(error)
    for action, where, depth in _actions(rule.action, f"{path}.action"):
        if isinstance(action, ThroughFlow):
            if depth > 0:
                errors.append(f"{where}: a flow's outcome cannot go through another flow (one admission per call)")
            if action.flow not in flows:
                errors.append(f'{where}.flow: no mdflow flow named "{action.flow}" (mdflow.flows[].flujo)')
        elif isinstance(action, ToUser | ToExtension):
            key = "user" if isinstance(action, ToUser) else "extension"
            value = getattr(action, key)
            if value is not None and not NUMBER_RE.fullmatch(value):
                errors.append(f"{where}.{key}: {value!r} is not a user number or extension (2 to 15 digits)")
        elif isinstance(action, ToTrunk):
            for j, trunk in enumerate(action.trunks):
                if trunk not in trunks:
                    errors.append(f'{where}.trunks[{j}]: no trunk named "{trunk}" (b2bua.trunks[].name)')
    return errors


def reference_warnings(config: CoreConfig) -> list[str]:
    """Numbers the `b2bua` section names that no config user has, when the config defines
    users: right if the user was added with `vivait-sip user add`, else calls to them get
    404.  Worth logging at start and reload, not worth refusing the config for."""
    b2bua, registrar, _ = _sections(config)
    users = _ConfigUsers(registrar)
    if b2bua is None:
        return []
    if not users.defined:
        return _prompt_warnings(config, b2bua)
    named = [(f"b2bua.dids.{did}", number) for did, number in b2bua.dids.items()]
    named += [(f"b2bua.groups.{g}[{j}]", m) for g, members in b2bua.groups.items() for j, m in enumerate(members)]
    for i, rule in enumerate(b2bua.dialplan):
        path = f"b2bua.dialplan[{i}]"
        if rule.match.source is not None:
            named += [(f"{path}.match.source.users[{j}]", u) for j, u in enumerate(rule.match.source.users)]
        for action, where, _ in _actions(rule.action, f"{path}.action"):
            if isinstance(action, ToUser) and action.user is not None:
                named.append((f"{where}.user", action.user))
            elif isinstance(action, ToExtension) and action.extension is not None:
                named.append((f"{where}.extension", action.extension))
    lines = [
        f"{path}: {number} is no user or extension of the config (only the store can have it)"
        for path, number in named
        if users.owner(number) is None
    ]
    return lines + _prompt_warnings(config, b2bua)


def _prompt_warnings(config: CoreConfig, b2bua: B2buaConfig) -> list[str]:
    """Announcements naming a prompt that is nowhere now: prompts live on disk (they may
    be added before the first call), so a warning, not an error."""
    from ..media.audio.tones import BUILTIN
    from ..media.prompts import PromptError, Prompts

    media = getattr(config, "media", None)
    prompts = Prompts(getattr(media, "prompt_dirs", None) or [])
    lines = []
    for i, rule in enumerate(b2bua.dialplan):
        for action, where, _ in _actions(rule.action, f"b2bua.dialplan[{i}].action"):
            if not isinstance(action, Announcement):
                continue
            try:
                found = prompts.find(action.prompt) is not None or action.prompt.removesuffix(".wav") in BUILTIN
            except PromptError:
                found = False
            if not found:
                dirs = ", ".join(str(d) for d in prompts.dirs)
                lines.append(f'{where}.prompt: no prompt "{action.prompt}" in {dirs} nor built in (calls will skip it)')
    return lines


# ---- admin routes ---------------------------------------------------------------------------


def _ip(text: str) -> str:
    return str(ipaddress.ip_address(text.strip("[]")))


def _trunk_at(config: B2buaConfig, host: str) -> str | None:
    """The trunk an address belongs to, as an inbound call from it would be recognised."""
    ip = ipaddress.ip_address(host)
    for trunk in config.trunks:
        if any(ip in ipaddress.ip_network(net) for net in trunk.networks):
            return trunk.name
    return None


def parse_source(text: str, config: B2buaConfig, directory: Directory) -> Source:
    """`--from` / `from=`: a user (`6140`, `6140@IP`), a trunk (`trunk:pri`, `trunk:pri@IP`),
    an address (its trunk recognised by network), or "" for an anonymous caller.
    ValueError names what is wrong."""
    text = text.strip()
    if not text:
        return Source(None, None, "")
    if text.startswith("trunk:"):
        name, _, host = text.removeprefix("trunk:").partition("@")
        if name not in {t.name for t in config.trunks}:
            raise ValueError(f'no trunk named "{name}"')
        return Source(None, name, _ip(host) if host else "")
    try:
        host = _ip(text)
    except ValueError:
        number, _, host = text.partition("@")
        user = directory.user_of(number)
        if user is None:
            raise ValueError(f"no user {number}") from None
        return Source(user, None, _ip(host) if host else "")
    return Source(None, _trunk_at(config, host), host)


def _time(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    at = datetime.fromisoformat(text)
    if at.utcoffset() is None:
        raise ValueError(f"at {text!r} needs a UTC offset (2026-03-29T10:15+02:00, or Z)")
    return at


def decision_json(decision: Decision, number: str, source: Source, at: datetime) -> dict[str, Any]:
    """The route endpoint's answer: the decision, and what it was asked."""

    def target(value: Any) -> Any:
        return None if value is None else dataclasses.asdict(value)

    return {
        "number": number,
        "source": dataclasses.asdict(source),
        "at": at.isoformat(),
        "rule": decision.rule,
        "flow": decision.flow,
        "ringing": decision.ringing,
        "target": target(decision.target),
        "on_agujero": target(decision.on_agujero),
        "on_desborda": target(decision.on_desborda),
        "did": decision.did,
        "trace": list(decision.trace),
    }


def add_routes(app: web.Application, feature: Any) -> None:
    """The B2BUA's admin routes; `feature` has `router` (a routing.Router, replaced on
    reload, so read at each request) and `directory` (a routing.Directory)."""

    async def route(request: web.Request) -> web.Response:
        number = request.query.get("number", "").strip()
        if not number:
            return web.json_response({"error": "number is required"}, status=400)
        router = feature.router
        try:
            source = parse_source(request.query.get("from", ""), router.config, feature.directory)
        except ValueError as exc:
            return web.json_response({"error": f"from: {exc}"}, status=400)
        try:
            at = _time(request.query.get("at"))
        except ValueError as exc:
            return web.json_response({"error": f"at: {exc}"}, status=400)
        decision = router.route(RouteRequest(number, source, at))
        return web.json_response(decision_json(decision, number, source, at))

    app.router.add_get("/api/route", route)


def add_call_routes(app: web.Application, feature: Any) -> None:
    """`ctl calls`, `ctl hangup` and `ctl record`; `feature` has `all_calls()`, `hangup(key)`
    and `record(key, start)` (a dict, with `error` and `status` when refused; None: no call)."""

    async def calls(request: web.Request) -> web.Response:
        found = await feature.all_calls()
        found.sort(key=lambda c: -float(c.get("duration_s", 0)))
        return web.json_response({"calls": found})

    async def hangup(request: web.Request) -> web.Response:
        key = request.match_info["call"]
        if not await feature.hangup(key):
            return web.json_response({"error": f"no call {key!r} in progress"}, status=404)
        return web.json_response({"hung_up": key})

    async def recording(request: web.Request) -> web.Response:
        key = request.match_info["call"]
        found = await feature.record(key, request.method == "POST")
        if found is None:
            return web.json_response({"error": f"no call {key!r} in progress"}, status=404)
        if "error" in found:
            return web.json_response({"error": found["error"]}, status=int(found.get("status", 409)))
        return web.json_response(found)

    app.router.add_get("/api/calls", calls)
    app.router.add_delete("/api/calls/{call}", hangup)
    app.router.add_post("/api/calls/{call}/recording", recording)
    app.router.add_delete("/api/calls/{call}/recording", recording)
