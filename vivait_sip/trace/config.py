"""The `trace` section of the config: HEP v3 export and the limits of `ctl trace` sessions."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..sip.address import parse_hostport


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _collector(value: str) -> str:
    """`HOST:PORT` of a HEP collector; each bad entry is reported with its index."""
    _, port = parse_hostport(value, "collector")
    if port == 0:
        raise ValueError(f"collector: port 0 in {value!r}")
    return value


class HepConfig(_Strict):
    """Send every SIP message to Homer (heplify-server) or `sngrep -L udp:HOST:PORT`."""

    collectors: list[Annotated[str, AfterValidator(_collector)]] = Field(default_factory=list)  # "host:port" (UDP); none: off
    sample_percent: float = Field(default=100.0, ge=0, le=100)  # per Call-ID, whole dialogs
    capture_id: int = Field(default=2001, ge=0, le=0xFFFFFFFF)  # HEP capture agent id
    auth_key: str | None = Field(default=None, max_length=256)  # HEP "authenticate key" chunk


class TraceConfig(_Strict):
    hep: HepConfig = Field(default_factory=HepConfig)
    # `ctl trace` sessions at once (each costs a filter test per message while it runs).
    max_sessions: int = Field(default=4, ge=1, le=64)
    # Messages a second each worker hands to trace sessions; the rest are counted as
    # dropped.  Protects worker 0 (and the worker links) from an unfiltered trace of a busy server.
    max_messages_per_s: int = Field(default=2000, ge=1, le=1_000_000)
