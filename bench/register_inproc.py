"""In-process cost of one REGISTER: the core and the registrar, no sockets, one core.

    .venv/bin/python bench/register_inproc.py [--count 100000] [--auth] [--profile]
    /other/checkout/.venv/bin/python bench/register_inproc.py --root /other/checkout

Feeds SIPp-like REGISTERs (10,000 users re-registering in turn, new Call-ID each, as
bench/reg_noauth.xml sends them) to `SipCore.on_message` of a real `Application`, inside a
running event loop so the location service's write-behind flush to SQLite runs as in the
server.  Prints µs per REGISTER (wall and CPU), and with --profile the top of a cProfile
(pure-Python mode shows where the time goes; compiled, mypyc functions are opaque).
What this leaves out, next to bench/cpu_per_request.py's figure for the same work: the
recvmsg/sendmsg system calls, the event loop and the wake-ups of a process that sleeps
between datagrams.  --root runs another checkout's code (before/after comparisons).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import inspect
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--count", type=int, default=100_000)
parser.add_argument("--users", type=int, default=10_000)
parser.add_argument("--auth", action="store_true", help="401 then an authenticated REGISTER (per registration)")
parser.add_argument("--profile", action="store_true")
parser.add_argument("--pace", type=float, default=0.0, metavar="RATE",
                    help="one REGISTER at a time at RATE/s, the loop asleep in between as in the server "
                    "(the CPU of the same paced loop without REGISTERs is measured and subtracted)")
parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
args = parser.parse_args()
_root_python = args.root / ".venv" / "bin" / "python"
if _root_python.exists() and Path(sys.prefix).resolve() != (args.root / ".venv").resolve():
    # Another checkout's install maps `vivait_sip` to its own tree (an editable install's
    # import hook wins over sys.path): run this script under that checkout's Python.
    os.execv(str(_root_python), [str(_root_python), __file__, *sys.argv[1:]])
sys.path.insert(0, str(args.root))

import vivait_sip.native as native  # noqa: E402
from vivait_sip.app import Application, tune_gc  # noqa: E402
from vivait_sip.config import Config  # noqa: E402
from vivait_sip.registrar import feature as registrar_feature  # noqa: E402
from vivait_sip.registrar.digest import client_response, parse_challenge  # noqa: E402
from vivait_sip.sip.peer import Peer  # noqa: E402

SIPP = Peer("udp", "127.0.0.1", 5080)


def register(user: int, n: int, cseq: int = 1, auth: str | None = None) -> bytes:
    lines = [
        "REGISTER sip:127.0.0.1 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-{n}-{cseq}",
        f"From: <sip:{user}@127.0.0.1>;tag=1234b{n}",
        f"To: <sip:{user}@127.0.0.1>",
        f"Call-ID: {n}-4321@127.0.0.1",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{user}@127.0.0.1:5080;transport=UDP>",
        "Max-Forwards: 70",
        "Expires: 3600",
        "User-Agent: SIPp-bench",
    ]
    if auth:
        lines.append(auth)
    return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()


async def paced(work: Callable[[int], object], count: int) -> float:
    """`work(n)` for `count` n at `args.pace` per second, sleeping in the event loop in
    between (a timer per step, as a datagram's readiness wakes the server); its CPU time."""
    loop = asyncio.get_running_loop()
    step = 1 / args.pace
    c0 = time.process_time()
    start = loop.time()
    for i in range(count):
        work(args.users + i)
        delay = start + (i + 1) * step - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
    return time.process_time() - c0


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        registrar: dict[str, object] = {
            "algorithms": ["MD5"],
            "users": [{"number": str(n), "password": "secret"} for n in range(100000, 100000 + args.users)],
        }
        if not args.auth:
            registrar["trunks"] = [{"name": "bench", "networks": ["127.0.0.0/8"]}]
        config = Config.model_validate({"data_dir": tmp, "registrar": registrar, "log": {"level": "warning"},
                                        "sip": {"limits": {"max_transactions": 200000}}})
        app = Application(config)
        sent: list[bytes] = []
        core = app.core
        if len(inspect.signature(core._send).parameters) == 3:
            core._send = lambda data, peer, tx_id=None: sent.append(data)
        else:  # before the user-agent layer
            core._send = lambda data, peer: sent.append(data)
        core.add_local_address("127.0.0.1")
        feature = app.feature(registrar_feature.RegistrarFeature) if hasattr(app, "feature") else None
        if feature is None:
            feature = registrar_feature.RegistrarFeature(app)
        started = feature.start()
        if inspect.isawaitable(started):
            await started
        tune_gc()
        on_message = core.on_message

        def one(n: int) -> None:
            user = 100000 + n % args.users
            if not args.auth:
                on_message(register(user, n), SIPP)
                return
            sent.clear()
            on_message(register(user, n), SIPP)
            challenge = parse_challenge(sent[0].split(b"WWW-Authenticate: ", 1)[1].split(b"\r\n", 1)[0].decode())
            answer = client_response(challenge, "REGISTER", "sip:127.0.0.1", str(user), "secret", nc=1)
            on_message(register(user, n, 2, f"Authorization: {answer}"), SIPP)

        for n in range(args.users):  # every user bound once: the run measures refreshes
            one(n)
        await asyncio.sleep(0.5)
        sent.clear()
        prof = cProfile.Profile() if args.profile else None
        gen0 = gc.get_stats()[0]["collections"]
        t0, c0 = time.perf_counter(), time.process_time()
        if prof:
            prof.enable()
        if args.pace:
            idle_cpu = await paced(lambda n: None, args.count)
            c0 = time.process_time()
            await paced(lambda n: (one(n), sent.clear()), args.count)
            c0 += idle_cpu  # what the pacing itself cost
        else:
            batch = 1000
            for start in range(args.users, args.users + args.count, batch):
                for n in range(start, start + batch):
                    one(n)
                sent.clear()
                await asyncio.sleep(0)  # let the write-behind flush run, as the server's loop would
        if prof:
            prof.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        what = "registration (401 + 200)" if args.auth else "REGISTER"
        print(f"{native.state} ({args.root}): {args.count} x {what}: {wall / args.count * 1e6:.1f} µs wall, "
              f"{cpu / args.count * 1e6:.1f} µs CPU each; gen-0 collections {gc.get_stats()[0]['collections'] - gen0}")
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
        stop = feature.stop()
        if inspect.isawaitable(stop):
            await stop


try:  # the server's event loop (vivait_sip/cli.py installs uvloop when it is there)
    import uvloop

    uvloop.install()
except ImportError:
    pass
asyncio.run(main())
