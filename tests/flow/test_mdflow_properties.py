"""Hypothesis properties of the engine over random arrival sequences."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vivait_sip.flow.engine import OK, OUTCOMES, MdflowEngine, QueuedCall

from .helpers import config, flow

TICK = 0.1

# One step: (gap in ms before it, dnis index, action) where action 0 = offer,
# 1 = withdraw the oldest still-queued call.
steps = st.lists(
    st.tuples(st.integers(0, 400), st.integers(0, 5), st.sampled_from([0, 0, 0, 1])),
    min_size=1,
    max_size=120,
)
limits = st.fixed_dictionaries(
    {
        "tasa_sal_seg": st.sampled_from([0.5, 1, 2, 2.5, 7, 20]),
        "dnis_max": st.integers(1, 4),
        "dnis_umbral_masivo": st.integers(1, 5),
        "to_desborda_seg": st.sampled_from([0.3, 1, 2.5, 10]),
    }
)


@settings(max_examples=150, deadline=None)
@given(steps=steps, limits=limits, jitter=st.integers(0, 3))
def test_every_call_ends_once_and_rate_is_never_exceeded(
    steps: list[tuple[int, int, int]], limits: dict[str, Any], jitter: int
) -> None:
    tasa = limits["tasa_sal_seg"]
    engine = MdflowEngine(config(flow(**limits), interval=1), now=0.0)
    outcome_of: dict[int, str] = {}
    queued: list[QueuedCall] = []
    admitted_at: list[float] = []
    arrived_per_dnis: Counter[str] = Counter()
    next_tick = TICK
    last_tick_at = 0.0
    now = 0.0
    offered = 0

    def advance(to: float) -> None:
        nonlocal next_tick, last_tick_at
        while next_tick <= to + 1e-9:
            # Ticks are late by 0..jitter ticks now and then, never early.
            at = next_tick + (TICK * jitter if round(next_tick / TICK) % 7 == 0 else 0.0)
            for call in engine.tick(at):
                assert id(call) not in outcome_of, "a call got two outcomes"
                assert call.outcome in OUTCOMES
                outcome_of[id(call)] = call.outcome
                if call.outcome == OK:
                    admitted_at.append(at)
            last_tick_at = at
            next_tick = at + TICK

    for gap_ms, dnis_index, action in steps:
        now += gap_ms / 1000.0
        advance(now)
        now = max(now, last_tick_at)  # the clock never goes back past a late tick
        if action == 1:
            waiting = [c for c in queued if c.waiting]
            if waiting:
                assert engine.withdraw(waiting[0], now)
                outcome_of[id(waiting[0])] = waiting[0].outcome or ""
            continue
        dnis = f"d{dnis_index}"
        arrived_per_dnis[dnis] += 1
        offered += 1
        admission = engine.offer("F", dnis, now)
        if admission.call is None:
            assert admission.outcome is not None
            if admission.outcome == OK:
                admitted_at.append(now)
        else:
            queued.append(admission.call)
        snap = engine.snapshot(now).flows[0]
        assert snap.queued <= offered
        assert snap.dnis_queues <= limits["dnis_max"]
        per_dnis = Counter(c.dnis for c in queued if c.waiting)
        assert all(n <= arrived_per_dnis[d] for d, n in per_dnis.items())
        assert sum(per_dnis.values()) == snap.queued

    # Let every queued call finish: the longest it can wait is to_desborda_seg.
    advance(now + limits["to_desborda_seg"] + 1.0 + 4 * TICK * (jitter + 1))
    assert all(not c.waiting for c in queued)
    assert all(id(c) in outcome_of for c in queued)
    totals = engine.snapshot(next_tick).flows[0].totals
    assert totals["offered"] == offered
    assert sum(totals[o] for o in OUTCOMES) == offered

    admitted_at.sort()
    cap = max(1, math.ceil(tasa))
    j = 0
    for i, t in enumerate(admitted_at):
        while admitted_at[j] <= t - 1.0 + 1e-9:
            j += 1
        assert i - j + 1 <= cap <= tasa + 1


@settings(max_examples=60, deadline=None)
@given(
    burst=st.integers(1, 300),
    dnis_count=st.integers(1, 30),
    dnis_max=st.integers(1, 10),
)
def test_queues_never_exceed_arrivals_and_agujero_only_beyond_dnis_max(
    burst: int, dnis_count: int, dnis_max: int
) -> None:
    engine = MdflowEngine(
        config(flow(tasa_sal_seg=5, dnis_max=dnis_max, to_desborda_seg=100)), now=0.0
    )
    outcomes = Counter[str]()
    queued_dnis: set[str] = set()
    refused_dnis: set[str] = set()
    for i in range(burst):
        dnis = f"{i % dnis_count}"
        admission = engine.offer("F", dnis, 0.0)
        if admission.call is not None:
            queued_dnis.add(dnis)
            outcomes["queued"] += 1
        else:
            assert admission.outcome is not None
            outcomes[admission.outcome] += 1
            if admission.outcome != OK:
                refused_dnis.add(dnis)
    assert outcomes[OK] == min(burst, 5)
    assert len(queued_dnis) <= dnis_max
    assert not refused_dnis & queued_dnis
    assert engine.snapshot(0.0).flows[0].queued == outcomes["queued"] <= burst - outcomes[OK]
