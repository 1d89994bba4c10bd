"""UserAgent properties: thousands of mixed scenarios leave every internal table empty, and
random loss, duplication and reordering never leave state behind nor a call unfinished."""

from __future__ import annotations

import contextlib
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ua_harness import SDP, SDP_ANSWER, SDP_OFFER, Net, Node, Wire

from vivait_sip.sip.ua import (
    AckReceived,
    DialogEnded,
    RequestCancelled,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
    UaError,
    UaEvent,
)

SCENARIOS = ("normal", "reject", "cancel", "callee_bye", "prack", "reinvite", "update", "options", "unanswered")


class Caller:
    """Alice's TU: places calls tagged with a scenario and plays its part in each."""

    def __init__(self, node: Node, callee: Node) -> None:
        self.node = node
        self.callee = callee
        self.plan: dict[int, str] = {}
        self.sent: list[int] = []
        node.handler = self

    def place(self, scenario: str, **kwargs: object) -> None:
        node = self.node
        if scenario == "options":
            request_id = node.act(
                lambda ua, now: ua.send_request(
                    "OPTIONS", self.callee.uri, owner="tu", destinations=[self.callee.peer], now=now,
                    from_=node.aor,
                )
            )
        else:
            request_id = node.invite(self.callee, headers=[*SDP, ("Subject", scenario)], **kwargs)
        assert isinstance(request_id, int)
        self.plan[request_id] = scenario
        self.sent.append(request_id)

    def later(self, delay: float, fn: object) -> None:
        net = self.node.net

        def run() -> None:
            # The dialog may have ended meanwhile (loss): a real TU races the same way.
            with contextlib.suppress(UaError):
                self.node.act(fn)  # type: ignore[arg-type]

        net.at(net.now + delay, run)

    def __call__(self, node: Node, event: UaEvent) -> None:
        ua = node.ua
        now = node.net.now
        if isinstance(event, RequestReceived):
            if event.request.method != "PRACK":
                body = SDP_OFFER if event.request.method == "INVITE" else b""
                ua.respond(event.request_id, 200, headers=SDP if body else (), body=body, now=now)
            return
        if not isinstance(event, ResponseReceived):
            return
        scenario = self.plan.get(event.request_id)
        status = event.response.status
        dialog_id = event.dialog_id
        if scenario == "cancel" and status == 180:
            ua.cancel(event.request_id, now)
        elif scenario == "update" and status == 180 and dialog_id is not None:
            self.later(0.1, lambda ua, now: self._track(ua.send_in_dialog(dialog_id, "UPDATE", now=now)))
        elif 200 <= status < 300 and event.response.cseq.method == "INVITE" and dialog_id is not None:
            if scenario == "reinvite":
                self.plan[event.request_id] = "reinvited"
                self.later(
                    0.5,
                    lambda ua, now: self._track(
                        ua.send_in_dialog(dialog_id, "INVITE", headers=SDP, body=SDP_OFFER, now=now), "normal"
                    ),
                )
            else:  # any answered call ends (also a "cancel" whose 180 was lost)
                self.later(2.0, lambda ua, now: ua.bye(dialog_id, now))

    def _track(self, request_id: int, scenario: str = "in_dialog") -> None:
        self.plan[request_id] = scenario
        self.sent.append(request_id)


class Callee:
    """Bob's TU: plays the scenario named in the INVITE's Subject."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.acked: dict[int, int] = {}  # INVITE request id -> dialog id, once ACKed
        node.ua.set_handler("INVITE", "callee")
        node.ua.set_handler("OPTIONS", "callee")
        node.handler = self

    def later(self, delay: float, fn: object) -> None:
        net = self.node.net

        def run() -> None:
            with contextlib.suppress(UaError):
                self.node.act(fn)  # type: ignore[arg-type]

        net.at(net.now + delay, run)

    def __call__(self, node: Node, event: UaEvent) -> None:
        if isinstance(event, AckReceived):
            self.acked[event.request_id] = event.dialog_id
        if not isinstance(event, RequestReceived):
            return
        ua = node.ua
        now = node.net.now
        request = event.request
        request_id = event.request_id
        if event.dialog_id is not None:
            if request.method != "PRACK":
                body = SDP_ANSWER if request.method == "INVITE" else b""
                ua.respond(request_id, 200, headers=SDP if body else (), body=body, now=now)
            return
        if request.method == "OPTIONS":
            ua.respond(request_id, 200, now=now)
            return
        scenario = request.headers.get("subject") or "normal"
        answer = lambda ua, now: ua.respond(request_id, 200, headers=SDP, body=SDP_ANSWER, now=now)  # noqa: E731
        if scenario == "reject":
            self.later(0.5, lambda ua, now: ua.respond(request_id, 486, now=now))
        elif scenario == "prack":
            ua.respond(request_id, 183, headers=SDP, body=SDP_ANSWER, reliable=True, now=now)
            self.later(1.0, answer)
        elif scenario == "unanswered":
            ua.respond(request_id, 180, now=now)
            self.later(200.0, lambda ua, now: ua.respond(request_id, 480, now=now))
        else:
            ua.respond(request_id, 180, now=now)
            self.later(5.0 if scenario == "cancel" else 1.0, answer)
            if scenario == "callee_bye":
                self.later(3.0, lambda ua, now: self.hang_up(ua, now, request_id))

    def hang_up(self, ua: object, now: float, request_id: int) -> None:
        dialog_id = self.acked.get(request_id)
        if dialog_id is None:
            raise UaError("not answered yet")
        self.node.ua.bye(dialog_id, now)


class Ledger:
    """What check_finished needs, counted as events go by (a node's `events` can stay
    empty in bulk runs, which keeps thousands of messages away from the cyclic GC)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.handler = node.handler
        self.outcomes: dict[int, int] = {}
        self.seen: set[int] = set()
        self.ended: list[int] = []
        self.cancelled: list[int] = []
        self.finals: list[int] = []  # final statuses of INVITEs we sent
        self.failed: list[int] = []  # RequestFailed statuses
        self.acks = 0
        node.handler = self

    def __call__(self, node: Node, event: UaEvent) -> None:
        dialog_id = getattr(event, "dialog_id", None)
        if dialog_id is not None:
            self.seen.add(dialog_id)
        if isinstance(event, RequestFailed):
            self.outcomes[event.request_id] = self.outcomes.get(event.request_id, 0) + 1
            self.failed.append(event.status)
        elif isinstance(event, ResponseReceived) and event.response.status >= 200:
            self.outcomes[event.request_id] = self.outcomes.get(event.request_id, 0) + 1
            if event.response.cseq.method == "INVITE":
                self.finals.append(event.response.status)
        elif isinstance(event, DialogEnded):
            self.ended.append(event.dialog_id)
        elif isinstance(event, RequestCancelled):
            self.cancelled.append(event.request_id)
        elif isinstance(event, AckReceived):
            self.acks += 1
        if self.handler is not None:
            self.handler(node, event)


