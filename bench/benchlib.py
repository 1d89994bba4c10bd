"""Servers and SIPp runs for the side-by-side benchmarks (cpu_per_request.py, call_bench.py).

A server (vivait-sip or Kamailio) is started here, on loopback, and stopped by its PID.
`run_sipp` runs one SIPp load at a fixed rate and measures, over a steady-state window,
the CPU (utime+stime from /proc/PID/stat) of every process of the server's tree and of
the SIPp processes, and the requests completed in that window (interpolated from SIPp's
once-a-second statistics), so the result is CPU per request, per process.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchenv import CLK_TCK, ROOT, cpu_ticks, process_tree, python_for_server, rss_kb, sys_ticks

BENCH = ROOT / "bench"
_CHILDREN: list[subprocess.Popen[bytes]] = []  # stopped by PID if this process is told to stop


def _stop_children(*_: object) -> None:
    for proc in reversed(_CHILDREN):
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.terminate()
    raise SystemExit(143)


for _sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _stop_children)


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen, remembered so that SIGTERM/SIGHUP to the benchmark stops it too (by PID)."""
    proc = subprocess.Popen(cmd, **kwargs)
    _CHILDREN.append(proc)
    return proc


def slug(spec: str) -> str:
    """A server spec (vivait:2+nocdr@/tmp/x) as a file name."""
    return "".join(c if c.isalnum() or c in "-." else "_" for c in spec)


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def udp_listening(port: int, host: str = "127.0.0.1") -> bool:
    out = subprocess.run(["ss", "-H", "-uln", f"src {host}:{port}"], capture_output=True, text=True, check=False)
    return bool(out.stdout.strip())


