"""The `registrar` section of the config: users, ranges, web pools, trunks and timers.

Validation happens here so that an operator sees every mistake at once, each named by
its JSON path (`registrar.users[3].number: ...`), before a single user is hashed.
Cross-entry rules (a number or extension used twice, an unknown pool) are raised as
pydantic errors located on the offending entry, not on the whole section.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

NUMBER_RE = re.compile(r"[0-9]{2,15}")
MAX_RANGE_SIZE = 100_000
ClassOfService = Literal["open", "closed"]
AlgorithmName = Literal["SHA-256", "MD5"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_number(value: str, what: str = "number") -> str:
    """Users and extensions are dialable digit strings: 2 to 15 digits (E.164 length)."""
    if not NUMBER_RE.fullmatch(value):
        raise ValueError(f"{what} must be 2 to 15 digits, got {value!r}")
    return value


def _check_hex(value: str | None, length: int, what: str) -> str | None:
    if value is None:
        return None
    if not re.fullmatch(f"[0-9a-fA-F]{{{length}}}", value):
        raise ValueError(f"{what} must be {length} hexadecimal digits")
    return value.lower()


def _digit_range(first: str, last: str) -> Iterator[str]:
    """`first..last` inclusive, keeping the width (leading zeros) of `first`."""
    width = len(first)
    for n in range(int(first), int(last) + 1):
        yield f"{n:0{width}d}"


def _check_range(first: str, last: str) -> None:
    check_number(first, "first")
    check_number(last, "last")
    if len(first) != len(last):
        raise ValueError(
            f"first and last must have the same number of digits ({first!r}, {last!r})"
        )
    if int(last) < int(first):
        raise ValueError(f"last ({last}) is before first ({first})")
    if int(last) - int(first) + 1 > MAX_RANGE_SIZE:
        raise ValueError(f"a range holds at most {MAX_RANGE_SIZE} numbers")


class UserConfig(_Strict):
    """One user: a number, its credentials and its extensions (SPEC §4)."""

    number: str
    name: str = ""
    password: str | None = Field(default=None, min_length=1)
    ha1_md5: str | None = None
    ha1_sha256: str | None = None
    extension: str | None = None
    web_extension: str | None = None
    web_pool: str | None = None
    class_of_service: ClassOfService = "open"

    @field_validator("number")
    @classmethod
    def _number(cls, value: str) -> str:
        return check_number(value)

    @field_validator("extension", "web_extension")
    @classmethod
    def _extension(cls, value: str | None) -> str | None:
        return None if value is None else check_number(value, "extension")

    @field_validator("ha1_md5")
    @classmethod
    def _md5(cls, value: str | None) -> str | None:
        return _check_hex(value, 32, "ha1_md5")

    @field_validator("ha1_sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        return _check_hex(value, 64, "ha1_sha256")

    @model_validator(mode="after")
    def _credentials(self) -> UserConfig:
        """Credentials are a password or a complete HA1 pair; a web extension is fixed or pooled."""
        has_ha1 = self.ha1_md5 is not None or self.ha1_sha256 is not None
        if self.password is not None and has_ha1:
            raise ValueError("give either password or ha1_md5 + ha1_sha256, not both")
        if self.password is None and not has_ha1:
            raise ValueError("password (or ha1_md5 + ha1_sha256) is required")
        if has_ha1 and (self.ha1_md5 is None or self.ha1_sha256 is None):
            raise ValueError("ha1_md5 and ha1_sha256 must be given together")
        if self.web_extension is not None and self.web_pool is not None:
            raise ValueError("give web_extension or web_pool, not both")
        return self

    @property
    def hard_extension(self) -> str:
        """A user without an extension is its own hard extension (SPEC §4)."""
        return self.extension or self.number


class UserRangeConfig(_Strict):
    """Many users at once: `first`..`last`, passwords from a template."""

    first: str
    last: str
    password_template: str = Field(min_length=1)
    extension_offset: int = 0
    name_template: str = "User {number}"
    web_pool: str | None = None
    class_of_service: ClassOfService = "open"

    @model_validator(mode="after")
    def _shape(self) -> UserRangeConfig:
        _check_range(self.first, self.last)
        if "{number}" not in self.password_template:
            raise ValueError(
                "password_template must contain {number} so every user gets its own password"
            )
        low = int(self.first) + self.extension_offset
        high = int(self.last) + self.extension_offset
        for edge in (low, high):
            if edge < 0 or not NUMBER_RE.fullmatch(f"{edge:0{len(self.first)}d}"):
                raise ValueError(
                    f"extension_offset {self.extension_offset} gives extension {edge}, not 2 to 15 digits"
                )
        return self

    def numbers(self) -> Iterator[str]:
        return _digit_range(self.first, self.last)

    def extension_of(self, number: str) -> str:
        return f"{int(number) + self.extension_offset:0{len(self.first)}d}"


def _pool_member(item: str) -> str:
    item = item.replace(" ", "")
    first, dash, last = item.partition("-")
    if dash:
        _check_range(first, last)
    else:
        check_number(item, "member")
    return item


class WebPoolConfig(_Strict):
    """Web extensions handed out at webfon login; members are numbers or `7000-7099` ranges."""

    name: str = Field(min_length=1)
    members: list[Annotated[str, AfterValidator(_pool_member)]] = Field(min_length=1)

    def numbers(self) -> Iterator[str]:
        for item in self.members:
            first, dash, last = item.partition("-")
            yield from _digit_range(first, last) if dash else (item,)


def _network(value: str) -> str:
    """`10.0.0.0/8`, `10.0.0.0/255.0.0.0` (SPEC §6 ip+mask) or a bare address."""
    try:
        return str(ipaddress.ip_network(value.replace(" ", ""), strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not a network (CIDR, ip/mask or address)") from None


class TrunkConfig(_Strict):
    """A peer trusted by source address instead of digest auth."""

    name: str = Field(min_length=1)
    networks: list[Annotated[str, AfterValidator(_network)]] = Field(min_length=1)
    domain: str | None = None


def _error(loc: tuple[str | int, ...], message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("registrar", message), loc=loc, input=value)


def _default_algorithms() -> list[AlgorithmName]:
    """MD5 alone, as Asterisk offers by default: deployed UAs such as baresip 1.0 fail on
    any SHA-256 challenge and SIPp answers only the first one (docs/registrar.md)."""
    return ["MD5"]


class RegistrarConfig(_Strict):
    """REGISTER timers, write-behind cadence, digest settings and the users."""

    min_expires: int = Field(default=60, ge=1)
    max_expires: int = Field(default=7200, ge=1)
    default_expires: int = Field(default=3600, ge=1)
    max_contacts_per_aor: int = Field(default=10, ge=1, le=1000)
    flush_interval_ms: int = Field(default=1000, ge=1, le=1000)
    purge_interval_s: float = Field(default=10.0, gt=0)
    nonce_lifetime_s: float = Field(default=300.0, gt=0)
    algorithms: list[AlgorithmName] = Field(default_factory=_default_algorithms, min_length=1)
    # The demo users 6140-6143 (DATA_DIR/demo-passwords.json) with a config file too;
    # without --config they are always loaded.
    demo_users: bool = False
    users: list[UserConfig] = Field(default_factory=list)
    user_ranges: list[UserRangeConfig] = Field(default_factory=list)
    web_pools: list[WebPoolConfig] = Field(default_factory=list)
    trunks: list[TrunkConfig] = Field(default_factory=list)

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[AlgorithmName]) -> list[AlgorithmName]:
        if len(set(value)) != len(value):
            raise ValueError("an algorithm is listed twice")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RegistrarConfig:
        errors: list[InitErrorDetails] = []
        if not self.min_expires <= self.default_expires <= self.max_expires:
            message = "need min_expires <= default_expires <= max_expires"
            errors.append(_error(("default_expires",), message, self.default_expires))
        errors += self._unique_names("web_pools", [p.name for p in self.web_pools])
        errors += self._unique_names("trunks", [t.name for t in self.trunks])
        pools = {p.name for p in self.web_pools}
        wanted = [("users", i, u.web_pool) for i, u in enumerate(self.users)]
        wanted += [("user_ranges", i, r.web_pool) for i, r in enumerate(self.user_ranges)]
        for kind, i, pool in wanted:
            if pool is not None and pool not in pools:
                errors.append(_error((kind, i, "web_pool"), f"unknown web pool {pool!r}", pool))
        errors += self._identity_conflicts()
        if errors:
            raise ValidationError.from_exception_data("RegistrarConfig", errors)
        return self

    @staticmethod
    def _unique_names(kind: str, names: list[str]) -> list[InitErrorDetails]:
        seen: set[str] = set()
        out = []
        for i, name in enumerate(names):
            if name in seen:
                out.append(_error((kind, i, "name"), f"name {name!r} is used twice", name))
            seen.add(name)
        return out

    def _identity_conflicts(self) -> list[InitErrorDetails]:
        """Numbers and extensions share one dial plan: each may belong to one user only."""
        owner: dict[str, tuple[str, str]] = {}  # dialable → (owning entry path, number)
        out: list[InitErrorDetails] = []

        def claim(value: str, number: str, loc: tuple[str | int, ...], entry: str) -> None:
            previous = owner.get(value)
            if previous is None:
                owner[value] = (entry, number)
            elif previous[1] != number:
                out.append(
                    _error(
                        loc, f"{value} is already used by {previous[0]} (user {previous[1]})", value
                    )
                )

        for i, user in enumerate(self.users):
            entry = f"users[{i}]"
            if user.number in owner and owner[user.number][1] == user.number:
                out.append(
                    _error(
                        ("users", i, "number"), f"user {user.number} is defined twice", user.number
                    )
                )
                continue
            claim(user.number, user.number, ("users", i, "number"), entry)
            claim(user.hard_extension, user.number, ("users", i, "extension"), entry)
            if user.web_extension is not None:
                claim(user.web_extension, user.number, ("users", i, "web_extension"), entry)
        for i, rng in enumerate(self.user_ranges):
            entry = f"user_ranges[{i}]"
            before = len(out)
            for number in rng.numbers():
                if number in owner and owner[number][1] == number:
                    out.append(
                        _error(
                            ("user_ranges", i),
                            f"user {number} is defined twice ({owner[number][0]})",
                            number,
                        )
                    )
                else:
                    claim(number, number, ("user_ranges", i, "first"), entry)
                    claim(
                        rng.extension_of(number),
                        number,
                        ("user_ranges", i, "extension_offset"),
                        entry,
                    )
                if len(out) > before:
                    break  # one message per range is enough
        return out
