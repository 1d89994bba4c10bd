"""The pure per-trunk state (vivait_sip/b2bua/trunk_state.py): health hysteresis, calls at
max_calls, probe timing and timeouts, resolution schedule, registration refresh and
back-off.  Time is a number passed in; nothing sleeps."""

from __future__ import annotations

from typing import Any

import pytest

from vivait_sip.b2bua.config import TrunkConfig
from vivait_sip.b2bua.slots import LocalSlots
from vivait_sip.b2bua.trunk_state import (
    DOWN,
    HOLD_DOWN_S,
    MAX_PROBES_IN_FLIGHT,
    MIN_PROBE_INTERVAL_S,
    RESOLVE_EVERY_S,
    RESOLVE_RETRY_S,
    RETRY_BASE_S,
    RETRY_MAX_S,
    UNKNOWN,
    UP,
    Health,
    Registration,
    TrunkState,
)


def trunk(**overrides: Any) -> TrunkConfig:
    fields: dict[str, Any] = {"name": "pri", "host": "10.0.0.5", "options_interval_s": 1.0}
    fields.update(overrides)
    return TrunkConfig.model_validate(fields)


def resolved(config: TrunkConfig, now: float) -> TrunkState:
    """A trunk state whose (IP) host has been resolved: nothing due but its own timers."""
    state = TrunkState(config, now)
    state.resolving()
    state.resolved(True, now)
    return state


# ---- health -----------------------------------------------------------------------------------


def test_the_first_answer_brings_an_unknown_trunk_up() -> None:
    health = Health(down_after=3, up_after=2, now=0.0)
    assert health.state == UNKNOWN
    assert health.success(1.0) is True
    assert (health.state, health.since) == (UP, 1.0)
    assert health.success(2.0) is False


def test_down_after_consecutive_failures_only() -> None:
    health = Health(down_after=3, up_after=2, now=0.0)
    health.success(0.0)
    assert [health.failure(t) for t in (1.0, 2.0)] == [False, False]
    health.success(3.0)  # an answer in between starts the count again
    assert [health.failure(t) for t in (4.0, 5.0, 6.0)] == [False, False, True]
    assert (health.state, health.since) == (DOWN, 6.0)
    assert health.failure(7.0) is False


def test_failures_count_from_unknown_too() -> None:
    health = Health(down_after=2, up_after=2, now=0.0)
    assert [health.failure(t) for t in (1.0, 2.0)] == [False, True]
    assert health.state == DOWN


def test_up_again_only_after_up_after_consecutive_successes() -> None:
    health = Health(down_after=1, up_after=3, now=0.0)
    health.failure(0.0)
    assert [health.success(t) for t in (1.0, 2.0)] == [False, False]
    health.failure(3.0)  # flapping: the count starts again
    assert [health.success(t) for t in (4.0, 5.0, 6.0)] == [False, False, True]
    assert health.state == UP


# ---- probes -----------------------------------------------------------------------------------


def test_a_probe_is_due_at_once_and_then_every_interval() -> None:
    state = resolved(trunk(options_interval_s=0.3), now=10.0)
    assert state.probe_due(10.0)
    assert state.probe(10.0, reachable=True) is True
    assert not state.probe_due(10.2)
    assert state.probe_due(10.3)
    assert state.next_wakeup() == pytest.approx(10.3)


def test_an_answered_probe_counts_and_a_late_one_does_not() -> None:
    state = TrunkState(trunk(down_after=2, up_after=1), now=0.0)
    assert state.probe(0.0, reachable=True)
    assert state.probe_answered(True, current=True, now=0.1) is True
    assert state.health.state == UP
    state.probe(1.0, reachable=True)
    state.probe(2.0, reachable=True)  # the 1.0 probe is unanswered: failed (timeout)
    assert state.health.failures == 1
    assert state.probe_answered(True, current=False, now=2.1) is False  # its late answer
    assert state.health.failures == 1
    assert state.probes_in_flight == 1
    state.probe(3.0, reachable=True)  # the 2.0 probe timed out too
    assert state.health.state == DOWN
    assert state.counters == {"options_ok": 1, "options_failed": 2}


def test_probe_outcomes_drive_hysteresis_down_and_back_up() -> None:
    state = TrunkState(trunk(down_after=3, up_after=2, options_interval_s=0.3), now=0.0)
    now = 0.0
    states = []
    for answered in [True, False, False, False, True, True, True]:
        assert state.probe(now, reachable=True)  # counts the previous one if unanswered
        if answered:
            state.probe_answered(True, current=True, now=now + 0.01)
        states.append(state.health.state)
        now += 0.3
    # the three unanswered probes fail when their successors are due (0.6, 0.9, 1.2 s):
    # down at 1.2 s; the 1.2 and 1.5 s answers bring it up (up_after=2)
    assert states == [UP, UP, UP, UP, DOWN, UP, UP]


