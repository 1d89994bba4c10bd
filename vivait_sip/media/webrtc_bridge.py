"""The media worker's WebRTC bridge: ICE-lite and DTLS on the relay's ports.

A browser's media is ICE + DTLS-SRTP + rtcp-mux on one port (`UDP/TLS/RTP/SAVPF`); a
phone's is plain RTP.  The pure relay (relay.py) forwards the RTP between them without
decoding — SRTP is pylibsrtp there, as for SDES — but ICE and DTLS are conversations
with state, retransmissions and certificates, so they live here, in the worker's
adapter layer, next to the sockets:

```
 browser ──STUN──▶ port P ──(first byte 0-3)──▶ WebrtcBridge: ICE-lite answer ─▶ browser
         ──DTLS──▶ port P ──(20-63)───────────▶ WebrtcBridge: DtlsSession ────▶ browser
                                                   └─ done: relay.webrtc_secure(P, srtp_in, srtp_out)
         ─SRTP/SRTCP─▶ port P ──(128-191)─────▶ Relay.receive: unprotect, rewrite, forward ─▶ phone
 phone ──RTP──▶ port Q ───────────────────────▶ Relay.receive: rewrite, protect ─▶ browser (ICE path)
```

The worker hands every datagram whose first byte is below 128 (RFC 7983: STUN 0-3,
DTLS 20-63) on a port the bridge holds to `receive`; RTP and RTCP (128-191) go to the
relay as always.  The relay calls the bridge (`WebrtcHooks`) when it writes SDP towards
a WebRTC party (`attributes`), when such a party's SDP arrives (`remote`) and when its
stream goes (`released`).

* **ICE-lite** (RFC 8445 §2.5): we answer the browser's connectivity checks on our one
  host candidate and never send checks; the browser is the controlling agent and its
  nominated check's source is the path (`relay.webrtc_path`).
* **DTLS** (ice_dtls.DtlsSession, aiortc's certificate and SSL context): the DTLS role
  follows a=setup — we answer a browser's `actpass` as `passive` (it connects to us), we
  offer `actpass` (browsers answer `active`).  The peer's certificate must match its
  SDP's fingerprint before any key reaches the relay.
* **A browser that vanishes.**  The browser's checks double as consent freshness
  (RFC 7675, every few seconds).  No valid check for `consent_s`, a DTLS close_notify, or
  a failed handshake: `relay.webrtc_lost` gives the session's one `RtpTimeout` event with
  the cause, and the SIP side ends the call both ways (the CDR says why).
* Our certificate is made on first use and renewed daily (sessions keep theirs).
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from collections.abc import Callable
from typing import Any

from .ice_dtls import Certificate, Check, DtlsSession, ice_lite_response
from .relay import Relay, Stream
from .sdpinfo import Addr

log = logging.getLogger("vivait_sip.media.webrtc")

ICE_CHARS = string.ascii_letters + string.digits + "+/"
SCAN_S = 0.5  # consent is checked this often
CERT_LIFETIME_S = 86400.0  # a new certificate for new sessions after a day (aiortc's are valid 30 days)
HANDSHAKE_LIMIT_S = 20.0  # ICE path known, DTLS not done after this long: failed
# A browser hanging up sends BYE (over its WebSocket, to a SIP worker) and closes DTLS (to
# us) at the same moment: the close ends the call only if the BYE has not done so by then.
CLOSE_GRACE_S = 1.0


def _token(n: int) -> str:
    return "".join(secrets.choice(ICE_CHARS) for _ in range(n))


class Endpoint:
    """Our side of one WebRTC party's stream (one port)."""

    __slots__ = (
        "cert", "checks", "closed_at", "created", "dtls", "dtls_at", "fingerprints", "gone", "ignored", "last_check", "offered",
        "path", "port", "pwd", "remote_pwd", "remote_ufrag", "role", "secured_at", "ufrag", "valid",
    )

    def __init__(self, port: int, cert: Certificate, now: float) -> None:
        self.port = port
        self.cert = cert
        self.created = now
        self.ufrag = _token(8)
        self.pwd = _token(24)
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None
        self.fingerprints: list[tuple[str, str]] = []
        self.role: str | None = None  # "server" (the browser connects) or "client"
        self.offered = False  # we sent an offer whose a=setup was actpass
        self.dtls: DtlsSession | None = None
        self.dtls_at = 0.0  # when the handshake began
        self.path: Addr | None = None
        self.valid: set[Addr] = set()  # sources whose checks passed (DTLS only from these)
        self.last_check = 0.0
        self.checks = 0
        self.ignored = 0
        self.secured_at: float | None = None
        self.closed_at: float | None = None  # the browser's close_notify came
        self.gone = False

    def stats(self) -> dict[str, Any]:
        dtls = self.dtls
        return {
            "port": self.port, "role": self.role, "path": f"{self.path[0]}:{self.path[1]}" if self.path else None,
            "checks": self.checks, "dtls": dtls.state if dtls is not None else None,
            "profile": dtls.profile if dtls is not None else None,
        }


