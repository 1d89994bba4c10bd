"""Calls out to the PRI gateway, played by SIPp, with one and two workers.

A user (SIPp with digest, tests/peers/sipp/b2b_uac_auth.xml) dials an outside number;
the dialplan sends it to trunk `pri`, else `pri2` (a second gateway), with the access
code stripped and +34 prefixed.  The gateway (SIPp UAS, its messages traced) checks what
leaves on the trunk: the Request-URI, To, From and P-Asserted-Identity with the caller ID
(the trunk's, or the rule's override).  Failover: a trunk that stops answering OPTIONS
goes down and the call leaves on the second; a 503 from the first trunk is tried on the
second at once.  Each call's CDR is checked field by field.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from harness import Server, free_port
from peer_env import (
    GATEWAY,
    GATEWAY2,
    Sipp,
    base_config,
    check_times,
    ctl,
    header,
    sipp,
    start_server,
    user_args,
    wait_cdrs,
    wait_for,
    wait_no_calls,
    workers,
)

__all__ = ["workers"]

pytestmark = pytest.mark.timeout(90)

TRUNK_CALLER_ID = "913346100"
RULE_CALLER_ID = "913346199"


def trunk(name: str, host: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "host": host, "port": port, "networks": [f"{host}/32"], "caller_id": TRUNK_CALLER_ID,
            "options_interval_s": 0, **extra}


DIALPLAN = [
    {"name": "mobile", "match": {"number": {"regex": "0[67][0-9]{8}"}, "source": {"any_user": True}},
     "action": {"type": "trunk", "trunks": ["pri", "pri2"], "strip": 1, "prefix": "+34", "caller_id": RULE_CALLER_ID}},
    {"name": "outside", "match": {"number": {"regex": "0[89][0-9]{8}"}, "source": {"any_user": True}},
     "action": {"type": "trunk", "trunks": ["pri", "pri2"], "strip": 1, "prefix": "+34"}},
    {"name": "local", "action": {"type": "user"}},
]


def server_with(tmp: Path, workers: int, trunks: list[dict[str, Any]]) -> Server:
    return start_server(tmp / "srv", base_config(workers, trunks=trunks, dialplan=DIALPLAN))


def call_out(server: Server, tmp: Path, number: str, name: str = "phone") -> Sipp:
    """User 6140 dials `number` (one call, 500 ms long) and hangs up."""
    phone = sipp(name, tmp, "b2b_uac_auth.xml", *user_args(server, "6140", number), "-m", "1", "-d", "500",
                 "-timeout", "20s", "-timeout_error")
    phone.start(settle=0)
    assert phone.wait(30) == 0, phone.report()
    return phone


def gateway(tmp: Path, name: str, host: str, scenario: str = "uas", calls: int = 1) -> Sipp:
    return sipp(name, tmp, scenario, "-m", str(calls), "-timeout", "30s", local=host).start()


def trunk_status(server: Server) -> dict[str, Any]:
    out = ctl(server, "status", "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout)["b2bua"]["trunks"])


def check_outbound_record(record: dict[str, Any], number: str, sent_as: str, rule: str, trunks: list[tuple[str, int]]) -> None:
    """A user's call out: who is billed, what left on which trunk."""
    assert record["caller"] == "6140" and record["user"] == "6140"
    assert record["callee"] == number and record["callee_user"] is None and record["did"] is None
    assert record["rule"] == rule and record["flow"] is None
    assert record["trunk"] == trunks[-1][0]  # the trunk that carried it
    assert record["disposition"] == "answered" and record["hangup_side"] == "caller"
    check_times(record, answered=True)
    inbound, *outs = record["legs"]
    assert inbound["direction"] == "in" and inbound["status"] == 200 and inbound["trunk"] is None
    assert [(leg["trunk"], leg["status"]) for leg in outs] == trunks
    for leg in outs:
        assert leg["direction"] == "out" and leg["target"] == sent_as
        assert leg["peer"].startswith(f"sip:{sent_as}@")


