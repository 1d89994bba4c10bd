"""CPU per request at a fixed rate: vivait-sip (1 and 2 workers) and Kamailio side by side.

    python bench/cpu_per_request.py                                  # register, register-auth, options
    python bench/cpu_per_request.py --tests register --rate register=5000 --repeat 3
    python bench/cpu_per_request.py --servers kamailio,vivait:2 --seconds 40
    python bench/cpu_per_request.py --tests register --servers floor,vivait:1,kamailio

Servers: `kamailio`; `vivait:N` (N SIP workers; `+pure` for VIVAIT_SIP_PURE=1, `@DIR` to
run another checkout with its own .venv, e.g. an old commit); `floor`
(bench/udp_floor_server.py: uvloop answering each datagram with no SIP work, the cost a
Python server pays per request before parsing a byte).

Ceilings on a box shared with other people's tests move by ±20 % run to run; the CPU a
server spends per request at a rate well below its ceiling hardly moves.  Each run starts
a fresh server (fresh data directory: 10,000 config users 100000..109999, password
"secret"), drives it with SIPp at a fixed rate for `--seconds`, and reads utime+stime
of every process of the server's tree and of SIPp from /proc/PID/stat over the steady
window (`--window`, default 10 s .. seconds-2 s: past the first registrations and the
filling of the completed-transaction FIFO); the requests completed in that window come
from SIPp's once-a-second statistics.  Runs are interleaved (kamailio, vivait:1,
vivait:2, kamailio, ...) so a change in the box's load hits every server alike, and each
waits for the 1-minute load average to be below `--max-load` (bounded by `--wait`).

Tests (SIPp scenario; Kamailio config):
  register       REGISTER -> 200, trusted source (bench/reg_noauth.xml; bench/kamailio/kamailio.cfg)
  register-auth  REGISTER -> 401 -> REGISTER -> 200, MD5, per registration (bench/reg_auth.xml; -A WITH_AUTH)
  options        OPTIONS -> 200 (tests/peers/sipp/options.xml; bench/kamailio/options.cfg)

Everything that decides the figure is printed first (benchenv.py): build, uvloop and
compiled modules as loaded by each server process, GC policy, rmem_max, Python, load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchenv import (
    build_line,
    load1,
    loadavg,
    machine_lines,
    server_lines,
    store_lines,
    wait_quiet,
)
from benchlib import (
    BENCH,
    ROOT,
    FloorServer,
    Kamailio,
    ServerBase,
    SippResult,
    Vivait,
    run_sipp,
    sipp_cmd,
    slug,
    start_profile,
    summarize_profile,
    users_csv,
    vivait_config,
)

TESTS = {
    "register": (BENCH / "reg_noauth.xml", BENCH / "kamailio" / "kamailio.cfg", (), "REGISTER"),
    "register-auth": (BENCH / "reg_auth.xml", BENCH / "kamailio" / "kamailio.cfg", ("WITH_AUTH",), "registration"),
    "options": (ROOT / "tests" / "peers" / "sipp" / "options.xml", BENCH / "kamailio" / "options.cfg", (), "OPTIONS"),
}
DEFAULT_RATES = {"register": 5000, "register-auth": 2500, "options": 5000}


def make_server(spec: str, test: str, work: Path, env: dict[str, str]) -> ServerBase:
    _, kam_cfg, defines, _ = TESTS[test]
    if spec == "kamailio":
        return Kamailio(work, kam_cfg, defines=defines)
    if spec == "floor":
        return FloorServer(work)
    spec, _, root = spec.partition("@")
    spec, *flags = spec.split("+")
    workers = int(spec.split(":")[1]) if ":" in spec else 2
    trusted = ["127.0.0.0/8"] if test == "register" else None
    if "pure" in flags:
        env = {**env, "VIVAIT_SIP_PURE": "1"}
    server = Vivait(work, vivait_config(trusted=trusted), workers, env=env, root=Path(root) if root else ROOT)
    server.name += "".join(f"+{f}" for f in flags)
    return server


def one_run(spec: str, test: str, rate: int, args: argparse.Namespace, work: Path, log) -> tuple[SippResult, ServerBase]:
    scenario = TESTS[test][0]
    server = make_server(spec, test, work, dict(e.split("=", 1) for e in args.server_env))
    server.start()
    try:
        for line in server_lines(server.pid) if isinstance(server, Vivait) else []:
            log("#   " + line)
        csv_path = users_csv(work / "users.csv", 100000, 10000)
        count = rate * args.seconds
        cmd = sipp_cmd(f"127.0.0.1:{server.port}", scenario, rate=rate, count=count, inf=csv_path,
                       timeout_s=args.seconds * 3 + 30)
        if args.pin:
            # The server's processes on the last CPU, SIPp on the others: neither evicts the
            # other's caches between two requests (what sharing one core costs).
            last = max(os.sched_getaffinity(0))
            for pid in server.pids():
                os.sched_setaffinity(pid, {last})
            cmd = ["taskset", "-c", ",".join(str(c) for c in sorted(os.sched_getaffinity(0) - {last})), *cmd]
        on_window = None
        if args.profile and isinstance(server, Vivait):
            def on_window(seconds: float) -> object:
                pids = server.pids()
                return [start_profile(pid, seconds, work / f"profile-{i}.txt", native=not args.no_native)
                        for i, pid in enumerate(pids)]
        res = run_sipp(cmd, rate=rate, count=count, server=server,
                       window=(args.window[0], args.seconds - args.window[1]), workdir=work / "sipp",
                       on_window=on_window)
        for i, prof in enumerate(res.extra.get("on_window") or []):
            if prof is not None:
                prof.wait()
                dest = args.profile / f"{work.name}-p{i}.txt"
                dest.parent.mkdir(parents=True, exist_ok=True)
                (work / f"profile-{i}.txt").replace(dest) if (work / f"profile-{i}.txt").exists() else None
                log(f"#   profile of process {i}: {dest}")
                for line in summarize_profile(dest, args.profile_top):
                    log("#     " + line)
        if isinstance(server, Vivait):
            st = server.status()
            res.extra["status"] = st
            res.extra["gc"] = server.gc_pauses()
            res.extra["store"] = store_lines(server.data_dir)[0]
            res.extra["rss_mb"] = sum(int(line.split("RSS ")[1].split()[0]) for line in server_lines(server.pid))
    finally:
        server.stop()
    return res, server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", default="register,register-auth,options")
    parser.add_argument("--servers", default="kamailio,vivait:1,vivait:2")
    parser.add_argument("--rate", action="append", default=[], help="TEST=RATE (default register=5000, "
                        "register-auth=2500 registrations/s, options=5000)")
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--window", type=float, nargs=2, default=(10.0, 2.0), metavar=("SKIP_START", "SKIP_END"))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--max-load", type=float, default=0.5, help="wait for the 1-min load average below this")
    parser.add_argument("--wait", type=float, default=300, help="at most this many seconds of waiting per run")
    parser.add_argument("--server-env", action="append", default=[], help="NAME=VALUE for vivait-sip (e.g. VIVAIT_SIP_PURE=1)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy (--native) every vivait-sip process over "
                        "the window, collapsed stacks to DIR, top frames printed (the CPU figures of such a run include "
                        "the sampling's cost: do not report them)")
    parser.add_argument("--pin", action="store_true", help="pin the server to the last CPU and SIPp to the others")
    parser.add_argument("--no-native", action="store_true", help="py-spy without --native")
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument("--out", type=Path, help="also append everything printed to this file")
    args = parser.parse_args()
    rates = dict(DEFAULT_RATES)
    for item in args.rate:
        key, value = item.split("=")
        rates[key] = int(value)
    out = args.out.open("a") if args.out else None

    def log(line: str = "") -> None:
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    log(f"# cpu_per_request.py {' '.join(sys.argv[1:])}")
    for line in machine_lines():
        log("# " + line)
    for root in sorted({s.partition("@")[2] for s in args.servers.split(",") if "@" in s}):
        log("# other checkout: " + build_line(Path(root)))
    results: dict[tuple[str, str], list[SippResult]] = {}
    with tempfile.TemporaryDirectory(prefix="cpu-per-request-") as tmp:
        for test in args.tests.split(","):
            unit = TESTS[test][3]
            rate = rates[test]
            log(f"\n## {test}: {rate} {unit}s/s for {args.seconds} s, CPU window {args.window[0]:.0f} s .. "
                f"{args.seconds - args.window[1]:.0f} s")
            log(f"{'server':<14} {'µs/' + unit:>16} {'srv%':>5} {'per process µs':<26} {'SIPp µs':>7} {'other%':>6} "
                f"{'achieved':>8} {'lost%':>6} {'retr':>6} {'drops':>6} {'load before/after':<24} notes")
            for n in range(args.repeat):
                for spec in args.servers.split(","):
                    quiet = wait_quiet(args.max_load, args.wait, log)
                    before = loadavg()
                    work = Path(tmp) / f"{test}-{slug(spec)}-{n}"
                    res, server = one_run(spec, test, rate, args, work, log)
                    after = loadavg()
                    results.setdefault((test, spec), []).append(res)
                    w = res.window
                    names = server.process_names()
                    per = " ".join(f"{w.us_per(t):.0f}" for p, t in w.server_ticks.items() if t or names.get(p) != "child")
                    if isinstance(server, Kamailio):
                        per = f"{len(w.server_ticks)} procs"
                    notes = []
                    if "gc" in res.extra:
                        notes.append(f"gc {res.extra['gc']}")
                        st = res.extra["status"]
                        notes.append(f"fwd {sum(x.get('forwarded_to_worker', 0) for x in st.get('workers', []))}")
                        notes.append(f"bindings {st.get('registrar', {}).get('bindings', '?')}")
                        notes.append(f"RSS {res.extra['rss_mb']} MB")
                        episodes = sum(x.get("overload", {}).get("episodes", 0) for x in st.get("workers", [])) \
                            or st.get("overload", {}).get("episodes", 0)
                        if episodes:
                            notes.append(f"overload episodes {episodes}")
                        shed = st.get("counters", {}).get("overload_rejections", 0)
                        if shed:
                            notes.append(f"503 shed {shed}")
                    if res.failures:
                        notes.append(res.failures)
                    if "NOT quiet" in quiet:
                        notes.append("LOAD NOT QUIET")
                    name = server.name
                    log(f"{name:<14} {w.server_us():>16.1f} {w.server_pct():>5.0f} {per:<26} {w.us_per(w.sipp_ticks):>7.1f} "
                        f"{w.other_pct():>6.0f} {res.achieved:>8.0f} {res.lost_pct:>6.3f} {res.retrans:>6} {res.udp_drops:>6} "
                        f"{before + ' / ' + after:<24} {'; '.join(notes)}")
                    if "store" in res.extra:
                        log(f"#   {res.extra['store']}")
                    time.sleep(2)
    log("\n## summary: median CPU per request of the whole server process tree (µs), SIPp excluded")
    for test in args.tests.split(","):
        row = []
        meds: dict[str, float] = {}
        for spec in args.servers.split(","):
            vals = [r.window.server_us() for r in results.get((test, spec), [])]
            if vals:
                meds[spec] = statistics.median(vals)
                spread = f" ({min(vals):.0f}-{max(vals):.0f})" if len(vals) > 1 else ""
                row.append(f"{spec} {meds[spec]:.0f}{spread}")
        ratio = ""
        if "kamailio" in meds:
            ratio = "; vs kamailio: " + ", ".join(f"{k} x{v / meds['kamailio']:.2f}" for k, v in meds.items() if k != "kamailio")
        log(f"{test} @ {rates[test]}/s: " + ", ".join(row) + ratio)
    log(f"# load average at the end {loadavg()} (1-min {load1():.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
