"""The `trace` section of the config: HEP v3 export and the limits of `ctl trace` sessions."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..sip.address import parse_hostport


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HepConfig(_Strict):
    """Send every SIP message to Homer (heplify-server) or `sngrep -L udp:HOST:PORT`."""

    collectors: list[str] = Field(default_factory=list)  # "host:port" (UDP); none: export off
    sample_percent: float = Field(default=100.0, ge=0, le=100)  # per Call-ID, whole dialogs
    capture_id: int = Field(default=2001, ge=0, le=0xFFFFFFFF)  # HEP capture agent id
    auth_key: str | None = Field(default=None, max_length=256)  # HEP "authenticate key" chunk

    @field_validator("collectors")
    @classmethod
    def _collectors(cls, value: list[str]) -> list[str]:
        for item in value:
            _, port = parse_hostport(item, "collector")
            if port == 0:
                raise ValueError(f"collector: port 0 in {item!r}")
        return value


class TraceConfig(_Strict):
    hep: HepConfig = Field(default_factory=HepConfig)
    # `ctl trace` sessions at once (each costs a filter test per message while it runs).
    max_sessions: int = Field(default=4, ge=1, le=64)
    # Messages a second each worker hands to trace sessions; the rest are counted as
    # dropped.  Protects worker 0 (and the worker links) from an unfiltered trace of a busy server.
    max_messages_per_s: int = Field(default=2000, ge=1, le=1_000_000)
