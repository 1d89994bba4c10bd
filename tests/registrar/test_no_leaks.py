"""Thousands of REGISTERs through the core and the registrar leave no parsed objects behind.

Runs on whatever `vivait_sip.native` selected: in CI the mypyc-compiled modules.  Under
SIPp load the compiled server once kept parsed URIs, Vias and CSeqs alive (629 MB per
worker and 1.1-second collections after 20 s at 12,000 registrations/s; 303 MB and
collections under 0.13 s once fixed).  Two fixes: chained assignments
(`x = d[k] = value`) in the compiled modules became plain statements, and the decoded-
header cache is replaced on a change instead of `dict.clear()`-ed (compiled, the clear()
left every cached URI, name-addr and CSeq alive: this test caught that one, 2 URIs, a
name-addr and a CSeq per request whose Via got `received`/`rport`).  It walks the same
paths (digest challenge, authenticated REGISTER, trusted trunk).
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from vivait_sip.app import Application
from vivait_sip.config import Config
from vivait_sip.registrar.digest import client_response, parse_challenge
from vivait_sip.registrar.feature import RegistrarFeature
from vivait_sip.sip.peer import Peer

pytestmark = pytest.mark.timeout(60)

PARSED_TYPES = ("SipUri", "NameAddr", "Via", "CSeq", "Request", "Response", "Incoming", "DigestCredentials")
ROUNDS = 1500


def register(user: str, n: int, cseq: int, host: str, auth: str | None = None) -> bytes:
    lines = [
        "REGISTER sip:127.0.0.1 SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:5062;branch=z9hG4bK-{user}-{n}-{cseq};rport",
        f"From: <sip:{user}@127.0.0.1>;tag=f{n}",
        f"To: <sip:{user}@127.0.0.1>",
        f"Call-ID: leak-{user}-{n}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{user}@{host}:5062>",
        "Max-Forwards: 70",
        "Expires: 600",
    ]
    if auth:
        lines.append(auth)
    return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()


def live_parsed_objects() -> Counter[str]:
    gc.collect()
    return Counter(name for o in gc.get_objects() if (name := type(o).__name__) in PARSED_TYPES)


async def grown_after_rounds(tmp_path: Path) -> dict[str, int]:
    """Parsed objects still alive after ROUNDS rounds, by type (only the ones that grew)."""
    config = Config.model_validate(
        {
            "data_dir": str(tmp_path),
            "registrar": {
                "algorithms": ["MD5"],
                "users": [{"number": str(n), "password": f"pw-{n}"} for n in range(7000, 7010)],
                "trunks": [{"name": "carrier", "networks": ["192.0.2.0/24"]}],
            },
        }
    )
    app = Application(config)
    sent: list[bytes] = []
    app.core._send = lambda data, peer, tx_id: sent.append(data)
    app.core.add_local_address("127.0.0.1")
    feature = app.feature(RegistrarFeature)
    assert feature is not None
    await feature.start()
    phone, trunk = Peer("udp", "127.0.0.1", 5062), Peer("udp", "192.0.2.1", 5062)
    before = live_parsed_objects()
    for n in range(ROUNDS):
        user = str(7000 + n % 10)
        # Digest: a stateless 401, then the authenticated REGISTER with its transaction.
        sent.clear()
        app.core.on_message(register(user, n, 1, "127.0.0.1"), phone)
        challenge = parse_challenge(sent[0].split(b"WWW-Authenticate: ", 1)[1].split(b"\r\n", 1)[0].decode())
        answer = client_response(challenge, "REGISTER", "sip:127.0.0.1", user, f"pw-{user}", nc=1)
        app.core.on_message(register(user, n, 2, "127.0.0.1", f"Authorization: {answer}"), phone)
        assert sent[-1].startswith(b"SIP/2.0 200 OK")
        # A trunk: trusted by source, no digest.
        app.core.on_message(register(user, n, 1, "192.0.2.1"), trunk)
        assert sent[-1].startswith(b"SIP/2.0 200 OK")
    sent.clear()
    after = live_parsed_objects()
    await feature.stop()
    return {name: after[name] - before[name] for name in PARSED_TYPES if after[name] - before[name] > 20}


def test_register_paths_leave_no_parsed_objects_behind(tmp_path: Path) -> None:
    # A fresh interpreter: nothing another test left alive blurs the count.
    run = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    grown = json.loads(run.stdout.strip().splitlines()[-1])
    assert grown == {}, f"parsed objects kept alive after {ROUNDS} rounds: {grown}"


if __name__ == "__main__":
    print(json.dumps(asyncio.run(grown_after_rounds(Path(sys.argv[1])))))
