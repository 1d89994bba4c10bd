"""SIPp step-load ladder: the highest rate a SIP server answers cleanly, with its CPU use.

Clean = failed calls <= 0.1 % of attempted and achieved rate >= 95 % of the target.
Each step runs `rate * step_s` calls at a fixed rate; rates double until a step is
unclean, then the gap is bisected twice (rounded to 100/s).  Every SIPp run is bounded
by its call count and by a timeout.  Used by options_bench.py and register benchmarks.
"""

from __future__ import annotations

import csv
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Step:
    rate: int
    attempted: int
    ok: int
    failed: int
    retrans: int
    achieved: float
    server_cpu: float
    clean: bool

    def row(self) -> str:
        verdict = "clean" if self.clean else "UNCLEAN"
        return (f"{self.rate:>7} {self.attempted:>8} {self.ok:>8} {self.failed:>6} {self.retrans:>7} "
                f"{self.achieved:>9.0f} {self.server_cpu:>7.0f}%  {verdict}")


HEADER = f"{'rate/s':>7} {'attempt':>8} {'ok':>8} {'failed':>6} {'retrans':>7} {'achieved':>9} {'srvCPU':>8}  verdict"


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return pids
    for child in out.split():
        pids += process_tree(int(child))
    return pids


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def run_step(
    target: str, scenario: Path, rate: int, step_s: int, server_pid: int | None, extra: list[str] | None = None
) -> Step:
    count = rate * step_s
    with tempfile.TemporaryDirectory(prefix="sipp-step-") as work:
        stat = Path(work) / "stat.csv"
        cmd = [
            "sipp", target, "-sf", str(scenario), "-i", "127.0.0.1", "-p", "0", "-r", str(rate), "-rp", "1000",
            "-m", str(count), "-l", str(max(2 * rate, 1000)), "-nostdin", "-buff_size", "4194304",
            "-trace_stat", "-stf", str(stat), "-fd", "1", "-timeout", f"{2 * step_s + 20}s",
            *(extra or []),
        ]
        pids = process_tree(server_pid) if server_pid else []
        proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(min(2.0, step_s / 5))
        t0, c0 = time.monotonic(), cpu_ticks(pids)
        time.sleep(max(0.5, step_s - 2 * min(2.0, step_s / 5)))
        t1, c1 = time.monotonic(), cpu_ticks(pids)
        try:
            proc.wait(timeout=2 * step_s + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        rows = list(csv.reader(stat.open(newline=""), delimiter=";")) if stat.exists() else []
    if len(rows) < 2:
        return Step(rate, count, 0, count, 0, 0.0, 0.0, False)
    last = dict(zip(rows[0], rows[-1], strict=False))

    def num(key: str) -> int:
        try:
            return int(last.get(key, "0") or 0)
        except ValueError:
            return 0

    def epoch(key: str) -> float:
        return float(last[key].split("\t")[-1])

    ok, failed = num("SuccessfulCall(C)"), num("FailedCall(C)")
    elapsed = max(1e-6, epoch("CurrentTime") - epoch("StartTime"))
    achieved = ok / elapsed
    cpu = (c1 - c0) / CLK_TCK / (t1 - t0) * 100 if pids else 0.0
    clean = (count - ok) <= count * 0.001 and achieved >= rate * 0.95
    return Step(rate, count, ok, failed, num("Retransmissions(C)"), achieved, cpu, clean)


def ladder(
    run: Callable[[int], Step], rates: list[int], refine: int = 2, log: Callable[[str], None] = print
) -> tuple[int, list[Step]]:
    """Highest clean rate and every step run."""
    steps: list[Step] = []

    def clean(rate: int) -> bool:
        step = run(rate)
        steps.append(step)
        log(step.row())
        return step.clean

    best, bad = 0, 0
    log(HEADER)
    for rate in rates:
        if not clean(rate):
            bad = rate
            break
        best = rate
    for _ in range(refine):
        mid = (best + bad) // 2 // 100 * 100
        if not (best and bad and best < mid < bad):
            break
        if clean(mid):
            best = mid
        else:
            bad = mid
    return best, steps
