"""Every RFC 4475 torture case against the running server, over UDP and over TCP.

Each case must get what the RFC expects (processed, 400 naming the fault, 505, 416, 420,
or nothing for responses), and the server must answer an OPTIONS within 1 s afterwards.

Torture messages carry Vias like `SIP/2.0/UDP 192.0.2.2` without rport, so RFC 3261
§18.2.2 sends the UDP answer to the source IP and the Via's port (5060 when absent).  The
client therefore sends from 127.0.0.2:5060 and also listens on 127.0.0.2:PORT for a Via
naming another port.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator

import pytest
from harness import Server, StreamClient, UdpClient, loopback_args, options_request, status_code
from rfc4475_cases import RFC4475_CASES, TortureCase

from vivait_sip.sip.errors import SipParseError
from vivait_sip.sip.message import parse_message

CLIENT_HOST = "127.0.0.2"
_VIA_PORT = re.compile(rb"^(?:via|v)\s*:\s*SIP\s*/\s*2\.0\s*/\s*UDP\s+[^\s;:,]+:(\d+)", re.IGNORECASE | re.MULTILINE)


_CALL_ID = re.compile(rb"^(?:call-id|i)\s*:\s*(\S+)", re.IGNORECASE | re.MULTILINE)


# RFC 4475 reuses branches (z9hG4bKkdjuw) across messages meant for a fresh element.  With
# T1 = 10 ms a transaction lives 64*T1 = 0.64 s, and a case whose (branch, sent-by, method)
# an earlier case already used waits that long, so it is not taken for a retransmission.
T1_S = 0.01
_last_sent: dict[tuple[int, tuple[str, str, str]], float] = {}


def _start(tmp_path_factory: pytest.TempPathFactory) -> Server:
    config = {"domains": ["example.com"], "sip": {"timers": {"t1_ms": int(T1_S * 1000), "t2_ms": 100}}}
    return Server(tmp_path_factory.mktemp("rfc4475"), config, loopback_args(tls=False, http=False)).start()


def wait_if_transaction_alive(server: Server, case: TortureCase) -> None:
    try:
        msg = parse_message(case.data)
        via = msg.top_via
        key = (via.branch or "", via.sent_by, "INVITE" if msg.cseq.method == "ACK" else msg.cseq.method)
    except SipParseError:
        return
    slot = (id(server), key)
    if slot in _last_sent:
        time.sleep(max(0.0, _last_sent[slot] + 64 * T1_S + 0.1 - time.monotonic()))
    _last_sent[slot] = time.monotonic()


# One server per transport: the same torture message (same branch) sent over UDP and then
# TCP would otherwise match the UDP transaction as a retransmission (RFC 3261 §17.2.3).
@pytest.fixture(scope="module")
def udp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = _start(tmp_path_factory)
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def tcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = _start(tmp_path_factory)
    yield srv
    srv.kill()


def same_call(case: TortureCase, responses: list[bytes]) -> list[bytes]:
    """Drop retransmitted answers to earlier cases (INVITE finals repeat until ACKed)."""
    match = _CALL_ID.search(case.data)
    if match is None:
        return responses
    return [r for r in responses if (m := _CALL_ID.search(r)) is None or m.group(1) == match.group(1)]


def check(case: TortureCase, responses: list[bytes]) -> None:
    finals = [r for r in responses if not r.startswith(b"SIP/2.0 1")]
    codes = [status_code(r) for r in finals]
    got = codes[0] if codes else None
    expect = case.expect
    if expect == "drop":
        assert responses == [], f"{case.name}: a response must never be answered"
    elif expect == "400_or_drop":
        assert got in (None, 400), f"{case.name}: got {got}"
    elif expect == "non400":
        assert responses, f"{case.name}: no response"
        assert got != 400, f"{case.name}: valid message rejected: {finals[0][:200]!r}"
    elif expect == "any":
        assert responses, f"{case.name}: no response"
    elif expect == "4xx":
        assert got is not None and 400 <= got < 500, f"{case.name}: got {got}"
    elif expect == "416_or_404":
        assert got in (416, 404), f"{case.name}: got {got}"
    elif expect == "501_or_400":
        assert got in (501, 400), f"{case.name}: got {got}"
    else:
        assert got == int(expect), f"{case.name}: expected {expect}, got {got}"
    if expect == "400" and case.fault:
        reason = finals[0].split(b"\r\n", 1)[0].decode("utf-8", "replace")
        assert reason.startswith("SIP/2.0 400 "), reason
        assert len(reason) > len("SIP/2.0 400 Bad Request"), f"{case.name}: reason names no fault: {reason}"


def collect_udp(case: TortureCase, sockets: list[socket.socket], window: float) -> list[bytes]:
    """Responses to this case's call until its final answer (or the whole window for drops)."""
    out: list[bytes] = []
    deadline = time.monotonic() + window
    while (left := deadline - time.monotonic()) > 0:
        for sock in sockets:
            sock.settimeout(min(left, 0.05))
            with contextlib.suppress(TimeoutError):
                out.append(sock.recvfrom(65535)[0])
        out = same_call(case, out)
        if window > 1 and any(not r.startswith(b"SIP/2.0 1") for r in out):
            break
    return out


