"""The one JSON config document, validated into typed models.

Every model forbids unknown keys, so a typo is an error naming its JSON path instead of
a setting silently ignored.  `load_config` turns pydantic's errors into lines like
`mdflow.flows[1].tasa_sal_seg: Input should be greater than 0`, every one of them in one
run: the checks across entries (a user defined twice) and across sections (the features'
`check_config`) run too, on the document without the parts already in error
(`check_document`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from .paths import default_data_dir
from .sip.address import Listener, check_host, parse_hostport

DEFAULT_LISTEN: tuple[str | ListenerConfig, ...] = ("udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "tls:127.0.0.1:5061")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _listener(value: str, what: str = "listener") -> Listener:
    return Listener.parse(value, what)


def _unnamed(exc: ValueError, what: str) -> ValueError:
    """The address checks name what they check (`listener: port 99999 is out of range`),
    for command-line options; in the config the JSON path says it."""
    msg = str(exc)
    for prefix in (f"{what}: ", f"{what} "):
        if msg.startswith(prefix):
            return ValueError(msg.removeprefix(prefix))
    return exc


def _listener_text(value: str) -> str:
    """A listener as text, `udp:127.0.0.1:5060`: transport, address and port checked."""
    try:
        _listener(value)
    except ValueError as exc:
        raise _unnamed(exc, "listener") from None
    return value


def _bind_host(value: str) -> str:
    """A bind address (`127.0.0.1`, `0.0.0.0`, `::`, a host name): a real address or name."""
    try:
        check_host(value, "host")
    except ValueError as exc:
        raise _unnamed(exc, "host") from None
    return value


class ListenerConfig(Strict):
    """A listener with the address it is known by: `{"address": "udp:0.0.0.0:5060",
    "advertise": "pbx.example.com:5060"}` (behind NAT, a balancer, or bound to 0.0.0.0)."""

    address: str
    advertise: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _listener_text(value)

    @field_validator("advertise")
    @classmethod
    def _advertise(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_hostport(value, "advertise", default_port=0)
            except ValueError as exc:
                raise _unnamed(exc, "advertise") from None
        return value

    def listener(self) -> Listener:
        return _listener(self.address).with_advertised(self.advertise)


# Tags of the `listen` entries' union; they never show in an error's path.
TAG_PREFIX = "tag:"


def _listen_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return f"{TAG_PREFIX}text"
    if isinstance(value, dict | ListenerConfig):
        return f"{TAG_PREFIX}object"
    return None


# One `listen` entry: `"udp:127.0.0.1:5060"` or `{"address": ..., "advertise": ...}`;
# each bad entry is reported with its index (`listen[1]: ...`).
ListenEntry = Annotated[
    Annotated[Annotated[str, AfterValidator(_listener_text)], Tag(f"{TAG_PREFIX}text")]
    | Annotated[ListenerConfig, Tag(f"{TAG_PREFIX}object")],
    Discriminator(
        _listen_kind,
        custom_error_type="listen_entry",
        custom_error_message='must be "TRANSPORT:HOST:PORT" or an object {"address": "TRANSPORT:HOST:PORT", "advertise": "HOST[:PORT]"}',
    ),
]
BindHost = Annotated[str, AfterValidator(_bind_host)]


class HttpConfig(Strict):
    """HTTPS (webfon, REST, WSS on /sip). `tls: false` serves plain HTTP/WS (tests, behind a proxy)."""

    host: BindHost = "127.0.0.1"
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

    host: BindHost = "127.0.0.1"
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

    # Each limit below the one above it, and the message limit below the largest UDP
    # datagram (65,507 bytes over IPv4), so that every one of them can be answered with its
    # own status: 513 for a message over 32 KiB, 413 for a body over 16 KiB (docs/config.md).
    max_message_bytes: int = Field(default=32768, ge=1024, le=1 << 24)
    max_body_bytes: int = Field(default=16384, ge=0, le=1 << 24)
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

    # Absolute once loaded: a relative `data_dir` in a file is taken from the file's
    # directory (`load_config`); none given: `paths.default_data_dir()`.
    data_dir: str = Field(default_factory=lambda: str(default_data_dir()), min_length=1)
    domains: list[str] = Field(default_factory=list)
    realm: str | None = None
    listen: list[ListenEntry] = Field(default_factory=lambda: list(DEFAULT_LISTEN))
    http: HttpConfig = Field(default_factory=HttpConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    sip: SipConfig = Field(default_factory=SipConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)

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
    """Invalid configuration; `errors` holds one `path: message` line per problem and
    `source` the file they were found in (None: not read from a file)."""

    def __init__(self, errors: list[str], source: str | Path | None = None) -> None:
        self.errors = errors
        self.source = None if source is None else str(source)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """The errors as printed: `FILE: path: message`, compiler style."""
        return [f"{self.source}: {line}" for line in self.errors] if self.source else list(self.errors)

    def summary(self) -> str:
        count = len(self.errors)
        where = f"{self.source}: " if self.source else ""
        return f"{where}{count} error{'s' if count != 1 else ''}"


Loc = tuple[int | str, ...]


def _format_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def _json_type(value: Any) -> str:
    """What a JSON value is, in JSON's words (never a Python or pydantic type name)."""
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "another kind of value"


