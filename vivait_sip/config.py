"""The one JSON config document, validated into typed models.

Every model forbids unknown keys, so a typo is an error naming its JSON path instead of
a setting silently ignored.  `load_config` turns pydantic's errors into lines like
`mdflow.flows[1].tasa_sal_seg: Input should be greater than 0`.
"""

from __future__ import annotations

import ipaddress
import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from .sip.address import Listener, parse_hostport

DEFAULT_LISTEN: tuple[str | ListenerConfig, ...] = ("udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "tls:127.0.0.1:5061")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _listener(value: str, what: str = "listener") -> Listener:
    return Listener.parse(value, what)


class ListenerConfig(Strict):
    """A listener with the address it is known by: `{"address": "udp:0.0.0.0:5060",
    "advertise": "pbx.example.com:5060"}` (behind NAT, a balancer, or bound to 0.0.0.0)."""

    address: str
    advertise: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        _listener(value)
        return value

    @field_validator("advertise")
    @classmethod
    def _advertise(cls, value: str | None) -> str | None:
        if value is not None:
            parse_hostport(value, "advertise", default_port=0)
        return value

    def listener(self) -> Listener:
        return _listener(self.address).with_advertised(self.advertise)


class HttpConfig(Strict):
    """HTTPS (webfon, REST, WSS on /sip). `tls: false` serves plain HTTP/WS (tests, behind a proxy)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    tls: bool = True
    enabled: bool = True
    # Connections from one client address at once (counted from accept, before the TLS
    # handshake; WebSockets included). Offices behind one NAT address may need more.
    max_connections_per_ip: int = Field(default=64, ge=1)
    tls_handshake_timeout_s: float = Field(default=5.0, gt=0, le=120)
    # From a request's first byte (or the connection's start) to its complete head.
    header_timeout_s: float = Field(default=5.0, gt=0, le=300)
    keepalive_timeout_s: float = Field(default=15.0, gt=0, le=3600)
    # Proxies whose PROXY protocol header (v1/v2) or X-Forwarded-For names the client.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        return [_network(v) for v in value]


class AdminConfig(Strict):
    """Admin API (JSON) and Prometheus /metrics. Keep it on loopback or a management network."""

    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    enabled: bool = True
    # Bearer token for every call; default DATA_DIR/admin-token, made (0600) on first start.
    token_file: str | None = None
    # /metrics without the token (Prometheus can send it: see docs/admin.md).
    metrics_public: bool = False
    # HTTPS with the server certificate (tls.cert_file or the self-signed one).
    tls: bool = False
    # Host names the API is reached by, besides its bound address (and localhost on loopback).
    allowed_hosts: list[str] = Field(default_factory=list)
    max_connections_per_ip: int = Field(default=32, ge=1)


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
    tls_handshake_timeout_s: float = Field(default=5.0, gt=0, le=120)
    # Descriptors SIP and HTTP(S) connections may never take (the file limit is raised to
    # its hard limit at start): the admin API, the store, worker links and outgoing
    # connections always find one.
    reserved_fds: int = Field(default=128, ge=16)
    max_transactions: int = Field(default=100000, ge=100)
    max_completed_transactions: int = Field(default=50000, ge=100)
    max_dialogs: int = Field(default=100000, ge=10)
    retry_after_s: int = Field(default=5, ge=1, le=3600)
    overload_lag_ms: int = Field(default=250, ge=10, le=60000)
    # SO_RCVBUF of each UDP socket: absorbs bursts (the kernel caps it at net.core.rmem_max).
    udp_receive_buffer_bytes: int = Field(default=4 << 20, ge=65536, le=1 << 30)


def _header_text(value: str) -> str:
    if not all(ch == " " or (ch.isprintable() and not ch.isspace()) for ch in value):
        raise ValueError("must be printable text without control characters (it is sent as a header)")
    return value.strip()


class SessionTimersConfig(Strict):
    """RFC 4028 on every dialog the server is a party to (each leg of a call): the
    interval asked for or granted, and the smallest accepted (smaller: 422)."""

    enabled: bool = True
    expires_s: int = Field(default=1800, ge=90, le=86400)
    min_se_s: int = Field(default=90, ge=90, le=86400)

    @model_validator(mode="after")
    def _order(self) -> SessionTimersConfig:
        if self.expires_s < self.min_se_s:
            raise ValueError("expires_s must be >= min_se_s")
        return self


class SipConfig(Strict):
    timers: TimersConfig = Field(default_factory=TimersConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    # The Server header value, verbatim (no version appended); "" sends no Server header.
    user_agent: str = Field(default="vivait-sip", max_length=200)
    session_timers: SessionTimersConfig = Field(default_factory=SessionTimersConfig)
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


class CoreConfig(Strict):
    """The server's own sections; `config_model()` adds one section per feature.
    Every section is optional; the defaults are the embedded demo."""

    data_dir: str = "./var"
    domains: list[str] = Field(default_factory=list)
    realm: str | None = None
    listen: list[str | ListenerConfig] = Field(default_factory=lambda: list(DEFAULT_LISTEN))
    http: HttpConfig = Field(default_factory=HttpConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    sip: SipConfig = Field(default_factory=SipConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)

    @field_validator("listen")
    @classmethod
    def _listeners(cls, value: list[str | ListenerConfig]) -> list[str | ListenerConfig]:
        for item in value:
            if isinstance(item, str):
                _listener(item)
        return value

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [v.lower() for v in value]

    @property
    def listeners(self) -> list[Listener]:
        return [_listener(item) if isinstance(item, str) else item.listener() for item in self.listen]

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


@cache
def config_model() -> type[CoreConfig]:
    """The whole document's model: the core sections plus one per feature
    (`Feature.config_key` → `Feature.config_model`), built once."""
    from .features import feature_classes

    fields: dict[str, Any] = {}
    for cls in feature_classes():
        if cls.config_key is not None and cls.config_model is not None:
            fields[cls.config_key] = (cls.config_model, Field(default_factory=cls.config_model))
    model: type[CoreConfig] = create_model("Config", __base__=CoreConfig, **fields)
    return model


def default_config() -> CoreConfig:
    """The embedded demo's config."""
    return config_model()()


def config_from_data(data: Any) -> CoreConfig:
    """Validate a whole document: every model first, then the features' checks across
    sections (`Feature.check_config`); all errors at once."""
    try:
        config = config_model().model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_errors(exc)) from None
    from .features import feature_classes

    errors = [line for cls in feature_classes() for line in cls.check_config(config)]
    if errors:
        raise ConfigError(errors)
    return config


def config_from_json(text: str) -> CoreConfig:
    """The effective config a worker process receives from worker 0."""
    return config_model().model_validate_json(text)


def load_config(path: str | Path) -> CoreConfig:
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


if TYPE_CHECKING:
    Config = CoreConfig
else:

    def __getattr__(name: str) -> Any:
        """`Config` is the composed model (`config_model()`), built on first use so that
        features may import this module."""
        if name == "Config":
            return config_model()
        raise AttributeError(name)
