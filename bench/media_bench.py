"""Relayed G.711 calls through the built-in media backend: loss, added jitter, CPU per call.

    .venv/bin/python bench/media_bench.py --workers 1,2 --calls 100,200 --seconds 10

For each (media workers, calls): starts the media worker processes (client.spawn_media_workers),
sets up every call with offer/answer (two UDP sockets of this process per call: the
phones), then sends 20 ms G.711 packets both ways for `--seconds`, the calls' phases
spread over the 20 ms.  Each packet carries its send time, so the receiver measures the
relay's own effect: loss (packets not received), added jitter (RFC 3550 A.8 over the
one-way transit times, so the sender's own pacing cancels out), transit p50/p99.  CPU per
call is the media workers' CPU time (from their status) over the run, per call; calls per
core = calls / (CPU seconds per second).  The load generator runs in this process and
shares the machine's cores with the workers: its CPU is printed too.

`--mode record` records every call as well (stereo WAV in a temporary spool); `--mode play`
sends nothing from the phones and plays music on hold to both parties of every call
(2 streams per call; jitter then from RFC 3550 A.8 on the RTP timestamps, i.e. the
player's pacing).  The CPU difference to `relay` is the recorder's or player's cost.

`--backend builtin,rtpengine` runs the same load through the Debian rtpengine daemon too
(userspace forwarding, no kernel module; `--num-threads` = the worker count), set up with
NG offer/answer (ICE removed, origin and connection replaced, as the rtpengine backend
does); its CPU is the daemon's own (/proc/PID/stat).  `vs_builtin` is the built-in
backend's calls per core over rtpengine's at the same workers and calls (relay mode).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vivait_sip.media.client import spawn_media_workers
from vivait_sip.media.ng import NgClient, NgError
from vivait_sip.media.protocol import MediaPlay, MediaRecordStart
from vivait_sip.media.settings import BuiltinMediaSettings
from vivait_sip.sip.sdp import parse_sdp

HOST = "127.0.0.1"
_HDR = struct.Struct("!BBHII")
_SENT = struct.Struct("!q")


def sdp(port: int) -> str:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n"
    )


MODE = "relay"
COUNTING = [False]


@dataclass
class Phone:
    sock: socket.socket
    port: int
    relay_port: int = 0  # where it sends (our port facing it)
    ssrc: int = 0
    seq: int = 0
    sent: int = 0
    received: int = 0
    jitter: float = 0.0
    last_transit: float | None = None
    transits: list[float] = field(default_factory=list)


def make_phone() -> Phone:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return Phone(sock, sock.getsockname()[1])


def on_readable(phone: Phone) -> None:
    while True:
        try:
            data = phone.sock.recv(2048)
        except (BlockingIOError, InterruptedError):
            return
        if not COUNTING[0]:
            continue
        now = time.monotonic_ns()
        if MODE == "play":
            transit = now / 1e9 - _HDR.unpack_from(data)[3] / 8000
        else:
            transit = (now - _SENT.unpack_from(data, 12)[0]) / 1e9
        phone.received += 1
        if phone.last_transit is not None:
            d = abs(transit - phone.last_transit)
            phone.jitter += (d - phone.jitter) / 16
        phone.last_transit = transit
        if phone.received % 10 == 0 and MODE != "play":
            phone.transits.append(transit)


class Builtin:
    """The built-in backend: media worker processes, driven through `MediaClient`."""

    name = "builtin"

    async def start(self, workers: int, calls: int, port_base: int) -> None:
        settings = BuiltinMediaSettings(
            workers=workers, bind=HOST, port_min=port_base, port_max=port_base + 4 * calls + 4 * workers + 40,
            rtp_timeout_s=0, socket_buffer=1 << 20,
        )
        data_dir = tempfile.mkdtemp(prefix="media-bench-")
        self.media, self.client = await spawn_media_workers(settings, data_dir=data_dir, log_level="warning")

    async def call(self, n: int, a: Phone, b: Phone) -> tuple[int, int]:
        to_b = await self.client.offer(f"bench-{n}", "a", sdp(a.port))
        to_a = await self.client.answer(f"bench-{n}", "a", "b", sdp(b.port))
        if MODE == "record":
            await self.client.request(MediaRecordStart(f"bench-{n}"))
        elif MODE == "play":
            for tag in ("a", "b"):
                await self.client.request(MediaPlay(f"bench-{n}", tag, moh="default"))
        return parse_sdp(to_a).media[0].port, parse_sdp(to_b).media[0].port

    async def cpu_s(self) -> float:
        return float(sum(s["cpu_s"] for s in await self.client.status()))

    async def stop(self) -> None:
        self.client.close()
        await self.media.stop()


class Rtpengine:
    """The Debian rtpengine daemon, userspace forwarding, driven over NG."""

    name = "rtpengine"

    async def start(self, workers: int, calls: int, port_base: int) -> None:
        if MODE != "relay":
            raise SystemExit("rtpengine: --mode relay only")
        binary = shutil.which("rtpengine")
        if binary is None:
            raise SystemExit("rtpengine: not installed (Debian package rtpengine-daemon)")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((HOST, 0))
            ng_port = probe.getsockname()[1]
        self.log = Path(tempfile.mkstemp(prefix="rtpengine-bench-", suffix=".log")[1])
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [binary, "--config-file=none", "--foreground", "--log-stderr", "--log-level=3", f"--interface={HOST}",
                 f"--listen-ng={HOST}:{ng_port}", "--table=-1", f"--port-min={port_base}",
                 f"--port-max={port_base + 4 * calls + 40}", "--delete-delay=0", f"--num-threads={workers}",
                 f"--media-num-threads={workers}", "--timeout=600"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        self.client = NgClient(HOST, ng_port, timeout_s=2.0, retransmit_s=0.2)
        for _ in range(100):
            try:
                await self.client.request({"command": "ping"})
                return
            except NgError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"rtpengine exited {self.proc.returncode}: see {self.log}") from None
                await asyncio.sleep(0.05)
        raise SystemExit(f"rtpengine did not answer: see {self.log}")

    async def call(self, n: int, a: Phone, b: Phone) -> tuple[int, int]:
        common = {"call-id": f"bench-{n}", "from-tag": "a", "ICE": "remove", "replace": ["origin", "session-connection"]}
        offer = await self.client.request({**common, "command": "offer", "sdp": sdp(a.port)})
        answer = await self.client.request({**common, "command": "answer", "to-tag": "b", "sdp": sdp(b.port)})
        to_b, to_a = (_ng_sdp(reply) for reply in (offer, answer))
        return parse_sdp(to_a).media[0].port, parse_sdp(to_b).media[0].port

    async def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    async def stop(self) -> None:
        await self.client.stop()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _ng_sdp(reply: object) -> str:
    found = reply.get("sdp") if isinstance(reply, dict) else None
    if not isinstance(reply, dict) or reply.get("result") != b"ok" or not isinstance(found, bytes):
        raise SystemExit(f"rtpengine refused: {reply!r}")
    return found.decode()


async def run_case(backend_name: str, workers: int, calls: int, seconds: float, port_base: int) -> dict[str, object]:
    backend: Builtin | Rtpengine = Builtin() if backend_name == "builtin" else Rtpengine()
    await backend.start(workers, calls, port_base)
    loop = asyncio.get_running_loop()
    pairs: list[tuple[Phone, Phone]] = []
    try:
        for n in range(calls):
            a, b = make_phone(), make_phone()
            a.relay_port, b.relay_port = await backend.call(n, a, b)
            a.ssrc, b.ssrc = 2 * n + 1, 2 * n + 2
            for phone in (a, b):
                loop.add_reader(phone.sock.fileno(), on_readable, phone)
            pairs.append((a, b))
        # phases spread over the 20 ms: call n sends at n * 20 / calls ms
        payload_fill = b"\xff" * (160 - _SENT.size)
        cpu0 = await backend.cpu_s()
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic() + 0.1
        COUNTING[0] = True
        counting_since = time.monotonic()
        ticks = int(seconds / 0.02)
        order = sorted(range(calls), key=lambda n: n * 20.0 / calls)
        for tick in range(ticks):
            for n in order:
                due = start + tick * 0.02 + n * 0.02 / calls
                delay = due - time.monotonic()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                for phone in pairs[n]:
                    if MODE == "play":
                        phone.sent += 1
                        continue
                    head = _HDR.pack(0x80, 0, phone.seq & 0xFFFF, (phone.seq * 160) & 0xFFFFFFFF, phone.ssrc)
                    phone.sock.sendto(head + _SENT.pack(time.monotonic_ns()) + payload_fill, (HOST, phone.relay_port))
                    phone.seq += 1
                    phone.sent += 1
        elapsed = time.monotonic() - start
        if MODE == "play":
            COUNTING[0] = False
            window = time.monotonic() - counting_since
            for phone in (p for pair in pairs for p in pair):
                phone.sent = round(window / 0.02)
        await asyncio.sleep(0.3)  # the last packets in flight
        COUNTING[0] = False
        cpu1 = await backend.cpu_s()
        me1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        for a, b in pairs:
            for phone in (a, b):
                loop.remove_reader(phone.sock.fileno())
                phone.sock.close()
        await backend.stop()
    phones = [p for pair in pairs for p in pair]
    sent = sum(p.sent for p in phones)
    received = sum(p.received for p in phones)
    jitters = [p.jitter * 1000 for p in phones]
    transits = sorted(t * 1000 for p in phones for t in p.transits)
    cpu = (cpu1 - cpu0) / elapsed  # media workers' cores busy
    me = (me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime) / elapsed
    return {
        "backend": backend_name,
        "mode": MODE,
        "workers": workers,
        "calls": calls,
        "seconds": round(elapsed, 1),
        "sent": sent,
        "loss_pct": round(100.0 * (sent - received) / sent, 3) if sent else 0.0,
        "jitter_ms_mean": round(statistics.fmean(jitters), 3),
        "jitter_ms_max": round(max(jitters), 3),
        "transit_ms_p50": round(transits[len(transits) // 2], 3) if transits else 0.0,
        "transit_ms_p99": round(transits[int(len(transits) * 0.99)], 3) if transits else 0.0,
        "media_cpu_cores": round(cpu, 3),
        "cpu_ms_per_call_s": round(1000 * cpu / calls, 3),
        "calls_per_core": round(calls / cpu) if cpu else 0,
        "generator_cpu_cores": round(me, 3),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="media worker counts to run, comma-separated")
    parser.add_argument("--calls", default="100,200", help="concurrent calls, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--port-base", type=int, default=24000)
    parser.add_argument("--mode", choices=("relay", "record", "play"), default="relay")
    parser.add_argument("--backend", default="builtin,rtpengine" if shutil.which("rtpengine") else "builtin",
                        help="builtin, rtpengine or both (comma-separated; default both when rtpengine is installed)")
    args = parser.parse_args()
    global MODE
    MODE = args.mode
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} load {os.getloadavg()[0]:.2f} cores {os.cpu_count()} generator loop {loop_name}")
    columns = None
    per_core: dict[tuple[int, int], object] = {}
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    for workers in (int(w) for w in args.workers.split(",")):
        for calls in (int(c) for c in args.calls.split(",")):
            for backend in backends:  # the backends one after the other at each load
                row = await run_case(backend, workers, calls, args.seconds, args.port_base)
                if backend == "builtin":
                    per_core[(workers, calls)] = row["calls_per_core"]
                builtin = per_core.get((workers, calls))
                ours = builtin if isinstance(builtin, (int, float)) else 0
                theirs = row["calls_per_core"] if isinstance(row["calls_per_core"], (int, float)) else 0
                row["vs_builtin"] = round(ours / theirs, 2) if backend != "builtin" and ours and theirs else "-"
                if columns is None:
                    columns = list(row)
                    print(" ".join(columns))
                print(" ".join(str(row[c]) for c in columns), flush=True)
                await asyncio.sleep(1.0)  # sockets closed, the next backend starts clean
    return 0


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    sys.exit(asyncio.run(main()))
