"""The `media` section of the config: which backend relays anchored calls, which calls
are anchored by default, and how SDP is rewritten (docs/media.md, docs/config.md).

```json
"media": {
  "backend": "rtpengine",
  "default": "pass",
  "anchor_users": ["6140"],
  "rtpengine": {"daemons": ["10.0.0.7:2223", "10.0.0.8:2223"]}
}
```
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .control import (
    CodecFlags,
    Dtls,
    Ice,
    Latching,
    MediaFlags,
    Replace,
    RtcpMux,
    TransportProtocol,
)
from .ng import parse_daemon
from .settings import BuiltinMediaSettings

CLASS_NAME = r"^[A-Za-z0-9_.-]{1,64}$"  # a music-on-hold class (media.moh_classes key, or "default")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CodecConfig(_Strict):
    strip: list[str] = Field(default_factory=list)
    offer: list[str] = Field(default_factory=list)
    transcode: list[str] = Field(default_factory=list)
    mask: list[str] = Field(default_factory=list)


class FlagsConfig(_Strict):
    """How the backend rewrites SDP (NG flags; `control.MediaFlags`)."""

    transport_protocol: TransportProtocol | None = None
    ice: Ice | None = Ice.REMOVE
    dtls: Dtls | None = None
    rtcp_mux: list[RtcpMux] = Field(default_factory=list)
    codec: CodecConfig = Field(default_factory=CodecConfig)
    latching: Latching = Latching.SYMMETRIC
    media_handover: bool = False
    replace: list[Replace] = Field(default_factory=lambda: [Replace.ORIGIN, Replace.SESSION_CONNECTION])
    direction: list[str] | None = Field(default=None, min_length=2, max_length=2)
    media_address: str | None = None
    flags: list[str] = Field(default_factory=list, max_length=32)

    @field_validator("media_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)
        return value

    def to_flags(self) -> MediaFlags:
        codec = self.codec
        return MediaFlags(
            transport_protocol=self.transport_protocol,
            ice=self.ice,
            dtls=self.dtls,
            rtcp_mux=tuple(self.rtcp_mux),
            codec=CodecFlags(tuple(codec.strip), tuple(codec.offer), tuple(codec.transcode), tuple(codec.mask)),
            latching=self.latching,
            media_handover=self.media_handover,
            replace=tuple(self.replace),
            direction=(self.direction[0], self.direction[1]) if self.direction else None,
            media_address=self.media_address,
            flags=tuple(self.flags),
        )

    @model_validator(mode="after")
    def _valid(self) -> FlagsConfig:
        self.to_flags()  # the control types' own checks (tokens, lengths)
        return self


class RtpengineConfig(_Strict):
    """rtpengine daemons spoken to over NG (UDP)."""

    daemons: list[str] = Field(default_factory=list)  # "HOST:PORT" (listen-ng), "[v6]:PORT"
    timeout_s: float = Field(default=2.0, gt=0, le=30)  # a request to one daemon, resends included
    retransmit_s: float = Field(default=0.5, gt=0, le=10)  # first resend; doubled each time
    ping_interval_s: float = Field(default=5.0, ge=0, le=3600)  # 0: no health checks
    down_after: int = Field(default=2, ge=1, le=100)  # consecutive failures → down
    up_after: int = Field(default=2, ge=1, le=100)  # consecutive pongs → up again
    max_pending: int = Field(default=1024, ge=1, le=1_000_000)  # requests waiting for replies, per daemon
    max_sessions: int = Field(default=0, ge=0)  # anchored calls per SIP worker; 0: unlimited
    # Prompts and music on hold (rtpe_sounds): sent inside the NG message (`blob`) when
    # they fit in blob_max_bytes (one UDP datagram); longer ones are played from this
    # directory *on the daemon's machine* (NAME.wav, moh/CLASS.wav) when it is set.
    media_dir: str | None = Field(default=None, min_length=1, max_length=1024, pattern=r"^/")
    blob_max_bytes: int = Field(default=60_000, ge=1_000, le=65_000)
    # Where the daemons' `--dtmf-log-dest` points (rtpe_dtmf): the digits they see in our
    # calls' RTP, bound by SIP worker 0; None: only SIP INFO digits are read
    dtmf_listen: str | None = None

    @field_validator("dtmf_listen")
    @classmethod
    def _dtmf_listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_daemon(value)
        return value

    @field_validator("daemons")
    @classmethod
    def _daemons(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_daemon(text)
        if len(set(value)) != len(value):
            raise ValueError("a daemon is listed twice")
        return value


class MediaConfig(BuiltinMediaSettings):
    """Anchored media (docs/media.md): the control API's keys here, the built-in
    backend's (media worker processes, ports, prompts, recording) inherited."""

    backend: Literal["builtin", "rtpengine"] = "builtin"
    # Calls no rule, user or feature asks to anchor: "pass" (SDP untouched) or "anchor".
    default: Literal["anchor", "pass"] = "pass"
    anchor_users: list[str] = Field(default_factory=list)  # user numbers always anchored (NAT'd phones)
    timeout_s: float = Field(default=5.0, gt=0, le=60)  # one SDP step, every daemon tried; then 503
    # Music on hold (docs/media.md): "anchored" plays it to a held party of any call that is
    # anchored anyway (a rule's `moh` class or a user's in `moh_users` anchors that call for
    # it); "always" anchors every call so that a hold always gives music; "off" never plays
    # it (the phones do as they do: silence, or the holding phone's own music).  true/false
    # stand for "anchored"/"off".
    moh: Literal["off", "anchored", "always"] = "anchored"
    moh_class: str = Field(default="default", pattern=CLASS_NAME)  # calls no rule or user gives a class
    moh_users: dict[str, str] = Field(default_factory=dict)  # user number → the class its holds play
    flags: FlagsConfig = Field(default_factory=FlagsConfig)
    rtpengine: RtpengineConfig = Field(default_factory=RtpengineConfig)

    @field_validator("moh", mode="before")
    @classmethod
    def _moh_bool(cls, value: object) -> object:
        if value is True:
            return "anchored"
        if value is False:
            return "off"
        return value

    @field_validator("moh_users")
    @classmethod
    def _moh_users(cls, value: dict[str, str]) -> dict[str, str]:
        for user, klass in value.items():
            if not re.fullmatch(CLASS_NAME, klass):
                raise ValueError(f"moh_users.{user}: {klass!r} is not a class name (letters, digits, _ . -)")
        return value

    @model_validator(mode="after")
    def _daemons_for_rtpengine(self) -> MediaConfig:
        if self.backend == "rtpengine" and not self.rtpengine.daemons:
            raise ValueError("backend rtpengine needs rtpengine.daemons (HOST:PORT of each daemon's listen-ng)")
        return self