def assert_still_serving(server: Server, tag: str) -> None:
    probe = UdpClient()
    try:
        probe.send(options_request(server.sip_port("udp"), call_id=f"alive-{tag}"), server.sip_port("udp"))
        assert status_code(probe.recv_final(1.0)) == 200
    finally:
        probe.close()


@pytest.mark.parametrize("case", RFC4475_CASES, ids=[c.name for c in RFC4475_CASES])
def test_over_udp(udp_server: Server, case: TortureCase) -> None:
    server = udp_server
    main = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    main.bind((CLIENT_HOST, 5060))
    sockets = [main]
    match = _VIA_PORT.search(case.data)
    if match and int(match.group(1)) != 5060:
        extra = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        extra.bind((CLIENT_HOST, int(match.group(1))))
        sockets.append(extra)
    try:
        wait_if_transaction_alive(server, case)
        main.sendto(case.data, ("127.0.0.1", server.sip_port("udp")))
        window = 0.4 if case.expect in ("drop", "400_or_drop") else 2.0
        check(case, collect_udp(case, sockets, window))
    finally:
        for sock in sockets:
            sock.close()
    assert_still_serving(server, f"udp-{case.name}")


@pytest.mark.parametrize("case", RFC4475_CASES, ids=[c.name for c in RFC4475_CASES])
def test_over_tcp(tcp_server: Server, case: TortureCase) -> None:
    server = tcp_server
    client = StreamClient(server.sip_port("tcp"))
    try:
        wait_if_transaction_alive(server, case)
        client.send(case.data)
        if case.stream == "incomplete":
            # Content-Length beyond the data: a stream receiver can only wait for more.
            assert client.recv(0.4) is None
        elif case.stream == "error":
            # Unrecoverable framing error: the connection is closed (a 400 first is allowed).
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and not client.closed():
                time.sleep(0.05)
            assert client.closed(), f"{case.name}: connection left open after a framing error"
        else:
            responses: list[bytes] = []
            wanted = 2 if case.stream == "two" else 1
            window = 0.4 if case.expect in ("drop", "400_or_drop") else 2.0
            deadline = time.monotonic() + window
            while (left := deadline - time.monotonic()) > 0:
                msg = client.recv(left)
                if msg is None:
                    break
                responses.append(msg)
                if sum(not r.startswith(b"SIP/2.0 1") for r in responses) >= wanted:
                    break
            check(case, responses)
            if case.stream == "two":
                finals = [r for r in responses if not r.startswith(b"SIP/2.0 1")]
                assert len(finals) == 2, f"{case.name}: both messages on the stream must be answered"
    finally:
        client.close()
    assert_still_serving(server, f"tcp-{case.name}")
