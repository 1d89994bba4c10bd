"""The B2BUA's life with calls in it, against SIPp, with one and two workers.

* `kill -9` during traffic (the PRI gateway makes 1 s calls to a user's phone, both
  SIPp): after a restart on the same data directory, every call SIPp saw end (its BYE
  answered) more than a second before the kill has its CDR.
* SIGTERM with calls up: new INVITEs get 503 at once; the calls go on until
  `b2bua.drain_s`, then BYE both ways; their CDRs are written; the exit status is 0.
* Past `b2bua.max_calls`: new INVITEs get 503 with Retry-After; the established calls
  go on undisturbed.  With two workers the four calls up all live in one worker: the
  limit is the node's, not a share per worker.

With two workers a call lives in the worker owning its Call-ID; the tests choose the
gateway's Call-IDs (SIPp -cid_str) so that each worker gets its share.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from harness import Server, UdpClient, status_code
from harness import header as raw_header
from peer_env import (
    GATEWAY,
    Sipp,
    active_calls,
    base_config,
    cdrs,
    check_times,
    ctl,
    header,
    register,
    server_log,
    sipp,
    start_server,
    wait_for,
    workers,
)

from vivait_sip.contract import mint_call_id

__all__ = ["workers"]

pytestmark = pytest.mark.timeout(90)

DID = "913346141"  # user 6141
DRAIN_S = 3.0


def config(workers: int, **b2bua: Any) -> dict[str, Any]:
    trunks = [{"name": "gw", "host": GATEWAY, "port": 5999, "networks": [f"{GATEWAY}/32"], "options_interval_s": 0}]
    return base_config(workers, trunks=trunks, dids={DID: "6141"}, **b2bua)


def phone(server: Server, tmp: Path, calls: int) -> Sipp:
    """User 6141's phone (its hard extension, 5141): SIPp answering `calls` calls."""
    uas = sipp("phone", tmp, "uas", "-m", str(calls), "-timeout", "60s").start()
    register(server, "6141", "pw-6141", uas.port, aor="5141")
    return uas


def gateway_call(server: Server, tmp: Path, name: str, call_id: str, scenario: str = "b2b_gw_uac_wait_bye.xml",
                 *args: str) -> Sipp:
    """The gateway places one call to the DID with this Call-ID."""
    return sipp(name, tmp, scenario, f"127.0.0.1:{server.sip_port('udp')}", "-s", DID, "-m", "1",
                "-cid_str", call_id, "-timeout", "40s", "-timeout_error", *args, local=GATEWAY).start(settle=0)


def call_ids(workers: int, count: int) -> list[str]:
    """Call-IDs owned by worker 0, 1, 0, 1... (crc32 % workers, as the server routes them)."""
    return [mint_call_id(i % workers, workers, GATEWAY) for i in range(count)]


