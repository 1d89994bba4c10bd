"""Users (SPEC §4) as the registrar sees them: credentials and the extensions they own.

A user is identified by its number; it owns a hard extension (the number itself unless
configured) and possibly a fixed web extension.  Passwords never get past this module:
they are turned into HA1 digests (MD5 and SHA-256) bound to the realm, and the realm
is kept with them so a realm change is detected instead of failing every login.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..store import UserRow
from .config import RegistrarConfig, UserConfig, UserRangeConfig
from .digest import Algorithm, ha1

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UserRecord:
    """A user as stored: HA1 digests, never a plaintext password.

    `ext_ha1_*` are digests for the hard extension as digest username, made when the
    password was known and the extension differs from the number: phones left with
    their default auth user (the AOR user, i.e. the extension) can then authenticate.
    """

    number: str
    name: str
    ha1_md5: str
    ha1_sha256: str
    extension: str
    web_extension: str | None = None
    web_pool: str | None = None
    class_of_service: str = "open"
    realm: str = ""
    ext_ha1_md5: str | None = None
    ext_ha1_sha256: str | None = None
    origin: str = "cli"  # "config": managed by the config file, replaced on every reload

    def public(self) -> dict[str, str | None]:
        """What the admin API and `user list` show (no digests)."""
        return {
            "number": self.number,
            "name": self.name,
            "extension": self.extension,
            "web_extension": self.web_extension,
            "web_pool": self.web_pool,
            "class_of_service": self.class_of_service,
            "realm": self.realm,
            "origin": self.origin,
        }


@dataclass(slots=True)
class WebLease:
    """A web extension held by a user's webfon sessions (SPEC §4), with short-lived
    credentials of its own: digest username the extension, HA1s of a random password
    the webfon was given (never the user's password).  Held in memory only, in every
    worker (the webrtc feature sends them), until `expires_at` (wall clock) or release."""

    extension: str
    user: str
    ha1_md5: str
    ha1_sha256: str
    expires_at: float


def make_user(
    number: str,
    password: str,
    realm: str,
    *,
    name: str = "",
    extension: str | None = None,
    web_extension: str | None = None,
    web_pool: str | None = None,
    class_of_service: str = "open",
    origin: str = "cli",
) -> UserRecord:
    """Hash a password into a record (the only place a plaintext password is used)."""
    extension = extension or number
    rec = UserRecord(
        number=number,
        name=name,
        ha1_md5=ha1(Algorithm.MD5, number, realm, password),
        ha1_sha256=ha1(Algorithm.SHA256, number, realm, password),
        extension=extension,
        web_extension=web_extension,
        web_pool=web_pool,
        class_of_service=class_of_service,
        realm=realm,
        origin=origin,
    )
    if extension != number:
        rec.ext_ha1_md5 = ha1(Algorithm.MD5, extension, realm, password)
        rec.ext_ha1_sha256 = ha1(Algorithm.SHA256, extension, realm, password)
    return rec


def user_from_config(u: UserConfig, realm: str, origin: str = "config") -> UserRecord:
    """A configured (or CLI-given) user; given HA1s are trusted to be for `realm`."""
    if u.password is not None:
        return make_user(
            u.number,
            u.password,
            realm,
            name=u.name,
            extension=u.extension,
            web_extension=u.web_extension,
            web_pool=u.web_pool,
            class_of_service=u.class_of_service,
            origin=origin,
        )
    assert u.ha1_md5 is not None and u.ha1_sha256 is not None  # UserConfig guarantees the pair
    return UserRecord(
        number=u.number,
        name=u.name,
        ha1_md5=u.ha1_md5,
        ha1_sha256=u.ha1_sha256,
        extension=u.hard_extension,
        web_extension=u.web_extension,
        web_pool=u.web_pool,
        class_of_service=u.class_of_service,
        realm=realm,
        origin=origin,
    )


def expand_range(r: UserRangeConfig, realm: str) -> list[UserRecord]:
    """Users `first`..`last`; templates are filled by plain substitution, never str.format."""
    return [
        make_user(
            number,
            r.password_template.replace("{number}", number),
            realm,
            name=r.name_template.replace("{number}", number),
            extension=r.extension_of(number),
            web_pool=r.web_pool,
            class_of_service=r.class_of_service,
            origin="config",
        )
        for number in r.numbers()
    ]


def config_users(cfg: RegistrarConfig, realm: str) -> list[UserRecord]:
    """Every user the config defines (explicit users, then ranges)."""
    records = [user_from_config(u, realm) for u in cfg.users]
    for r in cfg.user_ranges:
        records += expand_range(r, realm)
    return records


def identities(rec: UserRecord) -> set[str]:
    """The dialable strings a user owns: number, hard and web extension."""
    out = {rec.number, rec.extension}
    if rec.web_extension:
        out.add(rec.web_extension)
    return out


def records_from_rows(rows: Iterable[UserRow]) -> list[UserRecord]:
    """The store's rows as the registrar's records (same fields, same order)."""
    return [UserRecord(*row) for row in rows]


def find_conflicts(existing: Iterable[UserRecord], new: Iterable[UserRecord]) -> list[str]:
    """Messages for new users whose number/extensions belong to another user.

    A new record replaces an existing one with the same number, so only other users count.
    """
    new = list(new)
    replaced = {rec.number for rec in new}
    owner: dict[str, str] = {}
    for rec in existing:
        if rec.number not in replaced:
            for ident in identities(rec):
                owner[ident] = rec.number
    problems = []
    for rec in new:
        for ident in sorted(identities(rec)):
            other = owner.get(ident)
            if other is not None and other != rec.number:
                problems.append(f"user {rec.number}: {ident} already belongs to user {other}")
            owner.setdefault(ident, rec.number)
    return problems


class UserDirectory:
    """In-memory index of users by number and by extension; what REGISTER consults.

    `realm`, when given, is the server's realm: records hashed for another realm are
    logged at load so an operator learns why those users cannot authenticate.
    """

    def __init__(self, realm: str | None = None) -> None:
        self.realm = realm
        self._by_number: dict[str, UserRecord] = {}
        self._by_extension: dict[str, UserRecord] = {}
        # Web extensions leased to webfon sessions; kept across load() (a reload of users).
        self._leases: dict[str, WebLease] = {}
        self._lease_of_user: dict[str, str] = {}

    def load(self, records: Iterable[UserRecord]) -> None:
        """Replace every user."""
        self._by_number = {}
        self._by_extension = {}
        mismatched = 0
        for rec in records:
            mismatched += self._add(rec)
        if mismatched:
            log.warning(
                "event=user_realm_mismatch users=%d realm=%s hint=%s",
                mismatched,
                self.realm,
                "re-add or re-import those users with --realm matching the server",
            )

    def upsert(self, rec: UserRecord) -> None:
        if self._add(rec):
            log.warning(
                "event=user_realm_mismatch user=%s user_realm=%s realm=%s",
                rec.number,
                rec.realm,
                self.realm,
            )

    def _add(self, rec: UserRecord) -> bool:
        self.remove(rec.number)
        self._by_number[rec.number] = rec
        self._by_extension[rec.extension] = rec
        if rec.web_extension:
            self._by_extension[rec.web_extension] = rec
        return self.realm is not None and bool(rec.realm) and rec.realm != self.realm

    def remove(self, number: str) -> bool:
        rec = self._by_number.pop(number, None)
        if rec is None:
            return False
        for ext in (rec.extension, rec.web_extension):
            if ext is not None and self._by_extension.get(ext) is rec:
                del self._by_extension[ext]
        return True

    def by_number(self, number: str) -> UserRecord | None:
        return self._by_number.get(number)

    def by_extension(self, ext: str) -> UserRecord | None:
        """The user whose hard or web extension is `ext` (a leased one included)."""
        rec = self._by_extension.get(ext)
        if rec is None and self._leases:
            lease = self.lease_of(ext)
            if lease is not None:
                rec = self._by_number.get(lease.user)
        return rec

    # ---- web leases (webfon sessions) ----------------------------------------------------
    def lease(self, lease: WebLease) -> None:
        """Give `lease.extension` to `lease.user` with its own credentials (replacing any
        earlier lease of that extension, or of that user)."""
        self.release(lease.extension)
        old = self._lease_of_user.get(lease.user)
        if old is not None:
            self.release(old)
        self._leases[lease.extension] = lease
        self._lease_of_user[lease.user] = lease.extension

    def release(self, extension: str) -> bool:
        lease = self._leases.pop(extension, None)
        if lease is None:
            return False
        if self._lease_of_user.get(lease.user) == extension:
            del self._lease_of_user[lease.user]
        return True

    def lease_of(self, extension: str) -> WebLease | None:
        """The live lease of a web extension (None when none, or expired)."""
        lease = self._leases.get(extension)
        if lease is None or lease.expires_at <= time.time():
            return None
        return lease

    def leased_extension_of(self, number: str) -> str | None:
        """The web extension a user's webfon sessions hold now, if any."""
        ext = self._lease_of_user.get(number)
        return ext if ext is not None and self.lease_of(ext) is not None else None

    def leases(self) -> list[WebLease]:
        return list(self._leases.values())

    def _resolve(self, name: str) -> UserRecord | None:
        return self._by_number.get(name) or self._by_extension.get(name)

    def ha1_lookup(self, username: str, realm: str, algorithm: Algorithm) -> str | None:
        """HA1 for a digest username (the number, or the hard extension when hashed for it).

        None for unknown users and for a realm the digest was not made with, so both fail
        the same way as a wrong password.
        """
        rec = self._by_number.get(username)
        if rec is not None:
            digest: str | None = rec.ha1_sha256 if algorithm is Algorithm.SHA256 else rec.ha1_md5
        elif self._leases and username in self._leases:
            lease = self.lease_of(username)
            if lease is None or (self.realm is not None and realm != self.realm):
                return None
            return lease.ha1_sha256 if algorithm is Algorithm.SHA256 else lease.ha1_md5
        else:
            rec = self._by_extension.get(username)
            if rec is None or rec.extension != username:
                return None
            digest = rec.ext_ha1_sha256 if algorithm is Algorithm.SHA256 else rec.ext_ha1_md5
        if rec.realm and rec.realm != realm:
            return None
        return digest

    def owns_aor_user(self, aor_user: str, auth_username: str) -> bool:
        """May `auth_username` register `sip:aor_user@...`? Only for its own number/extensions;
        a leased web extension's credentials only for that extension."""
        if self._leases and auth_username in self._leases and auth_username not in self._by_number:
            return aor_user == auth_username
        rec = self._resolve(auth_username)
        return rec is not None and aor_user in identities(rec)

    def __len__(self) -> int:
        return len(self._by_number)

    def all(self) -> list[UserRecord]:
        return sorted(self._by_number.values(), key=lambda r: r.number)
