"""Everything that decides a benchmark figure on this box, printed next to the figure.

    python bench/benchenv.py                   # the machine and the build
    python bench/benchenv.py --pid PID         # + a running server's processes
    python bench/benchenv.py --data-dir DIR    # + the store it serves

Used by cpu_per_request.py, call_bench.py, options_bench.py and register_bench.sh so a
row in RESULTS.md carries what it was taken with: the build the *server process* runs
(compiled modules and uvloop are read from /proc/PID/maps, not assumed from the source
tree), worker processes, GC policy, UDP buffer limits, store size, Python, and the load
average and CPU use of other processes before and after (the box is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
VENV_PY = ROOT / ".venv" / "bin" / "python"


def python_for_server(root: Path = ROOT) -> str:
    """The interpreter that runs the server: the checkout's venv when present (what
    `scripts/install.sh` made), else this one."""
    venv = root / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def loadavg() -> str:
    return " ".join(_read("/proc/loadavg").split()[:3])


def load1() -> float:
    try:
        return float(_read("/proc/loadavg").split()[0])
    except (ValueError, IndexError):
        return 99.0


def sys_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(x) for x in _read("/proc/stat").splitlines()[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def busy_pct(seconds: float = 1.0) -> float:
    """CPU in use on the whole box over `seconds`, in % of one vCPU (max 100 * nproc)."""
    b0, t0 = sys_ticks()
    time.sleep(seconds)
    b1, t1 = sys_ticks()
    return (b1 - b0) / max(1, t1 - t0) * 100 * (os.cpu_count() or 1)


def top_others(exclude: set[int], limit: int = 4, seconds: float = 1.0) -> list[str]:
    """The processes (not ours) using the most CPU over `seconds`: who else loads the box."""

    def sample() -> dict[int, tuple[int, str]]:
        out: dict[int, tuple[int, str]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            rest = stat.rsplit(")", 1)[1].split()
            out[int(entry.name)] = (int(rest[11]) + int(rest[12]), cmd or stat.split("(", 1)[1].split(")")[0])
        return out

    a = sample()
    time.sleep(seconds)
    b = sample()
    rows = []
    for pid, (ticks, cmd) in b.items():
        if pid in exclude or pid == os.getpid():
            continue
        used = ticks - a.get(pid, (ticks, ""))[0]
        if used > 0:
            rows.append((used / CLK_TCK / seconds * 100, pid, cmd))
    rows.sort(reverse=True)
    return [f"{pct:.0f}% pid {pid} {cmd[:100]}" for pct, pid, cmd in rows[:limit]]


def wait_quiet(max_load1: float, max_wait_s: float, log=print) -> str:
    """Wait (bounded) until the 1-minute load average is below `max_load1`; returns what was
    seen, for the record.  The others' test runs come and go: waiting a few minutes often
    finds a quiet window."""
    deadline = time.monotonic() + max_wait_s
    first = True
    while True:
        la = load1()
        if la < max_load1:
            return f"load {loadavg()} (waited for < {max_load1})"
        if time.monotonic() >= deadline:
            return f"load {loadavg()} (NOT quiet: waited {max_wait_s:.0f} s for < {max_load1})"
        if first:
            log(f"# waiting for the 1-min load to fall below {max_load1} (now {loadavg()}; at most {max_wait_s:.0f} s)")
            first = False
        time.sleep(10)


def git_describe(root: Path = ROOT) -> str:
    if not (root / ".git").exists():
        return f"(not a git checkout: {root})"
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "vivait_sip"],
                               capture_output=True, text=True, check=False).stdout.strip()
        branch = subprocess.run(["git", "-C", str(root), "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        return "?"
    return f"{branch}@{commit}{' (vivait_sip/ modified)' if dirty else ''}"


def build_line(root: Path = ROOT) -> str:
    facts = build_facts(root)
    return (f"vivait-sip {facts.get('version', '?')} {git_describe(root)}, modules {facts.get('native', '?')} "
            f"(mypy/mypyc {facts.get('mypyc', '?')}), python {facts.get('python', '?')} ({python_for_server(root)}), "
            f"uvloop {facts.get('uvloop', '?')}; gc {facts.get('gc', facts.get('error', '?'))}")


def build_facts(root: Path = ROOT) -> dict[str, str]:
    """What the server's interpreter would load: asked of that interpreter, not of this one."""
    code = (
        "import json, gc, sys\n"
        "import vivait_sip, vivait_sip.native as n\n"
        "out = {'native': n.state, 'version': vivait_sip.__version__, 'python': sys.version.split()[0]}\n"
        "try:\n import uvloop; out['uvloop'] = uvloop.__version__\n"
        "except ImportError: out['uvloop'] = 'MISSING (asyncio default loop)'\n"
        "from vivait_sip import app\n"
        "gc_before = gc.get_threshold()\n"
        "app.tune_gc()\n"
        "out['gc'] = f'thresholds {gc.get_threshold()} after tune_gc (CPython default {gc_before}), freeze at start'\n"
        "out['gc_keeper'] = 'yes' if hasattr(app, 'GcKeeper') else 'no'\n"
        "try:\n import mypy.version; out['mypyc'] = mypy.version.__version__\n"
        "except ImportError: out['mypyc'] = '-'\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ)
    env.pop("VIVAIT_SIP_PURE", None)
    proc = subprocess.run([python_for_server(root), "-c", code], capture_output=True, text=True, cwd=str(root), env=env,
                          check=False)
    try:
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return {"error": (proc.stderr or proc.stdout).strip()[-300:]}


def machine_lines() -> list[str]:
    cpu = "?"
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = _read("/proc/meminfo").splitlines()[0].split()[1]
    facts = build_facts()

    def tool(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError:
            return "not installed"
        text = (out.stdout + out.stderr).strip().splitlines()
        hit = [t for t in text if "SIPp" in t or "version" in t]
        return (hit or text or ["?"])[0].strip()

    return [
        f"date {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, host {platform.node()}, {os.cpu_count()} vCPU {cpu}, "
        f"{int(mem_kb) // 1024 // 1024} GB, kernel {platform.release()}",
        f"vivait-sip {facts.get('version', '?')} {git_describe()}, modules {facts.get('native', '?')} "
        f"(mypy/mypyc {facts.get('mypyc', '?')}), python {facts.get('python', '?')} ({python_for_server()}), "
        f"uvloop {facts.get('uvloop', '?')}",
        f"gc: {facts.get('gc', facts.get('error', '?'))}; GcKeeper {facts.get('gc_keeper', '?')}",
        f"udp: net.core.rmem_max {_read('/proc/sys/net/core/rmem_max')}, rmem_default "
        f"{_read('/proc/sys/net/core/rmem_default')}, wmem_max {_read('/proc/sys/net/core/wmem_max')}",
        f"tools: {tool(['sipp', '-v'])}; {tool(['kamailio', '-v'])}",
    ]


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        pids += process_tree(int(child))
    return pids


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        try:
            rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = int(rest[11]) + int(rest[12])
    return out


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in _read(f"/proc/{pid}/status").splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def server_lines(pid: int) -> list[str]:
    """Per process of a running server: what it really loaded (compiled group, uvloop) and RSS."""
    lines = []
    for p in process_tree(pid):
        maps = _read(f"/proc/{p}/maps")
        cmd = _read(f"/proc/{p}/cmdline").replace("\0", " ").strip()
        native = "compiled" if "_native_group" in maps else "PURE"
        loop = "uvloop" if "uvloop" in maps else "asyncio"
        kind = "kamailio" if "kamailio" in cmd else f"{native}, {loop}"
        lines.append(f"process {p}: {kind}, RSS {rss_kb([p]) // 1024} MB: {cmd[:110]}")
    return lines


def store_lines(data_dir: Path) -> list[str]:
    db = data_dir / "vivait.db"
    if not db.exists():
        return [f"store {db}: absent"]
    size = sum(f.stat().st_size for f in data_dir.glob("vivait.db*"))
    counts = []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        for table in ("users", "bindings"):
            with contextlib.suppress(sqlite3.Error):
                counts.append(f"{table} {con.execute(f'SELECT count(*) FROM {table}').fetchone()[0]}")
        con.close()
    except sqlite3.Error as exc:
        counts.append(f"({exc})")
    return [f"store {db}: {size / 1e6:.1f} MB with WAL, {', '.join(counts)}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pid", type=int)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--prefix", default="# ")
    args = parser.parse_args()
    lines = machine_lines()
    lines.append(f"load average {loadavg()}, box busy {busy_pct():.0f}% of one vCPU (max {100 * (os.cpu_count() or 1)}%)")
    if args.pid:
        lines += server_lines(args.pid)
    if args.data_dir:
        lines += store_lines(args.data_dir)
    for line in lines:
        print(args.prefix + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