def udp_rcvbuf_errors() -> int:
    lines = [line for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    head, vals = lines[0].split(), lines[1].split()
    return int(dict(zip(head, vals, strict=False)).get("RcvbufErrors", 0))


# ---- servers ---------------------------------------------------------------------------------
class ServerBase:
    name = "server"
    proc: subprocess.Popen[bytes] | None = None
    port = 0
    log_path: Path

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> list[int]:
        return process_tree(self.pid)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def process_names(self) -> dict[int, str]:
        return {p: f"p{i}" for i, p in enumerate(self.pids())}

    def gc_pauses(self) -> str:
        return "-"

    def status(self) -> dict[str, Any]:
        return {}


def vivait_config(*, users_first: int = 100000, users: int = 10000, trusted: list[str] | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The benchmark's config: users FIRST.. with password "secret" (MD5: SIPp has no SHA-256);
    `trusted`: registrar trunk networks (no digest asked from them)."""
    registrar: dict[str, Any] = {
        "algorithms": ["MD5"],
        "users": [{"number": str(n), "password": "secret"} for n in range(users_first, users_first + users)],
    }
    if trusted:
        registrar["trunks"] = [{"name": "bench", "networks": trusted}]
    config: dict[str, Any] = {
        "registrar": registrar,
        "sip": {"limits": {"max_transactions": 200000}},
        "log": {"level": "warning"},
        "http": {"enabled": False},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


class Vivait(ServerBase):
    def __init__(self, workdir: Path, config: dict[str, Any], workers: int, port: int | None = None,
                 env: dict[str, str] | None = None, root: Path = ROOT) -> None:
        self.root = root
        self.workdir = workdir
        self.config = config
        self.workers = workers
        self.port = port or free_port()
        self.admin_port = free_port(socket.SOCK_STREAM)
        self.data_dir = workdir / "data"
        self.log_path = workdir / "server.log"
        self.env = env or {}
        self.name = f"vivait-sip {workers}w" + ("" if root == ROOT else f"@{root.name}")

    def start(self) -> Vivait:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "config.json"
        cfg.write_text(json.dumps(self.config))
        cmd = [python_for_server(self.root), "-m", "vivait_sip", "serve", "--config", str(cfg), "--listen",
               f"udp:127.0.0.1:{self.port}", "--no-http", "--admin", f"127.0.0.1:{self.admin_port}",
               "--data-dir", str(self.data_dir), "--workers", str(self.workers)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = spawn(cmd, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, cwd=self.root, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vivait-sip exited: {self.log_path.read_text()[-2000:]}")
            text = self.log_path.read_text(errors="replace")
            if "\nready" in text and len(self.pids()) >= self.workers:
                time.sleep(1.0)
                return self
            time.sleep(0.2)
        raise RuntimeError(f"vivait-sip did not start: {self.log_path.read_text()[-2000:]}")

    def process_names(self) -> dict[int, str]:
        return {p: ("main/w0" if i == 0 else f"worker{i}") for i, p in enumerate(self.pids())}

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python_for_server(self.root), "-m", "vivait_sip", "ctl", "--admin",
                               f"127.0.0.1:{self.admin_port}", "--data-dir", str(self.data_dir), *args],
                              capture_output=True, text=True, check=False, cwd=self.root, timeout=60)

    def status(self) -> dict[str, Any]:
        out = self.ctl("status", "--json")
        try:
            return dict(json.loads(out.stdout))
        except ValueError:
            return {"error": (out.stderr or out.stdout)[-300:]}

    def gc_pauses(self) -> str:
        """The server's own log of collections >= 50 ms (app._log_slow_collections, throttled)."""
        pauses = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "event=gc_pause" in line:
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                pauses.append((fields.get("generation", "?"), float(fields.get("ms", "0"))))
        if not pauses:
            return "none >= 50 ms logged"
        by_gen: dict[str, list[float]] = {}
        for gen, ms in pauses:
            by_gen.setdefault(gen, []).append(ms)
        return "; ".join(f"gen{g}: {len(v)} logged, {min(v):.0f}-{max(v):.0f} ms" for g, v in sorted(by_gen.items()))


class Kamailio(ServerBase):
    def __init__(self, workdir: Path, cfg: Path, port: int | None = None, defines: tuple[str, ...] = (),
                 shm_mb: int = 1024) -> None:
        self.workdir = workdir
        self.cfg = cfg
        self.port = port or free_port()
        self.defines = defines
        self.shm_mb = shm_mb
        self.log_path = workdir / "kamailio.log"
        self.name = "kamailio"

    def start(self) -> Kamailio:
        if shutil.which("kamailio") is None:
            raise RuntimeError("kamailio not found: apt-get install -y kamailio")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / self.cfg.name
        cfg.write_text(self.cfg.read_text().replace("__PORT__", str(self.port)))
        run = self.workdir / "run"
        run.mkdir(exist_ok=True)
        cmd = ["kamailio", "-f", str(cfg), "-DD", "-E", "-m", str(self.shm_mb), "-M", "16", "-Y", str(run), "-w", str(run)]
        if "__PORT__" not in self.cfg.read_text():
            cmd += ["-l", f"udp:127.0.0.1:{self.port}"]
        for d in self.defines:
            cmd += ["-A", d]
        self.proc = spawn(cmd, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited: {self.log_path.read_text()[-2000:]}")
            if udp_listening(self.port):
                time.sleep(1.0)
                return self
            time.sleep(0.1)
        raise RuntimeError("kamailio did not start")

    def process_names(self) -> dict[int, str]:
        return {p: ("main" if i == 0 else "child") for i, p in enumerate(self.pids())}


class FloorServer(ServerBase):
    """bench/udp_floor_server.py: answers every datagram without any SIP work."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "floor.log"
        self.name = "python floor"
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> FloorServer:
        self.proc = spawn([sys.executable, str(BENCH / "udp_floor_server.py"), str(self.port)],
                          stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if udp_listening(self.port):
                return self
            time.sleep(0.1)
        raise RuntimeError("udp_floor_server.py did not start")


# ---- SIPp --------------------------------------------------------------------------------------
@dataclass
class Window:
    """CPU and work over the steady-state window of one run."""

    seconds: float = 0.0
    done: float = 0.0  # completed calls (requests, registrations, calls) in the window
    server_ticks: dict[int, int] = field(default_factory=dict)
    sipp_ticks: int = 0
    box_busy_pct: float = 0.0  # the whole box, % of one vCPU

    def server_cpu_s(self) -> float:
        return sum(self.server_ticks.values()) / CLK_TCK

    def us_per(self, ticks: int) -> float:
        return ticks / CLK_TCK / self.done * 1e6 if self.done else float("nan")

    def server_us(self) -> float:
        return self.us_per(sum(self.server_ticks.values()))

    def server_pct(self) -> float:
        return self.server_cpu_s() / self.seconds * 100 if self.seconds else 0.0

    def sipp_pct(self) -> float:
        return self.sipp_ticks / CLK_TCK / self.seconds * 100 if self.seconds else 0.0

    def other_pct(self) -> float:
        return max(0.0, self.box_busy_pct - self.server_pct() - self.sipp_pct())


@dataclass
class SippResult:
    rate: int
    count: int
    ok: int = 0
    failed: int = 0
    retrans: int = 0
    elapsed: float = 0.0
    achieved: float = 0.0
    rtt_ms: float = 0.0
    udp_drops: int = 0
    failures: str = ""
    window: Window = field(default_factory=Window)
    uas_ok: int | None = None
    peak_rss_kb: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lost_pct(self) -> float:
        return (self.count - self.ok) / self.count * 100 if self.count else 100.0

    def clean(self, hold_s: float = 0.0, max_lost_pct: float = 0.1, min_rate_pct: float = 95.0) -> bool:
        return self.lost_pct <= max_lost_pct and self.achieved_rate(hold_s) >= self.rate * min_rate_pct / 100

    def achieved_rate(self, hold_s: float = 0.0) -> float:
        """Calls started per second: the run's length less one call's hold time."""
        span = self.elapsed - hold_s
        return self.ok / span if span > 0 else 0.0


def _stat_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    rows = list(csv.reader(path.open(newline="", errors="replace"), delimiter=";"))
    if len(rows) < 2:
        return []
    return [dict(zip(rows[0], r, strict=False)) for r in rows[1:] if len(r) >= len(rows[0]) - 1]


def _epoch(row: dict[str, str], key: str) -> float:
    return float(row[key].split("\t")[-1])


def _num(row: dict[str, str], key: str) -> int:
    try:
        return int(row.get(key, "0") or 0)
    except ValueError:
        return 0


def _done_at(rows: list[dict[str, str]], t: float) -> float:
    """Completed calls at wall-clock time t, interpolated between SIPp's statistics rows."""
    points = [(_epoch(r, "CurrentTime"), _num(r, "SuccessfulCall(C)")) for r in rows]
    if not points:
        return 0.0
    if t <= points[0][0]:
        return float(points[0][1])
    for (ta, a), (tb, b) in itertools.pairwise(points):
        if ta <= t <= tb:
            return a + (b - a) * (t - ta) / (tb - ta) if tb > ta else float(b)
    return float(points[-1][1])


SIPP_COMMON = ["-nostdin", "-buff_size", "4194304", "-max_log_size", "2000000", "-trace_err", "-trace_stat",
               "-fd", "1"]


def sipp_cmd(target: str, scenario: Path, *, rate: int, count: int, local_ip: str = "127.0.0.1", port: int = 0,
             inf: Path | None = None, limit: int | None = None, extra: list[str] | None = None,
             timeout_s: int = 600) -> list[str]:
    cmd = ["sipp", target, "-sf", str(scenario), "-i", local_ip, "-p", str(port), "-r", str(rate), "-rp", "1000",
           "-m", str(count), "-l", str(limit or max(2 * rate, 1000)), *SIPP_COMMON, "-stf", "stat.csv",
           "-timeout", f"{timeout_s}s"]
    if inf is not None:
        cmd += ["-inf", str(inf)]
    return cmd + (extra or [])


def run_sipp(cmd: list[str], *, rate: int, count: int, server: ServerBase | None, window: tuple[float, float],
             workdir: Path | None = None, uas: subprocess.Popen[bytes] | None = None,
             sample_rss: bool = False, on_window: Callable[[float], Any] | None = None) -> SippResult:
    """Run SIPp (`cmd`, made by sipp_cmd) to its end; CPU is measured from `window[0]` s after
    the start until `window[1]` s (or SIPp's end).  `uas`: a SIPp UAS already running, whose
    CPU counts as SIPp's.  `on_window(seconds)` is called as the window opens (a profiler)."""
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="sipp-")) if own else workdir
    assert work is not None
    work.mkdir(parents=True, exist_ok=True)
    drops0 = udp_rcvbuf_errors()
    wall_limit = int(cmd[cmd.index("-timeout") + 1].rstrip("s")) + 30
    out = (work / "sipp.out").open("wb")
    # --foreground: SIPp stays in our process group, so it dies with us
    proc = spawn(["timeout", "--foreground", "-k", "5", str(wall_limit), *cmd], cwd=work, stdout=out,
                 stderr=subprocess.STDOUT)
    start = time.monotonic()
    server_pids = server.pids() if server else []
    peak = 0
    res = SippResult(rate, count)

    def sipp_pids() -> list[int]:
        pids = process_tree(proc.pid)
        if uas is not None:
            pids += process_tree(uas.pid)
        return pids

    def sleep_until(t: float) -> None:
        nonlocal peak
        while time.monotonic() < t and proc.poll() is None:
            time.sleep(min(0.5, max(0.0, t - time.monotonic())))
            if sample_rss and server_pids:
                peak = max(peak, rss_kb(server_pids))

    sleep_until(start + window[0])
    if proc.poll() is None:
        server_pids = server.pids() if server else []
        sp = sipp_pids()
        w0, e0, s0, k0, b0 = time.monotonic(), time.time(), cpu_ticks(server_pids), cpu_ticks(sp), sys_ticks()
        if on_window is not None:
            res.extra["on_window"] = on_window(window[1] - window[0])
        sleep_until(start + window[1])
        w1, e1, s1, k1, b1 = time.monotonic(), time.time(), cpu_ticks(server_pids), cpu_ticks(sp), sys_ticks()
        win = Window(seconds=w1 - w0)
        win.server_ticks = {p: s1.get(p, s0[p]) - s0[p] for p in s0}
        win.sipp_ticks = sum(k1.get(p, k0[p]) - k0[p] for p in k0)
        win.box_busy_pct = (b1[0] - b0[0]) / max(1, b1[1] - b0[1]) * 100 * (os.cpu_count() or 1)
        res.window = win
        res.extra["window_epochs"] = (e0, e1)
    sleep_until(start + wall_limit + 10)
    proc.wait()
    out.close()
    res.udp_drops = udp_rcvbuf_errors() - drops0
    res.peak_rss_kb = peak
    rows = _stat_rows(work / "stat.csv")
    if rows:
        last = rows[-1]
        res.ok, res.failed = _num(last, "SuccessfulCall(C)"), _num(last, "FailedCall(C)")
        res.retrans = _num(last, "Retransmissions(C)")
        res.elapsed = max(1e-6, _epoch(last, "CurrentTime") - _epoch(last, "StartTime"))
        res.achieved = res.ok / res.elapsed
        rtt = last.get("ResponseTime1(C)", "") or "00:00:00:000000"
        try:
            hh, mm, ss, us = rtt.split(":")
            res.rtt_ms = (int(hh) * 3600 + int(mm) * 60 + int(ss)) * 1000 + int(us) / 1000
        except ValueError:
            pass
        res.failures = ",".join(f"{k[6:-3]}={_num(last, k)}" for k in last
                                if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)" and _num(last, k))
        if "window_epochs" in res.extra:
            e0, e1 = res.extra["window_epochs"]
            res.window.done = _done_at(rows, e1) - _done_at(rows, e0)
    errors = sorted(work.glob("*_errors.log"))
    if errors and res.ok < res.count:
        res.extra["errors_head"] = errors[0].read_text(errors="replace")[:3000]
    if own:
        shutil.rmtree(work, ignore_errors=True)
    return res


def users_csv(path: Path, first: int, count: int, domain: str = "127.0.0.1") -> Path:
    """SIPp injection file: user;domain;[authentication ...] (SEQUENTIAL; SIPp 3.6.1 does not
    expand [fieldN] inside [authentication], so the keyword is the third field)."""
    with path.open("w") as f:
        f.write("SEQUENTIAL\n")
        for n in range(first, first + count):
            f.write(f"{n};{domain};[authentication username={n} password=secret]\n")
    return path


# ---- profiling -----------------------------------------------------------------------------------
def start_profile(pid: int, seconds: float, path: Path, native: bool = True) -> subprocess.Popen[bytes] | None:
    """py-spy (PyPI) on one process for `seconds`, collapsed stacks to `path`."""
    if shutil.which("py-spy") is None:
        return None
    cmd = ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "250",
           "--format", "raw", "--output", str(path)]
    # --native pauses the process for each sample (it cannot read native stacks otherwise)
    cmd += ["--native"] if native else ["--nonblocking"]
    return spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(path: Path, top: int = 25) -> list[str]:
    """Self and inclusive shares of the heaviest frames of a py-spy raw (collapsed) profile."""
    if not path.exists():
        return [f"(no profile at {path})"]
    self_: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = [_short(f) for f in stack.split(";") if f]
        if frames:
            self_[frames[-1]] = self_.get(frames[-1], 0) + count
        for f in set(frames):
            incl[f] = incl.get(f, 0) + count
    if not total:
        return ["(empty profile)"]
    lines = [f"{total} samples; self:"]
    for f, n in sorted(self_.items(), key=lambda x: -x[1])[:top]:
        lines.append(f"  {n / total * 100:5.1f}%  {f}")
    lines.append("inclusive:")
    for f, n in sorted(incl.items(), key=lambda x: -x[1])[:top]:
        lines.append(f"  {n / total * 100:5.1f}%  {f}")
    return lines


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit("/", 1)[-1].split(":")[0]
    return f"{name} ({file})" if file else name
