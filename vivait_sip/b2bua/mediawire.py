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
* **Announcements.**  A route's target `announcement`: the call is anchored and answered
  by us (`Call.answer_here`: the relay's session has the caller and a placeholder party
  at c=0.0.0.0, which answers the caller's offer with one G.711 codec and is sent
  nothing), the prompt is played to the caller, and at its end (`MediaPlayDone`) the
  call is hung up (cause "announcement") or goes on to `then`: a new call (a
  `TransferCall` linked to this one) into which the caller is moved at once, ringing the
  target with ringback played meanwhile; when the target answers it takes the
  placeholder's place in the relay session (`ReplaceParty`) and the caller is
  re-INVITEd with its SDP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..media.control import CallKey, MediaCommand, MediaReply, PlayMedia, StopMedia
from ..media.feature import MediaFeature
from ..media.protocol import MediaPlayDone
from ..sip.sdp import SdpError, build_answer, parse_sdp
from .call import Call, CallState
from .routing import Target

if TYPE_CHECKING:
    from .config import B2buaConfig

log = logging.getLogger("vivait_sip.b2bua")

MOH = "moh:"  # PlayMedia(file="moh:CLASS"): a music-on-hold class, looping
PLAY_GRACE_S = 3.0  # a prompt's end not reported this long after its length: go on anyway
RTP_PROTOS = ("RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF")


def placeholder_answer(offer: bytes) -> bytes | None:
    """The answer of the party we put opposite a caller we answer ourselves: the
    caller's first audio stream with its first G.711 codec (and telephone-event when
    offered, for DTMF), at c=0.0.0.0 so that the relay sends it nothing; other streams
    rejected.  None when the offer has no G.711 audio (the call gets 488)."""
    try:
        parsed = parse_sdp(offer)
    except SdpError:
        return None
    audio = next((i for i, m in enumerate(parsed.media) if m.media == "audio" and not m.rejected
                  and m.proto.upper() in RTP_PROTOS
                  and any(c.encoding.upper() in ("PCMU", "PCMA") and c.clock_rate == 8000 for c in m.codecs())), None)
    if audio is None:
        return None
    first = next(c for c in parsed.media[audio].codecs() if c.encoding.upper() in ("PCMU", "PCMA") and c.clock_rate == 8000)
    ports = [9 if i == audio else 0 for i in range(len(parsed.media))]
    answer = build_answer(parsed, "0.0.0.0", ports, [(first.encoding, 8000)], "1", 1, protos=RTP_PROTOS)
    return answer.to_str().encode()


def _other(side: str) -> str:
    return "callee" if side == "caller" else "caller"


class MediaWire:
    """The media features of the B2BUA's anchored calls (see the module docstring)."""

    def __init__(self, media: MediaFeature, settings: Callable[[], B2buaConfig]) -> None:
        self.media = media
        self.seam = media.seam
        self._settings = settings
        self._tasks: set[asyncio.Future[Any]] = set()
        self.counters: dict[str, int] = {"moh_started": 0, "moh_failed": 0, "announcements": 0}
        self._playing: dict[tuple[str, str], tuple[Call, Target]] = {}  # (session, caller tag) → announcement
        self.continue_to: Callable[[Call, Target], None] = lambda call, target: call.hangup("announcement")

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

    def call_of(self, calls: Iterable[Call], session: str) -> Call | None:
        """The call whose media session is `session` (the Call-ID events name): the one
        that owns it now (a transfer's call once it took it over)."""
        fallback = None
        for call in calls:
            if self.seam.call_id_of(call) == session:
                if self.seam.owns(call):
                    return call
            elif call.request.call_id == session and fallback is None:
                fallback = call
        return fallback

    def on_event(self, event: object) -> bool:
        """A media worker's event this module handles (True), else the feature's."""
        if isinstance(event, MediaPlayDone):
            self.on_play_done(event)
            return True
        return False

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

    # ---- announcements ------------------------------------------------------------------------
    def announce(self, call: Call, target: Target) -> None:
        """Answer `call` ourselves, play `target.prompt`, then hang up or go on (module docstring)."""
        if call.late_offer:
            call.fail(488, "Not Acceptable Here (an announcement needs the caller's SDP offer)")
            return
        placeholder = placeholder_answer(call.request.body)
        if placeholder is None:
            call.fail(488, "Not Acceptable Here (an announcement needs G.711 audio)")
            return
        call.extra["announcement"] = target.prompt
        if not self.media.anchor_required(call):  # the config changed under the call
            call.fail(503, "Service Unavailable (announcements need their calls anchored)")
            return
        self.counters["announcements"] += 1
        call.answer_here(placeholder, lambda: self._run(self._play(call, target)))

    async def _play(self, call: Call, target: Target) -> None:
        key = self.key(call, "caller")
        if key is None or call.state is not CallState.ANSWERED:
            return
        prompt = target.prompt or ""
        self._playing[(key.call_id, key.from_tag)] = (call, target)
        reply = await self._request(call, PlayMedia(key, file=prompt), "announcement")
        if not reply.ok:  # no such prompt: on without it
            self._played(key.call_id, key.from_tag)
            return
        log.info("event=announcement_started call=%s prompt=%s", call.call_uuid, prompt)
        seconds = (reply.duration_ms or 0) / 1000
        asyncio.get_running_loop().call_later(seconds + PLAY_GRACE_S, self._played, key.call_id, key.from_tag)

    def on_play_done(self, event: MediaPlayDone) -> None:
        if event.tag is not None:
            self._played(event.call_id, event.tag)

    def _played(self, session: str, tag: str) -> None:
        """The prompt ended (or its end was never reported): hang up or go on, once."""
        found = self._playing.pop((session, tag), None)
        if found is None:
            return
        call, target = found
        if call.state is not CallState.ANSWERED:
            return
        if target.then is None:
            call.hangup("announcement")
            return
        self.continue_to(call, target.then)

    def ringback(self, call: Call) -> None:
        """Ringback to the caller of `call` (waiting after an announcement) until the target
        answers (the relay's ReplaceParty stops what plays to the kept party)."""
        key = self.key(call, "caller")
        if key is not None:
            self._run(self._request(call, PlayMedia(key, file="ringback", repeat=0), "ringback"))
