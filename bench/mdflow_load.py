"""Load generator for the mdflow engine (vivait_sip.flow), driven by a simulated clock.

Without ``--admin`` it drives the pure engine in-process with a simulated clock. With
``--admin HOST:PORT`` it feeds a running server instead (see ``feed_server``): it posts
the same arrival processes in real time to ``POST /api/mdflow/calls``, counts the
immediate outcomes it gets back, waits for the statistics interval to close, reads
``GET /api/mdflow/stats?format=json`` and prints both side by side; it exits 1 if they
disagree.

Scenarios:
  steady  Poisson arrivals above the limit, spread over many DNIS.
  burst   N calls inside one second, many distinct DNIS (tests dnis_max, memory).
  hot     one DNIS receives most of the traffic among many quiet ones (fairness).

For each scenario it reports admitted calls per second, queue lengths, outcome
counts, the admitted-rate error per second while a backlog exists, and the cost of
admission decisions (decisions/s, on one core: the engine is single-threaded).
The burst scenario is run a second time under tracemalloc to report peak memory.

Examples:
  python bench/mdflow_load.py --scenario all --rate 1000 --seconds 30
  python bench/mdflow_load.py --admin 127.0.0.1:8081 --flow Cen_TrunkInternos \
      --scenario hot --rate 20 --overload 3 --seconds 2 --hold-ms 300 --hold-share 0.5
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
import tracemalloc
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vivait_sip.flow.config import FlowConfig, MdflowConfig
from vivait_sip.flow.engine import OK, MdflowEngine
from vivait_sip.paths import default_data_dir

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


# -- feeding a running server through the admin API --------------------------------------


ADMIN_TOKEN: list[str] = []  # the server's admin token (--admin-token-file), set by main


def admin_call(address: str, path: str, body: object | None = None) -> Any:
    """GET (or POST ``body`` as JSON) on the admin API; the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{address}{path}", data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if ADMIN_TOKEN:
        request.add_header("Authorization", f"Bearer {ADMIN_TOKEN[0]}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def flow_stats(snapshot: dict[str, Any], flow: str) -> dict[str, Any]:
    """The stats of ``flow`` in a JSON snapshot."""
    for stats in snapshot["flows"]:
        if stats["flow"] == flow:
            return dict(stats)
    raise SystemExit(f"flow {flow!r} is not in the server's stats")


def compare(generator: dict[str, int], server: dict[str, Any]) -> dict[str, bool]:
    """Checks of the server's interval counts against the generator's own counts.

    The generator sees immediate outcomes only; a queued call ends later as ok,
    desborda or abandoned, so its queued count must equal the server's calls that left
    a queue: ``ok - ok at once + desborda + abandoned``.
    """
    from_queue = server["ok"] - generator["ok"] + server["desborda"] + server["abandoned"]
    return {
        "offered": server["offered"] == generator["offered"],
        "agujero": server["agujero"] == generator["agujero"],
        "ok": server["ok"] >= generator["ok"],
        "queued": from_queue == generator["queued"],
        "drained": server["queued"] == 0,
    }


def feed_server(args: argparse.Namespace) -> dict[str, Any]:
    """Feed one statistics interval of a running server and read its stats back.

    The feed starts just after an interval boundary and lasts at most ``--seconds``,
    short enough that every queued call ends (release, ``hold_ms`` patience or
    ``to_desborda_seg``) before the interval closes; then the closed interval holds
    exactly the generator's calls (if nothing else feeds that flow).
    """
    address = args.admin
    config = admin_call(address, "/api/mdflow/config?format=json")
    flows = {f["flujo"]: f for f in config["flows"]}
    if args.flow not in flows:
        raise SystemExit(f"flow {args.flow!r} is not configured (have: {sorted(flows)})")
    interval = float(config["estad_interv_seg"])
    tick_s = config["tick_ms"] / 1000.0
    timeout = float(flows[args.flow]["to_desborda_seg"])
    patience = args.hold_ms / 1000.0
    # Every queued call ends by its patience (all calls have one) or by desborda.
    all_patient = args.hold_ms > 0 and args.hold_share >= 1.0
    settle = (min(patience, timeout) if all_patient else timeout) + 2 * tick_s + args.margin
    feed_s = min(args.seconds, interval - settle - args.margin)
    if feed_s <= 0:
        raise SystemExit(
            f"estad_interv_seg={interval:g} is too short: queued calls need {settle:.2f} s"
            " to end; lower --hold-ms or to_desborda_seg, or lengthen the interval"
        )
    plan = argparse.Namespace(**vars(args))
    plan.seconds = feed_s
    rng = random.Random(args.seed)
    calls = arrivals(plan, rng)
    if args.scenario == "burst":
        calls = [(t * min(1.0, feed_s), dnis) for t, dnis in calls]
    holds = [args.hold_ms if rng.random() < args.hold_share else 0 for _ in calls]

    # Start just after the next interval boundary (server clock, read relative to now).
    snap = admin_call(address, "/api/mdflow/stats?format=json")
    boundary = snap["interval_start"] + interval
    time.sleep(max(0.0, boundary - snap["at"]) + args.margin)

    counts = {"offered": 0, "ok": 0, "agujero": 0, "queued": 0}
    batch_s = args.batch_ms / 1000.0
    start = time.monotonic()
    i = 0
    batches = 0
    while i < len(calls):
        elapsed = time.monotonic() - start
        j = i
        while j < len(calls) and calls[j][0] <= elapsed:
            j += 1
        if j > i:
            body = {
                "flow": args.flow,
                "calls": [
                    {"dnis": dnis, "hold_ms": hold}
                    for (_, dnis), hold in zip(calls[i:j], holds[i:j], strict=True)
                ],
            }
            answer = admin_call(address, "/api/mdflow/calls", body)
            counts["offered"] += j - i
            for key in ("ok", "agujero", "queued"):
                counts[key] += int(answer[key])
            batches += 1
            i = j
        if i < len(calls):
            time.sleep(max(0.0, min(batch_s, calls[i][0] - (time.monotonic() - start))))

    # Wait for the fed interval to close, then read it.
    snap = admin_call(address, "/api/mdflow/stats?format=json")
    if abs(snap["interval_start"] - boundary) < 1e-6:
        time.sleep(max(0.0, boundary + interval - snap["at"]) + args.margin)
        snap = admin_call(address, "/api/mdflow/stats?format=json")
    closed = abs(snap["interval_start"] - (boundary + interval)) < 1e-6
    server = flow_stats(snap, args.flow)
    server.pop("totals", None)
    checks = compare(counts, server)
    checks["interval"] = closed
    return {
        "flow": args.flow,
        "scenario": args.scenario,
        "interval_s": interval,
        "interval_start": boundary,
        "fed_s": feed_s,
        "batches": batches,
        "generator": counts,
        "server": server,
        "checks": checks,
        "agree": all(checks.values()),
    }


def print_feed(report: dict[str, Any]) -> None:
    """Side-by-side text of :func:`feed_server`'s report."""
    gen = report["generator"]
    srv = report["server"]
    print(
        f"mdflow feed flow={report['flow']} scenario={report['scenario']}"
        f" interval_s={report['interval_s']:g} fed_s={report['fed_s']:.2f}"
        f" batches={report['batches']}"
    )
    from_queue = srv["ok"] - gen["ok"] + srv["desborda"] + srv["abandoned"]
    rows = [
        ("offered", gen["offered"], srv["offered"]),
        ("ok", gen["ok"], srv["ok"]),
        ("agujero", gen["agujero"], srv["agujero"]),
        ("desborda", "-", srv["desborda"]),
        ("abandoned", "-", srv["abandoned"]),
        ("queued", gen["queued"], from_queue),
        ("queued_now", "-", srv["queued"]),
    ]
    print(f"{'count':<11}{'generator':>10}{'server':>10}")
    for name, mine, theirs in rows:
        print(f"{name:<11}{mine!s:>10}{theirs!s:>10}")
    print("(generator ok = admitted at once; server ok also counts calls released from a")
    print(" queue; queued: generator = queued at once, server = ok released + desborda +")
    print(" abandoned)")
    failed = [name for name, good in report["checks"].items() if not good]
    print("agree: yes" if report["agree"] else f"agree: NO ({', '.join(failed)})")


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
    server = parser.add_argument_group("feeding a running server (--admin)")
    server.add_argument("--admin", metavar="HOST:PORT", help="feed this server's admin API")
    server.add_argument(
        "--admin-token-file",
        metavar="FILE",
        default=str(default_data_dir() / "admin-token"),
        help="the server's admin token (default: admin-token in the server's default data directory)",
    )
    server.add_argument("--flow", default="bench", help="flow to feed")
    server.add_argument("--batch-ms", type=int, default=100, help="post arrivals every N ms")
    server.add_argument("--hold-ms", type=int, default=0, help="patience of queued calls")
    server.add_argument(
        "--hold-share", type=float, default=1.0, help="share of calls with --hold-ms patience"
    )
    server.add_argument("--margin", type=float, default=0.15, help="safety margin, seconds")
    args = parser.parse_args(argv)

    if args.admin:
        ADMIN_TOKEN[:] = [Path(args.admin_token_file).read_text().strip()]
        if args.scenario == "all":
            args.scenario = "steady"
        feed = feed_server(args)
        if args.json:
            json.dump(feed, sys.stdout, indent=1)
            print()
        else:
            print_feed(feed)
        return 0 if feed["agree"] else 1

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
