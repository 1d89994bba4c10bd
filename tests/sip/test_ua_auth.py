"""UserAgent: client digest on 401/407 (RFC 3261 §22.2, RFC 7616, RFC 8760), checked by the
server's own verifier (vivait_sip/registrar/digest.py), and sip/auth.py on its own."""

from __future__ import annotations

import pytest
from ua_harness import SDP, SDP_ANSWER, Net, Node

from vivait_sip.registrar.digest import (
    Algorithm,
    Authenticator,
    AuthOutcome,
    NonceManager,
    build_challenge,
    ha1,
    parse_credentials,
    verify,
)
from vivait_sip.sip.auth import Credentials, authorization, best_challenges, parse_challenge
from vivait_sip.sip.message import Request
from vivait_sip.sip.ua import RequestReceived, ResponseReceived, UaEvent

REALM = "vivait"
PASSWORD = "s3cret"


class DigestServer:
    """A node that challenges every request (401, or 407 as a proxy would) and accepts what
    the registrar's Authenticator accepts; an INVITE that passes gets 200 with SDP."""

    def __init__(self, node: Node, *, proxy: bool = False, algorithms: tuple[Algorithm, ...] = (Algorithm.SHA256, Algorithm.MD5)) -> None:
        self.node = node
        self.proxy = proxy
        nonces = NonceManager(b"0123456789abcdef0123456789", 300, clock=lambda: node.net.now)
        self.auth = Authenticator(REALM, nonces, self._lookup, algorithms=algorithms)
        self.outcomes: list[AuthOutcome] = []
        for method in ("REGISTER", "INVITE", "OPTIONS"):
            node.ua.set_handler(method, "server")
        node.handler = self

    @staticmethod
    def _lookup(username: str, realm: str, algorithm: Algorithm) -> str | None:
        return ha1(algorithm, username, realm, PASSWORD) if username == "alice" else None

    def __call__(self, node: Node, event: UaEvent) -> None:
        if not isinstance(event, RequestReceived):
            return
        request = event.request
        now = node.net.now
        header = "proxy-authorization" if self.proxy else "authorization"
        value = request.headers.get(header)
        if value is not None:
            outcome = self.auth.authenticate(request.method, parse_credentials(value), request_uri=request.uri_text)
            self.outcomes.append(outcome)
            if outcome is AuthOutcome.OK:
                body = SDP_ANSWER if request.method == "INVITE" else b""
                node.ua.respond(event.request_id, 200, headers=SDP if body else (), body=body, now=now)
                return
        status, name = (407, "Proxy-Authenticate") if self.proxy else (401, "WWW-Authenticate")
        stale = value is not None and self.outcomes[-1] is AuthOutcome.STALE
        node.ua.respond(
            event.request_id, status, headers=[(name, c) for c in self.auth.challenges(stale=stale)], now=now
        )


def register(alice: Node, bob: Node, credentials: Credentials | None) -> int:
    return int(
        alice.act(
            lambda ua, now: ua.send_request(
                "REGISTER", f"sip:{bob.host}", owner="reg", destinations=[bob.peer], now=now,
                from_="<sip:alice@vivait>", to="<sip:alice@vivait>", credentials=credentials,
                headers=[("Contact", "<sip:alice@10.0.0.1:5060>"), ("Expires", "60")],
            )
        )
    )


def requests(net: Net, method: str) -> list[Request]:
    return [w.msg for w in net.delivered if isinstance(w.msg, Request) and w.msg.method == method]


def test_401_is_answered_once_and_the_tu_sees_only_the_200() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    server = DigestServer(bob)
    request_id = register(alice, bob, Credentials("alice", PASSWORD))
    net.run()
    assert [w.line for w in net.delivered] == [
        "alice->bob REGISTER", "bob->alice 401 REGISTER", "alice->bob REGISTER", "bob->alice 200 REGISTER",
    ]
    first, second = requests(net, "REGISTER")
    assert (first.cseq.number, second.cseq.number) == (1, 2)
    assert first.call_id == second.call_id and first.from_.tag == second.from_.tag
    assert first.top_via.branch != second.top_via.branch
    creds = parse_credentials(second.headers.get("authorization"))
    assert creds.algorithm == "SHA-256" and creds.qop == "auth" and creds.nc == "00000001"
    assert creds.uri == second.uri_text and creds.realm == REALM
    assert server.outcomes == [AuthOutcome.OK]
    assert [(e.request_id, e.response.status) for e in alice.of(ResponseReceived)] == [(request_id, 200)]
    net.assert_idle()


def test_407_on_invite_is_answered_and_the_ack_carries_the_credentials() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    server = DigestServer(bob, proxy=True, algorithms=(Algorithm.MD5,))
    request_id = alice.invite(bob, credentials=Credentials("alice", PASSWORD))
    net.run(duration=2)
    lines = net.lines()
    assert lines[:5] == [
        "alice->bob INVITE", "bob->alice 100 INVITE", "bob->alice 407 INVITE", "alice->bob ACK", "alice->bob INVITE",
    ]
    assert server.outcomes == [AuthOutcome.OK]
    (ok,) = alice.of(ResponseReceived)
    assert ok.request_id == request_id and ok.response.status == 200
    retried = requests(net, "INVITE")[1]
    ack = requests(net, "ACK")[-1]
    assert ack.cseq.number == 2 == retried.cseq.number
    assert ack.headers.get("proxy-authorization") == retried.headers.get("proxy-authorization")
    assert parse_credentials(retried.headers.get("proxy-authorization")).algorithm == "MD5"