def test_a_user_calls_out_with_the_caller_id_and_rewriting(server_tmp: Path, workers: int) -> None:
    pri = gateway(server_tmp, "pri", GATEWAY, calls=2)
    pri2 = gateway(server_tmp, "pri2", GATEWAY2, calls=1)
    server = server_with(server_tmp, workers, [trunk("pri", GATEWAY, pri.port), trunk("pri2", GATEWAY2, pri2.port)])
    try:
        call_out(server, server_tmp, "0912345678", "fixed")
        call_out(server, server_tmp, "0612345678", "mobile")
        assert pri.wait(10) == 0, pri.report()
        wait_no_calls(server)
        first, second = pri.received("INVITE")
        assert not pri2.received("INVITE")
        for invite, number, caller_id in ((first, "+34912345678", TRUNK_CALLER_ID), (second, "+34612345678", RULE_CALLER_ID)):
            assert invite.startswith(f"INVITE sip:{number}@{GATEWAY}:{pri.port} SIP/2.0")
            assert header(invite, "To") == f"<sip:{number}@{GATEWAY}:{pri.port}>"
            from_ = header(invite, "From") or ""
            assert from_.startswith(f"<sip:{caller_id}@127.0.0.1>;tag="), from_  # the caller ID, not 6140
            assert header(invite, "P-Asserted-Identity") == f"<sip:{caller_id}@127.0.0.1>"  # trust_pai (default)
            assert header(invite, "Privacy") is None
            assert "6140" not in invite.split("\n\n", 1)[0]  # the extension never leaves on the trunk
        records = wait_cdrs(server, 2)
        by_callee = {r["callee"]: r for r in records}
        check_outbound_record(by_callee["0912345678"], "0912345678", "+34912345678", "outside", [("pri", 200)])
        check_outbound_record(by_callee["0612345678"], "0612345678", "+34612345678", "mobile", [("pri", 200)])
    finally:
        server.stop()
        pri.stop()
        pri2.stop()


def test_a_users_own_caller_id_is_presented_unless_the_rule_sets_one(server_tmp: Path, workers: int) -> None:
    pri = gateway(server_tmp, "pri", GATEWAY, calls=2)
    # pri2 is the rules' second choice, never used here (pri answers)
    config = base_config(workers, trunks=[trunk("pri", GATEWAY, pri.port), trunk("pri2", GATEWAY2, pri.port)],
                         dialplan=DIALPLAN, caller_ids={"6140": "+34913346140"})
    server = start_server(server_tmp / "srv", config)
    try:
        call_out(server, server_tmp, "0912345678", "fixed")  # rule "outside": no caller ID of its own
        call_out(server, server_tmp, "0612345678", "mobile")  # rule "mobile": its caller ID wins
        assert pri.wait(10) == 0, pri.report()
        first, second = pri.received("INVITE")
        for invite, caller_id in ((first, "+34913346140"), (second, RULE_CALLER_ID)):
            assert (header(invite, "From") or "").startswith(f"<sip:{caller_id}@127.0.0.1>;tag="), invite
            assert header(invite, "P-Asserted-Identity") == f"<sip:{caller_id}@127.0.0.1>"
        wait_no_calls(server)
        assert {r["callee"]: r["caller"] for r in wait_cdrs(server, 2)} == {"0912345678": "6140", "0612345678": "6140"}
    finally:
        server.stop()
        pri.stop()


def test_a_trunk_that_stops_answering_options_is_skipped(server_tmp: Path, workers: int) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the first gateway: there, but mute
    silent.bind((GATEWAY, free_port(GATEWAY)))
    pri2 = gateway(server_tmp, "pri2", GATEWAY2)
    server = server_with(server_tmp, workers, [
        trunk("pri", GATEWAY, silent.getsockname()[1], options_interval_s=0.3, down_after=1),
        trunk("pri2", GATEWAY2, pri2.port),
    ])
    try:
        wait_for(lambda: trunk_status(server)["pri"]["state"] == "down", 10, message="pri never went down")
        # every worker checks the trunk itself (ctl status shows worker 0's view): wait for all
        wait_for(lambda: "\n".join(server.collect_output()).count("trunk=pri state=down") >= workers, 5,
                 message="every worker's checks took pri down")
        assert trunk_status(server)["pri2"]["state"] == "unknown"  # no checks: takes calls
        call_out(server, server_tmp, "0912345678")
        assert pri2.wait(10) == 0, pri2.report()
        wait_no_calls(server)
        [record] = wait_cdrs(server, 1)
        check_outbound_record(record, "0912345678", "+34912345678", "outside", [("pri2", 200)])
        # What reached the mute gateway: OPTIONS keep coming (0.3 s, from every worker), so
        # read what is queued for a bounded time, not until a silence that never comes.
        silent.settimeout(0.2)
        seen = []
        deadline = time.monotonic() + 1.0
        try:
            while time.monotonic() < deadline:
                seen.append(silent.recv(65535).split(b" ", 1)[0])
        except TimeoutError:
            pass
        assert seen and set(seen) == {b"OPTIONS"}, seen  # checked, never sent the call
        counters = trunk_status(server)["pri"]["counters"]
        assert counters.get("calls_placed", 0) == 0 and counters["options_failed"] >= 1
    finally:
        server.stop()
        pri2.stop()
        silent.close()


