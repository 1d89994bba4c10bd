"""The one JSON config document, validated into typed models.

Every model forbids unknown keys, so a typo is an error naming its JSON path instead of
a setting silently ignored.  `load_config` turns pydantic's errors into lines like
`mdflow.flows[1].tasa_sal_seg: Input should be greater than 0`.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .flow.config import MdflowConfig
from .registrar.config import RegistrarConfig

TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` → (host, port)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
    return host, int(port)


class Listener(Strict):
    """One SIP listening socket."""

    transport: Literal["udp", "tcp", "tls", "ws", "wss"]
    host: str
    port: int = Field(ge=0, le=65535)

    @classmethod
    def parse(cls, text: str) -> Listener:
        """`udp:127.0.0.1:5060` (the CLI's --listen form)."""
        transport, sep, rest = text.partition(":")
        if not sep or transport.lower() not in TRANSPORTS:
            raise ValueError(f"listener must be TRANSPORT:HOST:PORT with TRANSPORT in {TRANSPORTS}, got {text!r}")
        host, port = parse_hostport(rest, "listener")
        return cls(transport=transport.lower(), host=host, port=port)  # type: ignore[arg-type]

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


class HttpConfig(Strict):
    """HTTPS (webfon, REST, WSS on /sip). `tls: false` serves plain HTTP/WS (tests, behind a proxy)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    tls: bool = True
    enabled: bool = True


class AdminConfig(Strict):
    """Admin API (JSON) and Prometheus /metrics. Keep it on loopback or a management network."""

    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    enabled: bool = True


class TlsConfig(Strict):
    """Certificate for SIP/TLS and HTTPS; both empty → a self-signed one in DATA_DIR/certs."""

    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _both_or_none(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class LogConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["kv", "json"] = "kv"


class TimersConfig(Strict):
    """RFC 3261 timer base values (Table 4)."""

    t1_ms: int = Field(default=500, ge=10, le=10000)
    t2_ms: int = Field(default=4000, ge=100, le=60000)
    t4_ms: int = Field(default=5000, ge=100, le=60000)

    @model_validator(mode="after")
    def _order(self) -> TimersConfig:
        if self.t2_ms < self.t1_ms:
            raise ValueError("t2_ms must be >= t1_ms")
        return self


class LimitsConfig(Strict):
    """Protection limits; each is answered with its own status (see docs/config.md)."""

    max_message_bytes: int = Field(default=65536, ge=1024, le=1 << 24)
    max_body_bytes: int = Field(default=65536, ge=0, le=1 << 24)
    max_headers: int = Field(default=128, ge=8, le=10000)
    max_line_bytes: int = Field(default=8192, ge=256, le=1 << 20)
    max_uri_bytes: int = Field(default=2048, ge=64, le=1 << 20)
    max_connections_per_ip: int = Field(default=64, ge=1)
    max_connections: int = Field(default=10000, ge=1)
    tcp_idle_timeout_s: float = Field(default=300.0, gt=0)
    max_transactions: int = Field(default=100000, ge=100)
    max_completed_transactions: int = Field(default=50000, ge=100)
    retry_after_s: int = Field(default=5, ge=1, le=3600)
    overload_lag_ms: int = Field(default=250, ge=10, le=60000)
    # SO_RCVBUF of each UDP socket: absorbs bursts (the kernel caps it at net.core.rmem_max).
    udp_receive_buffer_bytes: int = Field(default=4 << 20, ge=65536, le=1 << 30)


def _header_text(value: str) -> str:
    if not all(ch == " " or (ch.isprintable() and not ch.isspace()) for ch in value):
        raise ValueError("must be printable text without control characters (it is sent as a header)")
    return value.strip()


class SipConfig(Strict):
    timers: TimersConfig = Field(default_factory=TimersConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    # The Server header value, verbatim (no version appended); "" sends no Server header.
    user_agent: str = Field(default="vivait-sip", max_length=200)
    # Processes sharing the UDP sockets (vivait_sip/workers.py); one per core is the norm.
    workers: int = Field(default=1, ge=1, le=64)

    @field_validator("user_agent")
    @classmethod
    def _user_agent(cls, value: str) -> str:
        return _header_text(value)


def _network(value: str) -> str:
    """Accept `10.0.0.0/8`, `10.0.0.0/255.0.0.0` (the deck's ip+mask form) and bare addresses."""
    return str(ipaddress.ip_network(value.replace(" ", ""), strict=False))


class SecurityConfig(Strict):
    """SPEC §6 trusted networks and fail2ban-like lockout."""

    trusted_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    ban_failures: int = Field(default=20, ge=1)
    ban_window_s: float = Field(default=60.0, gt=0)
    ban_duration_s: float = Field(default=600.0, gt=0)

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return [_network(v) for v in value]


class Config(Strict):
    """The whole document. Every section is optional; the defaults are the embedded demo."""

    data_dir: str = "./var"
    domains: list[str] = Field(default_factory=list)
    realm: str | None = None
    listen: list[str] = Field(
        default_factory=lambda: ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "tls:127.0.0.1:5061"]
    )
    http: HttpConfig = Field(default_factory=HttpConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    sip: SipConfig = Field(default_factory=SipConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    mdflow: MdflowConfig = Field(default_factory=MdflowConfig)
    registrar: RegistrarConfig = Field(default_factory=RegistrarConfig)

    @field_validator("listen")
    @classmethod
    def _listeners(cls, value: list[str]) -> list[str]:
        for item in value:
            Listener.parse(item)
        return value

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [v.lower() for v in value]

    @property
    def listeners(self) -> list[Listener]:
        return [Listener.parse(item) for item in self.listen]

    def effective_realm(self) -> str:
        return self.realm or (self.domains[0] if self.domains else "vivait")


class ConfigError(ValueError):
    """Invalid configuration; `errors` holds one `path: message` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _format_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def validation_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{_format_path(loc)}: {msg}")
    return lines


def config_from_data(data: Any) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_errors(exc)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"(file): cannot read {path}: {exc.strerror}"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"(file): invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]) from None
    if isinstance(data, dict):
        data = _strip_comments(data)
    return config_from_data(data)


def _strip_comments(data: Any) -> Any:
    """`_comment` keys document example files; they are the only keys that are ignored."""
    if isinstance(data, dict):
        return {k: _strip_comments(v) for k, v in data.items() if k != "_comment"}
    if isinstance(data, list):
        return [_strip_comments(v) for v in data]
    return data