def test_a_probe_without_an_address_fails_at_once() -> None:
    state = TrunkState(trunk(down_after=2), now=0.0)
    assert state.probe(0.0, reachable=False) is False
    assert state.probe(1.0, reachable=False) is False
    assert state.health.state == DOWN
    assert state.probes_in_flight == 0


def test_unfinished_probes_are_capped() -> None:
    state = TrunkState(trunk(down_after=1), now=0.0)
    sent = [state.probe(float(t), reachable=True) for t in range(MAX_PROBES_IN_FLIGHT + 3)]
    assert sent.count(True) == MAX_PROBES_IN_FLIGHT
    assert state.probes_in_flight == MAX_PROBES_IN_FLIGHT
    state.probe_answered(False, current=False, now=50.0)  # one finishes (Timer F)
    assert state.probe(60.0, reachable=True) is True


def test_the_interval_has_a_floor_and_zero_means_no_probes() -> None:
    state = TrunkState(trunk(options_interval_s=0.001), now=0.0)
    state.probe(0.0, reachable=True)
    assert state.probe_at == pytest.approx(MIN_PROBE_INTERVAL_S)
    quiet = TrunkState(trunk(options_interval_s=0), now=0.0)
    assert not quiet.probe_due(100.0)


# ---- calls ------------------------------------------------------------------------------------


def test_max_calls() -> None:
    state = TrunkState(trunk(max_calls=2), now=0.0)
    assert [state.acquire() for _ in range(3)] == [True, True, False]
    assert state.calls == 2 and not state.available and not state.has_room
    state.release()
    assert state.available and state.acquire()
    assert state.counters == {"calls_placed": 3, "calls_limit": 1}


def test_zero_max_calls_is_unlimited_and_release_never_goes_negative() -> None:
    state = TrunkState(trunk(max_calls=0), now=0.0)
    assert all(state.acquire() for _ in range(1000))
    for _ in range(1002):
        state.release()
    assert state.calls == 0


def test_failed_calls_take_a_trunk_down() -> None:
    state = TrunkState(trunk(down_after=2), now=0.0)
    assert state.call_failed(503, 1.0) is False
    assert state.available
    assert state.call_failed(408, 2.0) is True
    assert not state.available
    assert state.counters == {"calls_failed": 2, "calls_failed_503": 1, "calls_failed_408": 1}


def test_without_options_a_trunk_down_by_calls_is_retried_after_the_hold_down() -> None:
    state = resolved(trunk(options_interval_s=0, down_after=1), now=0.0)
    assert state.next_wakeup() is None
    state.call_failed(503, 5.0)
    assert state.next_wakeup() == pytest.approx(5.0 + HOLD_DOWN_S)
    assert state.expire(5.0 + HOLD_DOWN_S - 0.1) is False
    assert state.expire(5.0 + HOLD_DOWN_S) is True
    assert state.health.state == UNKNOWN and state.available


def test_with_options_only_answers_bring_it_back() -> None:
    state = TrunkState(trunk(down_after=1, up_after=1), now=0.0)
    state.call_failed(503, 5.0)
    assert state.expire(5.0 + 10 * HOLD_DOWN_S) is False
    state.probe(6.0, reachable=True)
    state.probe_answered(True, current=True, now=6.1)
    assert state.health.state == UP


# ---- resolution -------------------------------------------------------------------------------


def test_an_ip_host_is_resolved_once() -> None:
    state = TrunkState(trunk(options_interval_s=0), now=0.0)
    assert state.resolve_due(0.0)
    state.resolving()
    assert not state.resolve_due(1.0) and state.next_wakeup() is None
    state.resolved(True, 1.0)
    assert state.resolve_at is None


def test_a_name_is_resolved_again_periodically_on_failure_and_going_down() -> None:
    state = TrunkState(trunk(host="gw.example.com", down_after=1, options_interval_s=0), now=0.0)
    state.resolving()
    state.resolved(False, 0.0)
    assert state.resolve_at == RESOLVE_RETRY_S
    state.resolving()
    state.resolved(True, 10.0)
    assert state.resolve_at == 10.0 + RESOLVE_EVERY_S
    state.resolve_soon(20.0)  # a transport failure
    assert state.resolve_at == 20.0 + RESOLVE_RETRY_S
    state.call_failed(503, 25.0)  # down: look again at once
    assert state.resolve_due(25.0)


# ---- registration -----------------------------------------------------------------------------


def test_registration_refreshes_at_90_percent_of_the_granted_expiry() -> None:
    reg = Registration(600, now=0.0)
    assert reg.due(0.0)
    reg.sent()
    assert not reg.due(0.0) and reg.next_wakeup() is None
    reg.succeeded(120, now=1.0)  # the far end granted less than we asked
    assert reg.state == "registered" and reg.registered(120.9) and not reg.registered(121.0)
    assert reg.due_at == pytest.approx(1.0 + 108.0)