def check_finished(caller: Caller, alice: Ledger, bob: Ledger) -> None:
    """Every request of the caller got exactly one outcome; every dialog id any TU saw got
    exactly one DialogEnded; every table is empty."""
    outcomes = alice.outcomes
    assert all(outcomes.get(r) == 1 for r in caller.sent), (caller.sent, outcomes)
    for ledger in (alice, bob):
        assert sorted(ledger.ended) == sorted(ledger.seen), ledger.node.name
    assert len(bob.cancelled) == len(set(bob.cancelled))
    bob.node.net.assert_idle()


def pair(net: Net, transport: str = "udp") -> tuple[Caller, Ledger, Ledger]:
    alice = net.add("alice", transport=transport)
    bob = net.add("bob", transport=transport)
    caller = Caller(alice, bob)
    Callee(bob)
    return caller, Ledger(alice), Ledger(bob)


def test_thousands_of_mixed_scenarios_leave_every_table_empty() -> None:
    net = Net(record=False)
    caller, alice, bob = pair(net)
    for node in net.nodes:
        node.keep_events = False
    for i in range(2400):
        scenario = SCENARIOS[i % len(SCENARIOS)]
        net.at(i * 0.005, lambda scenario=scenario: caller.place(scenario))
    net.run()
    check_finished(caller, alice, bob)
    planned = [SCENARIOS[i % len(SCENARIOS)] for i in range(2400)]
    assert alice.finals.count(486) == planned.count("reject")
    assert alice.finals.count(487) == planned.count("cancel")
    assert alice.failed == [408] * planned.count("unanswered")  # Timer C
    answered = sum(planned.count(s) for s in ("normal", "callee_bye", "prack", "update"))
    assert bob.acks == answered + 2 * planned.count("reinvite")


FAULTS = st.lists(
    st.tuples(st.integers(0, 39), st.sampled_from(("drop", "dup", "delay"))), max_size=8, unique_by=lambda f: f[0]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=st.sampled_from(SCENARIOS), faults=FAULTS, reliable=st.booleans())
def test_loss_duplication_and_reordering_never_leave_state_behind(
    scenario: str, faults: list[tuple[int, str]], reliable: bool
) -> None:
    net = Net()
    transport = "tcp" if reliable else "udp"
    caller, alice, bob = pair(net, transport)
    # A reliable transport loses nothing (a broken connection is a transport error, tested
    # apart): there, only duplicates and reordering.
    plan = {i: action for i, action in faults if not (reliable and action == "drop")}
    counter = iter(range(10**6))

    def pick(action: str) -> object:
        def rule(wire: Wire) -> bool:
            return plan.get(index.get(id(wire), -1)) == action

        return rule

    index: dict[int, int] = {}

    def number(wire: Wire) -> bool:
        index[id(wire)] = next(counter)
        return False

    net.drop(number, count=None)  # numbers every message, drops nothing
    net.drop(pick("drop"), count=None)  # type: ignore[arg-type]
    net.duplicate(pick("dup"), count=None)  # type: ignore[arg-type]
    net.delay(pick("delay"), 0.7, count=None)  # type: ignore[arg-type]
    caller.place(scenario)
    net.run()
    check_finished(caller, alice, bob)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=st.sampled_from(SCENARIOS), loss=st.floats(0.0, 0.7), seed=st.integers(0, 2**32 - 1))
def test_with_session_timers_any_loss_rate_ends_every_call(scenario: str, loss: float, seed: int) -> None:
    """Even when a BYE and all its retransmissions are lost, the session timer ends the
    dialog on the other side."""
    net = Net()
    caller, alice, bob = pair(net)
    rng = random.Random(seed)
    net.drop(lambda wire: rng.random() < loss, count=None)
    caller.place(scenario, session_expires=90)
    net.run()
    check_finished(caller, alice, bob)
