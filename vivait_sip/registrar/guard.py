"""Authentication of INVITE, SUBSCRIBE, MESSAGE and REFER (407 Proxy-Authenticate).

Until the B2BUA exists, an authenticated request gets the answer a PBX gives for a
call it cannot place: 480 for a local user (registered or not), 404 for an unknown
local target, 403 for a foreign domain (no open relay).  The domain check comes
first; the target lookup only after authentication, so unauthenticated callers see
the same 407 for existing and missing extensions.

A request from a source that is not a trunk, without credentials answering a nonce we
issued to that source, can only be answered (403 for a foreign domain, 407, 403 for a
banned source) and changes nothing, so it is answered statelessly
(the feature's `stateless_checks`), as the 401 to a REGISTER without credentials is: no INVITE
server transaction retransmitting the 407 eleven times over 32 s towards a possibly
forged source (amplification), no 100 Trying; a retransmission gets the same challenge
again, with the same To tag.  Garbage credentials do not buy a transaction either.
"""

from __future__ import annotations

from ..contract import LocalDomains
from ..sip.incoming import Incoming
from ..sip.message import Request
from ..sip.peer import Peer
from .security import AuthGate
from .users import UserDirectory

GUARDED_METHODS = ("INVITE", "SUBSCRIBE", "MESSAGE", "REFER")


class CallGuard:
    """Handler for the guarded methods (the feature declares it for each of them)."""

    def __init__(self, domains: LocalDomains, gate: AuthGate, users: UserDirectory) -> None:
        self.domains = domains
        self.gate = gate
        self.users = users

    def challenge_only(self, req: Request, peer: Peer) -> bool:
        """True when the answer cannot be anything but a refusal or a challenge: no
        credentials answering a nonce we issued to this source (none, garbage, another
        realm, a forged or foreign nonce), from a source that is not a trunk."""
        if "proxy-authorization" not in req.headers:
            return self.gate.trunk_for(peer.host) is None
        return self.gate.trunk_for(peer.host) is None and not self.gate.answers_our_nonce(req, peer.host, proxy=True)

    def handle(self, inc: Incoming) -> None:
        """Answer one request; a SipParseError it raises becomes a 400 in the core."""
        req = inc.request
        uri = req.uri
        if not self.domains.is_local_domain(uri.host):
            inc.respond(403, "Forbidden (relaying not allowed)")
            return
        if self.gate.trunk_for(inc.peer.host) is None and self.gate.check(inc, proxy=True) is None:
            return
        if req.to.tag is not None:
            inc.respond(481)  # no dialogs exist yet: nothing is ever answered with 2xx
            return
        target = uri.user_unescaped
        user = None
        if target is not None:
            user = self.users.by_extension(target) or self.users.by_number(target)
        if user is None:
            inc.respond(404)
            return
        inc.respond(480, "Temporarily Unavailable (calls not yet routed)")