def test_a_tiny_grant_is_refreshed_no_sooner_than_a_second() -> None:
    reg = Registration(600, now=0.0)
    reg.sent()
    reg.succeeded(1, now=5.0)
    assert reg.due_at == 6.0


def test_failures_back_off_exponentially_up_to_the_cap_and_success_resets() -> None:
    reg = Registration(600, now=0.0)
    delays = []
    now = 0.0
    for _ in range(10):
        reg.sent()
        reg.failed(408, now)
        delays.append(reg.due_at - now)
        now = reg.due_at
    assert delays[:4] == [RETRY_BASE_S, 2 * RETRY_BASE_S, 4 * RETRY_BASE_S, 8 * RETRY_BASE_S]
    assert delays[-1] == RETRY_MAX_S and max(delays) == RETRY_MAX_S
    reg.sent()
    reg.succeeded(600, now)
    reg.sent()
    reg.failed(503, now + 540)
    assert reg.due_at - (now + 540) == RETRY_BASE_S


def test_a_failed_refresh_keeps_the_binding_until_it_expires() -> None:
    reg = Registration(600, now=0.0)
    reg.sent()
    reg.succeeded(100, now=0.0)
    reg.sent()
    reg.failed(401, now=90.0)
    assert reg.state == "failed" and reg.last_status == 401
    assert reg.registered(99.0) and not reg.registered(100.0)


def test_423_asks_again_at_once_with_min_expires() -> None:
    reg = Registration(60, now=0.0)
    reg.sent()
    reg.failed(423, now=1.0, min_expires=3600)
    assert (reg.expires, reg.due_at, reg.failures) == (3600, 1.0, 0)
    reg.sent()
    reg.failed(423, now=2.0, min_expires=3600)  # not more than we asked: a real failure
    assert reg.due_at == 2.0 + RETRY_BASE_S
    reg.sent()
    reg.failed(423, now=40.0, min_expires=10**6)  # absurd: refused
    assert reg.expires == 3600 and reg.state == "failed"


def test_a_2xx_granting_nothing_is_a_failure() -> None:
    reg = Registration(600, now=0.0)
    reg.sent()
    reg.succeeded(0, now=1.0)
    assert reg.state == "failed" and not reg.registered(1.0)


def test_registration_wakes_the_driver() -> None:
    state = resolved(trunk(options_interval_s=0, registration=True, auth={"username": "u", "password": "p"}), now=3.0)
    assert state.registration is not None and state.next_wakeup() == 3.0


# ---- reload -----------------------------------------------------------------------------------


def test_reconfigure_keeps_health_and_calls() -> None:
    state = TrunkState(trunk(down_after=3), now=0.0)
    state.acquire()
    state.probe(0.0, reachable=True)
    state.probe_answered(True, current=True, now=0.1)
    new = trunk(down_after=1, max_calls=5, options_interval_s=60)
    assert state.same_address(new)
    state.reconfigure(new, now=0.5)
    assert (state.health.state, state.health.down_after, state.calls) == (UP, 1, 1)
    assert state.probe_at == 1.0  # the next probe as scheduled (sooner than 60 s away)
    state.reconfigure(trunk(options_interval_s=0), now=0.6)
    assert state.probe_at is None


@pytest.mark.parametrize(
    "change",
    [{"host": "10.0.0.6"}, {"port": 5080}, {"transport": "tcp"}, {"transport": "udp"},
     {"auth": {"username": "u", "password": "p"}}, {"from_domain": "pbx.example.com"}],
)
def test_a_new_address_or_account_is_not_the_same_trunk(change: dict[str, Any]) -> None:
    state = TrunkState(trunk(), now=0.0)
    assert not state.same_address(trunk(**change))


def test_nothing_is_due_while_the_first_resolution_runs() -> None:
    state = TrunkState(trunk(registration=True, auth={"username": "u", "password": "p"}), now=0.0)
    state.resolving()
    assert not state.probe_due(5.0) and state.next_wakeup() is None
    state.resolved(True, 5.0)
    assert state.probe_due(5.0) and state.next_wakeup() == 0.0
    state.resolving()  # a later lookup does not stop the checks
    assert state.probe_due(5.0)


def test_calls_are_counted_in_the_slots_it_is_given_by_trunk_name() -> None:
    slots = LocalSlots()
    one, again = TrunkState(trunk(max_calls=2), 0.0, slots=slots), TrunkState(trunk(max_calls=2), 0.0, slots=slots)
    assert one.acquire() and again.acquire() and not one.acquire()  # one trunk, one count (a reload's new state)
    assert one.calls == again.calls == 2 and slots.total("pri") == 2
    again.release()
    assert one.calls == 1 and one.has_room


def test_only_the_registering_worker_has_a_registration() -> None:
    config = trunk(registration=True, auth={"username": "u", "password": "p"})
    assert TrunkState(config, 0.0, register=False).registration is None
    assert TrunkState(config, 0.0).registration is not None
