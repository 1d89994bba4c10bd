"""Cost of one CDR write (vivait_sip.b2bua.cdr.CdrWriter.write) on one core.

Each write commits one call with two legs (inbound and outbound, every field filled, a
small `extra`) to a fresh store in a temporary directory on the data disk, exactly as the
call code does when a call ends: WAL, `synchronous=NORMAL`, one transaction per call,
every index of schema 2, SQLite's automatic checkpoints included.  Printed: mean, median,
99th and 99.9th percentile and the worst write, in µs, and the rate one core could
sustain if it did nothing else; `--retention` also prunes an expired backlog as it goes.

Usage: .venv/bin/python bench/cdr_bench.py [--count 50000] [--dir DIR] [--retention]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from vivait_sip.b2bua.cdr import CallRecord, CdrWriter, LegRecord
from vivait_sip.store import Store


def record(i: int, now: float) -> CallRecord:
    uuid = f"{i:08x}-5f0e-4c1a-9d7b-3a2f61c0e4b9"
    return CallRecord(
        call_uuid=uuid,
        linked_to=None,
        caller=f"{6000 + i % 1000}",
        callee="0034913346140",
        user=f"{6000 + i % 1000}",
        callee_user=None,
        did=None,
        trunk="pri",
        rule="outside",
        flow="ventas",
        flow_outcome="ok",
        started_at=now,
        answered_at=now + 2.5,
        ended_at=now + 62.5,
        duration_s=62.5,
        billable_s=60.0,
        disposition="answered",
        hangup_cause="normal clearing",
        hangup_side="caller",
        legs=[
            LegRecord(
                f"{uuid}-a", f"a{i}@192.0.2.1", "in", f"sip:{6000 + i % 1000}@192.0.2.1:5060",
                "0913346140", "sip:6140@192.0.2.1:5060;transport=udp", None,
                now, now + 2.5, now + 62.5, 200, "SIP;cause=200;text=\"Call completed\"",
            ),
            LegRecord(
                f"{uuid}-b", f"b{i}@10.0.0.5", "out", "sip:0034913346140@10.0.0.5",
                "0034913346140", None, "pri", now + 0.01, now + 2.5, now + 62.5, 200, None,
            ),
        ],
        extra={"codec": "PCMA"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--dir", help="where the store goes (default: a temporary directory)")
    parser.add_argument("--retention", action="store_true", help="a 1-day retention with an expired backlog")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = Store.open(Path(tmp))
        writer = CdrWriter(store, retention_days=1.0 if args.retention else 0.0)
        base = time.time() - (3 * 86_400 if args.retention else 0)
        if args.retention:  # a backlog of expired calls, written without pruning
            backlog = CdrWriter(store)
            for i in range(args.count):
                backlog.write(record(10_000_000 + i, base + i * 0.001))
        records = [record(i, time.time() + i * 0.002) for i in range(args.count)]
        times = []
        for rec in records:
            start = time.perf_counter_ns()
            writer.write(rec)
            times.append(time.perf_counter_ns() - start)
        left = store.conn.execute("SELECT COUNT(*) FROM cdr_calls").fetchone()[0]
        store.close()
    us = sorted(t / 1000 for t in times)
    mean = statistics.fmean(us)
    print(f"{args.count} CDR writes (1 call + 2 legs each{', 1-day retention pruning' if args.retention else ''})")
    print(
        f"mean {mean:.1f} µs  median {us[len(us) // 2]:.1f}  p99 {us[int(len(us) * 0.99)]:.1f}  "
        f"p99.9 {us[int(len(us) * 0.999)]:.1f}  max {us[-1]:.1f}  → {1e6 / mean:,.0f} writes/s on one core"
    )
    print(f"calls left in the store: {left}")


if __name__ == "__main__":
    main()
