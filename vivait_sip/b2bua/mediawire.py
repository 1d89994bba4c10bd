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
  nothing; a late-offer caller is offered G.711 by the placeholder in the 200 and
  answers in the ACK, `PLACEHOLDER_OFFER`), the prompt is played to the caller, and at its end (`MediaPlayDone`) the
  call is hung up (cause "announcement") or goes on to `then`: a new call (a
  `TransferCall` linked to this one) into which the caller is moved at once, ringing the
  target with ringback played meanwhile; when the target answers it takes the
  placeholder's place in the relay session (`ReplaceParty`) and the caller is
  re-INVITEd with its SDP.
* **Recording.**  `record(call, start)` (the admin API, `ctl record`, InfoWS later) and a
  rule's `record: true` (at the answer) start or stop a stereo recording of the call's
  session; the CDR lists every file in `extra.recording` (archive paths: known at the
  start, since closing only renames the spool file into the archive; corrected by the
  stop's answer or `MediaRecordingClosed` if the file stayed elsewhere).
* **DTMF.**  RFC 4733 digits the relay detects (`MediaDtmf`) and SIP INFO digits
  (application/dtmf-relay, application/dtmf; the INFO is relayed as before) are kept per
  call and party (the last `DTMF_KEPT`, shown by `ctl calls --json`), logged
  (`event=dtmf`) and handed to `dtmf_listeners` (the groundwork for IVR).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..media.control import (
    CallKey,
    MediaCommand,
    MediaReply,
    PlayMedia,
    StartRecording,
    StopMedia,
    StopRecording,
)
from ..media.feature import MediaFeature
from ..media.protocol import MediaDtmf, MediaPlayDone, MediaRecordingClosed
from ..sip.message import Request
from ..sip.sdp import SdpError, build_answer, parse_sdp
from .call import Call, CallState
from .routing import Target

if TYPE_CHECKING:
    from .config import B2buaConfig

log = logging.getLogger("vivait_sip.b2bua")

MOH = "moh:"  # PlayMedia(file="moh:CLASS"): a music-on-hold class, looping
DTMF_KEPT = 32  # digits kept per party for `ctl calls`
DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")
PLAY_GRACE_S = 3.0  # a prompt's end not reported this long after its length: go on anyway
# a backend that never reports a prompt's end (rtpengine: `reports_play_done` False) is
# timed by the prompt's length alone, plus this (its player starts a little ahead)
UNREPORTED_GRACE_S = 0.5
RTP_PROTOS = ("RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF")


def placeholder_answer(offer: bytes, address: str = "0.0.0.0") -> bytes | None:
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
    answer = build_answer(parsed, address, ports, [(first.encoding, 8000)], "1", 1, protos=RTP_PROTOS)
    return answer.to_str().encode()


# A late-offer caller (INVITE without SDP) gets an offer from us: our placeholder party
# offers G.711 (and telephone-event, for DTMF) at c=0.0.0.0 (sent nothing, never timed
# out); the relay hands the caller that offer at its own address and port in the 200, and
# the caller's answer comes in the ACK (`Call.answer_here`).
PLACEHOLDER_OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    b"m=audio 9 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)
# rtpengine (10.5, measured) keeps a zero c= address in what it hands the caller and tells
# it `a=sendonly` (an RFC 2543 hold): baresip then never starts its audio, and a caller
# told sendonly sends no DTMF.  Its placeholder is the discard port of the daemon's own
# loopback instead: what the caller sends goes nowhere beyond that machine.
RTPENGINE_PLACEHOLDER_ADDRESS = "127.0.0.1"


def placeholder_address(backend: str) -> str:
    """Where the placeholder party is (port 9) for the backend named `backend`."""
    return RTPENGINE_PLACEHOLDER_ADDRESS if backend == "rtpengine" else "0.0.0.0"


class RecordError(Exception):
    """A recording request that cannot be done: `status` for the admin API (404 no such
    call, 409 not anchored / not recording, 503 the backend failed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _other(side: str) -> str:
    return "callee" if side == "caller" else "caller"


class MediaWire:
    """The media features of the B2BUA's anchored calls (see the module docstring)."""

    def __init__(self, media: MediaFeature, settings: Callable[[], B2buaConfig]) -> None:
        self.media = media
        self.seam = media.seam
        self._settings = settings
        self._tasks: set[asyncio.Future[Any]] = set()
        self.counters: dict[str, int] = {"moh_started": 0, "moh_failed": 0, "announcements": 0, "recordings": 0}
        self._playing: dict[tuple[str, str], tuple[Call, Target]] = {}  # (session, caller tag) → announcement
        self._digits: dict[str, dict[str, str]] = {}  # call uuid → side → its last digits
        # (call, side, digit, source) for every digit: IVR and the ACD listen here
        self.dtmf_listeners: list[Callable[[Call, str, str, str], None]] = []
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

    def on_event(self, event: object, calls: Iterable[Call] = ()) -> bool:
        """A media worker's event this module handles (True), else the feature's."""
        if isinstance(event, MediaPlayDone):
            self.on_play_done(event)
            return True
        if isinstance(event, MediaDtmf):
            call = self.call_of(calls, event.call_id)
            if call is not None:
                side = "caller" if event.tag is not None and event.tag == self.seam.tag_of(call, "caller") else "callee"
                self.dtmf(call, side, event.digit, "rfc4733", event.duration_ms)
            return True
        if isinstance(event, MediaRecordingClosed):
            call = self.call_of(calls, event.call_id)
            log.info("event=recording_closed call=%s path=%s seconds=%.1f reason=%s",
                     call.call_uuid if call is not None else "-", event.path, event.seconds, event.reason)
            if call is not None:
                self._note_recording(call, event.path)
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
        address = placeholder_address(self.media.settings.backend)
        if call.late_offer:
            placeholder: bytes | None = PLACEHOLDER_OFFER.replace(b"0.0.0.0", address.encode())
        else:
            placeholder = placeholder_answer(call.request.body, address)
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
        reported = getattr(self.media.backend, "reports_play_done", True)
        grace = PLAY_GRACE_S if reported else UNREPORTED_GRACE_S
        asyncio.get_running_loop().call_later(seconds + grace, self._played, key.call_id, key.from_tag)

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

    # ---- recording -----------------------------------------------------------------------------
    def answered(self, call: Call) -> None:
        """The call was answered: a rule with `record: true` records it from now on."""
        if call.rule is not None and any(r.name == call.rule and r.record for r in self._settings().dialplan):
            self._run(self._record_quietly(call))

    async def _record_quietly(self, call: Call) -> None:
        try:
            await self.record(call, True)
        except RecordError as exc:
            log.warning("event=recording_failed call=%s error=%r", call.call_uuid, str(exc))

    async def record(self, call: Call, start: bool) -> dict[str, object]:
        """Start (or stop) recording `call`: what the admin API answers; RecordError else."""
        key = self.seam.key_of(call)
        if key is None:
            raise RecordError(409, f"call {call.call_uuid} is not anchored: its media does not go through the relay "
                                   "(record a route with its rule's \"record\": true or \"media\": \"anchor\")")
        if not start:
            reply = await self.media.request(StopRecording(key.call_id))
            if not reply.ok:
                error = reply.error or "stop recording failed"
                raise RecordError(409 if "not_recording" in error else 503, error)
            if reply.path:
                self._note_recording(call, reply.path)
            log.info("event=recording_stopped call=%s path=%s", call.call_uuid, reply.path)
            return {"call": call.call_uuid, "recording": "stopped", "path": reply.path, "seconds": reply.seconds}
        paths = call.extra.get("recording")
        count = len(paths) if isinstance(paths, list) else 0
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{call.call_uuid[:12]}" + (f"-{count + 1}" if count else "")
        reply = await self.media.request(StartRecording(key.call_id, name=name))
        if not reply.ok or not reply.path:
            raise RecordError(503, reply.error or "start recording failed")
        _, archive_dir = self.media.settings.recording_dirs(self.media.host.data_dir)
        archive = str(archive_dir / Path(reply.path).name)
        self._note_recording(call, archive)
        self.counters["recordings"] += 1
        log.info("event=recording_started call=%s path=%s", call.call_uuid, archive)
        return {"call": call.call_uuid, "recording": "started", "path": archive, "spool": reply.path}

    def _note_recording(self, call: Call, path: str) -> None:
        """`path` into the call's `extra.recording` (a file already listed under another
        directory is corrected: it stayed in the spool)."""
        paths = call.extra.setdefault("recording", [])
        if not isinstance(paths, list):
            return
        name = Path(path).name
        for i, known in enumerate(paths):
            if Path(str(known)).name == name:
                paths[i] = path
                return
        paths.append(path)

    # ---- DTMF --------------------------------------------------------------------------------
    def dtmf(self, call: Call, side: str, digit: str, source: str, duration_ms: int | None = None) -> None:
        """A digit `side` sent (`source`: rfc4733 or info)."""
        kept = self._digits.setdefault(call.call_uuid, {"caller": "", "callee": ""})
        kept[side] = (kept.get(side, "") + digit)[-DTMF_KEPT:]
        log.info("event=dtmf call=%s party=%s digit=%s source=%s duration_ms=%s", call.call_uuid, side, digit, source,
                 duration_ms if duration_ms is not None else "-")
        for listener in self.dtmf_listeners:
            try:
                listener(call, side, digit, source)
            except Exception:
                log.exception("event=dtmf_listener_failed call=%s", call.call_uuid)

    def info(self, call: Call, request: Request, side: str) -> None:
        """A SIP INFO of the call: its DTMF digit, if it carries one."""
        digit, duration = info_digit(request)
        if digit is not None:
            self.dtmf(call, side, digit, "info", duration)

    def digits(self, call: Call) -> dict[str, str] | None:
        return self._digits.get(call.call_uuid)

    def forget(self, call: Call) -> None:
        """The call ended."""
        self._digits.pop(call.call_uuid, None)


def info_digit(request: Request) -> tuple[str | None, int | None]:
    """(digit, duration ms) of a DTMF INFO: `application/dtmf-relay` (`Signal=5`,
    `Duration=160`: Cisco's, what most phones send) or `application/dtmf` (the digit
    alone); (None, None) for anything else.  `Signal=10`/`11` are `*`/`#` (some phones)."""
    kind = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    body = request.body.decode("ascii", "replace")
    if kind == "application/dtmf":
        text = body.strip()
        return (text.upper() if len(text) == 1 and text in DTMF_DIGITS else None), None
    if kind != "application/dtmf-relay":
        return None, None
    fields: dict[str, str] = {}
    for line in body.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            fields[name.strip().lower()] = value.strip()
    signal = fields.get("signal", "")
    signal = {"10": "*", "11": "#"}.get(signal, signal)
    if len(signal) != 1 or signal not in DTMF_DIGITS:
        return None, None
    duration = fields.get("duration", "")
    return signal.upper(), int(duration) if duration.isdigit() and len(duration) < 7 else None