def test_wrong_password_reports_the_second_challenge_as_final() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    server = DigestServer(bob)
    request_id = register(alice, bob, Credentials("alice", "wrong"))
    net.run()
    assert len(requests(net, "REGISTER")) == 2
    assert server.outcomes == [AuthOutcome.FAILED]
    (final,) = alice.of(ResponseReceived)
    assert final.request_id == request_id and final.response.status == 401
    net.assert_idle()


def test_without_credentials_or_for_another_realm_the_challenge_is_reported() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    DigestServer(bob)
    register(alice, bob, None)
    register(alice, bob, Credentials("alice", PASSWORD, realm="elsewhere"))
    net.run()
    assert [e.response.status for e in alice.of(ResponseReceived)] == [401, 401]
    assert len(requests(net, "REGISTER")) == 2


def test_a_stale_nonce_is_answered_again() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    server = DigestServer(bob)
    first_attempt = []

    def stale_once(node: Node, event: UaEvent) -> None:
        if isinstance(event, RequestReceived) and "authorization" in event.request.headers and not first_attempt:
            first_attempt.append(event)
            challenge = build_challenge(REALM, server.auth.nonces.issue(), Algorithm.MD5, stale=True)
            node.ua.respond(event.request_id, 401, headers=[("WWW-Authenticate", challenge)], now=net.now)
            return
        server(node, event)

    bob.handler = stale_once
    register(alice, bob, Credentials("alice", PASSWORD))
    net.run()
    assert len(requests(net, "REGISTER")) == 3
    assert [e.response.status for e in alice.of(ResponseReceived)] == [200]
    assert requests(net, "REGISTER")[2].cseq.number == 3


def test_ha1_only_credentials_pick_the_algorithm_they_were_made_for() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    server = DigestServer(bob)  # offers SHA-256 first, then MD5
    md5_ha1 = ha1(Algorithm.MD5, "alice", REALM, PASSWORD)
    register(alice, bob, Credentials("alice", ha1=md5_ha1))
    net.run()
    assert server.outcomes == [AuthOutcome.OK]
    assert parse_credentials(requests(net, "REGISTER")[1].headers.get("authorization")).algorithm == "MD5"


def test_in_dialog_requests_reuse_the_dialog_credentials() -> None:
    net = Net()
    alice = net.add("alice")
    bob = net.add("bob")
    server = DigestServer(bob, proxy=True)
    alice.invite(bob, credentials=Credentials("alice", PASSWORD))
    net.run(duration=2)
    dialog_id = alice.of(ResponseReceived)[-1].dialog_id
    request_id = alice.act(lambda ua, now: ua.send_in_dialog(dialog_id, "INFO", now=now))
    net.run(duration=2)
    infos = requests(net, "INFO")
    assert len(infos) == 2 and "proxy-authorization" not in infos[0].headers
    assert parse_credentials(infos[1].headers.get("proxy-authorization")).uri == infos[1].uri_text
    assert infos[1].cseq.number == infos[0].cseq.number + 1
    assert server.outcomes == [AuthOutcome.OK, AuthOutcome.OK]
    assert [(e.request_id, e.response.status) for e in alice.of(ResponseReceived)][-1] == (request_id, 200)
    alice.act(lambda ua, now: ua.bye(dialog_id, now))
    net.run()
    assert alice.events[-1].reason == "bye_sent"
    net.assert_idle()


# ---- sip/auth.py on its own ------------------------------------------------------------------


def test_client_response_verifies_with_the_server_for_both_algorithms_and_rfc2069() -> None:
    creds = Credentials("alice", PASSWORD)
    for algorithm in (Algorithm.MD5, Algorithm.SHA256):
        for qop in ("auth", None):
            challenge = parse_challenge(build_challenge(REALM, "n0nce", algorithm, opaque="op", qop=qop))
            assert challenge is not None
            value = authorization(challenge, creds, "INVITE", "sip:bob@b", cnonce="c1", nc=3)
            parsed = parse_credentials(value)
            assert verify(parsed, "INVITE", ha1(algorithm, "alice", REALM, PASSWORD), algorithm)
            assert parsed.opaque == "op" and parsed.qop == qop
            assert parsed.nc == ("00000003" if qop else None)


def test_challenges_we_cannot_answer_are_skipped() -> None:
    assert parse_challenge('Basic realm="x"') is None
    assert parse_challenge('Digest realm="x", nonce="n", algorithm=MD5-sess') is None
    assert parse_challenge('Digest realm="x", nonce="n", qop="auth-int"') is None
    assert parse_challenge('Digest nonce="n"') is None
    chosen = parse_challenge('Digest realm="x", nonce="n", qop="auth-int,auth", stale=TRUE')
    assert chosen is not None and chosen.qop == ("auth-int", "auth") and chosen.stale
    both = [build_challenge("r1", "a", Algorithm.SHA256), build_challenge("r1", "b", Algorithm.MD5),
            build_challenge("r2", "c", Algorithm.MD5)]
    picked = best_challenges(both, Credentials("u", "p"))
    assert [(c.realm, c.algorithm) for c in picked] == [("r1", "SHA-256"), ("r2", "MD5")]
    with pytest.raises(ValueError):
        Credentials("u")

