"""The registrar's part of `ctl status` beyond the plain figures, and its Prometheus families.

Per-user authentication failures (docs/registrar.md, Security) are shown per user only
for users that exist: usernames in failed attempts come from the network, so an attacker
inventing names would otherwise grow `ctl status` and the number of Prometheus series
without bound.  Failures claiming a name that is no user are one total.
"""

from __future__ import annotations

from ..metrics import family, single
from .security import SecurityMonitor
from .users import UserDirectory


def failure_status(monitor: SecurityMonitor, users: UserDirectory) -> dict[str, object]:
    known: dict[str, int] = {}
    unknown = 0
    for name, count in monitor.user_failures().items():
        if users.by_number(name) is not None or users.by_extension(name) is not None:
            known[name] = count
        else:
            unknown += count
    ranked = dict(sorted(known.items(), key=lambda item: (-item[1], item[0])))
    return {"user_failures": ranked, "unknown_user_failures": unknown}


def merge_failures(mine: dict[str, object], theirs: dict[str, object]) -> None:
    """Fold another worker's failure counts into `mine` (both `registrar` sections)."""
    ours = mine.get("user_failures")
    other = theirs.get("user_failures")
    if isinstance(ours, dict) and isinstance(other, dict):
        for name, count in other.items():
            ours[name] = int(ours.get(name, 0)) + int(count)
        mine["user_failures"] = dict(sorted(ours.items(), key=lambda item: (-int(item[1]), item[0])))
    mine["unknown_user_failures"] = int(str(mine.get("unknown_user_failures", 0))) + int(str(theirs.get("unknown_user_failures", 0)))


def registrar_metrics(status: dict[str, object]) -> list[str]:
    section = status.get("registrar")
    if not isinstance(section, dict):
        return []
    banned = section.get("banned_sources")
    failures = section.get("user_failures")
    return [
        *family("vivait_registrar_info", "gauge", "The registrar's digest realm (value 1).", [({"realm": section.get("realm", "")}, 1)]),
        *single("vivait_registrar_users", "gauge", "Users in the directory.", section.get("users", 0)),
        *single("vivait_registrar_registered_aors", "gauge", "AORs with at least one binding, all workers.", section.get("registered_aors", 0)),
        *single("vivait_registrar_bindings", "gauge", "Registered contacts (bindings), all workers.", section.get("bindings", 0)),
        *single(
            "vivait_registrar_auth_failures_total",
            "counter",
            "Failed digest authentications (wrong credentials; a request without any is no failure).",
            section.get("auth_failures", 0),
        ),
        *family(
            "vivait_registrar_user_auth_failures_total",
            "counter",
            "Failed authentications per existing user (never a lockout: docs/registrar.md).",
            [({"user": name}, count) for name, count in (failures.items() if isinstance(failures, dict) else [])],
        ),
        *single(
            "vivait_registrar_unknown_user_auth_failures_total",
            "counter",
            "Failed authentications claiming a username that is no user.",
            section.get("unknown_user_failures", 0),
        ),
        *single("vivait_registrar_bans_total", "counter", "Sources banned since start.", section.get("bans_total", 0)),
        *single("vivait_registrar_banned_sources", "gauge", "Sources banned now.", len(banned) if isinstance(banned, dict) else 0),
    ]
