"""Concurrent browser ↔ phone calls through the WebRTC bridge: loss and CPU per call.

    .venv/bin/python bench/webrtc_bench.py --mode builtin,transcode,rtpengine --calls 100,200 --seconds 10

Each call has two ends in this process: a **stand-in browser** (one UDP socket: it sends
ICE connectivity checks — with USE-CANDIDATE, again every 2 s as consent — runs a DTLS
handshake with `media.ice_dtls.DtlsSession` (the same pyOpenSSL/aiortc pieces as the
server, as DTLS client or server as the SDP says), then sends and receives SRTP with the
keys it exported: no decoding, no jitter buffer, no aiortc track machinery) and a
**phone** (one UDP socket, plain RTP).  Both send 20 ms packets; each packet carries its
send time, so the receiver measures loss and the relay's transit.  The calls are set up
with the same offer/answer the B2BUA sends for a browser ↔ phone call (the browser's
SDP with `transport_protocol` RTP/AVP and rtcp-mux demux towards the phone; the phone's
answer back), straight to the media layer, without SIP signalling: the figure is the
media path's.

Modes:
* `builtin`: G.711 both sides (the stand-in offers Opus, PCMU, PCMA as Chrome does; the
  phone answers PCMU): the media workers forward the payload, SRTP on one side.
* `transcode`: the stand-in offers Opus only, sends real Opus (a tone encoded once with
  PyAV); the phone answers PCMU: the media workers transcode both ways.
* `rtpengine`: the same as `builtin` through the real rtpengine daemon (userspace
  forwarding) with the NG flags the rtpengine backend sends (`anchor.webrtc_flags`); the
  stand-in offers `a=ice-lite` and answers rtpengine's checks; rtpengine is DTLS client.

CPU is the media processes' (media workers' `cpu_s`, or rtpengine's /proc times) over
the run; calls per core = calls / cores busy.  The generator shares the machine."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from vivait_sip.media.anchor import DEFAULT_FLAGS, webrtc_flags  # noqa: E402
from vivait_sip.media.client import MediaClient, MediaWorkerSet, spawn_media_workers  # noqa: E402
from vivait_sip.media.control import Answer, CallKey, Delete, Offer  # noqa: E402
from vivait_sip.media.ice_dtls import Certificate, DtlsSession, binding_request, ice_lite_response  # noqa: E402
from vivait_sip.media.ng import RtpengineBackend  # noqa: E402
from vivait_sip.media.protocol import MediaAnswer, MediaDelete, MediaOffer  # noqa: E402
from vivait_sip.media.settings import BuiltinMediaSettings  # noqa: E402
from vivait_sip.sip.sdp import parse_sdp  # noqa: E402

HOST = "127.0.0.1"
_HDR = struct.Struct("!BBHII")
_SENT = struct.Struct("!q")
COUNTING = [False]
TRANSITS = [True]  # payloads carry their send time (not when transcoded)
CERT = Certificate()


def browser_sdp(port: int, ufrag: str, pwd: str, *, opus_only: bool, lite: bool) -> str:
    codecs = "111" if opus_only else "111 0 8 126"
    lines = [
        "v=0", f"o=- {random.getrandbits(60)} 2 IN IP4 {HOST}", "s=-", "t=0 0", "a=group:BUNDLE 0",
        *(["a=ice-lite"] if lite else []),
        f"m=audio {port} UDP/TLS/RTP/SAVPF {codecs}", f"c=IN IP4 {HOST}", "a=rtcp:9 IN IP4 0.0.0.0",
        f"a=candidate:1 1 udp 2113937151 {HOST} {port} typ host generation 0",
        f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", f"a=fingerprint:sha-256 {CERT.fingerprint}", "a=setup:actpass",
        "a=mid:0", "a=sendrecv", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
    ]
    if not opus_only:
        lines += ["a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:126 telephone-event/8000"]
    return "\r\n".join(lines) + "\r\n"


def phone_sdp(port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n")


def opus_frames(count: int = 50) -> list[bytes]:
    """Real Opus packets (a 1 kHz tone, 20 ms, 32 kbit/s) encoded once and replayed."""
    import av
    import numpy as np

    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48000
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = 32000
    encoder.open()
    out: list[bytes] = []
    n = 0
    while len(out) < count:
        samples = (8000 * np.sin(2 * np.pi * 1000 * np.arange(n, n + 960) / 48000)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        n += 960
        out.extend(bytes(p) for p in encoder.encode(frame))
    return out[:count]


@dataclass
class End:
    sock: socket.socket
    port: int
    dest: tuple[str, int] = (HOST, 0)
    ssrc: int = 0
    seq: int = 0
    sent: int = 0
    received: int = 0
    bad: int = 0
    transits: list[float] = field(default_factory=list)
    srtp_in: Any = None
    srtp_out: Any = None
    # the browser's ICE (ours: what the relay checks against when it sends us checks)
    ufrag: str = ""
    pwd: str = ""
    remote_ufrag: str = ""
    remote_pwd: str = ""
    remote_fingerprint: str = ""
    dtls: DtlsSession | None = None
    last_check: float = 0.0


def make_end() -> End:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return End(sock, sock.getsockname()[1], ufrag=secrets.token_hex(4), pwd=secrets.token_hex(12))


def on_readable(end: End) -> None:
    while True:
        try:
            data, addr = end.sock.recvfrom(2048)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            continue
        if not data:
            continue
        first = data[0]
        if first < 4:  # STUN: answer the relay's checks (rtpengine), ignore responses
            result = ice_lite_response(data, addr, end.ufrag, end.pwd)
            if result is not None and not isinstance(result, str):
                end.sock.sendto(result.response, addr)
            continue
        if 20 <= first < 64:
            if end.dtls is not None:
                for out in end.dtls.receive(data, time.monotonic()):
                    end.sock.sendto(out, addr)
            continue
        if 192 <= data[1] <= 223:  # RTCP (muxed)
            continue
        if end.srtp_in is not None:
            try:
                data = end.srtp_in.unprotect(data)
            except Exception:
                end.bad += 1
                continue
        if not COUNTING[0]:
            continue
        end.received += 1
        if TRANSITS[0] and len(data) >= 20 and end.received % 10 == 0:
            sent_ns = _SENT.unpack_from(data, 12)[0]
            if 0 < sent_ns <= time.monotonic_ns():
                end.transits.append((time.monotonic_ns() - sent_ns) / 1e9)


async def connect_browser(end: End, loop: asyncio.AbstractEventLoop, *, client: bool) -> None:
    """ICE check (nominating) and the DTLS handshake, until SRTP keys exist."""
    end.dtls = DtlsSession(CERT, client=client, fingerprints=[("sha-256", end.remote_fingerprint)])
    check = binding_request(f"{end.remote_ufrag}:{end.ufrag}", end.remote_pwd)
    end.sock.sendto(check, end.dest)
    end.last_check = time.monotonic()
    if client:
        for out in end.dtls.start(time.monotonic()):
            end.sock.sendto(out, end.dest)
    deadline = time.monotonic() + 10
    while end.dtls.state != "connected":
        if time.monotonic() > deadline or end.dtls.state == "failed":
            raise RuntimeError(f"DTLS with the relay: {end.dtls.state} {end.dtls.error}")
        await asyncio.sleep(0.01)
        due = end.dtls.deadline()
        if due is not None and due <= time.monotonic():
            for out in end.dtls.on_timer(time.monotonic()):
                end.sock.sendto(out, end.dest)
        if time.monotonic() - end.last_check > 0.5:
            end.sock.sendto(check, end.dest)
            end.last_check = time.monotonic()
    end.srtp_in, end.srtp_out = end.dtls.srtp_in, end.dtls.srtp_out


def sdp_port_and_ice(sdp: str) -> tuple[int, str, str, str, str | None]:
    parsed = parse_sdp(sdp)
    media = parsed.media[0]

    def attr(name: str) -> str:
        value = media.attribute(name) or parsed.attribute(name)
        return value or ""

    return media.port, attr("ice-ufrag"), attr("ice-pwd"), attr("fingerprint").split(" ", 1)[-1], media.attribute("setup")


class BuiltinSide:
    def __init__(self, calls: int, port_base: int) -> None:
        self.settings = BuiltinMediaSettings(workers=1, bind=HOST, port_min=port_base,
                                             port_max=port_base + 4 * calls + 44, rtp_timeout_s=0, socket_buffer=1 << 20)
        self.workers: MediaWorkerSet | None = None
        self.client: MediaClient | None = None

    async def start(self) -> None:
        self.workers, self.client = await spawn_media_workers(self.settings, data_dir=tempfile.mkdtemp(prefix="webrtc-bench-"),
                                                              log_level="warning")

    async def setup(self, n: int, browser: str, phone: str) -> tuple[str, str]:
        assert self.client is not None
        to_phone = (await self.client.request(MediaOffer(f"wb-{n}", "b", browser, transport_protocol="RTP/AVP",
                                                         rtcp_mux="demux")))["sdp"]
        to_browser = (await self.client.request(MediaAnswer(f"wb-{n}", "b", "p", phone)))["sdp"]
        return str(to_phone), str(to_browser)

    async def cpu(self) -> float:
        assert self.client is not None
        return float(sum(s["cpu_s"] for s in await self.client.status()))

    async def delete(self, n: int) -> None:
        assert self.client is not None
        await self.client.request(MediaDelete(f"wb-{n}"))

    async def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.workers is not None:
            await self.workers.stop()


class RtpengineSide:
    def __init__(self, calls: int, port_base: int) -> None:
        self.port_min, self.port_max = port_base, port_base + 4 * calls + 40
        self.ng_port = port_base - 1
        self.proc: subprocess.Popen[bytes] | None = None
        self.backend: RtpengineBackend | None = None

    async def start(self) -> None:
        binary = shutil.which("rtpengine") or "/usr/bin/rtpengine"
        self.proc = subprocess.Popen([
            binary, "--config-file=none", "--foreground", "--log-stderr", "--log-level=3", "--interface=127.0.0.1",
            f"--listen-ng=127.0.0.1:{self.ng_port}", "--table=-1", f"--port-min={self.port_min}",
            f"--port-max={self.port_max}", "--delete-delay=0", "--timeout=60",
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.backend = RtpengineBackend([f"127.0.0.1:{self.ng_port}"], timeout_s=2.0)
        await self.backend.start()
        for _ in range(100):
            from vivait_sip.media.control import Ping

            if (await self.backend.request(Ping())).result == "pong":
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("rtpengine did not answer")

    async def setup(self, n: int, browser: str, phone: str) -> tuple[str, str]:
        assert self.backend is not None
        offer = await self.backend.request(Offer(CallKey(f"wb-{n}", "b"), browser.encode(), webrtc_flags(DEFAULT_FLAGS, False)))
        answer = await self.backend.request(Answer(CallKey(f"wb-{n}", "b", "p"), phone.encode(), webrtc_flags(DEFAULT_FLAGS, True)))
        if not offer.ok or not answer.ok or offer.sdp is None or answer.sdp is None:
            raise RuntimeError(f"rtpengine: {offer.error} {answer.error}")
        return offer.sdp.decode(), answer.sdp.decode()

    async def cpu(self) -> float:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def delete(self, n: int) -> None:
        assert self.backend is not None
        await self.backend.request(Delete(f"wb-{n}"))

    async def stop(self) -> None:
        if self.backend is not None:
            await self.backend.stop()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)


async def run_case(mode: str, calls: int, seconds: float, port_base: int) -> dict[str, Any]:
    side: BuiltinSide | RtpengineSide = RtpengineSide(calls, port_base) if mode == "rtpengine" else BuiltinSide(calls, port_base)
    await side.start()
    loop = asyncio.get_running_loop()
    pairs: list[tuple[End, End]] = []
    opus = opus_frames() if mode == "transcode" else []
    TRANSITS[0] = not opus
    setup_started = time.monotonic()
    try:
        for n in range(calls):
            browser, phone = make_end(), make_end()
            offer = browser_sdp(browser.port, browser.ufrag, browser.pwd, opus_only=mode == "transcode",
                                lite=mode == "rtpengine")
            to_phone, to_browser = await side.setup(n, offer, phone_sdp(phone.port))
            phone.dest = (HOST, parse_sdp(to_phone).media[0].port)
            port, ufrag, pwd, fingerprint, setup = sdp_port_and_ice(to_browser)
            browser.dest = (HOST, port)
            browser.remote_ufrag, browser.remote_pwd = ufrag, pwd
            browser.remote_fingerprint = fingerprint
            browser.ssrc, phone.ssrc = 2 * n + 1, 2 * n + 2
            for end in (browser, phone):
                loop.add_reader(end.sock.fileno(), on_readable, end)
            # we answered passive: the relay is server, the stand-in the client; rtpengine
            # answers active (it is the client)
            await connect_browser(browser, loop, client=(setup or "").strip() != "active")
            pairs.append((browser, phone))
        setup_s = time.monotonic() - setup_started
        cpu0 = await side.cpu()
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic() + 0.1
        COUNTING[0] = True
        ticks = int(seconds / 0.02)
        fill = b"\xff" * (160 - _SENT.size)
        for tick in range(ticks):
            for n in range(calls):
                due = start + tick * 0.02 + n * 0.02 / calls
                delay = due - time.monotonic()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                browser, phone = pairs[n]
                stamp = _SENT.pack(time.monotonic_ns())
                if opus:
                    body = _HDR.pack(0x80, 111, browser.seq & 0xFFFF, (browser.seq * 960) & 0xFFFFFFFF, browser.ssrc) + opus[tick % len(opus)]
                else:
                    body = _HDR.pack(0x80, 0, browser.seq & 0xFFFF, (browser.seq * 160) & 0xFFFFFFFF, browser.ssrc) + stamp + fill
                browser.sock.sendto(browser.srtp_out.protect(body), browser.dest)
                browser.seq += 1
                browser.sent += 1
                phone.sock.sendto(_HDR.pack(0x80, 0, phone.seq & 0xFFFF, (phone.seq * 160) & 0xFFFFFFFF, phone.ssrc) + stamp + fill,
                                  phone.dest)
                phone.seq += 1
                phone.sent += 1
                if tick % 100 == n % 100:  # consent: a check every 2 s per browser
                    browser.sock.sendto(binding_request(f"{browser.remote_ufrag}:{browser.ufrag}", browser.remote_pwd),
                                        browser.dest)
        elapsed = time.monotonic() - start
        await asyncio.sleep(0.3)
        COUNTING[0] = False
        cpu1 = await side.cpu()
        me1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        for browser, phone in pairs:
            for end in (browser, phone):
                loop.remove_reader(end.sock.fileno())
                end.sock.close()
        await side.stop()
    sent = {"to_phone": sum(b.sent for b, _ in pairs), "to_browser": sum(p.sent for _, p in pairs)}
    got = {"to_phone": sum(p.received for _, p in pairs), "to_browser": sum(b.received for b, _ in pairs)}
    loss = {k: round(100.0 * (sent[k] - got[k]) / sent[k], 3) if sent[k] else 0.0 for k in sent}
    transits = sorted(t * 1000 for pair in pairs for end in pair for t in end.transits)
    cpu = (cpu1 - cpu0) / elapsed
    me = (me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime) / elapsed
    return {
        "mode": mode,
        "calls": calls,
        "seconds": round(elapsed, 1),
        "setup_s": round(setup_s, 1),
        "loss_to_phone_pct": loss["to_phone"],
        "loss_to_browser_pct": loss["to_browser"],
        "srtp_bad": sum(b.bad for b, _ in pairs),
        "transit_ms_p50": round(transits[len(transits) // 2], 3) if transits else 0.0,
        "transit_ms_p99": round(transits[int(len(transits) * 0.99)], 3) if transits else 0.0,
        "media_cpu_cores": round(cpu, 3),
        "cpu_ms_per_call_s": round(1000 * cpu / calls, 3),
        "calls_per_core": round(calls / cpu) if cpu else 0,
        "generator_cpu_cores": round(me, 3),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="builtin,transcode,rtpengine")
    parser.add_argument("--calls", default="100,200")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--port-base", type=int, default=26000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} load {os.getloadavg()[0]:.2f} cores {os.cpu_count()} generator loop {loop_name}",
          flush=True)
    columns = None
    for mode in args.mode.split(","):
        for calls in (int(c) for c in args.calls.split(",")):
            row = await run_case(mode, calls, args.seconds, args.port_base)
            if columns is None:
                columns = list(row)
                print(" ".join(columns))
            print(" ".join(str(row[c]) for c in columns), flush=True)
            print(f"# load {os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    sys.exit(asyncio.run(main()))
