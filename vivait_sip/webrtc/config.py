"""The `webrtc` section of the config: the webfon's sessions, origins, smart buttons, logo
and the deck's Janus settings (`local_nodo_id`, `max_digi_llam_sal`,
`colas_limpiar_siempre`); docs/webrtc.md, docs/config.md.

```json
"webrtc": {
  "local_nodo_id": "web1",
  "allowed_origins": ["https://pbx.example.com"],
  "smart_buttons": [{"id": "BI_01", "label": "Retrollamada", "dial": "*43#"},
                    {"id": "BI_02", "label": "Cancelar retrollamada", "dial": "*44#", "users": ["6140"]}],
  "logo": "/etc/vivait-sip/logo.svg"
}
```
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

_DIAL_RE = re.compile(r"[0-9*#+]{1,32}")
_NUMBER_RE = re.compile(r"[0-9]{2,15}")
_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SmartButton(_Strict):
    """A button of the webfon that dials a code (SPEC §5: `BI_01` dials `*43#`,
    "Retrollamada"); for everyone, or only for the users listed."""

    id: str
    label: str = Field(min_length=1, max_length=40)
    dial: str
    users: list[str] = Field(default_factory=list)  # user numbers; empty: everyone

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a button id (letters, digits, _ . -; up to 32)")
        return value

    @field_validator("dial")
    @classmethod
    def _dial(cls, value: str) -> str:
        if not _DIAL_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not dialable (digits, * # +; up to 32)")
        return value

    @field_validator("users")
    @classmethod
    def _users(cls, value: list[str]) -> list[str]:
        for number in value:
            if not _NUMBER_RE.fullmatch(number):
                raise ValueError(f"{number!r} is not a user number (2 to 15 digits)")
        return value


class IceServer(_Strict):
    """A STUN/TURN server handed to the browser's RTCPeerConnection."""

    urls: list[str] = Field(min_length=1)
    username: str | None = None
    credential: str | None = None


def _origin(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"{value!r} is not an origin (scheme://host[:port])")
    return f"{parts.scheme}://{parts.netloc.lower()}"


class WebrtcConfig(_Strict):
    """The webfon (docs/webrtc.md)."""

    enabled: bool = True  # serve the webfon and its REST API on the HTTPS port
    # The deck's Janus `local_nodo_id`: this node's name among several WebRTC nodes behind
    # a balancer; in session ids, `ctl webfon`, the page and the browser's User-Agent.
    local_nodo_id: str = Field(default="1", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    # Longest number the webfon dials (the deck's `max_digi_llam_sal`); None: b2bua.max_digi_llam_sal.
    max_digi_llam_sal: int | None = Field(default=None, ge=1, le=32)
    # The deck's `colas_limpiar_siempre`: at logout, clean the web extension's queue
    # membership always (pools hand extensions to other users). Queues (ACD) come later.
    colas_limpiar_siempre: bool = False
    # Origins allowed to open /sip and call the REST API from a browser, besides the page's own.
    allowed_origins: list[str] = Field(default_factory=list)
    session_ttl_s: int = Field(default=12 * 3600, ge=60, le=7 * 24 * 3600)  # a login lasts this long
    # A webfon whose WebSocket is gone this long is logged out: its pool extension returns.
    grace_s: float = Field(default=30.0, ge=0, le=3600)
    register_expires_s: int = Field(default=300, ge=60, le=3600)  # the browser's REGISTER interval
    title: str = Field(default="VIVAit Call Web", min_length=1, max_length=60)
    logo: str | None = None  # a PNG/SVG/JPEG/WebP file served at /api/logo; None: the built-in one
    default_lang: str = Field(default="es", pattern=r"^(es|en)$")
    smart_buttons: list[SmartButton] = Field(default_factory=list, max_length=32)
    ice_servers: list[IceServer] = Field(default_factory=list)  # none: host candidates only (the relay is ICE-lite)
    web_root: str | None = None  # another directory to serve instead of the package's web/

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return [_origin(v) for v in value]

    @field_validator("smart_buttons")
    @classmethod
    def _unique_buttons(cls, value: list[SmartButton]) -> list[SmartButton]:
        seen: set[tuple[str, tuple[str, ...]]] = set()
        for button in value:
            key = (button.id, tuple(sorted(button.users)))
            if key in seen:
                raise ValueError(f"button {button.id} is defined twice for the same users")
            seen.add(key)
        return value

    def buttons_for(self, user: str | None) -> list[SmartButton]:
        """The buttons a user sees: a user's own button replaces a global one of that id."""
        own = {b.id: b for b in self.smart_buttons if user is not None and user in b.users}
        out: list[SmartButton] = []
        for button in self.smart_buttons:
            if button.users:
                if button.id in own and own[button.id] is button:
                    out.append(button)
            elif button.id not in own:
                out.append(button)
        return out