def test_a_503_from_the_first_trunk_fails_over_to_the_second(server_tmp: Path, workers: int) -> None:
    pri = gateway(server_tmp, "pri", GATEWAY, "b2b_uas_503.xml")
    pri2 = gateway(server_tmp, "pri2", GATEWAY2)
    server = server_with(server_tmp, workers, [trunk("pri", GATEWAY, pri.port), trunk("pri2", GATEWAY2, pri2.port)])
    try:
        phone = call_out(server, server_tmp, "0912345678")
        assert pri.wait(10) == 0, pri.report()
        assert pri2.wait(10) == 0, pri2.report()
        assert not phone.received("SIP/2.0 503")  # the caller never saw the first trunk's refusal
        [invite] = pri2.received("INVITE")
        assert invite.startswith(f"INVITE sip:+34912345678@{GATEWAY2}:{pri2.port} SIP/2.0")
        wait_no_calls(server)
        [record] = wait_cdrs(server, 1)
        check_outbound_record(record, "0912345678", "+34912345678", "outside", [("pri", 503), ("pri2", 200)])
        failed = record["legs"][1]
        assert failed["answered_at"] is None and "No circuit/channel available" in (failed["cause"] or "")
        if workers == 1:  # ctl status shows worker 0's trunks; with 2 the call may be worker 1's
            assert trunk_status(server)["pri"]["counters"]["calls_failed"] == 1
    finally:
        server.stop()
        pri.stop()
        pri2.stop()


def test_max_calls_is_the_trunks_whichever_worker_holds_the_calls(server_tmp: Path, workers: int) -> None:
    """`pri` has 3 channels (max_calls 3) and is the only trunk: six calls out at once
    (SIPp, 3 s each) → three leave on it and three get 503 at once.  With two workers the
    calls land on either by their Call-ID's hash, and the count is still the node's, not a
    share per worker (which refused a call in the busier worker while the trunk had room,
    and let four out when the calls split three and three); `ctl status` shows the 3."""
    pri = gateway(server_tmp, "pri", GATEWAY, calls=3)
    only_pri = [{"name": "outside", "match": {"number": {"regex": "0[89][0-9]{8}"}, "source": {"any_user": True}},
                 "action": {"type": "trunk", "trunks": ["pri"], "strip": 1, "prefix": "+34"}}]
    server = start_server(server_tmp / "srv", base_config(workers, trunks=[trunk("pri", GATEWAY, pri.port, max_calls=3)],
                                                          dialplan=only_pri))
    phone = sipp("phone", server_tmp, "b2b_uac_auth.xml", *user_args(server, "6140", "0912345678"),
                 "-m", "6", "-l", "6", "-r", "50", "-d", "3000", "-timeout", "30s")
    try:
        phone.start(settle=0)
        wait_for(lambda: len(pri.received("INVITE")) == 3 and len(phone.received("SIP/2.0 503")) >= 3, 10,
                 message="three calls out, three refused")
        assert trunk_status(server)["pri"]["calls"] == 3
        assert pri.wait(20) == 0, pri.report()
        phone.wait(20)  # non-zero: three of its calls failed, as they should
        assert len(pri.received("INVITE")) == 3
        refused = {header(m, "Call-ID"): m.split("\n", 1)[0].strip() for m in phone.received("SIP/2.0 503")}
        assert len(refused) == 3 and all("no trunk available" in line for line in refused.values()), refused
        wait_no_calls(server)
        records = wait_cdrs(server, 6)
        answered = [r for r in records if r["disposition"] == "answered"]
        assert len(answered) == 3 and all(r["trunk"] == "pri" for r in answered)
        assert sorted(r["legs"][0]["status"] for r in records) == [200, 200, 200, 503, 503, 503]
        status = trunk_status(server)["pri"]
        assert status["calls"] == 0 and status["max_calls"] == 3
    finally:
        server.stop()
        pri.stop()
        phone.stop()


@pytest.fixture
def server_tmp(tmp_path: Path) -> Path:
    return tmp_path