def raw_invite(server: Server, call_id: str) -> bytes:
    """A new INVITE from the gateway; the final answer (its ACK sent)."""
    client = UdpClient(GATEWAY)
    port = server.sip_port("udp")
    tag = secrets.token_hex(4)
    branch = f"z9hG4bK{secrets.token_hex(8)}"
    head = (f"Via: SIP/2.0/UDP {GATEWAY}:{client.port};branch={branch};rport\r\n"
            f"From: <sip:913000000@{GATEWAY}>;tag={tag}\r\nTo: <sip:{DID}@127.0.0.1>\r\nCall-ID: {call_id}\r\n")
    try:
        client.send((f"INVITE sip:{DID}@127.0.0.1:{port} SIP/2.0\r\n{head}CSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
                     f"Contact: <sip:913000000@{GATEWAY}:{client.port}>\r\nContent-Length: 0\r\n\r\n").encode(), port)
        reply = client.recv_final(3)
        assert reply is not None, "no final answer"
        to = raw_header(reply, "To")
        client.send((f"ACK sip:{DID}@127.0.0.1:{port} SIP/2.0\r\n{head.replace(f'To: <sip:{DID}@127.0.0.1>', f'To: {to}')}"
                     "CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), port)
        return reply
    finally:
        client.close()


def stored_cdrs(data_dir: Path) -> list[dict[str, Any]]:
    """The CDRs in the store, read directly (the server is gone)."""
    with sqlite3.connect(data_dir / "vivait.db") as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("SELECT * FROM cdr_calls ORDER BY started_at")]
        for row in rows:
            row["legs"] = [dict(r) for r in db.execute(
                "SELECT * FROM cdr_legs WHERE call_uuid = ? ORDER BY started_at", (row["call_uuid"],))]
    return rows


def wait_answered(server: Server, count: int) -> list[dict[str, Any]]:
    return list(wait_for(lambda: (c := active_calls(server)) and len(c) == count and all(x["state"] == "answered" for x in c) and c,
                         15, 0.2, f"{count} calls answered"))


def test_sigterm_drains_then_hangs_up_both_ways(tmp_path: Path, workers: int) -> None:
    server = start_server(tmp_path / "srv", config(workers, drain_s=DRAIN_S))
    try:
        uas = phone(server, tmp_path, 4)
        callers = [gateway_call(server, tmp_path, f"gw{i}", cid) for i, cid in enumerate(call_ids(workers, 4))]
        wait_answered(server, 4)
        assert server.proc is not None
        stopped_at = time.time()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = [raw_invite(server, cid) for cid in call_ids(workers, 4)]  # both workers asked
        assert [status_code(r) for r in refused] == [503] * 4, refused
        assert all(raw_header(r, "Retry-After") for r in refused)
        for caller in callers:
            assert caller.wait(DRAIN_S + 10) == 0, caller.report()  # got its BYE, answered it
        assert uas.wait(10) == 0, uas.report()  # the phone got its BYEs too
        byes = [when for caller in callers for when, _ in caller.received_at("BYE")]
        assert len(byes) == 4
        assert all(DRAIN_S - 0.5 <= when - stopped_at <= DRAIN_S + 2 for when in byes), [b - stopped_at for b in byes]
        assert server.proc.wait(15) == 0
    finally:
        server.stop()
    records = stored_cdrs(server.data_dir)
    answered = [r for r in records if r["disposition"] == "answered"]
    refused = [r for r in records if r["disposition"] != "answered"]
    assert len(answered) == 4 and len(refused) == 4
    for record in answered:
        assert record["hangup_side"] == "system" and record["hangup_cause"] == "shutdown"
        assert record["did"] == DID and record["trunk"] == "gw" and record["callee_user"] == "6141"
        assert DRAIN_S - 0.5 <= record["ended_at"] - stopped_at <= DRAIN_S + 2
        assert record["billable_s"] == pytest.approx(record["ended_at"] - record["answered_at"], abs=0.01)
        assert [(leg["direction"], leg["status"]) for leg in record["legs"]] == [("in", 200), ("out", 200)]
    for record in refused:  # the INVITEs that came during the drain
        assert record["disposition"] == "congestion" and record["hangup_side"] == "system"
        assert json.loads(record["extra"])["refused"] == "draining" and record["rule"] is None
        assert [(leg["direction"], leg["status"]) for leg in record["legs"]] == [("in", 503)]


def test_a_drain_longer_than_the_workers_stop_timeout(tmp_path: Path) -> None:
    """Worker 0 kills a worker that has not exited 10 s after SIGTERM; a drain longer
    than that (the default is 30 s) must still end the worker's calls with BYE and CDRs."""
    drain_s = 11.0
    server = start_server(tmp_path / "srv", config(2, drain_s=drain_s))
    try:
        uas = phone(server, tmp_path, 2)
        callers = [gateway_call(server, tmp_path, f"gw{i}", cid) for i, cid in enumerate(call_ids(2, 2))]
        wait_answered(server, 2)
        assert server.proc is not None
        stopped_at = time.time()
        server.proc.send_signal(signal.SIGTERM)
        for caller in callers:
            assert caller.wait(drain_s + 10) == 0, caller.report()
        assert uas.wait(10) == 0, uas.report()
        byes = [when - stopped_at for caller in callers for when, _ in caller.received_at("BYE")]
        assert len(byes) == 2 and all(drain_s - 0.5 <= b <= drain_s + 2 for b in byes), byes
        assert server.proc.wait(15) == 0
    finally:
        server.stop()
    assert "worker_kill" not in server_log(server)
    records = stored_cdrs(server.data_dir)
    assert [(r["disposition"], r["hangup_cause"]) for r in records] == [("answered", "shutdown")] * 2


def test_past_max_calls_new_invites_get_503_and_calls_go_on(tmp_path: Path, workers: int) -> None:
    server = start_server(tmp_path / "srv", config(workers, max_calls=4))
    try:
        uas = phone(server, tmp_path, 4)
        # all four in the last worker: the limit is the node's, not a share per worker
        busy = [mint_call_id(workers - 1, workers, GATEWAY) for _ in range(4)]
        callers = [gateway_call(server, tmp_path, f"gw{i}", cid, "uac", "-d", "6000")
                   for i, cid in enumerate(busy)]  # 6 s calls; the gateway hangs up
        wait_answered(server, 4)
        refused = [raw_invite(server, cid) for cid in call_ids(workers, 6)]
        assert [status_code(r) for r in refused] == [503] * 6, [r[:200] for r in refused]
        assert all((raw_header(r, "Retry-After") or "").isdigit() for r in refused)
        assert len(active_calls(server)) == 4  # nobody dropped
        for caller in callers:
            assert caller.wait(20) == 0, caller.report()  # each call ran its 6 s and ended normally
        assert uas.wait(10) == 0, uas.report()
        records = cdrs(server)
        assert sorted(r["disposition"] for r in records) == ["answered"] * 4 + ["congestion"] * 6
        for record in records:
            if record["disposition"] == "answered":
                assert record["hangup_side"] == "caller" and record["billable_s"] > 5.5
                assert [leg["status"] for leg in record["legs"]] == [200, 200]
            else:
                assert record["extra"]["refused"] == "max_calls" and record["hangup_side"] == "system"
                assert record["hangup_cause"] == "Service Unavailable (capacity)"
                assert [(leg["direction"], leg["status"]) for leg in record["legs"]] == [("in", 503)]
                check_times(record, answered=False)
        status = json.loads(ctl(server, "status", "--json").stdout)["b2bua"]
        assert status["rejected_overload"] == 6 and status["answered"] == 4 and status["failed"] == 0
    finally:
        server.stop()


def test_kill_9_loses_no_cdr_of_a_call_that_had_ended(tmp_path: Path, workers: int) -> None:
    server = start_server(tmp_path / "srv", config(workers))
    uas = phone(server, tmp_path, 1000)
    traffic = sipp("traffic", tmp_path, "uac", f"127.0.0.1:{server.sip_port('udp')}", "-s", DID, "-d", "1000",
                   "-r", "5", "-m", "1000", "-timeout", "40s", local=GATEWAY).start(settle=0)
    try:
        time.sleep(6)  # about 25 calls ended, 5 in progress
        pids = [server.proc.pid] if server.proc is not None else []
        for line in server.output:
            if line.startswith("workers "):
                pids = [int(p) for p in re.findall(r"\d+", line.split("(pids", 1)[1])]
        killed_at = time.time()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        traffic.stop()
        uas.stop()
    finally:
        server.kill()
    ended = {}
    for when, message in traffic.received_at("SIP/2.0 200"):
        if (header(message, "CSeq") or "").endswith(" BYE"):
            ended[header(message, "Call-ID")] = when
    done = {call_id for call_id, when in ended.items() if when < killed_at - 1}
    assert len(done) >= 15, len(done)
    restarted = Server(server.tmp, server.config, server.args).start()
    try:
        records = cdrs(restarted)
    finally:
        restarted.stop()
    recorded = {r["legs"][0]["call_id"]: r for r in records}
    missing = done - set(recorded)
    assert not missing, f"{len(missing)} of {len(done)} ended calls have no CDR"
    for call_id in done:
        record = recorded[call_id]
        assert record["disposition"] == "answered" and record["hangup_side"] == "caller"
        assert 0.8 < record["billable_s"] < 2.5 and record["ended_at"] <= ended[call_id] + 0.5
