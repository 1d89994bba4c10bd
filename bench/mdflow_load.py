"""Load generator for the mdflow engine (vivait_sip.flow), driven by a simulated clock.

Scenarios:
  steady  Poisson arrivals above the limit, spread over many DNIS.
  burst   N calls inside one second, many distinct DNIS (tests dnis_max, memory).
  hot     one DNIS receives most of the traffic among many quiet ones (fairness).

For each scenario it reports admitted calls per second, queue lengths, outcome
counts, the admitted-rate error per second while a backlog exists, and the cost of
admission decisions (decisions/s, on one core: the engine is single-threaded).
The burst scenario is run a second time under tracemalloc to report peak memory.

Example:
  python bench/mdflow_load.py --scenario all --rate 1000 --seconds 30
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import asdict, dataclass, field

from vivait_sip.flow.config import FlowConfig, MdflowConfig
from vivait_sip.flow.engine import OK, MdflowEngine

FLOW = "bench"


@dataclass
class Result:
    """What one scenario run measured."""

    scenario: str
    offered: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    admitted_per_second: list[int] = field(default_factory=list)
    max_queued_per_second: list[int] = field(default_factory=list)
    max_rate_error_pct: float = 0.0
    steady_rate_error_pct: float = 0.0
    backlog_seconds: int = 0
    offer_decisions_per_s: float = 0.0
    engine_calls_per_s: float = 0.0
    wall_s: float = 0.0
    mean_wait_s: dict[str, float] = field(default_factory=dict)
    tracemalloc_peak_mib: float | None = None


def arrivals(args: argparse.Namespace, rng: random.Random) -> list[tuple[float, str]]:
    """(time, dnis) pairs of one scenario, sorted by time."""
    calls: list[tuple[float, str]] = []
    if args.scenario == "burst":
        calls = [
            (rng.random(), f"9{rng.randrange(args.burst_dnis):06d}")
            for _ in range(args.burst_calls)
        ]
    else:
        offered_rate = args.rate * args.overload
        t = 0.0
        while True:
            t += rng.expovariate(offered_rate)
            if t >= args.seconds:
                break
            if args.scenario == "hot" and rng.random() < args.hot_share:
                dnis = "hot"
            else:
                dnis = f"9{rng.randrange(args.dnis_count):06d}"
            calls.append((t, dnis))
    calls.sort()
    return calls


def run(args: argparse.Namespace, calls: list[tuple[float, str]]) -> Result:
    """Feed ``calls`` to a fresh engine tick by tick and measure."""
    tick_s = args.tick_ms / 1000.0
    cfg = MdflowConfig(
        tick_ms=args.tick_ms,
        estad_interv_seg=10,
        flows=[
            FlowConfig(
                flujo=FLOW,
                en_paso=False,
                tasa_sal_seg=args.rate,
                dnis_max=args.dnis_max,
                dnis_umbral_masivo=args.umbral,
                to_desborda_seg=args.timeout,
            )
        ],
    )
    engine = MdflowEngine(cfg, now=0.0)
    offer = engine.offer
    result = Result(scenario=args.scenario, offered=len(calls))
    outcomes: Counter[str] = Counter()
    horizon = (calls[-1][0] if calls else 0.0) + args.timeout + 2.0
    seconds = int(horizon) + 1
    admitted = [0] * seconds
    max_queued = [0] * seconds
    queued_at_tick = [0] * (round(horizon / tick_s) + 2)
    waits: dict[str, list[float]] = {"hot": [], "others": []}
    offer_time = 0.0
    tick_time = 0.0
    i = 0
    k = 0
    perf = time.perf_counter
    wall = perf()
    while k * tick_s <= horizon:
        k += 1
        now = k * tick_s
        start = perf()
        j = i
        while j < len(calls) and calls[j][0] < now:
            j += 1
        batch = [offer(FLOW, dnis, t) for t, dnis in calls[i:j]]
        offer_time += perf() - start
        for (t, _), admission in zip(calls[i:j], batch, strict=True):
            if admission.outcome is not None:
                outcomes[admission.outcome] += 1
                if admission.outcome == OK:
                    admitted[int(t)] += 1
        i = j
        start = perf()
        events = engine.tick(now)
        tick_time += perf() - start
        second = int(now + 1e-9)
        for call in events:
            assert call.outcome is not None
            outcomes[call.outcome] += 1
            if call.outcome == OK and second < seconds:
                admitted[second] += 1
            if call.finished_at is not None:
                waits["hot" if call.dnis == "hot" else "others"].append(
                    call.finished_at - call.enqueued_at
                )
        queued = engine.snapshot(now).flows[0].queued
        queued_at_tick[k] = queued
        if second < seconds:
            max_queued[second] = max(max_queued[second], queued)
    result.wall_s = perf() - wall
    # Error per second only where a backlog existed for the whole second: there the
    # engine must deliver exactly tasa_sal_seg calls in that second.
    ticks_per_s = round(1 / tick_s)
    # The first such second of an episode may lose one tick (see docs/mdflow.md), so
    # the steady figure leaves it out.
    errors: list[float] = []
    steady: list[float] = []
    previous = False
    for s in range(seconds):
        ticks = queued_at_tick[s * ticks_per_s : (s + 1) * ticks_per_s + 1]
        backlog = len(ticks) == ticks_per_s + 1 and min(ticks) > 0
        if backlog:
            errors.append(abs(admitted[s] - args.rate) / args.rate * 100)
            if previous:
                steady.append(errors[-1])
        previous = backlog
    last = max((s for s, n in enumerate(admitted) if n), default=0)
    result.admitted_per_second = admitted[: last + 1]
    result.max_queued_per_second = max_queued[: last + 1]
    result.outcomes = dict(outcomes)
    result.backlog_seconds = len(errors)
    result.max_rate_error_pct = max(errors, default=0.0)
    result.steady_rate_error_pct = max(steady, default=0.0)
    result.offer_decisions_per_s = len(calls) / offer_time if offer_time else 0.0
    engine_calls = len(calls) + k
    result.engine_calls_per_s = engine_calls / (offer_time + tick_time)
    result.mean_wait_s = {
        name: sum(values) / len(values) for name, values in waits.items() if values
    }
    return result


def memory_peak(args: argparse.Namespace, calls: list[tuple[float, str]]) -> float:
    """Peak traced memory (MiB) of a run, minus the arrival list already allocated."""
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    run(args, calls)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / (1024 * 1024)


def decision_microbench(args: argparse.Namespace) -> dict[str, float]:
    """Decisions/s of the two offer paths: admitted at once, and congested."""
    tick_s = args.tick_ms / 1000.0
    n = args.micro_calls
    figures: dict[str, float] = {}
    for name, rate, dnis_max in (("uncongested", 1e9, 1000), ("congested", 1.0, 1000)):
        cfg = MdflowConfig(
            tick_ms=args.tick_ms,
            flows=[
                FlowConfig(
                    flujo=FLOW,
                    tasa_sal_seg=rate,
                    dnis_max=dnis_max,
                    dnis_umbral_masivo=100,
                    to_desborda_seg=3600,
                )
            ],
        )
        engine = MdflowEngine(cfg, now=0.0)
        offer = engine.offer
        dnis = [f"9{d:06d}" for d in range(2000)]
        times = [i * tick_s / n for i in range(n)]
        start = time.perf_counter()
        for i, t in enumerate(times):
            offer(FLOW, dnis[i % 2000], t)
        figures[name] = n / (time.perf_counter() - start)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["steady", "burst", "hot", "all"], default="all")
    parser.add_argument("--rate", type=float, default=1000.0, help="tasa_sal_seg")
    parser.add_argument("--tick-ms", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0, help="steady/hot duration")
    parser.add_argument("--overload", type=float, default=1.5, help="offered/allowed rate")
    parser.add_argument("--burst-calls", type=int, default=100_000)
    parser.add_argument("--dnis-max", type=int, default=1000)
    parser.add_argument("--dnis-count", type=int, default=500, help="DNIS drawn (steady/hot)")
    parser.add_argument("--burst-dnis", type=int, default=5000, help="DNIS drawn (burst)")
    parser.add_argument("--hot-share", type=float, default=0.8, help="share of the hot DNIS")
    parser.add_argument("--umbral", type=int, default=50, help="dnis_umbral_masivo")
    parser.add_argument("--timeout", type=float, default=10.0, help="to_desborda_seg")
    parser.add_argument("--micro-calls", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)

    scenarios = ["steady", "burst", "hot"] if args.scenario == "all" else [args.scenario]
    report: dict[str, object] = {"decisions_per_s": decision_microbench(args)}
    for scenario in scenarios:
        args.scenario = scenario
        calls = arrivals(args, random.Random(args.seed))
        result = run(args, calls)
        if scenario == "burst":
            result.tracemalloc_peak_mib = memory_peak(args, calls)
        report[scenario] = asdict(result)

    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
        return 0
    micro = report["decisions_per_s"]
    assert isinstance(micro, dict)
    print(
        "decisions/s (offer only, one core): "
        + ", ".join(f"{k}={v:,.0f}" for k, v in micro.items())
    )
    for scenario in scenarios:
        r = report[scenario]
        assert isinstance(r, dict)
        per_second = r["admitted_per_second"]
        queued = r["max_queued_per_second"]
        print(f"\n[{scenario}] offered={r['offered']} outcomes={r['outcomes']}")
        print(f"  admitted/s: first 12 s {per_second[:12]}")
        print(f"  max queued per second: first 12 s {queued[:12]}")
        print(
            f"  backlog seconds={r['backlog_seconds']}"
            f" max admitted-rate error: all={r['max_rate_error_pct']:.3f}%"
            f" after the first backlog second={r['steady_rate_error_pct']:.3f}%"
        )
        print(
            f"  offer decisions/s={r['offer_decisions_per_s']:,.0f}"
            f" engine calls/s (offers+ticks)={r['engine_calls_per_s']:,.0f}"
            f" wall={r['wall_s']:.2f}s"
        )
        if r["mean_wait_s"]:
            waits = ", ".join(f"{k}={v:.2f}s" for k, v in r["mean_wait_s"].items())
            print(f"  mean queue wait: {waits}")
        if r["tracemalloc_peak_mib"] is not None:
            print(f"  tracemalloc peak: {r['tracemalloc_peak_mib']:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
