"""A bounded flood of mutated and random input: the server answers what it can, never dies,
never hits an internal error, and keeps serving."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness import Server, StreamClient, UdpClient, loopback_args, options_request, status_code
from rfc4475_cases import RFC4475_CASES

# Seeds that reach the registrar and the guards, beyond what the torture cases exercise.
EXTRA_SEEDS = [
    (
        b"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.3:5062;branch=z9hG4bKreg1;rport\r\n"
        b"From: <sip:6140@127.0.0.1>;tag=r1\r\nTo: <sip:6140@127.0.0.1>\r\nCall-ID: reg-seed\r\nCSeq: 2 REGISTER\r\n"
        b'Contact: <sip:6140@127.0.0.3:5062;ob>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1;expires=600;q=0.5\r\n'
        b'Authorization: Digest username="6140", realm="vivait", nonce="AAABohZHhw_cecwOK8FQyeCVKXzu1jFj5tcMMCrfGYB8hGOhQwwEJA", '
        b'uri="sip:127.0.0.1", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, cnonce="0a4f113b", qop=auth, nc=00000001\r\n'
        b"Path: <sip:edge.example.com;lr;ob>\r\nSupported: path, outbound\r\nMax-Forwards: 70\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    ),
    (
        b"INVITE sip:6141@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.3:5062;branch=z9hG4bKinv1;rport\r\n"
        b"From: \"Ana\" <sip:6140@127.0.0.1>;tag=i1\r\nTo: <sip:6141@127.0.0.1>\r\nCall-ID: inv-seed\r\nCSeq: 1 INVITE\r\n"
        b"Contact: <sip:6140@127.0.0.3:5062>\r\nProxy-Authorization: Digest username=\"6140\", realm=\"vivait\", nonce=\"x\", "
        b"uri=\"sip:6141@127.0.0.1\", response=\"00\"\r\nContent-Type: application/sdp\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ),
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(4)
        pos = rng.randrange(len(buf)) if buf else 0
        if op == 0 and buf:
            buf[pos] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = rng.choice([b"\r\n", b":", b";", b",", b"<", b">", b'"', b"%", b"\x00", b" ", b"\t"])
        elif op == 2 and buf:
            del buf[pos : pos + rng.randint(1, 16)]
        else:
            buf[pos:pos] = buf[max(0, pos - 40) : pos]
    return bytes(buf)


def test_flood_of_bad_input_hurts_nothing(tmp_path: Path) -> None:
    srv = Server(tmp_path, {"domains": ["example.com"]}, loopback_args(tls=False, http=False)).start()
    rng = random.Random(4475)
    seeds = [case.data for case in RFC4475_CASES] + EXTRA_SEEDS * 10
    try:
        udp_port, tcp_port = srv.sip_port("udp"), srv.sip_port("tcp")
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind(("127.0.0.3", 0))
        sender.setblocking(False)
        for n in range(3000):
            data = mutate(rng, rng.choice(seeds)) if n % 4 else rng.randbytes(rng.randint(0, 1500))
            try:
                sender.sendto(data[:65000], ("127.0.0.1", udp_port))
            except BlockingIOError:
                time.sleep(0.01)
            if n % 200 == 0:
                time.sleep(0.02)  # stay a flood, not a socket-buffer overflow test
        sender.close()
        for _ in range(30):
            stream = StreamClient(tcp_port)
            try:
                stream.send(b"".join(mutate(rng, rng.choice(seeds)) for _ in range(5)))
            except OSError:
                pass  # the server may already have closed the connection on a framing error
            finally:
                stream.close()
        probe = UdpClient()
        try:
            # Right after the flood the server may still be draining it (or shedding with
            # 503 while its loop lags): it must be answering OPTIONS again within seconds.
            answers = []
            for attempt in range(10):
                probe.send(options_request(udp_port, call_id=f"after-flood-{attempt}"), udp_port)
                reply = probe.recv_final(1.0)
                answers.append(None if reply is None else status_code(reply))
                if answers[-1] == 200:
                    break
            assert answers[-1] == 200, answers
        finally:
            probe.close()
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "vivait_sip", *srv.ctl_args, "status", "--json"],
            capture_output=True, text=True, timeout=30,
        ).stdout)
        counters = status["counters"]
        assert counters.get("internal_errors", 0) == 0
        assert counters.get("parse_errors", 0) > 100
        assert srv.proc is not None and srv.proc.poll() is None
    finally:
        assert srv.stop() == 0
