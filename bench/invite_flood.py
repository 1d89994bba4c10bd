"""INVITE flood: memory and pauses of a fresh server under unauthenticated INVITEs.

    python bench/invite_flood.py [--count 90000] [--rate 3000] [--floods 3] [--mode compiled|pure]

Starts `vivait-sip serve` itself (loopback, UDP only, its own data directory), then for
each flood sends `--count` INVITEs without credentials at `--rate`/s from one UDP socket
that never ACKs (each INVITE gets 100 Trying, then a 407 retransmitted until Timer H,
64*T1, ends its transaction).  `--auth-fraction F` sends that share of the INVITEs with
valid Proxy-Authorization instead (answered 480 through a transaction whatever the 407
path does).  During each flood a legitimate phone registers (401, then 200) at
`--probe-rate`/s; its 503s and timeouts are counted.  After each flood it waits until the
server reports no transactions left (`ctl status`), lets it settle, and reads its RSS
(the whole process tree with --workers).  At the end one more REGISTER must get its 200.

Prints one row per flood and a JSON line (the last line) with every figure, including
the longest garbage-collection pause the server logged (`event=gc_pause`, >= 50 ms).
tests/server/test_invite_flood.py runs a scaled-down version of this.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import queue
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD, TARGET = "7000", "flood-bench-pw", "7001"
REALM = "vivait"


@dataclass
class FloodResult:
    flood: int
    sent: int
    seconds: float
    received: int
    rss_mb: float
    transactions_left: int | None
    probes_ok: int = 0
    probes_503: int = 0
    probes_lost: int = 0


@dataclass
class ServerProc:
    proc: subprocess.Popen[str]
    udp_port: int
    admin: str
    lines: list[str] = field(default_factory=list)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mb(pid: int) -> float:
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def start_server(workdir: Path, mode: str, t1_ms: int, workers: int) -> ServerProc:
    config = {
        "listen": ["udp:127.0.0.1:0"],
        "http": {"enabled": False},
        "admin": {"host": "127.0.0.1", "port": 0},
        "sip": {"timers": {"t1_ms": t1_ms, "t2_ms": max(4000, t1_ms)}, "workers": workers},
        "registrar": {
            "algorithms": ["MD5"],
            "users": [{"number": USER, "password": PASSWORD}, {"number": TARGET, "password": PASSWORD}],
        },
    }
    (workdir / "config.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "VIVAIT_SIP_PURE"}
    env["PYTHONUNBUFFERED"] = "1"
    if mode == "pure":
        env["VIVAIT_SIP_PURE"] = "1"
    cmd = [sys.executable, "-m", "vivait_sip", "serve", "--config", str(workdir / "config.json"),
           "--data-dir", str(workdir / "data")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    server = ServerProc(proc, 0, "")

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            break
        server.lines.append(line)
        if line.startswith("listening sip udp"):
            server.udp_port = int(line.rsplit(":", 1)[1])
        elif line.startswith("listening admin"):
            server.admin = line.split()[-1]
        elif line.strip() == "ready":

            def keep_reading() -> None:
                while (item := lines.get()) is not None:
                    server.lines.append(item)

            threading.Thread(target=keep_reading, daemon=True).start()
            return server
    proc.kill()
    raise RuntimeError("server did not start:\n" + "\n".join(server.lines))


def status(server: ServerProc, workdir: Path) -> dict[str, object] | None:
    """`ctl status --json` (whatever authentication the admin API asks, ctl knows it)."""
    run = subprocess.run(
        [sys.executable, "-m", "vivait_sip", "ctl", "--admin", server.admin, "--data-dir", str(workdir / "data"),
         "status", "--json"],
        capture_output=True, text=True, timeout=20, check=False,
    )
    if run.returncode != 0:
        return None
    try:
        data = json.loads(run.stdout)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def transactions_left(server: ServerProc, workdir: Path) -> int | None:
    data = status(server, workdir)
    if data is None:
        return None
    return int(data.get("transactions", 0)) + int(data.get("transactions_completed_waiting", 0))  # type: ignore[call-overload]


def gc_count(server: ServerProc, workdir: Path, key: str) -> int | None:
    """A counter of the server's GC policy (`ctl status` → gc), None if not reported."""
    data = status(server, workdir)
    gc_stats = data.get("gc") if data else None
    return int(gc_stats[key]) if isinstance(gc_stats, dict) and key in gc_stats else None


