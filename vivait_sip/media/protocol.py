"""The messages between the SIP side and the media worker processes.

Typed `contract.WorkerMessage`s (frozen dataclasses, JSON on the wire) in the same frames
as the SIP workers' socketpairs (`link.py`).  Commands carry a request id `req` (the
client fills it in) and are answered by exactly one `MediaReply` with the same `req`;
events come unasked.  Every command is keyed by Call-ID and, where a party is concerned,
by its tag (the From tag of the dialog it sent its SDP in, or the To tag of an answer),
as in rtpengine's NG protocol: SDP in, SDP out.

| command | result (`MediaReply.result`) |
|---|---|
| `MediaOffer(call_id, from_tag, sdp, to_tag=None, transport_protocol=None, rtcp_mux=None)` | `{"sdp": SDP for the other party, "worker": n}` |
| `MediaAnswer(call_id, from_tag, to_tag, sdp)` | `{"sdp": SDP for the offerer, "worker": n}` |
| `MediaReplace(call_id, old_tag, new_tag, sdp=None, transport_protocol=None)` | `{"sdp": …}`: without `sdp` an offer for the new party |
| `MediaDelete(call_id)` | `{"stats": final statistics}` (also closes a recording) |
| `MediaQuery(call_id)` | `{"stats": …}` |
| `MediaPlay(call_id, tag, prompt=None, moh=None, loop=False)` | `{"name", "seconds"}` |
| `MediaStopPlay(call_id, tag)` | `{"stopped": bool}` |
| `MediaSendDtmf(call_id, tag, digits, duration_ms, pause_ms, volume)` | `{"digits"}` |
| `MediaRecordStart(call_id, name=None)` | `{"path": file in the spool}` |
| `MediaRecordStop(call_id)` | `{"path": file in the archive, "seconds"}` |
| `MediaStatus()` | the worker's status (sessions, ports, packets, loss…) |

Errors: `MediaReply(ok=False, code, error)`; codes `ports_exhausted` (answer 503 to the new
call), `not_found`, `bad_sdp`, `no_codec`, `bad_request`, `not_recording`, `io_error`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..contract import WorkerMessage, worker_message


class MediaCommand(WorkerMessage):
    """Base of the commands: each has `req` (filled in by the client) and `call_id`."""

    req: int
    call_id: str


@worker_message("media.offer")
@dataclass(frozen=True)
class MediaOffer(MediaCommand):
    """`transport_protocol` (RTP/AVP, RTP/SAVP, RTP/AVPF, RTP/SAVPF): what the other party
    gets instead of the offer's own (SDES SRTP is terminated by the relay: srtp.py).
    `rtcp_mux`: rtpengine's rtcp-mux flags, "offer", "demux", "accept" or "reject"
    (None: passed through); see Relay.offer."""

    call_id: str
    from_tag: str
    sdp: str
    to_tag: str | None = None
    transport_protocol: str | None = None
    rtcp_mux: str | None = None
    req: int = 0


@worker_message("media.answer")
@dataclass(frozen=True)
class MediaAnswer(MediaCommand):
    call_id: str
    from_tag: str
    to_tag: str
    sdp: str
    req: int = 0


@worker_message("media.replace")
@dataclass(frozen=True)
class MediaReplace(MediaCommand):
    call_id: str
    old_tag: str
    new_tag: str
    sdp: str | None = None
    transport_protocol: str | None = None
    req: int = 0


@worker_message("media.delete")
@dataclass(frozen=True)
class MediaDelete(MediaCommand):
    call_id: str
    req: int = 0


@worker_message("media.query")
@dataclass(frozen=True)
class MediaQuery(MediaCommand):
    call_id: str
    req: int = 0


@worker_message("media.play")
@dataclass(frozen=True)
class MediaPlay(MediaCommand):
    """Play to the party `tag` a prompt (a name in the prompt directories, or a built-in
    sound: moh, ringback, busy, congestion, beep, test-1k) or a music-on-hold class
    (always looping)."""

    call_id: str
    tag: str
    prompt: str | None = None
    moh: str | None = None
    loop: bool = False
    req: int = 0


@worker_message("media.stop_play")
@dataclass(frozen=True)
class MediaStopPlay(MediaCommand):
    call_id: str
    tag: str
    req: int = 0


@worker_message("media.send_dtmf")
@dataclass(frozen=True)
class MediaSendDtmf(MediaCommand):
    """RFC 4733 events to the party `tag` (digits 0-9 * # A-D, ! for flash)."""

    call_id: str
    tag: str
    digits: str
    duration_ms: int = 100
    pause_ms: int = 60
    volume: int = 10
    req: int = 0


@worker_message("media.record_start")
@dataclass(frozen=True)
class MediaRecordStart(MediaCommand):
    """Record both parties to a stereo WAV (A left, B right); `name` is the file's stem."""

    call_id: str
    name: str | None = None
    req: int = 0


@worker_message("media.record_stop")
@dataclass(frozen=True)
class MediaRecordStop(MediaCommand):
    call_id: str
    req: int = 0


@worker_message("media.status")
@dataclass(frozen=True)
class MediaStatus(MediaCommand):
    call_id: str = ""
    req: int = 0


@worker_message("media.reply")
@dataclass(frozen=True)
class MediaReply(WorkerMessage):
    req: int
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    code: str | None = None
    error: str | None = None


# ---- events: media worker → the SIP side that created the session --------------------------


class MediaEvent(WorkerMessage):
    call_id: str


@worker_message("media.ready")
@dataclass(frozen=True)
class MediaReady(MediaEvent):
    """A media worker is listening (sent once on each of its links)."""

    index: int
    pid: int
    port_min: int
    port_max: int
    call_id: str = ""


@worker_message("media.rtp_timeout")
@dataclass(frozen=True)
class MediaRtpTimeout(MediaEvent):
    """No RTP from the party `tag` for `idle_s`: end the call both ways (CDR cause).  A
    WebRTC party gone (ICE consent lost, DTLS closed) comes the same way, `cause` saying
    so (None: "RTP timeout")."""

    call_id: str
    tag: str | None
    leg: str
    idle_s: float
    cause: str | None = None


@worker_message("media.dtmf")
@dataclass(frozen=True)
class MediaDtmf(MediaEvent):
    """An RFC 4733 event from the party `tag`, reported once at its end."""

    call_id: str
    tag: str | None
    leg: str
    digit: str
    duration_ms: int
    volume: int
    ended: bool = True


@worker_message("media.play_done")
@dataclass(frozen=True)
class MediaPlayDone(MediaEvent):
    """A prompt to the party `tag` ended (`stopped`: by MediaStopPlay)."""

    call_id: str
    tag: str | None
    leg: str
    name: str
    stopped: bool = False


@worker_message("media.recording_closed")
@dataclass(frozen=True)
class MediaRecordingClosed(MediaEvent):
    """A recording was closed and moved to the archive: by a stop command, the session's
    deletion, or the worker's shutdown (`reason`)."""

    call_id: str
    path: str
    seconds: float
    reason: str


COMMANDS: tuple[type[MediaCommand], ...] = (
    MediaOffer,
    MediaAnswer,
    MediaReplace,
    MediaDelete,
    MediaQuery,
    MediaPlay,
    MediaStopPlay,
    MediaSendDtmf,
    MediaRecordStart,
    MediaRecordStop,
    MediaStatus,
)
EVENTS: tuple[type[MediaEvent], ...] = (MediaReady, MediaRtpTimeout, MediaDtmf, MediaPlayDone, MediaRecordingClosed)
