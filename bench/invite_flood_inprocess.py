"""The INVITE flood of bench/invite_flood.py without sockets: what SipCore and the
registrar keep, separated from what the allocator keeps.

    python bench/invite_flood_inprocess.py [--count 90000] [--floods 4] [--trace]
    VIVAIT_SIP_PURE=1 python bench/invite_flood_inprocess.py ...

Feeds `--count` unauthenticated INVITEs per flood straight into `SipCore.on_message`
with a fake clock running at 3,000 INVITEs/s (timers fire as they would), runs every
timer out after each flood, and prints the transactions left, RSS before and after
`malloc_trim`, and with `--trace` the memory tracemalloc sees (constant from flood to
flood when nothing is kept) and the object types whose count changed.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vivait_sip.registrar.feature as registrar_feature
from vivait_sip import native
from vivait_sip.app import Application
from vivait_sip.config import Config
from vivait_sip.gcpolicy import tune_gc
from vivait_sip.sip.peer import Peer


def invite(run: int, n: int) -> bytes:
    return (
        f"INVITE sip:7001@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-{run}-{n};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:flood@127.0.0.1>;tag=f{run}{n}\r\nTo: <sip:7001@127.0.0.1>\r\n"
        f"Call-ID: flood-{run}-{n}@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:flood@127.0.0.1:5062>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main(count: int, floods: int, trace: bool) -> None:
    data_dir = tempfile.mkdtemp(prefix="invite-flood-inprocess-")
    config = Config.model_validate(
        {"data_dir": data_dir, "registrar": {"algorithms": ["MD5"], "users": [{"number": "7001", "password": "x"}]}}
    )
    app = Application(config)
    now = [1000.0]
    core = app.core
    core.clock = lambda: now[0]
    core._send = lambda data, peer: None
    core.add_local_address("127.0.0.1")
    feature = registrar_feature.RegistrarFeature(app)
    feature.start()
    tune_gc()
    trim = ctypes.CDLL("libc.so.6").malloc_trim
    if trace:
        tracemalloc.start()
    print(f"{native.state}: RSS at start {rss_mb():.0f} MB")
    base: Counter[str] | None = None
    for run in range(floods):
        for n in range(count):
            core.on_message(invite(run, n), Peer("udp", "127.0.0.1", 5062))
            if n % 30 == 0:  # 3,000/s: 30 INVITEs per 10 ms
                now[0] += 0.01
                core.tl.handle_timers(now[0])
                core._drain()
        for _ in range(50):
            now[0] += 1
            core.tl.handle_timers(now[0])
            core._drain()
        gc.collect()
        before_trim = rss_mb()
        trim(0)
        counts = Counter(type(o).__name__ for o in gc.get_objects())
        base = base or counts
        changed = {k: counts[k] - base[k] for k in counts if abs(counts[k] - base[k]) > 50}
        traced = f"{tracemalloc.get_traced_memory()[0] / 1e6:.1f} MB" if trace else "-"
        print(f"flood {run + 1}: transactions {len(core.tl)}, RSS {before_trim:.0f} MB, after malloc_trim "
              f"{rss_mb():.0f} MB, traced {traced}, objects changed since flood 1: {changed}")
    await feature.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=90000)
    parser.add_argument("--floods", type=int, default=4)
    parser.add_argument("--trace", action="store_true", help="tracemalloc (about 8x slower)")
    args = parser.parse_args()
    asyncio.run(main(args.count, args.floods, args.trace))