# ---- messages ---------------------------------------------------------------------------


def invite(port: int, local_port: int, n: int, run: str, auth: str | None = None) -> bytes:
    lines = [
        f"INVITE sip:{TARGET}@127.0.0.1 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK-{run}-{n};rport",
        "Max-Forwards: 70",
        f"From: <sip:flood@127.0.0.1>;tag=f{run}{n}",
        f"To: <sip:{TARGET}@127.0.0.1>",
        f"Call-ID: flood-{run}-{n}@127.0.0.1",
        "CSeq: 1 INVITE",
        f"Contact: <sip:flood@127.0.0.1:{local_port}>",
    ]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_answer(challenge: str, method: str, uri: str, nc: int) -> str:
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    nonce = params["nonce"]
    cnonce = secrets.token_hex(4)
    ha1 = _md5(f"{USER}:{params['realm']}:{PASSWORD}")
    ha2 = _md5(f"{method}:{uri}")
    response = _md5(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{USER}", realm="{params["realm"]}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm=MD5, cnonce="{cnonce}", qop=auth, nc={nc:08x}'
    )


def header(data: bytes, name: str) -> str | None:
    for line in data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


class Phone:
    """A legitimate UA: REGISTER, answer the 401, expect 200."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.call_id = f"probe-{secrets.token_hex(6)}"
        self.cseq = 0

    def _request(self, auth: str | None) -> bytes:
        self.cseq += 1
        local = self.sock.getsockname()[1]
        lines = [
            "REGISTER sip:127.0.0.1 SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-{self.call_id}-{self.cseq};rport",
            "Max-Forwards: 70",
            f"From: <sip:{USER}@127.0.0.1>;tag={self.call_id}",
            f"To: <sip:{USER}@127.0.0.1>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:{USER}@127.0.0.1:{local}>",
            "Expires: 600",
        ]
        if auth:
            lines.append(f"Authorization: {auth}")
        return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()

    def _final(self, data: bytes, timeout: float) -> bytes | None:
        """Send `data`, retransmitting like a UAC (T1 = 0.5 s) until its final response
        (late answers to earlier, timed-out REGISTERs are skipped by CSeq)."""
        cseq = f"{self.cseq} REGISTER"
        deadline = time.monotonic() + timeout
        interval = 0.5
        while (left := deadline - time.monotonic()) > 0:
            self.sock.sendto(data, ("127.0.0.1", self.port))
            until = time.monotonic() + min(interval, left)
            while (wait := until - time.monotonic()) > 0:
                self.sock.settimeout(wait)
                try:
                    reply = self.sock.recv(65535)
                except TimeoutError:
                    break
                if not reply.startswith(b"SIP/2.0 1") and header(reply, "CSeq") == cseq:
                    return reply
            interval = min(interval * 2, 4.0)
        return None

    def register(self, timeout: float = 8.0) -> int | None:
        """Status of the final answer (200 expected), None when none came."""
        first = self._final(self._request(None), timeout)
        if first is None or not first.startswith(b"SIP/2.0 401"):
            return None if first is None else int(first.split(b" ", 2)[1])
        challenge = header(first, "WWW-Authenticate") or ""
        second = self._final(self._request(digest_answer(challenge, "REGISTER", "sip:127.0.0.1", 1)), timeout)
        return None if second is None else int(second.split(b" ", 2)[1])

    def close(self) -> None:
        self.sock.close()


# ---- the flood ------------------------------------------------------------------------------


def flood(port: int, count: int, rate: int, run: str, auth_fraction: float) -> tuple[int, float, int]:
    """Send `count` INVITEs at `rate`/s; returns (sent, seconds, datagrams received)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    local = sock.getsockname()[1]
    received = 0
    auth_every = round(1 / auth_fraction) if auth_fraction > 0 else 0
    challenge: str | None = None
    nc = 0
    if auth_every:
        # One nonce for the whole flood, its nonce-count counted up (as a busy UA would).
        sock.settimeout(5)
        sock.sendto(invite(port, local, -1, run), ("127.0.0.1", port))
        deadline = time.monotonic() + 10
        while challenge is None and time.monotonic() < deadline:
            reply = sock.recv(65535)
            if reply.startswith(b"SIP/2.0 407"):
                challenge = header(reply, "Proxy-Authenticate")
        if challenge is None:
            raise RuntimeError("no 407 challenge")
        sock.setblocking(False)
    addr = ("127.0.0.1", port)
    start = time.monotonic()
    tick = 0.01
    sent = 0
    while sent < count:
        due = min(count, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            auth = None
            if auth_every and sent % auth_every == 0:
                nc += 1
                auth = digest_answer(challenge or "", "INVITE", f"sip:{TARGET}@127.0.0.1", nc)
            try:
                sock.sendto(invite(port, local, sent, run, auth), addr)
            except BlockingIOError:
                break
            sent += 1
        for _ in range(2000):
            try:
                sock.recv(65535)
            except BlockingIOError:
                break
            received += 1
        time.sleep(tick)
    seconds = time.monotonic() - start
    sock.close()
    return sent, seconds, received


def probe_loop(phone: Phone, stop: threading.Event, interval: float, result: FloodResult) -> None:
    while not stop.wait(interval):
        code = phone.register(timeout=4.0)
        if code == 200:
            result.probes_ok += 1
        elif code == 503:
            result.probes_503 += 1
        else:
            result.probes_lost += 1


def gc_pauses(lines: list[str]) -> list[tuple[int, int]]:
    """(generation, ms) of every logged collection of 50 ms or more."""
    out = []
    for line in lines:
        if "event=gc_pause" in line:
            gen = re.search(r"generation=(-?\d+)", line)
            ms = re.search(r"ms=(\d+)", line)
            if gen and ms:
                out.append((int(gen.group(1)), int(ms.group(1))))
    return out


def run(args: argparse.Namespace) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="invite-flood-"))
    server = start_server(workdir, args.mode, args.t1_ms, args.workers)
    pid = server.proc.pid
    timer_h = 64 * args.t1_ms / 1000
    results: list[FloodResult] = []
    end_status: dict[str, object] = {}
    try:
        phone = Phone(server.udp_port)
        first = phone.register()
        if first != 200:
            raise RuntimeError(f"REGISTER before the flood got {first}")
        time.sleep(1)
        rss_before = rss_mb(pid)
        print(f"mode={args.mode} native={native_state(args.mode)} workers={args.workers} "
              f"t1_ms={args.t1_ms} rss_before_mb={rss_before:.0f}", flush=True)
        print(" flood     sent      s/flood  recv    RSS MB  tx_left  REGISTER ok/503/lost", flush=True)
        for n in range(1, args.floods + 1):
            result = FloodResult(n, 0, 0.0, 0, 0.0, None)
            stop = threading.Event()
            prober = threading.Thread(
                target=probe_loop, args=(phone, stop, 1 / args.probe_rate, result), daemon=True
            ) if args.probe_rate > 0 else None
            if prober:
                prober.start()
            result.sent, result.seconds, result.received = flood(
                server.udp_port, args.count, args.rate, f"{n}x{secrets.token_hex(3)}", args.auth_fraction
            )
            # The phone keeps registering for a few seconds after the flood (the server
            # is still busy retransmitting 407s), then everything waits out Timer H (and
            # Timer J of the phone's transactions) and nothing may be left.
            time.sleep(min(timer_h, 5.0))
            stop.set()
            if prober:
                prober.join(10)
            deadline = time.monotonic() + timer_h + 30
            time.sleep(timer_h)
            while True:
                left = transactions_left(server, workdir)
                if left == 0 or left is None or time.monotonic() > deadline:
                    break
                time.sleep(1)
            # Quiet again: the server's next full collection (and malloc_trim) is due
            # within a few seconds (vivait_sip/gcpolicy.py); RSS is read after it.
            full_before = gc_count(server, workdir, "full")
            deadline = time.monotonic() + 20
            while full_before is not None and time.monotonic() < deadline:
                time.sleep(1)
                full = gc_count(server, workdir, "full")
                if full is None or full > full_before:
                    break
            time.sleep(args.settle_s)
            result.transactions_left = transactions_left(server, workdir)
            result.rss_mb = rss_mb(pid)
            results.append(result)
            print(f"{n:6d} {result.sent:8d} {result.seconds:12.1f} {result.received:7d} {result.rss_mb:9.0f} "
                  f"{result.transactions_left!s:>8}  {result.probes_ok}/{result.probes_503}/{result.probes_lost}",
                  flush=True)
        final = phone.register()
        phone.close()
        end_status = status(server, workdir) or {}
    finally:
        server.proc.terminate()
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
    pauses = gc_pauses(server.lines)
    summary: dict[str, object] = {
        "mode": args.mode,
        "native": native_state(args.mode),
        "python": platform.python_version(),
        "workers": args.workers,
        "count": args.count,
        "rate": args.rate,
        "t1_ms": args.t1_ms,
        "auth_fraction": args.auth_fraction,
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": [round(r.rss_mb, 1) for r in results],
        "transactions_left": [r.transactions_left for r in results],
        "sent": [r.sent for r in results],
        "flood_seconds": [round(r.seconds, 2) for r in results],
        "received": [r.received for r in results],
        "probes_ok": sum(r.probes_ok for r in results),
        "probes_503": sum(r.probes_503 for r in results),
        "probes_lost": sum(r.probes_lost for r in results),
        "gc_pauses_ge_50ms": len(pauses),
        "gc_pauses_by_generation": {str(g): sorted(ms for gen, ms in pauses if gen == g) for g in sorted({g for g, _ in pauses})},
        # The server's own account (every collection timed, vivait_sip/gcpolicy.py).
        "gc": end_status.get("gc"),
        "overload_episodes": sum("event=overload_start" in line for line in server.lines),
        "internal_errors": sum("event=internal_error" in line for line in server.lines),
        "register_after": final,
    }
    return summary


def native_state(mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "VIVAIT_SIP_PURE"}
    if mode == "pure":
        env["VIVAIT_SIP_PURE"] = "1"
    out = subprocess.run([sys.executable, "-c", "import vivait_sip.native as n; print(n.state)"],
                         capture_output=True, text=True, check=False, env=env, cwd=ROOT)
    return out.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=90000, help="INVITEs per flood")
    parser.add_argument("--rate", type=int, default=3000, help="INVITEs per second")
    parser.add_argument("--floods", type=int, default=3)
    parser.add_argument("--mode", choices=["compiled", "pure"], default="compiled")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--t1-ms", type=int, default=500, help="server T1 (Timer H is 64*T1)")
    parser.add_argument("--auth-fraction", type=float, default=0.0,
                        help="share of INVITEs with valid credentials (480 through a transaction)")
    parser.add_argument("--probe-rate", type=float, default=2.0, help="legitimate REGISTERs per second during a flood")
    parser.add_argument("--settle-s", type=float, default=2.0, help="pause before reading RSS")
    args = parser.parse_args()
    summary = run(args)
    print(json.dumps(summary), flush=True)
    return 0 if summary["register_after"] == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