class WebrtcBridge:
    """ICE-lite and DTLS for every WebRTC stream of one relay (see the module docstring).
    `send(port, datagram, address)` sends from our socket on `port`."""

    def __init__(self, relay: Relay, send: Callable[[int, bytes, Addr], None], *, consent_s: float = 6.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.relay = relay
        self.send = send
        self.consent_s = consent_s
        self.clock = clock
        self.endpoints: dict[int, Endpoint] = {}
        self._handshaking: set[Endpoint] = set()
        self._cert: Certificate | None = None
        self._next_scan: float | None = None
        self.counters = {"secured": 0, "consent_lost": 0, "dtls_closed": 0, "dtls_failed": 0, "stun_ignored": 0,
                         "not_webrtc": 0, "own_certs": 0}
        relay.webrtc = self

    # ---- the relay's hooks ----------------------------------------------------------------------
    def attributes(self, stream: Stream, *, offer: bool) -> list[tuple[str, str | None]]:
        ep = self._endpoint(stream.port, own_cert=stream.moved_in)
        if offer:
            setup = "active" if ep.role == "client" else "actpass"
            ep.offered = ep.role is None
        else:
            theirs = stream.info.setup if stream.info is not None else None
            if ep.role is None:
                ep.role = "client" if theirs == "passive" else "server"
            setup = "active" if ep.role == "client" else "passive"
        address = self.relay.address
        return [
            ("ice-ufrag", ep.ufrag),
            ("ice-pwd", ep.pwd),
            ("fingerprint", ep.cert.attribute),
            ("setup", setup),
            ("candidate", f"1 1 udp 2130706431 {address} {stream.port} typ host"),
            ("end-of-candidates", None),
        ]

    def remote(self, stream: Stream) -> None:
        info = stream.info
        if info is None:
            return
        ep = self._endpoint(stream.port, own_cert=stream.moved_in)
        ep.remote_ufrag, ep.remote_pwd = info.ice_ufrag, info.ice_pwd
        if info.fingerprints and info.fingerprints != ep.fingerprints:
            ep.fingerprints = list(info.fingerprints)
            if ep.dtls is not None:
                ep.dtls.set_fingerprints(ep.fingerprints)
                self._after_dtls(ep, self.clock())
        if ep.role is None and ep.offered and info.setup in ("active", "passive"):
            ep.role = "server" if info.setup == "active" else "client"
        self._maybe_connect(ep, self.clock())

    def released(self, port: int) -> None:
        ep = self.endpoints.pop(port, None)
        if ep is None:
            return
        self._handshaking.discard(ep)
        if ep.dtls is not None and ep.path is not None and not ep.gone:
            for datagram in ep.dtls.close():  # close_notify: the browser knows at once
                self.send(port, datagram, ep.path)

    # ---- datagrams ------------------------------------------------------------------------------
    def holds(self, port: int) -> bool:
        return port in self.endpoints

    def receive(self, port: int, data: bytes, addr: Addr, now: float) -> None:
        """A datagram whose first byte is below 128 on a port of ours (RFC 7983)."""
        ep = self.endpoints.get(port)
        if ep is None or not data:
            self.counters["not_webrtc"] += 1
            return
        first = data[0]
        if first < 4:
            self._stun(ep, data, addr, now)
        elif 20 <= first < 64:
            self._dtls(ep, data, addr, now)
        else:
            ep.ignored += 1

    def _stun(self, ep: Endpoint, data: bytes, addr: Addr, now: float) -> None:
        result = ice_lite_response(data, addr, ep.ufrag, ep.pwd)
        if not isinstance(result, Check):
            ep.ignored += 1
            self.counters["stun_ignored"] += 1
            return
        self.send(ep.port, result.response, addr)
        ep.checks += 1
        ep.last_check = now
        ep.valid.add(addr)
        if len(ep.valid) > 16:  # a browser has a handful of candidates; keep the set bounded
            ep.valid = {addr} | ({ep.path} if ep.path else set())
        if (result.nominated or ep.path is None) and ep.path != addr:
            ep.path = addr
            self.relay.webrtc_path(ep.port, addr)
        if self._next_scan is None:
            self._next_scan = now + SCAN_S
        self._maybe_connect(ep, now)

    def _dtls(self, ep: Endpoint, data: bytes, addr: Addr, now: float) -> None:
        if addr not in ep.valid:  # only from where ICE checks came (RFC 8445 §11)
            ep.ignored += 1
            return
        if ep.dtls is None:
            if ep.role == "client":
                ep.ignored += 1
                return
            ep.role = "server"
            ep.dtls = DtlsSession(ep.cert, client=False, fingerprints=ep.fingerprints)
            ep.dtls_at = now
            self._handshaking.add(ep)
        for datagram in ep.dtls.receive(data, now):
            self.send(ep.port, datagram, addr)
        self._after_dtls(ep, now)

    def _maybe_connect(self, ep: Endpoint, now: float) -> None:
        """As the DTLS client: start once ICE gave a path."""
        if ep.role != "client" or ep.dtls is not None or ep.path is None or not ep.fingerprints:
            return
        ep.dtls = DtlsSession(ep.cert, client=True, fingerprints=ep.fingerprints)
        ep.dtls_at = now
        self._handshaking.add(ep)
        for datagram in ep.dtls.start(now):
            self.send(ep.port, datagram, ep.path)

    def _after_dtls(self, ep: Endpoint, now: float) -> None:
        dtls = ep.dtls
        if dtls is None:
            return
        if dtls.state == "connected" and ep.secured_at is None:
            ep.secured_at = now
            self._handshaking.discard(ep)
            self.counters["secured"] += 1
            self.relay.webrtc_secure(ep.port, dtls.srtp_in, dtls.srtp_out)
            log.debug("event=webrtc_secured port=%d profile=%s", ep.port, dtls.profile)
        elif dtls.state == "closed" and dtls.closed_by_peer and ep.closed_at is None:
            self._handshaking.discard(ep)
            self.counters["dtls_closed"] += 1
            ep.closed_at = now  # gone after CLOSE_GRACE_S, unless its BYE ends the call first
            if self._next_scan is None or self._next_scan > now + CLOSE_GRACE_S:
                self._next_scan = now + CLOSE_GRACE_S
        elif dtls.state == "failed":
            self._handshaking.discard(ep)
            self.counters["dtls_failed"] += 1
            log.warning("event=webrtc_dtls_failed port=%d error=%r", ep.port, dtls.error)
            self._lost(ep, f"WebRTC: {dtls.error}", now)

    def _lost(self, ep: Endpoint, cause: str, now: float) -> None:
        if ep.gone:
            return
        ep.gone = True
        if self.relay.webrtc_lost(ep.port, cause, now):
            log.info("event=webrtc_gone port=%d cause=%r", ep.port, cause)

    # ---- the timer ------------------------------------------------------------------------------
    def deadline(self) -> float | None:
        soonest = self._next_scan
        for ep in self._handshaking:
            due = ep.dtls.deadline() if ep.dtls is not None else None
            if due is not None and (soonest is None or due < soonest):
                soonest = due
        return soonest

    def on_timer(self, now: float) -> None:
        for ep in list(self._handshaking):
            dtls = ep.dtls
            if dtls is None:
                continue
            due = dtls.deadline()
            if due is not None and due <= now and ep.path is not None:
                for datagram in dtls.on_timer(now):
                    self.send(ep.port, datagram, ep.path)
                self._after_dtls(ep, now)
        if self._next_scan is not None and now >= self._next_scan:
            self._scan(now)
            self._next_scan = now + SCAN_S if self.endpoints else None

    def _scan(self, now: float) -> None:
        limit = self.consent_s
        for ep in list(self.endpoints.values()):
            if ep.gone:
                continue
            if ep.closed_at is not None:
                if now - ep.closed_at >= CLOSE_GRACE_S:
                    self._lost(ep, "WebRTC: DTLS closed by the browser", now)
                continue
            if not ep.last_check:
                continue
            if limit > 0 and now - ep.last_check > limit:
                self.counters["consent_lost"] += 1
                self._lost(ep, f"WebRTC: ICE consent lost (no check from the browser for {now - ep.last_check:.0f} s)", now)
            elif ep.secured_at is None and ep.dtls is not None and ep.dtls.state in ("connecting", "verifying") \
                    and now - ep.dtls_at > HANDSHAKE_LIMIT_S:
                self.counters["dtls_failed"] += 1
                self._handshaking.discard(ep)
                self._lost(ep, "WebRTC: DTLS handshake not done in time", now)

    # ---- state ----------------------------------------------------------------------------------
    def _endpoint(self, port: int, *, own_cert: bool = False) -> Endpoint:
        """The endpoint of `port`, made on first use with the worker's certificate, or
        with one of its own (`own_cert`): a party that a transfer moved into this session
        (`Stream.moved_in`) may be a browser whose PeerConnection already has a DTLS
        association with us, on its old session's port; Chrome keeps that association
        when the fingerprint in the new answer is the same as before, and starts a new
        one, on the new path, only when it changed (measured, Chromium 156)."""
        ep = self.endpoints.get(port)
        if ep is None:
            now = self.clock()
            cert = self._cert
            if own_cert:
                cert = Certificate()
                self.counters["own_certs"] += 1
            elif cert is None or now - cert.created > CERT_LIFETIME_S:
                cert = self._cert = Certificate()
            ep = self.endpoints[port] = Endpoint(port, cert, now)
        return ep

    def status(self) -> dict[str, Any]:
        secured = sum(1 for ep in self.endpoints.values() if ep.secured_at is not None)
        return {"endpoints": len(self.endpoints), "secured": secured, "handshaking": len(self._handshaking), **self.counters}
