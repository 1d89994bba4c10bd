"""Webfon sessions and the web extensions they hold (SPEC §4), without I/O.

A **session** is one login (a cookie): a user, the web extension it was given, and when
it ends.  A **lease** is a web extension held by a user's sessions (one per user: a
second tab shares it), with short-lived SIP credentials of its own — a random password
whose HA1s the registrar of every worker accepts for that extension only, until the
lease ends.  The user's password is checked once, at login, and never reaches the
browser's SIP stack.

The web extension is the user's fixed `web_extension`, or the first free member of its
`web_pool`.  The last session of a lease ending (logout, expiry, its WebSocket gone
longer than the grace period) returns the extension to its pool.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..registrar.digest import Algorithm, ha1

SESSION_COOKIE = "vivait_webfon"


def token_key(token: str) -> str:
    """Sessions are kept by a hash of their cookie: the table never holds a usable token."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass(slots=True)
class Lease:
    extension: str
    user: str
    pool: str | None
    password: str  # the SIP password the webfon registers the extension with
    ha1_md5: str
    ha1_sha256: str
    expires_at: float
    sessions: set[str] = field(default_factory=set)  # session keys holding it


@dataclass(slots=True)
class Session:
    key: str
    sid: str  # short public id (node-random), for logs and `ctl webfon`; never the cookie
    user: str
    name: str
    extension: str
    client: str
    created_at: float
    expires_at: float
    lang: str = "es"
    websockets: int = 0  # /sip connections open with this session's cookie
    lost_at: float | None = None  # when its last WebSocket closed (the grace period runs)
    ever_connected: bool = False

    def public(self, lease: Lease | None, now: float) -> dict[str, object]:
        return {
            "id": self.sid, "user": self.user, "name": self.name, "extension": self.extension,
            "pool": lease.pool if lease is not None else None, "client": self.client,
            "created_at": self.created_at, "expires_in": max(0, int(self.expires_at - now)),
            "websockets": self.websockets,
            "lost_for": None if self.lost_at is None else round(now - self.lost_at, 1),
        }


class NoExtension(Exception):
    """The user cannot get a web extension (none configured, pool exhausted): the sentence says why."""


class Sessions:
    """The sessions and leases of this node (worker 0, where HTTP is served).

    `taken(number)` tells whether a pool member is some user's number or extension (it
    cannot be leased); `on_lease` / `on_release` tell the registrars of every worker."""

    def __init__(
        self,
        *,
        realm: str,
        node: str,
        clock: Callable[[], float],
        on_lease: Callable[[Lease], None],
        on_release: Callable[[Lease], None],
    ) -> None:
        self.realm = realm
        self.node = node
        self.clock = clock
        self.on_lease = on_lease
        self.on_release = on_release
        self.sessions: dict[str, Session] = {}
        self.leases: dict[str, Lease] = {}  # extension → lease
        self.counters: dict[str, int] = {"logins": 0, "logouts": 0, "expired": 0, "lost": 0, "refused_no_extension": 0}

    # ---- leases ---------------------------------------------------------------------------
    def lease_of_user(self, user: str) -> Lease | None:
        return next((lease for lease in self.leases.values() if lease.user == user), None)

    def _new_lease(self, extension: str, user: str, pool: str | None, expires_at: float) -> Lease:
        password = secrets.token_urlsafe(24)
        return Lease(
            extension=extension, user=user, pool=pool, password=password,
            ha1_md5=ha1(Algorithm.MD5, extension, self.realm, password),
            ha1_sha256=ha1(Algorithm.SHA256, extension, self.realm, password),
            expires_at=expires_at,
        )

    def choose_extension(
        self, user: str, fixed: str | None, pool: str | None, members: Iterable[str], taken: Callable[[str], bool]
    ) -> tuple[str, str | None]:
        """The user's web extension: fixed, or the first free member of its pool."""
        if fixed is not None:
            holder = self.leases.get(fixed)
            if holder is not None and holder.user != user:
                raise NoExtension(f"web extension {fixed} is held by user {holder.user}")
            return fixed, None
        if pool is None:
            raise NoExtension(f"user {user} has no web extension (registrar web_extension or web_pool)")
        for number in members:
            if number not in self.leases and not taken(number):
                return number, pool
        raise NoExtension(f"no free web extension in pool {pool}")

    # ---- sessions -------------------------------------------------------------------------
    def login(
        self, *, user: str, name: str, extension: str, pool: str | None, client: str, ttl_s: float, lang: str = "es"
    ) -> tuple[str, Session, Lease]:
        """A new session (its cookie token, the session, its lease)."""
        now = self.clock()
        expires_at = now + ttl_s
        lease = self.lease_of_user(user)
        if lease is not None and lease.extension != extension:
            self._drop_lease(lease)
            lease = None
        if lease is None:
            lease = self._new_lease(extension, user, pool, expires_at)
            self.leases[extension] = lease
        lease.expires_at = max(lease.expires_at, expires_at)
        token = secrets.token_urlsafe(32)
        key = token_key(token)
        session = Session(
            key=key, sid=f"{self.node}-{secrets.token_hex(4)}", user=user, name=name, extension=extension,
            client=client, created_at=now, expires_at=expires_at, lang=lang,
        )
        self.sessions[key] = session
        lease.sessions.add(key)
        self.counters["logins"] += 1
        self.on_lease(lease)
        return token, session, lease

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self.sessions.get(token_key(token))
        if session is None:
            return None
        if session.expires_at <= self.clock():
            self.end(session, "expired")
            return None
        return session

    def lease_for(self, session: Session) -> Lease | None:
        return self.leases.get(session.extension)

    def end(self, session: Session, why: str) -> Lease | None:
        """End a session; the lease it held when it was the last one (now released)."""
        if self.sessions.pop(session.key, None) is None:
            return None
        self.counters[{"logout": "logouts", "expired": "expired", "lost": "lost"}.get(why, "logouts")] += 1
        lease = self.leases.get(session.extension)
        if lease is None:
            return None
        lease.sessions.discard(session.key)
        if lease.sessions:
            return None
        self._drop_lease(lease)
        return lease

    def _drop_lease(self, lease: Lease) -> None:
        for key in list(lease.sessions):
            self.sessions.pop(key, None)
        self.leases.pop(lease.extension, None)
        self.on_release(lease)

    # ---- WebSockets and the grace period ------------------------------------------------------
    def ws_opened(self, session: Session) -> None:
        session.websockets += 1
        session.ever_connected = True
        session.lost_at = None

    def ws_closed(self, session: Session) -> None:
        session.websockets = max(0, session.websockets - 1)
        if session.websockets == 0 and session.key in self.sessions:
            session.lost_at = self.clock()

    def sweep(self, grace_s: float) -> list[tuple[Session, str, Lease | None]]:
        """Sessions to end now: expired, or without a WebSocket for longer than `grace_s`."""
        now = self.clock()
        out = []
        for session in list(self.sessions.values()):
            why = None
            if session.expires_at <= now:
                why = "expired"
            elif session.lost_at is not None and now - session.lost_at >= grace_s:
                why = "lost"
            if why is not None:
                out.append((session, why, self.end(session, why)))
        return out
