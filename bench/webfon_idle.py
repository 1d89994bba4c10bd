"""1,000 idle registered webfon sessions on one node: what they cost the server in memory.

    .venv/bin/python bench/webfon_idle.py --sessions 1000 --hold-s 60 [--workers 1]

Starts a server with that many users (each with a web extension from one pool), then
opens the sessions as the webfon does, browser-free: `POST /api/login` (HA1 check,
session, lease of a pool extension with its own password sent to every worker), a WSS
connection to `/sip` with the session cookie, and a REGISTER of the leased extension
over it (digest, RFC 5626 outbound).  Every session stays open and idle for `--hold-s`
seconds.  RSS is the server's process tree (`/proc`), read before the first login,
once all sessions are registered, and at the end of the hold; the delta per session is
the figure.  `ctl webfon` counts connected and registered sessions at each point.

The clients run in this process (one aiohttp session, one WebSocket each) on the same
machine: their memory is not counted; their CPU shares the cores."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness import Server, loopback_args  # noqa: E402

from vivait_sip.registrar.digest import client_response, parse_challenge  # noqa: E402

FIRST_USER = 60000
FIRST_WEB = 70000
PER_SOURCE = 10


def config(sessions: int, workers: int) -> dict[str, Any]:
    users = [{"number": str(FIRST_USER + i), "name": f"U{i}", "password": f"pw-{i}", "web_pool": "web"}
             for i in range(sessions)]
    return {
        "sip": {"workers": workers},
        "registrar": {"users": users, "web_pools": [{"name": "web", "members": [f"{FIRST_WEB}-{FIRST_WEB + sessions - 1}"]}]},
        "webrtc": {"grace_s": 30},
        "log": {"level": "warning"},
    }


def tree_rss_kb(pid: int) -> int:
    """RSS of `pid` and its descendants, in kB."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
        todo.extend(children.get(current, []))
    return total


def ctl_webfon(server: Server) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "vivait_sip", *server.ctl_args, "webfon", "--json"],
                         capture_output=True, text=True, timeout=60)
    data = json.loads(out.stdout)
    sessions = data.get("sessions", [])
    return {"sessions": len(sessions), "connected": sum(1 for s in sessions if s.get("websockets")),
            "registered": sum(1 for s in sessions if s.get("registered"))}


def register_message(ext: str, call_id: str, cseq: int, auth: str | None) -> str:
    lines = [
        "REGISTER sip:127.0.0.1 SIP/2.0",
        f"Via: SIP/2.0/WSS k3l9df7jal.invalid;branch=z9hG4bK{secrets.token_hex(6)}",
        "Max-Forwards: 70",
        f"From: <sip:{ext}@127.0.0.1>;tag=wf{call_id[:6]}",
        f"To: <sip:{ext}@127.0.0.1>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f'Contact: <sip:wf{ext}@k3l9df7jal.invalid;transport=ws;ob>;+sip.instance="<urn:uuid:{secrets.token_hex(16)}>";reg-id=1',
        "Expires: 600",
        "Supported: outbound, path",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    return "\r\n".join([*lines, "Content-Length: 0", "", ""])


async def open_session(http: aiohttp.ClientSession, base: str, ctx: ssl.SSLContext, index: int,
                       sockets: list[Any]) -> None:
    origin = {"Origin": base}
    async with http.post(f"{base}/api/login", json={"user": str(FIRST_USER + index), "password": f"pw-{index}"},
                         headers=origin, ssl=ctx) as resp:
        data = await resp.json()
        assert resp.status == 200, data
        cookie = resp.cookies["vivait_webfon"].value
    ws = await http.ws_connect(f"{base.replace('https', 'wss')}/sip", protocols=("sip",), ssl=ctx,
                               headers={**origin, "Cookie": f"vivait_webfon={cookie}"})
    ext, password = data["extension"], data["sip"]["password"]
    call_id = secrets.token_hex(8)
    await ws.send_str(register_message(ext, call_id, 1, None))
    reply = await ws.receive_str()
    if reply.startswith("SIP/2.0 401"):
        header = next(line for line in reply.split("\r\n") if line.lower().startswith("www-authenticate:"))
        challenge = parse_challenge(header.split(":", 1)[1].strip())
        auth = client_response(challenge, "REGISTER", "sip:127.0.0.1", ext, password)
        await ws.send_str(register_message(ext, call_id, 2, auth))
        reply = await ws.receive_str()
    assert reply.startswith("SIP/2.0 200"), reply[:200]
    sockets.append(ws)


async def drain(ws: Any) -> None:
    async for _ in ws:  # answers pings; nothing else comes to an idle webfon
        pass


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--hold-s", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.sessions + 1024)), hard))
    tmp = Path(tempfile.mkdtemp(prefix="webfon-idle-"))
    server = Server(tmp, config(args.sessions, args.workers), loopback_args(http=True, tls=False)).start()
    assert server.proc is not None
    pid = server.proc.pid
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} load {os.getloadavg()[0]:.2f} sessions {args.sessions} "
          f"workers {args.workers} hold {args.hold_s:g} s", flush=True)
    try:
        await asyncio.sleep(2.0)
        base_kb = tree_rss_kb(pid)
        base = f"https://127.0.0.1:{server.ports[('http', 'https')]}"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sockets: list[Any] = []
        started = time.monotonic()
        # browsers come from many addresses: PER_SOURCE sessions per loopback address (the
        # server caps connections per address, http.max_connections_per_ip)
        sources = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range((args.sessions + PER_SOURCE - 1) // PER_SOURCE)]
        clients = [aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                         connector=aiohttp.TCPConnector(limit=0, local_addr=(src, 0))) for src in sources]
        async with contextlib.AsyncExitStack() as stack:
            for client in clients:
                await stack.enter_async_context(client)
            gate = asyncio.Semaphore(args.concurrency)

            async def one(i: int) -> None:
                async with gate:
                    await open_session(clients[i // PER_SOURCE], base, ctx, i, sockets)

            await asyncio.gather(*(one(i) for i in range(args.sessions)))
            opened_s = time.monotonic() - started
            readers = [asyncio.ensure_future(drain(ws)) for ws in sockets]
            await asyncio.sleep(5.0)
            counts = ctl_webfon(server)
            loaded_kb = tree_rss_kb(pid)
            print(f"opened {len(sockets)} sessions in {opened_s:.1f} s; {counts}", flush=True)
            await asyncio.sleep(args.hold_s)
            held = ctl_webfon(server)
            held_kb = tree_rss_kb(pid)
            for ws in sockets:
                await ws.close()
            for task in readers:
                task.cancel()
        row = {
            "sessions": len(sockets),
            "registered_after_hold": held["registered"],
            "connected_after_hold": held["connected"],
            "rss_before_mb": round(base_kb / 1024, 1),
            "rss_loaded_mb": round(loaded_kb / 1024, 1),
            "rss_after_hold_mb": round(held_kb / 1024, 1),
            "kb_per_session": round((held_kb - base_kb) / max(1, len(sockets)), 1),
            "open_s": round(opened_s, 1),
        }
        print(" ".join(row))
        print(" ".join(str(v) for v in row.values()), flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
