"""Authentication of INVITE, SUBSCRIBE, MESSAGE and REFER (407 Proxy-Authenticate).

Until the B2BUA exists, an authenticated request gets the answer a PBX gives for a
call it cannot place: 480 for a local user (registered or not), 404 for an unknown
local target, 403 for a foreign domain (no open relay).  The domain check comes
first; the target lookup only after authentication, so unauthenticated callers see
the same 407 for existing and missing extensions.
"""

from __future__ import annotations

from ..contract import LocalDomains
from ..sip.incoming import Incoming
from .security import AuthGate
from .users import UserDirectory

GUARDED_METHODS = ("INVITE", "SUBSCRIBE", "MESSAGE", "REFER")


class CallGuard:
    """Handler for the guarded methods (the feature declares it for each of them)."""

    def __init__(self, domains: LocalDomains, gate: AuthGate, users: UserDirectory) -> None:
        self.domains = domains
        self.gate = gate
        self.users = users

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
