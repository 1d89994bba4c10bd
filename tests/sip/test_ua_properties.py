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


def check_finished(caller: Caller, alice: Node, bob: Node) -> None:
    """Every request of the caller got exactly one outcome; every dialog id any TU saw got
    exactly one DialogEnded; every table is empty."""
    outcomes: dict[int, int] = {}
    for event in alice.events:
        final = isinstance(event, RequestFailed) or (
            isinstance(event, ResponseReceived)
            and event.response.status >= 200
            and event.response.cseq.method != "ACK"
        )
        if final:
            outcomes[event.request_id] = outcomes.get(event.request_id, 0) + 1
    assert all(outcomes.get(r) == 1 for r in caller.sent), (caller.sent, outcomes)
    for node in (alice, bob):
        seen = {
            e.dialog_id for e in node.events if getattr(e, "dialog_id", None) is not None
        }
        ended = [e.dialog_id for e in node.events if isinstance(e, DialogEnded)]
        assert sorted(ended) == sorted(seen), node.name
    cancelled = [e.request_id for e in bob.events if isinstance(e, RequestCancelled)]
    assert len(cancelled) == len(set(cancelled))
    bob.net.assert_idle()


def test_thousands_of_mixed_scenarios_leave_every_table_empty() -> None:
    net = Net(record=False)
    alice = net.add("alice")
    bob = net.add("bob")
    caller = Caller(alice, bob)
    Callee(bob)
    for i in range(2400):
        scenario = SCENARIOS[i % len(SCENARIOS)]
        net.at(i * 0.005, lambda scenario=scenario: caller.place(scenario))
    net.run()
    check_finished(caller, alice, bob)
    planned = [SCENARIOS[i % len(SCENARIOS)] for i in range(2400)]
    finals = [
        e.response.status
        for e in alice.events
        if isinstance(e, ResponseReceived) and e.response.status >= 200 and e.response.cseq.method == "INVITE"
    ]
    assert finals.count(486) == planned.count("reject")
    assert finals.count(487) == planned.count("cancel")
    timer_c = [e for e in alice.events if isinstance(e, RequestFailed)]
    assert len(timer_c) == planned.count("unanswered") and {e.status for e in timer_c} == {408}
    assert len(bob.of(AckReceived)) == sum(
        planned.count(s) for s in ("normal", "callee_bye", "prack", "update")
    ) + 2 * planned.count("reinvite")


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
    alice = net.add("alice", transport=transport)
    bob = net.add("bob", transport=transport)
    caller = Caller(alice, bob)
    Callee(bob)
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
    alice = net.add("alice")
    bob = net.add("bob")
    caller = Caller(alice, bob)
    Callee(bob)
    rng = random.Random(seed)
    net.drop(lambda wire: rng.random() < loss, count=None)
    caller.place(scenario, session_expires=90)
    net.run()
    check_finished(caller, alice, bob)
