"""OPTIONS over UDP: vivait-sip and Kamailio side by side under the same SIPp ladder.

    python bench/options_bench.py [--step-s 10] [--rates 1000,2000,4000,8000,16000]

Starts each server itself on 127.0.0.1 (vivait-sip on 5160, Kamailio on 5170, both
stopped by PID afterwards), runs tests/peers/sipp/options.xml, prints both ladders and a
summary line for bench/RESULTS.md.  Needs sipp and kamailio (Debian sip-tester, kamailio).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sipp_ladder import Step, ladder, run_step

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "tests" / "peers" / "sipp" / "options.xml"
KAMAILIO_CFG = ROOT / "bench" / "kamailio" / "options.cfg"
SERVER_LAUNCH = os.environ.get("VIVAIT_LAUNCH", "-m vivait_sip").split()


def native_state() -> str:
    """compiled / pure / stale: a stale build silently halves the figures."""
    out = subprocess.run([sys.executable, "-c", "import vivait_sip.native as n; print(n.state)"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def wait_udp_ready(port: int, timeout: float = 15.0) -> None:
    """Poll with a real OPTIONS until the server answers."""
    import socket

    deadline = time.monotonic() + timeout
    probe = (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKready{{n}};rport\r\n"
        "From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: ready{n}\r\nCSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            sock.sendto(probe.replace("{n}", str(n)).encode(), ("127.0.0.1", port))
            try:
                sock.recvfrom(4096)
                return
            except TimeoutError:
                continue
    raise RuntimeError(f"no answer on udp 127.0.0.1:{port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


WORKERS = os.cpu_count() or 1


def bench_vivait(rates: list[int], step_s: int, workdir: Path) -> tuple[int, list[Step]]:
    port = 5160
    cmd = [sys.executable, *SERVER_LAUNCH, "serve", "--data-dir", str(workdir / "vivait"),
           "--listen", f"udp:127.0.0.1:{port}", "--no-http", "--admin", "127.0.0.1:5161", "--log-level", "warning",
           "--workers", str(WORKERS)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_udp_ready(port)
        return ladder(lambda r: run_step(f"127.0.0.1:{port}", SCENARIO, r, step_s, proc.pid), rates)
    finally:
        stop(proc)


def bench_kamailio(rates: list[int], step_s: int, workdir: Path) -> tuple[int, list[Step]]:
    port = 5170
    cfg = workdir / "kamailio.cfg"
    cfg.write_text(KAMAILIO_CFG.read_text().replace("__PORT__", str(port)))
    proc = subprocess.Popen(["kamailio", "-f", str(cfg), "-DD", "-E", "-m", "256", "-M", "16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_udp_ready(port)
        return ladder(lambda r: run_step(f"127.0.0.1:{port}", SCENARIO, r, step_s, proc.pid), rates)
    finally:
        stop(proc)


def main() -> int:
    global WORKERS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-s", type=int, default=10)
    parser.add_argument("--rates", default="1000,2000,4000,8000,16000,32000")
    parser.add_argument("--only", choices=["vivait", "kamailio"])
    parser.add_argument("--workers", type=int, default=WORKERS, help="vivait-sip worker processes (default: CPUs)")
    args = parser.parse_args()
    WORKERS = args.workers
    rates = [int(r) for r in args.rates.split(",")]
    for tool in ("sipp", "kamailio"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install sip-tester kamailio", file=sys.stderr)
            return 2
    results: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="options-bench-") as tmp:
        work = Path(tmp)
        for name, fn in (("vivait-sip", bench_vivait), ("kamailio", bench_kamailio)):
            if args.only and not name.startswith(args.only):
                continue
            workers = f", {WORKERS} worker(s)" if name == "vivait-sip" else ""
            print(f"\n## {name}: OPTIONS over UDP, {args.step_s} s per step{workers}")
            best, _ = fn(rates, args.step_s, work)
            results[name] = best
    print("\n## summary")
    print(f"machine: {platform.node()} {os.cpu_count()} cpus, {platform.python_implementation()} {platform.python_version()}")
    print(f"vivait-sip modules: {native_state()} (see vivait_sip/native.py), {WORKERS} worker(s)")
    for name, best in results.items():
        print(f"{name}: highest clean OPTIONS rate {best}/s")
    if len(results) == 2 and results["kamailio"]:
        print(f"ratio vivait-sip/kamailio: {results['vivait-sip'] / results['kamailio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
