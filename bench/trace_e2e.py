"""Server CPU per OPTIONS with tracing off, HEP export on, and `ctl trace` sessions.

    python bench/trace_e2e.py [--rate 2000] [--step-s 8] [--workers 1]

Starts vivait-sip once per mode on 127.0.0.1:5180 (admin 5181), runs SIPp's
tests/peers/sipp/options.xml at a fixed rate well under saturation, and reports the
server's CPU use (all its processes) and the CPU microseconds per OPTIONS transaction
(one request in, one response out).  Modes: `off`; `hep` (one collector: a socket of this
script, read and discarded); `trace-miss` (`ctl trace --user 9999`: every message tested,
none selected); `trace-all` (`ctl trace --method OPTIONS -q`: every message selected and
streamed).  Needs sipp (Debian sip-tester).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from options_bench import SCENARIO, SERVER_LAUNCH, native_state, stop, wait_udp_ready
from sipp_ladder import run_step

PORT = 5180
ADMIN = "127.0.0.1:5181"


def sink() -> tuple[socket.socket, threading.Event]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    done = threading.Event()

    def drain() -> None:
        while not done.is_set():
            try:
                sock.recv(70000)
            except (TimeoutError, OSError):
                continue

    threading.Thread(target=drain, daemon=True).start()
    return sock, done


def measure(mode: str, rate: int, step_s: int, workers: int, work: Path) -> tuple[float, int]:
    config: dict[str, object] = {"trace": {"max_messages_per_s": 1_000_000}}
    hep_sock, hep_done = sink()
    if mode == "hep":
        config["trace"] = {"hep": {"collectors": [f"127.0.0.1:{hep_sock.getsockname()[1]}"]}}
    path = work / f"{mode}.json"
    path.write_text(json.dumps(config))
    cmd = [sys.executable, *SERVER_LAUNCH, "serve", "--config", str(path), "--data-dir", str(work / mode),
           "--listen", f"udp:127.0.0.1:{PORT}", "--no-http", "--admin", ADMIN, "--log-level", "warning", "--workers", str(workers)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = None
    try:
        wait_udp_ready(PORT)
        if mode.startswith("trace"):
            filters = ["--user", "9999"] if mode == "trace-miss" else ["--method", "OPTIONS", "-q"]
            client = subprocess.Popen([sys.executable, "-m", "vivait_sip", "ctl", "--admin", ADMIN, "--data-dir", str(work / mode), "trace", *filters],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        step = run_step(f"127.0.0.1:{PORT}", SCENARIO, rate, step_s, server.pid)
        return step.server_cpu, step.failed
    finally:
        if client is not None:
            stop(client)
        stop(server)
        hep_done.set()
        hep_sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--step-s", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--modes", default="off,hep,trace-miss,trace-all")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        print("sipp not found: apt-get install sip-tester", file=sys.stderr)
        return 2
    print(f"# {platform.node()} {os.cpu_count()} cpus, {platform.python_implementation()} {platform.python_version()}, "
          f"modules: {native_state()}, {args.workers} worker(s), OPTIONS at {args.rate}/s for {args.step_s} s")
    with tempfile.TemporaryDirectory(prefix="trace-e2e-") as tmp:
        base = None
        for mode in args.modes.split(","):
            cpu, failed = measure(mode, args.rate, args.step_s, args.workers, Path(tmp))
            per = cpu / 100 / args.rate * 1e6
            base = per if base is None else base
            print(f"{mode:11s} server CPU {cpu:5.1f}%  {per:6.1f} µs/OPTIONS ({per - base:+.1f})  failed {failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
