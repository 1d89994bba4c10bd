"""Calls through vivait-sip's B2BUA and through Kamailio as a stateful proxy, side by side.

    python bench/call_bench.py ladder      [--servers kamailio,vivait:1,vivait:2] [--rates 250,500,1000,1500]
    python bench/call_bench.py cpu         [--rate 300] [--seconds 40] [--repeat 2]
    python bench/call_bench.py concurrent  [--calls 5000] [--hold-ms 60000] [--ramp 125]

SIPp UAC (bench/call_uac.xml, from 127.0.0.5) -> server -> SIPp UAS (bench/call_uas.xml, a
phone registered as user 7000 from 127.0.0.1): INVITE / 100 / 180 / 200 / ACK, hold,
BYE / 200, over UDP.

vivait-sip: the caller is a trunk trusted by its network (`b2bua.trunks`: 127.0.0.5/32,
no digest on the INVITE); the phone registers with digest (MD5, bench/reg_auth.xml) as
user 7000; the default dialplan rings the user's registered phone.  Every call leaves a
CDR in SQLite (`b2bua.cdr`, on by default), as in production.
Kamailio: bench/kamailio/proxy.cfg: registrar (no auth) + tm + usrloc lookup + record_route.

ladder: for each server, fixed-rate steps of `--step-s` seconds (1 s calls), rates in
  order until a step is unclean, then bisected `--refine` times.  Clean: failed or
  unfinished calls <= 0.1 % and calls started >= 95 % of the rate.  Every step runs on a
  freshly started server (a step past the ceiling leaves retransmissions and state
  behind that would weigh on the next one) after waiting for a quiet box.
cpu: CPU per call (server process tree, and SIPp) at a fixed rate below every ceiling.
concurrent: `--calls` calls of `--hold-ms`, started at `--ramp` calls/s, all held at
  once for a while: failures, and the server's RSS before, at the plateau and after
  (memory per established call = RSS growth / calls).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchenv import build_line, load1, loadavg, machine_lines, rss_kb, wait_quiet
from benchlib import (
    BENCH,
    SIPP_COMMON,
    Kamailio,
    ServerBase,
    SippResult,
    Vivait,
    free_port,
    run_sipp,
    sipp_cmd,
    slug,
    spawn,
    start_profile,
    summarize_profile,
)

CALLER_IP = "127.0.0.5"
CALLEE = "7000"


def vivait_call_config(extra_users: int = 0) -> dict[str, Any]:
    users = [{"number": CALLEE, "password": "secret"}]
    users += [{"number": str(n), "password": "secret"} for n in range(100000, 100000 + extra_users)]
    return {
        "registrar": {"algorithms": ["MD5"], "users": users},
        "b2bua": {"trunks": [{"name": "gw", "host": CALLER_IP, "port": 5060, "networks": [f"{CALLER_IP}/32"],
                              "options_interval_s": 0}]},
        "sip": {"limits": {"max_transactions": 200000}},
        "log": {"level": "warning"},
        "http": {"enabled": False},
    }


def make_server(spec: str, work: Path) -> ServerBase:
    """kamailio, or vivait:WORKERS[+nocdr][+pure][@/other/checkout]."""
    if spec == "kamailio":
        return Kamailio(work, BENCH / "kamailio" / "proxy.cfg")
    spec, _, root = spec.partition("@")
    spec, *flags = spec.split("+")
    workers = int(spec.split(":")[1]) if ":" in spec else 2
    config = vivait_call_config()
    if "nocdr" in flags:
        config["b2bua"]["cdr"] = False
    kwargs: dict[str, Any] = {"root": Path(root)} if root else {}
    if "pure" in flags:
        kwargs["env"] = {"VIVAIT_SIP_PURE": "1"}
    server = Vivait(work, config, workers, **kwargs)
    server.name += "".join(f"+{f}" for f in flags)
    return server


def register_phone(server: ServerBase, port: int, work: Path) -> None:
    """The phone (user 7000) registers from the port its UAS will answer on."""
    inf = work / "phone.csv"
    inf.write_text(f"SEQUENTIAL\n{CALLEE};127.0.0.1;[authentication username={CALLEE} password=secret]\n")
    scenario = BENCH / ("reg_noauth.xml" if isinstance(server, Kamailio) else "reg_auth.xml")
    run = subprocess.run(["timeout", "30", "sipp", f"127.0.0.1:{server.port}", "-sf", str(scenario), "-inf", str(inf),
                          "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-r", "1", "-nostdin", "-timeout", "20s",
                          "-timeout_error"], cwd=work, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"the phone could not register (sipp rc {run.returncode}): {run.stdout[-1500:]}")


def start_uas(port: int, count: int, work: Path, timeout_s: int) -> subprocess.Popen[bytes]:
    work.mkdir(parents=True, exist_ok=True)
    cmd = ["timeout", "--foreground", "-k", "5", str(timeout_s + 20), "sipp", "-sf", str(BENCH / "call_uas.xml"),
           "-i", "127.0.0.1", "-p", str(port), "-m", str(count), *SIPP_COMMON, "-stf", "uas_stat.csv",
           "-timeout", f"{timeout_s}s"]
    proc = spawn(cmd, cwd=work, stdout=(work / "uas.out").open("wb"), stderr=subprocess.STDOUT)
    time.sleep(0.5)
    return proc


def stop_uas(proc: subprocess.Popen[bytes], grace_s: float = 8.0) -> None:
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def call_step(spec: str, rate: int, seconds: int, hold_ms: int, work: Path, window: tuple[float, float],
              profile: Path | None = None) -> tuple[SippResult, ServerBase]:
    """One fixed-rate run on a fresh server: start, register the phone, UAS, UAC, stop."""
    server = make_server(spec, work / "server")
    server.start()
    try:
        uas_port = free_port()
        register_phone(server, uas_port, work)
        count = rate * seconds
        hold_s = hold_ms / 1000
        timeout_s = int(seconds * 2 + hold_s + 30)
        uas = start_uas(uas_port, count, work / "uas", timeout_s)
        cmd = sipp_cmd(f"127.0.0.1:{server.port}", BENCH / "call_uac.xml", rate=rate, count=count, local_ip=CALLER_IP,
                       port=free_port(host=CALLER_IP), limit=int(rate * (hold_s + 3)) + 100,
                       extra=["-s", CALLEE, "-d", str(hold_ms)], timeout_s=timeout_s)
        on_window = None
        if profile is not None and isinstance(server, Vivait):
            def on_window(length: float) -> object:
                return [start_profile(pid, length, work / f"profile-{i}.txt") for i, pid in enumerate(server.pids())]
        res = run_sipp(cmd, rate=rate, count=count, server=server, window=window, workdir=work / "uac", uas=uas,
                       sample_rss=True, on_window=on_window)
        stop_uas(uas)
        if profile is not None:
            for i, prof in enumerate(res.extra.get("on_window") or []):
                if prof is not None:
                    prof.wait()
                    src = work / f"profile-{i}.txt"
                    dest = profile / f"call-{slug(spec)}-{rate}-p{i}.txt"
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if src.exists():
                        src.replace(dest)
                    res.extra.setdefault("profiles", []).append(dest)
        if isinstance(server, Vivait):
            st = server.status()
            res.extra["status"] = st
            res.extra["gc"] = server.gc_pauses()
            res.extra["b2bua"] = st.get("b2bua", {})
    finally:
        server.stop()
    return res, server


def describe(res: SippResult, server: ServerBase, hold_s: float) -> str:
    w = res.window
    notes = []
    if "gc" in res.extra:
        notes.append(f"gc {res.extra['gc']}")
        b = res.extra.get("b2bua", {})
        notes.append(f"b2bua answered {b.get('answered', '?')} failed {b.get('failed', '?')} "
                     f"rejected_overload {b.get('rejected_overload', '?')}")
        st = res.extra.get("status", {})
        episodes = sum(x.get("overload", {}).get("episodes", 0) for x in st.get("workers", [])) \
            or st.get("overload", {}).get("episodes", 0)
        if episodes:
            notes.append(f"overload episodes {episodes}")
        shed = st.get("counters", {}).get("overload_rejections", 0)
        if shed:
            notes.append(f"503 shed {shed}")
    if res.failures:
        notes.append(res.failures)
    per = " ".join(f"{w.us_per(t):.0f}" for t in w.server_ticks.values()) if isinstance(server, Vivait) else \
        f"{len(w.server_ticks)} procs"
    return (f"{server.name:<14} {res.rate:>6} {res.count:>7} {res.ok:>7} {res.failed:>6} {res.lost_pct:>6.3f} "
            f"{res.achieved_rate(hold_s):>8.0f} {res.retrans:>7} {res.udp_drops:>6} {w.server_us():>9.0f} "
            f"{per:<12} {w.server_pct():>5.0f} {w.sipp_pct():>5.0f} {w.other_pct():>6.0f} "
            f"{'clean' if res.clean(hold_s) else 'UNCLEAN':<8} {'; '.join(notes)}")


HEADER = (f"{'server':<14} {'rate':>6} {'calls':>7} {'ok':>7} {'failed':>6} {'lost%':>6} {'started/s':>8} "
          f"{'retrans':>7} {'drops':>6} {'µs/call':>9} {'per process':<12} {'srv%':>5} {'sipp%':>5} {'other%':>6} "
          f"{'verdict':<8} notes")


def ladder(args: argparse.Namespace, log: Any, tmp: Path) -> dict[str, int]:
    best_of: dict[str, int] = {}
    hold_s = args.hold_ms / 1000
    for spec in args.servers.split(","):
        log(f"\n## {spec}: calls of {args.hold_ms} ms, {args.step_s} s steps, a fresh server per step")
        log(HEADER)
        best, bad = 0, 0

        def step(rate: int, spec: str = spec) -> bool:
            quiet = wait_quiet(args.max_load, args.wait, log)
            before = loadavg()
            res, server = call_step(spec, rate, args.step_s, args.hold_ms, tmp / f"{slug(spec)}-{rate}",
                                    (4.0, args.step_s - 2.0))
            ok = res.clean(hold_s)
            log(describe(res, server, hold_s) + f" | load {before} -> {loadavg()}"
                + ("" if "NOT quiet" not in quiet else " LOAD NOT QUIET"))
            if not ok and args.show_errors and "errors_head" in res.extra:
                for line in res.extra["errors_head"].splitlines()[: args.show_errors]:
                    log("#   sipp: " + line)
            time.sleep(3)
            return ok

        for rate in [int(r) for r in args.rates.split(",")]:
            if step(rate):
                best = rate
            else:
                bad = rate
                break
        for _ in range(args.refine):
            mid = (best + bad) // 2 // 50 * 50
            if not (best and bad and best < mid < bad):
                break
            if step(mid):
                best = mid
            else:
                bad = mid
        best_of[spec] = best
        log(f"RESULT {spec}: highest clean rate {best} calls/s" + (f" (first unclean {bad})" if bad else ""))
    return best_of


def cpu(args: argparse.Namespace, log: Any, tmp: Path) -> None:
    hold_s = args.hold_ms / 1000
    log(f"\n## CPU per call at {args.rate} calls/s, {args.seconds} s, window {args.window[0]:.0f}..{args.seconds - args.window[1]:.0f} s")
    log(HEADER)
    results: dict[str, list[float]] = {}
    for n in range(args.repeat):
        for spec in args.servers.split(","):
            quiet = wait_quiet(args.max_load, args.wait, log)
            before = loadavg()
            res, server = call_step(spec, args.rate, args.seconds, args.hold_ms, tmp / f"cpu-{slug(spec)}-{n}",
                                    (args.window[0], args.seconds - args.window[1]), profile=args.profile)
            results.setdefault(spec, []).append(res.window.server_us())
            log(describe(res, server, hold_s) + f" | load {before} -> {loadavg()}"
                + ("" if "NOT quiet" not in quiet else " LOAD NOT QUIET"))
            for path in res.extra.get("profiles", []):
                log(f"#   profile {path}")
                for line in summarize_profile(path, args.profile_top):
                    log("#     " + line)
            time.sleep(3)
    meds = {k: statistics.median(v) for k, v in results.items()}
    line = ", ".join(f"{k} {v:.0f} µs" + (f" ({min(results[k]):.0f}-{max(results[k]):.0f})" if len(results[k]) > 1 else "")
                     for k, v in meds.items())
    if "kamailio" in meds:
        line += "; vs kamailio: " + ", ".join(f"{k} x{v / meds['kamailio']:.2f}" for k, v in meds.items() if k != "kamailio")
    log(f"summary: CPU per call (server process tree) at {args.rate}/s: {line}")


def concurrent(args: argparse.Namespace, log: Any, tmp: Path) -> None:
    calls, hold_ms, ramp = args.calls, args.hold_ms, args.ramp
    log(f"\n## {calls} concurrent calls of {hold_ms / 1000:.0f} s, started at {ramp}/s "
        f"(all up from {calls / ramp:.0f} s to {hold_ms / 1000:.0f} s)")
    for spec in args.servers.split(","):
        quiet = wait_quiet(args.max_load, args.wait, log)
        work = tmp / f"conc-{slug(spec)}"
        server = make_server(spec, work / "server")
        server.start()
        try:
            uas_port = free_port()
            register_phone(server, uas_port, work)
            # warm-up: a few short calls, so caches and lazily made objects exist before RSS0
            warm = start_uas(uas_port, 200, work / "warm-uas", 60)
            run_sipp(sipp_cmd(f"127.0.0.1:{server.port}", BENCH / "call_uac.xml", rate=100, count=200,
                              local_ip=CALLER_IP, port=free_port(host=CALLER_IP), extra=["-s", CALLEE, "-d", "100"],
                              timeout_s=60), rate=100, count=200, server=None, window=(0, 0), workdir=work / "warm-uac")
            stop_uas(warm)
            time.sleep(35)  # the warm-up's transactions end (Timer J/K), its dialogs are gone
            pids = server.pids()
            rss0 = rss_kb(pids)
            timeout_s = int(calls / ramp + hold_ms / 1000 + 60)
            uas = start_uas(uas_port, calls, work / "uas", timeout_s)
            cmd = sipp_cmd(f"127.0.0.1:{server.port}", BENCH / "call_uac.xml", rate=ramp, count=calls,
                           local_ip=CALLER_IP, port=free_port(host=CALLER_IP), limit=calls + 100,
                           extra=["-s", CALLEE, "-d", str(hold_ms)], timeout_s=timeout_s)
            plateau_at = calls / ramp + (hold_ms / 1000 - calls / ramp) / 2  # the middle of the plateau
            samples: dict[str, Any] = {}

            def on_window(_: float, server: ServerBase = server, samples: dict[str, Any] = samples) -> object:
                samples["rss"] = rss_kb(server.pids())
                if isinstance(server, Vivait):
                    samples["status"] = server.status()
                return None

            res = run_sipp(cmd, rate=ramp, count=calls, server=server, window=(plateau_at, plateau_at + 1),
                           workdir=work / "uac", uas=uas, sample_rss=True, on_window=on_window)
            stop_uas(uas, 15)
            time.sleep(35)
            rss_after = rss_kb(server.pids())
            st = samples.get("status", {})
            b2b = st.get("b2bua", {})
            active = b2b.get("calls", "?")
            rss_mid = samples.get("rss", 0)
            per_call = (rss_mid - rss0) / calls
            log(f"{server.name}: {res.ok}/{calls} calls ok, {res.failed} failed, {res.retrans} retransmissions, "
                f"{res.udp_drops} UDP drops; at {plateau_at:.0f} s: {active} calls active in the server, "
                f"RSS {rss0 // 1024} MB before -> {rss_mid // 1024} MB at the plateau (peak {res.peak_rss_kb // 1024} MB)"
                f" -> {rss_after // 1024} MB 35 s after the last call: {per_call:.1f} KB per established call"
                + (f"; gc {server.gc_pauses()}" if isinstance(server, Vivait) else "")
                + f"; load {loadavg()}" + ("" if "NOT quiet" not in quiet else " LOAD NOT QUIET"))
            if isinstance(server, Vivait):
                log(f"#   dialogs {st.get('dialogs', '?')}, transactions {st.get('transactions', '?')} at the plateau; "
                    f"per worker: " + ", ".join(f"{w.get('index')}: {w.get('transactions', '?')} transactions"
                                                for w in st.get("workers", [])))
        finally:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["ladder", "cpu", "concurrent"])
    parser.add_argument("--servers", default="kamailio,vivait:1,vivait:2")
    parser.add_argument("--rates", default="250,500,1000,1500,2000")
    parser.add_argument("--step-s", type=int, default=20)
    parser.add_argument("--refine", type=int, default=2)
    parser.add_argument("--hold-ms", type=int, default=None, help="call length (default 1000; concurrent: 60000)")
    parser.add_argument("--rate", type=int, default=300, help="cpu: calls/s")
    parser.add_argument("--seconds", type=int, default=40, help="cpu: length of the run")
    parser.add_argument("--window", type=float, nargs=2, default=(8.0, 3.0), metavar=("SKIP_START", "SKIP_END"))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--calls", type=int, default=5000, help="concurrent: calls held at once")
    parser.add_argument("--ramp", type=int, default=125, help="concurrent: calls started per second")
    parser.add_argument("--max-load", type=float, default=0.5)
    parser.add_argument("--wait", type=float, default=300)
    parser.add_argument("--profile", type=Path, metavar="DIR", help="cpu: py-spy --native of each vivait-sip process")
    parser.add_argument("--profile-top", type=int, default=40)
    parser.add_argument("--show-errors", type=int, default=0, metavar="LINES",
                        help="ladder: print this many lines of SIPp's error log of an unclean step")
    parser.add_argument("--out", type=Path, help="also append the output to this file")
    args = parser.parse_args()
    if args.hold_ms is None:
        args.hold_ms = 60000 if args.mode == "concurrent" else 1000
    out = args.out.open("a") if args.out else None

    def log(line: str = "") -> None:
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind((CALLER_IP, 0))
    except OSError as exc:
        print(f"cannot bind {CALLER_IP} (the caller's address): {exc}", file=sys.stderr)
        return 2
    log(f"# call_bench.py {' '.join(sys.argv[1:])}")
    for line in machine_lines():
        log("# " + line)
    for root in sorted({s.partition("@")[2] for s in args.servers.split(",") if "@" in s}):
        log("# other checkout: " + build_line(Path(root)))
    with tempfile.TemporaryDirectory(prefix="call-bench-") as tmp:
        if args.mode == "ladder":
            best = ladder(args, log, Path(tmp))
            log("\n## summary: highest clean call rate (calls/s, " + f"{args.hold_ms} ms calls)")
            for spec, rate in best.items():
                ratio = f" = {rate / best['kamailio'] * 100:.0f} % of Kamailio" if best.get("kamailio") and spec != "kamailio" else ""
                log(f"{spec}: {rate}{ratio}")
        elif args.mode == "cpu":
            cpu(args, log, Path(tmp))
        else:
            concurrent(args, log, Path(tmp))
    log(f"# load average at the end {loadavg()} (1-min {load1():.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
