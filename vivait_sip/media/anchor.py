"""Which calls are anchored, and the B2BUA's `MediaSeam` that anchors them.

**Policy** (`AnchoringPolicy.decide`): a call is anchored when any of these asks for it,
checked in this order (the first gives the reason shown in the CDR):

1. a feature requires it (`require(name, predicate)`: recording, music on hold, prompts,
   WebRTC...; `anchor_required(call)` tells whether one does);
1b. either side is WebRTC (`webrtc_sides`): the relay bridges a browser to plain RTP,
   and is each browser's one ICE and DTLS peer in a browser ↔ browser call (so that
   transfers keep it), with flags per direction (`webrtc_flags`);
2. its dialplan rule says `"media": "anchor"`;
3. its caller or callee user is in `media.anchor_users` (phones behind NAT);
4. `media.default` is `"anchor"` and its rule does not say `"media": "pass"`.

Otherwise its SDP passes through untouched and no backend is asked anything.  The
decision is taken once per call, at its first SDP (the INVITE's offer, or the callee's
in a late-offer call), and holds for the whole call.

**Seam** (`AnchoringSeam`): `offer(call, leg, sdp)` / `answer(call, leg, sdp)` return the
SDP itself for an unanchored call, and for an anchored one an awaitable of the rewritten
SDP (the Call holds that relay until it completes, see b2bua/call.py).  `release(call)`
deletes the session when the call ends.  Both sides of a B2BUA call are one backend
session: the caller's inbound Call-ID, the caller's From tag for its side and a tag of
ours for the callee's side.  `from_tag` is always the side that made the offer at hand,
so an offer is recognised by direction: an "answer" that comes from the side that made
the last offer is a new offer (the callee's SDP in a late-offer 200, a 2xx offer to a
re-INVITE without SDP).

Nothing here reads a clock or touches a socket: an anchored step is a coroutine over
`MediaBackend.request`, which the B2BUA runs as a task (the test harness on its fake
clock).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from ..sip.message import Request
from .control import (
    Answer,
    CallKey,
    Delete,
    Ice,
    LegStats,
    MediaBackend,
    MediaCommand,
    MediaError,
    MediaFlags,
    MediaReply,
    Offer,
    Replace,
    ReplaceParty,
    RtcpMux,
    StopMedia,
    TransportProtocol,
)

log = logging.getLogger("vivait_sip.media")

Side = Literal["caller", "callee"]
DEFAULT_FLAGS = MediaFlags(replace=(Replace.ORIGIN, Replace.SESSION_CONNECTION))


class AnchoredCall(Protocol):
    """What the policy and the seam read of a B2BUA call (`b2bua.call.Call`)."""

    call_uuid: str
    request: Request
    rule: str | None
    user: str | None
    callee_user: str | None
    extra: dict[str, object]


Requirement = Callable[[AnchoredCall], bool]


class AnchoringPolicy:
    """See the module docstring; `rules` maps a dialplan rule's name to its `media`
    flag ("anchor", "pass" or None)."""

    def __init__(
        self,
        *,
        default: Literal["anchor", "pass"] = "pass",
        users: Iterable[str] = (),
        rules: Mapping[str, str | None] | None = None,
        webrtc: bool = True,
    ) -> None:
        self.webrtc = webrtc  # WebRTC ↔ plain RTP calls are anchored (the relay bridges them)
        self.default = default
        self.users: frozenset[str] = frozenset(users)
        self.rules: dict[str, str | None] = dict(rules or {})
        self._requirements: dict[str, Requirement] = {}

    def configure(self, *, default: Literal["anchor", "pass"], users: Iterable[str], rules: Mapping[str, str | None]) -> None:
        """New settings (config reload); requirements registered by features are kept."""
        self.default = default
        self.users = frozenset(users)
        self.rules = dict(rules)

    def require(self, name: str, predicate: Requirement) -> None:
        """A feature (`name`: "recording", "moh"...) needs the calls `predicate` holds for
        anchored.  It must say so before their first SDP crosses: a call's decision is
        not revisited."""
        self._requirements[name] = predicate

    def withdraw(self, name: str) -> None:
        self._requirements.pop(name, None)

    @property
    def requirements(self) -> list[str]:
        return sorted(self._requirements)

    def anchor_required(self, call: AnchoredCall) -> str | None:
        """The first feature that needs `call` anchored, or None."""
        for name, predicate in self._requirements.items():
            try:
                if predicate(call):
                    return name
            except Exception as exc:  # a broken predicate anchors: media kept beats media lost
                log.error("event=anchor_requirement_failed feature=%s error=%r", name, str(exc))
                return name
        return None

    def could_anchor(self) -> bool:
        """Whether the config can anchor any call (a backend is then started at once)."""
        return (
            self.default == "anchor" or bool(self.users) or bool(self._requirements)
            or any(flag == "anchor" for flag in self.rules.values())
        )

    def decide(self, call: AnchoredCall) -> str | None:
        """Why `call` is anchored ("feature recording", "webrtc", "rule outside", "user
        6140", "default"), or None: its SDP passes through."""
        feature = self.anchor_required(call)
        if feature is not None:
            return f"feature {feature}"
        if self.webrtc:
            caller, callee = webrtc_sides(call)
            # one side a browser, the other plain RTP: only the relay joins them.  Browser ↔
            # browser too: each browser keeps the relay as its one ICE and DTLS peer for the
            # whole call, so a transfer (the relay's ReplaceParty) never asks a browser to
            # talk to another peer within its PeerConnection, which it cannot do.
            if caller or callee:
                return "webrtc"
        rule = self.rules.get(call.rule) if call.rule is not None else None
        if rule == "anchor":
            return f"rule {call.rule}"
        for user in (call.user, call.callee_user):
            if user is not None and user in self.users:
                return f"user {user}"
        if self.default == "anchor" and rule != "pass":
            return "default"
        return None


@dataclass(slots=True)
class _Session:
    call_id: str
    caller_tag: str
    callee_tag: str
    reason: str
    offerer: Side | None = None  # the side whose offer is being (or was last) answered
    answered: bool = False  # the backend has both sides (to_tag may go into offers)
    requests: int = 0
    # A transfer's call sharing another call's session (`source`): the party `replacing`
    # names is replaced by this call's new party (`new_side`) at its first SDP.
    source: _Session | None = None
    replacing: str | None = None
    new_side: Side | None = None
    pending: int = 0  # transfers waiting to take this session over
    ended: bool = False  # its call is over, the session kept for a pending transfer
    taken: bool = False  # a transfer's call took the session over: it deletes it


def _other(side: str) -> Side:
    return "caller" if side == "callee" else "callee"


class AnchoringSeam:
    """The `b2bua.call.MediaSeam` of anchored calls; see the module docstring.

    `flags_for(call, towards)` chooses the rewriting flags of each SDP by the side it goes
    to (default: the same `flags` both ways); `timeout_s` bounds a whole step (every
    daemon tried) when a loop runs it (None: the backend's own timeouts only)."""

    def __init__(
        self,
        backend: MediaBackend,
        policy: AnchoringPolicy,
        *,
        flags: MediaFlags = DEFAULT_FLAGS,
        flags_for: Callable[[AnchoredCall, Side], MediaFlags] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.backend = backend
        self.policy = policy
        self.flags = flags
        self.flags_for = flags_for or (lambda call, towards: self.flags)
        self.timeout_s = timeout_s
        self._calls: dict[str, _Session | None] = {}  # call uuid → its session (None: passes through)
        self.counters: dict[str, int] = {"anchored": 0, "passed": 0, "failures": 0, "deletes": 0, "transfers": 0}

    # ---- the decision -----------------------------------------------------------------------
    def session(self, call: AnchoredCall) -> _Session | None:
        """The call's media session, deciding on first use (None: unanchored)."""
        uuid = call.call_uuid
        if uuid in self._calls:
            return self._calls[uuid]
        reason = self.policy.decide(call)
        if reason is None:
            self._calls[uuid] = None
            self.counters["passed"] += 1
            return None
        request = call.request
        session = _Session(
            call_id=request.call_id,
            caller_tag=request.from_.tag or f"a-{uuid[:24]}",
            callee_tag=f"b-{uuid[:24]}",
            reason=reason,
        )
        self._calls[uuid] = session
        self.counters["anchored"] += 1
        call.extra["media"] = f"anchored ({reason})"
        return session

    def anchored(self, call: AnchoredCall) -> bool:
        return self._calls.get(call.call_uuid) is not None

    @property
    def active(self) -> int:
        return sum(1 for s in self._calls.values() if s is not None)

    def key_of(self, call: AnchoredCall) -> CallKey | None:
        """The session key with the caller's side first (for play media, DTMF, recording)."""
        session = self._calls.get(call.call_uuid)
        return None if session is None else CallKey(session.call_id, session.caller_tag, session.callee_tag)

    def tag_of(self, call: AnchoredCall, side: Side) -> str | None:
        session = self._calls.get(call.call_uuid)
        if session is None:
            return None
        return session.caller_tag if side == "caller" else session.callee_tag

    # ---- MediaSeam --------------------------------------------------------------------------
    def offer(self, call: AnchoredCall, leg: str, sdp: bytes) -> bytes | Awaitable[bytes]:
        """SDP offered towards `leg` ("callee": the caller offers)."""
        session = self.session(call)
        if session is None:
            return sdp
        return self._offer(call, session, _other(leg), sdp)

    def answer(self, call: AnchoredCall, leg: str, sdp: bytes) -> bytes | Awaitable[bytes]:
        """SDP answered towards `leg` (the side that made the offer); an "answer" from the
        side that made the last offer is a new offer (late offers)."""
        session = self.session(call)
        if session is None:
            return sdp
        offerer: Side = "caller" if leg == "caller" else "callee"
        if session.offerer != offerer:
            return self._offer(call, session, _other(offerer), sdp)
        key = CallKey(session.call_id, self._tag(session, offerer), self._tag(session, _other(offerer)))
        try:
            msg = Answer(key, sdp, self.flags_for(call, offerer))
        except ValueError as exc:
            return self._fail(str(exc))
        session.answered = True
        return self._sdp(session, msg)

    def release(self, call: AnchoredCall) -> Awaitable[dict[str, dict[str, object]]] | None:
        """The call ended: forget it; delete its backend session when it had one (and no
        transfer's call took it over or may still).  The awaitable gives what the relay
        received from each party (`party_stats`), for the call's record."""
        session = self._calls.pop(call.call_uuid, None)
        if session is None:
            return None
        source = session.source
        if source is not None and session.replacing is not None:  # a transfer that never took over
            source.pending -= 1
            if source.ended and source.pending <= 0 and not source.taken:
                return self._delete(source)
            return None
        if session.taken:
            return None
        if session.pending > 0:
            session.ended = True
            return None
        return self._delete(session)

    # ---- transfers ----------------------------------------------------------------------------
    def transfer(self, new_call: AnchoredCall, old_call: AnchoredCall, kept: Side, kept_as: Side) -> bool:
        """`new_call` (a transfer's call, a call continuing after an announcement, an INVITE
        with Replaces) will take over `old_call`'s media session: the party on `old_call`'s
        side `kept` stays (it is `new_call`'s side `kept_as`), the other one is replaced, at
        `new_call`'s first SDP, by `new_call`'s other party (`ReplaceParty`: the kept party
        keeps its ports and one continuous stream).  Until then `old_call` still uses the
        session; whichever call ends last deletes it.  False (nothing done) when `old_call`
        is not anchored: `new_call` is then decided as any call."""
        old = self._calls.get(old_call.call_uuid)
        if old is None or old.taken:
            return False
        kept_tag = old.caller_tag if kept == "caller" else old.callee_tag
        replaced = old.callee_tag if kept == "caller" else old.caller_tag
        new_tag = f"t-{new_call.call_uuid[:24]}"
        session = _Session(
            call_id=old.call_id,
            caller_tag=kept_tag if kept_as == "caller" else new_tag,
            callee_tag=new_tag if kept_as == "caller" else kept_tag,
            reason=old.reason, answered=True, source=old, replacing=replaced, new_side=_other(kept_as),
        )
        old.pending += 1
        self._calls[new_call.call_uuid] = session
        self.counters["transfers"] += 1
        new_call.extra["media"] = old_call.extra.get("media") or f"anchored ({old.reason})"
        return True

    def taken_over(self, call: AnchoredCall) -> bool:
        """A transfer's call replaced a party of this call's session (its media is gone)."""
        session = self._calls.get(call.call_uuid)
        return session is not None and session.taken

    def replaced(self, call: AnchoredCall) -> bool:
        """This (transfer's) call replaced the other call's party: it owns the session."""
        session = self._calls.get(call.call_uuid)
        return session is not None and session.source is None and session.new_side is not None

    def call_id_of(self, call: AnchoredCall) -> str | None:
        """The backend session's Call-ID (events name it), None when not anchored."""
        session = self._calls.get(call.call_uuid)
        return None if session is None else session.call_id

    def owns(self, call: AnchoredCall) -> bool:
        """The call's session is its own (not taken over by a transfer, not waiting to
        take another's over): events of that session are this call's."""
        session = self._calls.get(call.call_uuid)
        return session is not None and not session.taken and session.replacing is None

    async def _replace(self, session: _Session, offerer: Side, sdp: bytes, flags: MediaFlags) -> bytes:
        """The first SDP of a transfer's call: the new party replaces the old one."""
        source, old_tag = session.source, session.replacing
        assert source is not None and old_tag is not None
        new_tag = self._tag(session, session.new_side or "callee")
        from_new = offerer == session.new_side
        kept_tag = self._tag(session, _other(session.new_side or "callee"))
        try:
            msg = ReplaceParty(session.call_id, old_tag, new_tag, sdp if from_new else None, flags, kept_tag)
        except ValueError as exc:
            self.counters["failures"] += 1
            raise MediaError(str(exc)) from None
        session.requests += 1
        reply = await self._request(msg)
        if not reply.ok or not reply.sdp:
            self.counters["failures"] += 1
            raise MediaError(reply.error or f"media backend {self.backend.name}: replace party failed")
        session.replacing = None
        session.source = None
        source.pending -= 1
        source.taken = True
        # whatever played to the kept party (music on hold while it was being transferred,
        # ringback after an announcement) stops: it talks to the new party now
        await self._request(StopMedia(CallKey(session.call_id, kept_tag)))
        if from_new:
            return reply.sdp
        # the kept party made the first offer (a late-offer INVITE with Replaces): the new
        # party is offered it once its side is in place
        return await self._sdp(session, Offer(self._key(session, offerer), sdp, flags))

    # ---- requests ---------------------------------------------------------------------------
    def _tag(self, session: _Session, side: Side) -> str:
        return session.caller_tag if side == "caller" else session.callee_tag

    def _key(self, session: _Session, offerer: Side) -> CallKey:
        to_tag = self._tag(session, _other(offerer)) if session.answered else None
        return CallKey(session.call_id, self._tag(session, offerer), to_tag)

    def _offer(self, call: AnchoredCall, session: _Session, offerer: Side, sdp: bytes) -> Awaitable[bytes]:
        session.offerer = offerer
        if session.replacing is not None:
            return self._replace(session, offerer, sdp, self.flags_for(call, _other(offerer)))
        try:
            msg = Offer(self._key(session, offerer), sdp, self.flags_for(call, _other(offerer)))
        except ValueError as exc:
            return self._fail(str(exc))
        return self._sdp(session, msg)

    def _fail(self, text: str) -> Awaitable[bytes]:
        async def failed() -> bytes:
            self.counters["failures"] += 1
            raise MediaError(text)

        return failed()

    async def _request(self, msg: MediaCommand) -> MediaReply:
        if self.timeout_s is None:
            return await self.backend.request(msg)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self.backend.request(msg)
        except TimeoutError:
            return MediaReply.failure(f"media backend {self.backend.name}: no answer in {self.timeout_s:g} s")

    async def _sdp(self, session: _Session, msg: Offer | Answer) -> bytes:
        session.requests += 1
        reply = await self._request(msg)
        if not reply.ok:
            self.counters["failures"] += 1
            raise MediaError(reply.error or f"media backend {self.backend.name}: {msg.command} failed")
        if not reply.sdp:
            self.counters["failures"] += 1
            raise MediaError(f"media backend {self.backend.name}: {msg.command} answered without SDP")
        return reply.sdp

    async def _delete(self, session: _Session) -> dict[str, dict[str, object]]:
        """Delete the backend session; what the relay received from each party."""
        self.counters["deletes"] += 1
        reply = await self._request(Delete(session.call_id))
        if not reply.ok:
            log.warning("event=media_delete_failed call_id=%r error=%r", session.call_id, reply.error)
            return {}
        return party_stats(reply.legs, session.caller_tag, session.callee_tag)

    def status(self) -> dict[str, object]:
        return {"anchored_calls": self.active, **self.counters, "requirements": self.policy.requirements}


def party_stats(legs: Iterable[LegStats], caller_tag: str, callee_tag: str) -> dict[str, dict[str, object]]:
    """A deleted session's statistics by party ("caller", "callee"; another tag as itself:
    a party a transfer replaced), without the fields the backend did not fill: what a
    call's record keeps as `extra.media_stats`."""
    found: dict[str, dict[str, object]] = {}
    for leg in legs:
        party = "caller" if leg.tag == caller_tag else "callee" if leg.tag == callee_tag else leg.tag
        fields = (("packets", leg.packets), ("bytes", leg.bytes), ("errors", leg.errors),
                  ("packets_lost", leg.packets_lost), ("loss", leg.loss), ("jitter_ms", leg.jitter_ms),
                  ("address", leg.address))
        found[party] = {name: value for name, value in fields if value is not None}
    return found


def rule_media_flags(dialplan: Iterable[Any]) -> dict[str, str | None]:
    """`{rule name: its media flag}` from a dialplan's rules (objects with `name` and
    `media`), so the policy needs no import of the B2BUA's config."""
    return {str(rule.name): getattr(rule, "media", None) for rule in dialplan}


# ---- WebRTC ↔ plain RTP ------------------------------------------------------------------
# A browser speaks ICE, DTLS-SRTP (UDP/TLS/RTP/SAVPF) and rtcp-mux; a SIP phone or trunk
# plain RTP/AVP.  Such a call is anchored, and each SDP is rewritten for the side it goes
# to: `webrtc_flags(base, towards_webrtc)`.  The typed fields (transport protocol, ICE,
# DTLS, rtcp-mux) are what any backend reads, rtpengine's NG and the built-in bridge
# alike; `RTPENGINE_WEBRTC_FLAGS` are rtpengine's own extras, ignored by others.

WEBRTC_TRANSPORTS = frozenset(("ws", "wss"))
RTPENGINE_WEBRTC_FLAGS = ("SDES-off", "generate-mid")


def is_webrtc_sdp(sdp: bytes) -> bool:
    """An SDP from a WebRTC endpoint: DTLS-SRTP media (`UDP/TLS/RTP/SAVP[F]`) or a DTLS fingerprint."""
    return b"UDP/TLS/RTP/SAVP" in sdp or b"a=fingerprint:" in sdp


def webrtc_sides(call: AnchoredCall) -> tuple[bool, bool]:
    """(caller is WebRTC, callee is WebRTC): the caller by its transport (a WebSocket) or
    its offer's SDP; the callee by where the call goes (the answered leg, else the group
    being placed): a contact registered over a WebSocket is a browser."""
    peer = getattr(call, "peer", None)
    body = getattr(getattr(call, "request", None), "body", b"")  # read defensively: callers may pass a partial call
    caller = getattr(peer, "transport", None) in WEBRTC_TRANSPORTS or is_webrtc_sdp(body or b"")
    winner = getattr(call, "winner", None)
    dests = (winner.dest,) if winner is not None else tuple(getattr(call, "placing", ()))
    callee = any(
        d.destinations and d.destinations[0].transport in WEBRTC_TRANSPORTS for d in dests
    )
    return caller, callee


def webrtc_flags(base: MediaFlags, towards_webrtc: bool) -> MediaFlags:
    """`base` (the config's flags) made right for the side an SDP goes to: a browser gets
    DTLS-SRTP (UDP/TLS/RTP/SAVPF) with ICE and rtcp-mux; a phone plain RTP/AVP without
    ICE, RTCP demultiplexed.

    No DTLS role is forced either way (`dtls` None): the relay answers a browser's
    `actpass` offer as the DTLS client, which it already is from the offer on (rtpengine
    starts its handshake towards the browser as soon as ICE allows).  Forcing `passive`
    in the answer resets that, and Chrome, which saw the first ClientHello, never
    completes the handshake; `DTLS=off` towards the phone refuses the browser's DTLS
    altogether (both measured with Chromium 156 and rtpengine 10.5)."""
    extra = tuple(f for f in base.flags if f not in RTPENGINE_WEBRTC_FLAGS) + RTPENGINE_WEBRTC_FLAGS
    if towards_webrtc:
        return replace(
            base, transport_protocol=TransportProtocol.UDP_TLS_RTP_SAVPF, ice=Ice.FORCE, dtls=None,
            rtcp_mux=(RtcpMux.OFFER, RtcpMux.REQUIRE), flags=extra,
        )
    return replace(
        base, transport_protocol=TransportProtocol.RTP_AVP, ice=Ice.REMOVE, dtls=None,
        rtcp_mux=(RtcpMux.DEMUX,), flags=extra,
    )


def flags_by_side(base: Callable[[], MediaFlags]) -> Callable[[AnchoredCall, Side], MediaFlags]:
    """`AnchoringSeam(flags_for=...)`: when either side of an anchored call is WebRTC, each
    SDP gets the flags of the side it goes to (`webrtc_flags`); calls between phones keep
    `base()` (the config's `media.flags`) both ways."""

    def flags_for(call: AnchoredCall, towards: Side) -> MediaFlags:
        flags = base()
        caller, callee = webrtc_sides(call)
        if not (caller or callee):
            return flags
        return webrtc_flags(flags, caller if towards == "caller" else callee)

    return flags_for


def rules_with(dialplan: Iterable[Any], key: str) -> frozenset[str]:
    """The names of the rules whose `key` is set (a `moh` class, `record: true`)."""
    return frozenset(str(rule.name) for rule in dialplan if getattr(rule, key, None))


def feature_requirements(
    dialplan: Iterable[Any], *, moh: str, moh_users: Iterable[str]
) -> dict[str, Requirement | None]:
    """The anchoring the config itself asks of features (None: withdrawn):

    * "moh": every call when `moh` is "always"; with "anchored", the calls of a rule with a
      `moh` class and those of a user in `moh_users` (its holds play music, so its calls
      must go through the relay); nothing when "off";
    * "recording": the calls of a rule with `record: true`;
    * "announcement": a call routed to an announcement (dialplan rules that have one).

    Registered by the media feature at construction, so that the backend is started at
    start-up when one of them can hold (the B2BUA, which plays the music and starts the
    recordings, starts later)."""
    rules = list(dialplan)
    found: dict[str, Requirement | None] = {"moh": None, "recording": None, "announcement": None}
    if moh == "always":
        found["moh"] = lambda call: True
    elif moh == "anchored":
        moh_rules = rules_with(rules, "moh")
        users = frozenset(moh_users)
        if moh_rules or users:
            found["moh"] = lambda call: (call.rule in moh_rules or call.user in users or call.callee_user in users)
    record_rules = rules_with(rules, "record")
    if record_rules:
        found["recording"] = lambda call: call.rule in record_rules
    if any(_announces(getattr(rule, "action", None)) for rule in rules):
        # a call the B2BUA answers with a prompt: marked by the B2BUA before its first SDP
        found["announcement"] = lambda call: "announcement" in call.extra
    return found


def _announces(action: Any) -> bool:
    """An announcement target in a rule's action or in one of its flow outcomes."""
    if action is None:
        return False
    if getattr(action, "type", None) == "announcement":
        return True
    return any(_announces(getattr(action, key, None)) for key in ("then", "agujero", "desborda"))