# pydantic error types whose message names an internal type ("instance of Config").
_OBJECT_TYPES = frozenset(("model_type", "model_attributes_type", "dict_type", "dataclass_type", "is_instance_of"))


def _message(err: Any, path: Loc) -> str:
    """pydantic's message as an operator should read it."""
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required, missing"
    if kind in _OBJECT_TYPES:
        return f"must be a JSON object {{...}}, not {_json_type(value)}"
    if kind == "list_type":
        return f"must be a JSON array, not {_json_type(value)}"
    if kind == "string_type":
        return f"must be a string, not {_json_type(value)}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if "instance of" in msg:  # a type name from a model we did not foresee
        msg = f"not valid here ({_json_type(value)})"
    return msg


def _data_path(data: Any, loc: Loc) -> Loc:
    """`loc` as a path in the document itself: union tags (`tag:…`, a discriminator's
    value) and validator names dropped.  The last part is kept when it is absent from
    the document (a missing key, or a key left to its default that a check names)."""
    out: list[int | str] = []
    node: Any = data
    parts = [p for p in loc if not (isinstance(p, str) and p.startswith(("function-", TAG_PREFIX)))]
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if isinstance(node, dict):
            if part in node:
                out.append(part)
                node = node[part]
            elif last:
                out.append(part)
            # else: a discriminator's value, not in the document
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        else:
            break  # under a scalar: pydantic's own detail (`[key]`…), not the document's
    return tuple(out)


def _existing(data: Any, path: Loc) -> Loc:
    """The longest start of `path` that is in the document."""
    node = data
    for depth, part in enumerate(path):
        present = part in node if isinstance(node, dict) else isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node)
        if not present:
            return path[:depth]
        node = node[part]
    return path


def _prune(node: Any, path: Loc, removed: set[Loc], kept: dict[Loc, list[int]]) -> Any:
    """A copy of the document without the `removed` paths; `kept[list path]` maps the
    copy's list indices back to the original's."""
    if isinstance(node, dict):
        return {k: _prune(v, (*path, k), removed, kept) for k, v in node.items() if (*path, k) not in removed}
    if isinstance(node, list):
        indices = [i for i in range(len(node)) if (*path, i) not in removed]
        kept[path] = indices
        return [_prune(node[i], (*path, i), removed, kept) for i in indices]
    return node


def _original(loc: Loc, kept: dict[Loc, list[int]]) -> Loc:
    out: list[int | str] = []
    for part in loc:
        prefix = tuple(out)
        if isinstance(part, int) and prefix in kept:
            part = kept[prefix][part]
        out.append(part)
    return tuple(out)


def _at(data: Any, path: Loc) -> Any:
    for part in path:
        data = data[part]
    return data


def _strings(node: Any) -> set[str]:
    """Every string (values and keys) in a part of the document."""
    if isinstance(node, str):
        return {node}
    if isinstance(node, dict):
        return {str(k) for k in node} | {s for v in node.values() for s in _strings(v)}
    if isinstance(node, list):
        return {s for v in node for s in _strings(v)}
    return set()


