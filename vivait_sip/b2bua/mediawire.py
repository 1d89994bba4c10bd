"""What the B2BUA does with the media features of an anchored call (docs/media.md, "The
SIP side"): music on hold, announcements, recording, DTMF.

The media feature owns the backend and the anchoring policy; this module is the B2BUA's
half: it turns call events (a hold answered, a route's target, an admin request, a SIP
INFO) into control commands (`PlayMedia`, `StopMedia`, `StartRecording`...) for the
call's media session, and the media workers' events (`MediaDtmf`, `MediaPlayDone`,
`MediaRecordingClosed`) back into call state.  Commands run as tasks of the feature's
loop; a failed one is logged and never ends a call.

* **Music on hold.**  When a party's hold (a re-INVITE or UPDATE offering sendonly or
  inactive) has been answered 2xx and relayed, the other party of an anchored call hears
  the music-on-hold class of the call: its rule's `moh`, else the holding user's
  (`media.moh_users`), else `media.moh_class` (Asterisk's order: the channel's class,
  then the holder's suggestion, then the default).  The resume stops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..media.control import CallKey, MediaCommand, MediaReply, PlayMedia, StopMedia
from ..media.feature import MediaFeature
from .call import Call

if TYPE_CHECKING:
    from .config import B2buaConfig

log = logging.getLogger("vivait_sip.b2bua")

MOH = "moh:"  # PlayMedia(file="moh:CLASS"): a music-on-hold class, looping


def _other(side: str) -> str:
    return "callee" if side == "caller" else "caller"


class MediaWire:
    """The media features of the B2BUA's anchored calls (see the module docstring)."""

    def __init__(self, media: MediaFeature, settings: Callable[[], B2buaConfig]) -> None:
        self.media = media
        self.seam = media.seam
        self._settings = settings
        self._tasks: set[asyncio.Future[Any]] = set()
        self.counters: dict[str, int] = {"moh_started": 0, "moh_failed": 0}

    # ---- running commands ---------------------------------------------------------------------
    def _run(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _request(self, call: Call, msg: MediaCommand, what: str) -> MediaReply:
        reply = await self.media.request(msg)
        if not reply.ok:
            log.warning("event=%s_failed call=%s error=%r", what, call.call_uuid, reply.error)
        return reply

    async def drain(self, timeout: float = 2.0) -> None:
        """Wait for the commands in flight (stopping)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    def key(self, call: Call, side: str) -> CallKey | None:
        """The session key naming `side`'s party (None: the call is not anchored)."""
        key = self.seam.key_of(call)
        tag = self.seam.tag_of(call, "caller" if side == "caller" else "callee")
        if key is None or tag is None:
            return None
        return CallKey(key.call_id, tag)

    # ---- music on hold ------------------------------------------------------------------------
    def moh_class(self, call: Call, holder: str) -> str:
        """The class a held party of `call` hears when `holder` holds it."""
        settings = self.media.settings
        for rule in self._settings().dialplan:
            if rule.name == call.rule and rule.moh:
                return rule.moh
        user = call.user if holder == "caller" else call.callee_user
        if user is not None and user in settings.moh_users:
            return settings.moh_users[user]
        return settings.moh_class

    def hold_changed(self, call: Call, side: str, held: bool) -> None:
        """`side` held the call (music to the other party) or resumed it (music stops)."""
        if self.media.settings.moh == "off":
            return
        key = self.key(call, _other(side))
        if key is None:
            return
        if not held:
            self._run(self._request(call, StopMedia(key), "moh_stop"))
            return
        klass = self.moh_class(call, side)
        self._run(self._moh(call, key, klass))

    async def _moh(self, call: Call, key: CallKey, klass: str) -> None:
        reply = await self.media.request(PlayMedia(key, file=MOH + klass, repeat=0))
        if not reply.ok and klass != "default":  # a class gone from disk: the built-in tune
            log.warning("event=moh_failed call=%s class=%s error=%r", call.call_uuid, klass, reply.error)
            reply = await self.media.request(PlayMedia(key, file=MOH + "default", repeat=0))
        if reply.ok:
            self.counters["moh_started"] += 1
            log.info("event=moh_started call=%s class=%s", call.call_uuid, klass)
        else:
            self.counters["moh_failed"] += 1
            log.warning("event=moh_failed call=%s class=default error=%r", call.call_uuid, reply.error)