class _Removed:
    """Parts of the document left out after an error, to run the remaining checks on
    the rest; and which later errors those removals could have caused."""

    def __init__(self) -> None:
        self.paths: set[Loc] = set()
        self.prefixes: list[str] = []  # errors under these are artifacts
        self.models: list[str] = []  # objects that lost a field: their own checks are unreliable
        self.lists: set[str] = set()  # lists that lost an entry: "at least 1 item" is ours
        self.names: set[str] = set()  # strings of removed entries: "unknown flow 'X'" when X was removed

    def add(self, path: Loc, data: Any, unknown_key: bool) -> bool:
        if path in self.paths:
            return False
        self.paths.add(path)
        self.prefixes.append(_format_path(path))
        if unknown_key:
            return True  # a typo'd key changes nothing else
        if len(path) >= 2 and isinstance(path[-1], str):
            self.models.append(_format_path(path[:-1]))
        if isinstance(path[-1], int):
            self.lists.add(_format_path(path[:-1]))
        with contextlib.suppress(KeyError, IndexError, TypeError):
            self.names |= {s for s in _strings(_at(data, path)) if s.strip()}
        return True

    def explains(self, line: str) -> bool:
        """True when an error found without the removed parts may be due to their absence."""
        path = line.partition(": ")[0]
        if path in self.lists:
            return True
        for prefix in self.prefixes:
            if _under(path, prefix):
                return True
        for model in self.models:
            if _under(path, model):
                return True
        return any(f"'{name}'" in line or f'"{name}"' in line for name in self.names)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


MAX_ROUNDS = 8


def check_document(data: Any) -> tuple[CoreConfig | None, list[str]]:
    """Every problem of a document, as `path: message` lines, and the config when there
    is none.

    pydantic stops at a model whose fields are in error, so the checks across entries
    (a number used by two users, a flow name used twice) and across sections (each
    feature's `check_config`) would only show once the rest is fixed.  Here each round
    leaves out the parts in error (the entry holding a bad or missing required key, or
    the key itself) and validates the rest again, until it is valid; then the
    features' checks run on it.  Errors those removals could have caused (a rule naming
    a flow that was left out) are not reported: they would be wrong."""
    model = config_model()
    if not isinstance(data, dict):
        return None, [f"the document must be a JSON object {{...}}, not {_json_type(data)}"]
    from .features import feature_classes

    lines: list[str] = []
    removed = _Removed()

    def report(line: str, first: bool) -> None:
        if line not in lines and (first or not removed.explains(line)):
            lines.append(line)

    for round_ in range(MAX_ROUNDS):
        kept: dict[Loc, list[int]] = {}
        pruned = _prune(data, (), removed.paths, kept)
        try:
            config = model.model_validate(pruned)
        except ValidationError as exc:
            progress = False
            for err in exc.errors():
                path = _original(_data_path(pruned, tuple(err["loc"])), kept)
                report(f"{_format_path(path)}: {_message(err, path)}", round_ == 0)
                # Leave out what is in error: the key, or the entry holding a missing key
                # (or a check's defaulted key): the nearest part that is in the document.
                target = _existing(data, path[:-1] if err["type"] == "missing" else path)
                if target and removed.add(target, data, err["type"] == "extra_forbidden"):
                    progress = True
            if not progress:
                break
            continue
        for cls in feature_classes():
            for line in cls.check_config(config):
                report(line, round_ == 0)
        return (config if not lines else None), lines
    return None, lines


def validation_errors(exc: ValidationError) -> list[str]:
    """pydantic's errors as `path: message` lines (for models validated on their own)."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", TAG_PREFIX))))
        lines.append(f"{_format_path(loc)}: {_message(err, loc)}")
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


def config_from_data(data: Any, source: str | Path | None = None) -> CoreConfig:
    """Validate a whole document: every model, then the features' checks across
    sections (`Feature.check_config`); all errors at once (`check_document`)."""
    config, errors = check_document(data)
    if errors or config is None:
        raise ConfigError(errors, source)
    return config


def config_from_json(text: str) -> CoreConfig:
    """The effective config a worker process receives from worker 0."""
    return config_model().model_validate_json(text)


def load_config(path: str | Path) -> CoreConfig:
    """Read and validate a config file; raise ConfigError listing every problem.
    A relative `data_dir` or `admin.token_file` is taken from the file's directory."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror}"], path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text (byte {exc.start})"], path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"], path) from None
    if isinstance(data, dict):
        data = _strip_comments(data)
        _from_file(data, "data_dir", path)
        if isinstance(data.get("admin"), dict):
            _from_file(data["admin"], "token_file", path)
    return config_from_data(data, path)


def _from_file(section: dict[str, Any], key: str, config_path: str | Path) -> None:
    """A relative path in a config file is relative to the file's directory (`~` expanded)."""
    given = section.get(key)
    if isinstance(given, str) and given:
        section[key] = str(Path(config_path).absolute().parent / Path(given).expanduser())


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
